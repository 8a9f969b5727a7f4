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
    match site.get("linkAddress").and_then(Value::as_str) {
        Some(addr) => println!("link access: {addr} (tokens point at {})", s("linkHosts")),
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
