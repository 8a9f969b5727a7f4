//! What `site status` and `link list` print: a table for people, JSON for scripts.

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
    println!(
        "links: {} up, {} connecting, {} refused",
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
                        stopped(
                            &l.metadata.name,
                            s.routing_key.as_deref(),
                            &s.host,
                            s.port,
                            &s.protocol,
                        )
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
            // HTTP listeners: requests by status class (the non-zero ones).
            let requests = i.get("requests").and_then(Value::as_object).map(|r| {
                let counts: Vec<String> = r
                    .iter()
                    .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                    .map(|(class, n)| format!("{class} {}", plain(n)))
                    .collect();
                format!(
                    "requests: {}",
                    if counts.is_empty() {
                        "none".into()
                    } else {
                        counts.join(", ")
                    }
                )
            });
            let address = match (kind, i.get("address").filter(|a| !a.is_null())) {
                (Service::Listener, Some(a)) => plain(a),
                _ => format!("{}:{}", plain(&i["host"]), plain(&i["port"])),
            };
            let flows = match (i.get("flowsActive"), i.get("flowsTotal")) {
                (Some(a), Some(t)) => format!("{} / {}", plain(a), plain(t)),
                _ => "-".into(),
            };
            [
                plain(&i["name"]),
                plain(&i["routingKey"]),
                plain(&i["protocol"]),
                address,
                plain(&i["status"]),
                flows,
                i.get("reason").map(plain).or(requests).unwrap_or_default(),
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
pub async fn network_status(
    folder: &SiteFolder,
    format: Option<Format>,
) -> Result<ExitCode, SiteError> {
    load_site(folder)?;
    let net = admin_request(&folder.admin_socket(), Method::GET, "/v1/network").await?;
    if format == Some(Format::Json) {
        println!("{}", serde_json::to_string_pretty(&net).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let routers = net["routers"].as_array().cloned().unwrap_or_default();
    let name_of = |id: &Value| {
        routers
            .iter()
            .find(|r| &r["id"] == id)
            .map(|r| plain(&r["name"]))
            .unwrap_or_else(|| plain(id).chars().take(8).collect())
    };
    let rows: Vec<[String; 5]> = routers
        .iter()
        .map(|r| {
            let links = r["links"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| {
                            let up = if l["up"] == true { "" } else { " (one-way)" };
                            format!("{} (cost {}){up}", name_of(&l["peer"]), plain(&l["cost"]))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let name = if r["local"] == true {
                format!("{} (this site)", plain(&r["name"]))
            } else {
                plain(&r["name"])
            };
            [
                name,
                plain(&r["mode"]),
                if r["reachable"] == true {
                    "yes".into()
                } else {
                    "no".into()
                },
                plain(&r["cost"]),
                links,
            ]
        })
        .collect();
    println!("sites:");
    print_table(&["SITE", "MODE", "REACHABLE", "COST", "LINKS"], &rows);
    let keys = net["keys"].as_array().cloned().unwrap_or_default();
    println!();
    if keys.is_empty() {
        println!("routing keys: none (add one with: skiff connector create NAME PORT)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 2]> = keys
        .iter()
        .map(|k| {
            let sites = k["sites"]
                .as_array()
                .map(|ss| {
                    ss.iter()
                        .map(|s| {
                            let down = if s["reachable"] == true {
                                ""
                            } else {
                                ", unreachable"
                            };
                            format!(
                                "{} ({} connector(s), port {}{down})",
                                plain(&s["siteName"]),
                                plain(&s["connectors"]),
                                plain(&s["port"])
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            [plain(&k["routingKey"]), sites]
        })
        .collect();
    println!("routing keys:");
    print_table(&["ROUTING KEY", "SERVED BY"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn plain(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
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
