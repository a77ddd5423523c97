//! One reading of a pod, from its spec alone (no file positions): which containers serve,
//! which one is the engine, whether and how the gate fronts it and with which flags, and each
//! container's termination timeline. Built the same way from a manifest's pod template and
//! from a live Pod.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_timeline::{PreStop, Probe, Termination, parse_duration};

use crate::engines::{self, Engine, Evidence};
use crate::gate_args::{GateArgs, GateArgsError, GateFlags};

/// Where a container sits in the pod spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `containers[i]`.
    App(usize),
    /// `initContainers[i]` with `restartPolicy: Always`: a native sidecar.
    Sidecar(usize),
    /// `initContainers[i]` that runs to completion before the others start.
    Init(usize),
}

impl Slot {
    /// The path of the container relative to the pod spec (`containers[0]`).
    pub fn path(self) -> String {
        match self {
            Slot::App(i) => format!("containers[{i}]"),
            Slot::Sidecar(i) | Slot::Init(i) => format!("initContainers[{i}]"),
        }
    }

    /// Whether it runs for the pod's whole life (app containers and native sidecars).
    pub fn long_running(self) -> bool {
        !matches!(self, Slot::Init(_))
    }
}

/// How the gate is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateMode {
    /// The gate fronts an engine in another container (`--upstream`).
    Sidecar,
    /// The gate runs the engine as its child (`lameduck gate … -- CMD`).
    Wrapper,
    /// The gate fronts a Service, not a container of its pod (`--gateway`): it is the pod's
    /// server itself.
    Gateway,
}

/// The gate as the pod runs it.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Its container.
    pub slot: Slot,
    /// Sidecar or wrapper.
    pub mode: GateMode,
    /// Its flags as written, or why they could not be read.
    pub flags: Result<GateFlags, GateArgsError>,
    /// Its arguments (the defaults when the flags could not be read).
    pub args: GateArgs,
    /// Whether the flags came from a command line lameduck understood (`lameduck gate …`, a
    /// path to the binary, or a shell running it).
    pub parsed: bool,
}

impl Gate {
    /// The admin port (from `--admin`, else the default).
    pub fn admin_port(&self) -> u16 {
        self.args.admin.port()
    }

    /// Whether it runs as a native sidecar (in sidecar mode that is what it must be).
    pub fn native(&self) -> bool {
        matches!(self.slot, Slot::Sidecar(_))
    }
}

/// One container, read.
#[derive(Debug, Clone)]
pub struct Container {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub slot: Slot,
    /// The engine it runs, and how that was told.
    pub engine: Option<(&'static Engine, Evidence)>,
    /// It requests a GPU or another accelerator.
    pub accelerator: bool,
    /// It takes traffic: declares ports, has a readiness probe, or runs an engine.
    pub serving: bool,
    /// It runs the gate.
    pub gate: bool,
    /// Its termination timeline.
    pub termination: Termination,
    /// Probe timings.
    pub readiness: Option<Probe>,
    /// Liveness probe timing.
    pub liveness: Option<Probe>,
    /// Startup probe timing.
    pub startup: Option<Probe>,
}

impl Container {
    /// Whether it looks like an inference server: a known engine, or a GPU.
    pub fn inference(&self) -> bool {
        self.engine.is_some() || self.accelerator
    }
}

/// Which container serves, when that cannot be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingError {
    /// No container by that name.
    NoSuchContainer {
        /// The name asked for.
        name: String,
        /// The names there are.
        names: Vec<String>,
    },
    /// Several containers serve and none (or several) is a known engine.
    Ambiguous(Vec<String>),
}

impl std::fmt::Display for ServingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServingError::NoSuchContainer { name, names } => write!(
                f,
                "no container named `{name}` (it has: {})",
                names.join(", ")
            ),
            ServingError::Ambiguous(names) => write!(
                f,
                "several containers serve ({}) and lameduck cannot tell which one is the engine",
                names.join(", ")
            ),
        }
    }
}

/// The pod, read.
#[derive(Debug, Clone)]
pub struct PodModel {
    /// Every container: app containers, then init containers (native sidecars and plain).
    pub containers: Vec<Container>,
    /// The gate, if one runs.
    pub gate: Option<Gate>,
    /// `terminationGracePeriodSeconds`, or the kubelet's default.
    pub grace: Duration,
    /// Whether the grace period is written (not the default).
    pub grace_set: bool,
}

impl PodModel {
    /// Reads a pod spec.
    pub fn new(spec: &core::PodSpec) -> PodModel {
        let grace = spec
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(lameduck_timeline::DEFAULT_GRACE, Duration::from_secs);
        let apps = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (Slot::App(i), c));
        let inits = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| {
                if c.restart_policy.as_deref() == Some("Always") {
                    (Slot::Sidecar(i), c)
                } else {
                    (Slot::Init(i), c)
                }
            });
        let all: Vec<(Slot, &core::Container)> = apps.chain(inits).collect();
        let mut gate = None;
        let containers = all
            .iter()
            .map(|(slot, c)| {
                let g = read_gate(*slot, c);
                let is_gate = g.is_some();
                let g_engine = g
                    .as_ref()
                    .filter(|g| g.mode == GateMode::Wrapper)
                    .and_then(|g| g.flags.as_ref().ok())
                    .map(|f| f.command.clone());
                // A gate in a long-running container wins over one in a plain init container
                // (which is a mistake, reported by lint).
                if let Some(g) = g
                    && gate
                        .as_ref()
                        .is_none_or(|old: &Gate| !old.slot.long_running() && slot.long_running())
                {
                    gate = Some(g);
                }
                let engine = match &g_engine {
                    // A wrapper gate runs the engine: the engine is what it wraps.
                    Some(cmd) => wrapped_engine(c, cmd),
                    None if is_gate => None,
                    None => engines::identify(c),
                };
                let accelerator = engines::wants_accelerator(c);
                let serving = slot.long_running()
                    && (c.ports.iter().flatten().any(|p| !telemetry_port(p))
                        || c.readiness_probe.is_some()
                        || engine.is_some());
                Container {
                    name: c.name.clone(),
                    slot: *slot,
                    engine,
                    accelerator,
                    serving,
                    gate: is_gate,
                    termination: Termination {
                        grace,
                        pre_stop: pre_stop(c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())),
                    },
                    readiness: c.readiness_probe.as_ref().map(probe),
                    liveness: c.liveness_probe.as_ref().map(probe),
                    startup: c.startup_probe.as_ref().map(probe),
                }
            })
            .collect();
        PodModel {
            containers,
            gate,
            grace,
            grace_set: spec.termination_grace_period_seconds.is_some(),
        }
    }

    /// Whether the gate runs in this pod.
    pub fn gated(&self) -> bool {
        self.gate.is_some()
    }

    /// Long-running containers that take traffic, the gate's own excluded.
    pub fn serving(&self) -> impl Iterator<Item = (usize, &Container)> {
        self.containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.serving && !(c.gate && self.gate_is_sidecar()))
    }

    fn gate_is_sidecar(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(|g| g.mode == GateMode::Sidecar)
    }

    /// The container whose server clients use: the one named, else the only serving one, else
    /// the only serving one that runs a known engine (or asks for a GPU); `Ok(None)` when none
    /// serves.
    pub fn serving_container(&self, named: Option<&str>) -> Result<Option<usize>, ServingError> {
        if let Some(name) = named {
            return self
                .containers
                .iter()
                .position(|c| c.name == name && c.slot.long_running())
                .map(Some)
                .ok_or_else(|| ServingError::NoSuchContainer {
                    name: name.to_owned(),
                    names: self
                        .containers
                        .iter()
                        .filter(|c| c.slot.long_running())
                        .map(|c| c.name.clone())
                        .collect(),
                });
        }
        let serving: Vec<(usize, &Container)> = self.serving().collect();
        if let [(i, _)] = serving.as_slice() {
            return Ok(Some(*i));
        }
        if serving.is_empty() {
            return Ok(None);
        }
        for pick in [
            |c: &Container| c.engine.is_some_and(|(_, e)| e == Evidence::Program),
            |c: &Container| c.engine.is_some(),
            |c: &Container| c.inference(),
            |c: &Container| matches!(c.slot, Slot::App(_)),
        ] {
            let matching: Vec<usize> = serving
                .iter()
                .filter(|(_, c)| pick(c))
                .map(|(i, _)| *i)
                .collect();
            if let [one] = matching.as_slice() {
                return Ok(Some(*one));
            }
        }
        Err(ServingError::Ambiguous(
            serving.iter().map(|(_, c)| c.name.clone()).collect(),
        ))
    }

    /// Whether any long-running container is an inference server.
    pub fn inference(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c.slot.long_running() && c.inference())
    }

    /// The engine of the pod's serving side: the first known engine among the long-running
    /// containers.
    pub fn engine(&self) -> Option<&'static Engine> {
        self.containers
            .iter()
            .filter(|c| c.slot.long_running())
            .find_map(|c| c.engine.map(|(e, _)| e))
    }
}

/// A port declared only for scraping or probing (named `metrics`, `http-metrics`,
/// `prometheus`, `healthz`, the gate's `lameduck-admin`, …): it does not make a container one
/// that clients use. Node exporters and agents in DaemonSets declare such ports and serve no
/// requests a drain could cut.
fn telemetry_port(p: &core::ContainerPort) -> bool {
    let Some(name) = p.name.as_deref() else {
        return false;
    };
    name == crate::ADMIN_PORT_NAME
        || [
            "metrics",
            "prometheus",
            "prom",
            "monitoring",
            "healthz",
            "health",
            "pprof",
        ]
        .iter()
        .any(|w| {
            name == *w || name.ends_with(&format!("-{w}")) || name.starts_with(&format!("{w}-"))
        })
}

/// The words a container runs, command then args.
fn argv(c: &core::Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect()
}

/// Where `gate` follows a `lameduck` program in a command line: the flags start after it.
fn gate_words(words: &[String]) -> Option<Vec<String>> {
    let at = words.windows(2).position(|w| {
        w[0].rsplit('/')
            .next()
            .is_some_and(|b| b == "lameduck" || b == "kubectl-lameduck")
            && w[1] == "gate"
    })?;
    Some(words[at + 2..].to_vec())
}

/// The gate a container runs, if it runs one.
fn read_gate(slot: Slot, c: &core::Container) -> Option<Gate> {
    let direct = argv(c);
    let words = gate_words(&direct).or_else(|| {
        // `sh -c "exec lameduck gate …"`: the script's words.
        let script = direct
            .iter()
            .position(|w| w.starts_with('-') && w.contains('c'))
            .and_then(|i| direct.get(i + 1))?;
        let ws: Vec<String> = script
            .split(|ch: char| ch.is_whitespace() || ch == ';' || ch == '&')
            .filter(|w| !w.is_empty())
            .map(|w| w.trim_matches(|ch| ch == '"' || ch == '\'').to_owned())
            .collect();
        gate_words(&ws)
    });
    let image_is_gate = c
        .image
        .as_deref()
        .is_some_and(|i| engines::image_repository(i).rsplit('/').next() == Some("lameduck"));
    let (words, parsed) = match words {
        Some(w) => (w, true),
        // The lameduck image whose entrypoint is the gate: its args are the flags.
        None if image_is_gate && c.command.is_none() => {
            let args = c.args.clone().unwrap_or_default();
            match args.first().map(String::as_str) {
                Some("gate") => (args[1..].to_vec(), true),
                _ => return None,
            }
        }
        None => return None,
    };
    let env: Vec<(String, String)> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let flags = GateFlags::parse(&words, &env).map(|(f, _)| f);
    let args = flags
        .as_ref()
        .ok()
        .and_then(|f| f.args().ok())
        .unwrap_or_else(GateArgs::defaults);
    let mode = if args.gateway {
        GateMode::Gateway
    } else if args.command.is_empty() || words.iter().all(|w| w != "--") {
        GateMode::Sidecar
    } else {
        GateMode::Wrapper
    };
    Some(Gate {
        slot,
        mode,
        flags,
        args,
        parsed,
    })
}

/// The engine a wrapper gate runs (its command after `--`).
fn wrapped_engine(c: &core::Container, command: &[String]) -> Option<(&'static Engine, Evidence)> {
    let inner = core::Container {
        command: Some(command.to_vec()),
        image: c.image.clone(),
        ..Default::default()
    };
    engines::identify(&inner).or_else(|| {
        c.image
            .as_deref()
            .and_then(engines::by_image)
            .map(|e| (e, Evidence::Image))
    })
}

/// A preStop handler in timeline terms.
pub fn pre_stop(handler: Option<&core::LifecycleHandler>) -> PreStop {
    let Some(h) = handler else {
        return PreStop::None;
    };
    if let Some(sleep) = &h.sleep {
        return PreStop::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        ));
    }
    if let Some(exec) = &h.exec {
        let cmd = exec.command.as_deref().unwrap_or_default();
        return PreStop::Exec {
            sleep: sleep_in_command(cmd),
        };
    }
    if h.http_get.is_some() {
        return PreStop::HttpGet { expected: None };
    }
    // tcpSocket is deprecated and does nothing useful as a hook.
    PreStop::None
}

/// The total of the `sleep N` steps in a command (`["sh", "-c", "touch /tmp/x && sleep 15"]`,
/// `["/bin/sleep", "15"]`), or `None` when there is none. GNU `sleep`'s units (`s`, `m`, `h`)
/// are understood.
pub fn sleep_in_command(command: &[String]) -> Option<Duration> {
    let text = command.join(" ");
    let tokens: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '"' | '\''))
        .filter(|t| !t.is_empty())
        .collect();
    let mut total: Option<Duration> = None;
    for pair in tokens.windows(2) {
        let is_sleep = pair[0].rsplit('/').next() == Some("sleep");
        if is_sleep && let Ok(d) = parse_duration(pair[1]) {
            total = Some(total.unwrap_or_default() + d);
        }
    }
    total
}

/// A probe's timing, with Kubernetes' defaults for missing fields.
pub fn probe(p: &core::Probe) -> Probe {
    // The API server defaults a zero period, timeout or threshold as if it were unset.
    let secs = |v: Option<i32>, default: u64| {
        v.and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0 || default == 0)
            .map_or(Duration::from_secs(default), Duration::from_secs)
    };
    let count = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Probe {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10),
        timeout: secs(p.timeout_seconds, 1),
        success_threshold: count(p.success_threshold, 1),
        failure_threshold: count(p.failure_threshold, 3),
    }
}

/// A probe or hook port as a number (named ports through the container's declarations).
pub fn resolve_port(port: &IntOrString, c: &core::Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml_json: serde_json::Value) -> PodModel {
        let spec: core::PodSpec = serde_json::from_value(yaml_json).expect("pod spec");
        PodModel::new(&spec)
    }

    #[test]
    fn a_sidecar_gate_and_its_engine() {
        let m = pod(serde_json::json!({
            "terminationGracePeriodSeconds": 170,
            "containers": [{
                "name": "vllm", "image": "vllm/vllm-openai:v0.9",
                "args": ["--model", "m", "--port", "8001"],
                "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": 9901}}}
            }],
            "initContainers": [{
                "name": "lameduck-gate", "image": "ghcr.io/lameduck-dev/lameduck:v0.1.0",
                "restartPolicy": "Always",
                "command": ["lameduck", "gate", "--listen", "0.0.0.0:8000", "--upstream", "http://127.0.0.1:8001", "--grace-period", "170"]
            }]
        }));
        let g = m.gate.as_ref().expect("gate");
        assert_eq!(g.mode, GateMode::Sidecar);
        assert!(g.native());
        assert_eq!(g.args.grace_period.0.as_secs(), 170);
        assert_eq!(m.serving_container(None), Ok(Some(0)));
        assert_eq!(m.containers[0].engine.map(|(e, _)| e.id), Some("vllm"));
        assert!(m.containers[1].gate);
    }

    #[test]
    fn a_wrapper_gate_is_the_serving_container() {
        let m = pod(serde_json::json!({
            "containers": [{
                "name": "engine", "image": "lmsysorg/sglang:latest",
                "command": ["sh", "-c", "exec /lameduck/bin/lameduck gate --grace-period 200 -- python3 -m sglang.launch_server --port 30001"],
                "ports": [{"containerPort": 30000}]
            }]
        }));
        let g = m.gate.as_ref().expect("gate");
        assert_eq!(g.mode, GateMode::Wrapper);
        assert_eq!(g.args.grace_period.0.as_secs(), 200);
        assert_eq!(m.serving_container(None), Ok(Some(0)));
        assert_eq!(m.engine().map(|e| e.id), Some("sglang"));
    }

    #[test]
    fn a_metrics_port_alone_does_not_serve() {
        let m = pod(serde_json::json!({
            "containers": [
                {"name": "node-exporter", "image": "prom/node-exporter:v1",
                 "ports": [{"name": "http-metrics", "containerPort": 9100}]},
                {"name": "agent", "image": "example/agent:1",
                 "ports": [{"name": "metrics", "containerPort": 9902}, {"containerPort": 8080}]}
            ]
        }));
        assert!(!m.containers[0].serving);
        // An unnamed port besides the metrics one still serves.
        assert!(m.containers[1].serving);
        assert_eq!(m.serving_container(None), Ok(Some(1)));
    }

    #[test]
    fn a_routing_sidecar_is_not_the_engine() {
        let m = pod(serde_json::json!({
            "containers": [
                {"name": "router", "image": "example/router:1", "ports": [{"containerPort": 8080}],
                 "env": [{"name": "INFERENCE_ENGINE", "value": "vllm"}]},
                {"name": "vllm", "image": "vllm/vllm-openai:latest", "ports": [{"containerPort": 8000}]}
            ]
        }));
        assert_eq!(m.serving_container(None), Ok(Some(1)));
        assert_eq!(m.containers[0].engine, None);
    }

    #[test]
    fn two_unknown_servers_are_ambiguous() {
        let m = pod(serde_json::json!({
            "containers": [
                {"name": "a", "image": "x", "ports": [{"containerPort": 1}]},
                {"name": "b", "image": "y", "ports": [{"containerPort": 2}]}
            ]
        }));
        assert!(matches!(
            m.serving_container(None),
            Err(ServingError::Ambiguous(_))
        ));
        assert_eq!(m.serving_container(Some("b")), Ok(Some(1)));
        assert!(matches!(
            m.serving_container(Some("c")),
            Err(ServingError::NoSuchContainer { .. })
        ));
    }
}
