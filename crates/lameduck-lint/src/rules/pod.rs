//! The pod's own drain: the grace period against what it must fit, the preStop, readiness and
//! liveness, spot capacity; and Knative's revision timeout.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use lameduck_manifest::Workload;
use lameduck_pod::Container;
use lameduck_timeline::PreStop;

use super::{
    Ctx, GRACE_TOO_SHORT, KNATIVE_TIMEOUT_TOO_SHORT, LIVENESS_KILLS_BUSY_ENGINE,
    LIVENESS_SAME_AS_READINESS, NO_PRESTOP, NO_READINESS, PRESTOP_BEYOND_GRACE,
    READINESS_NOT_DRAIN_AWARE, READINESS_SLOWER_THAN_CONVERGENCE, SPOT_GRACE_EXCEEDS_NOTICE, secs,
};
use crate::facts::{self, MaxRequestSource};

/// A liveness probe of an inference engine's own health must tolerate this much silence: an
/// engine busy with long generations can miss a few checks.
pub(crate) const LIVENESS_MIN_WINDOW: Duration = Duration::from_secs(30);

/// The grace-period rules, for the serving container the pod model picked (or every serving
/// container when it cannot pick one), and the probe rules for each serving container.
pub(crate) fn workload(ctx: &mut Ctx<'_>, w: &Workload<'_>) {
    let model = &w.model;
    let gated = model.gated();
    let max = facts::max_request_described(w, ctx.opts.max_request);
    if let Some((d, MaxRequestSource::Assumed)) = facts::max_request(w, ctx.opts.max_request) {
        let what = match model.engine() {
            Some(e) => e.name.to_owned(),
            None => "an inference server (it asks for a GPU)".to_owned(),
        };
        ctx.notes.push(format!(
            "{}: looks like {what}; assuming requests of up to {} (set the `{}` annotation or --max-request)",
            w.display_name(),
            secs(d),
            facts::MAX_REQUEST_ANNOTATION
        ));
    }
    let grace = w.grace();
    let serving = model.serving_container(None).ok().flatten();
    for (i, c) in model.serving() {
        let Some(spec) = w.container(c.slot) else {
            continue;
        };
        let path = w.container_path(c.slot);
        let name = Some(c.name.as_str());
        let hook = c.termination.pre_stop.duration();
        // The preStop runs inside the grace period.
        if let Some(h) = hook
            && h >= grace
        {
            ctx.emit(
                PRESTOP_BEYOND_GRACE,
                w.into(),
                &format!("{path}.lifecycle.preStop"),
                name,
                format!(
                    "the preStop hook takes {} but the grace period is {}: the kubelet gives up on the hook when the period ends, sends SIGTERM, and SIGKILL {} later, so the server has no time to drain",
                    secs(h),
                    secs(grace),
                    secs(lameduck_timeline::KUBELET_MIN_STOP_WINDOW)
                ),
                format!(
                    "make terminationGracePeriodSeconds at least {} or shorten the hook",
                    (h + super::MARGIN).as_secs()
                ),
            );
        } else if let Some((max_req, from)) = &max
            && (serving == Some(i) || serving.is_none())
        {
            let need = model.grace_need(Some(i), (*max_req, from.clone()), ctx.opts.convergence);
            if grace.as_secs() < need.seconds() {
                let default = if model.grace_set {
                    ""
                } else {
                    " (the default)"
                };
                ctx.emit(
                    GRACE_TOO_SHORT,
                    w.into(),
                    &w.grace_path(),
                    name,
                    format!(
                        "terminationGracePeriodSeconds is {}{default}, but {}: requests in flight at a drain are killed",
                        secs(grace),
                        need.explain()
                    ),
                    format!("set terminationGracePeriodSeconds: {}", need.seconds()),
                );
            }
        }
        if c.termination.pre_stop == PreStop::None && !gated {
            ctx.emit(
                NO_PRESTOP,
                w.into(),
                &format!("{path}.lifecycle"),
                name,
                "no preStop hook and no drain gate: SIGTERM arrives while load balancers still route new requests here".into(),
                "run the server behind `lameduck gate` (see `lameduck inject`), or add a preStop that fails readiness and waits for convergence".into(),
            );
        }
        probes(ctx, w, c, spec, &path, gated);
        if let Some(spot) = facts::spot(w)
            && grace > spot.notice()
        {
            ctx.emit(
                SPOT_GRACE_EXCEEDS_NOTICE,
                w.into(),
                &w.grace_path(),
                name,
                format!(
                    "runs on {} spot capacity, whose notice is {}, but the grace period is {}: a reclaim kills the pod before its drain ends",
                    spot.name(),
                    secs(spot.notice()),
                    secs(grace)
                ),
                format!(
                    "cap requests to fit {} (minus convergence and margin), or keep long requests off spot nodes",
                    secs(spot.notice())
                ),
            );
        }
    }
}

fn probes(
    ctx: &mut Ctx<'_>,
    w: &Workload<'_>,
    c: &Container,
    spec: &core::Container,
    path: &str,
    gated: bool,
) {
    let name = Some(c.name.as_str());
    let (Some(probe_spec), Some(timing)) = (spec.readiness_probe.as_ref(), c.readiness) else {
        ctx.emit(
            NO_READINESS,
            w.into(),
            path,
            name,
            "no readiness probe: the pod gets traffic before the engine is ready, and keeps getting it while it drains".into(),
            "add a readinessProbe (with the gate: httpGet /ready on its admin port)".into(),
        );
        return;
    };
    let rpath = format!("{path}.readinessProbe");
    // Drain-aware: the gate's /ready, or an exec check of the marker the preStop creates.
    let gate_ready = gated
        && probe_spec
            .http_get
            .as_ref()
            .and_then(|h| h.path.as_deref())
            .is_some_and(|p| p == "/ready" || p == "/readyz");
    let marker = spec
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.as_ref())
        .and_then(|cmd| touched_file(&cmd.join(" ")));
    let checks_marker = marker.as_deref().is_some_and(|m| {
        probe_spec
            .exec
            .as_ref()
            .and_then(|e| e.command.as_ref())
            .is_some_and(|cmd| cmd.join(" ").contains(m))
    });
    if !gate_ready && !checks_marker {
        ctx.emit(
            READINESS_NOT_DRAIN_AWARE,
            w.into(),
            &rpath,
            name,
            match &marker {
                Some(m) => format!("the preStop creates {m}, but the readiness probe does not check it: the pod stays ready while it drains"),
                None => "the readiness probe does not change when a drain starts (no gate /ready, no drain marker): load balancers keep sending new requests to a draining pod".into(),
            },
            "probe the gate's /ready on its admin port, or have the probe fail when the preStop's marker file exists".into(),
        );
    }
    let to_fail = timing.time_to_fail();
    if to_fail > ctx.opts.convergence {
        ctx.emit(
            READINESS_SLOWER_THAN_CONVERGENCE,
            w.into(),
            &rpath,
            name,
            format!(
                "readiness takes up to {} to fail (periodSeconds × failureThreshold), longer than the {} convergence window: load balancers learn of the drain late",
                secs(to_fail),
                secs(ctx.opts.convergence)
            ),
            "lower periodSeconds or failureThreshold (e.g. periodSeconds: 2, failureThreshold: 1 against the gate's /ready)".into(),
        );
    }
    let (Some(live), Some(live_timing)) = (spec.liveness_probe.as_ref(), c.liveness) else {
        return;
    };
    let lpath = format!("{path}.livenessProbe");
    // Each mistake under its own rule: liveness making readiness's check (a drain or an
    // overload restarts the container), and liveness too impatient for a busy engine (or
    // looking at the drain marker). A probe can make both mistakes.
    if same_check(live, probe_spec) {
        let faster = live_timing.time_to_fail() <= timing.time_to_fail();
        ctx.emit(
            LIVENESS_SAME_AS_READINESS,
            w.into(),
            &lpath,
            name,
            if faster {
                format!(
                    "the liveness probe makes the readiness probe's check and gives up as fast or faster ({} against readiness's {}): when readiness fails for a drain or under load, the kubelet restarts the container instead of taking it out of rotation",
                    secs(live_timing.time_to_fail()),
                    secs(timing.time_to_fail())
                )
            } else {
                "the liveness probe makes the readiness probe's check: when readiness fails for a drain or under load long enough, the kubelet restarts the container".into()
            },
            "give liveness its own check that never looks at drain state or load (with the gate: /live)".into(),
        );
    }
    if let Some(why) = kills_busy_engine(c, live, live_timing) {
        ctx.emit(
            LIVENESS_KILLS_BUSY_ENGINE,
            w.into(),
            &lpath,
            name,
            why,
            format!(
                "make liveness tolerant (periodSeconds × failureThreshold of {} or more for an engine's own health endpoint) and never check drain state (with the gate: /live)",
                secs(LIVENESS_MIN_WINDOW)
            ),
        );
    }
}

/// Why a liveness probe would kill a busy or draining engine, if it would.
fn kills_busy_engine(
    c: &Container,
    live: &core::Probe,
    timing: lameduck_timeline::Probe,
) -> Option<String> {
    let marker = live
        .exec
        .as_ref()
        .and_then(|e| e.command.as_ref())
        .map(|cmd| cmd.join(" "))
        .filter(|cmd| cmd.contains("draining"));
    if let Some(cmd) = marker {
        return Some(format!(
            "the liveness probe checks the drain marker ({cmd}): starting a drain gets the container restarted"
        ));
    }
    // The engine's own endpoint (not the gate's /live; a TCP check costs the engine nothing).
    let engine_check =
        live.http_get.as_ref().is_some_and(|h| {
            h.path.as_deref() != Some("/live") && h.path.as_deref() != Some("/livez")
        }) || live.grpc.is_some();
    let window = timing.time_to_fail();
    (c.inference() && engine_check && window < LIVENESS_MIN_WINDOW && !c.gate).then(|| {
        format!(
            "the liveness probe gives the engine only {} (periodSeconds × failureThreshold) to answer: an engine busy with long generations can miss it and be restarted mid-request",
            secs(window)
        )
    })
}

/// Knative: the revision's `timeoutSeconds` is its drain budget (the queue-proxy keeps serving
/// that long after the pod is told to stop); it must cover the longest request.
pub(crate) fn knative(ctx: &mut Ctx<'_>, w: &Workload<'_>) {
    let Some((max_req, from)) = facts::max_request_described(w, ctx.opts.max_request) else {
        return;
    };
    let path = format!("{}.timeoutSeconds", w.pod_path());
    let timeout = w
        .object
        .value
        .pointer(&format!("/{}", path.replace('.', "/")))
        .and_then(serde_json::Value::as_u64)
        .map_or(Duration::from_secs(300), Duration::from_secs);
    if timeout < max_req {
        ctx.emit(
            KNATIVE_TIMEOUT_TOO_SHORT,
            w.into(),
            &path,
            None,
            format!(
                "timeoutSeconds is {}, but requests run up to {} ({from}): Knative cuts longer requests, and a draining pod keeps serving only that long",
                secs(timeout),
                secs(max_req)
            ),
            format!(
                "set spec.template.spec.timeoutSeconds: {} (raise the cluster's max-revision-timeout-seconds if needed)",
                max_req.as_secs() + u64::from(max_req.subsec_nanos() > 0)
            ),
        );
    }
}

/// The file a shell command creates with `touch`, if any.
fn touched_file(cmd: &str) -> Option<String> {
    let tokens: Vec<&str> = cmd
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|'))
        .filter(|t| !t.is_empty())
        .collect();
    tokens
        .windows(2)
        .find(|w| w[0].rsplit('/').next() == Some("touch"))
        .map(|w| w[1].to_owned())
}

/// Whether two probes make the same check (same handler, whatever the timing).
fn same_check(a: &core::Probe, b: &core::Probe) -> bool {
    a.http_get.as_ref().map(|h| (&h.path, &h.port))
        == b.http_get.as_ref().map(|h| (&h.path, &h.port))
        && a.exec.as_ref().map(|e| &e.command) == b.exec.as_ref().map(|e| &e.command)
        && a.tcp_socket.as_ref().map(|t| &t.port) == b.tcp_socket.as_ref().map(|t| &t.port)
        && a.grpc.as_ref().map(|g| g.port) == b.grpc.as_ref().map(|g| g.port)
}
