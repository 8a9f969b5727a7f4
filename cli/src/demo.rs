//! `skiff demo`: two sites on this machine, linked by a real token over mutual TLS, and a
//! built-in backend at one reached through a listener at the other; then stopped. Everything lives in a temporary folder that is removed at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use skiff_router::link::LinkState;
use skiff_site_controller::SiteError;
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::run::{RunOptions, RunningSite};
use skiff_site_controller::services::{create_connector, create_listener};
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

    let Some(transport) = wait_up(&west_site, &east_site).await else {
        println!(
            "5. the link did not come up within {}s: {}",
            LINK_UP_TIMEOUT.as_secs(),
            serde_json::to_string(&east_site.state().links_json()).unwrap_or_default()
        );
        east_site.stop().await;
        west_site.stop().await;
        return Ok(ExitCode::FAILURE);
    };
    println!(
        "5. link {:?} is up on both sides over {transport} after {} ms",
        link.metadata.name,
        started.elapsed().as_millis()
    );
    let outcome = service_across(&west, &west_site, &east, &east_site).await;
    match &outcome {
        Ok(()) => println!(
            "done: two sites, one token, one mutually authenticated link, one service across it"
        ),
        Err(e) => println!("the service did not work across the sites: {e}"),
    }
    let outcome = Ok(if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    });
    east_site.stop().await;
    west_site.stop().await;
    outcome
}

/// A built-in backend at west, a connector for it at west and a listener at east; a client at
/// east reaches the backend through the listener.
async fn service_across(
    west: &SiteFolder,
    west_site: &RunningSite,
    east: &SiteFolder,
    east_site: &RunningSite,
) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("could not start the demo backend: {e}"))?;
    let backend_port = backend.local_addr().map_err(|e| e.to_string())?.port();
    let server = tokio::spawn(async move {
        // One greeting per connection: read a line, answer it, close.
        while let Ok((conn, _)) = backend.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_ok() {
                    let reply = format!("hello from west, you said: {}", line.trim_end());
                    let _ = w.write_all(reply.as_bytes()).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    println!(
        "6. west: a backend on 127.0.0.1:{backend_port}, exposed as routing key \"greeting\" (skiff connector create greeting {backend_port})"
    );
    create_connector(
        west,
        "greeting",
        backend_port,
        None,
        Some("127.0.0.1"),
        "tcp",
    )
    .map_err(|e| e.to_string())?;
    west_site
        .state()
        .reload()
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "7. east: a listener for \"greeting\" (skiff listener create greeting 0 --host 127.0.0.1)"
    );
    create_listener(east, "greeting", 0, None, Some("127.0.0.1"), "tcp", None)
        .map_err(|e| e.to_string())?;
    east_site
        .state()
        .reload()
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + LINK_UP_TIMEOUT;
    let address = loop {
        let l = east_site.state().router().listeners();
        if let Some(l) = l
            .iter()
            .find(|l| l.status == skiff_router::flow::ResourceState::Active)
        {
            break l.address.clone().unwrap_or_default();
        }
        if Instant::now() > deadline {
            server.abort();
            return Err(format!(
                "the route to \"greeting\" did not reach east: {l:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t = Instant::now();
    let result = async {
        let mut conn = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("could not connect to the listener at {address}: {e}"))?;
        conn.write_all(b"ping from east\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut reply)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(reply)
    };
    let reply = tokio::time::timeout(LINK_UP_TIMEOUT, result)
        .await
        .map_err(|_| "no answer within 10 s".to_string())??;
    server.abort();
    println!(
        "8. a client at east connected to {address} and got back in {} ms: {reply:?}",
        t.elapsed().as_millis()
    );
    if !reply.starts_with("hello from west") {
        return Err(format!("unexpected reply {reply:?}"));
    }
    print_record(east_site).await;
    Ok(())
}

/// Step 9: the flow record east kept of the connection (what `GET /v1/flows` answers), once the
/// flow has ended there.
async fn print_record(east_site: &RunningSite) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let record = loop {
        let recent = east_site.state().router().recent_flows();
        if let Some(r) = recent
            .into_iter()
            .rev()
            .find(|r| r.routing_key == "greeting")
        {
            break r;
        }
        if Instant::now() > deadline {
            println!("9. east has no record of the flow yet (see GET /v1/flows)");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let outcome = serde_json::to_value(record.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let to = record
        .destination
        .as_ref()
        .and_then(|d| d.name.clone())
        .unwrap_or_else(|| "-".into());
    println!(
        "9. east recorded it (skiff network status, GET /v1/flows, docs/observability.md): key greeting to {to}, outcome {outcome}, {} bytes sent, {} back, {} ms",
        record.bytes_forward, record.bytes_back, record.duration_ms
    );
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
