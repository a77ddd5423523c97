//! `lameduck engine-sim`: an OpenAI-compatible streaming inference simulator with realistic
//! timing and configurable shutdown behaviour, for tests, rehearsals and demos.
//!
//! # Endpoints
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions`: reads `model` (echoed), `stream`,
//!   `max_tokens` / `max_completion_tokens` (cap the output; `finish_reason` becomes `length`)
//!   and `stream_options.include_usage`. Streams answer `text/event-stream` at once; after
//!   `--ttft` comes the first token (chat: preceded by the role chunk), then one token per event
//!   every `1/--tokens-per-second`, scheduled on absolute instants; then an empty-delta chunk with
//!   `finish_reason`, the usage chunk if asked for, and `data: [DONE]`. Non-streamed requests
//!   answer when the last token would have been streamed. Content is deterministic filler words.
//!   Bad JSON or a missing `messages`/`prompt` get 400 and an OpenAI-style error; bodies over
//!   1 MiB get 413. A client that disconnects stops its generation.
//! - `GET /v1/models`: the `--model`.
//! - `GET /health`: 200, or 503 during `--cold-start` (completions answer 503 then too).
//! - `GET /metrics`: `lameduck_engine_sim_requests_total{endpoint,outcome}` (outcome: `ok`,
//!   `aborted`, `rejected`, `bad_request`, `client_abort`), `lameduck_engine_sim_in_flight`,
//!   `lameduck_engine_sim_tokens_total`, `lameduck_engine_sim_shutting_down`.
//!
//! The server speaks HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port.
//!
//! # Flags
//!
//! `--listen` (127.0.0.1:8001), `--model` (sim-llm), `--ttft` (200ms), `--tokens-per-second`
//! (50), `--output-tokens` (`256` | `uniform:MIN-MAX` | `normal:MEAN,STDDEV` |
//! `lognormal:MEDIAN,SIGMA`), `--cold-start` (0), `--seed`, `--time-scale` (1; every duration
//! is divided by it), `--on-sigterm` (abort), `--drain-timeout` (none). Each also reads
//! `LAMEDUCK_SIM_<FLAG>` from the environment. Durations are written `30`, `1.5`, `250ms`, `2m`.
//!
//! # Shutdown (`--on-sigterm`; SIGINT behaves like SIGTERM)
//!
//! - `abort` (vLLM's default, `--shutdown-timeout 0`): close the listener at once; every
//!   in-flight stream ends with a chunk whose `finish_reason` is `"abort"` (then usage if asked,
//!   then `[DONE]`, so it looks like success to a client); in-flight non-streamed requests get
//!   500; exit 0.
//! - `drain`: keep listening and keep `/health` at 200; new completions get 503
//!   `{"error":{"message":"server is shutting down","type":"server_shutdown","code":503}}`;
//!   in-flight requests finish normally, then exit 0. After `--drain-timeout` what is left is
//!   aborted as in `abort`.
//! - `exit`: exit 143 at once; connections drop.
//!
//! A second signal during `abort` or `drain` exits 143 at once.
//!
//! # Embedding
//!
//! [`run`] is the subcommand. Tests start the server in-process with [`bind`] (port 0 works),
//! read [`Server::local_addr`], take a [`ShutdownHandle`] from [`Server::shutdown_handle`] to
//! stand in for signals, and drive [`Server::serve`].

mod config;
mod metrics;
mod openai;
mod server;

pub use config::{Config, DEFAULT_TTFT, MAX_OUTPUT_TOKENS, OnSigterm, OutputTokens};
pub use server::{EXIT_SIGTERM, MAX_BODY_BYTES, Server, ShutdownHandle, bind};

use std::net::SocketAddr;

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {}", listen_advice(cause))]
    Listen {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    /// A flag value that parses but cannot be used.
    #[error("invalid --{flag} {value}: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("cannot install the {signal} handler: {cause}; run on a system with POSIX signals")]
    Signal {
        signal: &'static str,
        cause: std::io::Error,
    },
}

fn listen_advice(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::AddrInUse => {
            "address in use; pass a free port with --listen (port 0 picks one)".to_owned()
        }
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges); pass a higher port with --listen"
                .to_owned()
        }
        ErrorKind::AddrNotAvailable => {
            "no such address on this machine; pass e.g. 0.0.0.0:PORT or 127.0.0.1:PORT with --listen"
                .to_owned()
        }
        _ => format!("{e}; pass another address with --listen"),
    }
}

/// Binds, serves, handles SIGTERM/SIGINT as `--on-sigterm` says, and returns the process exit
/// status (0 after `abort`/`drain`, 143 after `exit` or a second signal). The caller should
/// exit the process with it.
pub async fn run(config: Config) -> Result<i32, Error> {
    // Handlers first: from the moment the port listens, a signal is never lost.
    let signals = Signals::install()?;
    let server = bind(config).await?;
    let handle = server.shutdown_handle();
    tokio::spawn(signals.forward(handle));
    server.serve().await
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Result<Self, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).map_err(|cause| Error::Signal {
            signal: "SIGTERM",
            cause,
        })?;
        let int = signal(SignalKind::interrupt()).map_err(|cause| Error::Signal {
            signal: "SIGINT",
            cause,
        })?;
        Ok(Self { term, int })
    }

    async fn forward(mut self, handle: ShutdownHandle) {
        loop {
            let name = tokio::select! {
                Some(()) = self.term.recv() => "SIGTERM",
                Some(()) = self.int.recv() => "SIGINT",
                else => break,
            };
            tracing::info!(signal = name, "signal received");
            handle.signal();
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Result<Self, Error> {
        Ok(Self)
    }

    async fn forward(self, handle: ShutdownHandle) {
        while tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!(signal = "ctrl-c", "signal received");
            handle.signal();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn listen_error_names_the_address_and_the_fix() {
        let first = bind(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        })
        .await
        .unwrap();
        let taken = first.local_addr();
        let e = bind(Config {
            listen: taken,
            ..Config::default()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains(&taken.to_string()), "{e}");
        assert!(e.contains("address in use"), "{e}");
        assert!(e.contains("--listen"), "{e}");
    }

    #[tokio::test]
    async fn bad_scale_is_refused() {
        for (ts, tps) in [(0.0, 50.0), (-1.0, 50.0), (f64::NAN, 50.0), (1.0, 0.0)] {
            let e = bind(Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                time_scale: ts,
                tokens_per_second: tps,
                ..Config::default()
            })
            .await
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("invalid --"), "{e}");
        }
    }
}
