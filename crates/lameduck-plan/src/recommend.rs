//! Recommendations: the drain budget and the settings around it, each with its arithmetic.
//! Every number comes from [`lameduck_timeline`]: the budget rule, the convergence window and
//! probe timing are computed there and nowhere else.

use std::time::Duration;

use lameduck_manifest::facts::Spot;
use lameduck_timeline::{
    Budget, Convergence, DEFAULT_CONVERGENCE_WINDOW, DEFAULT_KILL_MARGIN, Probe,
};
use serde::Serialize;

use crate::latency::{Latency, trim};
use crate::spec::{FleetSpec, PodModel, Shutdown};

/// One recommended setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// What it sets (a manifest field or a gate flag).
    pub setting: &'static str,
    /// The recommended value.
    pub value: String,
    /// The value in the current spec, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// How the value was computed.
    pub arithmetic: String,
}

/// The inputs of the recommendations.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Request durations.
    pub latency: &'a Latency,
    /// Which percentile the grace period must cover (default 99.9).
    pub percentile: f64,
    /// Mean request rate (requests per second).
    pub rate: f64,
    /// The spot provider, if the pods run on spot capacity.
    pub spot: Option<Spot>,
}

/// The recommendations and the fleet they describe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// One entry per setting.
    pub recommendations: Vec<Recommendation>,
    /// Pods needed to carry the load (Little's law), and the spare ones.
    pub needed_pods: u32,
    /// Replicas beyond what the load needs.
    pub spare_pods: u32,
    /// On spot: the longest request that survives a preemption, and the share of requests
    /// longer than that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spot_cap: Option<SpotCap>,
    /// The fleet with every recommendation applied (what `--compare` simulates).
    pub fleet: FleetSpec,
}

/// The cap on request length on spot capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpotCap {
    /// The provider's name.
    pub provider: &'static str,
    /// Seconds of notice the pods get.
    pub window: f64,
    /// Longest request that still finishes (seconds).
    pub cap: f64,
    /// Share of requests longer than the cap (0–1).
    pub share_above: f64,
}

/// Readiness probe period recommended with the gate: unready within one period of a drain.
pub const READY_PERIOD: Duration = Duration::from_secs(2);
/// Startup probe period.
pub const STARTUP_PERIOD: Duration = Duration::from_secs(5);
/// Liveness: the gate's `/live` every 10 s, restart after 3 misses.
pub const LIVE_PERIOD: Duration = Duration::from_secs(10);
/// Liveness failure threshold.
pub const LIVE_FAILURES: u32 = 3;

fn s(d: Duration) -> String {
    format!("{}s", trim(d.as_secs_f64()))
}

/// Computes the recommendations for `current`.
pub fn plan(current: &FleetSpec, i: &Inputs<'_>) -> Plan {
    let mut recs = Vec::new();
    let lag = current.propagation_lag;
    // The pod's own convergence window (its gate's --convergence-max, its preStop sleep, or
    // the default), widened to cover the measured lag: the window lint and inject use.
    let window = match current.pod.shutdown {
        Shutdown::Gate { convergence, .. } => convergence.max,
        Shutdown::Plain { pre_stop, .. } => pre_stop.max(DEFAULT_CONVERGENCE_WINDOW),
    };
    let conv = Convergence::covering_window(lag, window);
    let margin = DEFAULT_KILL_MARGIN;
    // The longest request to cover: the percentile of real data, or the longest request
    // itself when that is all that is known (the figure lint and inject use).
    let (request, from) = match i.latency.only_max() {
        Some(max) => (
            max,
            i.latency
                .longest_from
                .clone()
                .unwrap_or_else(|| "--max-request".into()),
        ),
        None => (
            i.latency.percentile(i.percentile),
            format!("p{} of {}", trim(i.percentile), i.latency.source),
        ),
    };
    let need = lameduck_pod::grace_need_gated(conv.max, margin, (request, from));
    let grace = Duration::from_secs(need.seconds());
    recs.push(Recommendation {
        setting: "terminationGracePeriodSeconds",
        value: grace.as_secs().to_string(),
        current: Some(current.pod.grace.as_secs().to_string()),
        arithmetic: format!(
            "{}{}",
            need.explain(),
            if i.latency.overflow > 0.0 {
                format!(
                    " ({}% of the histogram lies above its top bucket: the percentile is a lower bound)",
                    trim(i.latency.overflow * 100.0)
                )
            } else {
                String::new()
            }
        ),
    });
    let current_conv = match current.pod.shutdown {
        Shutdown::Gate { convergence, .. } => Some(format!(
            "min {}, max {}",
            s(convergence.min),
            s(convergence.max)
        )),
        Shutdown::Plain { pre_stop, .. } if !pre_stop.is_zero() => {
            Some(format!("preStop sleep {}", s(pre_stop)))
        }
        Shutdown::Plain { .. } => Some("none".into()),
    };
    recs.push(Recommendation {
        setting: "gate --convergence-min / --convergence-max",
        value: format!("{} / {}", s(conv.min), s(conv.max)),
        current: current_conv,
        arithmetic: format!(
            "min = max(propagation lag {}, {}); max = max(2 × lag = {}, the pod's window {}): requests that still arrive are served, not refused",
            s(lag),
            s(Convergence::default().min),
            s(lag.saturating_mul(2)),
            s(window)
        ),
    });
    recs.push(Recommendation {
        setting: "lifecycle.preStop",
        value: "httpGet /drain on the gate's admin port".into(),
        current: Some(match current.pod.shutdown {
            Shutdown::Gate { .. } => "the gate's /drain".into(),
            Shutdown::Plain { pre_stop, .. } if pre_stop.is_zero() => "none".into(),
            Shutdown::Plain { pre_stop, .. } => format!("{} long", s(pre_stop)),
        }),
        arithmetic: format!(
            "blocks until in-flight work is done or the deadline (grace {} − margin {} = {}) is reached; the engine gets SIGTERM only then",
            s(grace),
            s(margin),
            s(Budget {
                grace,
                already_spent: Duration::ZERO,
                margin
            }
            .available())
        ),
    });
    let startup_failures =
        (current.pod.cold_start.as_secs_f64() * 2.0 / STARTUP_PERIOD.as_secs_f64()).ceil() as u32;
    let startup_failures = startup_failures.max(3);
    let ready_probe = Probe {
        period: READY_PERIOD,
        failure_threshold: 1,
        ..Probe::default()
    };
    let ready_after = ready_probe.time_to_succeed(current.pod.cold_start);
    recs.push(Recommendation {
        setting: "readinessProbe",
        value: format!(
            "httpGet /ready (gate), periodSeconds {}, failureThreshold 1",
            READY_PERIOD.as_secs()
        ),
        current: Some(if current.pod.ready_after.is_zero() {
            "none".into()
        } else {
            format!("ready {} after start", s(current.pod.ready_after))
        }),
        arithmetic: format!(
            "unready at most {} after a drain starts (period × failureThreshold); ready {} after start (first probe after the {} cold start)",
            s(ready_probe.time_to_fail()),
            s(ready_after),
            s(current.pod.cold_start)
        ),
    });
    recs.push(Recommendation {
        setting: "startupProbe",
        value: format!(
            "periodSeconds {}, failureThreshold {startup_failures}",
            STARTUP_PERIOD.as_secs()
        ),
        current: None,
        arithmetic: format!(
            "{} × {startup_failures} = {} ≥ 2 × cold start {}: a slow start is not a restart",
            s(STARTUP_PERIOD),
            s(STARTUP_PERIOD * startup_failures),
            s(current.pod.cold_start)
        ),
    });
    let live = Probe {
        period: LIVE_PERIOD,
        failure_threshold: LIVE_FAILURES,
        ..Probe::default()
    };
    recs.push(Recommendation {
        setting: "livenessProbe",
        value: format!(
            "httpGet /live (gate), periodSeconds {}, failureThreshold {LIVE_FAILURES}",
            LIVE_PERIOD.as_secs()
        ),
        current: None,
        arithmetic: format!(
            "restart after {} of a dead process ({} × {LIVE_FAILURES}); /live never fails for load or a drain, so busy engines are not restarted",
            s(live.time_to_fail()),
            s(LIVE_PERIOD)
        ),
    });
    // Warm headroom: Little's law gives the requests in flight; each pod runs `concurrency`.
    let mean = i.latency.mean().as_secs_f64();
    let in_flight = i.rate * mean;
    let per_pod = f64::from(current.pod.concurrency);
    let needed = ((in_flight / per_pod).ceil() as u32).max(1);
    let replicas = current.replicas;
    let spare = replicas.saturating_sub(needed);
    let quarter_up = replicas.div_ceil(4).max(1);
    let quarter_down = replicas / 4;
    let max_unavailable = spare.min(quarter_down);
    let max_surge = quarter_up;
    recs.push(Recommendation {
        setting: "strategy.rollingUpdate",
        value: format!("maxSurge {max_surge}, maxUnavailable {max_unavailable}"),
        current: Some(format!(
            "maxSurge {}, maxUnavailable {}",
            current.max_surge, current.max_unavailable
        )),
        arithmetic: format!(
            "in flight = rate {}/s × mean {} = {}; pods needed = ⌈{} / {} per pod⌉ = {needed}; spare = {replicas} − {needed} = {spare}; maxUnavailable = min(spare, 25% of {replicas} rounded down) = {max_unavailable}; maxSurge = 25% rounded up = {max_surge}, so replacements are warm before old pods drain",
            trim(i.rate),
            s(Duration::from_secs_f64(mean)),
            trim(in_flight),
            trim(in_flight),
            current.pod.concurrency
        ),
    });
    let pdb_unavailable = spare.max(1);
    let pdb_min = replicas.saturating_sub(pdb_unavailable);
    recs.push(Recommendation {
        setting: "PodDisruptionBudget",
        value: format!("maxUnavailable {pdb_unavailable}"),
        current: current
            .pdb_min_available
            .map(|m| format!("{} may be unavailable", replicas.saturating_sub(m))),
        arithmetic: if spare == 0 {
            format!(
                "no warm headroom ({needed} of {replicas} pods carry the load): 1, so node drains can proceed; add replicas to absorb a drain without queueing"
            )
        } else {
            format!("the spare pods: {replicas} − {needed} needed = {pdb_unavailable}")
        },
    });
    let spot_cap = i.spot.map(|sp| {
        let window = sp.pod_window();
        let cap = Budget::request_cap(window, conv.max, margin);
        let share = i.latency.share_above(cap);
        recs.push(Recommendation {
            setting: "max request length on spot",
            value: s(cap),
            current: None,
            arithmetic: format!(
                "{} pods get {}: − convergence max {} − margin {} = {}; {}% of requests run longer and are cut on a preemption",
                sp.name(),
                s(window),
                s(conv.max),
                s(margin),
                s(cap),
                trim(share * 100.0)
            ),
        });
        SpotCap {
            provider: sp.name(),
            window: window.as_secs_f64(),
            cap: cap.as_secs_f64(),
            share_above: share,
        }
    });
    let fleet = FleetSpec {
        name: format!("{} (recommended)", current.name),
        replicas,
        pod: PodModel {
            grace,
            shutdown: Shutdown::Gate {
                convergence: conv,
                margin,
            },
            cold_start: current.pod.cold_start,
            ready_after,
            concurrency: current.pod.concurrency,
        },
        max_surge,
        max_unavailable,
        pdb_min_available: Some(pdb_min),
        pods_per_node: current.pods_per_node,
        propagation_lag: lag,
    };
    Plan {
        recommendations: recs,
        needed_pods: needed,
        spare_pods: spare,
        spot_cap,
        fleet,
    }
}
