//! The rules. Each has a stable id, a title, a default severity and a page
//! `docs/rules/<id>.md`. By family: the pod's own termination and probes ([`pod`]), the gate's
//! setup ([`gate`]), disruption budgets ([`pdb`]), rollouts ([`rollout`]).

mod gate;
mod pdb;
mod pod;
mod rollout;

/// The rollout model lives with the rest of the timeline arithmetic.
pub use lameduck_timeline::terminating_peak;
pub use rollout::{HEADROOM_ANNOTATION, TERMINATING_SURGE_THRESHOLD};

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use lameduck_manifest::{Lifecycle, Object, Workload};

use crate::{Finding, Options, Severity};

/// A rule's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Stable id, also the name of its page in `docs/rules/`.
    pub id: &'static str,
    /// One line.
    pub title: &'static str,
    /// Default severity.
    pub severity: Severity,
    /// The rule's page (`docs/rules/<id>.md`), as Markdown.
    pub help: &'static str,
}

macro_rules! rules {
    ($($name:ident = $id:literal, $sev:ident, $title:literal;)*) => {
        $(
            #[doc = $title]
            pub const $name: Rule = Rule {
                id: $id,
                title: $title,
                severity: Severity::$sev,
                help: include_str!(concat!("../../../../docs/rules/", $id, ".md")),
            };
        )*
        /// Every rule.
        pub const ALL: &[Rule] = &[$($name),*];
    };
}

rules! {
    GRACE_TOO_SHORT = "grace-period-too-short", Error,
        "The grace period cannot fit the last admitted request, the longest request and the kill margin";
    PRESTOP_BEYOND_GRACE = "prestop-beyond-grace", Error,
        "The preStop hook takes as long as the grace period or longer: SIGTERM comes 2 s before SIGKILL";
    NO_PRESTOP = "no-prestop", Error,
        "A serving container has no preStop hook and no drain gate: it stops while load balancers still send to it";
    NO_READINESS = "no-readiness-probe", Error,
        "A serving container has no readiness probe: it gets traffic before it is ready and after it starts draining";
    READINESS_NOT_DRAIN_AWARE = "readiness-not-drain-aware", Warning,
        "Readiness does not change when a drain starts";
    READINESS_SLOWER_THAN_CONVERGENCE = "readiness-slower-than-convergence", Warning,
        "Readiness takes longer to fail than the convergence window";
    LIVENESS_SAME_AS_READINESS = "liveness-same-as-readiness", Warning,
        "The liveness probe makes the readiness probe's check: a drain or a busy engine gets the container restarted";
    LIVENESS_KILLS_BUSY_ENGINE = "liveness-kills-busy-engine", Warning,
        "The liveness probe would restart a busy or draining inference engine";
    SPOT_GRACE_EXCEEDS_NOTICE = "spot-grace-exceeds-notice", Warning,
        "On spot capacity the grace period is longer than the provider's notice";
    PDB_BLOCKS_DRAINS = "pdb-blocks-drains", Error,
        "The PodDisruptionBudget allows no eviction: every node drain blocks";
    PDB_UNHEALTHY_BLOCKS = "pdb-unhealthy-blocks", Warning,
        "One pod that is not ready uses up the PodDisruptionBudget: drains wait for it to recover";
    MULTIPLE_PDBS = "multiple-pdbs", Error,
        "More than one PodDisruptionBudget selects the same pods: the Eviction API refuses every eviction";
    NO_PDB = "no-pdb", Warning,
        "No PodDisruptionBudget selects the workload (checked with --require-pdb)";
    GATE_GRACE_MISMATCH = "gate-grace-mismatch", Error,
        "The gate's --grace-period differs from the pod's terminationGracePeriodSeconds";
    GATE_FLAGS_INVALID = "gate-flags-invalid", Error,
        "The gate's command line does not parse: the container will not start";
    SIDECAR_PRESTOP_NOT_DRAINING = "sidecar-prestop-not-draining", Error,
        "With the gate as a sidecar, the engine's preStop does not call the gate's /drain";
    GATE_NOT_NATIVE_SIDECAR = "gate-not-native-sidecar", Warning,
        "The gate in sidecar mode runs as an ordinary container instead of a native sidecar";
    SINGLE_REPLICA_OUTAGE = "single-replica-outage", Error,
        "A rollout of the only replica takes it down before its replacement is ready";
    MAXSURGE_ZERO_SLOW_START = "maxsurge-zero-slow-start", Warning,
        "A rolling update with maxSurge 0 on a workload that is slow to become ready";
    TERMINATING_SURGE = "terminating-surge", Warning,
        "A rollout keeps many old pods terminating while their replacements run";
    MAXUNAVAILABLE_ABOVE_HEADROOM = "maxunavailable-above-headroom", Warning,
        "A rollout may take down more pods than the warm headroom can cover";
    KNATIVE_TIMEOUT_TOO_SHORT = "knative-timeout-too-short", Error,
        "A Knative revision's timeoutSeconds is shorter than its longest request";
    LONG_LIVED_WORK = "long-lived-work", Note,
        "Drains this long are better served by rainbow deployments";
}

/// Annotation: rule ids to skip for this object (`lameduck.io/ignore: no-pdb,multiple-pdbs`,
/// or `all`).
pub const IGNORE_ANNOTATION: &str = "lameduck.io/ignore";

/// Room kept at the end of the grace period: the timeline model's (the gate's default
/// --kill-margin).
pub const MARGIN: Duration = lameduck_timeline::DEFAULT_KILL_MARGIN;

/// Seconds for messages: `15 s`, `1.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", lameduck_timeline::secs_plain(d))
}

/// Where findings go, with the options and what was suppressed.
pub(crate) struct Ctx<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) out: Vec<Finding>,
    pub(crate) notes: Vec<String>,
    pub(crate) suppressed: usize,
}

impl Ctx<'_> {
    /// Reports `rule` at `path` of `object` (unless suppressed by annotation or config).
    pub(crate) fn emit(
        &mut self,
        rule: Rule,
        at: Site<'_>,
        path: &str,
        container: Option<&str>,
        message: String,
        fix: String,
    ) {
        let object = at.object;
        let ignored = object.annotation(IGNORE_ANNOTATION).is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|id| id == rule.id || id == "all")
        });
        if ignored {
            self.suppressed += 1;
            return;
        }
        let severity = match self.opts.rules.get(rule.id) {
            Some(None) => return, // turned off in the config file
            Some(Some(s)) => *s,
            None => rule.severity,
        };
        let pos = object.pos(path);
        self.out.push(Finding {
            rule: rule.id,
            severity,
            file: object.file.display().to_string(),
            line: pos.line,
            col: pos.col,
            object: at.display.unwrap_or_else(|| object.display_name()),
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            container: container.map(str::to_owned),
            path: object.path(path),
            message,
            fix,
        });
    }
}

/// The object a finding is about, and how to name it.
pub(crate) struct Site<'a> {
    pub(crate) object: &'a Object,
    pub(crate) display: Option<String>,
}

impl<'a> Site<'a> {
    pub(crate) fn object(object: &'a Object) -> Site<'a> {
        Site {
            object,
            display: None,
        }
    }
}

impl<'a> From<&Workload<'a>> for Site<'a> {
    fn from(w: &Workload<'a>) -> Site<'a> {
        Site {
            object: w.object,
            display: Some(w.display_name()),
        }
    }
}

// `Site` holds an owned name; copying it is cheap enough for a finding.
impl Clone for Site<'_> {
    fn clone(&self) -> Self {
        Site {
            object: self.object,
            display: self.display.clone(),
        }
    }
}

/// HPAs' smallest `minReplicas` and highest utilization target, by (namespace, kind, name) of
/// their target.
pub(crate) struct Hpas<'a> {
    min: HashMap<(Option<&'a str>, &'a str, &'a str), i32>,
    target: HashMap<(Option<&'a str>, &'a str, &'a str), i32>,
}

impl<'a> Hpas<'a> {
    fn new(objects: &'a [Object], typed: &'a [(&'a Object, HorizontalPodAutoscaler)]) -> Self {
        let _ = objects;
        let mut min: HashMap<_, i32> = HashMap::new();
        let mut target: HashMap<_, i32> = HashMap::new();
        for (ho, h) in typed {
            let key = (
                ho.namespace.as_deref(),
                h.spec.scale_target_ref.kind.as_str(),
                h.spec.scale_target_ref.name.as_str(),
            );
            let m = h.spec.min_replicas.unwrap_or(1);
            let e = min.entry(key).or_insert(m);
            *e = (*e).min(m);
            let t = h
                .spec
                .metrics
                .iter()
                .flatten()
                .filter_map(|m| m.resource.as_ref()?.target.average_utilization)
                .max();
            if let Some(t) = t {
                let e = target.entry(key).or_insert(t);
                *e = (*e).max(t);
            }
        }
        Hpas { min, target }
    }

    fn key<'w>(w: &'w Workload<'_>) -> (Option<&'w str>, &'w str, &'w str) {
        (
            w.object.namespace.as_deref(),
            w.object.kind.as_str(),
            w.object.name.as_str(),
        )
    }

    pub(crate) fn min_replicas(&self, w: &Workload<'_>) -> Option<i32> {
        self.min.get(&Self::key(w)).copied()
    }

    pub(crate) fn utilization(&self, w: &Workload<'_>) -> Option<i32> {
        self.target.get(&Self::key(w)).copied()
    }
}

/// Runs every rule over the workloads and their disruption budgets: findings, notes (inputs
/// that could not be typed, assumptions made), and how many findings were suppressed.
pub fn check(objects: &[Object], opts: &Options) -> (Vec<Finding>, Vec<String>, usize) {
    let mut ctx = Ctx {
        opts,
        out: Vec::new(),
        notes: Vec::new(),
        suppressed: 0,
    };
    let budgets = pdb::Budgets::new(objects, &mut ctx.notes);
    let hpas: Vec<(&Object, HorizontalPodAutoscaler)> = objects
        .iter()
        .filter(|o| o.kind == "HorizontalPodAutoscaler")
        .filter_map(|o| o.typed().ok().map(|h| (o, h)))
        .collect();
    let hpas = Hpas::new(objects, &hpas);
    for object in objects {
        for (n, w) in Workload::all(object).into_iter().enumerate() {
            let w = match w {
                Ok(w) => w,
                Err(e) => {
                    ctx.notes.push(e.to_string());
                    continue;
                }
            };
            match w.kind.lifecycle() {
                // Batch work is not served through a load balancer.
                Lifecycle::Batch => continue,
                Lifecycle::Knative => {
                    pod::knative(&mut ctx, &w);
                    continue;
                }
                Lifecycle::Served => {}
            }
            if w.template.behind_service() {
                pod::workload(&mut ctx, &w);
                gate::setup(&mut ctx, &w);
            }
            // Budgets and rollouts are the object's, not each template's.
            if n == 0 {
                pdb::check(&mut ctx, &w, &budgets, hpas.min_replicas(&w));
                rollout::check(&mut ctx, &w, hpas.utilization(&w));
            }
        }
    }
    (ctx.out, ctx.notes, ctx.suppressed)
}
