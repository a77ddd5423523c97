//! `lameduck gate`: the in-pod drain gate.
//!
//! A streaming-aware reverse proxy in front of an inference engine that owns readiness,
//! liveness and the drain: unready at once, serve while load balancers converge (telling
//! clients to go elsewhere), finish in-flight work within the budget, end unfinishable streams
//! with a machine-readable terminal event, then stop the engine and exit.
//!
//! The decisions are made by [`lameduck_timeline::DrainMachine`]; this crate drives it with
//! real time and real sockets.
//!
//! - [`config`]: flags and their checks.
//! - [`state`]: the machine behind a mutex, and the driver task that performs its actions.
//! - [`proxy`] and [`body`]: the request path.
//! - [`server`]: listeners and the admin endpoints.
//! - [`supervisor`]: the child process, health checks, signals, the marker file.

pub mod body;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod quiet;
pub mod server;
pub mod state;
pub mod supervisor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use config::{Config, GateArgs};
use tokio::net::TcpListener;

/// Why the gate could not run. Each message names the flag or input to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag is wrong.
    #[error("{0}")]
    Config(String),
    /// A listener could not be opened.
    #[error("cannot listen on {addr} ({flag}): {source}; pass a free address with {flag}")]
    Bind {
        /// The flag that set the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine command could not be started.
    #[error("cannot start the engine command `{command}`: {source}; check the command after `--`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds the listeners from the configuration and runs the gate until it exits; returns the
/// process exit status.
pub async fn run(args: GateArgs) -> Result<i32, Error> {
    let config = args.resolve()?;
    let bind = |flag, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { flag, addr, source })
    };
    let proxy = bind("--listen", config.listen).await?;
    let admin = bind("--admin", config.admin).await?;
    run_with(config, proxy, admin).await
}

/// Runs the gate on listeners already bound.
pub async fn run_with(
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
) -> Result<i32, Error> {
    let wrapper = !config.command.is_empty();
    let shared = state::Shared::new(config);
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        proxy = %local(&proxy_listener),
        admin = %local(&admin_listener),
        upstream = %format!("{}://{}", shared.config.upstream.scheme, shared.config.upstream.authority),
        mode = if wrapper { "wrapper" } else { "sidecar" },
        grace_period_s = shared.config.drain.grace.as_secs_f64(),
        kill_margin_s = shared.config.drain.margin.as_secs_f64(),
        budget_s = shared.config.drain.budget(std::time::Duration::ZERO).available().as_secs_f64(),
        "Listening"
    );
    let signals = supervisor::Signals::install()?;
    tokio::spawn(supervisor::signal_loop(shared.clone(), signals));
    supervisor::spawn_child(&shared)?;
    let proxy = Arc::new(proxy::Proxy::new(shared.clone()));
    tokio::spawn(server::serve_proxy(proxy_listener, proxy));
    tokio::spawn(server::serve_admin(admin_listener, shared.clone()));
    tokio::spawn(supervisor::health_loop(shared.clone()));
    tokio::spawn(supervisor::marker_loop(shared.clone()));
    tokio::spawn(state::drive(shared.clone()));

    shared.exit.cancelled().await;

    let child_status = shared.child_status.load(Ordering::SeqCst);
    let code = if !wrapper {
        0
    } else if !shared.child_signalled.load(Ordering::SeqCst) {
        // The engine died on its own: never report success.
        if child_status == 0 { 1 } else { child_status }
    } else if child_status == state::NO_STATUS {
        1
    } else {
        child_status
    };
    let mut line = serde_json::Map::new();
    line.insert("msg".into(), "drain report".into());
    line.insert("exit_code".into(), code.into());
    line.insert(
        "child_status".into(),
        if !wrapper || child_status == state::NO_STATUS {
            serde_json::Value::Null
        } else {
            child_status.into()
        },
    );
    if let serde_json::Value::Object(r) = shared.report_json() {
        line.extend(r);
    }
    // The one machine-readable line a drain leaves behind, whatever the log format. Not
    // `eprintln!`: it panics when stderr is gone, and the exit status matters more.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{}", serde_json::Value::Object(line));
    }
    Ok(code)
}
