//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]), as
//! text (ANSI colours only when stderr is a terminal) or as JSON lines ([`LogFormat`]).

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

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
