//! `skiff apply -f`, `skiff delete -f` and `skiff get`: resources as YAML files (the shapes of
//! the site folder and of the Kubernetes ConfigMaps), checked as a whole (every problem named
//! by file, line, column and field) before anything is written to the site folder.
//!
//! Flow of `apply`: [`parse`] splits each input into documents, reads every document twice
//! (once as a tree of located fields, once as its typed resource) and checks it on its own
//! ([`services::listener_spec`], [`services::connector_spec`], names, keys); [`apply`] then
//! checks the documents against the folder with pure checks that write nothing (the Site is
//! this site and its settings are valid, [`site::check_site_options`]; each Link is certified
//! for this site and does not replace a link to another site, [`site::check_link`]) and only
//! when every document passed writes them, one atomic file write each.
//!
//! # Layout
//! - `located`: YAML read with locations (documents, located fields, errors as problems).
//! - `get`: `skiff get`, the resources as `apply` takes them back.
//! - `tests`: unit tests (locations of problems, nothing written on a refusal).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use skiff_certs::{API_VERSION, SiteId};

use crate::SiteError;
use crate::folder::{PUBLIC_MODE, SiteFolder, read_text, write_atomic};
use crate::resources::{
    Connector, DEFAULT_LINK_PORT, Link, Listener, Metadata, Site, SiteSpec, from_yaml, to_yaml,
    validate_name,
};
use crate::services;
use crate::site::{self, SiteOptions};

mod get;
mod located;
#[cfg(test)]
mod tests;

pub use get::{GetKind, Stored, get, to_yaml_stream};
use located::{Chunk, Fields, Node, split_documents, yaml_problem};

/// One input: a file's text and the name problems are reported under.
#[derive(Debug, Clone)]
pub struct Input {
    /// The file's path as given, or `-` for standard input.
    pub origin: String,
    /// Its text.
    pub text: String,
}

/// Reads `path`: a file, or every `.yaml`/`.yml` file of a folder (sorted by name, not its
/// sub-folders).
pub fn read_path(path: &Path) -> Result<Vec<Input>, SiteError> {
    let meta = std::fs::metadata(path).map_err(|e| SiteError::io("read", path, e))?;
    let files = if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| SiteError::io("list", path, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SiteError::io("list", path, e))?;
            let p = entry.path();
            let yaml = matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"));
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if yaml && !hidden && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(SiteError::InvalidArgument(format!(
                "{} holds no .yaml or .yml file",
                path.display()
            )));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|p| {
            Ok(Input {
                text: read_bounded(&p)?,
                origin: p.display().to_string(),
            })
        })
        .collect()
}

/// Most bytes read from one input (a file, or standard input): YAML resources are small; a
/// FIFO or `/dev/zero` given by mistake is refused instead of read without end.
pub const INPUT_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads the file at `path`, at most [`INPUT_LIMIT`] bytes of UTF-8.
fn read_bounded(path: &Path) -> Result<String, SiteError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| SiteError::io("read", path, e))?;
    let mut text = String::new();
    file.take(INPUT_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| SiteError::io("read", path, e))?;
    if text.len() as u64 > INPUT_LIMIT {
        return Err(SiteError::InvalidArgument(format!(
            "{} holds more than {} MiB: apply takes YAML resources (is it the right file?); split a larger set into files",
            path.display(),
            INPUT_LIMIT / (1024 * 1024)
        )));
    }
    Ok(text)
}

/// One thing wrong with the input, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `-`).
    pub origin: String,
    /// Line (1-based).
    pub line: u64,
    /// Column (1-based), when known.
    pub column: Option<u64>,
    /// The field (`spec.port`), when one is at fault.
    pub field: Option<String>,
    /// What is wrong, and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.line)?;
        if let Some(c) = self.column {
            write!(f, ":{c}")?;
        }
        match &self.field {
            Some(field) => write!(f, ": {field}: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// Why `apply` or `delete` did nothing (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Documents are invalid: nothing was written.
    #[error("{} problem(s) in the input; nothing was changed", .0.len())]
    Invalid(Vec<Problem>),
    /// The folder refused (no site, run by Kubernetes) or a write failed.
    #[error(transparent)]
    Site(#[from] SiteError),
}

/// The kinds `apply` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// This site's settings.
    Site,
    /// A listener.
    Listener,
    /// A connector.
    Connector,
    /// A link this site dials.
    Link,
}

impl Kind {
    /// Lowercase, as in `listener/db`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Listener => "listener",
            Kind::Connector => "connector",
            Kind::Link => "link",
        }
    }

    fn from_kind(kind: &str) -> Result<Kind, String> {
        Ok(match kind {
            "Site" => Kind::Site,
            "Listener" => Kind::Listener,
            "Connector" => Kind::Connector,
            "Link" => Kind::Link,
            "AccessToken" => {
                return Err(
                    "an AccessToken is not applied: redeem it with: skiff token redeem FILE".into(),
                );
            }
            "AccessGrant" => {
                return Err(
                    "an AccessGrant is not applied: grants are made by: skiff token issue FILE"
                        .into(),
                );
            }
            "LinkedSite" => {
                return Err("a LinkedSite is not applied: it is recorded when a site redeems a token here (revoke one with: skiff link revoke SITE)".into());
            }
            other => {
                return Err(format!(
                    "kind {other:?} is not one of Site, Listener, Connector, Link"
                ));
            }
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Site document: the Site resource, `spec.id` optional (the Kubernetes site ConfigMap has
/// none). Absent settings take their defaults, as in `site.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteDocument {
    /// Always `skiff.io/v1alpha1`.
    pub api_version: String,
    /// Always `Site`.
    pub kind: String,
    /// The site's name: the folder's site.
    pub metadata: Metadata,
    /// Its settings.
    pub spec: SiteDocumentSpec,
}

/// `spec` of a Site document: [`SiteSpec`] with `id` optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteDocumentSpec {
    /// The site's id; when given, it must be this site's.
    #[serde(default)]
    pub id: Option<SiteId>,
    /// See [`SiteSpec::link_access`].
    #[serde(default)]
    pub link_access: bool,
    /// See [`SiteSpec::link_hosts`].
    #[serde(default)]
    pub link_hosts: Vec<String>,
    /// See [`SiteSpec::link_port`].
    #[serde(default = "default_link_port")]
    pub link_port: u16,
    /// See [`SiteSpec::edge`].
    #[serde(default)]
    pub edge: bool,
    /// See [`SiteSpec::certificate_overlap`].
    #[serde(default)]
    pub certificate_overlap: Option<String>,
}

fn default_link_port() -> u16 {
    DEFAULT_LINK_PORT
}

/// A resource read from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// This site's settings.
    Site(SiteDocument),
    /// A listener.
    Listener(Listener),
    /// A connector.
    Connector(Connector),
    /// A link.
    Link(Link),
}

/// One document of the input, checked on its own.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from.
    pub origin: String,
    /// The line it starts on.
    pub line: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// The resource.
    pub resource: Resource,
    fields: Fields,
}

impl Document {
    /// `listener/db`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    fn problem(&self, field: &str, message: impl Into<String>) -> Problem {
        self.fields.problem(&self.origin, self.line, field, message)
    }
}

/// What `parse` is for: `apply` checks every value, `delete` only needs kind and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `skiff apply`.
    Apply,
    /// `skiff delete`.
    Delete,
}

/// Reads every document of every input and checks each on its own, and that no kind+name is
/// given twice. Every problem found is returned, not only the first. Empty documents (a
/// trailing `---`, comments only) are skipped.
pub fn parse(inputs: &[Input], purpose: Purpose) -> Result<Vec<Document>, Vec<Problem>> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        let mut count = 0;
        for chunk in split_documents(&input.text) {
            count += 1;
            match parse_document(&input.origin, &chunk, purpose) {
                Ok(d) => docs.push(d),
                Err(p) => problems.extend(p),
            }
        }
        if count == 0 {
            problems.push(Problem {
                origin: input.origin.clone(),
                line: 1,
                column: None,
                field: None,
                message: "no resource in it (an empty file?)".into(),
            });
        }
    }
    let mut seen: HashMap<(Kind, String), (String, u64)> = HashMap::new();
    for d in &docs {
        let at = (d.origin.clone(), d.fields.line_of("metadata.name", d.line));
        if let Some((origin, line)) = seen.get(&(d.kind, d.name.clone())) {
            problems.push(d.problem(
                "metadata.name",
                format!(
                    "{} is also given at {origin}:{line}: give each kind and name once",
                    d.id()
                ),
            ));
        } else {
            seen.insert((d.kind, d.name.clone()), at);
        }
    }
    if problems.is_empty() {
        Ok(docs)
    } else {
        Err(problems)
    }
}

fn parse_document(origin: &str, chunk: &Chunk, purpose: Purpose) -> Result<Document, Vec<Problem>> {
    let at_start = |message: String| Problem {
        origin: origin.to_string(),
        line: chunk.line,
        column: None,
        field: None,
        message,
    };
    let tree: Spanned<Node> = serde_saphyr::from_str(&chunk.text)
        .map_err(|e| vec![yaml_problem(origin, chunk.line, &Fields::default(), &e)])?;
    let list = if matches!(tree.value, Node::Seq(_)) {
        " (a list, as `skiff get -o json` prints without a NAME, is not: use -o yaml)"
    } else {
        ""
    };
    let Node::Map(_) = &tree.value else {
        return Err(vec![at_start(format!(
            "a document must be a resource: a mapping with apiVersion, kind, metadata and spec{list}"
        ))]);
    };
    let mut fields = Fields::default();
    fields.collect("", &tree);
    let mut problems = Vec::new();
    let kind = match fields.scalar("kind") {
        None => {
            return Err(vec![at_start(
                "no kind: each document needs kind: Site, Listener, Connector or Link".into(),
            )]);
        }
        Some(k) => match Kind::from_kind(k) {
            Ok(k) => k,
            Err(reason) => {
                return Err(vec![fields.problem(origin, chunk.line, "kind", reason)]);
            }
        },
    };
    match fields.scalar("apiVersion") {
        Some(API_VERSION) => {}
        Some(other) => problems.push(fields.problem(
            origin,
            chunk.line,
            "apiVersion",
            format!("{other:?} is not {API_VERSION}"),
        )),
        None => problems.push(at_start(format!(
            "no apiVersion: give apiVersion: {API_VERSION}"
        ))),
    }
    let typed = match kind {
        Kind::Site => serde_saphyr::from_str(&chunk.text).map(Resource::Site),
        Kind::Listener => serde_saphyr::from_str(&chunk.text).map(Resource::Listener),
        Kind::Connector => serde_saphyr::from_str(&chunk.text).map(Resource::Connector),
        Kind::Link => serde_saphyr::from_str(&chunk.text).map(Resource::Link),
    };
    let resource = match typed {
        Ok(r) => r,
        Err(e) => {
            problems.push(yaml_problem(origin, chunk.line, &fields, &e));
            return Err(problems);
        }
    };
    let name = match &resource {
        Resource::Site(s) => s.metadata.name.clone(),
        Resource::Listener(l) => l.metadata.name.clone(),
        Resource::Connector(c) => c.metadata.name.clone(),
        Resource::Link(l) => l.metadata.name.clone(),
    };
    let doc = Document {
        origin: origin.to_string(),
        line: chunk.line,
        kind,
        name,
        resource,
        fields,
    };
    if let Err(e) = validate_name(kind.as_str(), &doc.name) {
        problems.push(doc.problem("metadata.name", e.to_string()));
    }
    if purpose == Purpose::Apply {
        problems.extend(check_values(&doc));
    }
    if problems.is_empty() {
        Ok(doc)
    } else {
        Err(problems)
    }
}

/// The checks of one resource's values that need no site: the same ones `listener create`
/// and `connector create` make, each pointed at its field.
fn check_values(doc: &Document) -> Option<Problem> {
    match &doc.resource {
        Resource::Listener(l) => {
            services::listener_spec(l).err().map(|reason| {
                let s = &l.spec;
                let keys =
                    s.routing_key
                        .iter()
                        .map(|k| ("spec.routingKey".to_string(), k))
                        .chain(
                            s.priority
                                .iter()
                                .enumerate()
                                .map(|(i, k)| (format!("spec.priority[{i}]"), k)),
                        )
                        .chain(s.weighted.iter().enumerate().map(|(i, w)| {
                            (format!("spec.weighted[{i}].routingKey"), &w.routing_key)
                        }));
                let field = if reason.starts_with("routing key") {
                    keys.into_iter()
                        .find(|(_, k)| services::parse_key(k).is_err())
                        .map(|(f, _)| f)
                        .unwrap_or_else(|| "spec".into())
                } else if services::parse_type(&s.protocol).is_err() {
                    "spec.type".into()
                } else if reason.starts_with("affinity") {
                    "spec.affinity".into()
                } else if services::check_listener_host(&s.host).is_err() {
                    "spec.host".into()
                } else {
                    "spec".into()
                };
                doc.problem(&field, reason)
            })
        }
        Resource::Connector(c) => services::connector_spec(c).err().map(|reason| {
            let s = &c.spec;
            let field = if s.port == 0 {
                "spec.port"
            } else if s.host.is_empty() || services::check_connector_host(&s.host).is_err() {
                "spec.host"
            } else if services::parse_key(&s.routing_key).is_err() {
                "spec.routingKey"
            } else if services::parse_type(&s.protocol).is_err() {
                "spec.type"
            } else {
                "spec"
            };
            doc.problem(field, reason)
        }),
        Resource::Link(l) => {
            if let Err(reason) = l
                .spec
                .transport
                .parse::<skiff_router::link::TransportChoice>()
            {
                return Some(doc.problem("spec.transport", reason));
            }
            // A proxy URL that does not parse, or a proxy with transport quic.
            l.proxy_config().err().map(|e| {
                let reason = e.to_string();
                let field = if reason.contains("spec.proxy") {
                    "spec.proxy"
                } else {
                    "spec.transport"
                };
                doc.problem(field, reason)
            })
        }
        Resource::Site(s) => {
            let spec = SiteSpec {
                id: s.spec.id.unwrap_or(SiteId::random()),
                link_access: s.spec.link_access,
                link_hosts: s.spec.link_hosts.clone(),
                link_port: s.spec.link_port,
                edge: s.spec.edge,
                certificate_overlap: s.spec.certificate_overlap.clone(),
            };
            spec.certificate_overlap()
                .err()
                .map(|e| doc.problem("spec.certificateOverlap", e.to_string()))
        }
    }
}

/// What `apply` did to one resource (kubectl's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It is new.
    Created,
    /// It existed and was changed.
    Configured,
    /// It existed as given.
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        })
    }
}

/// One resource applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// What was done.
    pub change: Change,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.kind, self.name, self.change)
    }
}

/// Checks the folder can take documents: a site is there, and it is not run by Kubernetes.
fn may_change(folder: &SiteFolder, docs: &[Document]) -> Result<site::LoadedSite, SiteError> {
    if let Some(namespace) = folder.kubernetes_namespace() {
        return Err(SiteError::ManagedByKubernetes {
            what: docs
                .iter()
                .find(|d| d.kind != Kind::Site)
                .map_or("listener", |d| d.kind.as_str()),
            dir: folder.root().to_path_buf(),
            namespace,
        });
    }
    site::load_site(folder)
}

/// A change checked against the folder, ready to write.
enum Planned {
    Site(Site),
    Listener(Listener),
    Connector(Connector),
    Link(Link),
}

/// Applies checked documents to the site in `folder`: checks them against the site first
/// (every problem is reported and nothing is written when one fails), then writes each
/// changed resource (one atomic write each) and reports it to `on_done` as it goes. Does not
/// reload a running site.
pub fn apply(
    folder: &SiteFolder,
    docs: &[Document],
    mut on_done: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, ApplyError> {
    let loaded = may_change(folder, docs)?;
    let link_key = if docs.iter().any(|d| d.kind == Kind::Link) {
        site::link_key(folder)?
    } else {
        String::new()
    };
    let links = site::LinkCheckSite {
        site: &loaded,
        link_key: &link_key,
        kubernetes_namespace: folder.kubernetes_namespace(),
    };
    let mut problems = Vec::new();
    let mut plan = Vec::new();
    for doc in docs {
        match plan_one(folder, &links, doc) {
            Ok(p) => plan.push((doc, p)),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(ApplyError::Invalid(problems));
    }
    let mut outcomes = Vec::new();
    for (doc, (change, planned)) in plan {
        if change != Change::Unchanged {
            write(folder, &loaded, planned)?;
        }
        let outcome = Outcome {
            kind: doc.kind,
            name: doc.name.clone(),
            change,
        };
        on_done(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn plan_one(
    folder: &SiteFolder,
    links: &site::LinkCheckSite<'_>,
    doc: &Document,
) -> Result<(Change, Planned), Problem> {
    let loaded = links.site;
    let existing = |dir: PathBuf| {
        let path = dir.join(format!("{}.yaml", doc.name));
        path.is_file()
            .then(|| read_text(&path).ok())
            .map(|t| (t, path))
    };
    let change = |same: bool, existed: bool| match (existed, same) {
        (false, _) => Change::Created,
        (true, true) => Change::Unchanged,
        (true, false) => Change::Configured,
    };
    match &doc.resource {
        Resource::Listener(l) => {
            let old = existing(folder.listeners_dir());
            let same = old
                .as_ref()
                .and_then(|(t, p)| t.as_ref().and_then(|t| from_yaml::<Listener>(t, p).ok()))
                .is_some_and(|o| &o == l);
            Ok((change(same, old.is_some()), Planned::Listener(l.clone())))
        }
        Resource::Connector(c) => {
            let old = existing(folder.connectors_dir());
            let same = old
                .as_ref()
                .and_then(|(t, p)| t.as_ref().and_then(|t| from_yaml::<Connector>(t, p).ok()))
                .is_some_and(|o| &o == c);
            Ok((change(same, old.is_some()), Planned::Connector(c.clone())))
        }
        Resource::Link(given) => {
            let mut link = given.clone();
            let own_key = folder.link_own_key_file(&link.metadata.name);
            let held = own_key
                .is_file()
                .then(|| read_text(&own_key).ok())
                .flatten();
            // `skiff get links` leaves keys out: a link read back from here that has its own
            // key (an offline link) keeps it.
            if link.spec.client_key.is_none()
                && let Some(key) = &held
                && certifies(&link.spec.client_certificate, key)
            {
                link.spec.client_key = Some(key.clone());
            }
            site::check_link(links, &link).map_err(|p| doc.problem(p.field, p.reason))?;
            let old = existing(folder.links_dir());
            let old_link = old
                .as_ref()
                .and_then(|(t, p)| t.as_ref().and_then(|t| from_yaml::<Link>(t, p).ok()));
            // The same name for a link to another site: applying would silently cut this
            // site off from the one linked now.
            if let Some(o) = &old_link
                && o.spec.peer_site_id != link.spec.peer_site_id
            {
                return Err(doc.problem(
                    "metadata.name",
                    format!(
                        "link {name} already links to site {} ({}); this one is to site {} ({}): rename this one or delete link/{name} first (skiff delete -f, or skiff link delete {name})",
                        o.spec.peer_site_name,
                        o.spec.peer_site_id,
                        link.spec.peer_site_name,
                        link.spec.peer_site_id,
                        name = link.metadata.name,
                    ),
                ));
            }
            let mut stored = link.clone();
            stored.spec.client_key = None;
            let same = old_link.is_some_and(|o| o == stored) && held == link.spec.client_key;
            Ok((change(same, old.is_some()), Planned::Link(link)))
        }
        Resource::Site(s) => {
            if s.metadata.name != loaded.name() {
                return Err(doc.problem(
                    "metadata.name",
                    format!(
                        "this folder ({}) holds site {:?}: a Site document can only change that site's settings (a site's name is fixed when it is created)",
                        folder.root().display(),
                        loaded.name()
                    ),
                ));
            }
            if let Some(id) = s.spec.id
                && id != loaded.id()
            {
                return Err(doc.problem(
                    "spec.id",
                    format!(
                        "site {:?} here has id {}; this document is for another site with the same name: leave spec.id out, or give this site's id",
                        loaded.name(),
                        loaded.id()
                    ),
                ));
            }
            let opts = SiteOptions {
                link_access: s.spec.link_access,
                link_hosts: s.spec.link_hosts.clone(),
                link_port: Some(s.spec.link_port),
                edge: s.spec.edge,
            };
            site::check_site_options(&opts).map_err(|p| match p {
                site::SiteOptionsProblem::EdgeAcceptsLinks => doc.problem(
                    "spec.edge",
                    "an edge site cannot accept links: set edge: false or linkAccess: false",
                ),
                site::SiteOptionsProblem::BadLinkHost(h) => doc.problem(
                    "spec.linkHosts",
                    format!(
                        "{h:?} is not a host name or IP address (give the port as spec.linkPort)"
                    ),
                ),
            })?;
            let mut desired = Site::new(
                loaded.name(),
                site::site_spec(loaded.id(), &opts, Some(&loaded.site)),
            );
            desired.spec.certificate_overlap = s.spec.certificate_overlap.clone();
            let same = desired == loaded.site;
            Ok((change(same, true), Planned::Site(desired)))
        }
    }
}

/// Whether `cert_pem` certifies the private key `key_pem`.
fn certifies(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(cert) = skiff_certs::first_certificate(cert_pem) else {
        return false;
    };
    match (
        skiff_certs::key_fingerprint(&cert),
        skiff_certs::private_key_fingerprint(key_pem),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn write(
    folder: &SiteFolder,
    loaded: &site::LoadedSite,
    planned: Planned,
) -> Result<(), SiteError> {
    match planned {
        Planned::Listener(l) => site::save_resource(folder, &folder.listeners_dir(), &l),
        Planned::Connector(c) => site::save_resource(folder, &folder.connectors_dir(), &c),
        Planned::Link(l) => site::install_link(folder, &l),
        Planned::Site(desired) => {
            let mut settings = desired.spec.clone();
            settings.certificate_overlap = loaded.site.spec.certificate_overlap.clone();
            if settings != loaded.site.spec {
                let opts = SiteOptions {
                    link_access: desired.spec.link_access,
                    link_hosts: desired.spec.link_hosts.clone(),
                    link_port: Some(desired.spec.link_port),
                    edge: desired.spec.edge,
                };
                site::create_site(folder, loaded.name(), &opts)?;
            }
            // create_site keeps the overlap it found; the document's goes in last.
            write_atomic(
                &folder.site_file(),
                to_yaml(&desired).as_bytes(),
                PUBLIC_MODE,
            )
        }
    }
}

/// What `delete` did to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// `false`: there was none of that name.
    pub found: bool,
    /// An offline link's own key (`links/NAME.key`), deleted with it: the link cannot be
    /// applied again from `skiff get` output (which has no key).
    pub key_deleted: Option<PathBuf>,
}

impl fmt::Display for Deleted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.found { "deleted" } else { "not found" };
        write!(f, "{}/{} {what}", self.kind, self.name)
    }
}

/// Deletes the listeners, connectors and links the documents name (kind and name only).
/// Site documents are refused before anything is deleted. A missing one is reported
/// (`found: false`) and the others are still deleted. Does not reload a running site.
pub fn delete(
    folder: &SiteFolder,
    docs: &[Document],
    mut on_done: impl FnMut(&Deleted),
) -> Result<Vec<Deleted>, ApplyError> {
    let sites: Vec<Problem> = docs
        .iter()
        .filter(|d| d.kind == Kind::Site)
        .map(|d| {
            d.problem(
                "kind",
                "a Site is not deleted with delete -f: delete the whole site with: skiff site delete (leave the Site document out of the input to delete the others)",
            )
        })
        .collect();
    if !sites.is_empty() {
        return Err(ApplyError::Invalid(sites));
    }
    may_change(folder, docs)?;
    let mut out = Vec::new();
    for d in docs {
        let own_key = folder.link_own_key_file(&d.name);
        let had_key = d.kind == Kind::Link && own_key.is_file();
        let result = match d.kind {
            Kind::Listener => services::delete_listener(folder, &d.name),
            Kind::Connector => services::delete_connector(folder, &d.name),
            Kind::Link => site::delete_link(folder, &d.name),
            Kind::Site => unreachable!("refused above"),
        };
        let found = match result {
            Ok(()) => true,
            Err(SiteError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        let deleted = Deleted {
            kind: d.kind,
            name: d.name.clone(),
            found,
            key_deleted: (found && had_key).then_some(own_key),
        };
        on_done(&deleted);
        out.push(deleted);
    }
    Ok(out)
}
