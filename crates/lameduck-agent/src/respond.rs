//! What a notice does.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use lameduck_cloud::{Notice, NoticeKind, WatchConfig};
use lameduck_gate_api::GateClient;
use lameduck_kube::events::Subject;
use lameduck_kube::{Clients, Context, KubeError, Op};

use crate::AgentArgs;
use crate::inventory::{Inventory, NodePod, Role};
use crate::metrics::Metrics;
use crate::node::{self, Record};

/// How long one gate gets to accept `/drain` before the agent goes on without it.
const GATE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Acts on notices for one node.
pub struct Responder {
    args: AgentArgs,
    clients: Clients,
    inventory: Inventory,
    metrics: Arc<Metrics>,
    watch: WatchConfig,
    acted: Mutex<HashSet<String>>,
    /// Azure events the agent approved: their disappearance is their start, not a withdrawal.
    acknowledged: Mutex<HashSet<String>>,
    logged: lameduck_kube::LogOnce,
}

fn kind_name(k: &NoticeKind) -> &'static str {
    match k {
        NoticeKind::Reclaim => "reclaim",
        NoticeKind::Maintenance => "maintenance",
        NoticeKind::Advisory => "advisory",
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How often a draining gate's `/status` is read for its report.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Follows one draining gate until its drain is over, it stops answering (its pod exited) or
/// the instance goes, then counts how its streams ended from the last report it gave.
async fn follow(metrics: Arc<Metrics>, client: GateClient, pod: String, goes_at: SystemTime) {
    let mut last = None;
    let mut idle = false;
    loop {
        match client.status().await {
            Ok(st) => {
                idle = st.in_flight_total() == 0;
                let done = st.drain.as_ref().is_some_and(|r| r.report.total.is_some());
                if st.drain.is_some() {
                    last = st.drain;
                }
                if done {
                    break;
                }
            }
            // Gone with its pod: the last report stands.
            Err(_) => break,
        }
        if SystemTime::now() >= goes_at {
            idle = false;
            break;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
    let Some(r) = last else {
        metrics.pod_ended("unknown");
        tracing::warn!(pod = %pod, "The gate gave no drain report before it went");
        return;
    };
    let rep = &r.report;
    let in_time = rep.total.is_some() || idle;
    metrics.pod_ended(if in_time { "in_time" } else { "cut_by_the_end" });
    // Handed-off streams count by how their relay ended.
    metrics.streams("completed", rep.delivered());
    metrics.streams("truncated", rep.cut_short());
    metrics.streams("upstream_error", rep.upstream_errors);
    tracing::info!(
        pod = %pod,
        in_time,
        completed = rep.delivered(),
        truncated = rep.cut_short(),
        handed_off = rep.handed_off,
        upstream_errors = rep.upstream_errors,
        "Gate's drain report"
    );
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Responder {
    /// A responder for the agent's node.
    pub fn new(
        args: AgentArgs,
        clients: Clients,
        inventory: Inventory,
        metrics: Arc<Metrics>,
        watch: WatchConfig,
    ) -> Responder {
        Responder {
            args,
            clients,
            inventory,
            metrics,
            watch,
            acted: Mutex::new(HashSet::new()),
            acknowledged: Mutex::new(HashSet::new()),
            logged: lameduck_kube::LogOnce::default(),
        }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.clients.api.clone())
    }

    /// Logs a failed API call once per operation (later ones at debug) and counts it.
    fn failed(&self, operation: &'static str, e: &KubeError) {
        self.metrics.kube_error(operation);
        if self.logged.first(operation) {
            tracing::warn!(operation, error = %e, "Kubernetes API call failed (logged once per operation, counted in lameduck_agent_kube_errors)");
        } else {
            tracing::debug!(operation, error = %e, "Kubernetes API call failed again");
        }
    }

    fn first_time(&self, id: &str) -> bool {
        self.acted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }

    /// An agent restarted mid-notice: the notice recorded on the node is acted on again
    /// (every step is idempotent: drains join, deletions of terminating pods change nothing).
    pub async fn resume(&self) {
        let record = match node::recorded(&self.nodes(), &self.args.node).await {
            Ok(r) => r,
            Err(e) => {
                self.failed("read_node", &e);
                return;
            }
        };
        let Some(record) = record else { return };
        self.first_time(&record.id);
        if record.kind == "advisory" {
            return;
        }
        let Some(goes_at) = record.goes_at() else {
            return;
        };
        tracing::info!(id = %record.id, "Resuming the notice recorded on the node");
        // A maintenance recorded as cordon-only is re-armed: the drain starts the lead time
        // before it, as it would have without the restart.
        let left = goes_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if record.kind == "maintenance" && !record.tainted && left > self.args.maintenance_lead.0 {
            tokio::time::sleep(left.saturating_sub(self.args.maintenance_lead.0)).await;
            if !self.still_acting(&record.id) {
                return;
            }
        }
        self.act(goes_at, record).await;
    }

    /// A notice arrived.
    pub async fn notice(&self, n: Notice) {
        let kind = kind_name(&n.kind);
        self.metrics.notice(n.provider.name(), kind);
        if !self.first_time(&n.id) {
            tracing::debug!(id = %n.id, "Notice seen again; acted on already");
            return;
        }
        let mut goes_at = n.not_before.unwrap_or(n.seen_at + Duration::from_secs(30));
        // A reclaim that shuts the instance down at once: the kubelet's node shutdown stops
        // the pods sooner than the instance goes.
        if matches!(n.kind, NoticeKind::Reclaim)
            && let Some(w) = self.args.node_shutdown_grace.for_reclaim(n.provider)
        {
            goes_at = goes_at.min(n.seen_at + w);
        }
        let left = goes_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tracing::warn!(
            provider = n.provider.name(),
            kind,
            id = %n.id,
            detail = %n.detail,
            seconds_left = left.as_secs_f64(),
            dry_run = self.args.dry_run,
            "Notice"
        );
        let record = Record {
            id: n.id.clone(),
            provider: n.provider.name().to_owned(),
            kind: kind.to_owned(),
            goes_at: unix(goes_at),
            cordoned: false,
            tainted: false,
        };
        match n.kind {
            NoticeKind::Advisory => {
                let cordon = self.args.on_advisory == "cordon";
                if cordon && !self.args.dry_run {
                    self.mark(record, false).await;
                }
                self.node_event(
                    "AdvisoryNotice",
                    format!(
                        "{} advisory notice ({}): {}",
                        n.provider.name(),
                        n.detail,
                        if cordon {
                            "node cordoned"
                        } else {
                            "no action (--on-advisory ignore)"
                        }
                    ),
                    false,
                )
                .await;
            }
            NoticeKind::Maintenance if left > self.args.maintenance_lead.0 => {
                if !self.args.dry_run {
                    self.mark(record.clone(), false).await;
                }
                self.node_event(
                    "MaintenanceScheduled",
                    format!(
                        "{} maintenance ({}) in {}: node cordoned; its pods drain {} before it",
                        n.provider.name(),
                        n.detail,
                        secs(left),
                        secs(self.args.maintenance_lead.0)
                    ),
                    false,
                )
                .await;
                let start = left.saturating_sub(self.args.maintenance_lead.0);
                tokio::time::sleep(start).await;
                if self.still_acting(&record.id) {
                    self.act(goes_at, record).await;
                }
            }
            NoticeKind::Reclaim | NoticeKind::Maintenance => self.act(goes_at, record).await,
        }
    }

    fn still_acting(&self, id: &str) -> bool {
        self.acted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// A notice was withdrawn: undo the cordon and taint the agent set for it.
    pub async fn cancelled(&self, id: &str) {
        if self
            .acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
        {
            tracing::info!(id, "The approved scheduled event has started");
            return;
        }
        let was = self
            .acted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        tracing::info!(id, "Notice withdrawn");
        if self.args.dry_run || !was {
            return;
        }
        match node::unmark(&self.nodes(), &self.args.node, id).await {
            Ok(true) => {
                self.node_event(
                    "NoticeCancelled",
                    format!("notice {id} was withdrawn: node uncordoned and untainted (pods already drained stay gone)"),
                    false,
                )
                .await;
            }
            Ok(false) => {}
            Err(e) => self.failed("uncordon_node", &e),
        }
    }

    async fn mark(&self, record: Record, taint: bool) {
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            node::mark(&self.nodes(), &self.args.node, record, taint),
        )
        .await;
        match r {
            Ok(Ok(_)) => tracing::info!(taint, "Node cordoned"),
            Ok(Err(e)) => self.failed("cordon_node", &e),
            Err(_) => self.metrics.kube_error("cordon_node"),
        }
    }

    /// The drain: every gated pod's `/drain?deadline=` at once, the node tainted and cordoned,
    /// then the pods removed through the API.
    async fn act(&self, goes_at: SystemTime, record: Record) {
        let now = SystemTime::now();
        let deadline_at = goes_at.checked_sub(self.args.margin.0).unwrap_or(goes_at);
        // Never zero: a gate told "now" still ends its streams with the terminal event.
        let budget = deadline_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(500));
        self.metrics.budget.set(budget.as_secs_f64());
        if !self.inventory.ready(Duration::from_secs(1)).await {
            tracing::warn!(
                "The node's pods were never listed (API server down since the agent started?): only gates already known are drained"
            );
        }
        let pods = self.inventory.pods();
        if self.args.dry_run {
            for p in &pods {
                let what = match &p.role {
                    Role::Gated(a) => {
                        format!("/drain?deadline={} at {a}, then delete", secs(budget))
                    }
                    Role::GatedNoAddress => "delete (gated, no address yet)".into(),
                    Role::Evict => "evict".into(),
                    Role::Stays(why) => format!("stays: {why}"),
                };
                tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), plan = %what, "Dry run");
            }
            tracing::info!(budget_s = budget.as_secs_f64(), "Dry run: nothing changed");
            return;
        }
        let t0 = std::time::Instant::now();
        let token = self.args.gate_token.clone();
        // A gated pod with no IP yet cannot be told: it is deleted with the time left below.
        for _ in pods
            .iter()
            .filter(|p| matches!(p.role, Role::GatedNoAddress))
        {
            self.metrics.drain("skipped");
        }
        let drains = pods.iter().filter_map(|p| match &p.role {
            Role::Gated(addr) => {
                let client = GateClient::new(*addr)
                    .with_token(token.clone())
                    .with_timeout(GATE_TIMEOUT);
                Some(async move {
                    let r = client.drain(Some(budget), false, GATE_TIMEOUT).await;
                    (p, r)
                })
            }
            _ => None,
        });
        let id = record.id.clone();
        let (drained, _) = tokio::join!(join_all(drains), self.mark(record, true));
        let mut ok = 0;
        for (p, r) in &drained {
            match r {
                Ok(_) => {
                    ok += 1;
                    self.metrics.drain("ok");
                    if let Role::Gated(addr) = p.role {
                        let client = GateClient::new(addr)
                            .with_token(token.clone())
                            .with_timeout(GATE_TIMEOUT);
                        let pod = format!("{}/{}", p.namespace, p.name);
                        tokio::spawn(follow(self.metrics.clone(), client, pod, goes_at));
                    }
                }
                Err(e) => {
                    self.metrics.drain("failed");
                    tracing::warn!(pod = %format!("{}/{}", p.namespace, p.name), error = %e, "A gate did not accept /drain; its pod is still deleted with the time left");
                }
            }
        }
        tracing::info!(
            gated = drained.len(),
            accepted = ok,
            budget_s = budget.as_secs_f64(),
            after_ms = t0.elapsed().as_millis() as u64,
            "Gates told to drain"
        );
        let removals = pods
            .iter()
            .filter(|p| !p.terminating && !matches!(p.role, Role::Stays(_)))
            .map(|p| self.remove(p, goes_at));
        let results = join_all(removals).await;
        let removed = results.iter().filter(|r| r.is_some()).count();
        self.node_event(
            "NodeReclaimed",
            format!(
                "notice {}: {} gated pods told to drain within {} ({} accepted); {} of {} pods removed through the API so their replacements start elsewhere",
                id,
                drained.len(),
                secs(budget),
                ok,
                removed,
                results.len()
            ),
            true,
        )
        .await;
        if self.watch.provider == lameduck_cloud::Provider::Azure {
            self.acknowledge_when_empty(goes_at).await;
        }
    }

    /// Removes one pod: gated pods are deleted with the time left as their grace (their gate
    /// already drains to the deadline); others are evicted while their budget allows and time
    /// remains, then deleted. Returns how, or `None` when it failed.
    async fn remove(&self, p: &NodePod, goes_at: SystemTime) -> Option<&'static str> {
        let left = |now: SystemTime| goes_at.duration_since(now).unwrap_or(Duration::ZERO);
        let grace = |now| {
            let l = left(now).as_secs().max(1);
            i64::try_from(l)
                .unwrap_or(i64::MAX)
                .min(p.grace_seconds.max(1))
        };
        let pods: Api<Pod> = Api::namespaced(self.clients.api.clone(), &p.namespace);
        let how = match p.role {
            Role::Gated(_) | Role::GatedNoAddress => None,
            _ => loop {
                match self.evict(p, grace(SystemTime::now())).await {
                    Ok(()) => break Some("evicted"),
                    Err(code)
                        if code == 429 && left(SystemTime::now()) > Duration::from_secs(3) =>
                    {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(429) => {
                        self.metrics.removal("blocked");
                        tracing::warn!(pod = %format!("{}/{}", p.namespace, p.name), "Its PodDisruptionBudget allowed no eviction before the instance goes: deleting it");
                        break None;
                    }
                    Err(_) => break None,
                }
            },
        };
        if let Some(how) = how {
            self.metrics.removal(how);
            self.pod_event(p, how).await;
            return Some(how);
        }
        let op = Op::new("delete", "pods", &p.namespace).named(&p.name);
        let dp = DeleteParams::default()
            .grace_period(u32::try_from(grace(SystemTime::now())).unwrap_or(1));
        let r = tokio::time::timeout(CALL_TIMEOUT, async {
            pods.delete(&p.name, &dp).await.op(op)
        })
        .await;
        match r {
            Ok(Ok(_)) => {
                self.metrics.removal("deleted");
                self.pod_event(p, "deleted").await;
                Some("deleted")
            }
            Ok(Err(e)) if e.is_not_found() => Some("gone"),
            Ok(Err(e)) => {
                self.metrics.removal("failed");
                self.failed("delete_pod", &e);
                None
            }
            Err(_) => {
                self.metrics.removal("failed");
                self.metrics.kube_error("delete_pod");
                None
            }
        }
    }

    /// The Eviction API with a grace period. The body is written here: kube's `evict` sends
    /// its options as `delete_options`, which the API server ignores (it reads
    /// `deleteOptions`). Never retried by the client: a 429 is the budget's answer.
    async fn evict(&self, p: &NodePod, grace: i64) -> Result<(), u16> {
        let body = serde_json::json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": p.name, "namespace": p.namespace},
            "deleteOptions": {"gracePeriodSeconds": grace},
        });
        let uri = format!(
            "/api/v1/namespaces/{}/pods/{}/eviction",
            p.namespace, p.name
        );
        let req = match http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
        {
            Ok(r) => r,
            Err(_) => return Err(0),
        };
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            self.clients.direct.request::<serde_json::Value>(req),
        )
        .await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(s))) => {
                if s.code != 429 {
                    let e = KubeError::new(
                        Op::new("create", "pods/eviction", &p.namespace).named(&p.name),
                        kube::Error::Api(s.clone()),
                    );
                    self.failed("evict_pod", &e);
                }
                Err(s.code)
            }
            Ok(Err(e)) => {
                let e = KubeError::new(
                    Op::new("create", "pods/eviction", &p.namespace).named(&p.name),
                    e,
                );
                self.failed("evict_pod", &e);
                Err(0)
            }
            Err(_) => {
                self.metrics.kube_error("evict_pod");
                Err(0)
            }
        }
    }

    /// Azure: once the node's pods are gone (or the time is up), approve the event so the
    /// platform may proceed before `NotBefore`.
    async fn acknowledge_when_empty(&self, goes_at: SystemTime) {
        while SystemTime::now() < goes_at {
            let left = self
                .inventory
                .pods()
                .iter()
                .filter(|p| !matches!(p.role, Role::Stays(_)))
                .count();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ids: Vec<String> = self
            .acted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for id in ids {
            match lameduck_cloud::acknowledge(&self.watch, &id).await {
                Ok(()) => {
                    tracing::info!(id, "Scheduled event acknowledged: the platform may proceed");
                    self.acknowledged
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id);
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "Cannot acknowledge the scheduled event; the platform proceeds at NotBefore")
                }
            }
        }
    }

    async fn post(&self, subject: Subject, reason: &str, message: String, warning: bool) {
        if self.args.dry_run {
            return;
        }
        let ev = lameduck_kube::events::event(
            &subject,
            reason,
            message,
            warning,
            "lameduck-agent",
            "Drain",
        );
        let api: Api<Event> = Api::namespaced(self.clients.api.clone(), subject.event_namespace());
        let op = Op::new("create", "events", subject.event_namespace());
        let r = tokio::time::timeout(CALL_TIMEOUT, async {
            api.create(&PostParams::default(), &ev).await.op(op)
        })
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.failed("post_event", &e),
            Err(_) => self.metrics.kube_error("post_event"),
        }
    }

    async fn node_event(&self, reason: &str, message: String, warning: bool) {
        self.post(
            Subject::node(&self.args.node, None),
            reason,
            message,
            warning,
        )
        .await;
    }

    async fn pod_event(&self, p: &NodePod, how: &str) {
        let message = match p.role {
            Role::Gated(_) => format!(
                "{how} by lameduck-agent: node {} is going away; its gate was told the deadline",
                self.args.node
            ),
            _ => format!(
                "{how} by lameduck-agent: node {} is going away",
                self.args.node
            ),
        };
        self.post(
            Subject::pod(&p.namespace, &p.name, p.uid.clone()),
            "NodeReclaimed",
            message,
            true,
        )
        .await;
    }
}
