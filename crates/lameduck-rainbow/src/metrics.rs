//! The controller's metrics, served on `--admin` with `/healthz`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RainbowLabel {
    namespace: String,
    rainbow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColourLabel {
    namespace: String,
    rainbow: String,
    colour: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    operation: &'static str,
}

/// Handles to every metric.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    colours: Family<RainbowLabel, Gauge>,
    in_flight: Family<ColourLabel, Gauge>,
    retirements: Family<ReasonLabel, Counter>,
    routes: Counter,
    deletions: Counter,
    kube_errors: Family<OpLabel, Counter>,
    gate_errors: Counter,
    leader: Gauge,
    /// The colours with an in-flight series, per rainbow, so that a deleted colour's series
    /// goes with it.
    shown: Mutex<HashMap<(String, String), HashSet<String>>>,
}

/// The operations counted in `kube_errors_total`.
pub const OPERATIONS: &[&str] = &[
    "read_objects",
    "create_deployment",
    "scale_deployment",
    "delete_deployment",
    "route_service",
    "autoscaler",
    "write_status",
    "post_event",
    "lease",
];

impl Metrics {
    /// Registers every metric, with every series whose labels are known at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lameduck_rainbow");
        let colours = Family::default();
        registry.register(
            "colours",
            "Colours (Deployments) alive per RainbowDeployment",
            colours.clone(),
        );
        let in_flight = Family::default();
        registry.register(
            "in_flight",
            "Requests, streams and connections in flight on a colour's gates (-1: a gate did not answer)",
            in_flight.clone(),
        );
        let retirements: Family<ReasonLabel, Counter> = Family::default();
        registry.register(
            "retirements",
            "Old colours retired (scaled to zero), by reason: quiet (nothing in flight for the quiet period) or max_age",
            retirements.clone(),
        );
        let routes = Counter::default();
        registry.register(
            "routes",
            "Times the Services were moved to a new colour",
            routes.clone(),
        );
        let deletions = Counter::default();
        registry.register(
            "deletions",
            "Retired colours' Deployments deleted once their pods were gone",
            deletions.clone(),
        );
        let kube_errors: Family<OpLabel, Counter> = Family::default();
        registry.register(
            "kube_errors",
            "Kubernetes API calls that failed, by operation",
            kube_errors.clone(),
        );
        let gate_errors = Counter::default();
        registry.register(
            "gate_errors",
            "Gates whose /status could not be read through the pod proxy",
            gate_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        for reason in ["quiet", "max_age"] {
            let _ = retirements.get_or_create_owned(&ReasonLabel { reason });
        }
        for operation in OPERATIONS {
            let _ = kube_errors.get_or_create_owned(&OpLabel { operation });
        }
        Metrics {
            registry,
            colours,
            in_flight,
            retirements,
            routes,
            deletions,
            kube_errors,
            gate_errors,
            leader,
            shown: Mutex::new(HashMap::new()),
        }
    }

    /// Sets one rainbow's gauges: its colours and each one's work (`None`: unknown).
    pub fn rainbow(&self, namespace: &str, rainbow: &str, colours: &[(String, Option<u64>)]) {
        let key = (namespace.to_owned(), rainbow.to_owned());
        self.colours
            .get_or_create_owned(&RainbowLabel {
                namespace: key.0.clone(),
                rainbow: key.1.clone(),
            })
            .set(i64::try_from(colours.len()).unwrap_or(i64::MAX));
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let now: HashSet<String> = colours.iter().map(|(c, _)| c.clone()).collect();
        let label = |colour: &str| ColourLabel {
            namespace: key.0.clone(),
            rainbow: key.1.clone(),
            colour: colour.to_owned(),
        };
        if let Some(before) = shown.get(&key) {
            for gone in before.difference(&now) {
                self.in_flight.remove(&label(gone));
            }
        }
        for (colour, work) in colours {
            let v = work.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
            self.in_flight.get_or_create_owned(&label(colour)).set(v);
        }
        shown.insert(key, now);
    }

    /// A RainbowDeployment that is gone: its series go too.
    pub fn forget(&self, namespace: &str, rainbow: &str) {
        self.rainbow(namespace, rainbow, &[]);
        self.colours.remove(&RainbowLabel {
            namespace: namespace.to_owned(),
            rainbow: rainbow.to_owned(),
        });
    }

    /// Counts a retirement (`quiet` or `max_age`).
    pub fn retired(&self, reason: &'static str) {
        let _ = self
            .retirements
            .get_or_create_owned(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a move of the Services.
    pub fn routed(&self) {
        self.routes.inc();
    }

    /// Counts a deleted colour.
    pub fn deleted(&self) {
        self.deletions.inc();
    }

    /// Counts a failed API call.
    pub fn kube_error(&self, operation: &'static str) {
        let _ = self
            .kube_errors
            .get_or_create_owned(&OpLabel { operation })
            .inc();
    }

    /// Counts gates that did not answer.
    pub fn gate_errors(&self, n: u64) {
        self.gate_errors.inc_by(n);
    }

    /// Whether this replica leads.
    pub fn leader(&self, leads: bool) {
        self.leader.set(i64::from(leads));
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
