//! Unit tests of the desired state: what a namespace's objects and the network's keys give.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

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

/// A Service with ports (name, port, targetPort).
fn service(name: &str, notes: &[(&str, &str)], ports: &[(Option<&str>, i32, i32)]) -> Service {
    Service {
        metadata: meta(name, &[], notes),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: n.map(str::to_string),
                        port: *p,
                        target_port: Some(IntOrString::Int(*t)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exposed(name: &str, ports: &[(Option<&str>, i32, i32)]) -> Service {
    service(name, &[(ANNOTATION_EXPOSE, "true")], ports)
}

/// An EndpointSlice of a Service: ports (name, port) and endpoints (address, ready).
fn slice(svc: &str, ports: &[(Option<&str>, i32)], eps: &[(&str, Option<bool>)]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(&format!("{svc}-abcde"), &[(LABEL_SERVICE_NAME, svc)], &[]),
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: n.map(str::to_string),
                    port: Some(*p),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: Some(
            eps.iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

fn remote(key: &str, port: u16) -> RemoteKey {
    RemoteKey {
        key: key.into(),
        port,
        protocol: "tcp".into(),
    }
}

fn run(
    services: &[Service],
    slices: &[EndpointSlice],
    configmaps: &[ConfigMap],
    remote_keys: &[RemoteKey],
) -> Desired {
    desired(&Inputs {
        services,
        slices,
        configmaps,
        remote_keys,
        listener_ports: 20000..=20002,
        current_ports: &BTreeMap::new(),
    })
}

/// The Services that exist after applying `d`'s steps to `actual`.
fn after_steps(d: &Desired, actual: &[Service]) -> Vec<Service> {
    let mut out: Vec<Service> = actual.to_vec();
    for step in service_steps(&d.services, actual) {
        match step {
            ServiceStep::Apply(m) | ServiceStep::Create(m) => {
                out.retain(|s| s.metadata.name.as_deref() != Some(m.name.as_str()));
                out.push(service_object(&m));
            }
            ServiceStep::Delete(n) => out.retain(|s| s.metadata.name.as_deref() != Some(&n)),
        }
    }
    out
}

#[test]
fn an_exposed_service_gives_one_connector_per_ready_endpoint() {
    let svcs = [exposed("backend", &[(None, 8080, 80)])];
    let slices = [
        slice(
            "backend",
            &[(None, 80)],
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", None),
                ("10.0.0.3", Some(false)),
            ],
        ),
        // Another Service's slice is not ours.
        slice("other", &[(None, 80)], &[("10.9.9.9", Some(true))]),
    ];
    let d = run(&svcs, &slices, &[], &[]);
    let hosts: Vec<&str> = d
        .connectors
        .values()
        .map(|c| c.spec.host.as_str())
        .collect();
    assert_eq!(hosts, ["10.0.0.1", "10.0.0.2"]);
    for c in d.connectors.values() {
        assert_eq!(c.spec.routing_key, "backend");
        assert_eq!(c.spec.port, 80, "the pod's port");
        assert_eq!(c.spec.advertised_port, Some(8080), "the Service's port");
        assert!(crate::services::connector_spec(c).is_ok());
    }
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert!(d.listeners.is_empty() && d.services.is_empty());
}

#[test]
fn an_exposed_service_nothing_can_serve_is_reported() {
    let svcs = [exposed("backend", &[(None, 8080, 80)])];
    let unready = [slice(
        "backend",
        &[(None, 80)],
        &[("10.0.0.1", Some(false))],
    )];
    for slices in [&unready[..], &[]] {
        let d = run(&svcs, slices, &[], &[]);
        assert!(d.connectors.is_empty());
        let reasons: Vec<&str> = d.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, ["NoReadyEndpoints"]);
    }
    let mut external = exposed("ext", &[(None, 443, 443)]);
    external.spec.as_mut().unwrap().external_name = Some("api.example.com".into());
    let d = run(&[external], &[], &[], &[]);
    assert_eq!(d.problems[0].reason, "ExternalName");
    assert!(d.problems[0].message.contains("host: api.example.com"));
}

#[test]
fn the_annotation_is_needed_and_can_name_the_key() {
    let plain = [service("backend", &[], &[(None, 8080, 80)])];
    let slices = [slice("backend", &[(None, 80)], &[("10.0.0.1", Some(true))])];
    let d = run(&plain, &slices, &[], &[]);
    assert!(d.connectors.is_empty() && d.problems.is_empty());
    let off = [service(
        "backend",
        &[(ANNOTATION_EXPOSE, "false")],
        &[(None, 8080, 80)],
    )];
    assert!(run(&off, &slices, &[], &[]).connectors.is_empty());
    let keyed = [service(
        "backend",
        &[
            (ANNOTATION_EXPOSE, "true"),
            (ANNOTATION_ROUTING_KEY, "api.v2"),
        ],
        &[(None, 8080, 80)],
    )];
    let d = run(&keyed, &slices, &[], &[]);
    assert_eq!(d.connectors.len(), 1);
    assert_eq!(
        d.connectors.values().next().unwrap().spec.routing_key,
        "api.v2"
    );
}

#[test]
fn a_multi_port_service_gives_one_key_per_port() {
    let svcs = [exposed(
        "web",
        &[(Some("http"), 80, 8080), (Some("metrics"), 9100, 9100)],
    )];
    let slices = [slice(
        "web",
        &[(Some("http"), 8080), (Some("metrics"), 9100)],
        &[("10.0.0.1", Some(true))],
    )];
    let d = run(&svcs, &slices, &[], &[]);
    let keys: BTreeMap<&str, (u16, Option<u16>)> = d
        .connectors
        .values()
        .map(|c| {
            (
                c.spec.routing_key.as_str(),
                (c.spec.port, c.spec.advertised_port),
            )
        })
        .collect();
    assert_eq!(
        keys,
        BTreeMap::from([
            ("web-http", (8080, Some(80))),
            ("web-metrics", (9100, Some(9100)))
        ])
    );
    // Unnamed ports (allowed only when... a test of the fallback): numbers name the keys.
    let svcs = [exposed("db", &[(None, 5432, 5432), (None, 5433, 5433)])];
    let slices = [slice("db", &[(None, 5432)], &[("10.0.0.5", Some(true))])];
    let d = run(&svcs, &slices, &[], &[]);
    let keys: Vec<&str> = d
        .connectors
        .values()
        .map(|c| c.spec.routing_key.as_str())
        .collect();
    assert!(keys.contains(&"db-5432"), "{keys:?}");
}

#[test]
fn the_type_annotation_sets_the_protocol_and_a_bad_one_is_reported() {
    let svc = |t: &str| {
        [service(
            "web",
            &[(ANNOTATION_EXPOSE, "true"), (ANNOTATION_TYPE, t)],
            &[(None, 80, 80)],
        )]
    };
    let slices = [slice("web", &[(None, 80)], &[("10.0.0.1", Some(true))])];
    let d = run(&svc("http2"), &slices, &[], &[]);
    assert_eq!(d.connectors.values().next().unwrap().spec.protocol, "http2");
    let d = run(&svc("grpc"), &slices, &[], &[]);
    assert!(d.connectors.is_empty());
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].reason, "UnsupportedType");
    assert!(
        d.problems[0]
            .message
            .contains("not one of tcp, http, http2"),
        "{}",
        d.problems[0].message
    );
}

#[test]
fn keys_served_elsewhere_become_listeners_and_services() {
    let d = run(
        &[],
        &[],
        &[],
        &[remote("backend", 8080), remote("db", 5432)],
    );
    let ports: Vec<(&str, u16)> = d
        .listeners
        .values()
        .map(|l| (l.metadata.name.as_str(), l.spec.port))
        .collect();
    assert_eq!(ports, [("backend", 20000), ("db", 20001)]);
    let s = &d.services["backend"];
    assert_eq!((s.port, s.target_port), (8080, 20000));
    assert!(d.problems.is_empty());
}

#[test]
fn a_key_keeps_its_port_across_passes_and_restarts() {
    let first = run(&[], &[], &[], &[remote("db", 5432)]);
    assert_eq!(first.services["db"].target_port, 20000);
    let actual = after_steps(&first, &[]);
    // A new key sorting first must not take db's port.
    let second = run(&actual, &[], &[], &[remote("api", 80), remote("db", 5432)]);
    assert_eq!(second.services["db"].target_port, 20000);
    assert_eq!(second.services["api"].target_port, 20001);
    let actual = after_steps(&second, &actual);
    // Same inputs again: nothing to do (idempotent).
    let third = run(&actual, &[], &[], &[remote("api", 80), remote("db", 5432)]);
    assert_eq!(third, second);
    assert!(service_steps(&third.services, &actual).is_empty());
}

#[test]
fn a_key_without_a_service_keeps_its_listener_port_too() {
    // "clash" has no Service (a name conflict), so only its listener records its port.
    let theirs = service("clash", &[], &[(None, 1, 1)]);
    let keys = [remote("backend", 80), remote("clash", 80)];
    let first = run(std::slice::from_ref(&theirs), &[], &[], &keys);
    assert_eq!(first.listeners["clash"].spec.port, 20001);
    let mut actual = after_steps(&first, std::slice::from_ref(&theirs));
    // backend goes; clash must not move into its port (a client of the old port would then
    // reach the wrong service).
    let current = BTreeMap::from([("clash".to_string(), 20001u16)]);
    let second = desired(&Inputs {
        services: &actual,
        slices: &[],
        configmaps: &[],
        remote_keys: &[remote("clash", 80)],
        listener_ports: 20000..=20002,
        current_ports: &current,
    });
    assert_eq!(second.listeners["clash"].spec.port, 20001);
    for step in service_steps(&second.services, &actual) {
        if let ServiceStep::Delete(n) = step {
            actual.retain(|s| s.metadata.name.as_deref() != Some(&n));
        }
    }
    assert_eq!(actual.len(), 1, "only their Service is left");
}

#[test]
fn keys_served_here_get_no_listener_and_running_out_of_ports_is_reported() {
    let svcs = [exposed("backend", &[(None, 8080, 80)])];
    let slices = [slice("backend", &[(None, 80)], &[("10.0.0.1", Some(true))])];
    let d = run(&svcs, &slices, &[], &[remote("backend", 8080)]);
    assert!(d.listeners.is_empty(), "the local Service is the original");
    let many: Vec<RemoteKey> = ["a", "b", "c", "d"].iter().map(|k| remote(k, 80)).collect();
    let d = run(&[], &[], &[], &many);
    assert_eq!(d.listeners.len(), 3);
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].reason, "NoListenerPort");
    assert!(d.problems[0].message.contains("20000-20002"));
}

#[test]
fn a_service_skiff_does_not_manage_is_never_taken_over() {
    let theirs = service("backend", &[], &[(None, 9999, 9999)]);
    let d = run(
        std::slice::from_ref(&theirs),
        &[],
        &[],
        &[remote("backend", 8080)],
    );
    assert!(!d.services.contains_key("backend"));
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].reason, "NameConflict");
    assert!(d.problems[0].message.contains("not managed by skiff"));
    // And no step touches it, even when nothing wants it.
    assert!(service_steps(&d.services, &[theirs]).is_empty());
}

#[test]
fn managed_services_of_gone_keys_are_deleted_and_changed_ones_reapplied() {
    let d = run(&[], &[], &[], &[remote("backend", 8080)]);
    let actual = after_steps(&d, &[]);
    assert_eq!(actual.len(), 1);
    // The key's port changed at the serving site.
    let d2 = run(&actual, &[], &[], &[remote("backend", 9090)]);
    let steps = service_steps(&d2.services, &actual);
    assert!(
        matches!(&steps[..], [ServiceStep::Apply(m)] if m.port == 9090 && m.target_port == 20000)
    );
    // The key is gone.
    let d3 = run(&actual, &[], &[], &[]);
    assert_eq!(
        service_steps(&d3.services, &actual),
        vec![ServiceStep::Delete("backend".into())]
    );
}

fn configmap(name: &str, kind: &str, key: &str, yaml: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(name, &[(LABEL_TYPE, kind)], &[]),
        data: Some(BTreeMap::from([(key.to_string(), yaml.to_string())])),
        ..Default::default()
    }
}

#[test]
fn configmaps_hold_the_same_resources_as_a_vm_site() {
    let listener = configmap(
        "l",
        "listener",
        KEY_LISTENER,
        "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata:\n  name: db\nspec:\n  routingKey: db\n  port: 15432\n",
    );
    let connector = configmap(
        "c",
        "connector",
        KEY_CONNECTOR,
        "apiVersion: skiff.io/v1alpha1\nkind: Connector\nmetadata:\n  name: pg\nspec:\n  routingKey: pg\n  host: postgres.east.svc\n  port: 5432\n",
    );
    let broken = configmap("x", "connector", KEY_CONNECTOR, "kind: [oops");
    let missing = configmap("y", "listener", "wrong.yaml", "");
    let d = run(&[], &[], &[listener, connector, broken, missing], &[]);
    assert_eq!(d.listeners["db"].spec.port, 15432);
    assert_eq!(d.services["db"].target_port, 15432);
    assert_eq!(d.connectors["pg"].spec.host, "postgres.east.svc");
    let bad: Vec<(&str, &str)> = d
        .problems
        .iter()
        .map(|p| (p.name.as_str(), p.reason))
        .collect();
    assert_eq!(bad, [("x", "InvalidResource"), ("y", "InvalidResource")]);
    assert!(d.problems[1].message.contains(KEY_LISTENER));
}

#[test]
fn services_skiff_manages_are_not_exposed_again() {
    let mut ours = service_object(&ManagedService {
        name: "backend".into(),
        routing_key: "backend".into(),
        port: 8080,
        target_port: 20000,
        udp: false,
    });
    ours.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_EXPOSE.into(), "true".into());
    let slices = [slice(
        "backend",
        &[(Some("tcp"), 20000)],
        &[("10.0.0.9", Some(true))],
    )];
    let d = run(&[ours], &slices, &[], &[]);
    assert!(d.connectors.is_empty(), "a loop back into the network");
}

/// `svc` with each port's protocol set, in order.
fn with_protocols(mut svc: Service, protocols: &[&str]) -> Service {
    let ports = svc.spec.as_mut().unwrap().ports.as_mut().unwrap();
    for (p, proto) in ports.iter_mut().zip(protocols) {
        p.protocol = Some((*proto).to_string());
    }
    svc
}

#[test]
fn a_udp_service_exposes_its_udp_ports_and_a_tcp_one_its_tcp_ports() {
    // DNS: 53/UDP and 53/TCP under two port names.
    let dns = |notes: &[(&str, &str)]| {
        with_protocols(
            service(
                "dns",
                notes,
                &[(Some("dns"), 53, 5353), (Some("dns-tcp"), 53, 5354)],
            ),
            &["UDP", "TCP"],
        )
    };
    let slices = [slice(
        "dns",
        &[(Some("dns"), 5353), (Some("dns-tcp"), 5354)],
        &[("10.0.0.7", Some(true))],
    )];
    let d = run(
        &[dns(&[
            (ANNOTATION_EXPOSE, "true"),
            (ANNOTATION_TYPE, "udp"),
        ])],
        &slices,
        &[],
        &[],
    );
    let got: Vec<_> = d
        .connectors
        .values()
        .map(|c| {
            let s = &c.spec;
            (
                s.routing_key.as_str(),
                s.protocol.as_str(),
                s.port,
                s.advertised_port,
            )
        })
        .collect();
    assert_eq!(got, [("dns", "udp", 5353, Some(53))], "only the UDP port");
    assert!(d.problems.is_empty(), "{:?}", d.problems);

    let d = run(&[dns(&[(ANNOTATION_EXPOSE, "true")])], &slices, &[], &[]);
    let got: Vec<_> = d
        .connectors
        .values()
        .map(|c| (c.spec.protocol.as_str(), c.spec.port))
        .collect();
    assert_eq!(got, [("tcp", 5354)], "without the type: the TCP port");

    // Only UDP ports and no type: the problem says which annotation exposes them.
    let syslog = with_protocols(exposed("syslog", &[(None, 514, 514)]), &["UDP"]);
    let d = run(&[syslog], &[], &[], &[]);
    assert!(d.connectors.is_empty());
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    assert_eq!(d.problems[0].reason, "NoPorts");
    assert!(
        d.problems[0].message.contains("only UDP ones")
            && d.problems[0].message.contains("skiff.io/type: udp"),
        "{}",
        d.problems[0].message
    );
    // type udp on a TCP-only Service.
    let web = service(
        "web",
        &[(ANNOTATION_EXPOSE, "true"), (ANNOTATION_TYPE, "udp")],
        &[(None, 80, 80)],
    );
    let d = run(&[web], &[], &[], &[]);
    assert_eq!(d.problems[0].reason, "NoPorts");
    assert!(
        d.problems[0].message.contains("no UDP port to expose"),
        "{}",
        d.problems[0].message
    );
}

#[test]
fn a_udp_key_served_elsewhere_gets_a_udp_listener_and_a_udp_service() {
    let mut dns = remote("dns", 53);
    dns.protocol = "udp".into();
    let d = run(&[], &[], &[], &[dns.clone(), remote("db", 5432)]);
    let l = &d.listeners["dns"];
    assert_eq!(
        (l.spec.protocol.as_str(), l.spec.affinity.as_ref()),
        ("udp", None)
    );
    assert!(crate::services::listener_spec(l).is_ok());
    assert!(d.services["dns"].udp && !d.services["db"].udp);
    let actual = after_steps(&d, &[]);
    let port = |name: &str| {
        let s = actual
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap();
        let p = &s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        (p.name.clone().unwrap(), p.protocol.clone().unwrap(), p.port)
    };
    assert_eq!(port("dns"), ("udp".into(), "UDP".into(), 53));
    assert_eq!(port("db"), ("tcp".into(), "TCP".into(), 5432));
    // Applied once, nothing more to do; the key turning tcp reapplies its Service.
    assert_eq!(service_steps(&d.services, &actual), []);
    let d2 = run(&actual, &[], &[], &[remote("dns", 53), remote("db", 5432)]);
    assert!(
        matches!(&service_steps(&d2.services, &actual)[..], [ServiceStep::Apply(m)] if m.name == "dns" && !m.udp),
        "{:?}",
        service_steps(&d2.services, &actual)
    );
}
