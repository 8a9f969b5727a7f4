//! `skiff get`: the resources of a site folder as `apply` takes them back (links without
//! private keys).

use serde::Serialize;

use crate::SiteError;
use crate::folder::SiteFolder;
use crate::resources::{Connector, Link, Listener, Site, to_yaml};
use crate::site;

/// What `skiff get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetKind {
    /// `listeners`.
    Listeners,
    /// `connectors`.
    Connectors,
    /// `links`.
    Links,
    /// `site`.
    Site,
}

/// A resource as `get` gives it back: what `apply` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Stored {
    /// The Site (with its id).
    Site(Site),
    /// A listener.
    Listener(Listener),
    /// A connector.
    Connector(Connector),
    /// A link, without any private key.
    Link(Link),
}

impl Stored {
    /// The resource's YAML.
    pub fn to_yaml(&self) -> String {
        match self {
            Stored::Site(r) => to_yaml(r),
            Stored::Listener(r) => to_yaml(r),
            Stored::Connector(r) => to_yaml(r),
            Stored::Link(r) => to_yaml(r),
        }
    }

    fn name(&self) -> &str {
        match self {
            Stored::Site(r) => &r.metadata.name,
            Stored::Listener(r) => &r.metadata.name,
            Stored::Connector(r) => &r.metadata.name,
            Stored::Link(r) => &r.metadata.name,
        }
    }
}

/// `skiff get KIND [NAME]`: the resources of the site in `folder`, sorted by name; a NAME
/// that is not there is an error naming it.
pub fn get(
    folder: &SiteFolder,
    kind: GetKind,
    name: Option<&str>,
) -> Result<Vec<Stored>, SiteError> {
    let loaded = site::load_site(folder)?;
    let (all, what): (Vec<Stored>, &'static str) = match kind {
        GetKind::Site => (vec![Stored::Site(loaded.site.clone())], "site"),
        GetKind::Listeners => (
            site::list_resources::<Listener>(&folder.listeners_dir())?
                .into_iter()
                .map(Stored::Listener)
                .collect(),
            "listener",
        ),
        GetKind::Connectors => (
            site::list_resources::<Connector>(&folder.connectors_dir())?
                .into_iter()
                .map(Stored::Connector)
                .collect(),
            "connector",
        ),
        GetKind::Links => (
            site::list_resources::<Link>(&folder.links_dir())?
                .into_iter()
                .map(|mut l| {
                    l.spec.client_key = None;
                    Stored::Link(l)
                })
                .collect(),
            "link",
        ),
    };
    let Some(name) = name else {
        return Ok(all);
    };
    let found: Vec<Stored> = all.into_iter().filter(|r| r.name() == name).collect();
    if found.is_empty() {
        if kind == GetKind::Site {
            return Err(SiteError::InvalidArgument(format!(
                "no site named {name:?} in {}: it holds site {:?}",
                folder.root().display(),
                loaded.name()
            )));
        }
        return Err(SiteError::NotFound {
            what,
            name: name.into(),
        });
    }
    Ok(found)
}

/// Resources as one multi-document YAML stream (documents separated by `---`), which
/// `apply -f` takes back.
pub fn to_yaml_stream(resources: &[Stored]) -> String {
    resources
        .iter()
        .map(Stored::to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}
