//! The Kubernetes site against a real API server (tests/kube-apiserver): two namespaces, two
//! real routers linked by a token applied as a Secret, a real backend reached across them,
//! conflicts, removal, a controller restart and an API server restart with 410 Gone.
#![cfg(feature = "kubernetes")]

mod kube_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::kubernetes::{KubeOptions, KubeSite};
use skiff_site_controller::token::{IssueOptions, issue_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use kube_support::TestApiServer;

const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` until it gives `Some`, or fails the test saying what did not happen.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn meta(name: &str, labels: &[(&str, &str)], notes: &[(&str, &str)]) -> ObjectMeta {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    ObjectMeta {
        name: Some(name.into()),
        labels: map(labels),
        annotations: map(notes),
        ..Default::default()
    }
}

async fn create<K>(client: &Client, ns: &str, obj: &K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("create {:?} in {ns}: {e}", obj.meta().name));
}

async fn namespace_and_site(client: &Client, ns: &str, site_yaml: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta(ns, &[], &[]),
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    create(
        client,
        ns,
        &ConfigMap {
            metadata: meta("skiff-site", &[("skiff.io/type", "site")], &[]),
            data: Some(BTreeMap::from([("site.yaml".into(), site_yaml.into())])),
            ..Default::default()
        },
    )
    .await;
}

fn options(ns: &str) -> KubeOptions {
    // Listener ports from a range starting at a port free now (the machine is shared).
    let first = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .min(65000);
    let mut o = KubeOptions::new(ns);
    o.link_bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    o.listener_ports = first..=first + 20;
    // No periodic pass within a test's time: every change must arrive through the watches
    // (or the router's view of the network), including after the API server restarts.
    o.resync = Duration::from_secs(600);
    o
}

/// A TCP echo backend on loopback.
async fn echo_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// An exposed Service and the EndpointSlice Kubernetes would make for it (the test API
/// server runs no controllers).
async fn expose(client: &Client, ns: &str, name: &str, port: i32, backend: u16) {
    create(
        client,
        ns,
        &Service {
            metadata: meta(name, &[], &[("skiff.io/expose", "true")]),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port,
                    target_port: Some(IntOrString::Int(i32::from(backend))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    create(
        client,
        ns,
        &EndpointSlice {
            metadata: meta(
                &format!("{name}-1"),
                &[("kubernetes.io/service-name", name)],
                &[],
            ),
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                port: Some(i32::from(backend)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            endpoints: Some(vec![Endpoint {
                addresses: vec!["127.0.0.1".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        },
    )
    .await;
}

async fn set_expose(client: &Client, ns: &str, name: &str, on: bool) {
    let value = if on {
        serde_json::json!("true")
    } else {
        serde_json::Value::Null
    };
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"skiff.io/expose": value}}}),
            ),
        )
        .await
        .expect("patch the annotation");
}

async fn token_secret(client: &Client, ns: &str, name: &str, token: &str) {
    create(
        client,
        ns,
        &Secret {
            metadata: meta(name, &[("skiff.io/type", "token")], &[]),
            data: Some(BTreeMap::from([(
                "token.yaml".into(),
                ByteString(token.as_bytes().to_vec()),
            )])),
            ..Default::default()
        },
    )
    .await;
}

/// The token Secret's outcome annotations, once it has one.
async fn token_status(client: &Client, ns: &str, name: &str) -> Option<(String, String)> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?;
    let notes = s.metadata.annotations?;
    Some((
        notes.get("skiff.io/status")?.clone(),
        notes.get("skiff.io/status-message")?.clone(),
    ))
}

/// The managed Service of a key at a site: (port, listener port).
async fn managed_service(client: &Client, ns: &str, name: &str) -> Option<(i32, u16)> {
    let s = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    let labels = s.metadata.labels.clone().unwrap_or_default();
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some("skiff")
    {
        return None;
    }
    let port = s.spec?.ports?.first()?.port;
    let target = s
        .metadata
        .annotations?
        .get("skiff.io/listener-port")?
        .parse()
        .ok()?;
    Some((port, target))
}

/// Sends bytes through a router listener and checks they come back intact from the echo
/// backend at the other site.
async fn round_trip(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&payload)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo within 10 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if back != payload {
        return Err("bytes differ".into());
    }
    Ok(())
}

async fn events(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn labelled_count<K>(client: &Client, ns: &str, labels: &str) -> usize
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(labels))
        .await
        .expect("list")
        .items
        .len()
}

fn links_up(site: &KubeSite) -> usize {
    site.site()
        .state()
        .links()
        .iter()
        .filter(|l| matches!(l.state, skiff_router::link::LinkState::Up))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_cross_namespaces_and_survive_restarts() {
    let Some(mut server) = TestApiServer::start() else {
        return;
    };
    skiff_certs::install_crypto_provider();
    let client = server.client().await;
    namespace_and_site(
        &client,
        "east",
        "apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: east\nspec:\n  linkAccess: true\n  linkHosts: [127.0.0.1]\n  linkPort: 0\n",
    )
    .await;
    namespace_and_site(
        &client,
        "west",
        "apiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata:\n  name: west\n",
    )
    .await;
    let east_dir = tempfile::tempdir().unwrap();
    let west_dir = tempfile::tempdir().unwrap();
    let east_folder = SiteFolder::new(east_dir.path());
    let east = KubeSite::start(client.clone(), east_folder.clone(), options("east"))
        .await
        .expect("east starts");
    let west_opts = options("west");
    let mut west = KubeSite::start(
        client.clone(),
        SiteFolder::new(west_dir.path()),
        west_opts.clone(),
    )
    .await
    .expect("west starts");

    // Identity is kept in a Secret.
    assert_eq!(
        labelled_count::<Secret>(&client, "east", "skiff.io/type=site-identity").await,
        1
    );

    // A bad token leaves a clear reason on its Secret.
    token_secret(&client, "west", "garbage", "this is not a token").await;
    let (status, message) = wait_for("the bad token's outcome", || {
        token_status(&client, "west", "garbage")
    })
    .await;
    assert_eq!(status, "Failed", "{message}");
    assert!(message.contains("the token is not usable"), "{message}");
    assert!(
        message.contains("ask the issuing site for a new token"),
        "{message}"
    );
    assert!(!events(&client, "west", "TokenFailed").await.is_empty());

    // A good token links west to east.
    let token = issue_token(
        &east_folder,
        &IssueOptions {
            expiration_window: Duration::from_secs(900),
            redemptions_allowed: 1,
            cost: 1,
        },
    )
    .await
    .expect("issue a token at east");
    token_secret(&client, "west", "link-to-east", &token.to_yaml()).await;
    let (status, message) = wait_for("the token's outcome", || {
        token_status(&client, "west", "link-to-east")
    })
    .await;
    assert_eq!(status, "Redeemed", "{message}");
    // East answered only once the spent grant was in its Secret: a pod lost right after
    // answering cannot come back with the grant unspent.
    let grants = Api::<Secret>::namespaced(client.clone(), "east")
        .list(&ListParams::default().labels("skiff.io/type=grant"))
        .await
        .unwrap()
        .items;
    assert_eq!(grants.len(), 1);
    let grant =
        String::from_utf8(grants[0].data.as_ref().unwrap()["grant.yaml"].0.clone()).unwrap();
    assert!(grant.contains("redemptionsMade: 1"), "{grant}");
    wait_for("the link to come up", || async {
        (links_up(&west) == 1).then_some(())
    })
    .await;
    // The link, the spent grant and the linked site are kept in Secrets.
    wait_for("the link's Secret", || async {
        (labelled_count::<Secret>(&client, "west", "skiff.io/type=link").await == 1).then_some(())
    })
    .await;
    wait_for("the grant's and the peer's Secrets", || async {
        (labelled_count::<Secret>(&client, "east", "skiff.io/type=grant").await == 1
            && labelled_count::<Secret>(&client, "east", "skiff.io/type=peer").await == 1)
            .then_some(())
    })
    .await;

    // An exposed Service at east appears at west, and bytes reach the backend.
    let backend = echo_backend().await;
    expose(&client, "east", "backend", 8080, backend).await;
    let (port, listener) = wait_for("Service backend at west", || {
        managed_service(&client, "west", "backend")
    })
    .await;
    assert_eq!(port, 8080, "the port consumers expect");
    assert!(west_opts.listener_ports.contains(&listener));
    wait_for("bytes across the sites", || async {
        round_trip(listener).await.ok()
    })
    .await;

    // A hand-made Service with a clashing name is left alone; the conflict is reported.
    create(
        &client,
        "west",
        &Service {
            metadata: meta("clash", &[], &[]),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    port: 1234,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    expose(&client, "east", "clash", 7000, backend).await;
    let ev = wait_for("a NameConflict Event at west", || async {
        events(&client, "west", "NameConflict")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(ev.involved_object.name.as_deref(), Some("clash"));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let theirs = Api::<Service>::namespaced(client.clone(), "west")
        .get("clash")
        .await
        .unwrap();
    assert_eq!(
        theirs.spec.unwrap().ports.unwrap()[0].port,
        1234,
        "untouched"
    );
    assert!(
        theirs.metadata.labels.unwrap_or_default().is_empty(),
        "untouched"
    );
    let status = west.site().state().site_json();
    let problems = status["kubernetes"]["problems"].to_string();
    assert!(problems.contains("NameConflict"), "{status}");

    let uid = |client: Client| async move {
        Api::<Service>::namespaced(client, "west")
            .get("backend")
            .await
            .ok()
            .and_then(|s| s.metadata.uid)
    };
    let backend_uid = uid(client.clone()).await.expect("backend's uid");

    // The router container restarts in its pod (same folder), then the pod is replaced (new,
    // empty folder): the link comes back from its Secret, the Service of backend is never
    // deleted and keeps its listener port, and nothing is duplicated.
    let new_pod_dir = tempfile::tempdir().unwrap();
    for same_folder in [true, false] {
        west.stop().await;
        let dir = &new_pod_dir;
        let folder = if same_folder {
            SiteFolder::new(west_dir.path())
        } else {
            SiteFolder::new(dir.path())
        };
        west = KubeSite::start(client.clone(), folder, west_opts.clone())
            .await
            .expect("west restarts");
        wait_for("the link to come up again", || async {
            (links_up(&west) == 1).then_some(())
        })
        .await;
        wait_for("bytes across the sites after the restart", || async {
            round_trip(listener).await.ok()
        })
        .await;
        assert_eq!(
            managed_service(&client, "west", "backend").await,
            Some((8080, listener)),
            "same port, same listener port"
        );
        assert_eq!(
            uid(client.clone()).await,
            Some(backend_uid.clone()),
            "the Service was never deleted and re-made"
        );
        for (ns, kind) in [
            ("west", "link"),
            ("west", "site-identity"),
            ("east", "grant"),
            ("east", "peer"),
        ] {
            assert_eq!(
                labelled_count::<Secret>(&client, ns, &format!("skiff.io/type={kind}")).await,
                1,
                "{kind} Secrets at {ns}"
            );
        }
        let (status, _) = token_status(&client, "west", "link-to-east").await.unwrap();
        assert_eq!(status, "Redeemed", "not redeemed a second time");
    }
    assert_eq!(
        events(&client, "west", "TokenRedeemed").await.len(),
        1,
        "one Event"
    );

    // Removing the annotation removes the connector and the Service at west at once (east
    // is reachable and no longer serves the key).
    set_expose(&client, "east", "backend", false).await;
    wait_for("backend to leave west", || async {
        managed_service(&client, "west", "backend")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        !east
            .site()
            .state()
            .router()
            .connectors()
            .iter()
            .any(|c| c.routing_key == "backend"),
        "east still has a connector for backend"
    );
    assert!(round_trip(listener).await.is_err(), "the listener is gone");

    // The API server restarts after a compaction, so watches resume from a resourceVersion
    // that is gone (410 Gone): the controllers carry on.
    server.compact().await;
    server.restart();
    expose(&client, "east", "after-restart", 9000, backend).await;
    let (_, listener3) = wait_for("a Service exposed after the API server restart", || {
        managed_service(&client, "west", "after-restart")
    })
    .await;
    wait_for("bytes to the new Service", || async {
        round_trip(listener3).await.ok()
    })
    .await;
    // West's watches came back too: a managed Service deleted by hand is made again.
    Api::<Service>::namespaced(client.clone(), "west")
        .delete("after-restart", &Default::default())
        .await
        .expect("delete the managed Service");
    wait_for("west to make the deleted Service again", || {
        managed_service(&client, "west", "after-restart")
    })
    .await;

    west.stop().await;
    east.stop().await;
}
