//! Checks that the test Kubernetes API server (tests/kube-apiserver) does, through kube-rs,
//! what the Kubernetes site controller relies on: namespaced objects of the served kinds,
//! label and field selectors, server-side apply, 409 on a stale resourceVersion, watches,
//! objects surviving a restart, and 410 Gone for a watch from a compacted resourceVersion.
#![cfg(feature = "kubernetes")]

mod kube_support;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_support::TestApiServer;
use serde_json::json;

/// The whole scenario must finish within this (a start takes about 1–2 s).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for one watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

const NAMESPACE: &str = "smoke";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_apiserver_serves_what_the_controller_needs() {
    let Some(mut server) = TestApiServer::start() else {
        return;
    };
    let outcome = tokio::time::timeout(SCENARIO_TIMEOUT, scenario(&mut server)).await;
    assert!(
        outcome.is_ok(),
        "the scenario did not finish within {SCENARIO_TIMEOUT:?}; the server log ends with:\n{}",
        server.log_tail()
    );
}

async fn scenario(server: &mut TestApiServer) {
    let client = server.client().await;

    // A namespace; objects in a missing namespace are refused, as kube-apiserver does.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let orphan: Api<ConfigMap> = Api::namespaced(client.clone(), "no-such-namespace");
    let err = orphan
        .create(&PostParams::default(), &config_map("orphan"))
        .await
        .expect_err("a ConfigMap in a missing namespace must be refused");
    assert_eq!(api_code(&err), Some(404), "{err}");

    // A Service gets a cluster IP and defaults; reading it back gives the same object.
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "backend", "labels": {"app": "backend"}},
        "spec": {"selector": {"app": "backend"}, "ports": [{"name": "http", "port": 8080}]}
    }))
    .unwrap();
    let created = services.create(&PostParams::default(), &svc).await.unwrap();
    let spec = created.spec.clone().unwrap();
    let cluster_ip = spec.cluster_ip.clone().expect("a cluster IP was allocated");
    assert!(
        cluster_ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "{cluster_ip}"
    );
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    let read = services.get("backend").await.unwrap();
    assert_eq!(read.spec.unwrap().cluster_ip, Some(cluster_ip.clone()));
    assert_eq!(read.metadata.uid, created.metadata.uid);

    // An EndpointSlice for it (there is no EndpointSlice controller: tests write them).
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "backend-1", "labels": {"kubernetes.io/service-name": "backend"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080}]
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let by_label = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=backend"))
        .await
        .unwrap();
    assert_eq!(names(&by_label.items), ["backend-1"]);
    let none = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=other"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    let by_field = services
        .list(&ListParams::default().fields("metadata.name=backend"))
        .await
        .unwrap();
    assert_eq!(names(&by_field.items), ["backend"]);
    let read_slice = slices.get("backend-1").await.unwrap();
    assert_eq!(read_slice.endpoints.unwrap()[0].addresses, ["10.1.0.7"]);
    let invalid: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "bad"}, "addressType": "Carrier-Pigeon", "endpoints": []
    }))
    .unwrap();
    let err = slices
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("an unknown addressType must be refused");
    assert_eq!(api_code(&err), Some(422), "{err}");

    // Server-side apply of a ConfigMap: created, owned by the field manager, and a second
    // manager changing the same field without force gets a conflict.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let applied = config_maps
        .patch(
            "settings",
            &PatchParams::apply("skiff-smoke"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"mode": "edge"}
            })),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.as_ref().unwrap()["mode"], "edge");
    let managers = applied.metadata.managed_fields.clone().unwrap_or_default();
    assert!(
        managers
            .iter()
            .any(|m| m.manager.as_deref() == Some("skiff-smoke")
                && m.operation.as_deref() == Some("Apply")),
        "{managers:?}"
    );
    let err = config_maps
        .patch(
            "settings",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"mode": "interior"}
            })),
        )
        .await
        .expect_err("applying a field another manager owns must conflict");
    assert_eq!(api_code(&err), Some(409), "{err}");

    // Optimistic concurrency: an update carrying a stale resourceVersion gets 409.
    let stale = config_maps.get("settings").await.unwrap();
    config_maps
        .patch(
            "settings",
            &PatchParams::apply("skiff-smoke"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings"},
                "data": {"mode": "edge", "links": "2"}
            })),
        )
        .await
        .unwrap();
    let err = config_maps
        .replace("settings", &PostParams::default(), &stale)
        .await
        .expect_err("replacing with a stale resourceVersion must conflict");
    assert_eq!(api_code(&err), Some(409), "{err}");

    // A watch from the current resourceVersion sees a new object.
    let old_version = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .expect("a list has a resourceVersion");
    let mut events = config_maps
        .watch(&WatchParams::default().timeout(30), &old_version)
        .await
        .unwrap()
        .boxed();
    config_maps
        .create(&PostParams::default(), &config_map("later"))
        .await
        .unwrap();
    let event = tokio::time::timeout(EVENT_TIMEOUT, events.next())
        .await
        .expect("a watch event within the timeout")
        .expect("the watch stream is open")
        .unwrap();
    match event {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("later")),
        other => panic!("expected the new ConfigMap, got {other:?}"),
    }
    drop(events);

    // Compact etcd and restart: everything is still there, with the same cluster IP.
    server.compact().await;
    server.restart();
    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    namespaces.get(NAMESPACE).await.unwrap();
    let svc = services.get("backend").await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip, Some(cluster_ip));
    slices.get("backend-1").await.unwrap();
    let settings = config_maps.get("settings").await.unwrap();
    assert_eq!(settings.data.unwrap()["links"], "2");
    config_maps.get("later").await.unwrap();

    // A watch from a resourceVersion older than the compaction gets 410 Gone, which is what
    // makes kube-runtime's watcher list again. The API server reports it as an ERROR event
    // in a 200 response; kube-rs hands that on as WatchEvent::Error (or as Error::Api).
    let first = match config_maps
        .watch(&WatchParams::default().timeout(10), &old_version)
        .await
    {
        Err(err) => Some(api_code(&err)),
        Ok(stream) => {
            let mut stream = stream.boxed();
            match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(WatchEvent::Error(status)))) => Some(Some(status.code)),
                Ok(Some(Err(err))) => Some(api_code(&err)),
                Ok(Some(Ok(other))) => panic!("expected 410 Gone, got {other:?}"),
                Ok(None) => panic!("expected 410 Gone, the watch ended without an event"),
                Err(_) => panic!("expected 410 Gone, no event within {EVENT_TIMEOUT:?}"),
            }
        }
    };
    assert_eq!(
        first,
        Some(Some(410)),
        "a watch from {old_version} after compaction"
    );

    // The same server answers kubectl too.
    let output = server
        .kubectl()
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            NAMESPACE,
            "-o",
            "name",
        ])
        .output()
        .expect("running kubectl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "configmap/settings"
    );
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "v"}})).unwrap()
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

/// The HTTP status code of an API error, if `err` is one.
fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
