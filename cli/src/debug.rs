//! `skiff debug dump FILE`: one `.tar.gz` for a bug report: the running site's status (admin
//! API answers, metrics, readiness, recent log lines) and the site's configuration as YAML
//! without any private key, grant code or proxy password, with a README saying what is in it
//! and what is not. Nothing is copied from the site folder wholesale: every part is named here.

mod redact;

use std::io::Write;
use std::process::ExitCode;

use http::Method;
use serde_json::Value;
use skiff_site_controller::SiteError;
use skiff_site_controller::admin::admin_request;
use skiff_site_controller::apply::{GetKind, Stored, get, to_yaml_stream};
use skiff_site_controller::folder::{SECRET_MODE, SiteFolder, write_atomic};

use redact::Redactor;

/// Largest part kept; a bigger one is cut there (and README.txt says so).
pub const PART_CAP: usize = 8 * 1024 * 1024;

/// The admin API answers gathered into `status/`: (archive name, path).
const STATUS_PARTS: [(&str, &str); 6] = [
    ("status/site.json", "/v1/site"),
    ("status/links.json", "/v1/links"),
    ("status/listeners.json", "/v1/listeners"),
    ("status/connectors.json", "/v1/connectors"),
    ("status/network.json", "/v1/network"),
    ("status/flows.json", "/v1/flows"),
];

/// The archive being gathered: its entries, and what README.txt must say about them.
#[derive(Default)]
struct Dump {
    entries: Vec<(String, Vec<u8>)>,
    /// Parts that are not there, each with why.
    missing: Vec<String>,
    /// Parts cut at [`PART_CAP`].
    cut: Vec<String>,
    /// Other facts for the README (log lines dropped by the site, ...).
    notes: Vec<String>,
}

impl Dump {
    fn add(&mut self, name: &str, mut bytes: Vec<u8>) {
        if bytes.len() > PART_CAP {
            self.cut.push(format!(
                "{name}: {} bytes, cut to the first {PART_CAP}",
                bytes.len()
            ));
            bytes.truncate(PART_CAP);
        }
        self.entries.push((name.to_string(), bytes));
    }

    fn add_json(&mut self, name: &str, v: &Value) {
        let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
        text.push('\n');
        self.add(name, text.into_bytes());
    }
}

/// Gathers the dump of the site in `folder` and writes it to `file` (`-`: standard output).
pub async fn dump(folder: &SiteFolder, file: &str) -> Result<ExitCode, SiteError> {
    if !folder.site_file().exists() {
        // No site here at all (a wrong --dir): say so instead of an archive of nothing.
        skiff_site_controller::site::load_site(folder)?;
    }
    // Nothing behind a symbolic link, no special file and no huge file is read for a dump: a
    // link `listeners/x.yaml -> /etc/shadow` would put a line of it into an error, one to
    // /dev/zero would read until memory runs out.
    let site_refusals = refused_files(&[folder.site_file()], &[]);
    if let Some(why) = site_refusals.first() {
        return Err(SiteError::InvalidArgument(format!(
            "no debug dump made: {why}; site.yaml must be a regular file of at most {MAX_FILE} bytes (replace the link by the file itself)"
        )));
    }
    let mut d = Dump::default();
    let redactor = Redactor::from_folder(
        folder,
        refused_files(&[folder.link_key_file()], &[folder.links_dir()]).is_empty(),
        refused_files(&[], &[folder.grants_dir()]).is_empty(),
    );
    let live = gather_status(folder, &mut d).await;
    gather_config(folder, &mut d);
    for (name, bytes) in &mut d.entries {
        redactor.scrub(name, bytes);
    }
    let mut readme = readme(folder, live, &d).into_bytes();
    redactor.scrub("README.txt", &mut readme);
    d.entries.insert(0, ("README.txt".into(), readme));
    let archive = archive(&d.entries)
        .map_err(|e| SiteError::io("build", std::path::Path::new("the archive"), e))?;
    let size = human_size(archive.len());
    if file == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(&archive)
            .and_then(|()| out.flush())
            .map_err(|e| SiteError::io("write", std::path::Path::new("standard output"), e))?;
        eprintln!(
            "debug dump written to standard output: {size}, {} entries",
            d.entries.len()
        );
    } else {
        write_atomic(std::path::Path::new(file), &archive, SECRET_MODE)?;
        println!(
            "debug dump written to {file}: {size}, {} entries{}",
            d.entries.len(),
            match live {
                Live::Answered => "",
                Live::NotRunning => " (the site is not running: configuration only)",
                Live::Unanswered =>
                    " (the running site's admin socket did not answer: configuration only; see README.txt)",
            }
        );
        println!(
            "list it with: tar tzf {file}; it holds no private key, grant code or proxy password"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(n: usize) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Whether the site's admin API gave the status parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Live {
    /// It answered.
    Answered,
    /// No `site run` holds the folder.
    NotRunning,
    /// A `site run` holds the folder but its socket did not answer.
    Unanswered,
}

/// The admin API's answers, and whether there were any.
async fn gather_status(folder: &SiteFolder, d: &mut Dump) -> Live {
    let socket = folder.admin_socket();
    let not_running = |d: &mut Dump, e: &SiteError| {
        // A `site run` holds the folder's lock, yet its socket did not answer: not "stopped".
        let locked = folder.is_locked();
        let why = if locked {
            format!(
                "a `skiff site run` holds this folder's lock, but its admin socket {} did not answer (not permitted to this user? a wedged site?); run the dump as the site's user or root, and if it still does not answer, the site is stuck: note it in the report",
                socket.display()
            )
        } else {
            skiff_site_controller::error_chain(e)
        };
        d.missing.push(format!(
            "status/ and logs.txt: not gathered: {why}, so there is no live status or log"
        ));
        if locked {
            Live::Unanswered
        } else {
            Live::NotRunning
        }
    };
    for (i, (name, path)) in STATUS_PARTS.iter().enumerate() {
        match admin_request(&socket, Method::GET, path).await {
            Ok(v) => d.add_json(name, &v),
            Err(e @ SiteError::NotRunning { .. }) if i == 0 => return not_running(d, &e),
            Err(e) => d.missing.push(format!(
                "{name}: GET {path} failed: {}",
                skiff_site_controller::error_chain(&e)
            )),
        }
    }
    match admin_request(&socket, Method::GET, "/metrics").await {
        Ok(Value::String(text)) => d.add("status/metrics.txt", text.into_bytes()),
        Ok(other) => d.add("status/metrics.txt", other.to_string().into_bytes()),
        Err(e) => d.missing.push(format!(
            "status/metrics.txt: GET /metrics failed: {}",
            skiff_site_controller::error_chain(&e)
        )),
    }
    // 503 is an answer too: the reasons the site is not ready.
    let ready = match admin_request(&socket, Method::GET, "/readyz").await {
        Ok(v) => format!("200 {}\n", plain_text(&v)),
        Err(SiteError::Admin { status, message }) => format!("{status} {message}\n"),
        Err(e) => format!("no answer: {}\n", skiff_site_controller::error_chain(&e)),
    };
    d.add("status/readyz.txt", ready.into_bytes());
    match admin_request(&socket, Method::GET, "/v1/logs").await {
        Ok(v) => {
            let mut text: String = v["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    let mut line = plain_text(l);
                    if !line.ends_with('\n') {
                        line.push('\n');
                    }
                    line
                })
                .collect();
            if text.is_empty() {
                text = "(the site has logged nothing it still holds)\n".into();
            }
            if let Some(n) = v["dropped"].as_u64().filter(|n| *n > 0) {
                d.notes.push(format!(
                    "logs.txt: the site's log buffer holds its last lines only; {n} older lines were dropped before this dump"
                ));
            }
            d.add("logs.txt", text.into_bytes());
        }
        Err(SiteError::Admin { status: 404, .. }) => d.missing.push(
            "logs.txt: the running site answered 404 for GET /v1/logs: it was started by a skiff without the log buffer; see its service log (journalctl -u skiff, or the terminal it runs in)".into(),
        ),
        Err(e) => d.missing.push(format!(
            "logs.txt: GET /v1/logs failed: {}",
            skiff_site_controller::error_chain(&e)
        )),
    }
    Live::Answered
}

/// `config/`: the resources `skiff get` prints (links without keys), proxy passwords and
/// grant codes replaced, and the names (not contents) of the folder's files.
fn gather_config(folder: &SiteFolder, d: &mut Dump) {
    let kinds = [
        ("config/site.yaml", GetKind::Site),
        ("config/listeners.yaml", GetKind::Listeners),
        ("config/connectors.yaml", GetKind::Connectors),
        ("config/links.yaml", GetKind::Links),
    ];
    for (name, kind) in kinds {
        let refused = match kind {
            GetKind::Listeners => refused_files(&[], &[folder.listeners_dir()]),
            GetKind::Connectors => refused_files(&[], &[folder.connectors_dir()]),
            GetKind::Links => refused_files(&[folder.link_key_file()], &[folder.links_dir()]),
            _ => Vec::new(),
        };
        if !refused.is_empty() {
            d.missing
                .push(format!("{name}: not read: {}", refused.join("; ")));
            continue;
        }
        match get(folder, kind, None) {
            Ok(mut resources) => {
                for r in &mut resources {
                    if let Stored::Link(l) = r {
                        // `get` already leaves the key out; a proxy's password goes too.
                        l.spec.client_key = None;
                        l.spec.proxy = l.spec.proxy.as_deref().map(redact::proxy_url);
                    }
                }
                let text = if resources.is_empty() {
                    "# none\n".to_string()
                } else {
                    to_yaml_stream(&resources)
                };
                d.add(name, text.into_bytes());
            }
            Err(e) => d
                .missing
                .push(format!("{name}: could not be read: {}", dump_error(&e))),
        }
    }
    let grants_refused = refused_files(&[], &[folder.grants_dir()]);
    let peers_refused = refused_files(&[], &[folder.peers_dir()]);
    // The refusal is checked before any read (a match guard would come after the read).
    let grants = if grants_refused.is_empty() {
        Some(skiff_site_controller::site::list_grants(folder))
    } else {
        d.missing.push(format!(
            "config/grants.yaml: not read: {}",
            grants_refused.join("; ")
        ));
        None
    };
    match grants {
        None => {}
        Some(Ok(grants)) => {
            let docs: Vec<String> = grants
                .into_iter()
                .map(|mut g| {
                    g.spec.code = "<redacted>".into();
                    g.to_yaml()
                })
                .collect();
            let text = if docs.is_empty() {
                "# none\n".to_string()
            } else {
                docs.join("---\n")
            };
            d.add("config/grants.yaml", text.into_bytes());
        }
        Some(Err(e)) => d.missing.push(format!(
            "config/grants.yaml: could not be read: {}",
            dump_error(&e)
        )),
    }
    let peers = if peers_refused.is_empty() {
        Some(skiff_site_controller::site::list_linked_sites(folder))
    } else {
        d.missing.push(format!(
            "config/linked-sites.yaml: not read: {}",
            peers_refused.join("; ")
        ));
        None
    };
    match peers {
        None => {}
        Some(Ok(peers)) => {
            let docs: Vec<String> = peers
                .iter()
                .map(skiff_site_controller::resources::to_yaml)
                .collect();
            let text = if docs.is_empty() {
                "# none\n".to_string()
            } else {
                docs.join("---\n")
            };
            d.add("config/linked-sites.yaml", text.into_bytes());
        }
        Some(Err(e)) => d.missing.push(format!(
            "config/linked-sites.yaml: could not be read: {}",
            dump_error(&e)
        )),
    }
    d.add(
        "config/files.txt",
        redact::file_listing(folder).into_bytes(),
    );
}

fn readme(folder: &SiteFolder, live: Live, d: &Dump) -> String {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let site = skiff_site_controller::site::load_site(folder)
        .map(|s| format!("{} (id {})", s.name(), s.site.spec.id))
        .unwrap_or_else(|e| format!("unreadable: {}", dump_error(&e)));
    let mut t = format!(
        "skiff debug dump\n\
         ================\n\n\
         What: the status, configuration and recent log lines of one skiff site, gathered by\n\
         `skiff debug dump` for a bug report.\n\
         When: {now}\n\
         skiff version: {} (link protocol {})\n\
         Site: {site}\n\
         Folder: {}\n\
         Running: {}\n\n",
        env!("CARGO_PKG_VERSION"),
        skiff_router::wire::PROTOCOL_VERSION,
        folder.root().display(),
        match live {
            Live::Answered => "yes (status/ holds the answers of its admin API at the time above)",
            Live::NotRunning =>
                "no (the site was not running: configuration only, no live status or logs)",
            Live::Unanswered =>
                "seemingly (a `skiff site run` holds the folder's lock) but its admin API did not answer: configuration only",
        },
    );
    if let Some(ns) = folder.kubernetes_namespace() {
        t.push_str(&format!(
            "Kubernetes: run with --kubernetes in namespace {ns}\n\n"
        ));
    }
    t.push_str("Contents\n--------\n");
    t.push_str("README.txt                 this file\n");
    for (name, bytes) in &d.entries {
        t.push_str(&format!("{name:<26} {} bytes\n", bytes.len()));
    }
    t.push_str(
        "\nLeft out on purpose\n-------------------\n\
         Private keys (ca.key, link.key, router.pem, links/*.key), grant codes (config/grants.yaml\n\
         says <redacted>), tokens, and proxy passwords (a link's proxy shows as\n\
         http://user:<redacted>@host:port). Link certificates and CA certificates are public and\n\
         stay. config/ is built from the site's resources, never copied from its folder.\n",
    );
    if !d.missing.is_empty() {
        t.push_str("\nMissing parts\n-------------\n");
        for m in &d.missing {
            t.push_str(&format!("- {m}\n"));
        }
    }
    if !d.cut.is_empty() || !d.notes.is_empty() {
        t.push_str("\nCut or incomplete\n-----------------\n");
        for m in d.cut.iter().chain(&d.notes) {
            t.push_str(&format!("- {m}\n"));
        }
    }
    t
}

/// Largest file a dump reads from the site folder (resource files are a few hundred bytes).
const MAX_FILE: u64 = 1024 * 1024;

/// Why the dump will not read these files, or the files of these folders (one line each,
/// naming the file): a symbolic link, anything but a regular file, or a file over
/// [`MAX_FILE`]. A file or folder that does not exist is not refused.
fn refused_files(files: &[std::path::PathBuf], dirs: &[std::path::PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |path: &std::path::Path, want_dir: bool| match std::fs::symlink_metadata(path) {
        Err(_) => {}
        Ok(m) if m.file_type().is_symlink() => out.push(format!(
            "{} is a symbolic link, which a dump does not follow",
            path.display()
        )),
        Ok(m) if want_dir && m.is_dir() => {}
        Ok(m) if !want_dir && !m.is_file() => {
            out.push(format!("{} is not a regular file", path.display()))
        }
        Ok(m) if !want_dir && m.len() > MAX_FILE => out.push(format!(
            "{} holds {} bytes, more than the {MAX_FILE} a dump reads",
            path.display(),
            m.len()
        )),
        Ok(_) => {}
    };
    for f in files {
        check(f, false);
    }
    for dir in dirs {
        check(dir, true);
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten().take(10_000) {
                let p = e.path();
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                check(&p, false);
            }
        }
    }
    out
}

/// An error as a dump may word it: the file, the line and the kind of error, never the
/// text of the file or a value from it (a parse error quotes the line it failed on, which
/// may hold a password or a key).
fn dump_error(e: &SiteError) -> String {
    const SEE: &str = "the error is not quoted in a dump (it may quote the file); run `skiff get` on the site's machine to see it";
    match e {
        SiteError::BadResource { path, reason } => {
            let at = line_and_column(reason);
            format!("{} is not a valid resource{at}: {SEE}", path.display())
        }
        SiteError::Io {
            action,
            path,
            source,
        } => format!("could not {action} {}: {}", path.display(), source.kind()),
        SiteError::NoSite { .. } | SiteError::NotRunning { .. } => e.to_string(),
        _ => format!("could not be read: {SEE}"),
    }
}

/// ` (line N, column M)` from a parser's message, if it names them.
fn line_and_column(reason: &str) -> String {
    let number_after = |word: &str| {
        let i = reason.find(word)? + word.len();
        let digits: String = reason[i..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok()
    };
    match (number_after("line "), number_after("column ")) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

/// A string as it is; anything else as JSON text.
fn plain_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim_end().to_string(),
        other => other.to_string(),
    }
}

/// The entries as a gzip-compressed tar, in memory (each is at most [`PART_CAP`]).
fn archive(entries: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes.as_slice())?;
    }
    tar.into_inner()?.finish()
}
