//! Tokens applied as Secrets (`skiff.io/type: token`, key `token.yaml`): the controller
//! redeems each once and writes the outcome on the Secret (annotations) and as an Event.
//!
//! A token is tried again only when its content changes, except when the issuer could not be
//! reached: then it is retried with backoff (5 s doubling to 60 s), and the Secret says so.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::names::{
    ANNOTATION_STATUS, ANNOTATION_STATUS_MESSAGE, ANNOTATION_TOKEN_HASH, KEY_TOKEN, sha256_hex,
};
use super::{Ctx, EventType};
use crate::SiteError;
use crate::token::{RedeemOptions, redeem};

/// First retry delay after the issuer could not be reached.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The outcome recorded on a token Secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenOutcome {
    /// The Secret.
    pub secret: String,
    /// `Redeemed`, `Failed` or `Retrying`.
    pub status: String,
    /// The link made, or why not.
    pub message: String,
}

/// Retry times of tokens whose issuer was unreachable, by Secret name.
#[derive(Default)]
pub(super) struct Retries {
    next: HashMap<String, (String, Instant, Duration)>,
}

/// Redeems the token Secrets that need it (a new link reaches the running site through
/// `token::redeem`, which asks it to reload); returns every token's current outcome.
pub(super) async fn redeem_tokens(
    ctx: &Ctx,
    secrets: &[Secret],
    retries: &mut Retries,
) -> Vec<TokenOutcome> {
    let mut outcomes = Vec::new();
    let now = Instant::now();
    for s in secrets {
        let Some(name) = s.metadata.name.clone() else {
            continue;
        };
        let notes = s.metadata.annotations.clone().unwrap_or_default();
        let status = notes.get(ANNOTATION_STATUS).cloned().unwrap_or_default();
        let message = notes
            .get(ANNOTATION_STATUS_MESSAGE)
            .cloned()
            .unwrap_or_default();
        let text = s
            .data
            .as_ref()
            .and_then(|d| d.get(KEY_TOKEN))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        let Some(text) = text else {
            let why = format!(
                "the Secret has no key {KEY_TOKEN}: create it with kubectl create secret generic {name} --from-file={KEY_TOKEN}=<token file>"
            );
            if status != "Failed" || message != why {
                record(ctx, s, "Failed", &why, None).await;
            }
            outcomes.push(outcome(&name, "Failed", &why));
            continue;
        };
        let hash = sha256_hex(text.as_bytes());
        let same_token = notes.get(ANNOTATION_TOKEN_HASH) == Some(&hash);
        let due = match retries.next.get(&name) {
            Some((h, at, _)) if *h == hash => *at <= now,
            _ => true,
        };
        let settled = same_token && (status == "Redeemed" || status == "Failed");
        if settled || (same_token && status == "Retrying" && !due) {
            outcomes.push(outcome(&name, &status, &message));
            continue;
        }
        let opts = RedeemOptions::default();
        match redeem(&ctx.folder, &text, &opts).await {
            Ok(link) => {
                retries.next.remove(&name);
                let msg = format!(
                    "link {} to site {} made",
                    link.metadata.name, link.spec.peer_site_name
                );
                tracing::info!(secret = %name, link = %link.metadata.name, "token redeemed");
                record(ctx, s, "Redeemed", &msg, Some(&hash)).await;
                outcomes.push(outcome(&name, "Redeemed", &msg));
            }
            Err(e) => {
                let transient = matches!(e, SiteError::IssuerUnreachable { .. });
                let mut msg = crate::error_chain(&e);
                if let Some(h) = e.hint() {
                    msg.push_str("; ");
                    msg.push_str(&h);
                }
                let status = if transient {
                    let delay = match retries.next.get(&name) {
                        Some((h, _, d)) if *h == hash => (*d * 2).min(RETRY_MAX),
                        _ => RETRY_FIRST,
                    };
                    retries
                        .next
                        .insert(name.clone(), (hash.clone(), now + delay, delay));
                    msg.push_str(&format!(" (trying again in {} s)", delay.as_secs()));
                    "Retrying"
                } else {
                    retries.next.remove(&name);
                    "Failed"
                };
                tracing::warn!(secret = %name, cause = %msg, "token not redeemed");
                record(ctx, s, status, &msg, Some(&hash)).await;
                outcomes.push(outcome(&name, status, &msg));
            }
        }
    }
    // Forget Secrets that are gone.
    retries
        .next
        .retain(|n, _| secrets.iter().any(|s| s.metadata.name.as_ref() == Some(n)));
    outcomes
}

fn outcome(secret: &str, status: &str, message: &str) -> TokenOutcome {
    TokenOutcome {
        secret: secret.into(),
        status: status.into(),
        message: message.into(),
    }
}

/// Writes the outcome on the Secret, and as an Event when the status changed (a token
/// retried every minute gives one Event, not one a minute). Failing to write it is logged:
/// the next pass tries again (a redeemed token redeemed again is answered by the issuer
/// without spending it twice).
async fn record(ctx: &Ctx, s: &Secret, status: &str, message: &str, hash: Option<&str>) {
    let name = s.metadata.name.clone().unwrap_or_default();
    let notes = s.metadata.annotations.clone().unwrap_or_default();
    let changed = notes.get(ANNOTATION_STATUS).map(String::as_str) != Some(status)
        || notes.get(ANNOTATION_TOKEN_HASH).map(String::as_str) != hash;
    let mut notes = BTreeMap::from([
        (ANNOTATION_STATUS, Some(status)),
        (ANNOTATION_STATUS_MESSAGE, Some(message)),
    ]);
    notes.insert(ANNOTATION_TOKEN_HASH, hash);
    let patch = serde_json::json!({ "metadata": { "annotations": notes } });
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if let Err(e) = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(secret = %name, cause = %e, "could not record the token's outcome");
    }
    if !changed {
        return;
    }
    let (kind, reason) = match status {
        "Redeemed" => (EventType::Normal, "TokenRedeemed"),
        "Retrying" => (EventType::Warning, "TokenRetrying"),
        _ => (EventType::Warning, "TokenFailed"),
    };
    ctx.event(
        "Secret",
        &name,
        s.metadata.uid.as_deref(),
        kind,
        reason,
        message,
    )
    .await;
}
