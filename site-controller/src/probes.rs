//! Liveness and readiness of a running site (`GET /livez`, `/healthz`, `/readyz`): the
//! lifecycle (starting, running, stopping) and the conditions a controller beside the site
//! may hold, judged by one pure function over what the router reports.
//!
//! Decisions (docs/operations.md, "Probes"):
//! - Ready once the router is up (its link port bound when link access is on) and the
//!   resources of the folder, or of the Kubernetes API, were applied once; unready from the
//!   first moment of shutdown, about a millisecond before listeners close and links go: the
//!   503 marks the drain, it does not hold new connections off until a load balancer notices
//!   (Kubernetes removes a terminating pod's endpoints by itself; another load balancer must
//!   be drained before the site is stopped).
//! - A listener or connector that is not serving (a port in use) does not make the site
//!   unready: one router serves many keys, and one bad listener must not take every other
//!   Service down. It is reported as a warning in the 200 answer.
//! - Links do not matter: a site with no link (or every link down) still serves its own
//!   listeners and connectors; `?verbose` shows how many are up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Serialize;

/// Where a site is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Started, but the resources are not applied yet.
    Starting,
    /// Serving.
    Running,
    /// Shutting down: unready for good.
    Stopping,
}

/// The lifecycle of one site and the conditions held against its readiness.
///
/// Call [`Probes::started`] once the resources are applied and [`Probes::stopping`] at the
/// very start of shutdown; a controller beside the site may [`Probes::hold`] readiness until
/// its own first pass is done, then [`Probes::release`] it.
#[derive(Debug)]
pub struct Probes {
    inner: Mutex<Lifecycle>,
}

#[derive(Debug)]
struct Lifecycle {
    phase: Phase,
    holds: BTreeMap<&'static str, String>,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            inner: Mutex::new(Lifecycle {
                phase: Phase::Starting,
                holds: BTreeMap::new(),
            }),
        }
    }
}

impl Probes {
    /// The resources were applied once: ready unless something is held or it is stopping.
    pub fn started(&self) {
        let mut l = self.inner.lock().unwrap();
        if l.phase == Phase::Starting {
            l.phase = Phase::Running;
        }
    }

    /// Shutdown began: unready from now on (never undone).
    pub fn stopping(&self) {
        self.inner.lock().unwrap().phase = Phase::Stopping;
    }

    /// Holds readiness under the check `name` with `reason` (replacing an earlier reason).
    pub fn hold(&self, name: &'static str, reason: impl Into<String>) {
        self.inner.lock().unwrap().holds.insert(name, reason.into());
    }

    /// Releases the check `name`.
    pub fn release(&self, name: &'static str) {
        self.inner.lock().unwrap().holds.remove(name);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.inner.lock().unwrap().phase
    }

    /// Readiness now, given what the router reports (`None` while stopping, when the router
    /// is no longer asked).
    pub fn readiness(&self, facts: Option<&Facts>) -> Readiness {
        let l = self.inner.lock().unwrap();
        judge(l.phase, &l.holds, facts)
    }
}

/// What readiness reads from the running router.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// Whether the site accepts links (site.yaml `linkAccess`).
    pub link_access: bool,
    /// The bound link port, if any.
    pub link_address: Option<SocketAddr>,
    /// One line per listener or connector that is not serving, with its reason.
    pub not_serving: Vec<String>,
    /// Links up.
    pub links_up: usize,
    /// Links configured or accepted.
    pub links_total: usize,
}

/// One check of `/readyz?verbose`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Its name (`started`, `not-stopping`, `link-access`, `listeners-connectors`, `links`,
    /// or one a controller holds, such as `kubernetes`).
    pub name: String,
    /// Whether it passes.
    pub ok: bool,
    /// What it saw.
    pub detail: String,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the site should get new connections.
    pub ready: bool,
    /// Why not, one sentence each (empty when ready).
    pub reasons: Vec<String>,
    /// What is wrong without making the site unready (a listener whose port is in use).
    pub warnings: Vec<String>,
    /// Every check, for `?verbose`.
    pub checks: Vec<Check>,
}

/// How long flows in progress may drain at shutdown (the router's grace).
const DRAIN_WORDS: &str = "listeners close and flows in progress drain (up to 5 s); send new \
                           connections to another site or router";

/// Readiness from the phase, the held conditions and the router's facts.
pub fn judge(
    phase: Phase,
    holds: &BTreeMap<&'static str, String>,
    facts: Option<&Facts>,
) -> Readiness {
    let mut checks = Vec::new();
    let mut warnings = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        })
    };
    check(
        "started",
        phase != Phase::Starting,
        match phase {
            Phase::Starting => {
                "the site is starting: its listeners, connectors and links are not applied yet"
                    .into()
            }
            _ => "router up; listeners, connectors and links applied".into(),
        },
    );
    check(
        "not-stopping",
        phase != Phase::Stopping,
        match phase {
            Phase::Stopping => format!("the site is shutting down: {DRAIN_WORDS}"),
            _ => "not shutting down".into(),
        },
    );
    for (name, reason) in holds {
        check(name, false, reason.clone());
    }
    if let Some(f) = facts {
        match (f.link_access, f.link_address) {
            (false, _) => check("link-access", true, "off: this site only dials out".into()),
            (true, Some(a)) => check("link-access", true, format!("accepting links on {a}")),
            (true, None) => check(
                "link-access",
                false,
                "link access is on but the link port is not bound; see the site's log".into(),
            ),
        }
        if f.not_serving.is_empty() {
            check(
                "listeners-connectors",
                true,
                "every listener and connector is serving".into(),
            );
        } else {
            warnings.extend(f.not_serving.iter().cloned());
            check(
                "listeners-connectors",
                true,
                format!(
                    "{} not serving (a warning: the others still serve, so the site stays ready)",
                    f.not_serving.len()
                ),
            );
        }
        check(
            "links",
            true,
            format!(
                "{} of {} up (links do not affect readiness: a site without links still serves \
                 its own listeners and connectors)",
                f.links_up, f.links_total
            ),
        );
    }
    let reasons: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.detail.clone())
        .collect();
    Readiness {
        ready: reasons.is_empty(),
        reasons,
        warnings,
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            link_access: true,
            link_address: Some("127.0.0.1:45671".parse().unwrap()),
            not_serving: Vec::new(),
            links_up: 0,
            links_total: 2,
        }
    }

    #[test]
    fn a_site_is_ready_only_between_started_and_stopping() {
        let p = Probes::default();
        let r = p.readiness(Some(&facts()));
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            ["the site is starting: its listeners, connectors and links are not applied yet"]
        );
        p.started();
        let r = p.readiness(Some(&facts()));
        assert!(r.ready, "{r:?}");
        assert!(r.reasons.is_empty());
        p.stopping();
        // Stopping is for good: a late `started` does not undo it.
        p.started();
        assert_eq!(p.phase(), Phase::Stopping);
        for f in [Some(facts()), None] {
            let r = p.readiness(f.as_ref());
            assert!(!r.ready);
            assert_eq!(r.reasons.len(), 1, "{r:?}");
            assert!(
                r.reasons[0].starts_with("the site is shutting down: listeners close"),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_held_condition_blocks_readiness_until_released() {
        let p = Probes::default();
        p.hold(
            "kubernetes",
            "the first pass over the Kubernetes API has not finished",
        );
        p.started();
        let r = p.readiness(Some(&facts()));
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            ["the first pass over the Kubernetes API has not finished"]
        );
        p.hold("kubernetes", "reading Services failed: forbidden");
        assert_eq!(
            p.readiness(None).reasons,
            ["reading Services failed: forbidden"]
        );
        p.release("kubernetes");
        assert!(p.readiness(Some(&facts())).ready);
    }

    #[test]
    fn a_listener_not_serving_is_a_warning_and_links_do_not_matter() {
        let p = Probes::default();
        p.started();
        let mut f = facts();
        f.links_up = 0;
        f.not_serving = vec!["listener db (port 5432): address in use".into()];
        let r = p.readiness(Some(&f));
        assert!(r.ready, "{r:?}");
        assert_eq!(r.warnings, f.not_serving);
        let links = r.checks.iter().find(|c| c.name == "links").unwrap();
        assert!(
            links.ok && links.detail.starts_with("0 of 2 up"),
            "{links:?}"
        );
    }

    #[test]
    fn link_access_without_a_bound_port_is_unready() {
        let p = Probes::default();
        p.started();
        let mut f = facts();
        f.link_address = None;
        let r = p.readiness(Some(&f));
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            ["link access is on but the link port is not bound; see the site's log"]
        );
        f.link_access = false;
        assert!(p.readiness(Some(&f)).ready);
    }
}
