//! The agent's metrics, and the small server for `/metrics` and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoticeLabel {
    provider: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    operation: &'static str,
}

/// Handles to every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    notices: Family<NoticeLabel, Counter>,
    drains: Family<ResultLabel, Counter>,
    removals: Family<ResultLabel, Counter>,
    kube_errors: Family<OpLabel, Counter>,
    pods_ended: Family<ResultLabel, Counter>,
    streams: Family<OutcomeLabel, Counter>,
    /// Seconds from the notice to the pods' deadline, for the last notice acted on.
    pub budget: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lameduck_agent");
        let notices = Family::default();
        registry.register(
            "notices",
            "Notices seen, by provider and kind (reclaim, maintenance, advisory)",
            notices.clone(),
        );
        let drains = Family::default();
        registry.register(
            "gate_drains",
            "Gated pods told to drain, by result (ok, failed, skipped: no address)",
            drains.clone(),
        );
        let removals = Family::default();
        registry.register(
            "pod_removals",
            "Pods removed through the API, by how (deleted, evicted, blocked, failed)",
            removals.clone(),
        );
        let kube_errors = Family::default();
        registry.register(
            "kube_errors",
            "Kubernetes API calls that failed, by operation",
            kube_errors.clone(),
        );
        let pods_ended = Family::default();
        registry.register(
            "gated_pods_ended",
            "Gated pods drained for a notice, by result from their gate's report (in_time: drained before the instance went; cut_by_the_end: still busy then; unknown: no report)",
            pods_ended.clone(),
        );
        let streams = Family::default();
        registry.register(
            "streams",
            "Requests in flight on gated pods during a notice's drain, by how they ended (completed, truncated with the terminal event, upstream_error), from the gates' reports",
            streams.clone(),
        );
        let budget = Gauge::default();
        registry.register(
            "notice_budget_seconds",
            "From the last notice acted on to the pods' deadline",
            budget.clone(),
        );
        Metrics {
            registry,
            notices,
            drains,
            removals,
            kube_errors,
            pods_ended,
            streams,
            budget,
        }
    }

    /// Creates every series whose label values are known, at zero. A counter series that first
    /// appears at 1 is invisible to Prometheus's `increase()`, so without this a node's first
    /// notice, or an agent's first drain, would never show on a dashboard or trip an alert.
    pub fn start_at_zero(&self, provider: &'static str) {
        for kind in ["reclaim", "maintenance", "advisory"] {
            let _ = self
                .notices
                .get_or_create_owned(&NoticeLabel { provider, kind });
        }
        for result in ["ok", "failed", "skipped"] {
            let _ = self.drains.get_or_create_owned(&ResultLabel { result });
        }
        for result in ["deleted", "evicted", "blocked", "failed"] {
            let _ = self.removals.get_or_create_owned(&ResultLabel { result });
        }
        for result in ["in_time", "cut_by_the_end", "unknown"] {
            let _ = self.pods_ended.get_or_create_owned(&ResultLabel { result });
        }
        for outcome in ["completed", "truncated", "upstream_error"] {
            let _ = self.streams.get_or_create_owned(&OutcomeLabel { outcome });
        }
        for operation in [
            "read_node",
            "cordon_node",
            "uncordon_node",
            "delete_pod",
            "evict_pod",
            "post_event",
            "watch_pods",
        ] {
            let _ = self.kube_errors.get_or_create_owned(&OpLabel { operation });
        }
    }

    /// Counts a notice.
    pub fn notice(&self, provider: &'static str, kind: &'static str) {
        self.notices
            .get_or_create(&NoticeLabel { provider, kind })
            .inc();
    }

    /// Counts a gate drain.
    pub fn drain(&self, result: &'static str) {
        let _ = self
            .drains
            .get_or_create_owned(&ResultLabel { result })
            .inc();
    }

    /// Counts a pod removal.
    pub fn removal(&self, result: &'static str) {
        let _ = self
            .removals
            .get_or_create_owned(&ResultLabel { result })
            .inc();
    }

    /// Counts a gated pod whose drain is over.
    pub fn pod_ended(&self, result: &'static str) {
        let _ = self
            .pods_ended
            .get_or_create_owned(&ResultLabel { result })
            .inc();
    }

    /// Counts requests by how they ended.
    pub fn streams(&self, outcome: &'static str, n: u64) {
        self.streams
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }

    /// Counts a failed API call.
    pub fn kube_error(&self, operation: &'static str) {
        let _ = self
            .kube_errors
            .get_or_create_owned(&OpLabel { operation })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    lameduck_kube::admin::serve(listener, Arc::new(move || metrics.encode())).await;
}
