//! `lameduck drain NODE…`: a node drain that first says what will block it — with the object,
//! the arithmetic and the fix — and only then cordons and evicts, waiting on PodDisruptionBudgets
//! with their reason instead of retrying silently.
//!
//! [`plan`] decides from API objects (no I/O); [`surge`] moves a Deployment's pods by scaling up
//! first; this module reads the objects, prints, and acts.

pub mod plan;
pub mod progress;
pub mod surge;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lameduck_kube::{Clients, ClusterArgs, Context, KubeError, Op, Target};
use lameduck_timeline::Dur;

use crate::plan::{Action, Plan, Switches};
use crate::progress::Progress;

/// `lameduck drain`'s flags.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Before anything changes, every pod on the node is classified and every blocker is diagnosed: \
PodDisruptionBudgets that can never allow an eviction (maxUnavailable 0, minAvailable at the \
expected count), pods not ready under an unmet budget, several budgets on one pod, \
do-not-disrupt annotations, replacements with nowhere to go, bare pods, emptyDir data, \
DaemonSet pods. With a blocker nothing is changed and the exit status is 3. Otherwise the node \
is cordoned and its pods go through the Eviction API (their own grace period, so a gated pod's \
preStop drains it); an eviction refused by a budget is retried with its reason shown.")]
pub struct DrainArgs {
    /// The nodes to drain.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,

    /// Print the plan and the blockers; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Give up waiting for the pods to leave after this long (exit status 1).
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub timeout: Dur,

    /// Only pods with these labels (a label selector, as kubectl's `-l`).
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Leave DaemonSet pods on the node (they would come straight back).
    #[arg(long)]
    pub ignore_daemonsets: bool,

    /// Evict pods with emptyDir volumes, whose data is then lost.
    #[arg(long)]
    pub delete_emptydir_data: bool,

    /// Evict pods no controller owns (nothing recreates them).
    #[arg(long)]
    pub force: bool,

    /// With a blocker, wait (checking again every 2 s, up to --timeout) until it is gone instead
    /// of stopping; nothing is changed while waiting.
    #[arg(long)]
    pub wait_for_blockers: bool,

    /// Evict a Deployment's pods like everything else, instead of starting their replacements
    /// on other nodes first.
    #[arg(long)]
    pub no_surge: bool,

    /// How long a surge waits for a Deployment's replacements to be Ready elsewhere before it
    /// is undone and its pods are evicted instead.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub surge_timeout: Dur,

    /// `human` or `json` (the plan, then one object per pod as it leaves).
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub format: String,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why the drain could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// No cluster configuration.
    #[error(transparent)]
    Connect(#[from] lameduck_kube::ConnectError),
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// The exit status when a blocker stopped the drain.
pub const EXIT_BLOCKED: i32 = 3;

/// Runs the drain; returns the exit status.
pub async fn run(args: DrainArgs) -> Result<i32, DrainError> {
    let clients = lameduck_kube::connect(&Target::from(&args.cluster)).await?;
    let sw = Switches {
        ignore_daemonsets: args.ignore_daemonsets,
        delete_emptydir_data: args.delete_emptydir_data,
        force: args.force,
    };
    let json = args.format == "json";
    if !args.dry_run {
        for node in &args.nodes {
            for line in surge::recover(&clients, node).await? {
                println!("{node}: an earlier run's surge undone: {line}");
            }
        }
    }
    let started = Instant::now();
    let mut shown: Option<Vec<Plan>> = None;
    let (plans, node_pods) = loop {
        let mut plans = Vec::new();
        let mut node_pods = Vec::new();
        for node in &args.nodes {
            let (plan, pods) = read_plan(&clients, node, args.selector.as_deref(), sw).await?;
            plans.push(plan);
            node_pods.push(pods);
        }
        // Printed when it changes: a waiting run shows each new state once.
        if shown.as_ref() != Some(&plans) {
            for p in &plans {
                if json {
                    println!("{}", serde_json::to_string(p).unwrap_or_default());
                } else {
                    print!("{}", human(p));
                }
            }
            shown = Some(plans.clone());
        }
        let blocked = plans.iter().any(|p| !p.blockers.is_empty());
        if !blocked {
            break (plans, node_pods);
        }
        let waiting = args.wait_for_blockers && !args.dry_run && started.elapsed() < args.timeout.0;
        if !waiting {
            if !json {
                println!(
                    "Nothing was changed: fix the blockers above (or pass the flag each names), then run again."
                );
            }
            return Ok(EXIT_BLOCKED);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    if args.dry_run {
        if !json {
            println!("Dry run: nothing was changed.");
        }
        return Ok(0);
    }
    let t0 = Instant::now();
    let progress = surge::InProgress::default();
    let prog = Progress::new(json);
    let work = async {
        let mut all_gone = true;
        for (p, pods) in plans.iter().zip(&node_pods) {
            cordon(&clients, &p.node).await?;
            if !json {
                prog.say(&format!("{}: cordoned", p.node));
            }
            all_gone &= empty(&clients, &args, p, pods, &progress, t0, &prog).await?;
        }
        Ok::<bool, DrainError>(all_gone)
    };
    let all_gone = tokio::select! {
        r = work => r?,
        _ = tokio::signal::ctrl_c() => {
            for (ns, name, saved) in progress.all() {
                let replicas = saved.replicas;
                match surge::restore(&clients, &ns, &name, &saved).await {
                    Ok(()) => println!("interrupted: {ns}/{name} restored to {replicas} replicas"),
                    Err(e) => println!("interrupted: cannot restore {ns}/{name} to {replicas} replicas: {e}; the next run restores it"),
                }
            }
            return Ok(130);
        }
    };
    if json {
        println!("{}", prog.summary_json());
    } else {
        print!("{}", prog.summary());
        println!(
            "{} in {:.1} s",
            if all_gone {
                "Drained"
            } else {
                "Timed out: some pods are still there"
            },
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(if all_gone { 0 } else { 1 })
}

/// Empties one cordoned node: a Deployment's pods by surging first (unless `--no-surge`), the
/// rest (and any whose surge failed) by eviction. Returns whether every pod left in time.
async fn empty(
    clients: &Clients,
    args: &DrainArgs,
    p: &Plan,
    pods: &[Pod],
    progress: &surge::InProgress,
    t0: Instant,
    prog: &Progress,
) -> Result<bool, DrainError> {
    let json = args.format == "json";
    let leaving: Vec<&str> = p
        .pods
        .iter()
        .filter(|pp| pp.action == Action::Evict)
        .map(|pp| pp.pod.as_str())
        .collect();
    let leaving_pods: Vec<&Pod> = pods
        .iter()
        .filter(|pod| {
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            leaving.contains(&key.as_str())
                && p.pods
                    .iter()
                    .any(|pp| pp.pod == key && pp.owner == plan::Owner::ReplicaSet)
        })
        .collect();
    let groups = if args.no_surge {
        Vec::new()
    } else {
        surge::groups(clients, &leaving_pods).await?
    };
    let say = |line: String| {
        if json {
            println!("{}", serde_json::json!({"surge": line}));
        } else {
            prog.say(&line);
        }
    };
    let port_of = |key: &str| {
        pods.iter()
            .find(|pod| {
                pod.metadata.name.as_deref() == key.split_once('/').map(|k| k.1)
                    && pod.metadata.namespace.as_deref().unwrap_or("default")
                        == key.split_once('/').map_or("default", |k| k.0)
            })
            .and_then(progress::admin_port)
    };
    let mut surged: Vec<String> = Vec::new();
    for g in &groups {
        match surge::surge(clients, &p.node, g, args.surge_timeout.0, progress, &say).await {
            Ok(()) => surged.extend(g.pods.iter().map(|n| format!("{}/{n}", g.namespace))),
            Err(why) => say(format!("surge failed, evicting instead: {why}")),
        }
    }
    let w = Watch {
        clients,
        timeout: args.timeout.0,
        t0,
        prog,
    };
    let leaves = leaving.iter().map(|pod| {
        let surged = surged.iter().any(|s| s == pod);
        let port = port_of(pod);
        async move {
            if surged {
                prog.leaving(pod, "surged, then removed by the ReplicaSet");
                wait_gone(&w, pod, port).await
            } else {
                prog.leaving(pod, "evicted");
                leave(&w, pod, port).await
            }
        }
    });
    Ok(join_all(leaves).await.into_iter().all(|gone| gone))
}

async fn read_plan(
    clients: &Clients,
    node: &str,
    selector: Option<&str>,
    sw: Switches,
) -> Result<(Plan, Vec<Pod>), DrainError> {
    let nodes: Api<Node> = Api::all(clients.api.clone());
    let node_op = Op {
        verb: "get",
        resource: "nodes",
        namespace: None,
        name: Some(node.to_owned()),
    };
    nodes.get(node).await.op(node_op)?;
    let all_nodes = nodes
        .list(&ListParams::default())
        .await
        .op(Op {
            verb: "list",
            resource: "nodes",
            namespace: None,
            name: None,
        })?
        .items;
    let pods: Api<Pod> = Api::all(clients.api.clone());
    let mut lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let pods = pods
        .list(&lp)
        .await
        .op(Op {
            verb: "list",
            resource: "pods",
            namespace: None,
            name: None,
        })?
        .items;
    let budgets: Api<PodDisruptionBudget> = Api::all(clients.api.clone());
    let budgets = budgets
        .list(&ListParams::default())
        .await
        .op(Op {
            verb: "list",
            resource: "poddisruptionbudgets.policy",
            namespace: None,
            name: None,
        })?
        .items;
    Ok((plan::plan(node, &pods, &budgets, &all_nodes, sw), pods))
}

/// The plan in words.
pub fn human(p: &Plan) -> String {
    let mut out = format!("Node {}: {} pods\n", p.node, p.pods.len());
    for pp in &p.pods {
        let what = match &pp.action {
            Action::Evict => format!(
                "evict (grace {} s{}{})",
                pp.grace_seconds,
                if pp.gated {
                    ", gated: its preStop drains it"
                } else {
                    ""
                },
                pp.budget
                    .as_ref()
                    .map(|b| format!(", budget {b}"))
                    .unwrap_or_default()
            ),
            Action::Skip(why) => format!("stays: {why}"),
        };
        out.push_str(&format!("  {:<40} {:?} → {what}\n", pp.pod, pp.owner));
    }
    if p.blockers.is_empty() {
        out.push_str("  no blockers\n");
    }
    for b in &p.blockers {
        out.push_str(&format!(
            "  BLOCKED {} ({}): {}\n    fix: {}\n",
            b.pod, b.object, b.why, b.fix
        ));
    }
    out
}

async fn cordon(clients: &Clients, node: &str) -> Result<(), DrainError> {
    let nodes: Api<Node> = Api::all(clients.api.clone());
    let patch = serde_json::json!({"spec": {"unschedulable": true}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .op(Op {
            verb: "patch",
            resource: "nodes",
            namespace: None,
            name: Some(node.to_owned()),
        })?;
    Ok(())
}

/// What watching pods leave needs.
#[derive(Clone, Copy)]
struct Watch<'a> {
    clients: &'a Clients,
    timeout: Duration,
    t0: Instant,
    prog: &'a Progress,
}

/// Evicts one pod (retrying while its budget refuses, saying why once per reason) and waits
/// until it is gone. Returns whether it left within the timeout.
async fn leave(w: &Watch<'_>, pod: &str, port: Option<u16>) -> bool {
    let Watch {
        clients,
        timeout,
        t0,
        prog,
    } = *w;
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    let mut said: BTreeMap<String, ()> = BTreeMap::new();
    let say = |line: String, fields: serde_json::Value| prog.event(&line, fields);
    loop {
        if t0.elapsed() > timeout {
            say(
                format!(
                    "{pod}: still not evicted after {:.0} s",
                    timeout.as_secs_f64()
                ),
                serde_json::json!({"pod": pod, "result": "timeout"}),
            );
            return false;
        }
        match evict(clients, ns, name).await {
            Ok(()) => {
                say(
                    format!("{pod}: evicted after {:.1} s", t0.elapsed().as_secs_f64()),
                    serde_json::json!({"pod": pod, "result": "evicted", "at_s": t0.elapsed().as_secs_f64()}),
                );
                break;
            }
            Err(Refusal::Gone) => break,
            Err(Refusal::Budget(why)) => {
                if said.insert(why.clone(), ()).is_none() {
                    say(
                        format!("{pod}: waiting: {why}"),
                        serde_json::json!({"pod": pod, "result": "waiting", "why": why}),
                    );
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(Refusal::Failed(why)) => {
                say(
                    format!("{pod}: cannot evict: {why}"),
                    serde_json::json!({"pod": pod, "result": "failed", "why": why}),
                );
                return false;
            }
        }
    }
    wait_gone(w, pod, port).await
}

/// Waits until the pod is gone from the API: its grace period (and a gate's drain) has run.
/// Meanwhile its line shows its phase and, for a gated pod, what its gate says.
async fn wait_gone(w: &Watch<'_>, pod: &str, port: Option<u16>) -> bool {
    let Watch {
        clients,
        timeout,
        t0,
        prog,
    } = *w;
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    let pods: Api<Pod> = Api::namespaced(clients.api.clone(), ns);
    while t0.elapsed() <= timeout {
        match pods.get_opt(name).await {
            Ok(None) => {
                prog.gone(pod, t0.elapsed());
                return true;
            }
            Ok(Some(p)) => {
                let phase = if p.metadata.deletion_timestamp.is_some() {
                    "terminating"
                } else {
                    "waiting for its deletion"
                };
                let gate = match port {
                    Some(port) => progress::gate_status(&clients.direct, pod, port).await,
                    None => None,
                };
                prog.update(pod, phase, gate.as_ref());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    false
}

enum Refusal {
    Gone,
    Budget(String),
    Failed(String),
}

/// The Eviction API, with the body written here (kube's `evict` names the options field in a
/// way the API server ignores) and on the client that never retries: a 429 is the budget's
/// answer, shown to the user.
async fn evict(clients: &Clients, ns: &str, name: &str) -> Result<(), Refusal> {
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string().into_bytes())
        .map_err(|e| Refusal::Failed(e.to_string()))?;
    match clients.direct.request::<serde_json::Value>(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Refusal::Gone),
        Err(kube::Error::Api(s)) if s.code == 429 => {
            let cause = s
                .details
                .as_ref()
                .and_then(|d| d.causes.first())
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty());
            Err(Refusal::Budget(cause.unwrap_or(s.message.clone())))
        }
        Err(e) => Err(Refusal::Failed(
            KubeError::new(Op::new("create", "pods/eviction", ns).named(name), e).to_string(),
        )),
    }
}
