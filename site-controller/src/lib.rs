//! The site controller: desired state in the site folder turned into a running router.
//!
//! # Layout
//! - [`folder`]: the site folder's files, atomic writes, the run lock.
//! - [`resources`]: Site, Link and LinkedSite resource shapes (YAML).
//! - [`site`]: create, load and delete a site; store links, grants and linked sites.
//! - [`grant`]: token redemption: the grant service and its client.
//! - [`run`]: a running site: router, grant service, admin API, reload.
//! - [`reload`]: what a reload changed (links, listeners, connectors; settings needing a restart).
//! - [`admin`]: the admin API server and client.
//! - [`probes`]: liveness and readiness (`/livez`, `/readyz`): starting, running, stopping.
//! - [`logbuf`]: the recent log lines of the running site (`/v1/logs`), a bounded ring.
//! - [`apply`]: `skiff apply -f` / `delete -f` / `get`: resource YAML checked with file:line, then written.
//! - [`token`]: issuing and redeeming tokens (the verbs behind `skiff token`).
//! - [`offline`]: offline links (`skiff link generate`): a link file signed in advance.
//! - [`services`]: listeners and connectors (the verbs, and their router specs).
//! - [`service`]: the systemd unit of a site (`skiff site install-service`).
//! - `fuzzing`: the bodies of the fuzz targets, shared with the seed replay test (hidden).
//! - `kubernetes`: the Kubernetes site (feature `kubernetes`): the folder fed from the API.

#![forbid(unsafe_code)]

pub mod admin;
pub mod apply;
pub mod console;
mod error;
pub mod folder;
#[doc(hidden)]
pub mod fuzzing;
pub mod grant;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod logbuf;
pub mod metrics;
pub mod offline;
pub mod probes;
pub mod reload;
pub mod resources;
pub mod run;
pub mod service;
pub mod services;
pub mod site;
pub mod token;

pub use error::SiteError;

/// The error and its causes as one sentence: `outer: cause: cause`.
pub use skiff_router::link::error_chain;
