//! What a Kubernetes site should look like, as a pure function of what the API and the router
//! report: connectors for exposed Services, listeners for keys served elsewhere, the Services
//! skiff manages, and the problems to report. No I/O here; the `kubernetes` module applies the result.
//!
//! Inputs are the namespace's Services, EndpointSlices and listener/connector ConfigMaps, and
//! the routing keys other reachable sites serve. The same inputs always give the same output,
//! so reconciling twice changes nothing (STYLE.md rule 6).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{
    ANNOTATION_EXPOSE, ANNOTATION_LISTENER_PORT, ANNOTATION_ROUTING_KEY, ANNOTATION_TYPE,
    KEY_CONNECTOR, KEY_LISTENER, LABEL_MANAGED_BY, LABEL_ROUTING_KEY, LABEL_SERVICE_NAME,
    LABEL_TYPE, MANAGED_BY, ROUTER_SELECTOR, is_service_name, resource_name, unique_name,
};
use crate::resources::{
    Connector, ConnectorSpec, DEFAULT_LISTENER_HOST, Listener, ListenerSpec, from_yaml,
};

/// A routing key served by another reachable site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteKey {
    /// The key.
    pub key: String,
    /// The port its consumers expect.
    pub port: u16,
    /// `tcp`, `http`, `http2` or `udp`.
    pub protocol: String,
}

/// A Service skiff owns: named after a key or a listener, selecting the router pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedService {
    /// Service name.
    pub name: String,
    /// The routing key (or the listener name for a ConfigMap listener).
    pub routing_key: String,
    /// The port consumers call.
    pub port: u16,
    /// The router listener's port.
    pub target_port: u16,
    /// Its port is UDP (a `udp` listener's), else TCP.
    pub udp: bool,
}

/// The Kubernetes port protocol (`TCP`, `UDP`) that carries a skiff type (`tcp`, `http`,
/// `http2`, `udp`).
fn port_protocol(skiff_type: &str) -> &'static str {
    if skiff_type == "udp" { "UDP" } else { "TCP" }
}

/// Something an operator should hear about, attached to the object it concerns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Service` or `ConfigMap`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// A CamelCase reason, as Events have.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// Everything the site should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Connector resources by name.
    pub connectors: BTreeMap<String, Connector>,
    /// Listener resources by name.
    pub listeners: BTreeMap<String, Listener>,
    /// Services skiff should own, by name (conflicting names already left out).
    pub services: BTreeMap<String, ManagedService>,
    /// Problems, sorted.
    pub problems: Vec<Problem>,
}

/// What the desired state is computed from.
pub struct Inputs<'a> {
    /// Every Service of the namespace.
    pub services: &'a [Service],
    /// Every EndpointSlice of the namespace.
    pub slices: &'a [EndpointSlice],
    /// ConfigMaps labelled `skiff.io/type: listener|connector`.
    pub configmaps: &'a [ConfigMap],
    /// Keys other reachable sites serve.
    pub remote_keys: &'a [RemoteKey],
    /// Ports the router's listeners for remote keys may use.
    pub listener_ports: RangeInclusive<u16>,
    /// Ports listeners of remote keys have now, by key (keys without a Service, a name
    /// conflict, keep theirs too).
    pub current_ports: &'a BTreeMap<String, u16>,
}

/// Computes the desired state.
pub fn desired(inp: &Inputs<'_>) -> Desired {
    let mut d = Desired::default();
    configmap_resources(inp.configmaps, &mut d);
    exposed_services(inp.services, inp.slices, &mut d);
    remote_listeners(inp, &mut d);
    drop_conflicts(inp.services, &mut d);
    d.problems.sort();
    d.problems.dedup();
    d
}

fn is_managed(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY)
}

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|s| s.trim())
}

/// Listener and connector ConfigMaps: the same resource YAML as a VM site's folder.
fn configmap_resources(configmaps: &[ConfigMap], d: &mut Desired) {
    for cm in configmaps {
        let name = cm.metadata.name.clone().unwrap_or_default();
        let kind = cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TYPE))
            .map(String::as_str);
        let (key, origin) = match kind {
            Some("listener") => (KEY_LISTENER, format!("ConfigMap {name} key {KEY_LISTENER}")),
            Some("connector") => (
                KEY_CONNECTOR,
                format!("ConfigMap {name} key {KEY_CONNECTOR}"),
            ),
            _ => continue,
        };
        let bad = |message: String| Problem {
            kind: "ConfigMap",
            name: name.clone(),
            reason: "InvalidResource",
            message,
        };
        let Some(text) = cm.data.as_ref().and_then(|m| m.get(key)) else {
            d.problems.push(bad(format!(
                "{origin} is missing: put the resource YAML there"
            )));
            continue;
        };
        let origin = std::path::Path::new(&origin);
        if key == KEY_LISTENER {
            match from_yaml::<Listener>(text, origin) {
                Ok(l) if crate::resources::validate_name("listener", &l.metadata.name).is_err() => {
                    d.problems.push(bad(format!(
                        "listener name {:?}: use 1-63 lowercase letters, digits and '-'",
                        l.metadata.name
                    )))
                }
                Ok(l) => match crate::services::listener_spec(&l) {
                    Ok(_) if l.spec.port == 0 => d.problems.push(bad(format!(
                        "listener {} needs a fixed port in Kubernetes (its Service points at it)",
                        l.metadata.name
                    ))),
                    Ok(_) => {
                        if d.listeners.contains_key(&l.metadata.name) {
                            d.problems.push(bad(format!(
                                "another ConfigMap defines listener {} too; this one is ignored",
                                l.metadata.name
                            )));
                            continue;
                        }
                        if is_service_name(&l.metadata.name) {
                            d.services.insert(
                                l.metadata.name.clone(),
                                ManagedService {
                                    name: l.metadata.name.clone(),
                                    routing_key: l.metadata.name.clone(),
                                    port: l.spec.port,
                                    target_port: l.spec.port,
                                    udp: l.spec.protocol == "udp",
                                },
                            );
                        }
                        d.listeners.insert(l.metadata.name.clone(), l);
                    }
                    Err(e) => d.problems.push(bad(e)),
                },
                Err(e) => d.problems.push(bad(e.to_string())),
            }
        } else {
            match from_yaml::<Connector>(text, origin) {
                Ok(c)
                    if crate::resources::validate_name("connector", &c.metadata.name).is_err() =>
                {
                    d.problems.push(bad(format!(
                        "connector name {:?}: use 1-63 lowercase letters, digits and '-'",
                        c.metadata.name
                    )))
                }
                Ok(c) => match crate::services::connector_spec(&c) {
                    Ok(_) => {
                        if d.connectors.contains_key(&c.metadata.name) {
                            d.problems.push(bad(format!(
                                "another ConfigMap defines connector {} too; this one is ignored",
                                c.metadata.name
                            )));
                            continue;
                        }
                        d.connectors.insert(c.metadata.name.clone(), c);
                    }
                    Err(e) => d.problems.push(bad(e)),
                },
                Err(e) => d.problems.push(bad(e.to_string())),
            }
        }
    }
}

/// Connectors for Services annotated `skiff.io/expose: "true"`: one per ready endpoint
/// address and port, so the router balances across ready pods.
fn exposed_services(services: &[Service], slices: &[EndpointSlice], d: &mut Desired) {
    for svc in services {
        let meta = &svc.metadata;
        if is_managed(meta) || annotation(meta, ANNOTATION_EXPOSE) != Some("true") {
            continue;
        }
        let name = meta.name.clone().unwrap_or_default();
        let bad = |reason: &'static str, message: String| Problem {
            kind: "Service",
            name: name.clone(),
            reason,
            message,
        };
        let base = annotation(meta, ANNOTATION_ROUTING_KEY)
            .filter(|k| !k.is_empty())
            .unwrap_or(&name)
            .to_string();
        let protocol = annotation(meta, ANNOTATION_TYPE)
            .unwrap_or("tcp")
            .to_string();
        if let Err(e) = crate::services::parse_type(&protocol) {
            d.problems.push(bad("UnsupportedType", e));
            continue;
        }

        if let Some(external) = svc.spec.as_ref().and_then(|s| s.external_name.as_ref()) {
            d.problems.push(bad(
                "ExternalName",
                format!(
                    "an ExternalName Service has no endpoints to connect to; use a connector ConfigMap with host: {external}"
                ),
            ));
            continue;
        }
        let (before, problems_before) = (d.connectors.len(), d.problems.len());
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        // A udp Service exposes its UDP ports, any other type its TCP ports.
        let wanted = port_protocol(&protocol);
        let (ports, others): (Vec<_>, Vec<_>) = ports
            .iter()
            .partition(|p| p.protocol.as_deref().unwrap_or("TCP") == wanted);
        if ports.is_empty() {
            let message = match (
                wanted,
                others.iter().any(|p| p.protocol.as_deref() == Some("UDP")),
            ) {
                ("TCP", true) => format!(
                    "the Service has no TCP port to expose, only UDP ones: annotate it {ANNOTATION_TYPE}: udp to expose those"
                ),
                ("UDP", _) => format!(
                    "the Service has no UDP port to expose ({ANNOTATION_TYPE}: udp takes its UDP ports): give it a port with protocol: UDP, or drop the annotation to expose its TCP ports"
                ),
                _ => format!("the Service has no {wanted} port to expose"),
            };
            d.problems.push(bad("NoPorts", message));
            continue;
        }
        let my_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .is_some_and(|n| *n == name)
            })
            .collect();
        for p in &ports {
            let port_label = p
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| p.port.to_string());
            let key = if ports.len() == 1 {
                base.clone()
            } else {
                format!("{base}-{port_label}")
            };
            if let Err(e) = crate::services::parse_key(&key) {
                d.problems.push(bad("InvalidRoutingKey", e));
                continue;
            }
            let Ok(service_port) = u16::try_from(p.port) else {
                continue;
            };
            let want_name = p.name.clone().unwrap_or_default();
            for slice in &my_slices {
                let Some(target) = slice
                    .ports
                    .as_ref()
                    .and_then(|ps| {
                        ps.iter()
                            .find(|sp| sp.name.clone().unwrap_or_default() == want_name)
                    })
                    .and_then(|sp| sp.port)
                    .and_then(|port| u16::try_from(port).ok())
                    .or_else(|| match &p.target_port {
                        Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
                        None => Some(service_port),
                        Some(IntOrString::String(_)) => None,
                    })
                else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for addr in &ep.addresses {
                        let cname = unique_name(&format!("{name}-{port_label}-{addr}"));
                        d.connectors.entry(cname.clone()).or_insert_with(|| {
                            Connector::new(
                                &cname,
                                ConnectorSpec {
                                    routing_key: key.clone(),
                                    host: addr.clone(),
                                    port: target,
                                    advertised_port: Some(service_port),
                                    protocol: protocol.clone(),
                                },
                            )
                        });
                    }
                }
            }
        }
        if d.connectors.len() == before && d.problems.len() == problems_before {
            d.problems.push(bad(
                "NoReadyEndpoints",
                "no ready endpoint with a resolvable port in the Service's EndpointSlices: the key is not served from here until a pod is ready".into(),
            ));
        }
    }
}

/// A listener and a Service for every key served elsewhere but not here. Ports come from
/// `listener_ports`; a key keeps the port its Service records (so restarts move nothing),
/// else the port its listener has now.
fn remote_listeners(inp: &Inputs<'_>, d: &mut Desired) {
    let local_keys: BTreeSet<&str> = d
        .connectors
        .values()
        .map(|c| c.spec.routing_key.as_str())
        .collect();
    let mut wanted: BTreeMap<&str, &RemoteKey> = BTreeMap::new();
    for rk in inp.remote_keys {
        if local_keys.contains(rk.key.as_str()) {
            continue;
        }
        // Two sites may advertise different ports; the lowest wins, on every site alike.
        wanted
            .entry(rk.key.as_str())
            .and_modify(|cur| {
                if rk.port < cur.port {
                    *cur = rk
                }
            })
            .or_insert(rk);
    }
    // Ports in use: ConfigMap listeners, then ports recorded on existing managed Services.
    let mut used: BTreeSet<u16> = d.listeners.values().map(|l| l.spec.port).collect();
    let mut ports: BTreeMap<&str, u16> = BTreeMap::new();
    for svc in inp.services.iter().filter(|s| is_managed(&s.metadata)) {
        let key = svc
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ROUTING_KEY));
        let port =
            annotation(&svc.metadata, ANNOTATION_LISTENER_PORT).and_then(|p| p.parse::<u16>().ok());
        if let (Some(key), Some(port)) = (key, port)
            && let Some((k, _)) = wanted.get_key_value(key.as_str())
            && inp.listener_ports.contains(&port)
            && used.insert(port)
        {
            ports.insert(k, port);
        }
    }
    for (key, port) in inp.current_ports {
        if let Some((k, _)) = wanted.get_key_value(key.as_str())
            && !ports.contains_key(k)
            && inp.listener_ports.contains(port)
            && used.insert(*port)
        {
            ports.insert(k, *port);
        }
    }
    let mut free = inp.listener_ports.clone().filter(|p| !used.contains(p));
    for (key, rk) in &wanted {
        if d.listeners.contains_key(*key) {
            // A ConfigMap listener of that name takes the name (and the Service).
            continue;
        }
        let port = match ports.get(key) {
            Some(p) => *p,
            None => match free.next() {
                Some(p) => p,
                None => {
                    d.problems.push(Problem {
                        kind: "Service",
                        name: (*key).to_string(),
                        reason: "NoListenerPort",
                        message: format!(
                            "no free port left in --listener-ports {}-{} for key {key}; widen the range",
                            inp.listener_ports.start(),
                            inp.listener_ports.end()
                        ),
                    });
                    continue;
                }
            },
        };
        // A key may be longer than a file name; its listener's name is a label made from it.
        let listener_name = if crate::resources::validate_name("listener", key).is_ok() {
            (*key).to_string()
        } else {
            resource_name(key)
        };
        d.listeners.insert(
            listener_name.clone(),
            Listener::new(
                &listener_name,
                ListenerSpec {
                    routing_key: Some((*key).to_string()),
                    priority: vec![],
                    weighted: vec![],
                    host: DEFAULT_LISTENER_HOST.into(),
                    port,
                    protocol: rk.protocol.clone(),
                    affinity: None,
                },
            ),
        );
        if is_service_name(key) {
            d.services.insert(
                (*key).to_string(),
                ManagedService {
                    name: (*key).to_string(),
                    routing_key: (*key).to_string(),
                    port: rk.port,
                    target_port: port,
                    udp: rk.protocol == "udp",
                },
            );
        } else {
            d.problems.push(Problem {
                kind: "Service",
                name: (*key).to_string(),
                reason: "InvalidServiceName",
                message: format!(
                    "routing key {key} is not a valid Service name (lowercase letters, digits and '-', starting with a letter, at most 63); its listener runs on the router pod's port {port} without a Service"
                ),
            });
        }
    }
}

/// Leaves out Services whose name a Service skiff does not manage already has, and reports
/// the conflict: skiff never overwrites what it did not create.
fn drop_conflicts(services: &[Service], d: &mut Desired) {
    for svc in services {
        let Some(name) = &svc.metadata.name else {
            continue;
        };
        if is_managed(&svc.metadata) {
            continue;
        }
        if let Some(m) = d.services.remove(name) {
            d.problems.push(Problem {
                kind: "Service",
                name: name.clone(),
                reason: "NameConflict",
                message: format!(
                    "a Service named {name} exists and is not managed by skiff, so routing key {} gets no Service here; its listener runs on the router pod's port {}. Rename or delete that Service, or expose the key under another name with the skiff.io/routing-key annotation at the site that serves it",
                    m.routing_key, m.target_port
                ),
            });
        }
    }
}

/// What to do with one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceStep {
    /// Create it (a create, never an apply: a Service someone made meanwhile is not taken
    /// over, the create fails and the next pass reports the conflict).
    Create(ManagedService),
    /// Bring a Service skiff manages back to the desired shape.
    Apply(ManagedService),
    /// Delete a managed Service nothing wants any more.
    Delete(String),
}

/// The steps that bring the managed Services to `desired`; unchanged ones give none.
pub fn service_steps(
    desired: &BTreeMap<String, ManagedService>,
    actual: &[Service],
) -> Vec<ServiceStep> {
    let mut steps = Vec::new();
    let managed: BTreeMap<&str, &Service> = actual
        .iter()
        .filter(|s| is_managed(&s.metadata))
        .filter_map(|s| s.metadata.name.as_deref().map(|n| (n, s)))
        .collect();
    for (name, m) in desired {
        match managed.get(name.as_str()) {
            Some(s) if shape_matches(s, m) => {}
            Some(_) => steps.push(ServiceStep::Apply(m.clone())),
            None => steps.push(ServiceStep::Create(m.clone())),
        }
    }
    for name in managed.keys() {
        if !desired.contains_key(*name) {
            steps.push(ServiceStep::Delete((*name).to_string()));
        }
    }
    steps
}

/// Whether a managed Service already has the fields skiff sets.
fn shape_matches(s: &Service, m: &ManagedService) -> bool {
    let labels_ok = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_ROUTING_KEY))
        .is_some_and(|k| *k == m.routing_key);
    let port_note_ok =
        annotation(&s.metadata, ANNOTATION_LISTENER_PORT) == Some(&m.target_port.to_string());
    let Some(spec) = &s.spec else { return false };
    let selector_ok = spec.selector.as_ref().is_some_and(|sel| {
        sel.len() == ROUTER_SELECTOR.len()
            && ROUTER_SELECTOR
                .iter()
                .all(|(k, v)| sel.get(*k).is_some_and(|x| x == v))
    });
    let ports_ok = match spec.ports.as_deref() {
        Some([p]) => {
            p.port == i32::from(m.port)
                && p.target_port == Some(IntOrString::Int(i32::from(m.target_port)))
                && p.protocol.as_deref().unwrap_or("TCP") == service_port_protocol(m)
        }
        _ => false,
    };
    labels_ok && port_note_ok && selector_ok && ports_ok
}

/// The protocol of `m`'s port.
fn service_port_protocol(m: &ManagedService) -> &'static str {
    if m.udp { "UDP" } else { "TCP" }
}

/// The Service object skiff applies for `m`.
pub fn service_object(m: &ManagedService) -> Service {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    Service {
        metadata: ObjectMeta {
            name: Some(m.name.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_ROUTING_KEY.to_string(), m.routing_key.clone()),
            ])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_LISTENER_PORT.to_string(),
                m.target_port.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(
                ROUTER_SELECTOR
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            ),
            ports: Some(vec![ServicePort {
                name: Some(service_port_protocol(m).to_ascii_lowercase()),
                port: i32::from(m.port),
                target_port: Some(IntOrString::Int(i32::from(m.target_port))),
                protocol: Some(service_port_protocol(m).into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
