//! The rules. Each has a stable id, a title, a default severity and a page
//! `docs/rules/<id>.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_manifest::workload::selects;
use lameduck_manifest::{ContainerTimeline, Object, Workload, WorkloadKind};
use lameduck_timeline::{Budget, PreStop};

use crate::facts::{self, MaxRequestSource};
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
                help: include_str!(concat!("../../../docs/rules/", $id, ".md")),
            };
        )*
        /// Every rule.
        pub const ALL: &[Rule] = &[$($name),*];
    };
}

rules! {
    GRACE_TOO_SHORT = "grace-period-too-short", Error,
        "The grace period cannot fit the preStop, the longest request and the kill margin";
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
        "The liveness probe is the readiness probe: a drain or a busy engine gets the container restarted";
    SPOT_GRACE_EXCEEDS_NOTICE = "spot-grace-exceeds-notice", Warning,
        "On spot capacity the grace period is longer than the provider's notice";
    PDB_BLOCKS_DRAINS = "pdb-blocks-drains", Error,
        "The PodDisruptionBudget allows no eviction: every node drain blocks";
    MULTIPLE_PDBS = "multiple-pdbs", Error,
        "More than one PodDisruptionBudget selects the same pods: the Eviction API refuses every eviction";
    NO_PDB = "no-pdb", Warning,
        "No PodDisruptionBudget selects the workload (checked with --require-pdb)";
    LIVENESS_KILLS_BUSY_ENGINE = "liveness-kills-busy-engine", Warning,
        "The liveness probe would restart a busy or draining inference engine";
    GATE_GRACE_MISMATCH = "gate-grace-mismatch", Error,
        "The gate's --grace-period differs from the pod's terminationGracePeriodSeconds";
    SIDECAR_PRESTOP_NOT_DRAINING = "sidecar-prestop-not-draining", Error,
        "With the gate as a sidecar, the engine's preStop does not call the gate's /drain";
    GATE_NOT_NATIVE_SIDECAR = "gate-not-native-sidecar", Warning,
        "The gate in sidecar mode runs as an ordinary container instead of a native sidecar";
    MAXSURGE_ZERO_SLOW_START = "maxsurge-zero-slow-start", Warning,
        "A rolling update with maxSurge 0 on a workload that is slow to become ready";
    TERMINATING_SURGE = "terminating-surge", Warning,
        "A rollout keeps many old pods terminating while their replacements run";
    MAXUNAVAILABLE_ABOVE_HEADROOM = "maxunavailable-above-headroom", Warning,
        "A rollout may take down more pods than the warm headroom can cover";
    LONG_LIVED_WORK = "long-lived-work", Note,
        "Drains this long are better served by rainbow deployments";
}

/// Annotation: rule ids to skip for this object (`lameduck.io/ignore: no-pdb,multiple-pdbs`,
/// or `all`).
pub const IGNORE_ANNOTATION: &str = "lameduck.io/ignore";

/// Room kept at the end of the grace period: the timeline model's (the gate's default
/// --kill-margin).
pub const MARGIN: Duration = lameduck_timeline::DEFAULT_KILL_MARGIN;

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

/// A container that takes traffic: it declares ports, has a readiness probe, or is an
/// inference server.
pub(crate) fn serving(c: &core::Container) -> bool {
    c.ports.as_ref().is_some_and(|p| !p.is_empty())
        || c.readiness_probe.is_some()
        || facts::is_inference(c)
}

struct Ctx<'a> {
    opts: &'a Options,
    out: Vec<Finding>,
    suppressed: usize,
}

impl Ctx<'_> {
    fn emit(
        &mut self,
        rule: Rule,
        object: &Object,
        path: &str,
        container: Option<&str>,
        message: String,
        fix: String,
    ) {
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
            object: object.display_name(),
            container: container.map(str::to_owned),
            path: object.path(path),
            message,
            fix,
        });
    }
}

/// Runs every rule over the workloads and their disruption budgets.
pub fn check(objects: &[Object], opts: &Options) -> (Vec<Finding>, Vec<String>, usize) {
    let mut ctx = Ctx {
        opts,
        out: Vec::new(),
        suppressed: 0,
    };
    let mut notes = Vec::new();
    let pdbs: Vec<(&Object, PodDisruptionBudget)> = objects
        .iter()
        .filter(|o| o.kind == "PodDisruptionBudget")
        .filter_map(|o| o.typed().ok().map(|p| (o, p)))
        .collect();
    let budgets_index = BudgetIndex::new(&pdbs);
    // HPAs by (namespace, target kind, target name).
    let mut hpa_min: std::collections::HashMap<(Option<&str>, &str, &str), i32> =
        Default::default();
    // The highest average-utilization target of each HPA's resource metrics, in percent.
    let mut hpa_target: std::collections::HashMap<(Option<&str>, &str, &str), i32> =
        Default::default();
    let hpas: Vec<(&Object, HorizontalPodAutoscaler)> = objects
        .iter()
        .filter(|o| o.kind == "HorizontalPodAutoscaler")
        .filter_map(|o| o.typed().ok().map(|h| (o, h)))
        .collect();
    for (ho, h) in &hpas {
        let key = (
            ho.namespace.as_deref(),
            h.spec.scale_target_ref.kind.as_str(),
            h.spec.scale_target_ref.name.as_str(),
        );
        let min = h.spec.min_replicas.unwrap_or(1);
        let e = hpa_min.entry(key).or_insert(min);
        *e = (*e).min(min);
        let target = h
            .spec
            .metrics
            .iter()
            .flatten()
            .filter_map(|m| m.resource.as_ref()?.target.average_utilization)
            .max();
        if let Some(t) = target {
            let e = hpa_target.entry(key).or_insert(t);
            *e = (*e).max(t);
        }
    }
    for object in objects {
        let Some(w) = Workload::from_object(object) else {
            continue;
        };
        let w = match w {
            Ok(w) => w,
            Err(e) => {
                notes.push(e.to_string());
                continue;
            }
        };
        if matches!(w.kind, WorkloadKind::Job | WorkloadKind::CronJob) {
            continue; // batch work is not served through a load balancer
        }
        workload(&mut ctx, &w, &mut notes);
        gate_setup(&mut ctx, &w);
        let min_replicas = hpa_min
            .get(&(
                w.object.namespace.as_deref(),
                w.object.kind.as_str(),
                w.object.name.as_str(),
            ))
            .copied();
        budgets(&mut ctx, &w, &budgets_index, min_replicas);
        let utilization = hpa_target
            .get(&(
                w.object.namespace.as_deref(),
                w.object.kind.as_str(),
                w.object.name.as_str(),
            ))
            .copied();
        rollout(&mut ctx, &w, utilization);
    }
    (ctx.out, notes, ctx.suppressed)
}

fn workload(ctx: &mut Ctx<'_>, w: &Workload<'_>, notes: &mut Vec<String>) {
    let o = w.object;
    let gated = facts::gated(w);
    let max = facts::max_request(w, ctx.opts.max_request);
    if let Some((d, MaxRequestSource::Assumed)) = max {
        notes.push(format!(
            "{}: looks like an inference server; assuming requests of up to {} (set the `{}` annotation or --max-request)",
            o.display_name(),
            secs(d),
            facts::MAX_REQUEST_ANNOTATION
        ));
    }
    let grace = w.grace();
    let timelines = w.containers();
    let raw: Vec<&core::Container> = w
        .spec
        .containers
        .iter()
        .chain(
            w.spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always")),
        )
        .collect();
    for (t, c) in timelines.iter().zip(raw) {
        if facts::is_gate(c) || !serving(c) {
            continue;
        }
        let name = Some(t.name.as_str());
        let hook = t.termination.pre_stop.duration();
        // The preStop runs inside the grace period.
        if let Some(h) = hook
            && h >= grace
        {
            ctx.emit(
                PRESTOP_BEYOND_GRACE,
                o,
                &format!("{}.lifecycle.preStop", t.path),
                name,
                format!(
                    "the preStop hook takes {} but the grace period is {}: the kubelet gives up on the hook when the period ends, sends SIGTERM, and SIGKILL {} later, so the server has no time to drain",
                    secs(h),
                    secs(grace),
                    secs(lameduck_timeline::KUBELET_MIN_STOP_WINDOW)
                ),
                format!("make terminationGracePeriodSeconds at least {} or shorten the hook", (h + MARGIN).as_secs()),
            );
        } else if let Some((max_req, source)) = max {
            let need =
                Budget::required_grace(hook.unwrap_or_default(), Duration::ZERO, max_req, MARGIN);
            if grace < need {
                let from = match source {
                    MaxRequestSource::Annotation => "its annotation",
                    MaxRequestSource::Flag => "--max-request",
                    MaxRequestSource::Assumed => "assumed for an inference server",
                };
                let default = if w.spec.termination_grace_period_seconds.is_none() {
                    " (the default)"
                } else {
                    ""
                };
                ctx.emit(
                    GRACE_TOO_SHORT,
                    o,
                    &w.grace_path(),
                    name,
                    format!(
                        "terminationGracePeriodSeconds is {}{default}, but the preStop ({}) + the longest request ({}, {from}) + a {} margin need {}: requests in flight at a drain are killed",
                        secs(grace),
                        secs(hook.unwrap_or_default()),
                        secs(max_req),
                        secs(MARGIN),
                        secs(need)
                    ),
                    format!("set terminationGracePeriodSeconds: {}", need.as_secs()),
                );
            }
        }
        if t.termination.pre_stop == PreStop::None && !gated {
            ctx.emit(
                NO_PRESTOP,
                o,
                &format!("{}.lifecycle", t.path),
                name,
                "no preStop hook and no drain gate: SIGTERM arrives while load balancers still route new requests here".into(),
                "run the server behind `lameduck gate` (see `lameduck inject`), or add a preStop that fails readiness and waits for convergence".into(),
            );
        }
        probes(ctx, o, t, c, gated);
        if let Some(spot) = facts::spot(w)
            && grace > spot.notice()
        {
            ctx.emit(
                SPOT_GRACE_EXCEEDS_NOTICE,
                o,
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

fn probes(ctx: &mut Ctx<'_>, o: &Object, t: &ContainerTimeline, c: &core::Container, gated: bool) {
    let name = Some(t.name.as_str());
    let (Some(probe_spec), Some(timing)) = (c.readiness_probe.as_ref(), t.readiness) else {
        ctx.emit(
            NO_READINESS,
            o,
            &t.path,
            name,
            "no readiness probe: the pod gets traffic before the engine is ready, and keeps getting it while it drains".into(),
            "add a readinessProbe (with the gate: httpGet /ready on its admin port)".into(),
        );
        return;
    };
    let path = format!("{}.readinessProbe", t.path);
    // Drain-aware: the gate's /ready, or an exec check of the marker the preStop creates.
    let gate_ready = gated
        && probe_spec
            .http_get
            .as_ref()
            .and_then(|h| h.path.as_deref())
            .is_some_and(|p| p == "/ready" || p == "/readyz");
    let marker = c
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
            o,
            &path,
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
            o,
            &path,
            name,
            format!(
                "readiness takes up to {} to fail (periodSeconds × failureThreshold), longer than the {} convergence window: load balancers learn of the drain late",
                secs(to_fail),
                secs(ctx.opts.convergence)
            ),
            "lower periodSeconds or failureThreshold (e.g. periodSeconds: 2, failureThreshold: 1 against the gate's /ready)".into(),
        );
    }
    if let Some(live) = &c.liveness_probe
        && !same_check(live, probe_spec)
        && let Some(timing) = t.liveness
        && let Some(why) = kills_busy_engine(c, live, timing)
    {
        ctx.emit(
            LIVENESS_KILLS_BUSY_ENGINE,
            o,
            &format!("{}.livenessProbe", t.path),
            name,
            why,
            "make liveness tolerant (periodSeconds × failureThreshold of 60 s or more for an engine's own health endpoint) and never check drain state (with the gate: /live)".into(),
        );
    }
    if let Some(live) = &c.liveness_probe
        && same_check(live, probe_spec)
    {
        ctx.emit(
            LIVENESS_SAME_AS_READINESS,
            o,
            &format!("{}.livenessProbe", t.path),
            name,
            "the liveness probe checks the same thing as readiness: when readiness fails for a drain or under load, the kubelet restarts the container".into(),
            "give liveness its own check that never looks at drain state or load (with the gate: /live)".into(),
        );
    }
}

/// Why a liveness probe would kill a busy or draining engine, if it would.
fn kills_busy_engine(
    c: &core::Container,
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
    let health = live
        .http_get
        .as_ref()
        .and_then(|h| h.path.as_deref())
        .is_some_and(|p| p.contains("health"));
    let window = timing.time_to_fail();
    (facts::is_inference(c) && health && window < Duration::from_secs(30)).then(|| {
        format!(
            "the liveness probe gives the engine's health endpoint only {} (periodSeconds × failureThreshold): an engine busy with long generations can miss it and be restarted mid-request",
            secs(window)
        )
    })
}

/// The value of `--flag` in a command line (`--flag V` or `--flag=V`).
fn flag_value(words: &[&str], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    words.iter().enumerate().find_map(|(i, w)| {
        if let Some(v) = w.strip_prefix(&eq) {
            Some(v.to_owned())
        } else if *w == flag {
            words.get(i + 1).map(|v| (*v).to_owned())
        } else {
            None
        }
    })
}

/// The gate's own settings as its container declares them.
struct GateSetup {
    path: String,
    grace: Option<Duration>,
    sidecar_mode: bool,
    native_sidecar: bool,
}

fn gate_setup(ctx: &mut Ctx<'_>, w: &Workload<'_>) {
    let o = w.object;
    let pod = w.kind.pod_path();
    let gates: Vec<GateSetup> = w
        .spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c, format!("{pod}.containers[{i}]"), false))
        .chain(
            w.spec
                .init_containers
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| {
                    (
                        c,
                        format!("{pod}.initContainers[{i}]"),
                        c.restart_policy.as_deref() == Some("Always"),
                    )
                }),
        )
        .filter(|(c, _, _)| facts::is_gate(c))
        .map(|(c, path, native)| {
            let words: Vec<&str> = c
                .command
                .iter()
                .flatten()
                .chain(c.args.iter().flatten())
                .flat_map(|s| s.split_whitespace())
                .collect();
            // Only the gate's own flags: everything before `--` (the engine's command).
            let own: Vec<&str> = words.iter().copied().take_while(|w| *w != "--").collect();
            let env = |name: &str| {
                c.env
                    .iter()
                    .flatten()
                    .find(|e| e.name == name)
                    .and_then(|e| e.value.clone())
            };
            let grace = flag_value(&own, "--grace-period")
                .or_else(|| env("LAMEDUCK_GRACE_PERIOD"))
                .and_then(|v| lameduck_timeline::parse_duration(&v).ok());
            let sidecar_mode = !words.contains(&"--")
                && (flag_value(&own, "--upstream").is_some() || env("LAMEDUCK_UPSTREAM").is_some());
            GateSetup {
                path,
                grace,
                sidecar_mode,
                native_sidecar: native,
            }
        })
        .collect();
    for g in &gates {
        let gate_grace = g.grace.unwrap_or(lameduck_timeline::DEFAULT_GRACE);
        if gate_grace != w.grace() {
            let said = if g.grace.is_some() {
                ""
            } else {
                " (its default)"
            };
            ctx.emit(
                GATE_GRACE_MISMATCH,
                o,
                &g.path,
                None,
                format!(
                    "the gate plans its drain for a {} grace period{said}, but the pod's terminationGracePeriodSeconds is {}: its deadline and the kubelet's SIGKILL do not line up",
                    secs(gate_grace),
                    secs(w.grace())
                ),
                format!("pass --grace-period {} to the gate (or set LAMEDUCK_GRACE_PERIOD)", w.grace().as_secs()),
            );
        }
        if g.sidecar_mode && !g.native_sidecar {
            ctx.emit(
                GATE_NOT_NATIVE_SIDECAR,
                o,
                &g.path,
                None,
                "the gate fronts another container but runs as an ordinary container: it gets SIGTERM together with the engine instead of after it".into(),
                "move it to initContainers with restartPolicy: Always (a native sidecar, Kubernetes 1.29+)".into(),
            );
        }
    }
    if !gates.iter().any(|g| g.sidecar_mode) {
        return;
    }
    for (i, c) in w.spec.containers.iter().enumerate() {
        if facts::is_gate(c) || !serving(c) {
            continue;
        }
        let drains = c
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
                o,
                &format!("{pod}.containers[{i}].lifecycle"),
                Some(&c.name),
                "the gate runs as a sidecar, but this container's preStop does not call the gate's /drain: the engine gets SIGTERM while requests are still in flight".into(),
                "set lifecycle.preStop.httpGet to {path: /drain, port: <the gate's admin port>}".into(),
            );
        }
    }
}

/// Annotation: how many pods the workload can lose and still carry its load (`2`, or `25%`).
pub const HEADROOM_ANNOTATION: &str = "lameduck.io/warm-headroom";

/// Extra pods (beyond replicas + maxSurge) a rollout may hold terminating before
/// `terminating-surge` fires: one 8-GPU node's worth.
pub const TERMINATING_SURGE_THRESHOLD: i32 = 8;

/// The rollout model lives with the rest of the timeline arithmetic.
pub use lameduck_timeline::terminating_peak;

/// Why a workload's requests are unbounded or longer than a grace period should be (the
/// annotation says `unbounded`, or more than 10 minutes).
fn unbounded_work(w: &Workload<'_>, flag: Option<Duration>) -> Option<String> {
    let said = w.object.annotation(facts::MAX_REQUEST_ANNOTATION)?.trim();
    if said.eq_ignore_ascii_case("unbounded") {
        return Some(format!(
            "`{}: unbounded`: streams or WebSockets with no end",
            facts::MAX_REQUEST_ANNOTATION
        ));
    }
    let (d, _) = facts::max_request(w, flag)?;
    (d > Duration::from_secs(600)).then(|| format!("requests of up to {}", secs(d)))
}

/// Rollout rules for Deployments: maxSurge 0 with a slow start, terminating surges, taking down
/// more than the headroom; very long drains.
fn rollout(ctx: &mut Ctx<'_>, w: &Workload<'_>, hpa_utilization: Option<i32>) {
    let o = w.object;
    let grace = w.grace();
    if grace > Duration::from_secs(600) {
        ctx.emit(
            LONG_LIVED_WORK,
            o,
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
            o,
            &format!("metadata.annotations.{}", facts::MAX_REQUEST_ANNOTATION),
            None,
            format!("{why}: no grace period can wait for it, so every drain cuts it"),
            "consider rainbow deployments: one Deployment per release, each retired when its in-flight work reaches zero; clients of unbounded streams must reconnect".into(),
        );
    }
    let Some(ru) = w.rolling_update() else {
        return;
    };
    let strategy = o.value.pointer("/spec/strategy");
    let replicas = w.replicas.unwrap_or(1).max(1);
    let surge = ru.max_surge;
    let unavailable = ru.max_unavailable;
    // Time for a new pod to become ready: its readiness probe's first success after start.
    let ready = w
        .containers()
        .iter()
        .filter_map(|c| c.readiness.map(|p| p.time_to_succeed(Duration::ZERO)))
        .max()
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1));
    let inference = w.spec.containers.iter().any(facts::is_inference);
    let slow_start = inference || ready >= Duration::from_secs(30);
    if surge == 0 && slow_start && ru.surge_set {
        ctx.emit(
            MAXSURGE_ZERO_SLOW_START,
            o,
            "spec.strategy.rollingUpdate.maxSurge",
            None,
            format!(
                "maxSurge is 0, so each step of a rollout first removes {unavailable} serving pod(s) and only then starts their replacements, which take {} or more to become ready: capacity drops for the whole cold start",
                if inference { "a model load (30-90 s)".to_owned() } else { secs(ready) }
            ),
            "allow a surge (maxSurge: 1) and keep maxUnavailable: 0, so replacements are warm before old pods drain".into(),
        );
    }
    // How long an old pod stays terminating: its grace period, or less when its work is
    // known to end sooner.
    let hook = w
        .containers()
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
    if terminating - surge > TERMINATING_SURGE_THRESHOLD {
        ctx.emit(
            TERMINATING_SURGE,
            o,
            if strategy.is_some() {
                "spec.strategy"
            } else {
                "spec.replicas"
            },
            None,
            format!(
                "a rollout replaces {} pod(s) every {} or so while each old pod takes up to {} to terminate: it ends with about {} pods at once ({replicas} running + {terminating} terminating), {} more than replicas + maxSurge",
                surge + unavailable,
                secs(ready_for_steps),
                secs(drain),
                replicas + terminating,
                terminating - surge
            ),
            "budget the capacity for the terminating pods, slow the rollout (smaller maxSurge/maxUnavailable, minReadySeconds), or retire old pods by their in-flight work (rainbow deployments)".into(),
        );
    }
    // Warm headroom: from the annotation, else from the HPA's utilization target.
    let headroom = o
        .annotation(HEADROOM_ANNOTATION)
        .and_then(|v| {
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
        })
        .or_else(|| {
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
        let path = if ru.unavailable_set {
            "spec.strategy.rollingUpdate.maxUnavailable"
        } else if strategy.is_some() {
            "spec.strategy"
        } else {
            "spec.replicas"
        };
        let default = if !ru.unavailable_set {
            " (the default 25%)"
        } else {
            ""
        };
        ctx.emit(
            MAXUNAVAILABLE_ABOVE_HEADROOM,
            o,
            path,
            None,
            format!(
                "maxUnavailable{default} lets a rollout take {unavailable} pod(s) out of service at once, but the warm headroom is {} pod(s) ({from}): the others get more load than they can carry, and streams queue or fail",
                headroom.max(0)
            ),
            format!(
                "set maxUnavailable to {} or less and let maxSurge bring replacements up first",
                headroom.max(0)
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

/// Whether two probes check the same thing (same handler, whatever the timing).
fn same_check(a: &core::Probe, b: &core::Probe) -> bool {
    a.http_get.as_ref().map(|h| (&h.path, &h.port))
        == b.http_get.as_ref().map(|h| (&h.path, &h.port))
        && a.exec.as_ref().map(|e| &e.command) == b.exec.as_ref().map(|e| &e.command)
        && a.tcp_socket.as_ref().map(|t| &t.port) == b.tcp_socket.as_ref().map(|t| &t.port)
        && a.grpc.as_ref().map(|g| g.port) == b.grpc.as_ref().map(|g| g.port)
}

/// Budgets indexed so that a workload only looks at the ones that can select it: by namespace
/// and the first `matchLabels` pair, plus (per namespace) those without `matchLabels`.
struct BudgetIndex<'a> {
    by_label: std::collections::HashMap<(Option<&'a str>, &'a str, &'a str), Vec<usize>>,
    unlabelled: std::collections::HashMap<Option<&'a str>, Vec<usize>>,
    all: &'a [(&'a Object, PodDisruptionBudget)],
}

impl<'a> BudgetIndex<'a> {
    fn new(all: &'a [(&'a Object, PodDisruptionBudget)]) -> Self {
        let mut by_label: std::collections::HashMap<_, Vec<usize>> = Default::default();
        let mut unlabelled: std::collections::HashMap<_, Vec<usize>> = Default::default();
        for (i, (po, pdb)) in all.iter().enumerate() {
            let ns = po.namespace.as_deref();
            let first = pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|m| m.iter().next());
            match first {
                Some((k, v)) => by_label
                    .entry((ns, k.as_str(), v.as_str()))
                    .or_default()
                    .push(i),
                None => unlabelled.entry(ns).or_default().push(i),
            }
        }
        BudgetIndex {
            by_label,
            unlabelled,
            all,
        }
    }

    /// The budgets in `ns` that select pods with `labels`, in input order.
    fn selecting(
        &self,
        ns: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&'a (&'a Object, PodDisruptionBudget)> {
        let mut idx: Vec<usize> = labels
            .iter()
            .filter_map(|(k, v)| self.by_label.get(&(ns, k.as_str(), v.as_str())))
            .flatten()
            .chain(self.unlabelled.get(&ns).into_iter().flatten())
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| &self.all[i])
            .filter(|(_, pdb)| {
                pdb.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|s| selects(s, labels))
            })
            .collect()
    }
}

fn budgets(ctx: &mut Ctx<'_>, w: &Workload<'_>, index: &BudgetIndex<'_>, hpa_min: Option<i32>) {
    let o = w.object;
    let pod_labels = w.pod_labels();
    let mine = index.selecting(o.namespace.as_deref(), &pod_labels);
    if mine.len() > 1 {
        let names: Vec<String> = mine.iter().map(|(po, _)| po.name.clone()).collect();
        ctx.emit(
            MULTIPLE_PDBS,
            mine[1].0,
            "spec.selector",
            None,
            format!(
                "{} selects the pods of {} together with {}: with more than one budget the Eviction API answers every eviction with an error, and node drains hang",
                mine[1].0.display_name(),
                o.display_name(),
                names.join(", ")
            ),
            "keep one PodDisruptionBudget per set of pods".into(),
        );
    }
    if mine.is_empty() && ctx.opts.require_pdb && w.replicas.is_some() {
        ctx.emit(
            NO_PDB,
            o,
            "metadata.name",
            None,
            "no PodDisruptionBudget selects these pods: a node drain may evict all of them at once"
                .into(),
            "add a PodDisruptionBudget with maxUnavailable: 1 selecting the pod template's labels"
                .into(),
        );
    }
    // An HPA can scale down to its minReplicas: the budget must allow an eviction there too.
    let replicas = match hpa_min {
        Some(min) => min.min(w.replicas.unwrap_or(min)),
        None => w.replicas.unwrap_or(1),
    };
    let counted = if hpa_min.is_some() {
        "the HPA's minReplicas"
    } else {
        "replica(s)"
    };
    for (po, pdb) in mine {
        let Some(spec) = &pdb.spec else { continue };
        let blocks = match (&spec.max_unavailable, &spec.min_available) {
            (Some(IntOrString::Int(0)), _) => Some("maxUnavailable: 0".to_owned()),
            (Some(IntOrString::String(s)), _) if s.trim() == "0%" => {
                Some(format!("maxUnavailable: {s}"))
            }
            (_, Some(IntOrString::Int(n))) if *n >= replicas => {
                Some(format!("minAvailable: {n} with {replicas} {counted}"))
            }
            (_, Some(IntOrString::String(s))) if s.trim() == "100%" => {
                Some(format!("minAvailable: {s}"))
            }
            _ => None,
        };
        if let Some(why) = blocks {
            let field = if spec.max_unavailable.is_some() {
                "spec.maxUnavailable"
            } else {
                "spec.minAvailable"
            };
            ctx.emit(
                PDB_BLOCKS_DRAINS,
                po,
                field,
                None,
                format!("{} allows no eviction of {} ({why}): every node drain waits on it forever", po.display_name(), o.display_name()),
                "allow at least one disruption (maxUnavailable: 1), and keep warm headroom so one pod's load fits on the others".into(),
            );
        }
    }
}
