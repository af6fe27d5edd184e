//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]).

/// `info`, except hickory-server's per-request lines (one per DNS query: a hot path).
pub const DEFAULT_FILTER: &str = "info,hickory_server=warn";

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
