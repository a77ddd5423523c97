//! `lameduck rainbow`: the controller of `RainbowDeployment`s (`lameduck.io/v1alpha1`). Each
//! release of a pod template gets its own Deployment (a colour, named by the template's
//! hash); the Services move to it once it is Ready; each old colour stays, untouched, until
//! its own gates report nothing in flight for a quiet period (or `maxAge` passes), and is then
//! scaled to zero and deleted.
//!
//! - [`crd`]: the resource's Rust type, the one source of its CRD;
//! - [`colour`]: a template's hash and its Deployment;
//! - [`decide`]: what to do, from what was observed and remembered, with `now` as input (no
//!   I/O; property-tested);
//! - [`reconcile`]: the cluster read into the decision's input, the actions, the status;
//! - [`lease`]: leader election with a Lease;
//! - [`metrics`]: counters and gauges, served on `--admin`.

pub mod colour;
pub mod crd;
pub mod decide;
pub mod lease;
pub mod metrics;
pub mod reconcile;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use lameduck_kube::{ClusterArgs, LogOnce, Target};
use lameduck_timeline::Dur;

use crate::crd::{RAINBOW_LABEL, RainbowDeployment};
use crate::reconcile::{Ctx, ReconcileError};

/// `lameduck rainbow`.
#[derive(clap::Args, Debug, Clone)]
pub struct RainbowCommand {
    #[command(subcommand)]
    pub command: RainbowSub,
}

/// `lameduck rainbow`'s subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RainbowSub {
    /// Run the controller (a Deployment in the cluster, or from a laptop with a kubeconfig).
    Run(Box<RunArgs>),
    /// Print the RainbowDeployment CustomResourceDefinition:
    /// `lameduck rainbow crd | kubectl apply -f -`.
    Crd,
}

/// `lameduck rainbow run`'s flags.
/// `--poll`'s default: how often the controller decides (also what `plan` and `rehearse`
/// simulate).
pub const DEFAULT_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// `--gate-timeout`'s default.
pub const DEFAULT_GATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
A new spec.template gets its own Deployment (NAME-COLOUR, COLOUR being the template's hash); \
the Services in spec.services select it (lameduck.io/colour) once it is Ready; every older colour \
keeps its pods until all their gates report nothing in flight for spec.retirement.quietPeriod, or \
spec.retirement.maxAge passes, then is scaled to zero (its pods drain as usual) and deleted. \
Setting the template back to an older colour's moves the Services back while it is alive. \
See docs/rainbow.md.")]
pub struct RunArgs {
    /// Only this namespace's RainbowDeployments (a Role is then enough); default: all.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// How often each RainbowDeployment's gates are read again.
    #[arg(long, value_name = "DURATION", default_value = "5")]
    pub poll: Dur,

    /// How long a gate's /status (through the pod proxy) may take; one that does not answer
    /// counts as busy.
    #[arg(long, value_name = "DURATION", default_value = "2")]
    pub gate_timeout: Dur,

    /// The Lease that elects one active replica (in $POD_NAMESPACE, else the kubeconfig's
    /// namespace).
    #[arg(long, value_name = "NAME", default_value = "lameduck-rainbow")]
    pub lease: String,

    /// How long a Lease that is not renewed keeps other replicas waiting.
    #[arg(long, value_name = "DURATION", default_value = "15")]
    pub lease_duration: Dur,

    /// This replica's name in the Lease (default: $POD_NAME, else host and process id).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pub identity: Option<String>,

    /// Run without the Lease (one replica only: two would fight).
    #[arg(long)]
    pub no_leader_election: bool,

    /// Log what would be done and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Address of /metrics and /healthz. Never put it in a Service that clients reach.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:9903",
        env = "LAMEDUCK_RAINBOW_ADMIN"
    )]
    pub admin: SocketAddr,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why the controller could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RainbowError {
    /// No cluster configuration.
    #[error(transparent)]
    Connect(#[from] lameduck_kube::ConnectError),
    /// The admin address could not be bound.
    #[error("cannot listen on --admin {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The CRD is not installed, or the resource cannot be listed.
    #[error("{0}")]
    Crd(String),
    /// Leadership was lost: the process exits so that it starts again as a follower.
    #[error("lost leadership: {0}; exiting so that this replica starts again as a follower")]
    LostLease(&'static str),
}

fn identity(args: &RunArgs) -> String {
    if let Some(id) = args.identity.clone().filter(|s| !s.is_empty()) {
        return id;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "lameduck-rainbow".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs `lameduck rainbow …`.
pub async fn run(cmd: RainbowCommand) -> Result<i32, RainbowError> {
    match cmd.command {
        RainbowSub::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(0)
        }
        RainbowSub::Run(args) => run_controller(*args).await,
    }
}

async fn run_controller(args: RunArgs) -> Result<i32, RainbowError> {
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .map_err(|source| RainbowError::Bind {
            addr: args.admin,
            source,
        })?;
    let clients = lameduck_kube::connect(&Target::from(&args.cluster)).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let render = metrics.clone();
    tokio::spawn(lameduck_kube::admin::serve(
        admin,
        Arc::new(move || render.encode()),
    ));
    let rainbows: Api<RainbowDeployment> = match &args.namespace {
        Some(ns) => Api::namespaced(clients.api.clone(), ns),
        None => Api::all(clients.api.clone()),
    };
    let deployments: Api<Deployment> = match &args.namespace {
        Some(ns) => Api::namespaced(clients.api.clone(), ns),
        None => Api::all(clients.api.clone()),
    };
    // A missing CRD would otherwise show only as a watcher retrying forever.
    if let Err(e) = rainbows
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        let hint = match &e {
            kube::Error::Api(s) if s.code == 404 => {
                "the RainbowDeployment CRD is not installed: lameduck rainbow crd | kubectl apply -f -"
                    .to_owned()
            }
            kube::Error::Api(s) if s.code == 403 => format!(
                "not allowed to list rainbowdeployments.lameduck.io{}: grant list and watch (docs/rainbow.md has the RBAC)",
                args.namespace
                    .as_deref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default()
            ),
            _ => lameduck_kube::KubeError::new(
                lameduck_kube::Op {
                    verb: "list",
                    resource: "rainbowdeployments.lameduck.io",
                    namespace: args.namespace.clone(),
                    name: None,
                },
                e,
            )
            .to_string(),
        };
        return Err(RainbowError::Crd(hint));
    }

    let lease_ns = std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| clients.namespace.clone());
    let mut elector = (!args.no_leader_election).then(|| {
        lease::Elector::new(
            Api::namespaced(clients.api.clone(), &lease_ns),
            lease::LeaseConfig {
                namespace: lease_ns.clone(),
                name: args.lease.clone(),
                identity: identity(&args),
                duration: args.lease_duration.0,
            },
        )
    });
    let logged = Arc::new(LogOnce::default());
    if let Some(el) = elector.as_mut() {
        tracing::info!(lease = %format!("{lease_ns}/{}", args.lease), identity = %identity(&args), "Waiting for the leader Lease");
        let m = metrics.clone();
        let l = logged.clone();
        let retry = (args.lease_duration.0 / 5).max(Duration::from_millis(200));
        tokio::select! {
            () = el.acquire(retry, |e| {
                m.kube_error("lease");
                if l.first("lease") {
                    tracing::warn!(error = %e, "cannot read or take the Lease (logged once)");
                }
            }) => {}
            () = shutdown_signal() => return Ok(0),
        }
    }
    metrics.leader(true);
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        api = %clients.server,
        poll = %args.poll,
        dry_run = args.dry_run,
        "Rainbow controller leading"
    );

    let ctx = Arc::new(Ctx {
        client: clients.api.clone(),
        metrics: metrics.clone(),
        gate_timeout: args.gate_timeout.0,
        poll: args.poll.0,
        logged: LogOnce::default(),
        dry_run: args.dry_run,
    });
    let controller = Controller::new(rainbows, watcher::Config::default())
        .owns(
            deployments,
            watcher::Config::default().labels(RAINBOW_LABEL),
        )
        .run(reconcile_one, error_policy, ctx)
        .for_each({
            let metrics = metrics.clone();
            move |result| {
                // A RainbowDeployment deleted since it was queued: its series go with it.
                if let Err(kube::runtime::controller::Error::ObjectNotFound(r)) = result {
                    metrics.forget(r.namespace.as_deref().unwrap_or_default(), &r.name);
                }
                std::future::ready(())
            }
        });
    let m = metrics.clone();
    let l = logged.clone();
    let held = async {
        match elector.as_mut() {
            Some(el) => {
                el.hold(|e| {
                    m.kube_error("lease");
                    if l.first("lease-renew") {
                        tracing::warn!(error = %e, "cannot renew the Lease (logged once)");
                    }
                })
                .await
            }
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = controller => Ok(0),
        lost = held => Err(RainbowError::LostLease(lost)),
        () = shutdown_signal() => Ok(0),
    };
    metrics.leader(false);
    if outcome.is_ok()
        && let Some(el) = elector.as_mut()
    {
        match el.release().await {
            Ok(()) => tracing::info!("Lease released"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the Lease; the next leader waits for it to expire")
            }
        }
    }
    outcome
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn reconcile_one(
    rd: Arc<RainbowDeployment>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    if rd.meta().deletion_timestamp.is_some() {
        ctx.metrics
            .forget(&rd.namespace().unwrap_or_default(), &rd.name_any());
        return Ok(Action::await_change());
    }
    // The cached object can lag behind the status the last reconcile wrote: read it afresh,
    // so that what the status remembers (when a colour was superseded, since when it has
    // been idle) is never lost to a stale copy.
    let api: Api<RainbowDeployment> =
        Api::namespaced(ctx.client.clone(), &rd.namespace().unwrap_or_default());
    let fresh = api.get_opt(&rd.name_any()).await.map_err(|e| {
        ReconcileError::Kube(lameduck_kube::KubeError::new(
            lameduck_kube::Op::new(
                "get",
                "rainbowdeployments.lameduck.io",
                &rd.namespace().unwrap_or_default(),
            )
            .named(&rd.name_any()),
            e,
        ))
    })?;
    let Some(fresh) = fresh else {
        ctx.metrics
            .forget(&rd.namespace().unwrap_or_default(), &rd.name_any());
        return Ok(Action::await_change());
    };
    reconcile::reconcile(&fresh, &ctx).await?;
    Ok(Action::requeue(ctx.poll))
}

fn error_policy(rd: Arc<RainbowDeployment>, error: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    if let ReconcileError::Kube(e) = error {
        ctx.metrics.kube_error("read_objects");
        if ctx.logged.first("read_objects") {
            tracing::warn!(rainbow = %rd.name_any(), error = %e, "cannot read the rainbow's objects; retrying (logged once)");
        }
    } else if ctx.logged.first("spec") {
        tracing::warn!(error = %error, "RainbowDeployment not acted on (logged once; its status.problem says why)");
    }
    Action::requeue(ctx.poll)
}

#[cfg(test)]
mod defaults {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// The flags' defaults are the constants `plan` and `rehearse` simulate with.
    #[test]
    fn the_flag_defaults_are_the_constants() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(cli.run.poll.0, DEFAULT_POLL);
        assert_eq!(cli.run.gate_timeout.0, DEFAULT_GATE_TIMEOUT);
    }
}
