//! A setup: what a pod of the rehearsed workload looks like to the kubelet — grace period,
//! preStop, probes, the server it runs — and how many of them, rolled how.
//!
//! The three built-in setups are the ones the seed articles compare; [`from_manifest`] reads
//! the same facts from a user's Deployment, StatefulSet or Pod.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use lameduck_manifest::{Object, Workload, WorkloadKind};
use lameduck_timeline::{DEFAULT_GRACE, Probe};
use serde::Serialize;

use crate::Error;

/// The container port the rehearsed server is reached on, as written in manifests.
pub const SERVE_PORT: u16 = 8000;
/// The gate's admin port, as written in manifests.
pub const ADMIN_PORT: u16 = 9901;

/// Which of a pod's ports a hook or probe talks to. Each rehearsed pod gets its own loopback
/// ports; manifests' port numbers and names are mapped onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortRef {
    /// The serving port (the gate's `--listen`, or the server's own port).
    Serve,
    /// The gate's admin port.
    Admin,
}

/// A hook or probe action, as in a container spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Handler {
    /// `exec`: the command runs as given (argv, no shell unless the command names one).
    Exec {
        /// The argv.
        command: Vec<String>,
    },
    /// `httpGet`: success on a 2xx or 3xx answer.
    HttpGet {
        /// The port.
        port: PortRef,
        /// The path (with query).
        path: String,
    },
    /// `tcpSocket`: success when a connection opens.
    TcpSocket {
        /// The port.
        port: PortRef,
    },
    /// `grpc`: the standard health check (`grpc.health.v1.Health/Check`) over HTTP/2
    /// without TLS; success when the answer is `SERVING`.
    Grpc {
        /// The port.
        port: PortRef,
        /// The service to ask about (empty: the server as a whole).
        service: String,
    },
    /// The `sleep` lifecycle action.
    Sleep {
        /// How long.
        seconds: f64,
    },
}

/// A probe: its action and timing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSpec {
    /// What runs.
    pub handler: Handler,
    /// `initialDelaySeconds`, `periodSeconds`, … (the timeline's model).
    #[serde(serialize_with = "ser_probe")]
    pub timing: Probe,
}

fn ser_probe<S: serde::Serializer>(p: &Probe, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Probe", 5)?;
    st.serialize_field("initialDelaySeconds", &p.initial_delay.as_secs_f64())?;
    st.serialize_field("periodSeconds", &p.period.as_secs_f64())?;
    st.serialize_field("timeoutSeconds", &p.timeout.as_secs_f64())?;
    st.serialize_field("successThreshold", &p.success_threshold)?;
    st.serialize_field("failureThreshold", &p.failure_threshold)?;
    st.end()
}

/// What a pod runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Server {
    /// The engine alone (engine-sim, or the user's command).
    Engine,
    /// `lameduck gate` wrapping the engine, with these extra gate flags.
    Gate {
        /// Flags passed to the gate (durations unscaled; the gate gets `--time-scale`).
        args: Vec<String>,
    },
}

/// One rehearsed setup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    /// Short name (`naive`, `shell`, `lameduck`, or the manifest's object name).
    pub name: String,
    /// One line saying what it is.
    pub description: String,
    /// `terminationGracePeriodSeconds`.
    #[serde(serialize_with = "ser_secs")]
    pub grace: Duration,
    /// The serving container's preStop hook.
    pub pre_stop: Option<Handler>,
    /// Its readiness probe.
    pub readiness: Option<ProbeSpec>,
    /// Its liveness probe.
    pub liveness: Option<ProbeSpec>,
    /// Its startup probe: until it succeeds, readiness and liveness are not probed; when it
    /// fails `failureThreshold` times in a row, the container is restarted.
    pub startup: Option<ProbeSpec>,
    /// What it runs.
    pub server: Server,
    /// Literal environment variables of the container.
    pub env: Vec<(String, String)>,
    /// The serving port as the spec writes it (exec commands' `localhost:PORT` is mapped).
    pub serve_port: u16,
    /// The gate's admin port as the spec writes it.
    pub admin_port: u16,
    /// Replicas (from the manifest; built-ins use the command line's).
    pub replicas: Option<u32>,
    /// Rolling update: `maxSurge`, `maxUnavailable` (resolved against the replicas).
    pub strategy: Option<Strategy>,
    /// How a deleted pod is replaced.
    pub replace: Replace,
    /// Things the rehearsal could not reproduce exactly; shown in the report.
    pub notes: Vec<String>,
    /// Clients reach the Service through a `lameduck gate --gateway` that outlives the pods.
    pub gateway: bool,
}

impl Setup {
    /// A pod with nothing but a name: the default grace period, no hook, no probes, the
    /// engine alone.
    pub fn new(name: &str) -> Self {
        Setup {
            name: name.into(),
            description: String::new(),
            grace: DEFAULT_GRACE,
            pre_stop: None,
            readiness: None,
            liveness: None,
            startup: None,
            server: Server::Engine,
            env: Vec::new(),
            serve_port: SERVE_PORT,
            admin_port: ADMIN_PORT,
            replicas: None,
            strategy: None,
            replace: Replace::Immediately,
            notes: Vec::new(),
            gateway: false,
        }
    }
}

impl Setup {
    /// The hooks and probes, with the field each comes from.
    fn actions(&self) -> Vec<(&'static str, &Handler)> {
        let mut out = Vec::new();
        if let Some(h) = &self.pre_stop {
            out.push(("lifecycle.preStop", h));
        }
        for (what, p) in [
            ("readinessProbe", &self.readiness),
            ("livenessProbe", &self.liveness),
            ("startupProbe", &self.startup),
        ] {
            if let Some(p) = p {
                out.push((what, &p.handler));
            }
        }
        out
    }

    /// The paths engine-sim must answer as its health check: the engine's own httpGet probes
    /// (without the gate), and the path the gate asks (with it).
    pub fn engine_health_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = match &self.server {
            Server::Engine => self
                .actions()
                .into_iter()
                .filter_map(|(_, h)| match h {
                    Handler::HttpGet {
                        port: PortRef::Serve,
                        path,
                    } => Some(path.split('?').next().unwrap_or(path).to_owned()),
                    _ => None,
                })
                .collect(),
            Server::Gate { args } => gate_flag(args, "--health-path").into_iter().collect(),
        };
        paths.retain(|p| p != "/health");
        paths.sort();
        paths.dedup();
        paths
    }

    /// Why this setup cannot be rehearsed faithfully, if it cannot: a part of it that the
    /// rehearsal would run differently from a cluster, changing the verdict. `engine_sim`:
    /// the engine is engine-sim (not the user's own server).
    pub fn unrehearsable(&self, engine_sim: bool) -> Option<String> {
        for (what, h) in self.actions() {
            match h {
                Handler::Grpc { port, .. } => {
                    let at_engine = *port == PortRef::Serve && self.server == Server::Engine;
                    if engine_sim && at_engine {
                        return Some(format!(
                            "the {what} is a gRPC health check, which engine-sim does not answer: rehearse your own server with `-- CMD` (it must answer grpc.health.v1 on $PORT)"
                        ));
                    }
                    if *port == PortRef::Admin {
                        return Some(format!(
                            "the {what} is a gRPC health check on the gate's admin port, which speaks HTTP only: probe /ready or /live with httpGet"
                        ));
                    }
                }
                Handler::Exec { command } => {
                    if let Some(missing) = missing_program(command) {
                        return Some(format!(
                            "the {what} runs `{missing}`, which is not installed here: the rehearsal runs exec commands on this machine; install it, or rehearse a copy of the manifest whose {what} uses a command that is"
                        ));
                    }
                }
                Handler::HttpGet { .. } | Handler::TcpSocket { .. } | Handler::Sleep { .. } => {}
            }
        }
        None
    }
}

/// The value of `flag` in a gate's argument list (`--flag value` or `--flag=value`).
fn gate_flag(args: &[String], flag: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(flag)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_owned)
        }
    })
}

/// Shell words that are not programs to look for.
const SHELL_BUILTINS: &[&str] = &[
    "[", "[[", "test", "echo", "exit", "true", "false", "cd", "export", "set", "exec", "if",
    "then", "else", "fi", "while", "do", "done", "for", "in", "case", "esac", "!", "{", "}",
    "read", "printf", "kill", "trap", "wait", "return", ":", ".", "source", "unset", "shift",
];

/// The first program an exec action needs that cannot be found here: its argv[0], and in a
/// `sh -c` script the first word of each command.
fn missing_program(command: &[String]) -> Option<String> {
    let found = |p: &str| {
        if p.contains('/') {
            Path::new(p).is_file()
        } else {
            on_path(p)
        }
    };
    let program = command.first()?;
    if !found(program) {
        return Some(program.clone());
    }
    let shell = matches!(
        program.rsplit('/').next(),
        Some("sh" | "bash" | "dash" | "ash" | "zsh")
    );
    let script = shell
        .then(|| {
            command
                .iter()
                .position(|a| a == "-c" || (a.starts_with('-') && a.ends_with('c')))
                .and_then(|i| command.get(i + 1))
        })
        .flatten()?;
    script
        .split(['\n', ';', '|', '&', '(', ')'])
        .filter_map(|part| {
            part.split_whitespace()
                .find(|w| !w.contains('=') || w.starts_with('='))
        })
        .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
        .filter(|w| !w.is_empty() && !SHELL_BUILTINS.contains(w) && !w.starts_with('$'))
        .find(|w| !found(w))
        .map(str::to_owned)
}

/// How the workload's controller replaces a deleted pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Replace {
    /// A ReplicaSet (Deployment) creates the replacement at once; the terminating pod does
    /// not count.
    Immediately,
    /// A StatefulSet recreates the ordinal only once the old pod is gone.
    AfterGone,
    /// A bare Pod is not replaced.
    Never,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A rolling update's limits, as written (`25%` or a count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Strategy {
    /// `type: Recreate`: every old pod goes before any new one is created.
    pub recreate: bool,
    /// `maxSurge`.
    pub max_surge: IntOrPercent,
    /// `maxUnavailable`.
    pub max_unavailable: IntOrPercent,
}

impl Default for Strategy {
    /// A Deployment's defaults: 25% and 25%.
    fn default() -> Self {
        Strategy {
            recreate: false,
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
        }
    }
}

impl Strategy {
    /// `(maxSurge, maxUnavailable)` as pod counts for `replicas`, rounded as the Deployment
    /// controller does: surge up, unavailable down. Both zero is an error, as in the API
    /// server.
    pub fn resolve(&self, replicas: u32) -> Result<(u32, u32), Error> {
        let surge = self.max_surge.resolve(replicas, true);
        let unavailable = self.max_unavailable.resolve(replicas, false);
        if self.max_surge == IntOrPercent::Int(0) && self.max_unavailable == IntOrPercent::Int(0) {
            return Err(Error::Input(
                "maxSurge and maxUnavailable are both 0: a rollout could never start (the API server rejects this); raise one of them".into(),
            ));
        }
        // Both rounded down to 0: the Deployment controller lets one pod be unavailable.
        if surge == 0 && unavailable == 0 {
            return Ok((0, 1));
        }
        Ok((surge, unavailable))
    }
}

/// A count or a percentage of the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IntOrPercent {
    /// A pod count.
    Int(u32),
    /// A percentage.
    Percent(u32),
}

impl IntOrPercent {
    fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let x = u64::from(replicas) * u64::from(p);
                let n = if round_up { x.div_ceil(100) } else { x / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    fn parse(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(IntOrPercent::Int),
            serde_json::Value::String(s) => s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .map(IntOrPercent::Percent)
                .or_else(|| s.trim().parse().ok().map(IntOrPercent::Int)),
            _ => None,
        }
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn probe(period: u64, failure: u32) -> Probe {
    Probe {
        period: secs(period),
        failure_threshold: failure,
        ..Probe::default()
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// The names of the built-in setups, in report order.
pub const BUILT_IN: [&str; 3] = ["naive", "shell", "lameduck"];

/// Built-in setups run only when named in `--setups`.
pub const BUILT_IN_EXTRA: [&str; 2] = ["lameduck+handoff", "lameduck+pod-handoff"];

/// In a gate flag, the address of the rehearsal's Service (its load balancer), as a URL.
pub const SERVICE_URL: &str = "$(SERVICE_URL)";

/// A built-in setup by name.
pub fn built_in(name: &str) -> Option<Setup> {
    let health = |period, failure| ProbeSpec {
        handler: Handler::HttpGet {
            port: PortRef::Serve,
            path: "/health".into(),
        },
        timing: probe(period, failure),
    };
    Some(match name {
        // The naive pod of the seed articles: the default grace period, no preStop, readiness
        // on the engine's own health check, and an engine that aborts on SIGTERM.
        "naive" => Setup {
            name: name.into(),
            description: "no preStop, the default 30 s grace, readiness on the engine's /health"
                .into(),
            grace: DEFAULT_GRACE,
            readiness: Some(health(10, 3)),
            ..Setup::new(name)
        },
        // The shell pattern of the seed articles: a marker file and a sleep in preStop, an
        // exec readiness probe that fails once the marker exists, grace 180.
        "shell" => {
            let mut notes = Vec::new();
            let readiness = if on_path("curl") {
                "! test -f /tmp/draining && curl -sf http://localhost:8000/health"
            } else {
                notes.push(
                    "curl is not installed: the readiness probe checks the drain marker only"
                        .to_owned(),
                );
                "! test -f /tmp/draining"
            };
            Setup {
                name: name.into(),
                description:
                    "preStop `touch /tmp/draining && sleep 15`, readiness fails on the marker, grace 180 s"
                        .into(),
                grace: secs(180),
                pre_stop: Some(Handler::Exec {
                    command: sh("touch /tmp/draining && sleep 15"),
                }),
                readiness: Some(ProbeSpec {
                    handler: Handler::Exec {
                        command: sh(readiness),
                    },
                    timing: probe(2, 1),
                }),
                liveness: Some(health(10, 6)),
                notes,
                ..Setup::new(name)
            }
        }
        // The gate in wrapper mode, `/drain` as preStop, probes on its admin endpoints; with
        // stream handoff to the Service, when named so: from the pods' gates only
        // (`+pod-handoff`), or also from a gateway in front of the Service (`+handoff`), which
        // carries a stream past its pod's end.
        "lameduck" | "lameduck+handoff" | "lameduck+pod-handoff" => {
            let admin = |path: &str, period, failure| ProbeSpec {
                handler: Handler::HttpGet {
                    port: PortRef::Admin,
                    path: path.into(),
                },
                timing: probe(period, failure),
            };
            let handoff = name != "lameduck";
            let gateway = name == "lameduck+handoff";
            let mut args = vec!["--grace-period".to_owned(), "180".to_owned()];
            if handoff {
                args.extend(["--handoff-to".to_owned(), SERVICE_URL.to_owned()]);
            }
            Setup {
                name: name.into(),
                description: if gateway {
                    "the lameduck setup with --handoff-to the Service, behind a lameduck gate --gateway: a stream cut by its pod's end continues on another pod".into()
                } else if handoff {
                    "the lameduck setup with --handoff-to the Service: a stream its engine cannot finish continues on another pod while the pod lives".into()
                } else {
                    "lameduck gate wrapping the engine, preStop GET /drain, readiness on /ready, grace 180 s".into()
                },
                grace: secs(180),
                pre_stop: Some(Handler::HttpGet {
                    port: PortRef::Admin,
                    path: "/drain".into(),
                }),
                readiness: Some(admin("/ready", 2, 1)),
                liveness: Some(admin("/live", 10, 6)),
                server: Server::Gate { args },
                gateway,
                ..Setup::new(name)
            }
        }
        _ => return None,
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Reads the setup of the first workload (Deployment, StatefulSet, ReplicaSet or Pod) in a
/// manifest: the serving container's grace period, preStop, probes and environment, the
/// replicas and the rolling-update limits.
pub fn from_manifest(path: &Path) -> Result<Setup, Error> {
    let loaded = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Error::Input(format!("-f -: cannot read standard input: {e}")))?;
        lameduck_manifest::load_str(Path::new("<stdin>"), &text)
    } else {
        lameduck_manifest::load_paths(&[path.to_path_buf()])
    };
    if let Some(e) = loaded.errors.first() {
        return Err(Error::Input(format!("-f {}: {e}", path.display())));
    }
    let mut found = None;
    for object in &loaded.objects {
        if matches!(
            WorkloadKind::of(&object.api_version, &object.kind),
            Some(
                WorkloadKind::Deployment
                    | WorkloadKind::StatefulSet
                    | WorkloadKind::ReplicaSet
                    | WorkloadKind::RainbowDeployment
                    | WorkloadKind::Pod
            )
        ) {
            found = Some(object);
            break;
        }
    }
    let Some(object) = found else {
        return Err(Error::Input(format!(
            "-f {}: no Deployment, StatefulSet, ReplicaSet, RainbowDeployment or Pod in it; rehearse needs one workload that serves requests",
            path.display()
        )));
    };
    setup_of(object)
}

fn setup_of(object: &Object) -> Result<Setup, Error> {
    let where_ = || {
        let pos = object.pos("");
        format!(
            "{}:{}:{}: {}",
            object.file.display(),
            pos.line,
            pos.col,
            object.display_name()
        )
    };
    let workload = match Workload::from_object(object) {
        Some(Ok(w)) => w,
        Some(Err(e)) => return Err(Error::Input(e.to_string())),
        None => unreachable_kind(&where_())?,
    };
    let mut notes = Vec::new();
    let model = &workload.model;
    // The container clients talk to, from the one pod model (the first app container when it
    // cannot tell: rehearse runs one engine per pod).
    let serving = model
        .serving_container(None)
        .ok()
        .flatten()
        .and_then(|i| workload.container(model.containers[i].slot));
    let Some(container) = serving.or_else(|| workload.spec.containers.first()) else {
        return Err(Error::Input(format!(
            "{}: the pod has no containers",
            where_()
        )));
    };
    if model
        .gate
        .as_ref()
        .is_some_and(|g| g.mode == lameduck_pod::GateMode::Gateway)
    {
        return Err(Error::Input(format!(
            "{}: a handoff gateway (`lameduck gate --gateway`) fronts a Service, not an engine of its own pod: rehearse the Deployment it fronts, and `--setups lameduck+handoff` for the gateway's effect",
            where_()
        )));
    }
    let gate = model.gate.as_ref().and_then(|g| {
        let c = workload.container(g.slot)?;
        Some((
            c,
            g.mode == lameduck_pod::GateMode::Sidecar && g.native(),
            g,
        ))
    });
    let in_sidecar_gate = gate.as_ref().is_some_and(|(_, sidecar, _)| *sidecar);
    let serve_port;
    let admin_port;
    let server;
    match &gate {
        Some((_, sidecar, g)) => {
            let flags = g
                .flags
                .as_ref()
                .map_err(|e| Error::Input(format!("{}: the gate's flags: {e}", where_())))?;
            serve_port = g.args.listen.port();
            admin_port = g.args.admin.port();
            // Rehearse runs the gate itself, on its own addresses.
            let mut own = flags.clone();
            own.command.clear();
            // No API server here: the gate's Kubernetes side is left out (its readiness gate
            // with it; the readiness probe still runs).
            if g.args.kube {
                for long in [
                    "kube",
                    "deletion-cost",
                    "pod-name",
                    "pod-namespace",
                    "kubeconfig",
                    "context",
                ] {
                    own.remove(long);
                }
                notes.push("the gate's --kube is off: the rehearsal has no API server, so its pod condition, readiness gate and Events are not rehearsed (the probes are)".to_owned());
            }
            server = Server::Gate {
                args: strip_flags(
                    &own.render(),
                    &[
                        "--listen",
                        "--admin",
                        "--upstream",
                        "--drain-file",
                        "--threads",
                    ],
                ),
            };
            if *sidecar {
                notes.push("the gate runs as a native sidecar; it is rehearsed in wrapper mode, where the order of events is the same (drain, then SIGTERM to the engine)".to_owned());
            }
        }
        None => {
            serve_port = container
                .ports
                .iter()
                .flatten()
                .map(|p| u16::try_from(p.container_port).unwrap_or(SERVE_PORT))
                .next()
                .unwrap_or(SERVE_PORT);
            admin_port = ADMIN_PORT;
            server = Server::Engine;
        }
    }
    let ports = PortMap {
        container,
        gate: gate.as_ref().map(|(g, _, _)| *g),
        serve: serve_port,
        admin: admin_port,
    };
    let name_of = |what: &str| format!("{} ({what})", where_());
    // With a sidecar gate, the engine's preStop calls the gate's /drain; in wrapper mode the
    // gate container's own hook is the one that matters.
    let hook_container = match (&gate, in_sidecar_gate) {
        (Some((g, false, _)), _) => *g,
        _ => container,
    };
    let pre_stop = hook_container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .map(|h| lifecycle_handler(h, &ports, &name_of("preStop")))
        .transpose()?
        .flatten();
    let probe_container = gate.as_ref().map_or(container, |(g, _, _)| *g);
    let probe_of = |p: Option<&core::Probe>, what: &str| -> Result<Option<ProbeSpec>, Error> {
        let Some(p) = p else { return Ok(None) };
        let handler = probe_handler(p, &ports, &name_of(what))?;
        Ok(Some(ProbeSpec {
            handler,
            timing: lameduck_pod::model::probe(p),
        }))
    };
    let readiness = probe_of(probe_container.readiness_probe.as_ref(), "readinessProbe")?.or(
        probe_of(container.readiness_probe.as_ref(), "readinessProbe")?,
    );
    let liveness = probe_of(probe_container.liveness_probe.as_ref(), "livenessProbe")?.or(
        probe_of(container.liveness_probe.as_ref(), "livenessProbe")?,
    );
    let startup = probe_of(probe_container.startup_probe.as_ref(), "startupProbe")?
        .or(probe_of(container.startup_probe.as_ref(), "startupProbe")?);
    let env = probe_container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect();
    let strategy = match workload.kind {
        WorkloadKind::Deployment => {
            let ru = object.value.pointer("/spec/strategy/rollingUpdate");
            let get = |k: &str| ru.and_then(|r| r.get(k)).and_then(IntOrPercent::parse);
            let d = Strategy::default();
            let recreate = object
                .value
                .pointer("/spec/strategy/type")
                .and_then(|t| t.as_str())
                == Some("Recreate");
            Some(Strategy {
                recreate,
                max_surge: get("maxSurge").unwrap_or(d.max_surge),
                max_unavailable: get("maxUnavailable").unwrap_or(d.max_unavailable),
            })
        }
        // A StatefulSet replaces one pod at a time, the old one first.
        WorkloadKind::StatefulSet => Some(Strategy {
            recreate: false,
            max_surge: IntOrPercent::Int(0),
            max_unavailable: IntOrPercent::Int(1),
        }),
        _ => None,
    };
    Ok(Setup {
        name: if object.name.is_empty() {
            object.kind.to_lowercase()
        } else {
            object.name.clone()
        },
        description: format!("{} from {}", object.display_name(), object.file.display()),
        grace: workload.grace(),
        pre_stop,
        readiness,
        liveness,
        startup,
        server,
        env,
        replace: match workload.kind {
            WorkloadKind::StatefulSet => Replace::AfterGone,
            WorkloadKind::Pod => Replace::Never,
            _ => Replace::Immediately,
        },
        serve_port,
        admin_port,
        replicas: workload
            .replicas
            .map(|r| u32::try_from(r.max(1)).unwrap_or(1)),
        strategy,
        notes,
        gateway: false,
    })
}

fn unreachable_kind(at: &str) -> Result<Workload<'static>, Error> {
    Err(Error::Input(format!("{at}: not a workload")))
}

/// The flags with `names` (and their values) taken out.
fn strip_flags(flags: &[String], names: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for f in flags {
        if skip {
            skip = false;
            continue;
        }
        if names.contains(&f.as_str()) {
            skip = true;
            continue;
        }
        if names
            .iter()
            .any(|n| f.strip_prefix(n).is_some_and(|r| r.starts_with('=')))
        {
            continue;
        }
        out.push(f.clone());
    }
    out
}

struct PortMap<'a> {
    container: &'a core::Container,
    gate: Option<&'a core::Container>,
    serve: u16,
    admin: u16,
}

impl PortMap<'_> {
    fn resolve(
        &self,
        port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
        at: &str,
    ) -> Result<PortRef, Error> {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let number = match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => [Some(self.container), self.gate]
                .into_iter()
                .flatten()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        };
        match number {
            Some(n) if n == self.admin && self.gate.is_some() => Ok(PortRef::Admin),
            Some(n) if n == self.serve => Ok(PortRef::Serve),
            Some(n) => {
                // Another port of the server (a metrics port, say): the rehearsed server has
                // one port, so it stands in.
                let _ = n;
                Ok(PortRef::Serve)
            }
            None => Err(Error::Input(format!(
                "{at}: port {port:?} is not a number and names no containerPort; name the port in `ports:` or use its number"
            ))),
        }
    }
}

fn lifecycle_handler(
    h: &core::LifecycleHandler,
    ports: &PortMap<'_>,
    at: &str,
) -> Result<Option<Handler>, Error> {
    if let Some(s) = &h.sleep {
        return Ok(Some(Handler::Sleep {
            seconds: s.seconds.max(0) as f64,
        }));
    }
    if let Some(e) = &h.exec {
        return Ok(Some(Handler::Exec {
            command: e.command.clone().unwrap_or_default(),
        }));
    }
    if let Some(g) = &h.http_get {
        return Ok(Some(Handler::HttpGet {
            port: ports.resolve(&g.port, at)?,
            path: g.path.clone().unwrap_or_else(|| "/".into()),
        }));
    }
    if let Some(t) = &h.tcp_socket {
        return Ok(Some(Handler::TcpSocket {
            port: ports.resolve(&t.port, at)?,
        }));
    }
    Ok(None)
}

fn probe_handler(p: &core::Probe, ports: &PortMap<'_>, at: &str) -> Result<Handler, Error> {
    if let Some(e) = &p.exec {
        return Ok(Handler::Exec {
            command: e.command.clone().unwrap_or_default(),
        });
    }
    if let Some(g) = &p.http_get {
        return Ok(Handler::HttpGet {
            port: ports.resolve(&g.port, at)?,
            path: g.path.clone().unwrap_or_else(|| "/".into()),
        });
    }
    if let Some(t) = &p.tcp_socket {
        return Ok(Handler::TcpSocket {
            port: ports.resolve(&t.port, at)?,
        });
    }
    if let Some(g) = &p.grpc {
        let port = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(g.port);
        return Ok(Handler::Grpc {
            port: ports.resolve(&port, at)?,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    Err(Error::Input(format!(
        "{at}: a probe needs exec, httpGet, tcpSocket or grpc"
    )))
}

/// Rewrites an exec command for one rehearsed pod: paths under `/tmp/` move into the pod's
/// own directory (so that replicas do not share a drain marker), `localhost:PORT` and
/// `127.0.0.1:PORT` point at the pod's ports, and every `sleep N` is divided by the time
/// scale (so a `sleep 15` preStop lasts 15 unscaled seconds).
pub fn rewrite_exec(
    command: &[String],
    pod_tmp: &Path,
    ports: &[(u16, u16)],
    scale: f64,
) -> Vec<String> {
    let mut out: Vec<String> = command
        .iter()
        .map(|arg| scale_sleeps(&map_ports(&map_tmp(arg, pod_tmp), ports), scale))
        .collect();
    // The argv form: `["sleep", "15"]`, `["/bin/sleep", "15s"]`.
    for i in 1..out.len() {
        if out[i - 1].rsplit('/').next() == Some("sleep")
            && let Ok(d) = lameduck_timeline::parse_duration(&out[i])
        {
            out[i] = format!("{:.3}", d.as_secs_f64() / scale);
        }
    }
    out
}

/// `/tmp` and `/tmp/…` at the start of a path (after a space, quote, `=`, `:` or `>`) move
/// into the pod's own directory; `/var/tmp` stays.
fn map_tmp(arg: &str, pod_tmp: &Path) -> String {
    let to = pod_tmp.display().to_string();
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find("/tmp") {
        let starts_path = rest[..i].chars().next_back().is_none_or(|c| {
            c.is_whitespace()
                || matches!(
                    c,
                    '"' | '\'' | '=' | ':' | '>' | '<' | ';' | '&' | '|' | '('
                )
        });
        let after = rest[i + 4..].chars().next();
        let ends_word = after
            .is_none_or(|c| c == '/' || !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'));
        out.push_str(&rest[..i]);
        out.push_str(if starts_path && ends_word {
            &to
        } else {
            "/tmp"
        });
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    out
}

/// `localhost:PORT`, `127.0.0.1:PORT` and `0.0.0.0:PORT` point at the pod's port, in one
/// pass, and only where the port number ends (`:80` does not match `:8080`).
fn map_ports(arg: &str, ports: &[(u16, u16)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    'scan: while !rest.is_empty() {
        for host in ["localhost:", "127.0.0.1:", "0.0.0.0:"] {
            if let Some(tail) = rest.strip_prefix(host) {
                let digits =
                    tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                if let Ok(port) = tail[..digits].parse::<u16>()
                    && let Some((_, to)) = ports.iter().find(|(from, _)| *from == port)
                {
                    out.push_str(&format!("127.0.0.1:{to}"));
                    rest = &tail[digits..];
                    continue 'scan;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// `sleep 15` → `sleep 1.5` at scale 10, wherever `sleep` is a word followed by a duration.
fn scale_sleeps(text: &str, scale: f64) -> String {
    if scale == 1.0 {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sleep") {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| {
            c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | '/' | '"' | '\'')
        });
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        if !before_ok {
            continue;
        }
        let ws = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        if ws == 0 {
            continue;
        }
        let arg_start = &rest[ws..];
        let end = arg_start
            .find(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | ')' | '"' | '\''))
            .unwrap_or(arg_start.len());
        let word = &arg_start[..end];
        if let Ok(d) = lameduck_timeline::parse_duration(word) {
            out.push_str(&rest[..ws]);
            out.push_str(&format!("{:.3}", d.as_secs_f64() / scale));
            rest = &arg_start[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_are_scaled_and_paths_moved() {
        let cmd = sh("touch /tmp/draining && sleep 15; /bin/sleep 2s");
        let out = rewrite_exec(&cmd, Path::new("/r/p0/tmp"), &[(8000, 41000)], 10.0);
        assert_eq!(
            out[2],
            "touch /r/p0/tmp/draining && sleep 1.500; /bin/sleep 0.200"
        );
        let probe = sh("! test -f /tmp/draining && curl -sf http://localhost:8000/health");
        let out = rewrite_exec(&probe, Path::new("/r/p0/tmp"), &[(8000, 41000)], 1.0);
        assert_eq!(
            out[2],
            "! test -f /r/p0/tmp/draining && curl -sf http://127.0.0.1:41000/health"
        );
        let argv = rewrite_exec(
            &["/bin/sleep".to_owned(), "15s".to_owned()],
            Path::new("/p"),
            &[],
            10.0,
        );
        assert_eq!(argv[1], "1.500");
        let mapped = rewrite_exec(
            &sh("curl localhost:80/x localhost:8080/y 127.0.0.1:9901/z; ls /var/tmp /tmp"),
            Path::new("/p/tmp"),
            &[(80, 20001), (9901, 2000)],
            1.0,
        );
        assert_eq!(
            mapped[2],
            "curl 127.0.0.1:20001/x localhost:8080/y 127.0.0.1:2000/z; ls /var/tmp /p/tmp"
        );
        // Words that merely contain "sleep", and a sleep without a number, stay.
        assert_eq!(
            scale_sleeps("nosleep 5 && sleep", 2.0),
            "nosleep 5 && sleep"
        );
        assert_eq!(scale_sleeps("sleep infinity", 2.0), "sleep infinity");
    }

    #[test]
    fn strategy_rounds_like_the_deployment_controller() {
        let d = Strategy::default();
        assert_eq!(d.resolve(3).ok(), Some((1, 0)));
        assert_eq!(d.resolve(10).ok(), Some((3, 2)));
        let rounded = Strategy {
            recreate: false,
            max_surge: IntOrPercent::Int(0),
            max_unavailable: IntOrPercent::Percent(10),
        };
        assert_eq!(rounded.resolve(3).ok(), Some((0, 1)));
        let zero = Strategy {
            max_unavailable: IntOrPercent::Int(0),
            ..rounded
        };
        assert!(zero.resolve(3).is_err());
    }

    fn setup_from(text: &str) -> Setup {
        let l = lameduck_manifest::load_str(Path::new("m.yaml"), text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        setup_of(&l.objects[0]).expect("setup")
    }

    #[test]
    fn controllers_replace_pods_their_own_way() {
        let sts = setup_from(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s}\nspec:\n  template:\n    spec:\n      containers: [{name: e, command: [\"sleep\", \"20\"]}]\n",
        );
        assert_eq!(sts.replace, Replace::AfterGone);
        let pod = setup_from(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: e}]\n",
        );
        assert_eq!(pod.replace, Replace::Never);
        let dep = setup_from(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: 5\n  strategy: {type: Recreate}\n  template:\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers: [{name: e, readinessProbe: {periodSeconds: 0, tcpSocket: {port: 8000}}}]\n",
        );
        assert_eq!(dep.replace, Replace::Immediately);
        assert!(dep.strategy.as_ref().is_some_and(|s| s.recreate));
        assert_eq!(dep.replicas, Some(5));
        assert_eq!(dep.grace, Duration::ZERO);
        // A zero period is defaulted as the API server does.
        let period = dep.readiness.as_ref().map(|r| r.timing.period);
        assert_eq!(period, Some(Duration::from_secs(10)));
    }

    #[test]
    fn built_ins_exist() {
        for name in BUILT_IN.into_iter().chain(BUILT_IN_EXTRA) {
            let s = built_in(name).expect("built in");
            assert_eq!(s.name, name);
        }
        assert!(built_in("other").is_none());
    }

    #[test]
    fn gate_flags_are_read_and_stripped() {
        let s = setup_from(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      terminationGracePeriodSeconds: 180\n      containers:\n        - name: e\n          command: [sh, -c, \"exec lameduck gate --listen=0.0.0.0:8080 --admin 0.0.0.0:9000 --grace-period 180 -- vllm serve m\"]\n",
        );
        assert_eq!((s.serve_port, s.admin_port), (8080, 9000));
        match &s.server {
            Server::Gate { args } => {
                assert_eq!(args, &vec!["--grace-period".to_owned(), "180".to_owned()])
            }
            other => panic!("{other:?}"),
        }
        let flags: Vec<String> = ["--listen=0.0.0.0:8080", "--grace-period", "180"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            strip_flags(&flags, &["--listen"]),
            vec!["--grace-period".to_owned(), "180".to_owned()]
        );
    }
}
