//! What the simulator runs: a fleet of one workload, resolved from a manifest (or from flags
//! alone) into timeline terms.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_manifest::workload::{scaled, selects};
use lameduck_manifest::{Object, Workload};
use lameduck_timeline::{Convergence, PreStop, Termination};
use serde::Serialize;

/// What an engine does when it receives SIGTERM while requests are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum OnSigterm {
    /// Ends every in-flight request at once and stops listening (vLLM's default,
    /// `--shutdown-timeout 0`).
    Abort,
    /// Stops taking new requests, finishes the in-flight ones, then exits; after `limit` (when
    /// set, e.g. vLLM's `--shutdown-timeout N`) it aborts what is left.
    Drain {
        /// The engine's own drain limit.
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "crate::report::ser_opt_secs"
        )]
        limit: Option<Duration>,
    },
    /// Carries on serving until SIGKILL.
    Ignore,
}

/// How a pod goes from deletion to exit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Shutdown {
    /// The gate's `/drain` is the preStop: unready at once, serve through the convergence
    /// window, finish in-flight work, end streams cleanly at the deadline; the engine gets
    /// SIGTERM when nothing is left.
    Gate {
        /// The gate's announcing window.
        convergence: Convergence,
        /// The gate's kill margin.
        #[serde(serialize_with = "crate::report::ser_secs")]
        margin: Duration,
    },
    /// The kubelet's sequence with a preStop of known length, then SIGTERM to the engine.
    Plain {
        /// How long the preStop runs (zero without one).
        #[serde(serialize_with = "crate::report::ser_secs")]
        pre_stop: Duration,
        /// The engine's reaction to SIGTERM.
        on_sigterm: OnSigterm,
    },
}

/// One pod's timing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PodModel {
    /// `terminationGracePeriodSeconds`.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub grace: Duration,
    /// The termination sequence.
    pub shutdown: Shutdown,
    /// From container start until the engine serves.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub cold_start: Duration,
    /// From container start until the pod is Ready (its readiness probe's first success; zero
    /// without a probe, which makes the pod Ready before it serves).
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub ready_after: Duration,
    /// Requests one pod runs at once; more wait in its queue.
    pub concurrency: u32,
}

impl PodModel {
    /// Whether a gate drains the pod.
    pub fn gated(&self) -> bool {
        matches!(self.shutdown, Shutdown::Gate { .. })
    }

    /// The kubelet's view of the termination (for SIGTERM and SIGKILL instants), with the
    /// grace period the deletion asked for.
    pub fn termination(&self, grace: Duration) -> Termination {
        let pre_stop = match self.shutdown {
            Shutdown::Gate { .. } => PreStop::HttpGet { expected: None },
            Shutdown::Plain { pre_stop, .. } => PreStop::Sleep(pre_stop),
        };
        Termination { grace, pre_stop }
    }
}

/// A whole workload's fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetSpec {
    /// Shown in reports.
    pub name: String,
    /// Desired replicas.
    pub replicas: u32,
    /// Every pod's timing.
    pub pod: PodModel,
    /// Rolling update: pods above replicas.
    pub max_surge: u32,
    /// Rolling update: pods that may be unavailable.
    pub max_unavailable: u32,
    /// The PodDisruptionBudget's floor of healthy pods, if one selects the workload.
    pub pdb_min_available: Option<u32>,
    /// How many of the workload's pods share a node.
    pub pods_per_node: u32,
    /// Time for the load balancers to act on a change of endpoints.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub propagation_lag: Duration,
}

/// Settings given on the command line; each one wins over the manifest.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--replicas`.
    pub replicas: Option<u32>,
    /// `--cold-start`.
    pub cold_start: Option<Duration>,
    /// `--concurrency`.
    pub concurrency: Option<u32>,
    /// `--pods-per-node`.
    pub pods_per_node: Option<u32>,
    /// `--propagation-lag`.
    pub propagation_lag: Option<Duration>,
    /// `--on-sigterm`.
    pub on_sigterm: Option<OnSigterm>,
    /// `--grace-period` (flags-only runs).
    pub grace: Option<Duration>,
    /// `--pre-stop` (flags-only runs).
    pub pre_stop: Option<Duration>,
}

/// Cold start assumed for an inference server (the seed's 30–90 s).
pub const INFERENCE_COLD_START: Duration = Duration::from_secs(60);
/// Cold start assumed for anything else.
pub const DEFAULT_COLD_START: Duration = Duration::from_secs(5);
/// Requests one pod runs at once, unless `--concurrency` says otherwise.
pub const DEFAULT_CONCURRENCY: u32 = 32;
/// Endpoint propagation lag assumed unless `--propagation-lag` gives the measured one (the
/// gate's drain report measures it).
pub const DEFAULT_LAG: Duration = Duration::from_secs(3);

/// Notes about how a spec was resolved (assumptions the user should know about).
pub type Notes = Vec<String>;

impl FleetSpec {
    /// A fleet from flags only: a plain pod without preStop unless the overrides say more.
    pub fn from_flags(o: &Overrides) -> (FleetSpec, Notes) {
        let replicas = o.replicas.unwrap_or(1).max(1);
        let cold = o.cold_start.unwrap_or(DEFAULT_COLD_START);
        let pod = PodModel {
            grace: o.grace.unwrap_or(lameduck_timeline::DEFAULT_GRACE),
            shutdown: Shutdown::Plain {
                pre_stop: o.pre_stop.unwrap_or_default(),
                on_sigterm: o.on_sigterm.unwrap_or(OnSigterm::Drain { limit: None }),
            },
            cold_start: cold,
            ready_after: cold,
            concurrency: o.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
        };
        let spec = FleetSpec {
            name: "(flags)".into(),
            replicas,
            pod,
            max_surge: scaled(None, replicas as i32, 25, true).max(0) as u32,
            max_unavailable: scaled(None, replicas as i32, 25, false).max(0) as u32,
            pdb_min_available: None,
            pods_per_node: o.pods_per_node.unwrap_or(1).max(1),
            propagation_lag: o.propagation_lag.unwrap_or(DEFAULT_LAG),
        };
        (spec.normalized(), Vec::new())
    }

    /// A fleet from a workload and the objects loaded with it (for its PodDisruptionBudget).
    pub fn from_workload(w: &Workload<'_>, all: &[Object], o: &Overrides) -> (FleetSpec, Notes) {
        let mut notes = Notes::new();
        let replicas = o
            .replicas
            .or(w.replicas.and_then(|r| u32::try_from(r).ok()))
            .unwrap_or(1)
            .max(1);
        let serving = w.model.serving_container(None).ok().flatten();
        let inference = w.model.inference();
        let cold = o.cold_start.unwrap_or_else(|| {
            let d = if inference {
                INFERENCE_COLD_START
            } else {
                DEFAULT_COLD_START
            };
            notes.push(format!(
                "cold start assumed {}s{}: pass --cold-start with your measured time",
                d.as_secs(),
                if inference {
                    " (an inference server)"
                } else {
                    ""
                }
            ));
            d
        });
        let timeline = serving.and_then(|i| w.model.containers.get(i));
        let ready_after = match timeline.and_then(|t| t.readiness) {
            Some(p) => {
                let startup = timeline
                    .and_then(|t| t.startup)
                    .map_or(Duration::ZERO, |s| s.time_to_succeed(cold));
                p.time_to_succeed(cold.max(startup))
            }
            None => {
                notes.push(
                    "no readiness probe: a new pod is Ready (and gets traffic) before its engine serves"
                        .into(),
                );
                Duration::ZERO
            }
        };
        let shutdown = if let Some(g) = &w.model.gate {
            Shutdown::Gate {
                convergence: Convergence {
                    min: g.args.convergence_min.0,
                    quiet: g.args.convergence_quiet.0,
                    max: g.args.convergence_max.0,
                },
                margin: g.args.kill_margin.0,
            }
        } else {
            let pre_stop = match timeline.map(|t| &t.termination.pre_stop) {
                Some(PreStop::Exec { sleep: None }) => {
                    notes.push(
                        "the preStop's run time cannot be read from its command: counted as 0 s"
                            .into(),
                    );
                    Duration::ZERO
                }
                Some(p) => p.duration().unwrap_or_default(),
                None => Duration::ZERO,
            };
            let container = serving
                .and_then(|i| w.model.containers.get(i))
                .and_then(|c| w.container(c.slot));
            let on_sigterm = o.on_sigterm.unwrap_or_else(|| {
                let (mode, why) = container.map_or(
                    (OnSigterm::Drain { limit: None }, "assumed".to_owned()),
                    detect_on_sigterm,
                );
                notes.push(format!(
                    "engine on SIGTERM: {} ({why}); --on-sigterm changes it",
                    describe(mode)
                ));
                mode
            });
            Shutdown::Plain {
                pre_stop,
                on_sigterm,
            }
        };
        let ru = w.rolling_update();
        let (mut max_surge, max_unavailable) = ru.map_or((1, 0), |r| {
            (r.max_surge.max(0) as u32, r.max_unavailable.max(0) as u32)
        });
        if ru.is_some() && max_surge == 0 && max_unavailable == 0 {
            max_surge = 1;
        }
        let spec = FleetSpec {
            name: format!("{}/{}", w.object.kind, w.object.name),
            replicas,
            pod: PodModel {
                grace: w.grace(),
                shutdown,
                cold_start: cold,
                ready_after,
                concurrency: o.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            },
            max_surge,
            max_unavailable,
            pdb_min_available: pdb_floor(w, all, replicas),
            pods_per_node: o.pods_per_node.unwrap_or(1).max(1),
            propagation_lag: o.propagation_lag.unwrap_or(DEFAULT_LAG),
        };
        (spec.normalized(), notes)
    }

    fn normalized(mut self) -> Self {
        if self.max_surge == 0 && self.max_unavailable == 0 {
            self.max_surge = 1;
        }
        self
    }
}

/// A short description of an engine's SIGTERM behaviour.
pub fn describe(m: OnSigterm) -> String {
    match m {
        OnSigterm::Abort => "aborts in-flight requests".into(),
        OnSigterm::Drain { limit: None } => "finishes in-flight requests".into(),
        OnSigterm::Drain { limit: Some(l) } => {
            format!("finishes in-flight requests for up to {}s", l.as_secs())
        }
        OnSigterm::Ignore => "ignores it until SIGKILL".into(),
    }
}

fn words(c: &core::Container) -> Vec<&str> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .flat_map(|s| s.split_whitespace())
        .collect()
}

/// What a container's engine does on SIGTERM, and why we think so (from what each server is
/// known to do, `lameduck_pod::engines`, and its own shutdown flags).
fn detect_on_sigterm(c: &core::Container) -> (OnSigterm, String) {
    let ws = words(c);
    let flag = |name: &str| -> Option<u64> {
        ws.iter().enumerate().find_map(|(i, w)| {
            w.strip_prefix(&format!("{name}="))
                .or_else(|| (*w == name).then(|| ws.get(i + 1).copied()).flatten())
                .and_then(|v| v.parse::<u64>().ok())
        })
    };
    let drain = |secs: u64, why: String| {
        (
            OnSigterm::Drain {
                limit: Some(Duration::from_secs(secs)),
            },
            why,
        )
    };
    match lameduck_pod::engines::identify(c).map(|(e, _)| e.id) {
        Some("vllm") => match flag("--shutdown-timeout") {
            Some(0) | None => (
                OnSigterm::Abort,
                "vLLM without --shutdown-timeout aborts in-flight requests".into(),
            ),
            Some(n) => drain(n, format!("vLLM --shutdown-timeout {n}")),
        },
        Some("ollama") => (
            OnSigterm::Abort,
            "Ollama closes its server at once on SIGTERM".into(),
        ),
        Some("tgi") => {
            let n = flag("--graceful-termination-timeout").unwrap_or(90);
            drain(
                n,
                format!("TGI waits up to {n} s (--graceful-termination-timeout)"),
            )
        }
        Some("triton") => {
            let n = flag("--exit-timeout-secs").unwrap_or(30);
            drain(n, format!("Triton waits up to {n} s (--exit-timeout-secs)"))
        }
        Some("sglang") => (
            OnSigterm::Drain { limit: None },
            "SGLang finishes in-flight requests, with no limit of its own".into(),
        ),
        _ => (
            OnSigterm::Drain { limit: None },
            "assumed for an engine not known to abort".into(),
        ),
    }
}

/// The floor of healthy pods set by the PodDisruptionBudget that selects the workload.
fn pdb_floor(w: &Workload<'_>, all: &[Object], replicas: u32) -> Option<u32> {
    let labels = w.pod_labels();
    let ns = w.object.namespace.as_deref();
    all.iter()
        .filter(|o| o.kind == "PodDisruptionBudget" && o.namespace.as_deref() == ns)
        .filter_map(|o| o.typed::<PodDisruptionBudget>().ok())
        .filter_map(|p| p.spec)
        .find(|s| s.selector.as_ref().is_some_and(|sel| selects(sel, &labels)))
        .map(|s| {
            let r = replicas as i32;
            let floor = match (&s.min_available, &s.max_unavailable) {
                (Some(min), _) => scaled(Some(min), r, 0, true),
                (None, Some(max)) => r - scaled(Some(max), r, 0, true),
                (None, None) => scaled(Some(&IntOrString::Int(1)), r, 0, true),
            };
            floor.clamp(0, r) as u32
        })
}
