//! `skiff site reload`: asks the running site to re-read its folder (`POST /v1/reload` on
//! its admin socket, what SIGHUP does) and prints what changed and what needs a restart.
//! Exits 1 when a listener or connector it added or changed did not start (a port in use).

use std::process::ExitCode;

use http::Method;
use serde_json::Value;
use skiff_site_controller::SiteError;
use skiff_site_controller::admin::admin_request;
use skiff_site_controller::folder::SiteFolder;

use crate::output::Format;

/// What the running site said when it could not reload (the admin API's status).
const RELOAD_FAILED: u16 = 422;

/// Reloads the site in `folder`; exits non-zero when it does not run or did not reload.
pub async fn reload(folder: &SiteFolder, format: Option<Format>) -> Result<ExitCode, SiteError> {
    if !folder.exists() {
        return Err(SiteError::NoSite {
            dir: folder.root().to_path_buf(),
        });
    }
    let not_running = || SiteError::NotRunning {
        dir: folder.root().to_path_buf(),
    };
    if !folder.is_locked() {
        return Err(not_running());
    }
    let report = match admin_request(&folder.admin_socket(), Method::POST, "/v1/reload").await {
        Ok(r) => r,
        Err(SiteError::Admin {
            status: RELOAD_FAILED,
            message,
        }) => {
            crate::logging::report_error(
                &format!("the site did not reload: {message}"),
                Some(
                    "nothing was applied and the site runs on as it was; fix or remove that \
                     file, then run skiff site reload again",
                ),
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e),
    };
    let failed: Vec<String> = report["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{} {:?} did not start: {}",
                plain(&f["kind"]),
                plain(&f["name"]),
                plain(&f["reason"])
            )
        })
        .collect();
    let outcome = if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if format == Some(Format::Json) {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(outcome);
    }
    println!("site in {} reloaded", folder.root().display());
    for kind in ["links", "listeners", "connectors"] {
        println!("{kind}: {}", changes(&report[kind]));
    }
    for s in report["disconnectedSites"].as_array().into_iter().flatten() {
        println!("site {} disconnected: revoked or forgotten here", plain(s));
    }
    for s in report["skipped"].as_array().into_iter().flatten() {
        println!(
            "{} {:?} skipped: {}",
            plain(&s["kind"]),
            plain(&s["name"]),
            plain(&s["problem"])
        );
    }
    let restart: Vec<String> = report["needsRestart"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {:?} -> {:?}",
                plain(&r["setting"]),
                plain(&r["running"]),
                plain(&r["file"])
            )
        })
        .collect();
    if !restart.is_empty() {
        println!(
            "needs a restart (in site.yaml, not applied): {}; restart the site to apply \
             (systemctl restart, or stop and start skiff site run)",
            restart.join(", ")
        );
    }
    if !failed.is_empty() {
        crate::logging::report_error(
            &format!(
                "the site reloaded, but not everything started: {}",
                failed.join("; ")
            ),
            Some(
                "everything else is applied; a changed listener's old port is closed too. Free \
                 the port or choose another (edit the file), then run skiff site reload again",
            ),
        );
    }
    Ok(outcome)
}

/// `added a, b; changed c` or `unchanged`.
fn changes(c: &Value) -> String {
    let parts: Vec<String> = ["added", "removed", "changed", "renewed"]
        .into_iter()
        .filter_map(|what| {
            let names: Vec<String> = c[what].as_array()?.iter().map(plain).collect();
            (!names.is_empty()).then(|| format!("{what} {}", names.join(", ")))
        })
        .collect();
    if parts.is_empty() {
        "unchanged".into()
    } else {
        parts.join("; ")
    }
}

/// A JSON value as text, strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
