//! `lameduck agent`: runs on every node (a DaemonSet) and turns the cloud's notice that the
//! instance goes away into a drain of the node's pods, with the notice as their deadline.
//!
//! - [`inventory`]: the pods on the node, kept warm by a watch, read through the pod model
//!   (which are gated, at which admin address);
//! - [`respond`]: what a notice does: `/drain?deadline=` to every gated pod at once, the node
//!   tainted and cordoned, the pods removed through the API so their replacements start
//!   elsewhere, Events; a cancelled notice undoes the cordon;
//! - [`node`]: the node's taint, cordon and the record of the notice on it (so that a
//!   restarted agent picks up where it was);
//! - [`metrics`]: counters, served on `--admin` with a health endpoint.
//!
//! The metadata protocols (AWS IMDSv2, GCP, Azure Scheduled Events) are `lameduck-cloud`'s.

pub mod inventory;
pub mod metrics;
pub mod node;
pub mod respond;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lameduck_cloud::{Provider, Update, WatchConfig};
use lameduck_kube::{ClusterArgs, Target};
use lameduck_timeline::Dur;

/// `lameduck agent`'s flags.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
On a reclaim notice (AWS spot instance-action, GCP preemption, Azure Preempt/Terminate) or a \
maintenance that stops the instance: every gated pod on the node gets /drain?deadline= at once \
(the notice's time minus --margin), the node is tainted lameduck.io/reclaimed:NoSchedule and \
cordoned, and its pods are removed through the API (gated pods deleted with the time left as \
their grace period, others evicted) so replacements start elsewhere. An advisory (AWS rebalance, \
GCP live migration, Azure Freeze) cordons only. A cancelled notice uncordons. See docs/agent.md.")]
pub struct AgentArgs {
    /// The node this agent runs on (downward API: `fieldRef: spec.nodeName`).
    #[arg(long, value_name = "NAME", env = "LAMEDUCK_NODE_NAME")]
    pub node: String,

    /// The cloud whose metadata service to watch; `auto` asks each one.
    #[arg(long, value_name = "PROVIDER", default_value = "auto", value_parser = ["auto", "aws", "gcp", "azure"])]
    pub provider: String,

    /// The metadata service's base URL (default: the provider's own, 169.254.169.254 or
    /// metadata.google.internal). For tests and unusual clouds.
    #[arg(long, value_name = "URL", env = "LAMEDUCK_METADATA_URL")]
    pub metadata_url: Option<String>,

    /// Kept between the pods' deadline and the moment the instance goes: for ending streams,
    /// stopping engines and the API calls that remove the pods.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(lameduck_pod::facts::NOTICE_MARGIN))]
    pub margin: Dur,

    /// How long the kubelet's graceful node shutdown leaves regular pods when a reclaim shuts
    /// the instance down at once (GCP sends its preemption notice as the shutdown itself):
    /// the pods' deadline is never later than this after such a notice. `auto`: 15 s on GCP
    /// (GKE's split of the 30 s notice on spot and preemptible nodes), none elsewhere; `0`:
    /// the kubelet does not stop pods early.
    #[arg(long, value_name = "DURATION", default_value = "auto", value_parser = parse_window)]
    pub node_shutdown_grace: Window,

    /// How often the metadata service is polled (AWS, Azure; GCP's is a hanging request).
    #[arg(long, value_name = "DURATION", default_value = "1")]
    pub poll: Dur,

    /// A maintenance this far or farther away only cordons the node; the drain starts this
    /// long before it.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub maintenance_lead: Dur,

    /// What an advisory notice (AWS rebalance recommendation, GCP live migration, Azure
    /// Freeze) does: `cordon` the node, or `ignore` it (an Event either way).
    #[arg(long, value_name = "ACTION", default_value = "cordon", value_parser = ["cordon", "ignore"])]
    pub on_advisory: String,

    /// Log what would be done and change nothing: no drain, taint, cordon, deletion or Event.
    #[arg(long)]
    pub dry_run: bool,

    /// Bearer token for the gates' /drain, when they require one.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LAMEDUCK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub gate_token: Option<String>,

    /// Address of /metrics and /healthz. Never put it in a Service that clients reach.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:9902",
        env = "LAMEDUCK_AGENT_ADMIN"
    )]
    pub admin: SocketAddr,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No cluster configuration.
    #[error(transparent)]
    Connect(#[from] lameduck_kube::ConnectError),
    /// No metadata service answered.
    #[error("{0}; pass --provider and --metadata-url if the metadata service is elsewhere")]
    Detect(String),
    /// The admin address could not be bound.
    #[error("cannot listen on {addr} (--admin): {source}; pass a free address with --admin")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// `--node-shutdown-grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The provider's usual window.
    Auto,
    /// This long (zero: none).
    Set(Duration),
}

impl Window {
    /// The window for a reclaim from `provider`, if the node's shutdown starts with the notice.
    pub fn for_reclaim(self, provider: Provider) -> Option<Duration> {
        match self {
            Window::Auto => {
                (provider == Provider::Gcp).then(|| lameduck_pod::Spot::Gcp.pod_window())
            }
            Window::Set(d) if d.is_zero() => None,
            Window::Set(d) => Some(d),
        }
    }
}

fn parse_window(s: &str) -> Result<Window, String> {
    if s == "auto" {
        return Ok(Window::Auto);
    }
    s.parse::<Dur>()
        .map(|d| Window::Set(d.0))
        .map_err(|e| format!("{e}; or `auto`"))
}

fn provider_of(name: &str) -> Option<Provider> {
    match name {
        "aws" => Some(Provider::Aws),
        "gcp" => Some(Provider::Gcp),
        "azure" => Some(Provider::Azure),
        _ => None,
    }
}

/// Runs the agent until the process is stopped.
pub async fn run(args: AgentArgs) -> Result<i32, AgentError> {
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .map_err(|source| AgentError::Bind {
            addr: args.admin,
            source,
        })?;
    let clients = lameduck_kube::connect(&Target::from(&args.cluster)).await?;
    let provider = match provider_of(&args.provider) {
        Some(p) => p,
        None => lameduck_cloud::detect(args.metadata_url.as_deref(), Duration::from_secs(2))
            .await
            .map_err(|e| AgentError::Detect(e.to_string()))?,
    };
    let admin_addr = admin.local_addr().unwrap_or(args.admin);
    let metrics = Arc::new(metrics::Metrics::new());
    metrics.start_at_zero(provider.name());
    tokio::spawn(metrics::serve(admin, metrics.clone()));
    let inventory = inventory::Inventory::start(clients.api.clone(), &args.node, metrics.clone());
    let mut watch_cfg = WatchConfig::new(provider, args.metadata_url.clone());
    watch_cfg.poll = args.poll.0;
    tracing::info!(
        node = %args.node,
        provider = provider.name(),
        metadata = %watch_cfg.base_url,
        api = %clients.server,
        dry_run = args.dry_run,
        admin = %admin_addr,
        "Agent watching for notices"
    );
    let responder = Arc::new(respond::Responder::new(
        args.clone(),
        clients,
        inventory,
        metrics,
        watch_cfg.clone(),
    ));
    // An agent restarted mid-notice finds it recorded on the node and finishes the job (in
    // its own task: a recorded maintenance may wait hours for its drain).
    let resumed = responder.clone();
    tokio::spawn(async move { resumed.resume().await });
    let mut updates = lameduck_cloud::watch(watch_cfg);
    while let Some(update) = updates.recv().await {
        let r = responder.clone();
        match update {
            Update::Notice(n) => {
                tokio::spawn(async move { r.notice(n).await });
            }
            Update::Cancelled { id } => {
                tokio::spawn(async move { r.cancelled(&id).await });
            }
        }
    }
    // The watcher ends only if its channel closes, which it does not while we hold it.
    Ok(0)
}
