//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]), as
//! text (ANSI colours only when stderr is a terminal) or as JSON lines ([`LogFormat`]).

use tracing_subscriber::fmt::MakeWriter;

/// `info`, except hickory-server's per-request lines (one per DNS query: a hot path).
pub const DEFAULT_FILTER: &str = "info,hickory_server=warn";

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, the event's other
    /// fields, `spans`), as tracing-subscriber's `json` formatter writes it: for log
    /// collectors such as Fluent Bit or Loki.
    Json,
}

/// A subscriber writing to `writer` in `format`, with ANSI colours in text only if `ansi`.
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().with_ansi(false).finish()),
    }
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // try_init, unlike set_global_default, also forwards `log` records (rustls's)
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber(
        format,
        filter,
        std::io::stderr,
        ansi,
    ));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what is written.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat, ansi: bool) -> String {
        let buf = Buffer::default();
        let out = buf.clone();
        let sub = subscriber(
            format,
            tracing_subscriber::EnvFilter::new("info"),
            move || out.clone(),
            ansi,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(org = "org2", attempts = 3, "tunnel handshake failed");
        });
        let bytes = buf.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn json_lines_carry_level_message_and_fields() {
        let text = logged(LogFormat::Json, true);
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["message"], "tunnel handshake failed");
        assert_eq!(line["fields"]["org"], "org2");
        assert_eq!(line["fields"]["attempts"], 3);
        assert!(line["timestamp"].is_string());
        assert!(!text.contains('\x1b'), "no colour in JSON: {text:?}");
    }

    #[test]
    fn text_has_colour_only_when_asked() {
        let plain = logged(LogFormat::Text, false);
        assert!(plain.contains("tunnel handshake failed") && plain.contains("org=\"org2\""));
        assert!(!plain.contains('\x1b'), "{plain:?}");
        assert!(logged(LogFormat::Text, true).contains('\x1b'));
    }
}
