//! `skiff demo`: two sites on this machine, linked by a real token over mutual TLS, shown up,
//! then stopped. Everything lives in a temporary folder that is removed at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_router::link::LinkState;
use skiff_site_controller::SiteError;
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::run::{RunOptions, RunningSite};
use skiff_site_controller::site::{SiteOptions, create_site};
use skiff_site_controller::token::{IssueOptions, RedeemOptions, issue_token, redeem};

/// How long the demo waits for the link to come up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo; exit 0 when the link came up on both sides.
pub async fn run() -> Result<ExitCode, SiteError> {
    let tmp = std::env::temp_dir().join(format!("skiff-demo-{}", std::process::id()));
    let result = demo(&tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn demo(tmp: &std::path::Path) -> Result<ExitCode, SiteError> {
    let west = SiteFolder::new(tmp.join("west"));
    let east = SiteFolder::new(tmp.join("east"));
    println!(
        "1. creating site west (accepts links) and site east in {}",
        tmp.display()
    );
    create_site(
        &west,
        "west",
        &SiteOptions {
            link_access: true,
            link_hosts: vec!["127.0.0.1".into()],
            link_port: Some(0),
            edge: false,
        },
    )?;
    create_site(&east, "east", &SiteOptions::default())?;

    println!("2. starting both routers");
    let west_site = RunningSite::start(west.clone(), RunOptions::default()).await?;
    let east_site = RunningSite::start(east.clone(), RunOptions::default()).await?;
    println!(
        "   west accepts links on {}",
        west_site
            .link_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );

    println!("3. west issues a one-time token (15 minutes)");
    let token = issue_token(
        &west,
        &IssueOptions {
            expiration_window: Duration::from_secs(15 * 60),
            redemptions_allowed: 1,
            cost: 1,
        },
    )
    .await?;

    println!(
        "4. east redeems it: a CSR goes to west, a certificate comes back (the key stays at east)"
    );
    let started = Instant::now();
    let link = redeem(&east, &token.to_yaml(), &RedeemOptions::default()).await?;

    let up = wait_up(&west_site, &east_site).await;
    let outcome = match up {
        Some(transport) => {
            println!(
                "5. link {:?} is up on both sides over {transport} after {} ms",
                link.metadata.name,
                started.elapsed().as_millis()
            );
            println!("done: two sites, one token, one mutually authenticated link");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            println!(
                "5. the link did not come up within {}s: {}",
                LINK_UP_TIMEOUT.as_secs(),
                serde_json::to_string(&east_site.state().links_json()).unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    };
    east_site.stop().await;
    west_site.stop().await;
    outcome
}

/// Waits until both sites report an up link; returns the transport.
async fn wait_up(west: &RunningSite, east: &RunningSite) -> Option<String> {
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    while Instant::now() < deadline {
        let e = east.state().links();
        let w = west.state().links();
        let up = |l: &skiff_router::link::LinkStatus| matches!(l.state, LinkState::Up);
        if let (Some(el), true) = (e.iter().find(|l| up(l)), w.iter().any(up)) {
            return Some(
                el.transport
                    .map(|t| format!("{t:?}").to_uppercase())
                    .unwrap_or_default(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
