//! What a reload changed: the difference between the links, listeners and connectors a
//! running site applied last and those its folder holds now, and the site.yaml settings that
//! differ from the running ones but only apply at the next start. Pure functions, tested
//! here; `run::SiteState::reload` applies the difference and returns the report.

use std::collections::BTreeMap;

use serde::Serialize;
use skiff_router::flow::{ConnectorSpec, ListenerSpec};
use skiff_router::link::LinkSpec;

use crate::resources::SiteSpec;

/// Names added, removed and changed in one kind of resource, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// New names: started (listeners bound, links dialled).
    pub added: Vec<String>,
    /// Names no longer in the folder: stopped (listeners closed, links closed).
    pub removed: Vec<String>,
    /// Names whose settings changed: restarted (a listener rebound, a link redialled).
    pub changed: Vec<String>,
    /// Links whose client certificate or key alone changed (a renewal): the link up now
    /// stays up and the next dial presents the new certificate. Always empty for listeners
    /// and connectors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub renewed: Vec<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.renewed.is_empty()
    }
}

/// A site.yaml setting that differs from the running site's and applies only at the next
/// start (the link port is bound, and the router's mode announced, once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartNeeded {
    /// The setting's name in site.yaml (`linkAccess`, `linkPort`, `linkHosts`, `edge`).
    pub setting: &'static str,
    /// Its value in the running site.
    pub running: String,
    /// Its value in site.yaml now.
    pub file: String,
}

/// A link, listener or connector whose file parses but which cannot be used (a bad routing
/// key, an unknown type, a link with a bad proxy URL or transport): left out, so the router
/// stops it if it ran, and the rest of the site runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// `link`, `listener` or `connector`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Why it cannot be used.
    pub problem: String,
}

/// A listener or connector the router was given but does not serve (its port cannot be
/// bound, say): the reload reports it and fails. A changed listener's old socket is closed
/// before the new one is bound, so it no longer serves either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failed {
    /// `listener` or `connector`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Why, as the router says it (`GET /v1/listeners` shows it too).
    pub reason: String,
}

/// What one reload did; the body of `POST /v1/reload` (with `"reloaded": true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// Outbound links.
    pub links: Changes,
    /// Listeners.
    pub listeners: Changes,
    /// Connectors.
    pub connectors: Changes,
    /// Sites whose links were closed because they are now revoked or forgotten (`peers/`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disconnected_sites: Vec<String>,
    /// Resources left out, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// Listeners and connectors added or changed by this reload that the router could not
    /// start: the reload failed for them (`skiff site reload` exits 1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failed>,
    /// site.yaml settings changed but not applied: they need a restart.
    pub needs_restart: Vec<RestartNeeded>,
}

impl ReloadReport {
    /// Whether the reload changed nothing and found nothing to report.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
            && self.listeners.is_empty()
            && self.connectors.is_empty()
            && self.disconnected_sites.is_empty()
            && self.skipped.is_empty()
            && self.failed.is_empty()
            && self.needs_restart.is_empty()
    }
}

/// The specs a running site handed to its router last, by name.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Outbound links.
    pub links: BTreeMap<String, LinkSpec>,
    /// Listeners.
    pub listeners: BTreeMap<String, ListenerSpec>,
    /// Connectors.
    pub connectors: BTreeMap<String, ConnectorSpec>,
}

/// Added, removed and changed names between `before` and `after`; `renewal(old, new)` says
/// whether a change is a renewal only (reported apart).
fn diff<S: PartialEq>(
    before: &BTreeMap<String, S>,
    after: &BTreeMap<String, S>,
    renewal: impl Fn(&S, &S) -> bool,
) -> Changes {
    let mut c = Changes::default();
    for (name, old) in before {
        match after.get(name) {
            None => c.removed.push(name.clone()),
            Some(new) if new == old => {}
            Some(new) if renewal(old, new) => c.renewed.push(name.clone()),
            Some(_) => c.changed.push(name.clone()),
        }
    }
    c.added = after
        .keys()
        .filter(|n| !before.contains_key(*n))
        .cloned()
        .collect();
    c
}

/// What changes from `before` to `after`, kind by kind.
pub fn changes(before: &Applied, after: &Applied) -> (Changes, Changes, Changes) {
    (
        diff(&before.links, &after.links, LinkSpec::same_but_credentials),
        diff(&before.listeners, &after.listeners, |_, _| false),
        diff(&before.connectors, &after.connectors, |_, _| false),
    )
}

/// The settings of site.yaml (`file`) that differ from the running site's (`running`) and
/// need a restart. The certificate overlap is not among them: a reload applies it.
pub fn restart_needed(running: &SiteSpec, file: &SiteSpec) -> Vec<RestartNeeded> {
    let mut out = Vec::new();
    let mut check = |setting, a: String, b: String| {
        if a != b {
            out.push(RestartNeeded {
                setting,
                running: a,
                file: b,
            });
        }
    };
    check(
        "linkAccess",
        running.link_access.to_string(),
        file.link_access.to_string(),
    );
    check(
        "linkPort",
        running.link_port.to_string(),
        file.link_port.to_string(),
    );
    check(
        "linkHosts",
        running.link_hosts.join(","),
        file.link_hosts.join(","),
    );
    check("edge", running.edge.to_string(), file.edge.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_router::routing::{Protocol, Strategy};

    fn listener(name: &str, port: u16) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            strategy: Strategy::Balanced("k".parse().unwrap()),
            host: "127.0.0.1".into(),
            port,
            protocol: Protocol::Tcp,
            affinity: Default::default(),
        }
    }

    fn by_name<S: Clone>(specs: &[S], name: impl Fn(&S) -> &str) -> BTreeMap<String, S> {
        specs
            .iter()
            .map(|s| (name(s).to_string(), s.clone()))
            .collect()
    }

    #[test]
    fn listeners_added_removed_changed_and_untouched() {
        let before = Applied {
            listeners: by_name(
                &[
                    listener("same", 1),
                    listener("moved", 2),
                    listener("gone", 3),
                ],
                |s| &s.name,
            ),
            ..Applied::default()
        };
        let after = Applied {
            listeners: by_name(
                &[
                    listener("same", 1),
                    listener("moved", 5),
                    listener("new", 0),
                ],
                |s| &s.name,
            ),
            ..Applied::default()
        };
        let (links, listeners, connectors) = changes(&before, &after);
        assert!(links.is_empty() && connectors.is_empty());
        assert_eq!(listeners.added, ["new"]);
        assert_eq!(listeners.removed, ["gone"]);
        assert_eq!(listeners.changed, ["moved"]);
        assert!(listeners.renewed.is_empty());
    }

    #[test]
    fn a_change_the_renewal_test_accepts_is_a_renewal_not_a_change() {
        // (certificate, cost) pairs; a renewal is a new certificate at the same cost.
        let before = BTreeMap::from([("a".to_string(), ("c1", 1)), ("b".to_string(), ("c1", 1))]);
        let after = BTreeMap::from([("a".to_string(), ("c2", 1)), ("b".to_string(), ("c1", 5))]);
        let links = diff(&before, &after, |old, new| old.1 == new.1);
        assert_eq!(links.renewed, ["a"]);
        assert_eq!(links.changed, ["b"]);
        assert!(links.added.is_empty() && links.removed.is_empty());
    }

    #[test]
    fn settings_that_need_a_restart_are_named_with_both_values() {
        let running: SiteSpec = serde_json::from_value(serde_json::json!({
            "id": "00000000000000000000000000000001",
            "linkAccess": true,
            "linkHosts": ["a.example"],
            "linkPort": 45671,
        }))
        .unwrap();
        let mut file = running.clone();
        assert!(restart_needed(&running, &file).is_empty());
        file.link_port = 45672;
        file.edge = true;
        file.certificate_overlap = Some("1h".into());
        let r = restart_needed(&running, &file);
        assert_eq!(
            r,
            [
                RestartNeeded {
                    setting: "linkPort",
                    running: "45671".into(),
                    file: "45672".into()
                },
                RestartNeeded {
                    setting: "edge",
                    running: "false".into(),
                    file: "true".into()
                },
            ]
        );
    }
}
