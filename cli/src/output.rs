//! What `site status`, `link list`, `listener list`, `connector list` and `network status`
//! print: a table (or a tree) for people, JSON for scripts.

mod network;

use std::process::ExitCode;

use http::Method;
use serde_json::{Value, json};
use skiff_site_controller::SiteError;
use skiff_site_controller::admin::admin_request;
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::site::{list_links, load_site};

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table.
    Text,
    /// JSON.
    Json,
}

/// `skiff site status`: exit 0 only if the site runs and answers.
pub async fn site_status(
    folder: &SiteFolder,
    format: Option<Format>,
) -> Result<ExitCode, SiteError> {
    let loaded = load_site(folder)?;
    let socket = folder.admin_socket();
    let site = admin_request(&socket, Method::GET, "/v1/site").await?;
    let links = admin_request(&socket, Method::GET, "/v1/links").await?;
    if format == Some(Format::Json) {
        let out = json!({"status": "running", "site": site, "links": links});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let s = |k: &str| site.get(k).map(plain).unwrap_or_default();
    println!(
        "site {} (id {}) is running: pid {}, {} mode, up {}s",
        loaded.name(),
        s("id"),
        s("pid"),
        s("mode"),
        s("uptimeSeconds")
    );
    let kube = site.get("kubernetes").filter(|k| !k.is_null());
    // A Kubernetes site learns its load balancer's address while it runs.
    let hosts = kube
        .and_then(|k| k.get("linkHosts"))
        .map(plain)
        .unwrap_or_else(|| s("linkHosts"));
    match site.get("linkAddress").and_then(Value::as_str) {
        Some(addr) => println!("link access: {addr} (tokens point at {hosts})"),
        None => println!("link access: off"),
    }
    let list = links.as_array().cloned().unwrap_or_default();
    let count = |st: &str| list.iter().filter(|l| l["status"] == st).count();
    // Links being closed show only while there are some (they go within seconds).
    let closing = match count("closing") {
        0 => String::new(),
        n => format!(", {n} closing"),
    };
    println!(
        "links: {} up, {} connecting, {} refused{closing}",
        count("up"),
        count("connecting"),
        count("refused")
    );
    if let Some(k) = kube {
        println!(
            "kubernetes: namespace {}",
            k.get("namespace").map(plain).unwrap_or_default()
        );
        for t in k["tokens"].as_array().into_iter().flatten() {
            println!(
                "  token Secret {}: {} ({})",
                plain(&t["secret"]),
                plain(&t["status"]),
                plain(&t["message"])
            );
        }
        for p in k["problems"].as_array().into_iter().flatten() {
            println!(
                "  problem: {} {}: {}",
                plain(&p["object"]),
                plain(&p["reason"]),
                plain(&p["message"])
            );
        }
        if let Some(e) = k.get("lastError").and_then(Value::as_str) {
            println!("  last pass failed: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `skiff link list`: live status from the running site, else the configured links.
pub async fn link_list(folder: &SiteFolder, format: Option<Format>) -> Result<ExitCode, SiteError> {
    load_site(folder)?;
    let links: Vec<Value> =
        match admin_request(&folder.admin_socket(), Method::GET, "/v1/links").await {
            Ok(v) => v.as_array().cloned().unwrap_or_default(),
            Err(SiteError::NotRunning { .. }) => list_links(folder)?
                .into_iter()
                .map(|(l, _)| {
                    json!({
                        "name": l.metadata.name,
                        "direction": "outbound",
                        "peer_site_id": l.spec.peer_site_id.to_string(),
                        "peer_site_name": l.spec.peer_site_name,
                        "transport": null,
                        "endpoint": l.spec.endpoints.first(),
                        "cost": l.spec.cost,
                        "status": "stopped",
                        "reason": "the site is not running",
                    })
                })
                .collect(),
            Err(e) => return Err(e),
        };
    if format == Some(Format::Json) {
        println!(
            "{}",
            serde_json::to_string_pretty(&links).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if links.is_empty() {
        println!("no links: redeem a token with: skiff token redeem FILE");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = links
        .iter()
        .map(|l| {
            let peer = l
                .get("peer_site_name")
                .filter(|v| !v.is_null())
                .or(l.get("peer_site_id"))
                .map(plain)
                .unwrap_or_default();
            let detail = ["reason", "last_error"]
                .iter()
                .find_map(|k| l.get(*k).filter(|v| !v.is_null()).map(plain))
                .or_else(|| l.get("proxy").map(|p| format!("via proxy {}", plain(p))))
                .unwrap_or_default();
            [
                plain(&l["name"]),
                plain(&l["direction"]),
                peer,
                plain(&l["transport"]),
                plain(&l["status"]),
                detail,
            ]
        })
        .collect();
    print_table(
        &["NAME", "DIRECTION", "PEER", "TRANSPORT", "STATUS", "DETAIL"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// Which of the two service resources a verb is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `skiff listener`.
    Listener,
    /// `skiff connector`.
    Connector,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Listener => "listener",
            Service::Connector => "connector",
        })
    }
}

/// `skiff listener list` / `skiff connector list`: live status from the running site, else
/// the configured resources.
pub async fn service_list(
    kind: Service,
    folder: &SiteFolder,
    format: Option<Format>,
) -> Result<ExitCode, SiteError> {
    use skiff_site_controller::services::{list_connectors, list_listeners};
    load_site(folder)?;
    let path = match kind {
        Service::Listener => "/v1/listeners",
        Service::Connector => "/v1/connectors",
    };
    let items: Vec<Value> = match admin_request(&folder.admin_socket(), Method::GET, path).await {
        Ok(v) => v.as_array().cloned().unwrap_or_default(),
        Err(SiteError::NotRunning { .. }) => {
            let stopped = |name: &str, key: Option<&str>, host: &str, port: u16, protocol: &str| {
                json!({
                    "name": name,
                    "routingKey": key,
                    "host": host,
                    "port": port,
                    "protocol": protocol,
                    "status": "stopped",
                    "reason": "the site is not running",
                })
            };
            match kind {
                Service::Listener => list_listeners(folder)?
                    .iter()
                    .map(|l| {
                        let s = &l.spec;
                        let mut item = stopped(
                            &l.metadata.name,
                            s.routing_key.as_deref(),
                            &s.host,
                            s.port,
                            &s.protocol,
                        );
                        if let (Some(obj), Some(a)) = (item.as_object_mut(), &s.affinity)
                            && a != "none"
                        {
                            obj.insert("affinity".into(), Value::String(a.clone()));
                        }
                        item
                    })
                    .collect(),
                Service::Connector => list_connectors(folder)?
                    .iter()
                    .map(|c| {
                        let s = &c.spec;
                        stopped(
                            &c.metadata.name,
                            Some(&s.routing_key),
                            &s.host,
                            s.port,
                            &s.protocol,
                        )
                    })
                    .collect(),
            }
        }
        Err(e) => return Err(e),
    };
    // What the network offers each listener's keys, for a listener the router gave no reason.
    let net = match kind {
        Service::Listener if items.iter().any(|i| i["status"] != "stopped") => {
            admin_request(&folder.admin_socket(), Method::GET, "/v1/network")
                .await
                .ok()
        }
        _ => None,
    };
    let mut items = items;
    for i in &mut items {
        let detail = service_detail(kind, i, net.as_ref());
        if let (Some(obj), false) = (i.as_object_mut(), detail.is_empty()) {
            obj.insert("detail".into(), Value::String(detail));
        }
    }
    if format == Some(Format::Json) {
        println!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        println!("no {kind}s: create one with: skiff {kind} create NAME PORT");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = items
        .iter()
        .map(|i| {
            let address = match (kind, i.get("address").filter(|a| !a.is_null())) {
                (Service::Listener, Some(a)) => plain(a),
                _ => format!("{}:{}", plain(&i["host"]), plain(&i["port"])),
            };
            let mut flows = match (i.get("flowsActive"), i.get("flowsTotal")) {
                (Some(a), Some(t)) => format!("{} / {}", plain(a), plain(t)),
                _ => "-".into(),
            };
            // Listeners: connections refused; connectors: backend connections that failed.
            let (field, word) = match kind {
                Service::Listener => ("flowsRefused", "refused"),
                Service::Connector => ("flowsFailed", "failed"),
            };
            if let Some(n) = i.get(field).and_then(Value::as_u64).filter(|n| *n > 0) {
                flows.push_str(&format!(", {n} {word}"));
            }
            let mut protocol = plain(&i["protocol"]);
            if let Some(a) = i
                .get("affinity")
                .and_then(Value::as_str)
                .filter(|a| *a != "none")
            {
                protocol.push_str(&format!(" (affinity {a})"));
            }
            [
                plain(&i["name"]),
                plain(&i["routingKey"]),
                protocol,
                address,
                plain(&i["status"]),
                flows,
                i.get("detail")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "ROUTING KEY",
            "TYPE",
            "ADDRESS",
            "STATUS",
            "FLOWS NOW / TOTAL",
            "DETAIL",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// The DETAIL of a listener or connector: the router's reason, the reachable sites (its
/// `targets`, or for a listener the router gave neither, what `GET /v1/network` says of its
/// keys), HTTP requests by status class.
fn service_detail(kind: Service, i: &Value, net: Option<&Value>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let reason = i.get("reason").filter(|r| !r.is_null()).map(plain);
    let targets = i
        .get("targets")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .map(|t| t.iter().map(target).collect::<Vec<_>>().join(", "));
    match (&reason, targets) {
        (Some(r), Some(t)) if !r.starts_with("reachable") => {
            parts.push(r.clone());
            parts.push(format!("reachable: {t}"));
        }
        (Some(r), _) => parts.push(r.clone()),
        (None, Some(t)) => parts.push(format!("reachable: {t}")),
        (None, None) => {
            if let (Service::Listener, Some(net)) = (kind, net) {
                parts.extend(listener_reach(i, net));
            }
        }
    }
    // HTTP listeners: requests by status class (the non-zero ones).
    if let Some(r) = i.get("requests").and_then(Value::as_object) {
        let counts: Vec<String> = r
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(class, n)| format!("{class} {}", plain(n)))
            .collect();
        parts.push(format!(
            "requests: {}",
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(", ")
            }
        ));
    }
    parts.join("; ")
}

/// One entry of a `targets` field: a site name (with its cost when given), or the text.
fn target(t: &Value) -> String {
    let name = ["siteName", "site", "name"]
        .iter()
        .find_map(|k| t.get(*k).filter(|v| !v.is_null()).map(plain));
    match (name, t.get("cost").filter(|c| !c.is_null())) {
        (Some(n), Some(c)) => format!("{n} (cost {})", plain(c)),
        (Some(n), None) => n,
        _ => plain(t),
    }
}

/// For each key of a listener: the sites that serve it and can be reached (`reachable: east
/// (cost 1)`), or why none can.
fn listener_reach(listener: &Value, net: &Value) -> Vec<String> {
    let keys = network::listener_keys(listener);
    let several = keys.len() > 1;
    keys.iter()
        .map(|key| {
            let sites: Vec<&Value> = net["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|k| k["routingKey"] == key.as_str())
                .and_then(|k| k["sites"].as_array())
                .into_iter()
                .flatten()
                .collect();
            let cost_of = |id: &Value| {
                net["routers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| &r["id"] == id)
                    .map(|r| plain(&r["cost"]))
                    .unwrap_or_else(|| "?".into())
            };
            let up: Vec<String> = sites
                .iter()
                .filter(|s| s["reachable"] == true)
                .map(|s| format!("{} (cost {})", plain(&s["siteName"]), cost_of(&s["siteId"])))
                .collect();
            let prefix = if several {
                format!("key {key:?} ")
            } else {
                String::new()
            };
            if !up.is_empty() {
                format!("{prefix}reachable: {}", up.join(", "))
            } else if sites.is_empty() {
                format!("no site in the network has a connector for key {key:?}")
            } else {
                let names: Vec<String> = sites.iter().map(|s| plain(&s["siteName"])).collect();
                format!(
                    "key {key:?} is served only by {}, {} unreachable from here (no link path)",
                    names.join(", "),
                    if names.len() == 1 {
                        "which is"
                    } else {
                        "which are"
                    }
                )
            }
        })
        .collect()
}

/// The error a running site reports for one listener or connector, if any.
pub async fn service_error(kind: Service, folder: &SiteFolder, name: &str) -> Option<String> {
    let path = match kind {
        Service::Listener => "/v1/listeners",
        Service::Connector => "/v1/connectors",
    };
    let items = admin_request(&folder.admin_socket(), Method::GET, path)
        .await
        .ok()?;
    let item = items
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)?
        .clone();
    (item["status"] == "error").then(|| plain(&item["reason"]))
}

/// `skiff network status`: every site, its links, and every key with the sites serving it.
/// JSON: `GET /v1/network` as it is, plus `unservedKeys` (keys listeners here send to that no
/// site advertises, with those listeners).
pub async fn network_status(
    folder: &SiteFolder,
    format: Option<Format>,
) -> Result<ExitCode, SiteError> {
    let loaded = load_site(folder)?;
    let socket = folder.admin_socket();
    let mut net = admin_request(&socket, Method::GET, "/v1/network").await?;
    let array = |v: Value| v.as_array().cloned().unwrap_or_default();
    let links = array(admin_request(&socket, Method::GET, "/v1/links").await?);
    let listeners = array(admin_request(&socket, Method::GET, "/v1/listeners").await?);
    if format == Some(Format::Json) {
        let unserved: Vec<Value> = network::unserved_keys(&net, &listeners)
            .into_iter()
            .map(|(key, names)| json!({"routingKey": key, "listeners": names}))
            .collect();
        if let Some(obj) = net.as_object_mut() {
            obj.insert("unservedKeys".into(), Value::Array(unserved));
        }
        println!("{}", serde_json::to_string_pretty(&net).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    // Site names and reasons come from peers: no control character reaches the terminal.
    let (mut links, mut listeners) = (links, listeners);
    for v in std::iter::once(&mut net)
        .chain(links.iter_mut())
        .chain(listeners.iter_mut())
    {
        printable_json(v);
    }
    print!(
        "{}",
        network::render(
            &net,
            &links,
            &listeners,
            loaded.name(),
            network::Paint::for_stdout()
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// A string as a terminal may show it: every control character (ESC, CR, BEL, newline, ...;
/// a peer's site name or reason could carry any) written as a `\u{..}` escape instead.
pub(crate) fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Every string (and object key) in the value made [`printable`].
pub(crate) fn printable_json(v: &mut Value) {
    match v {
        Value::String(s) => *s = printable(s),
        Value::Array(a) => a.iter_mut().for_each(printable_json),
        Value::Object(o) => {
            let entries = std::mem::take(o);
            for (k, mut val) in entries {
                printable_json(&mut val);
                o.insert(printable(&k), val);
            }
        }
        _ => {}
    }
}

/// A JSON value as words: strings bare (control characters escaped), `-` for null, arrays
/// joined with commas.
pub(crate) fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => printable(s),
        Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_from_peers_are_escaped_in_text_output() {
        use serde_json::json;
        let evil = "west\u{1b}]0;pwned\u{7}\r\nfake line";
        let shown = super::plain(&json!(evil));
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "west\\u{1b}]0;pwned\\u{7}\\u{d}\\u{a}fake line");
        assert_eq!(super::plain(&json!("café ok")), "café ok");
        let mut v = json!({"sites": [{"name": evil, "reason": "a\u{9b}b"}]});
        super::printable_json(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{9b}'),
            "{text}"
        );
        let net = v["sites"][0]["name"].as_str().unwrap();
        assert!(net.starts_with("west\\u{1b}"), "{net}");
    }

    use super::*;

    fn net() -> Value {
        json!({
            "routers": [
                {"id": "bb", "name": "east", "cost": 1, "reachable": true},
                {"id": "cc", "name": "north", "cost": null, "reachable": false},
            ],
            "keys": [
                {"routingKey": "redis", "sites": [{"siteId": "bb", "siteName": "east", "reachable": true}]},
                {"routingKey": "web", "sites": [{"siteId": "cc", "siteName": "north", "reachable": false}]},
            ]
        })
    }

    fn listener(key: &str) -> Value {
        json!({"name": "l", "routingKey": key, "routingKeys": [key], "status": "active"})
    }

    #[test]
    fn the_router_reason_and_targets_come_first() {
        let mut l = listener("redis");
        l["reason"] = json!("reachable: east (cost 1)");
        l["targets"] = json!([{"routingKey": "redis", "siteName": "east", "cost": 1}]);
        assert_eq!(
            service_detail(Service::Listener, &l, Some(&net())),
            "reachable: east (cost 1)"
        );
        let mut c = json!({"name": "c", "routingKey": "redis"});
        c["reason"] = json!("backend 127.0.0.1:1 refused the connection at 07:41:03 UTC");
        assert_eq!(
            service_detail(Service::Connector, &c, None),
            "backend 127.0.0.1:1 refused the connection at 07:41:03 UTC"
        );
        let mut t = listener("redis");
        t["targets"] = json!([{"siteName": "east", "cost": 1}, {"siteName": "north", "cost": 2}]);
        t["requests"] = json!({"2xx": 3, "5xx": 0});
        assert_eq!(
            service_detail(Service::Listener, &t, None),
            "reachable: east (cost 1), north (cost 2); requests: 2xx 3"
        );
    }

    #[test]
    fn without_a_router_reason_the_network_view_says_why() {
        let n = net();
        assert_eq!(
            service_detail(Service::Listener, &listener("redis"), Some(&n)),
            "reachable: east (cost 1)"
        );
        assert_eq!(
            service_detail(Service::Listener, &listener("web"), Some(&n)),
            r#"key "web" is served only by north, which is unreachable from here (no link path)"#
        );
        assert_eq!(
            service_detail(Service::Listener, &listener("ghost"), Some(&n)),
            r#"no site in the network has a connector for key "ghost""#
        );
    }
}
