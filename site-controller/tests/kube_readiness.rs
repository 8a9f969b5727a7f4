//! Readiness of a Kubernetes site against a real API server (tests/kube-apiserver): the site
//! becomes ready once its control loop's first pass over the API succeeded (the readiness it
//! holds from the start is released), and unready from the first moment of shutdown.
#![cfg(feature = "kubernetes")]

mod kube_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
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
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
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
                    "apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: ready\n".into(),
                )])),
                ..Default::default()
            },
        )
        .await
        .expect("create the site ConfigMap");
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
