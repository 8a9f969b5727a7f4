//! Listeners and connectors: the verbs behind `skiff listener` and `skiff connector`, and the
//! translation of their resources into the router's specs (pure functions, tested here).

use std::str::FromStr;

use skiff_router::flow::{ConnectorSpec as RouterConnector, ListenerSpec as RouterListener};
use skiff_router::routing::{Affinity, Protocol, RoutingKey, Strategy};

use crate::SiteError;
use crate::folder::SiteFolder;
use crate::resources::{Connector, ConnectorSpec, Listener, ListenerSpec, Resource, validate_name};
use crate::site::{delete_resource, list_resources, load_site, save_resource};

/// What happened to a listener or connector on create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// It is new.
    Created,
    /// One of that name existed and was replaced.
    Updated,
}

/// The protocol of a `--type` value.
pub fn parse_type(value: &str) -> Result<Protocol, String> {
    match value {
        "tcp" => Ok(Protocol::Tcp),
        "http" => Ok(Protocol::Http),
        "http2" => Ok(Protocol::Http2),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!(
            "type {other:?} is not one of tcp, http, http2, udp"
        )),
    }
}

/// The affinity of a listener of `protocol` (`None`: no affinity). `header:` and `cookie:`
/// need an HTTP listener.
pub fn parse_affinity(value: Option<&str>, protocol: Protocol) -> Result<Affinity, String> {
    let affinity: Affinity = value.unwrap_or("none").parse()?;
    if affinity.is_http_only() && !protocol.is_http() {
        return Err(format!(
            "affinity {affinity} needs an HTTP listener (--type http or http2); a {protocol} listener takes none or client-ip"
        ));
    }
    Ok(affinity)
}

/// Parses a routing key, saying which value was wrong.
pub fn parse_key(value: &str) -> Result<RoutingKey, String> {
    RoutingKey::from_str(value).map_err(|e| format!("routing key {value:?}: {e}"))
}

/// The router's spec for a Listener resource.
pub fn listener_spec(l: &Listener) -> Result<RouterListener, String> {
    let spec = &l.spec;
    let strategy = match (
        &spec.routing_key,
        spec.priority.is_empty(),
        spec.weighted.is_empty(),
    ) {
        (Some(k), true, true) => Strategy::Balanced(parse_key(k)?),
        (None, false, true) => Strategy::Priority(
            spec.priority
                .iter()
                .map(|k| parse_key(k))
                .collect::<Result<_, _>>()?,
        ),
        (None, true, false) => Strategy::Weighted(
            spec.weighted
                .iter()
                .map(|w| Ok((parse_key(&w.routing_key)?, w.weight)))
                .collect::<Result<_, String>>()?,
        ),
        _ => {
            return Err(
                "give exactly one of routingKey, priority (a list of keys) and weighted (keys with weights)"
                    .into(),
            );
        }
    };
    check_listener_host(&spec.host)?;
    let protocol = parse_type(&spec.protocol)?;
    Ok(RouterListener {
        name: l.metadata.name.clone(),
        strategy,
        host: spec.host.clone(),
        port: spec.port,
        protocol,
        affinity: parse_affinity(spec.affinity.as_deref(), protocol)?,
    })
}

/// The router's spec for a Connector resource.
pub fn connector_spec(c: &Connector) -> Result<RouterConnector, String> {
    if c.spec.port == 0 {
        return Err("a connector needs the backend's port (not 0)".into());
    }
    if c.spec.host.is_empty() {
        return Err("a connector needs the backend's host".into());
    }
    check_connector_host(&c.spec.host)?;
    Ok(RouterConnector {
        name: c.metadata.name.clone(),
        routing_key: parse_key(&c.spec.routing_key)?,
        host: c.spec.host.clone(),
        port: c.spec.port,
        advertised_port: c.spec.advertised_port,
        protocol: parse_type(&c.spec.protocol)?,
    })
}

/// A host as it is quoted back in a message: at most 64 characters, so a pasted page does not
/// flood the terminal.
fn quoted_host(host: &str) -> String {
    if host.chars().count() > 64 {
        format!(
            "{:?}… ({} characters)",
            host.chars().take(64).collect::<String>(),
            host.chars().count()
        )
    } else {
        format!("{host:?}")
    }
}

/// An IP address, or a DNS name by the rule certificates use (ASCII labels of letters, digits,
/// '-' and '_', joined by dots). Underscores are taken: Docker Compose and /etc/hosts names
/// carry them and the resolver looks them up like any other.
fn is_address_or_name(host: &str) -> bool {
    !host.contains(['/', ' ', '[', ']'])
        && (!host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok())
        && skiff_certs::certifiable_host(host)
}

/// Checks a connector's backend host: an IP address or a DNS name the router resolves when a
/// flow arrives (a Kubernetes service name like `redis.ns.svc.cluster.local` is one).
pub fn check_connector_host(host: &str) -> Result<(), String> {
    if is_address_or_name(host) {
        return Ok(());
    }
    Err(format!(
        "host {} is neither an IP address nor a DNS name: give the backend's address \
         (10.0.0.5, ::1) or name (redis, redis.ns.svc.cluster.local; letters, digits, \
         '-', '_' and dots)",
        quoted_host(host)
    ))
}

/// Checks a listener's bind host: an IP address of this machine (0.0.0.0 or :: for all) or a
/// name that resolves to one (localhost, the machine's name); the router binds every address
/// the name resolves to until one works.
pub fn check_listener_host(host: &str) -> Result<(), String> {
    if is_address_or_name(host) {
        return Ok(());
    }
    Err(format!(
        "host {} is not an address to listen on: give an IP address of this machine \
         (0.0.0.0 or :: for all, 127.0.0.1 for this machine only) or a name that resolves \
         to one (localhost)",
        quoted_host(host)
    ))
}

/// The site's listeners.
pub fn list_listeners(folder: &SiteFolder) -> Result<Vec<Listener>, SiteError> {
    list_resources(&folder.listeners_dir())
}

/// The site's connectors.
pub fn list_connectors(folder: &SiteFolder) -> Result<Vec<Connector>, SiteError> {
    list_resources(&folder.connectors_dir())
}

/// `skiff listener create NAME PORT [--routing-key K] [--host H] [--type T] [--affinity A]`.
/// The affinity is stored in its canonical spelling (`header:x-user` lowercase), and not at
/// all when it is `none`.
pub fn create_listener(
    folder: &SiteFolder,
    name: &str,
    port: u16,
    routing_key: Option<&str>,
    host: Option<&str>,
    protocol: &str,
    affinity: Option<&str>,
) -> Result<(Listener, Saved), SiteError> {
    may_create(folder, "listener", name)?;
    let affinity = match parse_type(protocol) {
        Ok(p) => parse_affinity(affinity, p).map_err(SiteError::InvalidArgument)?,
        Err(_) => Affinity::None, // listener_spec below says what is wrong with the type
    };
    let listener = Listener::new(
        name,
        ListenerSpec {
            routing_key: Some(routing_key.unwrap_or(name).to_string()),
            priority: vec![],
            weighted: vec![],
            host: host
                .unwrap_or(crate::resources::DEFAULT_LISTENER_HOST)
                .to_string(),
            port,
            protocol: protocol.to_string(),
            affinity: (affinity != Affinity::None).then(|| affinity.to_string()),
        },
    );
    listener_spec(&listener).map_err(SiteError::InvalidArgument)?;
    store(folder, &folder.listeners_dir(), listener)
}

/// `skiff connector create NAME PORT [--routing-key K] [--host H] [--type T]`.
pub fn create_connector(
    folder: &SiteFolder,
    name: &str,
    port: u16,
    routing_key: Option<&str>,
    host: Option<&str>,
    protocol: &str,
) -> Result<(Connector, Saved), SiteError> {
    may_create(folder, "connector", name)?;
    let connector = Connector::new(
        name,
        ConnectorSpec {
            routing_key: routing_key.unwrap_or(name).to_string(),
            host: host
                .unwrap_or(crate::resources::DEFAULT_CONNECTOR_HOST)
                .to_string(),
            port,
            advertised_port: None,
            protocol: protocol.to_string(),
        },
    );
    connector_spec(&connector).map_err(SiteError::InvalidArgument)?;
    store(folder, &folder.connectors_dir(), connector)
}

/// Checks before a listener or connector is written: a good name, a site in the folder, and
/// not a Kubernetes site.
fn may_create(folder: &SiteFolder, what: &'static str, name: &str) -> Result<(), SiteError> {
    validate_name(what, name)?;
    refuse_if_kubernetes(folder, what)?;
    load_site(folder)?;
    Ok(())
}

/// Listeners and connectors of a Kubernetes site come from the API; a file written here
/// would be replaced at the controller's next pass.
fn refuse_if_kubernetes(folder: &SiteFolder, what: &'static str) -> Result<(), SiteError> {
    match folder.kubernetes_namespace() {
        Some(namespace) => Err(SiteError::ManagedByKubernetes {
            what,
            dir: folder.root().to_path_buf(),
            namespace,
        }),
        None => Ok(()),
    }
}

/// Saves a checked listener or connector, saying whether one of that name was replaced.
fn store<R: Resource>(
    folder: &SiteFolder,
    dir: &std::path::Path,
    resource: R,
) -> Result<(R, Saved), SiteError> {
    let existed = dir.join(format!("{}.yaml", resource.name())).is_file();
    save_resource(folder, dir, &resource)?;
    let saved = if existed {
        Saved::Updated
    } else {
        Saved::Created
    };
    Ok((resource, saved))
}

/// `skiff listener delete NAME`.
pub fn delete_listener(folder: &SiteFolder, name: &str) -> Result<(), SiteError> {
    refuse_if_kubernetes(folder, "listener")?;
    delete_resource(&folder.listeners_dir(), "listener", name)
}

/// `skiff connector delete NAME`.
pub fn delete_connector(folder: &SiteFolder, name: &str) -> Result<(), SiteError> {
    refuse_if_kubernetes(folder, "connector")?;
    delete_resource(&folder.connectors_dir(), "connector", name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::WeightedKey;

    fn listener(spec: ListenerSpec) -> Listener {
        Listener::new("web", spec)
    }

    fn base() -> ListenerSpec {
        ListenerSpec {
            routing_key: Some("backend".into()),
            priority: vec![],
            weighted: vec![],
            host: "0.0.0.0".into(),
            port: 8080,
            protocol: "tcp".into(),
            affinity: None,
        }
    }

    #[test]
    fn a_kubernetes_site_refuses_cli_edits_of_its_services() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        crate::site::create_site(&folder, "east", &Default::default()).unwrap();
        std::fs::write(folder.kubernetes_marker(), "east\n").unwrap();
        let err = create_listener(&folder, "db", 5432, None, None, "tcp", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("run by Kubernetes (namespace east)"),
            "{err}"
        );
        assert!(err.hint().unwrap().contains("skiff.io/expose"), "{err}");
        assert!(create_connector(&folder, "db", 5432, None, None, "tcp").is_err());
        assert!(delete_connector(&folder, "db").is_err());
        assert!(
            list_listeners(&folder).unwrap().is_empty(),
            "nothing written"
        );
    }

    #[test]
    fn listener_strategies_come_from_exactly_one_field() {
        let s = listener_spec(&listener(base())).unwrap();
        assert_eq!(s.strategy, Strategy::Balanced("backend".parse().unwrap()));

        let mut p = base();
        p.routing_key = None;
        p.priority = vec!["a".into(), "b".into()];
        let s = listener_spec(&listener(p)).unwrap();
        assert_eq!(
            s.strategy,
            Strategy::Priority(vec!["a".parse().unwrap(), "b".parse().unwrap()])
        );

        let mut w = base();
        w.routing_key = None;
        w.weighted = vec![WeightedKey {
            routing_key: "a".into(),
            weight: 3,
        }];
        assert!(matches!(
            listener_spec(&listener(w)).unwrap().strategy,
            Strategy::Weighted(_)
        ));

        let mut both = base();
        both.priority = vec!["a".into()];
        let err = listener_spec(&listener(both)).unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn types_and_bad_keys_are_named() {
        let mut h = base();
        h.protocol = "http2".into();
        assert_eq!(
            listener_spec(&listener(h)).unwrap().protocol,
            Protocol::Http2
        );
        let mut h = base();
        h.protocol = "grpc".into();
        let err = listener_spec(&listener(h)).unwrap_err();
        assert!(err.contains("not one of tcp, http, http2, udp"), "{err}");
        let mut k = base();
        k.routing_key = Some("Bad Key!".into());
        let err = listener_spec(&listener(k)).unwrap_err();
        assert!(err.contains("Bad Key!"), "{err}");
        let c = Connector::new(
            "db",
            ConnectorSpec {
                routing_key: "db".into(),
                host: "127.0.0.1".into(),
                port: 0,
                advertised_port: None,
                protocol: "tcp".into(),
            },
        );
        assert!(connector_spec(&c).unwrap_err().contains("port"));
    }

    #[test]
    fn hosts_are_addresses_or_names() {
        let connector = |host: &str| {
            connector_spec(&Connector::new(
                "db",
                ConnectorSpec {
                    routing_key: "db".into(),
                    host: host.into(),
                    port: 5432,
                    advertised_port: None,
                    protocol: "tcp".into(),
                },
            ))
        };
        let listen = |host: &str| {
            let mut spec = base();
            spec.host = host.into();
            listener_spec(&listener(spec))
        };
        for good in [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "redis",
            "db.internal",
            "redis.ns.svc.cluster.local",
            "my_service",
            "web-1.example.com",
        ] {
            assert!(connector(good).is_ok(), "connector host {good}");
        }
        for good in ["0.0.0.0", "::", "127.0.0.1", "localhost", "my-host"] {
            assert!(listen(good).is_ok(), "listener host {good}");
        }
        let long = "a".repeat(300);
        for bad in [
            "<img src=x onerror=alert(1)>",
            "\"><svg onload=alert(1)>",
            "redis:6379",
            "http://redis",
            "two words",
            "[::1]",
            "caf\u{e9}",
            long.as_str(),
        ] {
            let err = connector(bad).unwrap_err();
            assert!(
                err.starts_with("host ") && err.contains("neither an IP address nor a DNS name"),
                "{bad}: {err}"
            );
            assert!(err.contains("redis.ns.svc.cluster.local"), "{err}");
            let err = listen(bad).unwrap_err();
            assert!(
                err.starts_with("host ") && err.contains("not an address to listen on"),
                "{bad}: {err}"
            );
            assert!(err.contains("0.0.0.0"), "{err}");
        }
        let err = connector(&long).unwrap_err();
        assert!(err.len() < 400 && err.contains("(300 characters)"), "{err}");
    }

    #[test]
    fn create_stores_the_affinity_canonically_and_refuses_one_the_type_cannot_take() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        crate::site::create_site(&folder, "east", &Default::default()).unwrap();
        let (l, _) =
            create_listener(&folder, "dns", 5353, None, None, "udp", Some("client-ip")).unwrap();
        assert_eq!(l.spec.affinity.as_deref(), Some("client-ip"));
        assert_eq!(l.spec.protocol, "udp");
        let (l, _) = create_listener(
            &folder,
            "web",
            80,
            None,
            None,
            "http",
            Some("header:X-User"),
        )
        .unwrap();
        assert_eq!(l.spec.affinity.as_deref(), Some("header:x-user"));
        let (l, _) = create_listener(&folder, "db", 5432, None, None, "tcp", Some("none")).unwrap();
        assert_eq!(l.spec.affinity, None, "none is not stored");
        let text = std::fs::read_to_string(folder.listeners_dir().join("db.yaml")).unwrap();
        assert!(!text.contains("affinity"), "{text}");

        let err = create_listener(&folder, "syslog", 514, None, None, "udp", Some("cookie:s"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("affinity cookie:s needs an HTTP listener")
                && err.contains("a udp listener takes none or client-ip"),
            "{err}"
        );
        let err = create_listener(&folder, "syslog", 514, None, None, "udp", Some("bogus"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected none, client-ip"), "{err}");
        assert_eq!(
            list_listeners(&folder).unwrap().len(),
            3,
            "refused ones not written"
        );
        let (c, _) = create_connector(&folder, "dns", 53, None, None, "udp").unwrap();
        assert_eq!(
            connector_spec(&c).unwrap().protocol,
            Protocol::Udp,
            "a udp connector"
        );
    }

    #[test]
    fn create_refuses_a_markup_host_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        crate::site::create_site(&folder, "east", &Default::default()).unwrap();
        let bad = "<img src=x onerror=alert(1)>";
        let err = create_connector(&folder, "db", 5432, None, Some(bad), "tcp").unwrap_err();
        assert!(
            err.to_string()
                .contains("neither an IP address nor a DNS name"),
            "{err}"
        );
        let err = create_listener(&folder, "db", 5432, None, Some(bad), "tcp", None).unwrap_err();
        assert!(
            err.to_string().contains("not an address to listen on"),
            "{err}"
        );
        assert!(list_connectors(&folder).unwrap().is_empty());
        assert!(list_listeners(&folder).unwrap().is_empty());
    }
}
