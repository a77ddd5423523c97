//! The gate's own setup, as the pod model reads it: its flags parse, its grace period is the
//! pod's, a sidecar gate is a native sidecar and is called by the engine's preStop.

use lameduck_manifest::Workload;
use lameduck_pod::{GateMode, Slot};

use super::{
    Ctx, GATE_FLAGS_INVALID, GATE_GRACE_MISMATCH, GATE_NOT_NATIVE_SIDECAR, RAINBOW_NOT_GATED,
    SERVING_GATE_WITHOUT_KUBE, SIDECAR_PRESTOP_NOT_DRAINING, secs,
};

pub(crate) fn setup(ctx: &mut Ctx<'_>, w: &Workload<'_>) {
    let waits = w
        .spec
        .readiness_gates
        .iter()
        .flatten()
        .any(|g| g.condition_type == lameduck_pod::SERVING_CONDITION);
    let sets = w
        .model
        .gate
        .as_ref()
        .is_some_and(|g| g.flags.is_ok() && g.args.kube);
    if waits && !sets {
        ctx.emit(
            SERVING_GATE_WITHOUT_KUBE,
            w.into(),
            &format!("{}.readinessGates", w.pod_path()),
            None,
            format!(
                "the pod lists the readiness gate `{}`, which only the gate sets, and only with --kube: no container runs it so, and the pod never becomes ready",
                lameduck_pod::SERVING_CONDITION
            ),
            "pass --kube to the gate (with LAMEDUCK_POD_NAME and LAMEDUCK_POD_NAMESPACE from the downward API; `lameduck inject --kube` writes it all), or remove the readiness gate".into(),
        );
    }
    if w.kind == lameduck_manifest::WorkloadKind::RainbowDeployment && w.model.gate.is_none() {
        ctx.emit(
            RAINBOW_NOT_GATED,
            w.into(),
            &format!("{}.containers", w.pod_path()),
            None,
            "no container runs `lameduck gate`: the rainbow controller reads each pod's work from its gate's /status, so it cannot tell when an old release is idle and keeps it until spec.retirement.maxAge".into(),
            "run the serving container behind the gate: `lameduck inject` on this file adds it".into(),
        );
    }
    let Some(g) = &w.model.gate else { return };
    let path = w.container_path(g.slot);
    if let Err(e) = &g.flags {
        ctx.emit(
            GATE_FLAGS_INVALID,
            w.into(),
            &path,
            None,
            format!("{e}"),
            "run `lameduck gate --help` for the flags, or regenerate the container with `lameduck inject`".into(),
        );
        return;
    }
    let gate_grace = g.args.grace_period.0;
    if gate_grace != w.grace() {
        let said = if g
            .flags
            .as_ref()
            .is_ok_and(|f| f.get("grace-period").is_some())
        {
            ""
        } else {
            " (its default)"
        };
        ctx.emit(
            GATE_GRACE_MISMATCH,
            w.into(),
            &path,
            None,
            format!(
                "the gate plans its drain for a {} grace period{said}, but the pod's terminationGracePeriodSeconds is {}: its deadline and the kubelet's SIGKILL do not line up",
                secs(gate_grace),
                secs(w.grace())
            ),
            format!(
                "pass --grace-period {} to the gate (or set LAMEDUCK_GRACE_PERIOD)",
                w.grace().as_secs()
            ),
        );
    }
    if g.mode != GateMode::Sidecar {
        return;
    }
    if !g.native() {
        let why = if matches!(g.slot, Slot::Init(_)) {
            "the gate fronts another container but is a plain init container: the pod's other containers wait for it to exit, which it never does, so the pod never starts"
        } else {
            "the gate fronts another container but runs as an ordinary container: it gets SIGTERM together with the engine instead of after it"
        };
        ctx.emit(
            GATE_NOT_NATIVE_SIDECAR,
            w.into(),
            &path,
            None,
            why.into(),
            "move it to initContainers with restartPolicy: Always (a native sidecar, Kubernetes 1.29+)".into(),
        );
    }
    let admin = g.admin_port();
    // The container the gate fronts: the pod's serving one (helpers next to it, such as a
    // metrics or LoRA sidecar, have their own lives).
    let fronted = w.model.serving_container(None).ok().flatten();
    for (i, c) in w.model.serving() {
        if !matches!(c.slot, Slot::App(_)) || fronted.is_some_and(|f| f != i) {
            continue;
        }
        let Some(spec) = w.container(c.slot) else {
            continue;
        };
        let drains = spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .is_some_and(|h| {
                h.http_get
                    .as_ref()
                    .and_then(|g| g.path.as_deref())
                    .is_some_and(|p| p.starts_with("/drain"))
                    || h.exec
                        .as_ref()
                        .and_then(|e| e.command.as_ref())
                        .is_some_and(|cmd| cmd.join(" ").contains("/drain"))
            });
        if !drains {
            ctx.emit(
                SIDECAR_PRESTOP_NOT_DRAINING,
                w.into(),
                &format!("{}.lifecycle", w.container_path(c.slot)),
                Some(&c.name),
                "the gate runs as a sidecar, but this container's preStop does not call the gate's /drain: the engine gets SIGTERM while requests are still in flight".into(),
                format!("set lifecycle.preStop.httpGet to {{path: /drain, port: {admin}}} (the gate's admin port)"),
            );
        }
    }
}
