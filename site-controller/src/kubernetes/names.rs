//! The names skiff uses in a Kubernetes namespace: labels, annotations, Secret and ConfigMap
//! names and keys. docs/kubernetes.md lists them for operators; change both together.

/// Label on everything skiff reads or writes: `site`, `listener`, `connector` (ConfigMaps);
/// `site-identity`, `link`, `grant`, `peer`, `token` (Secrets).
pub const LABEL_TYPE: &str = "skiff.io/type";
/// Label on objects skiff created and owns.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "skiff";
/// Label on a managed Service: the routing key it carries.
pub const LABEL_ROUTING_KEY: &str = "skiff.io/routing-key";
/// Label Kubernetes puts on EndpointSlices: the Service they belong to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Service annotation: `"true"` exposes the Service to the network.
pub const ANNOTATION_EXPOSE: &str = "skiff.io/expose";
/// Service annotation: the routing key (default: the Service name).
pub const ANNOTATION_ROUTING_KEY: &str = "skiff.io/routing-key";
/// Service annotation: `tcp`, `http` or `http2`.
pub const ANNOTATION_TYPE: &str = "skiff.io/type";
/// Managed Service annotation: the router listener port it points at.
pub const ANNOTATION_LISTENER_PORT: &str = "skiff.io/listener-port";
/// Token Secret annotation: `Redeemed` or `Failed`.
pub const ANNOTATION_STATUS: &str = "skiff.io/status";
/// Token Secret annotation: the link made, or why redemption failed.
pub const ANNOTATION_STATUS_MESSAGE: &str = "skiff.io/status-message";
/// Token Secret annotation: SHA-256 of the token the status is about (a changed token is
/// tried again).
pub const ANNOTATION_TOKEN_HASH: &str = "skiff.io/token-hash";
/// Annotation on mirrored Secrets: the resource name (the file name in the site folder).
pub const ANNOTATION_NAME: &str = "skiff.io/name";

/// The router pod's labels; managed Services select them.
pub const ROUTER_SELECTOR: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "skiff"),
    ("app.kubernetes.io/component", "router"),
];

/// ConfigMap holding the site's settings.
pub const SITE_CONFIGMAP: &str = "skiff-site";
/// Its key.
pub const KEY_SITE: &str = "site.yaml";
/// Key of a listener ConfigMap.
pub const KEY_LISTENER: &str = "listener.yaml";
/// Key of a connector ConfigMap.
pub const KEY_CONNECTOR: &str = "connector.yaml";
/// Key of a token Secret.
pub const KEY_TOKEN: &str = "token.yaml";
/// Secret holding the site's id, CA and link key.
pub const IDENTITY_SECRET: &str = "skiff-site-identity";
/// Service exposing link access; its load balancer addresses go into tokens.
pub const LINK_SERVICE: &str = "skiff-link";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "skiff";

/// Whether `name` may name a Service (an RFC 1035 label).
pub fn is_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !name.ends_with('-')
}

/// A resource name (a DNS label) made from free text: lowercased, other characters become
/// `-`, and names over 63 characters are cut and end in a hash of the whole, so two long
/// names stay distinct.
pub fn resource_name(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-').to_string();
    if s.len() <= 63 && !s.is_empty() {
        return s;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let hash: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head: String = s.chars().take(54).collect();
    format!("{}-{hash}", head.trim_end_matches('-'))
}

/// A resource name made from free text that stays distinct for distinct texts (two IPv6
/// addresses may sanitise alike): the sanitised text, cut to 54 characters, and 8 hex digits
/// of its hash.
pub fn unique_name(text: &str) -> String {
    let head: String = resource_name(text).chars().take(54).collect();
    format!(
        "{}-{}",
        head.trim_end_matches('-'),
        &sha256_hex(text.as_bytes())[..8]
    )
}

/// SHA-256 of `data` in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_rfc1035_labels() {
        for ok in ["backend", "a", "db-2", &"a".repeat(63)] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in ["", "2db", "Backend", "db.v2", "db-", &"a".repeat(64)] {
            assert!(!is_service_name(bad), "{bad}");
        }
    }

    #[test]
    fn resource_names_are_labels_and_long_ones_stay_distinct() {
        assert_eq!(
            resource_name("backend-http-10.0.0.7"),
            "backend-http-10-0-0-7"
        );
        assert_eq!(resource_name("db-5432-fd00::1"), "db-5432-fd00-1");
        let a = resource_name(&format!("{}-1", "x".repeat(80)));
        let b = resource_name(&format!("{}-2", "x".repeat(80)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert!(crate::resources::validate_name("connector", &a).is_ok());
        let (x, y) = (
            unique_name("db-5432-fd00::1:0"),
            unique_name("db-5432-fd00:1::0"),
        );
        assert_ne!(x, y);
        assert!(x.starts_with("db-5432-fd00-1-0-"), "{x}");
        assert!(crate::resources::validate_name("connector", &x).is_ok());
    }
}
