//! Concrete reasons in listener and connector status: which sites a listener reaches (or, if
//! none, exactly why not: no connector anywhere, only unreachable sites, only the other
//! protocol family), and what a connector's backend did on its last attempts.

use std::collections::VecDeque;
use std::time::SystemTime;

use skiff_certs::SiteId;

use crate::routing::{Protocol, RouterView, RoutingKey};

/// Backend attempts a connector remembers for its status.
pub const BACKEND_ATTEMPTS: usize = 10;

/// A site a listener can send flows to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTarget {
    /// The key it serves.
    pub routing_key: String,
    /// Its site id.
    pub site_id: SiteId,
    /// Its site name.
    pub site_name: String,
    /// Path cost from here (0: this site).
    pub cost: u32,
}

/// What a listener reaches: its targets (best first) and, when there is none, why.
pub(crate) fn listener_targets(
    routers: &[RouterView],
    keys: &[&RoutingKey],
    protocol: Protocol,
) -> (Vec<ListenerTarget>, String) {
    let mut targets = Vec::new();
    let mut why = Vec::new();
    for key in keys {
        let serving: Vec<(&RouterView, Protocol)> = routers
            .iter()
            .filter_map(|r| {
                r.keys
                    .iter()
                    .find(|k| &k.key == *key && k.connectors > 0)
                    .map(|k| (r, k.protocol))
            })
            .collect();
        let usable: Vec<&RouterView> = serving
            .iter()
            .filter(|(r, p)| r.reachable && p.family() == protocol.family())
            .map(|(r, _)| *r)
            .collect();
        if !usable.is_empty() {
            targets.extend(usable.iter().map(|r| ListenerTarget {
                routing_key: key.as_str().to_owned(),
                site_id: r.id,
                site_name: r.name.clone(),
                cost: r.cost.unwrap_or(0),
            }));
            continue;
        }
        let names = |want: &dyn Fn(&(&RouterView, Protocol)) -> bool| {
            serving
                .iter()
                .filter(|s| want(s))
                .map(|(r, _)| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let other_family = names(&|(r, p)| r.reachable && p.family() != protocol.family());
        if serving.is_empty() {
            why.push(format!(
                "no site in the network has a connector for key \"{key}\""
            ));
        } else if !other_family.is_empty() {
            let theirs = serving
                .iter()
                .find(|(r, p)| r.reachable && p.family() != protocol.family())
                .map(|(_, p)| *p)
                .unwrap_or(Protocol::Tcp);
            why.push(format!(
                "key \"{key}\" is served only with protocol {} at {other_family}; this \
                 listener is {}",
                protocol_word(theirs),
                protocol_word(protocol)
            ));
        } else {
            let unreachable = names(&|_| true);
            why.push(format!(
                "key \"{key}\" is served by {unreachable}, which {} unreachable from here \
                 (no link path)",
                if serving.len() == 1 { "is" } else { "are" }
            ));
        }
    }
    targets.sort_by(|a, b| a.cost.cmp(&b.cost).then(a.site_name.cmp(&b.site_name)));
    if targets.is_empty() {
        return (targets, why.join("; "));
    }
    let me = routers.iter().find(|r| r.local).map(|r| r.id);
    let list: Vec<String> = targets
        .iter()
        .map(|t| {
            let key = if keys.len() > 1 {
                format!("{} at ", t.routing_key)
            } else {
                String::new()
            };
            if Some(t.site_id) == me {
                format!("{key}{} (this site)", t.site_name)
            } else {
                format!("{key}{} (cost {})", t.site_name, t.cost)
            }
        })
        .collect();
    (targets, format!("reachable: {}", list.join(", ")))
}

fn protocol_word(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Udp => "udp",
    }
}

/// What a connector's backend did on its last attempts.
#[derive(Debug, Default)]
pub(crate) struct BackendHealth {
    /// The last attempts, newest last: whether each failed.
    attempts: VecDeque<bool>,
    /// The last failure: when, and what the router saw.
    last_failure: Option<(SystemTime, String)>,
}

impl BackendHealth {
    /// Counts a connection the backend accepted.
    pub(crate) fn success(&mut self) {
        self.push(false);
    }

    /// Counts a failed attempt, `what` in words ("backend 127.0.0.1:6379 refused the
    /// connection (...)").
    pub(crate) fn failure(&mut self, what: &str, at: SystemTime) {
        self.push(true);
        self.last_failure = Some((at, super::records::cap(what).into()));
    }

    /// The last [`BACKEND_ATTEMPTS`] attempts all succeeded: one more success changes
    /// nothing.
    pub(crate) fn settled(&self) -> bool {
        self.attempts.len() == BACKEND_ATTEMPTS && !self.attempts.iter().any(|f| *f)
    }

    fn push(&mut self, failed: bool) {
        if self.attempts.len() == BACKEND_ATTEMPTS {
            self.attempts.pop_front();
        }
        self.attempts.push_back(failed);
    }

    /// When the last attempt failed: what happened, when, and how many of the last ones
    /// failed.
    pub(crate) fn failing(&self) -> Option<String> {
        if self.attempts.back() != Some(&true) {
            return None;
        }
        let (at, what) = self.last_failure.as_ref()?;
        let failed = self.attempts.iter().filter(|f| **f).count();
        let t = time::OffsetDateTime::from(*at);
        Some(format!(
            "{what} at {:02}:{:02}:{:02} UTC; {failed} of the last {} attempts failed",
            t.hour(),
            t.minute(),
            t.second(),
            self.attempts.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{KeyAd, RouterMode};

    fn view(id: u8, name: &str, cost: Option<u32>, keys: &[(&str, Protocol)]) -> RouterView {
        RouterView {
            id: SiteId::from_bytes([id; 16]),
            name: name.into(),
            mode: RouterMode::Interior,
            reachable: cost.is_some(),
            cost,
            next_hop: None,
            seq: 1,
            local: id == 1,
            links: Vec::new(),
            keys: keys
                .iter()
                .map(|(k, p)| KeyAd {
                    key: k.parse().unwrap(),
                    connectors: 1,
                    protocol: *p,
                    port: 80,
                })
                .collect(),
        }
    }

    #[test]
    fn a_listener_says_which_sites_it_reaches_or_why_none() {
        let redis: RoutingKey = "redis".parse().unwrap();
        let web: RoutingKey = "web".parse().unwrap();
        let here = view(1, "west", Some(0), &[]);
        let (t, why) = listener_targets(std::slice::from_ref(&here), &[&redis], Protocol::Tcp);
        assert!(t.is_empty());
        assert_eq!(
            why,
            "no site in the network has a connector for key \"redis\""
        );

        let east_down = view(2, "east", None, &[("redis", Protocol::Tcp)]);
        let (_, why) = listener_targets(&[here.clone(), east_down], &[&redis], Protocol::Tcp);
        assert!(
            why.starts_with(
                "key \"redis\" is served by east, which is unreachable from here (no link path)"
            ),
            "{why}"
        );

        let east_tcp = view(2, "east", Some(1), &[("web", Protocol::Tcp)]);
        let (_, why) = listener_targets(&[here.clone(), east_tcp], &[&web], Protocol::Http);
        assert_eq!(
            why,
            "key \"web\" is served only with protocol tcp at east; this listener is http"
        );

        let east = view(2, "east", Some(1), &[("redis", Protocol::Tcp)]);
        let north = view(3, "north", Some(2), &[("redis", Protocol::Tcp)]);
        let (t, why) = listener_targets(&[here, north, east], &[&redis], Protocol::Tcp);
        assert_eq!(why, "reachable: east (cost 1), north (cost 2)");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_backend_failure_shows_until_a_success() {
        let mut h = BackendHealth::default();
        h.success();
        assert_eq!(h.failing(), None);
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7 * 3600 + 41 * 60 + 3);
        for _ in 0..3 {
            h.failure(
                "backend 127.0.0.1:6379 refused the connection (refused)",
                at,
            );
        }
        assert_eq!(
            h.failing().unwrap(),
            "backend 127.0.0.1:6379 refused the connection (refused) at 07:41:03 UTC; \
             3 of the last 4 attempts failed"
        );
        h.success();
        assert_eq!(h.failing(), None);
    }
}
