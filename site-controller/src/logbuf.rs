//! The recent log lines of a running site (`GET /v1/logs`, `skiff debug dump`): a bounded
//! in-memory ring fed by a `tracing_subscriber` layer that formats each event as the stderr
//! log does (text without colours, or JSON lines).
//!
//! Bounded twice: at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes of text, whichever comes
//! first; the oldest lines go and are counted in `dropped`. A line longer than [`MAX_LINE`]
//! is cut (and says so). One ring per process: the tracing subscriber is per process too.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

/// Most lines kept.
pub const MAX_LINES: usize = 2_000;
/// Most bytes of text kept (the lines' own bytes).
pub const MAX_BYTES: usize = 1024 * 1024;
/// Longest line kept whole; longer ones are cut.
pub const MAX_LINE: usize = 8 * 1024;

/// A bounded ring of log lines, oldest first.
#[derive(Debug)]
pub struct LogRing {
    inner: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    lines: VecDeque<Box<str>>,
    bytes: usize,
    dropped: u64,
    max_lines: usize,
    max_bytes: usize,
}

/// What the ring holds now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// The lines, newest last.
    pub lines: Vec<String>,
    /// Lines pushed out since the site started (the ring was full).
    pub dropped: u64,
}

impl LogRing {
    /// An empty ring keeping at most `max_lines` lines and `max_bytes` bytes of text.
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogRing {
            inner: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
                dropped: 0,
                max_lines: max_lines.max(1),
                max_bytes: max_bytes.max(MAX_LINE + 64),
            }),
        }
    }

    /// Adds one line (without its newline), dropping the oldest ones past the bounds.
    pub fn push(&self, line: &str) {
        let line: Box<str> = if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{} [line cut: {} bytes]", &line[..end], line.len()).into()
        } else {
            line.into()
        };
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        r.bytes += line.len();
        r.lines.push_back(line);
        while r.lines.len() > r.max_lines || r.bytes > r.max_bytes {
            let Some(old) = r.lines.pop_front() else {
                break;
            };
            r.bytes -= old.len();
            r.dropped += 1;
        }
    }

    /// The lines held now and how many were dropped.
    pub fn snapshot(&self) -> Snapshot {
        let r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            lines: r.lines.iter().map(|l| l.to_string()).collect(),
            dropped: r.dropped,
        }
    }

    /// Bytes of text held now (the memory the ring holds, less the line pointers).
    pub fn held_bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// The ring of this process, which [`layer`] feeds and `GET /v1/logs` reads (empty when no
/// layer was installed, as in library tests).
pub fn site_log() -> &'static LogRing {
    static RING: OnceLock<LogRing> = OnceLock::new();
    RING.get_or_init(|| LogRing::new(MAX_LINES, MAX_BYTES))
}

/// The format of the lines kept, as the stderr log's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// Lines for people (no colours).
    Text,
    /// One JSON object per line.
    Json,
}

/// A layer writing every event it sees into [`site_log`]; put it beside the stderr layer,
/// under the same filter.
pub fn layer<S>(format: LineFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ring_layer(site_log(), format)
}

/// A layer writing every event into `ring`.
fn ring_layer<S>(ring: &'static LogRing, format: LineFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let base = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(RingWriter(ring));
    match format {
        LineFormat::Text => Box::new(base),
        LineFormat::Json => Box::new(base.json()),
    }
}

/// Hands the formatter one [`LineSink`] per event.
struct RingWriter(&'static LogRing);

impl<'a> MakeWriter<'a> for RingWriter {
    type Writer = LineSink;

    fn make_writer(&'a self) -> LineSink {
        LineSink {
            ring: self.0,
            buf: Vec::new(),
        }
    }
}

/// Collects one formatted event; it goes into the ring as one entry when dropped (a message
/// with newlines stays one entry, as it was one event).
struct LineSink {
    ring: &'static LogRing,
    buf: Vec<u8>,
}

impl Write for LineSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // The formatter writes one event at once; a runaway one is cut when pushed.
        let room = (2 * MAX_LINE).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let line = text.trim_end_matches(['\n', '\r']);
        if !line.is_empty() {
            self.ring.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn the_ring_keeps_the_newest_lines_and_counts_the_dropped() {
        let ring = LogRing::new(MAX_LINES, MAX_BYTES);
        for i in 0..MAX_LINES + 1_000 {
            ring.push(&format!("line {i}"));
        }
        let s = ring.snapshot();
        assert_eq!(s.lines.len(), MAX_LINES);
        assert_eq!(s.dropped, 1_000);
        assert_eq!(s.lines.first().unwrap(), "line 1000");
        assert_eq!(
            s.lines.last().unwrap(),
            &format!("line {}", MAX_LINES + 999)
        );
        assert!(ring.held_bytes() < MAX_LINES * 10, "{}", ring.held_bytes());
    }

    #[test]
    fn the_ring_stays_within_its_bytes_and_cuts_long_lines() {
        let ring = LogRing::new(MAX_LINES, MAX_BYTES);
        // 3 000 lines of 1 KiB: 3 MiB in, at most 1 MiB kept.
        let line = "x".repeat(1024);
        for _ in 0..3_000 {
            ring.push(&line);
        }
        let s = ring.snapshot();
        assert!(ring.held_bytes() <= MAX_BYTES, "{}", ring.held_bytes());
        assert_eq!(s.lines.len(), MAX_BYTES / 1024);
        assert_eq!(s.dropped, 3_000 - (MAX_BYTES / 1024) as u64);
        // One huge line is cut to MAX_LINE and says so, at a character boundary.
        let huge = "é".repeat(MAX_LINE);
        ring.push(&huge);
        let last = ring.snapshot().lines.pop().unwrap();
        assert!(last.len() < MAX_LINE + 64, "{}", last.len());
        assert!(
            last.ends_with(&format!("[line cut: {} bytes]", huge.len())),
            "{}",
            &last[last.len() - 40..]
        );
        assert!(ring.held_bytes() <= MAX_BYTES);
    }

    #[test]
    fn the_layer_writes_what_the_stderr_log_writes_without_colours() {
        static RING: OnceLock<LogRing> = OnceLock::new();
        let ring = RING.get_or_init(|| LogRing::new(10, MAX_BYTES));
        let text = tracing_subscriber::registry().with(ring_layer(ring, LineFormat::Text));
        tracing::subscriber::with_default(text, || {
            tracing::info!(listener = "db", port = 5432, "listener created");
            tracing::debug!("multi\nline");
        });
        let json = tracing_subscriber::registry().with(ring_layer(ring, LineFormat::Json));
        tracing::subscriber::with_default(json, || {
            tracing::warn!(key = "redis", "no route");
        });
        let s = ring.snapshot();
        assert_eq!(s.lines.len(), 3, "{:#?}", s.lines);
        assert!(
            s.lines[0].contains(" INFO ")
                && s.lines[0].ends_with("listener created listener=\"db\" port=5432"),
            "{}",
            s.lines[0]
        );
        assert!(!s.lines[0].contains('\u{1b}'), "colours: {}", s.lines[0]);
        assert!(s.lines[1].ends_with("multi\nline"), "{}", s.lines[1]);
        let v: serde_json::Value = serde_json::from_str(&s.lines[2]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["fields"]["message"], "no route");
        assert_eq!(v["fields"]["key"], "redis");
    }
}
