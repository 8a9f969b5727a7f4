//! Errors of the site controller, grouped by who is at fault, each with a hint for the user.

use std::path::{Path, PathBuf};

/// What went wrong in a site operation.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    // --- the user's input or the state of the folder ---
    /// A name is not a DNS label.
    #[error("invalid {what} name {name:?}: use 1-63 lowercase letters, digits and '-'")]
    InvalidName {
        /// Site, link, grant.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// No site in the folder.
    #[error("no site in {}", dir.display())]
    NoSite {
        /// The folder.
        dir: PathBuf,
    },
    /// The folder already holds another site.
    #[error("{} already holds site {existing:?}", dir.display())]
    SiteExists {
        /// The folder.
        dir: PathBuf,
        /// The site there.
        existing: String,
    },
    /// A resource file could not be understood.
    #[error("{}: {reason}", path.display())]
    BadResource {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A named resource does not exist.
    #[error("no {what} named {name:?} in this site")]
    NotFound {
        /// Its kind.
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A resource of that name exists already.
    #[error("a {what} named {name:?} exists already")]
    Exists {
        /// Its kind.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Tokens need link access.
    #[error("site {site:?} does not accept links, so it cannot issue tokens")]
    NoLinkAccess {
        /// The site's name.
        site: String,
    },
    /// A `site run` already holds the folder.
    #[error("a site is already running from {}", dir.display())]
    AlreadyRunning {
        /// The folder.
        dir: PathBuf,
    },
    /// The site is not running (its admin socket does not answer).
    #[error("site in {} is not running", dir.display())]
    NotRunning {
        /// The folder.
        dir: PathBuf,
    },
    /// A value given on the command line or in a file is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The token file is not a usable token.
    #[error("the token is not usable")]
    BadToken(#[source] skiff_certs::CertError),

    // --- the peer ---
    /// The issuing site answered and refused the redemption.
    #[error("site {issuer} refused the token: {reason}")]
    RedemptionRefused {
        /// The issuer's URL.
        issuer: String,
        /// Its reason, verbatim.
        reason: String,
    },
    /// The issuing site could not be reached or spoke something unexpected.
    #[error("could not redeem the token at {url}: {reason}")]
    IssuerUnreachable {
        /// The URL tried.
        url: String,
        /// What happened.
        reason: String,
    },

    // --- local failures ---
    /// A file operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate operation failed.
    #[error("certificate operation failed")]
    Cert(#[from] skiff_certs::CertError),
    /// The router could not start.
    #[error("the router could not start")]
    Router(#[from] skiff_router::link::RouterError),
    /// The admin API answered with an error.
    #[error("the running site answered {status}: {message}")]
    Admin {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The site is run by Kubernetes; its listeners and connectors come from the API.
    #[error("the site in {} is run by Kubernetes (namespace {namespace}): its {what}s come from the Kubernetes API", dir.display())]
    ManagedByKubernetes {
        /// `listener` or `connector`.
        what: &'static str,
        /// The site folder.
        dir: PathBuf,
        /// Its namespace.
        namespace: String,
    },
    /// A request to the Kubernetes API failed.
    #[cfg(feature = "kubernetes")]
    #[error("Kubernetes API: could not {action}")]
    Kube {
        /// What was being done, e.g. `read Secret skiff-site-identity`.
        action: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

impl SiteError {
    /// An I/O error on a path.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        SiteError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// What the user can do about it, if there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SiteError::NoSite { dir } => format!(
                "create one with: skiff site create NAME --dir {} (or set --dir / SKIFF_DIR to the site's folder)",
                dir.display()
            ),
            SiteError::SiteExists { .. } => {
                "use another --dir, or delete it first with: skiff site delete".into()
            }
            SiteError::NoLinkAccess { site } => format!(
                "enable link access with: skiff site create {site} --enable-link-access [--link-host H]"
            ),
            SiteError::AlreadyRunning { .. } => {
                "stop the running `skiff site run` first, or use another --dir".into()
            }
            SiteError::NotRunning { .. } => {
                "start it with: skiff site run (in the foreground, or as a systemd service)".into()
            }
            SiteError::ManagedByKubernetes { what, .. } => format!(
                "annotate a Service with skiff.io/expose: \"true\", or apply a ConfigMap labelled skiff.io/type={what} holding the {what} YAML (see docs/kubernetes.md)"
            ),
            SiteError::NotFound { what, .. } => format!("list them with: skiff {what} list"),
            SiteError::BadToken(_) => {
                "ask the issuing site for a new token: skiff token issue FILE".into()
            }
            // The proxy's answer (in the reason) says what to change there.
            SiteError::IssuerUnreachable { reason, .. } if reason.starts_with("proxy ") => {
                "the redemption went through --proxy and stopped there; what a proxy must allow: docs/operations.md, \"Links through an HTTP proxy\"".into()
            }
            SiteError::IssuerUnreachable { .. } => {
                "check that the issuing site runs (skiff site status) and that its link port is reachable from here".into()
            }
            SiteError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                "check the folder's owner and permissions, or pick another with --dir".into()
            }
            #[cfg(feature = "kubernetes")]
            SiteError::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 403 => {
                "the router's ServiceAccount lacks a permission: apply deploy/role.yaml and deploy/rolebinding.yaml in this namespace".into()
            }
            #[cfg(feature = "kubernetes")]
            SiteError::Kube {
                source: kube::Error::InferConfig(_),
                ..
            } => "in a pod, keep automountServiceAccountToken on (deploy/deployment.yaml); elsewhere point KUBECONFIG at a kubeconfig".into(),
            #[cfg(feature = "kubernetes")]
            SiteError::Kube { .. } => {
                "check that the API server is reachable from the pod (kubectl get --raw /readyz) and see the router's log".into()
            }
            _ => return None,
        })
    }
}
