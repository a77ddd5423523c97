//! The rules. Each has a stable id, a title, a default severity and a page
//! `docs/rules/<id>.md`. By family: the pod's own termination and probes ([`pod`]), the gate's
//! setup ([`gate`]), disruption budgets ([`pdb`]), rollouts ([`rollout`]).

mod gate;
mod pdb;
mod pod;
mod rollout;

/// The rollout model lives with the rest of the timeline arithmetic.
pub use lameduck_timeline::terminating_peak;
pub use pdb::{BudgetFix, budget_fixes};
pub use rollout::{HEADROOM_ANNOTATION, TERMINATING_SURGE_THRESHOLD};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use lameduck_manifest::{Lifecycle, LoadError, Object, Sink, Workload};

use crate::{Finding, Options, Report, Severity};

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
    SERVING_GATE_WITHOUT_KUBE = "serving-gate-without-kube", Error,
        "The pod waits for the lameduck.io/serving readiness gate, but no gate runs with --kube to set it: it never becomes ready";
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
    RAINBOW_NOT_GATED = "rainbow-not-gated", Error,
        "A RainbowDeployment's pods run no lameduck gate: the controller cannot see their work and retires old releases only at maxAge";
    LONG_LIVED_WORK = "long-lived-work", Note,
        "Drains this long are better served by rainbow deployments";
}

/// The rules as the README's table rows (kept in step with it by a test).
pub fn markdown_table() -> String {
    ALL.iter()
        .map(|r| {
            format!(
                "| [`{id}`](docs/rules/{id}.md) | {} | {} |\n",
                r.severity.as_str(),
                r.title,
                id = r.id
            )
        })
        .collect()
}

/// The grace period a workload's serving container needs, as `grace-period-too-short`
/// computes it (and `inject` and `plan` do): `None` when no single container serves or the
/// longest request is unknown.
pub fn required_grace(w: &Workload<'_>, opts: &Options) -> Option<lameduck_timeline::GraceNeed> {
    let serving = w.model.serving_container(None).ok().flatten()?;
    let max = crate::facts::max_request_described(w, opts.max_request)?;
    Some(w.model.grace_need(Some(serving), max, opts.convergence))
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
    /// The text of each file with a finding, for source snippets.
    pub(crate) sources: HashMap<String, Arc<String>>,
}

/// Where a finding lands, resolved while its object is at hand: findings that need the whole
/// input (disruption budgets, autoscalers) are decided after the object itself is gone.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    file: Arc<PathBuf>,
    source: Arc<String>,
    line: usize,
    col: usize,
    /// The object as people read it.
    display: String,
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    /// The field's path in the document.
    path: String,
    /// The object's `lameduck.io/ignore` annotation.
    ignore: Option<String>,
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
        let place = at.place(path);
        self.emit_at(rule, &place, container, message, fix);
    }

    /// Reports `rule` at `place` (unless suppressed by annotation or config).
    pub(crate) fn emit_at(
        &mut self,
        rule: Rule,
        place: &Place,
        container: Option<&str>,
        message: String,
        fix: String,
    ) {
        let ignored = place.ignore.as_deref().is_some_and(|v| {
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
        let file = place.file.display().to_string();
        if !self.sources.contains_key(&file) {
            self.sources.insert(file.clone(), place.source.clone());
        }
        self.out.push(Finding {
            rule: rule.id,
            severity,
            file,
            line: place.line,
            col: place.col,
            object: place.display.clone(),
            api_version: place.api_version.clone(),
            kind: place.kind.clone(),
            namespace: place.namespace.clone(),
            name: place.name.clone(),
            container: container.map(str::to_owned),
            path: place.path.clone(),
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

    /// Where `path` of the object is.
    pub(crate) fn place(self, path: &str) -> Place {
        let object = self.object;
        let pos = object.pos(path);
        Place {
            file: object.file.clone(),
            source: object.source.clone(),
            line: pos.line,
            col: pos.col,
            display: self.display.unwrap_or_else(|| object.display_name()),
            api_version: object.api_version.clone(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            path: object.path(path),
            ignore: object.annotation(IGNORE_ANNOTATION).map(str::to_owned),
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

/// An object's identity among its namespace's: (namespace, kind, name).
pub(crate) type Key = (Option<String>, String, String);

pub(crate) fn key(o: &Object) -> Key {
    (o.namespace.clone(), o.kind.clone(), o.name.clone())
}

/// HPAs' smallest `minReplicas` and highest utilization target, by (namespace, kind, name) of
/// their target.
#[derive(Default)]
pub(crate) struct Hpas {
    pub(crate) min: HashMap<Key, i32>,
    target: HashMap<Key, i32>,
}

impl Hpas {
    pub(crate) fn add(&mut self, o: &Object, h: &HorizontalPodAutoscaler) {
        let key = (
            o.namespace.clone(),
            h.spec.scale_target_ref.kind.clone(),
            h.spec.scale_target_ref.name.clone(),
        );
        let m = h.spec.min_replicas.unwrap_or(1);
        let e = self.min.entry(key.clone()).or_insert(m);
        *e = (*e).min(m);
        let t = h
            .spec
            .metrics
            .iter()
            .flatten()
            .filter_map(|m| m.resource.as_ref()?.target.average_utilization)
            .max();
        if let Some(t) = t {
            let e = self.target.entry(key).or_insert(t);
            *e = (*e).max(t);
        }
    }

    fn merge(&mut self, other: Hpas) {
        for (k, m) in other.min {
            let e = self.min.entry(k).or_insert(m);
            *e = (*e).min(m);
        }
        for (k, t) in other.target {
            let e = self.target.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
    }
}

/// What a workload's checks that need the whole input keep once the workload is read.
struct Pending {
    key: Key,
    pods: pdb::Pods,
    headroom: Option<rollout::Headroom>,
}

/// Lints objects as they are read: each workload's own rules run at once and the workload is
/// dropped, keeping only what the checks against the whole input (disruption budgets,
/// autoscalers) need, which run in [`Linter::finish`]. A large stream is never held whole.
pub struct Linter<'a> {
    ctx: Ctx<'a>,
    budgets: Vec<pdb::Budget>,
    hpas: Hpas,
    pending: Vec<Pending>,
    objects: usize,
    input_errors: Vec<String>,
}

impl<'a> Linter<'a> {
    /// A linter with these options.
    pub fn new(opts: &'a Options) -> Self {
        Linter {
            ctx: Ctx {
                opts,
                out: Vec::new(),
                notes: Vec::new(),
                suppressed: 0,
                sources: HashMap::new(),
            },
            budgets: Vec::new(),
            hpas: Hpas::default(),
            pending: Vec::new(),
            objects: 0,
            input_errors: Vec::new(),
        }
    }

    /// Checks one object.
    pub fn visit(&mut self, object: &Object) {
        self.objects += 1;
        let ctx = &mut self.ctx;
        match object.kind.as_str() {
            "PodDisruptionBudget" => {
                if let Some(b) = pdb::Budget::read(object, &mut ctx.notes) {
                    self.budgets.push(b);
                }
                return;
            }
            "HorizontalPodAutoscaler" => {
                if let Ok(h) = object.typed::<HorizontalPodAutoscaler>() {
                    self.hpas.add(object, &h);
                }
                return;
            }
            _ => {}
        }
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
                    pod::knative(ctx, &w);
                    continue;
                }
                Lifecycle::Served => {}
            }
            if w.template.behind_service() {
                pod::workload(ctx, &w);
                gate::setup(ctx, &w);
            }
            // Budgets and rollouts are the object's, not each template's.
            if n == 0 {
                let headroom = rollout::check(ctx, &w);
                self.pending.push(Pending {
                    key: key(object),
                    pods: pdb::Pods::of(&w),
                    headroom,
                });
            }
        }
    }

    /// Records an input that could not be read.
    pub fn input_error(&mut self, error: &LoadError) {
        self.input_errors.push(error.to_string());
    }

    /// Runs the checks that needed the whole input; the report.
    pub fn finish(self) -> Report {
        let Linter {
            mut ctx,
            budgets,
            hpas,
            pending,
            objects,
            input_errors,
        } = self;
        let budgets = pdb::Budgets::new(budgets);
        for p in &pending {
            pdb::check(&mut ctx, &p.pods, &budgets, hpas.min.get(&p.key).copied());
            if let Some(h) = &p.headroom {
                rollout::headroom(&mut ctx, h, hpas.target.get(&p.key).copied());
            }
        }
        let Ctx {
            out: mut findings,
            mut notes,
            suppressed,
            sources,
            ..
        } = ctx;
        if suppressed > 0 {
            notes.push(format!(
                "{suppressed} finding(s) suppressed by `{IGNORE_ANNOTATION}` annotations"
            ));
        }
        findings.sort_by(|a, b| {
            (&a.file, a.line, a.col, a.rule).cmp(&(&b.file, b.line, b.col, b.rule))
        });
        Report {
            findings,
            input_errors,
            notes,
            objects,
            sources,
        }
    }
}

impl Sink for Linter<'_> {
    fn object(&mut self, object: Object) {
        self.visit(&object);
    }

    fn error(&mut self, error: LoadError) {
        self.input_error(&error);
    }

    fn append(&mut self, later: Self, _documents_before: usize) {
        let Linter {
            ctx,
            budgets,
            hpas,
            pending,
            objects,
            input_errors,
        } = later;
        self.ctx.out.extend(ctx.out);
        self.ctx.notes.extend(ctx.notes);
        self.ctx.suppressed += ctx.suppressed;
        for (k, v) in ctx.sources {
            self.ctx.sources.entry(k).or_insert(v);
        }
        self.budgets.extend(budgets);
        self.hpas.merge(hpas);
        self.pending.extend(pending);
        self.objects += objects;
        self.input_errors.extend(input_errors);
    }
}
