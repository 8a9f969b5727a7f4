//! Readiness of a Kubernetes site against a real API server (tests/kube-apiserver): the site
//! becomes ready once its control loop's first pass over the API succeeded (the readiness it
//! holds from the start is released), and unready from the first moment of shutdown; a
//! first pass that fails (the API server out of reach) keeps it unready and says why.
#![cfg(feature = "kubernetes")]

mod kube_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::kubernetes::{KubeOptions, KubeSite};

use kube_support::TestApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_site_is_ready_after_its_first_pass_and_unready_when_stopping() {
    let Some(server) = TestApiServer::start() else {
        return;
    };
    skiff_certs::install_crypto_provider();
    let client = server.client().await;
    let ns = "ready";
    create_site_namespace(&client, ns).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = KubeOptions::new(ns);
    opts.link_bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let first = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .min(65000);
    opts.listener_ports = first..=first + 20;
    let started = Instant::now();
    let site = KubeSite::start(client.clone(), SiteFolder::new(dir.path()), opts)
        .await
        .expect("the site starts");
    let state = site.site().state();
    let first_look = state.probes().readiness(Some(&state.readiness_facts()));
    // Right after the start the first pass may or may not have run; if not, the reason
    // says what readiness waits for.
    if !first_look.ready {
        assert_eq!(
            first_look.reasons,
            [
                "the first pass over the Kubernetes API (Services to expose, listeners for the network's keys) has not finished"
            ],
            "{first_look:#?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let r = state.probes().readiness(Some(&state.readiness_facts()));
        if r.ready {
            break r;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ready.checks.iter().all(|c| c.name != "kubernetes"),
        "{ready:#?}"
    );
    eprintln!(
        "ready {:?} after the start began (first look ready: {})",
        started.elapsed(),
        first_look.ready
    );
    site.site().begin_stopping();
    let r = state.probes().readiness(Some(&state.readiness_facts()));
    assert!(!r.ready);
    assert!(
        r.reasons[0].starts_with("the site is shutting down"),
        "{r:#?}"
    );
    site.stop().await;
}

/// A loopback TCP forwarder to the API server (std threads; TLS passes through untouched)
/// that can be cut: every open connection is shut down and new ones are closed at once,
/// until it is mended. Its threads end with the test process; the sockets close on cut.
struct Cuttable {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cuttable {
    fn start(upstream: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut open = o.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { addr, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// On a current-thread runtime the control loop spawned by `KubeSite::start` cannot run
/// before this test yields: the first look at readiness is always before the first pass, so
/// the hold is asserted every time. The API server is then cut off before the pass runs: the
/// pass fails and readiness says so; once the server is reachable again the site is ready.
#[tokio::test(flavor = "current_thread")]
async fn the_first_pass_holds_readiness_and_a_failed_first_pass_says_why() {
    let Some(server) = TestApiServer::start() else {
        return;
    };
    skiff_certs::install_crypto_provider();
    let client = server.client().await;
    let ns = "held";
    create_site_namespace(&client, ns).await;
    let proxy = Cuttable::start(SocketAddr::from(([127, 0, 0, 1], server.port())));
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig_path()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.cluster_url = format!("https://127.0.0.1:{}", proxy.addr.port())
        .parse()
        .unwrap();
    let through_proxy = kube::Client::try_from(config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut opts = KubeOptions::new(ns);
    opts.link_bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let first = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .min(65000);
    opts.listener_ports = first..=first + 20;
    opts.resync = Duration::from_millis(500);
    let site = KubeSite::start(through_proxy, SiteFolder::new(dir.path()), opts)
        .await
        .expect("the site starts");
    let state = site.site().state();
    // No await since start returned: the control loop has not run.
    let held = state.probes().readiness(Some(&state.readiness_facts()));
    assert!(!held.ready, "{held:#?}");
    assert_eq!(
        held.reasons,
        [
            "the first pass over the Kubernetes API (Services to expose, listeners for the network's keys) has not finished"
        ],
        "{held:#?}"
    );
    proxy.cut();
    let cut_at = Instant::now();
    let deadline = cut_at + Duration::from_secs(60);
    let failed = loop {
        let r = state.probes().readiness(Some(&state.readiness_facts()));
        assert!(!r.ready, "ready although the API server is cut off: {r:#?}");
        if r.reasons.iter().any(|m| m.contains("failed")) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no failed first pass within 60 s: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed.reasons.len(), 1, "{failed:#?}");
    assert!(
        failed.reasons[0].starts_with("the first pass over the Kubernetes API failed: "),
        "{failed:#?}"
    );
    eprintln!(
        "first pass failed {:?} after the cut: {}",
        cut_at.elapsed(),
        failed.reasons[0]
    );
    proxy.mend();
    let mended = Instant::now();
    let deadline = mended + Duration::from_secs(60);
    loop {
        let r = state.probes().readiness(Some(&state.readiness_facts()));
        if r.ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 60 s of the API server's return: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "ready {:?} after the API server was reachable again",
        mended.elapsed()
    );
    site.stop().await;
}

/// Namespace `ns` with a site ConfigMap naming the site after it.
async fn create_site_namespace(client: &kube::Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("skiff-site".into()),
                    labels: Some(BTreeMap::from([("skiff.io/type".into(), "site".into())])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    "site.yaml".into(),
                    format!("apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: {ns}\n"),
                )])),
                ..Default::default()
            },
        )
        .await
        .expect("create the site ConfigMap");
}
