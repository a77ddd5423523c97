//! Rollouts: the only replica taken down first, maxSurge 0 with a slow start, terminating
//! surges, taking down more than the warm headroom; very long drains. Deployments,
//! LeaderWorkerSets (in groups) and Argo canary Rollouts.

use std::time::Duration;

use lameduck_manifest::{Workload, WorkloadKind};
use lameduck_timeline::terminating_peak;
use serde_json::Value;

use super::{
    Ctx, LONG_LIVED_WORK, MAXSURGE_ZERO_SLOW_START, MAXUNAVAILABLE_ABOVE_HEADROOM, Place,
    SINGLE_REPLICA_OUTAGE, Site, TERMINATING_SURGE, secs,
};
use crate::facts;

/// Annotation: how many pods the workload can lose and still carry its load (`2`, or `25%`).
pub const HEADROOM_ANNOTATION: &str = "lameduck.io/warm-headroom";

/// Extra pods (beyond replicas + maxSurge) a rollout may hold terminating before
/// `terminating-surge` fires: one 8-GPU node's worth.
pub const TERMINATING_SURGE_THRESHOLD: i32 = 8;

/// Why a workload's requests are unbounded or longer than a grace period should be (the
/// annotation says `unbounded`, or more than 10 minutes).
fn unbounded_work(w: &Workload<'_>, flag: Option<Duration>) -> Option<String> {
    let annotations = facts::WorkloadAnnotations::of(w);
    let said = annotations
        .view()
        .get(facts::MAX_REQUEST_ANNOTATION)?
        .trim();
    if said.eq_ignore_ascii_case("unbounded") {
        return Some(format!(
            "`{}: unbounded`: streams or WebSockets with no end",
            facts::MAX_REQUEST_ANNOTATION
        ));
    }
    let (d, _) = facts::max_request(w, flag)?;
    (d > Duration::from_secs(600)).then(|| format!("requests of up to {}", secs(d)))
}

/// What `maxunavailable-above-headroom` needs, kept until the autoscalers are known.
pub(crate) struct Headroom {
    replicas: i32,
    unit: &'static str,
    unavailable: i32,
    unavailable_set: bool,
    /// From the annotation: pods that can be lost, and what said so.
    annotated: Option<(i32, String)>,
    place: Place,
}

/// The rollout rules of one workload; returns what the headroom rule needs once the
/// autoscalers are known.
pub(crate) fn check(ctx: &mut Ctx<'_>, w: &Workload<'_>) -> Option<Headroom> {
    let o = w.object;
    let grace = w.grace();
    // A handoff gateway's long grace period is the point: it holds the streams, on a CPU pod.
    let gateway = w
        .model
        .gate
        .as_ref()
        .is_some_and(|g| g.mode == lameduck_pod::GateMode::Gateway);
    if grace > Duration::from_secs(600) && !gateway {
        ctx.emit(
            LONG_LIVED_WORK,
            w.into(),
            &w.grace_path(),
            None,
            format!(
                "a {} grace period: every rollout keeps old pods (and their GPUs) for up to that long",
                secs(grace)
            ),
            "consider rainbow deployments: one Deployment per release, each retired when its in-flight work reaches zero".into(),
        );
    } else if let Some(why) = unbounded_work(w, ctx.opts.max_request) {
        ctx.emit(
            LONG_LIVED_WORK,
            w.into(),
            &format!("metadata.annotations.{}", facts::MAX_REQUEST_ANNOTATION),
            None,
            format!("{why}: no grace period can wait for it, so every drain cuts it"),
            "consider rainbow deployments: one Deployment per release, each retired when its in-flight work reaches zero; clients of unbounded streams must reconnect".into(),
        );
    }
    let replicas = w.replicas.unwrap_or(1).max(1);
    let inference = w.model.inference();
    let unit = if w.kind == WorkloadKind::LeaderWorkerSet {
        "group"
    } else {
        "replica"
    };
    let recreate = w.kind == WorkloadKind::Deployment
        && o.value
            .pointer("/spec/strategy/type")
            .and_then(Value::as_str)
            == Some("Recreate");
    let ru = w.rolling_update();
    if replicas == 1 && w.replicas.is_some() {
        let why = if recreate {
            Some((
                "spec.strategy.type",
                "the Recreate strategy stops the old pod before the new one starts".to_owned(),
            ))
        } else {
            ru.filter(|r| r.max_unavailable >= 1).map(|r| {
                (
                    w.strategy_path(),
                    format!(
                        "maxUnavailable{} lets the rollout take it down ({} {unit} unavailable) before its replacement is ready",
                        if r.unavailable_set { "" } else { " (by default)" },
                        r.max_unavailable
                    ),
                )
            })
        };
        if let Some((path, why)) = why {
            let path = if recreate || ru.is_some_and(|r| r.unavailable_set) {
                path.to_owned()
            } else {
                "spec.replicas".to_owned()
            };
            ctx.emit(
                SINGLE_REPLICA_OUTAGE,
                w.into(),
                &path,
                None,
                format!(
                    "one {unit}, and {why}: every rollout is a full outage{}",
                    if inference { " for as long as the model takes to load" } else { "" }
                ),
                match w.kind {
                    WorkloadKind::LeaderWorkerSet => "set rolloutStrategy.rollingUpdateConfiguration to maxSurge: 1, maxUnavailable: 0 (a second group runs until the new one is ready)".into(),
                    _ => "use a RollingUpdate with maxSurge: 1 and maxUnavailable: 0 (the replacement is ready before the old pod drains), or run two replicas".into(),
                },
            );
        }
    }
    let ru = ru?;
    let surge = ru.max_surge;
    let unavailable = ru.max_unavailable;
    // Time for a new pod to become ready: its readiness probe's first success after start.
    let ready = w
        .model
        .containers
        .iter()
        .filter_map(|c| c.readiness.map(|p| p.time_to_succeed(Duration::ZERO)))
        .max()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1));
    let slow_start = inference || ready >= Duration::from_secs(30);
    if surge == 0 && slow_start && ru.surge_set {
        ctx.emit(
            MAXSURGE_ZERO_SLOW_START,
            w.into(),
            &format!("{}.maxSurge", w.strategy_path()),
            None,
            format!(
                "maxSurge is 0, so each step of a rollout first removes {unavailable} serving {unit}(s) and only then starts their replacements, which take {} or more to become ready: capacity drops for the whole cold start",
                if inference { "a model load (30-90 s)".to_owned() } else { secs(ready) }
            ),
            "allow a surge (maxSurge: 1) and keep maxUnavailable: 0, so replacements are warm before old pods drain".into(),
        );
    }
    // How long an old pod stays terminating: its grace period, or less when its work is
    // known to end sooner.
    let hook = w
        .model
        .containers
        .iter()
        .filter_map(|c| c.termination.pre_stop.duration())
        .max()
        .unwrap_or_default();
    let drain = match facts::max_request(w, ctx.opts.max_request) {
        Some((max, _)) => grace.min(hook + max.max(ctx.opts.convergence)),
        None => grace,
    };
    // A new pod of an inference server loads its model first (30-90 s): count the low end.
    let ready_for_steps = if inference {
        ready.max(Duration::from_secs(30))
    } else {
        ready
    };
    let terminating = terminating_peak(replicas, surge + unavailable, ready_for_steps, drain);
    let strategy_written = o.value.pointer("/spec/strategy").is_some()
        || o.value.pointer("/spec/rolloutStrategy").is_some();
    if terminating - surge > TERMINATING_SURGE_THRESHOLD {
        ctx.emit(
            TERMINATING_SURGE,
            w.into(),
            if strategy_written { w.strategy_path() } else { "spec.replicas" },
            None,
            format!(
                "a rollout replaces {} {unit}(s) every {} or so while each old one takes up to {} to terminate: it ends with about {} at once ({replicas} running + {terminating} terminating), {} more than replicas + maxSurge",
                surge + unavailable,
                secs(ready_for_steps),
                secs(drain),
                replicas + terminating,
                terminating - surge
            ),
            "budget the capacity for the terminating pods, slow the rollout (smaller maxSurge/maxUnavailable, minReadySeconds), or retire old pods by their in-flight work (rainbow deployments)".into(),
        );
    }
    // Warm headroom: from the annotation, else (in `headroom`) from the HPA's utilization
    // target.
    let annotated = o.annotation(HEADROOM_ANNOTATION).and_then(|v| {
        let v = v.trim();
        match v.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .ok()
                .map(|p| (f64::from(replicas) * p / 100.0).floor() as i32),
            None => v.parse::<i32>().ok(),
        }
        .map(|h| (h, format!("the `{HEADROOM_ANNOTATION}` annotation")))
    });
    let path = if ru.unavailable_set {
        format!("{}.maxUnavailable", w.strategy_path())
    } else if strategy_written {
        w.strategy_path().to_owned()
    } else {
        "spec.replicas".to_owned()
    };
    Some(Headroom {
        replicas,
        unit,
        unavailable,
        unavailable_set: ru.unavailable_set,
        annotated,
        place: Site::from(w).place(&path),
    })
}

/// `maxunavailable-above-headroom`, once the autoscalers are known.
pub(crate) fn headroom(ctx: &mut Ctx<'_>, h: &Headroom, hpa_utilization: Option<i32>) {
    let Headroom {
        replicas,
        unit,
        unavailable,
        unavailable_set,
        ..
    } = *h;
    let headroom = h.annotated.clone().or_else(|| {
        hpa_utilization.filter(|u| *u > 0 && *u <= 100).map(|u| {
            let spare = f64::from(replicas) * f64::from(100 - u) / 100.0;
            (
                spare.floor() as i32,
                format!("an HPA that keeps pods at {u}% utilization, on {replicas} replicas"),
            )
        })
    });
    if let Some((headroom, from)) = headroom
        && unavailable > headroom.max(0)
    {
        let default = if !unavailable_set {
            " (the default)"
        } else {
            ""
        };
        ctx.emit_at(
            MAXUNAVAILABLE_ABOVE_HEADROOM,
            &h.place,
            None,
            format!(
                "maxUnavailable{default} lets a rollout take {unavailable} {unit}(s) out of service at once, but the warm headroom is {} ({from}): the others get more load than they can carry, and streams queue or fail",
                headroom.max(0)
            ),
            format!(
                "set maxUnavailable to {} or less and let maxSurge bring replacements up first",
                headroom.max(0)
            ),
        );
    }
}
