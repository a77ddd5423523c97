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
pub mod cluster;
pub mod config;
pub mod conn;
pub mod driver;
pub mod handoff;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod quiet;
pub mod server;
pub mod state;
pub mod supervisor;
pub mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Config, GateArgs};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

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
    let config = Config::from_args(args)?;
    let bind = |flag, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { flag, addr, source })
    };
    let proxy = bind("--listen", config.listen).await?;
    let admin = bind("--admin", config.admin).await?;
    run_with(config, proxy, admin).await
}

/// The gate's exit status when one of its own tasks died (`EX_SOFTWARE`).
pub const EXIT_INTERNAL: i32 = 70;

/// The gate's long-lived tasks, owned: each must run until the gate exits, and the end of any
/// of them before that (a panic, most likely) ends the gate with [`EXIT_INTERNAL`].
struct Tasks {
    set: JoinSet<&'static str>,
    names: HashMap<tokio::task::Id, &'static str>,
    /// Test hook: `LAMEDUCK_GATE_FAULT=<task>` makes that task panic a second after it
    /// starts, so that tests can check what the death of an essential task does.
    fault: Option<String>,
}

impl Tasks {
    fn new() -> Self {
        Tasks {
            set: JoinSet::new(),
            names: HashMap::new(),
            fault: std::env::var("LAMEDUCK_GATE_FAULT").ok(),
        }
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let fault = self.fault.as_deref() == Some(name);
        let handle = self.set.spawn(async move {
            if fault {
                tokio::select! {
                    _ = task => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                        panic!("LAMEDUCK_GATE_FAULT: the {name} task panics as asked");
                    }
                }
            } else {
                task.await;
            }
            name
        });
        self.names.insert(handle.id(), name);
    }

    /// Waits for the first task to end; describes how it ended.
    async fn first_death(&mut self) -> String {
        match self.set.join_next_with_id().await {
            Some(Ok((_, name))) => format!("the {name} task ended before the gate was done"),
            Some(Err(e)) => {
                let name = self.names.get(&e.id()).copied().unwrap_or("unknown");
                if e.is_panic() {
                    let payload = e.into_panic();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    format!("the {name} task panicked: {msg}")
                } else {
                    format!("the {name} task was cancelled")
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Runs the gate on listeners already bound.
pub async fn run_with(
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
) -> Result<i32, Error> {
    let wrapper = !config.command.is_empty();
    let nofile = limits::raise_nofile();
    let limits = limits::derive(nofile, config.max_connections, config.drain.max_in_flight);
    let shared = state::Shared::new(config, limits);
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        proxy = %local(&proxy_listener),
        admin = %local(&admin_listener),
        upstream = %format!("{}://{}", shared.config.upstream.scheme, shared.config.upstream.authority),
        mode = if wrapper { "wrapper" } else { "sidecar" },
        grace_period_s = shared.config.drain.grace.as_secs_f64(),
        kill_margin_s = shared.config.drain.margin.as_secs_f64(),
        budget_s = shared.config.drain.budget(std::time::Duration::ZERO).available().as_secs_f64(),
        max_connections = limits.max_connections,
        max_in_flight = limits.max_in_flight,
        nofile,
        "Listening"
    );
    let signals = supervisor::Signals::install()?;
    let mut tasks = Tasks::new();
    tasks.spawn("signals", supervisor::signal_loop(shared.clone(), signals));
    if let Some(child) = supervisor::spawn_child(&shared)? {
        tasks.spawn("engine", child);
    }
    let proxy = Arc::new(proxy::Proxy::new(shared.clone()));
    tasks.spawn("proxy", server::serve_proxy(proxy_listener, proxy));
    tasks.spawn("admin", server::serve_admin(admin_listener, shared.clone()));
    tasks.spawn("health", supervisor::health_loop(shared.clone()));
    tasks.spawn("marker", supervisor::marker_loop(shared.clone()));
    tasks.spawn("driver", driver::drive(shared.clone()));
    let link = shared
        .config
        .kube
        .clone()
        .map(|k| cluster::Link::new(shared.clone(), k));
    if let Some(link) = &link {
        tasks.spawn("kube", link.clone().run());
    }

    let died = tokio::select! {
        // Tasks end once the exit is under way: that is not a death.
        biased;
        _ = shared.exit.cancelled() => None,
        why = tasks.first_death() => Some(why),
    };
    if let Some(why) = &died {
        tracing::error!(
            reason = %why,
            "The gate cannot go on: exiting without a drain (the kubelet restarts the container)"
        );
        shared.metrics.ready.set(0);
        supervisor::kill_child_group(&shared);
        shared.exit.cancel();
    }
    // Every response has ended (the machine exits only then); let the connections write
    // their last bytes and close, within a bound.
    shared.connections.close();
    let linger = shared
        .config
        .drain
        .deadline_linger
        .max(std::time::Duration::from_millis(200));
    if tokio::time::timeout(linger, shared.connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("Some connections were still open at exit");
    }
    // The report as an Event on the pod, so that it outlives the pod; bounded well inside
    // the kill margin, and skipped when the API server does not answer in time.
    if let (Some(link), Some(report)) = (&link, shared.report()) {
        let bound = (shared.config.drain.margin / 2).clamp(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(3),
        );
        link.post_report(&report, bound).await;
    }
    tasks.set.abort_all();

    let code = match died {
        Some(_) => EXIT_INTERNAL,
        None => shared.child().exit_code(),
    };
    let child_status = match shared.child() {
        state::Child::Exited { status, .. } => Some(status),
        _ => None,
    };
    let mut line = serde_json::Map::new();
    line.insert("msg".into(), "drain report".into());
    line.insert("exit_code".into(), code.into());
    line.insert("child_status".into(), child_status.into());
    if let Some(serde_json::Value::Object(r)) = shared
        .gate_report()
        .and_then(|r| serde_json::to_value(r).ok())
    {
        line.extend(r);
    }
    // The one machine-readable line a drain leaves behind, whatever the log format, written
    // whole in one write so that an engine writing to the same stderr cannot land inside it.
    // Not `eprintln!`: it panics when stderr is gone, and the exit status matters more.
    {
        use std::io::Write;
        let mut out = serde_json::Value::Object(line).to_string();
        out.push('\n');
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
    Ok(code)
}
