//! `skiff apply -f`, `skiff delete -f` and `skiff get`: files and standard input read here,
//! `skiff_site_controller::apply` does the checking and writing; a running site is reloaded
//! and what it cannot use is reported.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use skiff_site_controller::SiteError;
use skiff_site_controller::apply::{
    self, ApplyError, Change, GetKind, Input, Kind, Problem, Purpose,
};
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::token::reload_if_running;

use crate::output;

/// Most bytes read from standard input (as from each file).
const STDIN_LIMIT: u64 = apply::INPUT_LIMIT;

/// `skiff apply`.
#[derive(Args)]
pub struct ApplyArgs {
    /// A YAML file, a folder (its .yaml and .yml files, not sub-folders), or - for standard
    /// input; repeat for several.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    files: Vec<String>,
    #[command(flatten)]
    dir: crate::DirArg,
}

/// `skiff delete`.
#[derive(Args)]
pub struct DeleteArgs {
    /// A YAML file, a folder, or - for standard input; repeat for several. The listeners,
    /// connectors and links it names (kind and name) are deleted.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    files: Vec<String>,
    /// A resource that is not there is not an error.
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    dir: crate::DirArg,
}

/// `skiff get`.
#[derive(Args)]
pub struct GetArgs {
    /// What to show.
    what: GetWhat,
    /// Only the one of this name.
    name: Option<String>,
    /// yaml (what apply -f takes back) or json.
    #[arg(short = 'o', long, default_value = "yaml")]
    output: GetFormat,
    #[command(flatten)]
    dir: crate::DirArg,
}

/// The resources `get` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetWhat {
    /// Listeners.
    #[value(alias = "listener")]
    Listeners,
    /// Connectors.
    #[value(alias = "connector")]
    Connectors,
    /// Outbound links (without private keys).
    #[value(alias = "link")]
    Links,
    /// This site's Site resource (with its id).
    Site,
}

/// `get -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetFormat {
    /// Multi-document YAML.
    Yaml,
    /// JSON: one object for a NAME or the site, else an array.
    Json,
}

/// Reads every `-f` value: files, folders, and standard input (`-`, once).
fn read_inputs(files: &[String]) -> Result<Vec<Input>, SiteError> {
    let mut inputs = Vec::new();
    let mut stdin_read = false;
    for f in files {
        if f == "-" {
            if stdin_read {
                return Err(SiteError::InvalidArgument(
                    "-f - is given twice: standard input can be read once".into(),
                ));
            }
            stdin_read = true;
            let mut text = String::new();
            let stdin = Path::new("standard input");
            std::io::stdin()
                .take(STDIN_LIMIT + 1)
                .read_to_string(&mut text)
                .map_err(|e| SiteError::io("read", stdin, e))?;
            if text.len() as u64 > STDIN_LIMIT {
                return Err(SiteError::InvalidArgument(format!(
                    "standard input holds more than {} MiB of YAML: split it into files",
                    STDIN_LIMIT / (1024 * 1024)
                )));
            }
            inputs.push(Input {
                origin: "-".into(),
                text,
            });
        } else {
            inputs.extend(apply::read_path(Path::new(f))?);
        }
    }
    Ok(inputs)
}

/// Prints every problem; nothing was changed.
fn report(problems: &[Problem], verb: &str) -> ExitCode {
    let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let hint = format!(
        "nothing was {verb} ({} problem(s)): fix the file(s) and run the command again",
        problems.len()
    );
    crate::logging::report_errors(&lines, Some(&hint));
    ExitCode::FAILURE
}

/// `skiff apply -f FILE|DIR|-`.
pub async fn apply(args: ApplyArgs) -> Result<ExitCode, SiteError> {
    let folder = args.dir.folder();
    let inputs = read_inputs(&args.files)?;
    let docs = match apply::parse(&inputs, Purpose::Apply) {
        Ok(d) => d,
        Err(problems) => return Ok(report(&problems, "applied")),
    };
    let outcomes = match apply::apply(&folder, &docs, |o| println!("{o}")) {
        Ok(o) => o,
        Err(ApplyError::Invalid(problems)) => return Ok(report(&problems, "applied")),
        Err(ApplyError::Site(e)) => return Err(e),
    };
    let changed = outcomes.iter().any(|o| o.change != Change::Unchanged);
    let running = if changed {
        reload_if_running(&folder).await?
    } else {
        folder.is_locked()
    };
    if !running {
        if changed {
            eprintln!("the site is not running: it applies this when started with: skiff site run");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(site) = outcomes
        .iter()
        .find(|o| o.kind == Kind::Site && o.change == Change::Configured)
    {
        eprintln!(
            "site/{}: the running site takes its new settings at its next start (skiff site run); a reload does not rebind link access",
            site.name
        );
    }
    Ok(unusable(&folder, &outcomes).await)
}

/// Reports each listener or connector the running site cannot use; failure if there is one.
async fn unusable(folder: &SiteFolder, outcomes: &[apply::Outcome]) -> ExitCode {
    let mut failed = Vec::new();
    for o in outcomes {
        let kind = match o.kind {
            Kind::Listener => output::Service::Listener,
            Kind::Connector => output::Service::Connector,
            Kind::Site | Kind::Link => continue,
        };
        if let Some(reason) = output::service_error(kind, folder, &o.name).await {
            failed.push(format!(
                "{}/{} is saved but the running site cannot use it: {reason}",
                o.kind, o.name
            ));
        }
    }
    if !failed.is_empty() {
        crate::logging::report_errors(
            &failed,
            Some(
                "fix it in the file and apply it again (see: skiff listener list, skiff connector list)",
            ),
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `skiff delete -f FILE|DIR|-`.
pub async fn delete(args: DeleteArgs) -> Result<ExitCode, SiteError> {
    let folder = args.dir.folder();
    let inputs = read_inputs(&args.files)?;
    let docs = match apply::parse(&inputs, Purpose::Delete) {
        Ok(d) => d,
        Err(problems) => return Ok(report(&problems, "deleted")),
    };
    let ignore = args.ignore_not_found;
    let deleted = match apply::delete(&folder, &docs, |d| {
        if d.found {
            println!("{d}");
            if let Some(key) = &d.key_deleted {
                eprintln!(
                    "note: {}/{} was an offline link: its private key ({}) was deleted with it, so it cannot be applied again (skiff get never shows that key); to link again, ask the other site for a new link file (skiff link generate there)",
                    d.kind,
                    d.name,
                    key.display()
                );
            }
        }
    }) {
        Ok(d) => d,
        Err(ApplyError::Invalid(problems)) => return Ok(report(&problems, "deleted")),
        Err(ApplyError::Site(e)) => return Err(e),
    };
    if deleted.iter().any(|d| d.found) {
        reload_if_running(&folder).await?;
    }
    let missing: Vec<String> = deleted
        .iter()
        .filter(|d| !d.found)
        .map(|d| d.to_string())
        .collect();
    if !ignore && !missing.is_empty() {
        crate::logging::report_errors(
            &missing,
            Some("pass --ignore-not-found when a missing one is fine"),
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `skiff get listeners|connectors|links|site [NAME] [-o yaml|json]`.
pub async fn get(args: GetArgs) -> Result<ExitCode, SiteError> {
    let folder = args.dir.folder();
    let kind = match args.what {
        GetWhat::Listeners => GetKind::Listeners,
        GetWhat::Connectors => GetKind::Connectors,
        GetWhat::Links => GetKind::Links,
        GetWhat::Site => GetKind::Site,
    };
    let found = apply::get(&folder, kind, args.name.as_deref())?;
    // Printed on purpose (apply -f takes the output back as it is): say so.
    for r in &found {
        if let apply::Stored::Link(l) = r
            && l.proxy_has_credentials()
        {
            eprintln!(
                "warning: link/{} carries its proxy's password (spec.proxy): keep this output private (e.g. umask 077 before writing it to a file)",
                l.metadata.name
            );
        }
    }
    match args.output {
        GetFormat::Yaml => {
            if found.is_empty() {
                eprintln!(
                    "no {} in the site in {}",
                    args.what
                        .to_possible_value()
                        .map(|v| v.get_name().to_string())
                        .unwrap_or_default(),
                    folder.root().display()
                );
            }
            print!("{}", apply::to_yaml_stream(&found));
        }
        GetFormat::Json => {
            // One object for a NAME, and for the site (there is one); else an array.
            let single = args.name.is_some() || args.what == GetWhat::Site;
            let value = match found.as_slice() {
                [one] if single => serde_json::to_value(one),
                _ => serde_json::to_value(&found),
            }
            .map_err(|e| SiteError::InvalidArgument(format!("could not write JSON: {e}")))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
