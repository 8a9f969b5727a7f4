//! deploy/ and examples/kubernetes/ against the real test API server: kubectl accepts every
//! manifest (server-side dry run with strict field validation), and the controller accepts
//! the example ConfigMaps once they are applied for real.
#![cfg(feature = "kubernetes")]

mod kube_support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Api;
use kube::api::PostParams;
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::kubernetes::{KubeOptions, KubeSite};

use kube_support::TestApiServer;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs kubectl with `args`; panics with its output unless it succeeds.
fn kubectl(server: &TestApiServer, args: &[&str]) -> String {
    let out = server
        .kubectl()
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_apply_and_the_controller_accepts_the_examples() {
    let Some(server) = TestApiServer::start() else {
        return;
    };
    skiff_certs::install_crypto_provider();
    let client = server.client().await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: kube::api::ObjectMeta {
                    name: Some("east".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace east");

    // Every manifest passes the server's own validation.
    for target in [
        &["-k", "deploy"][..],
        &["-k", "examples/kubernetes/east"],
        &["-k", "examples/kubernetes/west"],
        &["-f", "examples/kubernetes/backend.yaml"],
        &["-f", "examples/kubernetes/connector-configmap.yaml"],
        &["-f", "examples/kubernetes/listener-configmap.yaml"],
    ] {
        let mut args = vec![
            "apply",
            "-n",
            "east",
            "--dry-run=server",
            "--validate=strict",
        ];
        args.extend_from_slice(target);
        kubectl(&server, &args);
    }

    // Applied for real, the east example is a site the controller runs as documented.
    for target in [
        ["-k", "examples/kubernetes/east"],
        ["-f", "examples/kubernetes/connector-configmap.yaml"],
        ["-f", "examples/kubernetes/listener-configmap.yaml"],
    ] {
        kubectl(&server, &[&["apply", "-n", "east"][..], &target].concat());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = KubeOptions::new("east");
    opts.link_bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    opts.resync = Duration::from_millis(500);
    // The example's site binds its link port (45671) on loopback here.
    let site = KubeSite::start(client.clone(), SiteFolder::new(dir.path()), opts)
        .await
        .expect("the east example starts");
    let status = site.site().state().site_json();
    assert_eq!(status["name"], "east", "{status}");
    assert_eq!(status["linkAccess"], true, "{status}");

    // The example connector and listener are taken; nothing is reported as wrong.
    let start = Instant::now();
    loop {
        let s = site.site().state().site_json();
        let connectors = site.site().state().router().connectors();
        let listeners = site.site().state().router().listeners();
        let problems = &s["kubernetes"]["problems"];
        if connectors.iter().any(|c| c.name == "db")
            && listeners.iter().any(|l| l.name == "db-failover")
        {
            assert_eq!(problems.as_array().map(Vec::len), Some(0), "{s}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the example connector and listener did not appear: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The ConfigMap listener gets its Service, selecting the router pod.
    let svc = Api::<Service>::namespaced(client.clone(), "east")
        .get("db-failover")
        .await
        .expect("Service db-failover");
    let selector = svc.spec.unwrap().selector.unwrap();
    assert_eq!(selector["app.kubernetes.io/component"], "router");
    site.stop().await;
}
