//! Shared helpers for the cross-crate tests: sites in temporary folders, started in this
//! process with the real router, linked with real tokens.
//!
//! # Layout
//! - this file: [`TestSite`], [`link`], [`wait_for`].

#![forbid(unsafe_code)]

use std::time::Duration;

use skiff_router::link::{LinkState, LinkStatus};
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::run::{RunOptions, RunningSite};
use skiff_site_controller::site::{SiteOptions, create_site};
use skiff_site_controller::token::{IssueOptions, RedeemOptions, issue_token, redeem};

/// A site in a temporary folder, running in this process.
pub struct TestSite {
    /// Its name.
    pub name: String,
    /// Its folder.
    pub folder: SiteFolder,
    /// The running site (None once stopped).
    pub running: Option<RunningSite>,
    _tmp: tempfile::TempDir,
}

impl TestSite {
    /// Creates and starts a site; `link_access` sites listen on a free loopback port.
    pub async fn start(name: &str, link_access: bool) -> TestSite {
        skiff_certs::install_crypto_provider();
        let tmp = tempfile::tempdir().expect("temp dir");
        let folder = SiteFolder::new(tmp.path().join(name));
        let opts = SiteOptions {
            link_access,
            link_hosts: if link_access {
                vec!["127.0.0.1".into()]
            } else {
                vec![]
            },
            link_port: Some(0),
            edge: false,
        };
        create_site(&folder, name, &opts).expect("create site");
        let running = RunningSite::start(folder.clone(), RunOptions::default())
            .await
            .expect("start site");
        TestSite {
            name: name.into(),
            folder,
            running: Some(running),
            _tmp: tmp,
        }
    }

    /// The site's links now.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.running.as_ref().expect("running").state().links()
    }

    /// Stops the site.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// Links `from` to `to` with a fresh token; returns the link's name at `from`.
pub async fn link(from: &TestSite, to: &TestSite, name: &str) -> String {
    let token = issue_token(
        &to.folder,
        &IssueOptions {
            expiration_window: Duration::from_secs(60),
            redemptions_allowed: 1,
            cost: 1,
        },
    )
    .await
    .expect("issue token");
    let opts = RedeemOptions {
        name: Some(name.into()),
        ..Default::default()
    };
    redeem(&from.folder, &token.to_yaml(), &opts)
        .await
        .expect("redeem")
        .metadata
        .name
}

/// Polls `cond` every 20 ms until it holds, or panics with `what` after `within`.
pub async fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Is the link named `name` up?
pub fn is_up(links: &[LinkStatus], name: &str) -> bool {
    links
        .iter()
        .any(|l| l.name == name && matches!(l.state, LinkState::Up))
}
