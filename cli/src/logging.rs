//! The log of the `skiff` binary: `--log-format text|json` (env `SKIFF_LOG_FORMAT`) and
//! `--log-level LEVEL_OR_FILTER` (env `SKIFF_LOG`), checked before anything runs, and the
//! last word of a failed command (`error:` and `hint:`) in the same format.

use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

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
        value_name = "FORMAT"
    )]
    log_format: Option<LogFormat>,
    /// What to log: error, warn, info, debug, trace, or a filter such as
    /// `info,skiff_router=debug` [default: info for `site run`, warn for other verbs].
    #[arg(
        long,
        global = true,
        env = "SKIFF_LOG",
        value_name = "LEVEL_OR_FILTER",
        value_parser = parse_filter
    )]
    log_level: Option<String>,
}

/// Checks a level or filter; the message says what is accepted. Stricter than
/// `EnvFilter`, which takes a misspelt level for a module name (`nonsense`, `nonsense=`): each
/// comma-separated part is a level or `TARGET=LEVEL`.
fn parse_filter(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let help = "give error, warn, info, debug or trace, or a filter such as \
                info,skiff_router=debug (--log-level, or env SKIFF_LOG)";
    if text.trim().is_empty() {
        return Err(format!("no level given; {help}"));
    }
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let level = match part.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("{part:?} names no target before '='; {help}")),
            None => part,
        };
        if !is_level(level) {
            return Err(format!("{level:?} in {part:?} is not a level; {help}"));
        }
    }
    match EnvFilter::builder().parse(text) {
        Ok(_) => Ok(text.to_string()),
        Err(e) => Err(format!("{e}; {help}")),
    }
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Starts logging to stderr: the level given (flag, else `SKIFF_LOG`), else `info` for a
/// long-running verb and `warn` for the others.
pub fn init(args: &LogArgs, long_running: bool) {
    let default = if long_running { "info" } else { "warn" };
    let level = args.log_level.as_deref().unwrap_or(default);
    // Checked by the parser already; a filter that fails here falls back to the default.
    let filter = EnvFilter::builder()
        .parse(level)
        .unwrap_or_else(|_| EnvFilter::new(default));
    let format = args.log_format.unwrap_or_default();
    let _ = FORMAT.set(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    tracing::debug!(filter = level, format = ?format, "logging");
}

/// Prints the failure of a command on stderr: `error: …` and `hint: …` lines, or with
/// `--log-format json` one JSON object (level ERROR, `fields.message`, `fields.hint`).
/// Never filtered out by the log level.
pub fn report_error(message: &str, hint: Option<&str>) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut fields = serde_json::json!({ "message": format!("error: {message}") });
        if let Some(h) = hint {
            fields["hint"] = h.into();
        }
        let line = serde_json::json!({
            "timestamp": now,
            "level": "ERROR",
            "fields": fields,
            "target": "skiff",
        });
        eprintln!("{line}");
    } else {
        eprintln!("error: {message}");
        if let Some(h) = hint {
            eprintln!("hint: {h}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn levels_and_filters_pass_and_misspellings_are_refused() {
        for good in [
            "info",
            "WARN",
            "debug",
            "off",
            "info,skiff_router=debug",
            "skiff=trace",
        ] {
            assert_eq!(parse_filter(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            "",
            "nonsense",
            "nonsense=",
            "info,x=loud",
            "=debug",
            "infoo",
        ] {
            let err = parse_filter(bad).unwrap_err();
            assert!(err.contains("give error, warn, info"), "{bad}: {err}");
        }
    }
}
