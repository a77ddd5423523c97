//! One `lameduck plan` invocation: pick the workload, read the latency data, recommend,
//! simulate every scenario (and the recommended spec with `--compare`), assemble the output.

use std::path::PathBuf;
use std::time::Duration;

use lameduck_manifest::facts::{self, Spot};
use lameduck_manifest::{Object, Workload, WorkloadKind};
use lameduck_rainbow::crd::{RainbowDeploymentSpec, Settings};
use serde::Serialize;

use crate::latency::{Latency, LatencyError, trim};
use crate::recommend::{Inputs, Plan, plan};
use crate::report::SimReport;
use crate::sim::{Rate, Scenario, Sim, SimConfig};
use crate::spec::{FleetSpec, Overrides};

/// Where the latency data comes from.
#[derive(Debug, Clone)]
pub enum LatencySource {
    /// The text of a file (or stdin), with the file's name for messages.
    Text {
        /// Shown in errors.
        name: String,
        /// The contents.
        text: String,
    },
    /// Only the longest request.
    Max(Duration),
    /// Nothing given: the workload's annotation, else the inference assumption.
    FromWorkload,
}

/// Everything a plan run needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// Objects read from `-f` (empty: flags only).
    pub objects: Vec<Object>,
    /// `--workload NAME`, when the input has several.
    pub workload: Option<String>,
    /// Latency input.
    pub latency: LatencySource,
    /// `--metric`.
    pub metric: Option<String>,
    /// `--column`.
    pub column: Option<String>,
    /// `--percentile`.
    pub percentile: f64,
    /// `--rate` / `--rate-profile` (parsed); `None`: 60% of the fleet's capacity.
    pub rate: Option<Rate>,
    /// `--scenario` (empty: the defaults).
    pub scenarios: Vec<Scenario>,
    /// `--compare`.
    pub compare: bool,
    /// `--seed`.
    pub seed: u64,
    /// `--every`.
    pub every: Option<Duration>,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `--spot`.
    pub spot: Option<Spot>,
    /// Flag overrides of the spec.
    pub overrides: Overrides,
    /// `--quiet-period`: the `rainbow` scenario's (default: the RainbowDeployment's, else 30 s).
    pub quiet_period: Option<Duration>,
    /// `--max-age` (`0`: none): the `rainbow` scenario's (default: the RainbowDeployment's,
    /// else 24 h).
    pub max_age: Option<Duration>,
    /// `--handoff`: also simulate gates that hand streams to a peer at the deadline (on by
    /// itself when the workload's gate has `--handoff-to`).
    pub handoff: bool,
    /// `--gateway`: also simulate clients that reach the pods through a `lameduck gate
    /// --gateway`, which continues on a peer every stream a pod ends.
    pub gateway: bool,
}

/// What a simulated row adds to the pods.
#[derive(Debug, Clone, Copy)]
struct Variant {
    /// `lameduck agent` on spot, surge-first `lameduck drain` on a node drain.
    helped: bool,
    /// The gates hand off what cannot finish (`--handoff-to`).
    handoff: bool,
    /// Clients behind `lameduck gate --gateway`.
    gateway: bool,
}

impl Variant {
    const PLAIN: Variant = Variant {
        helped: false,
        handoff: false,
        gateway: false,
    };
    const HELPED: Variant = Variant {
        helped: true,
        ..Variant::PLAIN
    };
}

/// A plan run that cannot go on; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The latency data is unusable.
    #[error("{name}: {source}")]
    Latency {
        /// The input's name.
        name: String,
        /// What is wrong.
        source: LatencyError,
    },
    /// Anything else about the input.
    #[error("{0}")]
    Input(String),
}

/// Share of the fleet's capacity used when no rate is given.
pub const DEFAULT_UTILIZATION: f64 = 0.6;

/// Summary of the latency data.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Where it came from.
    pub source: String,
    /// Median (seconds).
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Longest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// One simulation in the output.
#[derive(Debug, Clone, Serialize)]
pub struct RunOut {
    /// `current`, `recommended`, `current + agent`, `current + rainbow`, …
    pub spec: String,
    /// What it measured.
    #[serde(flatten)]
    pub report: SimReport,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// The workload planned for.
    pub workload: String,
    /// The latency data.
    pub latency: LatencySummary,
    /// Mean request rate simulated (requests per second).
    pub rate: f64,
    /// Assumptions made and where numbers came from.
    pub notes: Vec<String>,
    /// The recommendations.
    pub plan: Plan,
    /// The current fleet, as simulated.
    pub current: FleetSpec,
    /// The simulations.
    pub runs: Vec<RunOut>,
}

/// The recommendations alone, without simulating: the fleet as it is, the plan, the notes.
pub fn recommend(req: &Request) -> Result<(FleetSpec, Plan, Vec<String>), RunError> {
    let (current, mut notes, workload) = resolve(req)?;
    let latency = read_latency(req, workload.as_ref(), &mut notes)?;
    let mean = latency.mean().as_secs_f64().max(1e-3);
    let rate = match &req.rate {
        Some(r) => r.mean(),
        None => {
            f64::from(current.replicas) * f64::from(current.pod.concurrency) / mean
                * DEFAULT_UTILIZATION
        }
    };
    let spot = req
        .spot
        .or_else(|| workload.as_ref().and_then(|w| facts::spot(w)));
    let the_plan = plan(
        &current,
        &Inputs {
            latency: &latency,
            percentile: req.percentile,
            rate,
            spot,
        },
    );
    Ok((current, the_plan, notes))
}

/// Runs a plan.
pub fn execute(req: &Request) -> Result<Output, RunError> {
    let (current, mut notes, workload) = resolve(req)?;
    let latency = read_latency(req, workload.as_ref(), &mut notes)?;
    if latency.overflow > 0.0 {
        notes.push(format!(
            "{}% of the histogram's observations are above its top bucket; percentiles up there are lower bounds: pass --max-request with the real longest request",
            trim(latency.overflow * 100.0)
        ));
    }
    let mean = latency.mean().as_secs_f64().max(1e-3);
    let capacity = f64::from(current.replicas) * f64::from(current.pod.concurrency) / mean;
    let rate = match &req.rate {
        Some(r) => r.clone(),
        None => {
            let r = capacity * DEFAULT_UTILIZATION;
            notes.push(format!(
                "rate {}/s: {}% of the fleet's capacity ({} replicas × {} requests each / mean {}s); pass --rate with your traffic",
                trim(r),
                DEFAULT_UTILIZATION * 100.0,
                current.replicas,
                current.pod.concurrency,
                trim(mean)
            ));
            Rate::Constant(r)
        }
    };
    if rate.peak() > capacity {
        notes.push(format!(
            "the {}rate ({}/s) is above what {} replicas × {} concurrent requests can serve ({}/s): queues grow while it lasts",
            if matches!(rate, Rate::Daily(_)) { "peak " } else { "" },
            trim(rate.peak()),
            current.replicas,
            current.pod.concurrency,
            trim(capacity)
        ));
    }
    let spot = req
        .spot
        .or_else(|| workload.as_ref().and_then(|w| facts::spot(w)));
    let the_plan = plan(
        &current,
        &Inputs {
            latency: &latency,
            percentile: req.percentile,
            rate: rate.mean(),
            spot,
        },
    );
    let is_rainbow = workload
        .as_ref()
        .is_some_and(|w| w.kind == WorkloadKind::RainbowDeployment);
    let scenarios = if req.scenarios.is_empty() {
        let mut s = vec![Scenario::Drain, Scenario::Rollout, Scenario::ScaleDown];
        s.extend(spot.map(Scenario::of));
        if is_rainbow {
            s.push(Scenario::Rainbow);
        }
        s
    } else {
        req.scenarios
            .iter()
            .map(|&s| match (s, spot) {
                (Scenario::Spot, Some(p)) => Ok(Scenario::of(p)),
                (Scenario::Spot, None) => Err(RunError::Input(
                    "the `spot` scenario needs the workload's provider: pass --spot aws|gcp|azure, or name the scenario spot-aws, spot-gcp or spot-azure".into(),
                )),
                (s, _) => Ok(s),
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    // Warm up until requests in flight are at their steady state.
    let start = latency
        .max()
        .min(Duration::from_secs(600))
        .max(Duration::from_secs(60));
    let horizon = match (req.duration, req.every) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => Some(Duration::from_secs(24 * 3600)),
        (None, None) => None,
    };
    if let Some(h) = horizon
        && h <= start
    {
        return Err(RunError::Input(format!(
            "--duration {}s ends before the first disruption at {}s (after warming up for the longest request): make it longer",
            h.as_secs(),
            start.as_secs()
        )));
    }
    let rainbow = if scenarios.contains(&Scenario::Rainbow) {
        Some(rainbow_settings(req, workload.as_ref(), current.replicas)?)
    } else {
        None
    };
    let config = |scenario| SimConfig {
        scenario,
        seed: req.seed,
        start,
        every: req.every,
        horizon,
        sample_every: Duration::from_secs(1),
        agent: false,
        surge: false,
        rainbow: rainbow.clone(),
        handoff: false,
        gateway: false,
    };
    // A rolling update whose grace period covers the longest request: what the rainbow is
    // compared with (the grace is the plan's own).
    let long_grace = FleetSpec {
        pod: crate::spec::PodModel {
            grace: the_plan.fleet.pod.grace.max(current.pod.grace),
            ..current.pod
        },
        ..current.clone()
    };
    // Handoff rows: asked for, or the workload's gate has `--handoff-to`.
    let handoff = req.handoff
        || workload.as_ref().is_some_and(|w| {
            w.model
                .gate
                .as_ref()
                .is_some_and(|g| g.args.handoff_to.is_some())
        });
    if handoff && current.pod.gated() {
        notes.push(format!(
            "handoff (+ handoff rows): a stream handed off at the deadline is relayed through its own pod, so it completes only if the rest of it (plus {} s of prefill on the peer) fits before that pod's end; the grace period still has to cover the longest request (docs/handoff.md)",
            lameduck_timeline::secs_plain(crate::sim::HANDOFF_PREFILL)
        ));
    } else if handoff {
        notes.push(
            "--handoff: the pods have no gate, so nothing is handed off (no + handoff rows)".into(),
        );
    }
    if req.gateway {
        notes.push(format!(
            "gateway (+ gateway rows): clients reach the pods through `lameduck gate --gateway`, which holds their connections; every stream a pod ends (its deadline, its SIGKILL, its node's end) continues on a peer with a free slot after {} s of prefill there, so the grace period no longer has to cover the longest request (docs/handoff.md)",
            lameduck_timeline::secs_plain(crate::sim::HANDOFF_PREFILL)
        ));
    }
    let mut runs = Vec::new();
    for &scenario in &scenarios {
        // (label, spec, scenario as simulated, what helps it)
        let mut specs: Vec<(String, &FleetSpec, Scenario, Variant)> =
            vec![("current".into(), &current, scenario, Variant::PLAIN)];
        if req.compare {
            specs.push((
                "recommended".into(),
                &the_plan.fleet,
                scenario,
                Variant::PLAIN,
            ));
        }
        // On spot, a gated fleet is also simulated with `lameduck agent` on its nodes.
        if scenario.provider().is_some() {
            if current.pod.gated() {
                specs.push((
                    "current + agent".into(),
                    &current,
                    scenario,
                    Variant::HELPED,
                ));
            }
            if req.compare && the_plan.fleet.pod.gated() {
                specs.push((
                    "recommended + agent".into(),
                    &the_plan.fleet,
                    scenario,
                    Variant::HELPED,
                ));
            }
        }
        // A node drain is also simulated as `lameduck drain` does it: surge first.
        if scenario == Scenario::Drain {
            specs.push((
                "current + surge".into(),
                &current,
                scenario,
                Variant::HELPED,
            ));
            if req.compare {
                specs.push((
                    "recommended + surge".into(),
                    &the_plan.fleet,
                    scenario,
                    Variant::HELPED,
                ));
            }
        }
        // Gates that hand what cannot finish to a peer, and clients behind a gateway that
        // continues whatever a pod ends (each with the agent on spot).
        for (name, wanted, variant) in [
            (
                "handoff",
                handoff && current.pod.gated(),
                Variant {
                    handoff: true,
                    ..Variant::PLAIN
                },
            ),
            (
                "gateway",
                req.gateway,
                Variant {
                    gateway: true,
                    ..Variant::PLAIN
                },
            ),
        ] {
            if !wanted || scenario == Scenario::Rainbow {
                continue;
            }
            let agent = scenario.provider().is_some() && current.pod.gated();
            let label = if agent {
                format!("current + agent + {name}")
            } else {
                format!("current + {name}")
            };
            specs.push((
                label,
                &current,
                scenario,
                Variant {
                    helped: agent,
                    ..variant
                },
            ));
        }
        // A rainbow release against the rolling updates of the same pods: with their grace
        // period, and with one that covers the longest request.
        if scenario == Scenario::Rainbow {
            specs = vec![(
                "current".into(),
                &current,
                Scenario::Rollout,
                Variant::PLAIN,
            )];
            if long_grace.pod.grace > current.pod.grace {
                specs.push((
                    format!(
                        "current + grace {}s",
                        lameduck_timeline::secs_plain(long_grace.pod.grace)
                    ),
                    &long_grace,
                    Scenario::Rollout,
                    Variant::PLAIN,
                ));
            }
            specs.push((
                "current + rainbow".into(),
                &current,
                Scenario::Rainbow,
                Variant::PLAIN,
            ));
        }
        let simulate = |spec: &FleetSpec,
                        scenario: Scenario,
                        Variant {
                            helped,
                            handoff,
                            gateway,
                        }: Variant,
                        cfg: SimConfig| {
            let cfg = SimConfig {
                scenario,
                agent: helped && scenario.provider().is_some(),
                surge: helped && scenario == Scenario::Drain,
                handoff,
                gateway,
                ..cfg
            };
            Sim::new(spec, &latency, rate.clone(), cfg).run()
        };
        let mut reports: Vec<SimReport> = specs
            .iter()
            .map(|(_, s, sc, variant)| simulate(s, *sc, *variant, config(scenario)))
            .collect();
        // Compared specs see the same arrivals: send requests for as long as the slower one
        // needed, to both.
        if reports.len() > 1 && horizon.is_none() {
            let until = reports.iter().map(|r| r.arrivals_until).fold(0.0, f64::max);
            let cfg = SimConfig {
                horizon: Some(Duration::from_secs_f64(until)),
                ..config(scenario)
            };
            reports = specs
                .iter()
                .map(|(_, s, sc, variant)| simulate(s, *sc, *variant, cfg.clone()))
                .collect();
        }
        for ((label, _, _, _), report) in specs.into_iter().zip(reports) {
            runs.push(RunOut {
                spec: label,
                report,
            });
        }
    }
    Ok(Output {
        workload: current.name.clone(),
        latency: LatencySummary {
            source: latency.source.clone(),
            p50: latency.percentile(50.0).as_secs_f64(),
            p99: latency.percentile(99.0).as_secs_f64(),
            p999: latency.percentile(99.9).as_secs_f64(),
            max: latency.max().as_secs_f64(),
            mean,
        },
        rate: rate.mean(),
        notes,
        plan: the_plan,
        current,
        runs,
    })
}

/// The `rainbow` scenario's settings: the RainbowDeployment's when the workload is one, else
/// its defaults; `--quiet-period` and `--max-age` win over both.
fn rainbow_settings(
    req: &Request,
    workload: Option<&Workload<'_>>,
    replicas: u32,
) -> Result<Settings, RunError> {
    let mut s = crate::sim::rainbow_defaults(replicas);
    if let Some(w) = workload.filter(|w| w.kind == WorkloadKind::RainbowDeployment) {
        let at = format!(
            "{} ({}/{})",
            w.object.file.display(),
            w.object.kind,
            w.object.name
        );
        let spec: RainbowDeploymentSpec =
            serde_json::from_value(w.object.value.get("spec").cloned().unwrap_or_default())
                .map_err(|e| RunError::Input(format!("{at}: spec: {e}")))?;
        s = spec
            .settings()
            .map_err(|e| RunError::Input(format!("{at}: {e}")))?;
        s.autoscaled = false;
    }
    if let Some(q) = req.quiet_period {
        s.quiet = q;
    }
    if let Some(m) = req.max_age {
        s.max_age = (!m.is_zero()).then_some(m);
    }
    Ok(s)
}

fn resolve(req: &Request) -> Result<(FleetSpec, Vec<String>, Option<Workload<'_>>), RunError> {
    let workloads: Vec<Workload<'_>> = req
        .objects
        .iter()
        .filter_map(Workload::from_object)
        .filter_map(Result::ok)
        .filter(|w| w.kind.has_replicas())
        .collect();
    if req.objects.is_empty() {
        let (spec, notes) = FleetSpec::from_flags(&req.overrides);
        return Ok((spec, notes, None));
    }
    let names = || {
        workloads
            .iter()
            .map(|w| format!("{}/{}", w.object.kind, w.object.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match &req.workload {
        Some(n) => workloads
            .iter()
            .position(|w| {
                w.object.name == *n || format!("{}/{}", w.object.kind, w.object.name) == *n
            })
            .ok_or_else(|| {
                RunError::Input(format!(
                    "no workload named `{n}` in the input; it has: {}",
                    names()
                ))
            })?,
        None if workloads.len() == 1 => 0,
        None if workloads.is_empty() => {
            return Err(RunError::Input(
                "the input has no Deployment, StatefulSet or ReplicaSet to plan for".into(),
            ));
        }
        None => {
            return Err(RunError::Input(format!(
                "the input has several workloads ({}): pick one with --workload NAME",
                names()
            )));
        }
    };
    let w = workloads
        .into_iter()
        .nth(chosen)
        .ok_or_else(|| RunError::Input("no workload".into()))?;
    let (spec, notes) = FleetSpec::from_workload(&w, &req.objects, &req.overrides);
    Ok((spec, notes, Some(w)))
}

fn read_latency(
    req: &Request,
    w: Option<&Workload<'_>>,
    notes: &mut Vec<String>,
) -> Result<Latency, RunError> {
    match &req.latency {
        LatencySource::Text { name, text } => {
            Latency::parse(text, req.metric.as_deref(), req.column.as_deref()).map_err(|source| {
                RunError::Latency {
                    name: name.clone(),
                    source,
                }
            })
        }
        LatencySource::Max(d) => Ok(Latency::from_max(*d)),
        LatencySource::FromWorkload => {
            let found = w.and_then(|w| facts::max_request_described(w, None));
            match found {
                Some((d, from)) => {
                    notes.push(format!(
                        "longest request {} s ({from}); --latency FILE sizes the budget from real data",
                        lameduck_timeline::secs_plain(d)
                    ));
                    let mut l = Latency::from_max(d);
                    l.longest_from = Some(from);
                    Ok(l)
                }
                None => Err(RunError::Input(
                    "no request durations: pass --latency FILE (durations, CSV or a Prometheus histogram) or --max-request DURATION".into(),
                )),
            }
        }
    }
}

/// Reads a `--rate-profile` file: lines of `HH:MM RATE` (or `H RATE`), each rate holding
/// until the next line's time, wrapping at midnight.
pub fn parse_rate_profile(name: &str, text: &str) -> Result<Rate, RunError> {
    let mut steps = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || {
            RunError::Input(format!(
                "{name}:{}: `{l}` is not `HH:MM RATE` (e.g. `09:30 45`)",
                i + 1
            ))
        };
        let mut parts = l.split([' ', '\t', ',']).filter(|p| !p.is_empty());
        let (Some(at), Some(rate)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        let (h, m) = at.split_once(':').unwrap_or((at, "0"));
        let (Ok(h), Ok(m), Ok(r)) = (h.parse::<u32>(), m.parse::<u32>(), rate.parse::<f64>())
        else {
            return Err(bad());
        };
        if h > 23 || m > 59 || !r.is_finite() || r < 0.0 {
            return Err(bad());
        }
        steps.push((f64::from(h * 3600 + m * 60), r));
    }
    if steps.is_empty() {
        return Err(RunError::Input(format!("{name}: no `HH:MM RATE` lines")));
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Rate::Daily(steps))
}

/// Reads the latency file (`-`: stdin).
pub fn read_text(path: &PathBuf) -> Result<(String, String), RunError> {
    let is_stdin = path.as_os_str() == "-";
    let name = if is_stdin {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    let text = if is_stdin {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| RunError::Input(format!("stdin: cannot read: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| RunError::Input(format!("{name}: cannot read: {e}")))?
    };
    Ok((name, text))
}

/// The terminal report: the latency data, the recommendations with their arithmetic, notes,
/// and the table of simulations.
pub fn render_text(o: &Output) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(t, "lameduck plan: {}", o.workload);
    let l = &o.latency;
    let _ = writeln!(
        t,
        "  requests: {}; p50 {}s, p99 {}s, p99.9 {}s, max {}s; {}/s simulated",
        l.source,
        trim(l.p50),
        trim(l.p99),
        trim(l.p999),
        trim(l.max),
        trim(o.rate)
    );
    let _ = writeln!(t, "\nRecommendations");
    for r in &o.plan.recommendations {
        let now = r
            .current
            .as_deref()
            .map(|c| format!("   (now: {c})"))
            .unwrap_or_default();
        let _ = writeln!(t, "  {}: {}{now}", r.setting, r.value);
        let _ = writeln!(t, "      {}", r.arithmetic);
    }
    if !o.notes.is_empty() {
        let _ = writeln!(t, "\nAssumptions");
        for n in &o.notes {
            let _ = writeln!(t, "  - {n}");
        }
    }
    if !o.runs.is_empty() {
        let _ = writeln!(
            t,
            "\nSimulation (seed {}; times in seconds; refused = never served; killed silently = cut dead, no terminal event; ended cleanly = the gate's deadline ended it with a terminal event; + agent: `lameduck agent` on the nodes; + surge: `lameduck drain`, replacements Ready before the node's pods go; + handoff: the gates hand streams that cannot finish to a peer; + gateway: clients behind `lameduck gate --gateway`, which continues on a peer every stream a pod ends; + grace: the rolling update with a grace period covering the longest request; + rainbow: `lameduck rainbow`, a new colour beside the old one, retired when its gates are idle; extra pod-h = pod-hours above the replicas)",
            o.runs[0].report.seed
        );
        let rows: Vec<crate::report::Row<'_>> = o
            .runs
            .iter()
            .map(|r| (r.spec.as_str(), &r.report))
            .collect();
        t.push_str(&crate::report::table(&rows));
    }
    t
}
