//! What `skiff network status` prints for people: a tree of sites and their links, then the
//! routing keys with the sites serving them, with unreachable sites and keys nobody can serve
//! named in words (and in red only on a terminal without `NO_COLOR`).

use serde_json::Value;

use super::plain;

/// Colours for a terminal, or none.
#[derive(Clone, Copy, Debug)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset (https://no-color.org).
    pub fn for_stdout() -> Paint {
        use std::io::IsTerminal;
        Paint {
            on: std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// No colour.
    #[cfg(test)]
    pub fn none() -> Paint {
        Paint { on: false }
    }

    /// A word that must stand out (red, bold).
    fn bad(self, s: &str) -> String {
        if self.on {
            format!("\x1b[1;31m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// A word that says all is well (green).
    fn good(self, s: &str) -> String {
        if self.on {
            format!("\x1b[32m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// One child line of a tree: a label (aligned with its siblings') and what to say about it.
struct Branch {
    label: String,
    detail: String,
}

fn push_tree(out: &mut String, heading: &str, children: &[Branch]) {
    out.push_str(heading);
    out.push('\n');
    let width = children
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0);
    for (i, b) in children.iter().enumerate() {
        let twig = if i + 1 == children.len() {
            "└── "
        } else {
            "├── "
        };
        let line = if b.detail.is_empty() {
            format!("{twig}{}", b.label)
        } else {
            format!("{twig}{:<width$}  {}", b.label, b.detail)
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The keys local listeners send to that no site in the network advertises: `(key, listener
/// names)`, sorted by key.
pub fn unserved_keys(net: &Value, listeners: &[Value]) -> Vec<(String, Vec<String>)> {
    let advertised: Vec<&str> = net["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["routingKey"].as_str())
        .collect();
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in listeners {
        for key in listener_keys(l) {
            if !advertised.contains(&key.as_str()) {
                out.entry(key).or_default().push(plain(&l["name"]));
            }
        }
    }
    out.into_iter().collect()
}

/// Every key a listener (as `GET /v1/listeners` shows it) may send to.
pub fn listener_keys(l: &Value) -> Vec<String> {
    match l["routingKeys"].as_array() {
        Some(keys) if !keys.is_empty() => keys.iter().map(plain).collect(),
        _ => l["routingKey"]
            .as_str()
            .map(|k| vec![k.to_string()])
            .unwrap_or_default(),
    }
}

/// The whole text: a header line with counts, the sites tree, the routing keys tree. `net` is
/// `GET /v1/network`, `links` `GET /v1/links`, `listeners` `GET /v1/listeners`, `me` this
/// site's name.
pub fn render(net: &Value, links: &[Value], listeners: &[Value], me: &str, p: Paint) -> String {
    let routers: Vec<&Value> = net["routers"].as_array().into_iter().flatten().collect();
    let keys: Vec<&Value> = net["keys"].as_array().into_iter().flatten().collect();
    let name_of = |id: &Value| {
        routers
            .iter()
            .find(|r| &r["id"] == id)
            .map(|r| plain(&r["name"]))
            .unwrap_or_else(|| plain(id).chars().take(8).collect())
    };
    let reachable = |r: &&Value| r["reachable"] == true || r["local"] == true;
    let unreachable_sites = routers.iter().filter(|r| !reachable(r)).count();
    let key_served = |k: &&Value| {
        k["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["reachable"] == true)
    };
    let unreachable_keys = keys.iter().filter(|k| !key_served(k)).count();
    let unserved = unserved_keys(net, listeners);

    let mut out = String::new();
    let mut header = format!(
        "network seen from {me}: {} site{} ({} reachable",
        routers.len(),
        if routers.len() == 1 { "" } else { "s" },
        routers.len() - unreachable_sites
    );
    if unreachable_sites > 0 {
        header.push_str(&format!(
            ", {}",
            p.bad(&format!("{unreachable_sites} UNREACHABLE"))
        ));
    }
    header.push_str(&format!(
        "), {} routing key{}",
        keys.len(),
        if keys.len() == 1 { "" } else { "s" }
    ));
    if unreachable_keys > 0 {
        header.push_str(&format!(
            " ({})",
            p.bad(&format!("{unreachable_keys} with no reachable site"))
        ));
    }
    if !unserved.is_empty() {
        header.push_str(&format!(
            "; {} wanted by listeners here that no site serves",
            p.bad(&unserved.len().to_string())
        ));
    }
    out.push_str(&header);
    out.push('\n');

    // This site first, then the reachable ones by cost, then the unreachable ones by name.
    let mut order: Vec<&Value> = routers.clone();
    order.sort_by_key(|r| {
        (
            r["local"] != true,
            !reachable(r),
            r["cost"].as_u64().unwrap_or(u64::MAX),
            plain(&r["name"]),
        )
    });
    if !order.iter().any(|r| r["local"] == true) {
        // Not in its own view yet (just started): still show its links.
        push_tree(
            &mut out,
            &format!("{me} (this site)"),
            &local_links(links, p),
        );
    }
    for r in order {
        let mode = plain(&r["mode"]);
        if r["local"] == true {
            push_tree(
                &mut out,
                &format!("{} (this site, {mode})", plain(&r["name"])),
                &local_links(links, p),
            );
            continue;
        }
        let heading = if reachable(&r) {
            let via = match &r["next_hop"] {
                hop if hop.is_null() || hop == &r["id"] => String::new(),
                hop => format!(", via {}", name_of(hop)),
            };
            format!(
                "{} ({mode}, {}, cost {}{via})",
                plain(&r["name"]),
                p.good("reachable"),
                plain(&r["cost"])
            )
        } else {
            format!(
                "{} ({mode}, {}: no link path from {me})",
                plain(&r["name"]),
                p.bad("UNREACHABLE")
            )
        };
        let mut children: Vec<Branch> = r["links"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                let peer = name_of(&l["peer"]);
                let detail = if l["up"] == true {
                    format!("{}, cost {}", p.good("up"), plain(&l["cost"]))
                } else {
                    format!(
                        "{}, cost {} ({peer} does not advertise it back: down or not up yet)",
                        p.bad("ONE-WAY"),
                        plain(&l["cost"])
                    )
                };
                Branch {
                    label: format!("link to {peer}"),
                    detail,
                }
            })
            .collect();
        if children.is_empty() {
            children.push(Branch {
                label: "no links advertised".into(),
                detail: String::new(),
            });
        }
        push_tree(&mut out, &heading, &children);
    }

    let mut children: Vec<Branch> = keys
        .iter()
        .map(|k| {
            let key = plain(&k["routingKey"]);
            let sites: Vec<&Value> = k["sites"].as_array().into_iter().flatten().collect();
            let mut detail = sites
                .iter()
                .map(|s| {
                    let n = s["connectors"].as_u64().unwrap_or(0);
                    let down = if s["reachable"] == true {
                        String::new()
                    } else {
                        format!(", {}", p.bad("UNREACHABLE"))
                    };
                    format!(
                        "{} (port {}, {}, {n} connector{}{down})",
                        plain(&s["siteName"]),
                        plain(&s["port"]),
                        plain(&s["protocol"]),
                        if n == 1 { "" } else { "s" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            if !key_served(k) {
                let names: Vec<String> = sites.iter().map(|s| plain(&s["siteName"])).collect();
                detail.push_str(&format!(
                    ", {}: {} {} unreachable from {me}",
                    p.bad("UNREACHABLE"),
                    names.join(", "),
                    if names.len() == 1 { "is" } else { "are" }
                ));
            }
            let here: Vec<String> = listeners
                .iter()
                .filter(|l| listener_keys(l).contains(&key))
                .map(|l| plain(&l["name"]))
                .collect();
            if !here.is_empty() {
                detail.push_str(&format!("; listener {} here", here.join(", ")));
            }
            Branch { label: key, detail }
        })
        .collect();
    for (key, names) in &unserved {
        children.push(Branch {
            label: key.clone(),
            detail: format!(
                "{}: no site in the network has a connector for it (listener {} here refuses connections)",
                p.bad("UNREACHABLE"),
                names.join(", ")
            ),
        });
    }
    if children.is_empty() {
        out.push_str("routing keys: none (add one with: skiff connector create NAME PORT)\n");
    } else {
        push_tree(&mut out, "routing keys", &children);
    }
    out
}

/// This site's links as `GET /v1/links` shows them (down ones too, which the network view
/// does not hold).
fn local_links(links: &[Value], p: Paint) -> Vec<Branch> {
    let mut out: Vec<Branch> = links
        .iter()
        .map(|l| {
            let peer = l
                .get("peer_site_name")
                .filter(|v| !v.is_null())
                .map(plain)
                .or_else(|| {
                    l.get("peer_site_id")
                        .filter(|v| !v.is_null())
                        .map(|id| plain(id).chars().take(8).collect())
                })
                .unwrap_or_else(|| plain(&l["name"]));
            let name = plain(&l["name"]);
            let label = if l["direction"] == "outbound" && name != peer {
                format!("link {name} to {peer}")
            } else {
                format!("link to {peer}")
            };
            let status = plain(&l["status"]);
            let mut parts = vec![if status == "up" {
                p.good("up")
            } else {
                p.bad(&status.to_uppercase())
            }];
            parts.push(format!("cost {}", plain(&l["cost"])));
            if let Some(t) = l.get("transport").filter(|t| !t.is_null()) {
                parts.push(plain(t));
            }
            parts.push(plain(&l["direction"]));
            if let Some(rtt) = l.get("rtt_ms").and_then(Value::as_f64) {
                parts.push(format!("rtt {}", millis(rtt)));
            }
            if let (Some(sent), Some(received)) = (
                l.get("bytes_sent").and_then(Value::as_u64),
                l.get("bytes_received").and_then(Value::as_u64),
            ) {
                parts.push(format!(
                    "{} sent, {} received",
                    bytes(sent),
                    bytes(received)
                ));
            }
            if let Some(proxy) = l.get("proxy").filter(|v| !v.is_null()) {
                parts.push(format!("via proxy {}", plain(proxy)));
            }
            let mut detail = parts.join(", ");
            if let Some(why) = ["reason", "last_error"]
                .iter()
                .find_map(|k| l.get(*k).filter(|v| !v.is_null()).map(plain))
            {
                detail.push_str(&format!(": {why}"));
            }
            Branch { label, detail }
        })
        .collect();
    if out.is_empty() {
        out.push(Branch {
            label: "no links".into(),
            detail: "(link to another site with: skiff token redeem FILE)".into(),
        });
    }
    out
}

/// `0.4 ms`, `12 ms`.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn three_sites(north_reachable: bool) -> Value {
        json!({
            "siteId": "aa",
            "routers": [
                {"id": "aa", "name": "west", "mode": "interior", "reachable": true, "cost": 0,
                 "next_hop": null, "local": true, "links": [{"peer": "bb", "cost": 1, "up": true}], "keys": []},
                {"id": "bb", "name": "east", "mode": "interior", "reachable": true, "cost": 1,
                 "next_hop": "bb", "local": false,
                 "links": [{"peer": "aa", "cost": 1, "up": true}, {"peer": "cc", "cost": 1, "up": north_reachable}],
                 "keys": []},
                {"id": "cc", "name": "north", "mode": "interior", "reachable": north_reachable,
                 "cost": if north_reachable { json!(2) } else { Value::Null },
                 "next_hop": if north_reachable { json!("bb") } else { Value::Null }, "local": false,
                 "links": [{"peer": "bb", "cost": 1, "up": north_reachable}], "keys": []},
            ],
            "keys": [
                {"routingKey": "redis", "sites": [{"siteId": "bb", "siteName": "east", "connectors": 1,
                  "protocol": "tcp", "port": 6379, "reachable": true}]},
                {"routingKey": "web", "sites": [{"siteId": "cc", "siteName": "north", "connectors": 2,
                  "protocol": "http", "port": 8080, "reachable": north_reachable}]},
            ]
        })
    }

    fn west_links() -> Vec<Value> {
        vec![
            json!({"name": "from-east", "direction": "inbound", "peer_site_id": "bb",
            "peer_site_name": "east", "transport": "quic", "endpoint": "127.0.0.1:1", "cost": 1,
            "status": "up", "since": "2026-01-01T00:00:00Z", "rtt_ms": 0.42,
            "bytes_sent": 2048, "bytes_received": 100}),
        ]
    }

    #[test]
    fn a_healthy_network_reads_as_a_tree_from_this_site() {
        let listeners =
            vec![json!({"name": "cache", "routingKey": "redis", "routingKeys": ["redis"]})];
        let text = render(
            &three_sites(true),
            &west_links(),
            &listeners,
            "west",
            Paint::none(),
        );
        let expected = "\
network seen from west: 3 sites (3 reachable), 2 routing keys
west (this site, interior)
└── link to east  up, cost 1, quic, inbound, rtt 0.4 ms, 2.0 KiB sent, 100 B received
east (interior, reachable, cost 1)
├── link to west   up, cost 1
└── link to north  up, cost 1
north (interior, reachable, cost 2, via east)
└── link to east  up, cost 1
routing keys
├── redis  east (port 6379, tcp, 1 connector); listener cache here
└── web    north (port 8080, http, 2 connectors)
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn an_unreachable_site_and_its_keys_are_named_in_words() {
        let listeners =
            vec![json!({"name": "nothing", "routingKey": "ghost", "routingKeys": ["ghost"]})];
        let text = render(
            &three_sites(false),
            &west_links(),
            &listeners,
            "west",
            Paint::none(),
        );
        assert!(
            text.starts_with("network seen from west: 3 sites (2 reachable, 1 UNREACHABLE), 2 routing keys (1 with no reachable site); 1 wanted by listeners here that no site serves\n"),
            "{text}"
        );
        assert!(
            text.contains("north (interior, UNREACHABLE: no link path from west)"),
            "{text}"
        );
        assert!(
            text.contains("web    north (port 8080, http, 2 connectors, UNREACHABLE), UNREACHABLE: north is unreachable from west"),
            "{text}"
        );
        assert!(
            text.contains("ghost  UNREACHABLE: no site in the network has a connector for it (listener nothing here refuses connections)"),
            "{text}"
        );
        assert!(
            text.contains("ONE-WAY, cost 1 (north does not advertise it back"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_wraps_the_words() {
        let text = render(&three_sites(false), &[], &[], "west", Paint { on: true });
        assert!(text.contains("\x1b[1;31mUNREACHABLE\x1b[0m"), "{text}");
        assert!(
            text.contains("no links  (link to another site with: skiff token redeem FILE)"),
            "{text}"
        );
    }

    #[test]
    fn byte_counts_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
