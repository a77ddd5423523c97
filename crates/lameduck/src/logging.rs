//! Logging set-up: `tracing` to stderr, text or JSON, filtered by `LAMEDUCK_LOG` (or
//! `RUST_LOG`), default `info` (see [`DEFAULT_FILTER`]).

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `info`, without kube-client's own line per failed request: it logs every one at ERROR, several
/// a second while an API server is down, where our callers log each operation's failure once,
/// with what to fix, and count the rest in metrics. `LAMEDUCK_LOG=debug` shows everything.
const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off";

/// Installs the global subscriber.
pub fn init(format: Format) {
    let filter = std::env::var("LAMEDUCK_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // With stderr gone (a closed pipe), tracing would report the failed write with
        // `eprintln!`, which panics and kills the task that logged — a signal handler, say.
        // Losing a log line is better than losing a SIGTERM.
        .log_internal_errors(false);
    match format {
        Format::Text => builder.init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
