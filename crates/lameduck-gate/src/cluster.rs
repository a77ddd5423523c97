//! `--kube`: what the gate tells the API server and learns from it.
//!
//! - the pod's `lameduck.io/serving` condition: `True` once the engine is healthy, `False` the
//!   instant a drain starts, so that a pod with that readiness gate leaves its EndpointSlices
//!   at once instead of a probe period later;
//! - the pod's EndpointSlices, watched: when the control plane took the endpoint out of
//!   rotation, and the last arrival after that (the data plane's lag);
//! - the pod itself, watched: a deletion with a shorter grace period than `--grace-period`
//!   moves the deadline earlier;
//! - the final drain report, posted as an Event on the pod (it outlives the pod's logs and
//!   metrics);
//! - with `--deletion-cost`, the pod-deletion-cost annotation in step with the work in flight.
//!
//! Nothing here is on a drain's path: every call runs in this task, bounded, and a failure is
//! logged once per operation (with what to fix), counted in `lameduck_gate_kube_errors`, and
//! otherwise ignored. The gate drains exactly as without `--kube` when the API server is slow,
//! down or refuses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use lameduck_kube::{Clients, Context, KubeError, Op};
use lameduck_timeline::DrainReport;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::config::KubeSettings;
use crate::state::Shared;

pub use lameduck_pod::SERVING_CONDITION;
/// The annotation a ReplicaSet scale-down ranks pods by (lower goes first).
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The fewest seconds between two deletion-cost patches.
pub const DELETION_COST_MIN_GAP: Duration = Duration::from_secs(10);
/// The longest one API call may take before it is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The gate's link to the API server.
pub struct Link {
    settings: KubeSettings,
    shared: Arc<Shared>,
    clients: OnceCell<Clients>,
    logged: lameduck_kube::LogOnce,
    uid: Mutex<Option<String>>,
}

/// A failure to report: the operation and why.
enum Failure {
    Kube(KubeError),
    Other(String),
    Timeout,
}

impl Link {
    /// A link for `settings`; nothing is contacted until [`run`](Self::run).
    pub fn new(shared: Arc<Shared>, settings: KubeSettings) -> Arc<Link> {
        Arc::new(Link {
            settings,
            shared,
            clients: OnceCell::new(),
            logged: lameduck_kube::LogOnce::default(),
            uid: Mutex::new(None),
        })
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.div_f64(self.shared.config.time_scale)
    }

    /// Logs a failed operation once (later ones at debug) and counts every one.
    fn failed(&self, operation: &'static str, failure: Failure) {
        let (kind, text) = match &failure {
            Failure::Kube(e) => (e.kind(), e.to_string()),
            Failure::Other(s) => ("unreachable", s.clone()),
            Failure::Timeout => (
                "timeout",
                format!(
                    "the API server did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ),
            ),
        };
        self.shared.metrics.kube_error(operation, kind);
        if self.logged.first(operation) {
            tracing::warn!(
                operation,
                error = %text,
                "Kubernetes API call failed; the drain goes on without it (logged once per operation, counted in lameduck_gate_kube_errors)"
            );
        } else {
            tracing::debug!(operation, error = %text, "Kubernetes API call failed again");
        }
    }

    /// The clients, connecting on first use; `None` (logged once) while that fails.
    async fn clients(&self) -> Option<&Clients> {
        let r = self
            .clients
            .get_or_try_init(|| async {
                let c = lameduck_kube::connect(&self.settings.target).await?;
                tracing::info!(
                    source = %c.source,
                    server = %c.server,
                    pod = %self.settings.pod,
                    namespace = %self.settings.namespace,
                    "Kubernetes API: connected"
                );
                Ok::<_, lameduck_kube::ConnectError>(c)
            })
            .await;
        match r {
            Ok(c) => Some(c),
            Err(e) => {
                self.failed("connect", Failure::Other(e.to_string()));
                None
            }
        }
    }

    async fn pods(&self) -> Option<Api<Pod>> {
        let c = self.clients().await?;
        Some(Api::namespaced(c.api.clone(), &self.settings.namespace))
    }

    /// Runs a call with the timeout; `true` when it succeeded.
    async fn call<T>(
        &self,
        operation: &'static str,
        f: impl Future<Output = Result<T, KubeError>>,
    ) -> Option<T> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(operation, Failure::Kube(e));
                None
            }
            Err(_) => {
                self.failed(operation, Failure::Timeout);
                None
            }
        }
    }

    /// Runs every part until the process exits; never returns.
    pub async fn run(self: Arc<Self>) {
        tokio::join!(
            self.serving_condition(),
            self.watch_endpoints(),
            self.watch_pod(),
            self.deletion_cost(),
        );
        std::future::pending::<()>().await;
    }

    /// Sets the serving condition; `true` on success.
    async fn set_serving(&self, serving: bool) -> bool {
        let Some(pods) = self.pods().await else {
            return false;
        };
        let (status, reason, message) = if serving {
            (
                "True",
                "Serving",
                "the engine is healthy; the gate admits requests",
            )
        } else {
            (
                "False",
                "Draining",
                "the gate is draining: take this pod out of rotation",
            )
        };
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": SERVING_CONDITION,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": Time(k8s_openapi::jiff::Timestamp::now()),
                }]
            }
        });
        let pod = &self.settings.pod;
        let op = Op::new("patch", "pods/status", &self.settings.namespace).named(pod);
        self.call("set_serving_condition", async {
            pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .op(op)
        })
        .await
        .is_some()
    }

    /// `True` once the engine is healthy (retried until it lands or a drain starts), then
    /// `False` as soon as a drain starts (retried for a while).
    async fn serving_condition(&self) {
        let shared = &self.shared;
        let started = async {
            while !shared.started.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            loop {
                if self.set_serving(true).await {
                    tracing::info!(condition = SERVING_CONDITION, "Pod condition set: True");
                    break;
                }
                tokio::time::sleep(self.scaled(Duration::from_secs(2))).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = shared.announce.cancelled() => {}
            _ = started => {}
        }
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            if self.set_serving(false).await {
                tracing::info!(
                    condition = SERVING_CONDITION,
                    after_ms = t0.elapsed().as_millis() as u64,
                    "Pod condition set: False (endpoints drop this pod now)"
                );
                return;
            }
            // Keep trying for as long as it may still help: the endpoint is also removed by
            // the readiness probe, so this only ever speeds things up.
            if t0.elapsed() > self.scaled(Duration::from_secs(60)) {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Watches the namespace's EndpointSlices for this pod's endpoint; reports its removal
    /// from rotation once a drain is under way.
    async fn watch_endpoints(&self) {
        let Some(c) = self.clients().await else {
            return;
        };
        let api: Api<EndpointSlice> = Api::namespaced(c.api.clone(), &self.settings.namespace);
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        // Slice name → whether it lists this pod as ready (only slices that list it).
        let mut slices: HashMap<String, bool> = HashMap::new();
        let mut pending: Option<HashMap<String, bool>> = None;
        let mut seen_in_rotation = false;
        let mut reported = false;
        let mut draining = false;
        loop {
            tokio::select! {
                ev = stream.next() => {
                    let Some(ev) = ev else { return };
                    match ev {
                        Ok(watcher::Event::Init) => pending = Some(HashMap::new()),
                        Ok(watcher::Event::InitApply(s)) => {
                            if let Some(p) = &mut pending {
                                self.note_slice(p, &s);
                            }
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(p) = pending.take() {
                                slices = p;
                            }
                        }
                        Ok(watcher::Event::Apply(s)) => self.note_slice(&mut slices, &s),
                        Ok(watcher::Event::Delete(s)) => {
                            if let Some(name) = &s.metadata.name {
                                slices.remove(name);
                            }
                        }
                        Err(e) => {
                            let op = Op::new("watch", "endpointslices.discovery.k8s.io", &self.settings.namespace);
                            let text = match e {
                                watcher::Error::InitialListFailed(k)
                                | watcher::Error::WatchStartFailed(k)
                                | watcher::Error::WatchFailed(k) => KubeError::new(op, k).to_string(),
                                other => other.to_string(),
                            };
                            self.failed("watch_endpointslices", Failure::Other(text));
                        }
                    }
                }
                _ = self.shared.announce.cancelled(), if !draining => draining = true,
            }
            let in_rotation = slices.values().any(|ready| *ready);
            seen_in_rotation |= in_rotation;
            if draining && seen_in_rotation && !in_rotation && !reported {
                reported = true;
                self.shared.endpoint_gone();
                tracing::info!(
                    "Endpoint out of rotation: the control plane marked it not ready or removed it"
                );
            }
        }
    }

    fn note_slice(&self, slices: &mut HashMap<String, bool>, s: &EndpointSlice) {
        let Some(name) = s.metadata.name.clone() else {
            return;
        };
        let uid = self.uid.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ours = s.endpoints.iter().flatten().find(|e| {
            e.target_ref.as_ref().is_some_and(|r| {
                r.kind.as_deref().unwrap_or("Pod") == "Pod"
                    && r.name.as_deref() == Some(self.settings.pod.as_str())
                    && r.namespace
                        .as_deref()
                        .is_none_or(|ns| ns == self.settings.namespace)
                    && match (&uid, &r.uid) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            })
        });
        match ours {
            // An unset `ready` means ready (the API's documented reading).
            Some(e) => {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                slices.insert(name, ready);
            }
            None => {
                slices.remove(&name);
            }
        }
    }

    /// Watches this pod: its uid, and a deletion's grace period.
    async fn watch_pod(&self) {
        let Some(c) = self.clients().await else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(c.api.clone(), &self.settings.namespace);
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.settings.pod));
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        let mut limited = false;
        while let Some(ev) = stream.next().await {
            let pod = match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                Ok(_) => continue,
                Err(e) => {
                    self.failed("watch_pod", Failure::Other(e.to_string()));
                    continue;
                }
            };
            if let Some(uid) = &pod.metadata.uid {
                *self.uid.lock().unwrap_or_else(|p| p.into_inner()) = Some(uid.clone());
            }
            if limited || pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            limited = true;
            let Some(secs) = pod.metadata.deletion_grace_period_seconds else {
                continue;
            };
            // The grace counts from when the deletion was seen here: the watch delivers it
            // within moments, and the node's clock need not agree with the API server's.
            let grace = self.scaled(Duration::from_secs(secs.max(0).unsigned_abs()));
            let configured = self.shared.config.drain.grace;
            if grace < configured {
                tracing::info!(
                    deletion_grace_s = secs,
                    configured_s = configured.as_secs_f64(),
                    "The pod was deleted with a shorter grace period: the deadline moves earlier"
                );
            }
            self.shared.limit_grace(grace, Duration::ZERO);
        }
    }

    /// Keeps the pod-deletion-cost annotation in step with the in-flight work: at most one
    /// patch per [`DELETION_COST_MIN_GAP`], and only when the bucket changes. Stops when a drain
    /// starts (the pod is leaving anyway).
    async fn deletion_cost(&self) {
        if !self.settings.deletion_cost {
            return;
        }
        let gap = self.scaled(DELETION_COST_MIN_GAP);
        let tick = self
            .scaled(Duration::from_secs(1))
            .max(Duration::from_millis(20));
        let mut written: Option<i32> = None;
        let mut last_try: Option<Instant> = None;
        loop {
            if self.shared.announce.is_cancelled() {
                return;
            }
            let cost = deletion_cost(self.shared.in_flight());
            let due = last_try.is_none_or(|t| t.elapsed() >= gap);
            if written != Some(cost) && due {
                last_try = Some(Instant::now());
                if self.patch_cost(cost).await {
                    written = Some(cost);
                    self.shared.metrics.deletion_cost.set(i64::from(cost));
                    tracing::debug!(cost, "Pod deletion cost written");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.shared.announce.cancelled() => return,
            }
        }
    }

    async fn patch_cost(&self, cost: i32) -> bool {
        let Some(pods) = self.pods().await else {
            return false;
        };
        let patch =
            json!({"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost.to_string()}}});
        let pod = &self.settings.pod;
        let op = Op::new("patch", "pods", &self.settings.namespace).named(pod);
        self.call("set_deletion_cost", async {
            pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .op(op)
        })
        .await
        .is_some()
    }

    /// Posts the final drain report as an Event on the pod, within `bound`.
    pub async fn post_report(&self, report: &DrainReport, bound: Duration) {
        let post = async {
            let c = self.clients().await?;
            let api: Api<Event> = Api::namespaced(c.api.clone(), &self.settings.namespace);
            let event = self.event(report);
            let op = Op::new("create", "events", &self.settings.namespace);
            self.call("post_drain_event", async {
                api.create(&PostParams::default(), &event).await.op(op)
            })
            .await
        };
        match tokio::time::timeout(bound, post).await {
            Ok(Some(_)) => tracing::info!(
                reason = event_reason(report),
                "Drain report posted as an Event on the pod"
            ),
            Ok(None) => {}
            Err(_) => self.failed("post_drain_event", Failure::Timeout),
        }
    }

    fn event(&self, r: &DrainReport) -> Event {
        let subject = lameduck_kube::events::Subject::pod(
            &self.settings.namespace,
            &self.settings.pod,
            self.uid.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        );
        lameduck_kube::events::event(
            &subject,
            event_reason(r),
            event_message(r),
            event_reason(r) == "DrainTruncated",
            "lameduck-gate",
            "Drain",
        )
    }
}

/// `Drained` when every request ended its own way, `DrainTruncated` when some were cut.
pub fn event_reason(r: &DrainReport) -> &'static str {
    if r.lost() > 0 {
        "DrainTruncated"
    } else {
        "Drained"
    }
}

/// The Event's message: the counts, in one line.
pub fn event_message(r: &DrainReport) -> String {
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let mut m = match r.total {
        Some(t) => format!("drained in {}", secs(t)),
        None => format!("drain ended with {} in flight", r.in_flight),
    };
    m.push_str(&format!(
        " (trigger {}): {} in flight at start, {} completed, {} truncated, {} upstream errors, {} client aborts, {} refused",
        r.trigger.as_str(),
        r.in_flight_at_start,
        r.completed,
        r.truncated,
        r.upstream_errors,
        r.client_aborts,
        r.rejected + r.overloaded,
    ));
    if let Some(g) = r.endpoint_gone {
        m.push_str(&format!("; endpoint out of rotation after {}", secs(g)));
    }
    if let Some(l) = r.data_plane_lag {
        m.push_str(&format!(", data-plane lag {}", secs(l)));
    }
    if let Some(l) = r.propagation_lag {
        m.push_str(&format!("; last arrival {} after unready", secs(l)));
    }
    m
}

/// The deletion cost for `in_flight` requests: 0 when idle, else the power of two at or below
/// the count (1, 2, 4, 8, …), so that it changes with the load's size, not every request.
pub fn deletion_cost(in_flight: u64) -> i32 {
    if in_flight == 0 {
        return 0;
    }
    let bucket = 63 - in_flight.leading_zeros();
    1i32 << bucket.min(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_buckets() {
        let got: Vec<i32> = [0, 1, 2, 3, 4, 7, 8, 100, u64::MAX]
            .iter()
            .map(|n| deletion_cost(*n))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 2, 4, 4, 8, 64, 1 << 30]);
    }
}
