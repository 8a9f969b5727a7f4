//! The log of the `skiff` binary: `--log-format text|json` (env `SKIFF_LOG_FORMAT`) and
//! `--log-level LEVEL_OR_FILTER` (env `SKIFF_LOG`), checked before anything runs, and the
//! last word of a failed command (`error:` and `hint:`, a usage error too) in the same
//! format. A long-running verb (`site run`) also keeps its recent lines in memory for
//! `GET /v1/logs` and `skiff debug dump` (`skiff_site_controller::logbuf`).

use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use skiff_site_controller::logbuf;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields.message, spans).
    Json,
}

/// The log flags every verb takes.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(
        long,
        global = true,
        env = "SKIFF_LOG_FORMAT",
        value_enum,
        ignore_case = true,
        value_name = "FORMAT"
    )]
    log_format: Option<LogFormat>,
    /// What to log: error, warn, info, debug, trace (or 0-5), a target (`skiff_router`), or
    /// a filter such as `info,skiff_router=debug` [default: info for `site run`, warn for
    /// other verbs]. Also env SKIFF_LOG, where a bad value is warned about and the default
    /// used (the flag is refused).
    #[arg(
        long,
        global = true,
        value_name = "LEVEL_OR_FILTER",
        value_parser = parse_filter
    )]
    log_level: Option<String>,
}

/// The environment variable read when `--log-level` is not given.
const LOG_ENV: &str = "SKIFF_LOG";

/// Checks a level or filter and returns it with its parts trimmed (`info, x=debug` →
/// `info,x=debug`); the message says what is accepted. Stricter than `EnvFilter`, which
/// takes a misspelt level for a target (`infoo`, `warning`) or an empty one (`x=`): each
/// comma-separated part is a level (a name or 0-5), a target, or `TARGET=LEVEL`; a span
/// filter (`target[span]=level`) is left to `EnvFilter`.
fn parse_filter(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| {
        LEVELS.contains(&l.to_ascii_lowercase().as_str())
            || matches!(l, "0" | "1" | "2" | "3" | "4" | "5")
    };
    // A bare word within two edits of a level (`infoo`, `debg`), or a level with a short
    // ending (`warning`), is a misspelt level, not a target.
    let misspelt = |w: &str| {
        let w = w.to_ascii_lowercase();
        w.chars().all(|c| c.is_ascii_digit())
            || LEVELS.iter().any(|l| {
                edit_distance(&w, l) <= 2
                    || w.strip_prefix(l).is_some_and(|rest| {
                        rest.len() <= 3 && rest.chars().all(|c| c.is_ascii_alphabetic())
                    })
            })
    };
    let is_target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    let help = "give error, warn, info, debug or trace (or 0-5), a target such as skiff_router, \
                or a filter such as info,skiff_router=debug (--log-level, or env SKIFF_LOG)";
    let parts: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(format!("no level given; {help}"));
    }
    for part in &parts {
        if part.contains('[') {
            continue;
        }
        match part.rsplit_once('=') {
            Some(("", _)) => return Err(format!("{part:?} names no target before '='; {help}")),
            Some((target, level)) => {
                if !is_target(target.trim()) {
                    return Err(format!("{target:?} in {part:?} is not a target; {help}"));
                }
                if !is_level(level.trim()) {
                    return Err(format!("{level:?} in {part:?} is not a level; {help}"));
                }
            }
            None if is_level(part) => {}
            None if misspelt(part) || !is_target(part) => {
                return Err(format!("{part:?} is not a level; {help}"));
            }
            None => {}
        }
    }
    let joined = parts
        .iter()
        .map(|p| match p.rsplit_once('=') {
            Some((t, l)) if !p.contains('[') => format!("{}={}", t.trim(), l.trim()),
            _ => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    match EnvFilter::builder().parse(&joined) {
        Ok(_) => Ok(joined),
        Err(e) => Err(format!("{e}; {help}")),
    }
}

/// Whether a checked filter has a part that is a level alone (`info`, `3`), the level of
/// everything no other part names.
fn gives_a_level(filter: &str) -> bool {
    filter.split(',').map(str::trim).any(|p| {
        ["off", "error", "warn", "info", "debug", "trace"]
            .contains(&p.to_ascii_lowercase().as_str())
            || matches!(p, "0" | "1" | "2" | "3" | "4" | "5")
    })
}

/// Levenshtein distance of two short words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(ca != *cb));
            diag = up;
        }
    }
    row[b.len()]
}

/// The filter to use: the flag's (checked by the parser), else `SKIFF_LOG`'s if it is
/// valid, else `default`. A bad `SKIFF_LOG` is warned about on stderr, not fatal: a variable
/// set for the whole machine must not stop every verb.
fn chosen_filter(flag: Option<&str>, env: Option<String>, default: &str) -> String {
    if let Some(f) = flag {
        return f.to_string();
    }
    match env.filter(|e| !e.trim().is_empty()) {
        None => default.to_string(),
        Some(e) => match parse_filter(&e) {
            Ok(f) => f,
            Err(why) => {
                report_warning(&format!(
                    "env {LOG_ENV}={e:?} ignored, logging at {default}: {why}"
                ));
                default.to_string()
            }
        },
    }
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Starts logging to stderr: the level given (flag, else `SKIFF_LOG`), else `info` for a
/// long-running verb and `warn` for the others. A long-running verb also keeps the same
/// lines (same filter, same format, without colours) in the site's log ring.
pub fn init(args: &LogArgs, long_running: bool) {
    let default = if long_running { "info" } else { "warn" };
    let format = args.log_format.unwrap_or_default();
    let _ = FORMAT.set(format);
    let level = chosen_filter(
        args.log_level.as_deref(),
        std::env::var(LOG_ENV).ok(),
        default,
    );
    // A filter of targets only (`skiff_router`, `skiff_router=debug`) adds to the default
    // level; alone it would silence everything else.
    let level = if gives_a_level(&level) {
        level
    } else {
        format!("{default},{level}")
    };
    let level = level.as_str();
    // Checked already; a filter that fails here falls back to the default.
    let filter = EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match format {
        LogFormat::Text => {
            Box::new(stderr.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        }
        LogFormat::Json => Box::new(stderr.json().with_ansi(false)),
    };
    let ring = long_running.then(|| {
        logbuf::layer(match format {
            LogFormat::Text => logbuf::LineFormat::Text,
            LogFormat::Json => logbuf::LineFormat::Json,
        })
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(ring)
        .init();
    tracing::debug!(filter = level, format = ?format, "logging");
}

/// Prints the failure of a command on stderr: `error: …` and `hint: …` lines, or with
/// `--log-format json` one JSON object (level ERROR, `fields.message`, `fields.hint`).
/// Never filtered out by the log level. Usable from any verb after [`init`].
pub fn report_error(message: &str, hint: Option<&str>) {
    report_errors(&[message], hint);
}

/// Like [`report_error`] for several failures of one command (links not renewed, files not
/// applied): one `error:` line (or JSON object) each, then the `hint:` once (in JSON, in the
/// last object).
pub fn report_errors<S: AsRef<str>>(messages: &[S], hint: Option<&str>) {
    let json = FORMAT.get() == Some(&LogFormat::Json);
    for (i, m) in messages.iter().enumerate() {
        let last = i + 1 == messages.len();
        let hint = hint.filter(|_| last);
        let message = format!("error: {}", m.as_ref());
        if json {
            eprintln!("{}", json_line("ERROR", &message, hint));
        } else {
            eprintln!("{message}");
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
        }
    }
}

/// A warning before logging starts (or outside it), in the chosen format; never filtered.
fn report_warning(message: &str) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        eprintln!(
            "{}",
            json_line("WARN", &format!("warning: {message}"), None)
        );
    } else {
        eprintln!("warning: {message}");
    }
}

/// One log line as `--log-format json` writes it.
fn json_line(level: &str, message: &str, hint: Option<&str>) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut fields = serde_json::json!({ "message": message });
    if let Some(h) = hint {
        fields["hint"] = h.into();
    }
    serde_json::json!({
        "timestamp": now,
        "level": level,
        "fields": fields,
        "target": "skiff",
    })
}

/// Parses the command line; a usage error (unknown flag, bad value) exits 2 as clap does,
/// printed as one JSON object when JSON was asked for (`--log-format json` on the command
/// line, or `SKIFF_LOG_FORMAT=json`). `--help` and `--version` print as usual.
pub fn parse_args<P: clap::Parser>() -> P {
    let e = match P::try_parse() {
        Ok(p) => return p,
        Err(e) => e,
    };
    use clap::error::ErrorKind as K;
    let usage_error = !matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if usage_error && json_asked(std::env::args(), std::env::var("SKIFF_LOG_FORMAT").ok()) {
        let text = e.render().to_string();
        let text = text.trim().trim_start_matches("error: ");
        let (message, hint) = match text.split_once("\n\n") {
            Some((m, rest)) => (m.to_string(), Some(rest.replace('\n', " "))),
            None => (text.to_string(), None),
        };
        eprintln!(
            "{}",
            json_line("ERROR", &format!("error: {message}"), hint.as_deref())
        );
        std::process::exit(e.exit_code());
    }
    e.exit()
}

/// Whether the command line (`--log-format json`, `--log-format=json`) or else the
/// environment asks for JSON.
fn json_asked(args: impl Iterator<Item = String>, env: Option<String>) -> bool {
    let args: Vec<String> = args.collect();
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            break;
        }
        let value = match a.strip_prefix("--log-format") {
            Some("") => args.get(i + 1).map(String::as_str),
            Some(v) => v.strip_prefix('='),
            None => None,
        };
        if let Some(v) = value {
            return v.eq_ignore_ascii_case("json");
        }
    }
    env.is_some_and(|v| v.trim().eq_ignore_ascii_case("json"))
}

#[cfg(test)]
mod tests {
    use super::{chosen_filter, gives_a_level, json_asked, parse_filter};

    #[test]
    fn levels_and_filters_pass_and_misspellings_are_refused() {
        for good in [
            "info",
            "WARN",
            "debug",
            "off",
            "info,skiff_router=debug",
            "skiff=trace",
            "skiff_router",
            "skiff_router::link",
            "tracing",
            "h2",
            "0",
            "5",
            "skiff_router=3",
            "warn,skiff_router[link]=debug",
        ] {
            assert_eq!(parse_filter(good).as_deref(), Ok(good), "{good}");
        }
        // Spaces around the parts are trimmed before EnvFilter sees them.
        assert_eq!(
            parse_filter(" info, skiff_router = debug ").as_deref(),
            Ok("info,skiff_router=debug")
        );
        for bad in [
            "",
            " , ",
            "nonsense=",
            "info,x=loud",
            "=debug",
            "infoo",
            "warning",
            "debg",
            "6",
            "info skiff",
        ] {
            let err = parse_filter(bad).unwrap_err();
            assert!(err.contains("give error, warn, info"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_filter_of_targets_only_keeps_the_default_level_for_the_rest() {
        assert!(gives_a_level("info,skiff_router=debug"));
        assert!(gives_a_level("3"));
        assert!(!gives_a_level("skiff_router"));
        assert!(!gives_a_level("verbose"));
        assert!(!gives_a_level("skiff_router=debug,quinn=warn"));
    }

    #[test]
    fn a_bad_env_filter_falls_back_to_the_default_and_the_flag_wins() {
        assert_eq!(chosen_filter(None, Some("infoo".into()), "warn"), "warn");
        assert_eq!(chosen_filter(None, Some("debug".into()), "warn"), "debug");
        assert_eq!(chosen_filter(None, None, "info"), "info");
        assert_eq!(
            chosen_filter(Some("trace"), Some("debug".into()), "warn"),
            "trace"
        );
    }

    #[test]
    fn json_is_asked_by_the_flag_before_the_environment() {
        let args = |a: &[&str]| {
            a.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(json_asked(
            args(&["skiff", "--log-format", "json", "x"]),
            None
        ));
        assert!(json_asked(args(&["skiff", "x", "--log-format=JSON"]), None));
        assert!(!json_asked(
            args(&["skiff", "--log-format", "text"]),
            Some("json".into())
        ));
        assert!(json_asked(args(&["skiff", "--bogus"]), Some("json".into())));
        assert!(!json_asked(args(&["skiff", "--bogus"]), None));
    }
}
