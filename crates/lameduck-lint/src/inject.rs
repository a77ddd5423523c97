//! `lameduck inject`: puts each workload's serving container behind the gate, editing the
//! manifest's text in place so that nothing else changes (comments, order, quoting).
//!
//! Two shapes:
//! - **sidecar** (default): the gate as a native sidecar (an init container with
//!   `restartPolicy: Always`) in front of the engine; the engine's preStop calls the gate's
//!   `/drain`, so the engine gets SIGTERM only when its work is done. The engine image is
//!   untouched.
//! - **wrapper**: the serving container's command becomes `lameduck gate … -- <command>`; the
//!   binary comes from an init container into an `emptyDir` (or is already in the image,
//!   `--binary`).
//!
//! In both, the gate takes over the port clients use and the engine moves to another one on
//! loopback; readiness and liveness move to the gate's admin endpoints, the preStop is the
//! gate's `/drain`, and `terminationGracePeriodSeconds` is sized by the timeline's
//! [`Budget::gated_grace`]. A workload already behind the gate is left as it is, so a second
//! run changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_manifest::{Editor, Workload, WorkloadKind, load_str};
use lameduck_timeline::Budget;
use serde_json::{Value, json};

use crate::facts::{self, MaxRequestSource};
use crate::rules::{MARGIN, serving};

/// Where the gate goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A native sidecar in front of the engine container.
    Sidecar,
    /// The engine's command wrapped: the gate supervises it as a child process.
    Wrapper,
}

/// The gate's admin port unless told otherwise (`lameduck gate --admin`'s default).
pub const DEFAULT_ADMIN_PORT: u16 = 9901;
/// Name of the gate's native sidecar.
pub const SIDECAR_NAME: &str = "lameduck-gate";
/// Name of the init container that brings the binary (wrapper mode).
pub const INSTALL_NAME: &str = "lameduck-install";
/// Name of the volume that carries the binary (wrapper mode).
pub const VOLUME_NAME: &str = "lameduck-bin";
/// Where that volume is mounted.
pub const BIN_DIR: &str = "/lameduck/bin";

/// The image with the `lameduck` binary, by default.
pub fn default_image() -> String {
    format!(
        "ghcr.io/lameduck-dev/lameduck:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// What `inject` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sidecar or wrapper.
    pub mode: Mode,
    /// Image with the `lameduck` binary on its PATH.
    pub image: String,
    /// Wrapper mode: the binary is already in the engine's image at this path (no init
    /// container).
    pub binary: Option<String>,
    /// The container to put behind the gate (needed when several serve).
    pub container: Option<String>,
    /// The port clients use (default: the container's declared port).
    pub port: Option<u16>,
    /// Where the engine moves (default: the next free port after `port`).
    pub engine_port: Option<u16>,
    /// The gate's admin port.
    pub admin_port: u16,
    /// The longest request, for workloads without the annotation.
    pub max_request: Option<Duration>,
    /// How long load balancers take to stop sending to an unready pod; the gate's
    /// `--convergence-max`.
    pub convergence: Duration,
    /// Wrapper mode, for a container without `command`: the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Sidecar,
            image: default_image(),
            binary: None,
            container: None,
            port: None,
            engine_port: None,
            admin_port: DEFAULT_ADMIN_PORT,
            max_request: None,
            convergence: Duration::from_secs(15),
            entrypoint: None,
        }
    }
}

/// Why a manifest could not be injected. Each names the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not usable.
    #[error("{0}")]
    Input(String),
    /// A workload cannot be put behind the gate as it is written.
    #[error("{file}:{line}:{col}: {object}: {message}")]
    Workload {
        /// The file.
        file: String,
        /// Line of the object or container.
        line: usize,
        /// Column.
        col: usize,
        /// `kind/name`.
        object: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An edit failed: a bug, reported rather than writing a broken manifest.
    #[error("{object}: cannot edit the manifest ({source}); please report this with the input")]
    Edit {
        /// `kind/name`.
        object: String,
        /// The editor's error.
        source: lameduck_manifest::EditError,
    },
}

/// What was done to one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `kind/name`.
    pub object: String,
    /// The container now behind the gate.
    pub container: String,
    /// One line per change, for people.
    pub lines: Vec<String>,
}

/// The result: the new text, and what changed or was left alone.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The manifest with the gate added.
    pub text: String,
    /// The workloads changed.
    pub changed: Vec<Change>,
    /// Workloads left alone, and why.
    pub skipped: Vec<String>,
    /// Things to check by hand.
    pub warnings: Vec<String>,
}

/// One edit, at a path of a document.
#[derive(Debug, Clone)]
enum Edit {
    Set(String, &'static str, Value),
    Push(String, Value),
    Replace(String, Value),
}

/// Port flags of known servers, in the order they are looked for.
const PORT_FLAGS: [&str; 3] = ["--port", "--http-port", "--server-port"];

/// What is known of an engine: its port flag, that flag's default, its health path.
struct Engine {
    flag: &'static str,
    default_port: u16,
    health: &'static str,
}

fn known_engine(c: &core::Container) -> Option<Engine> {
    let words: Vec<String> = c
        .image
        .iter()
        .chain(c.command.iter().flatten())
        .chain(c.args.iter().flatten())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let has = |s: &str| words.iter().any(|w| w.contains(s));
    let engine = |flag, default_port, health| {
        Some(Engine {
            flag,
            default_port,
            health,
        })
    };
    if has("vllm") {
        engine("--port", 8000, "/health")
    } else if has("sglang") {
        engine("--port", 30000, "/health")
    } else if has("tritonserver") {
        engine("--http-port", 8000, "/v2/health/ready")
    } else if has("lmdeploy") {
        engine("--server-port", 23333, "/health")
    } else {
        None
    }
}

/// Puts every workload of `text` (read from `path`) behind the gate.
pub fn inject(path: &Path, text: &str, opts: &Options) -> Result<Injected, InjectError> {
    let loaded = load_str(path, text);
    if let Some(e) = loaded.errors.first() {
        return Err(InjectError::Input(e.to_string()));
    }
    let mut out = Injected {
        text: String::new(),
        changed: Vec::new(),
        skipped: Vec::new(),
        warnings: Vec::new(),
    };
    let mut editor = Editor::new(text);
    for object in &loaded.objects {
        let Some(w) = Workload::from_object(object) else {
            continue;
        };
        let w = w.map_err(|e| InjectError::Input(e.to_string()))?;
        let name = object.display_name();
        if matches!(w.kind, WorkloadKind::Job | WorkloadKind::CronJob) {
            out.skipped.push(format!(
                "{name}: batch work, not served through a load balancer"
            ));
            continue;
        }
        let Some((edits, change, warnings)) = plan(&w, opts)? else {
            continue;
        };
        let doc = object.document;
        for edit in edits {
            let r = match &edit {
                Edit::Set(p, key, v) => editor.set(doc, &object.path(p), key, v),
                Edit::Push(p, v) => editor.push(doc, &object.path(p), v),
                Edit::Replace(p, v) => editor.replace(doc, &object.path(p), v),
            };
            r.map_err(|source| InjectError::Edit {
                object: name.clone(),
                source,
            })?;
        }
        out.warnings.extend(warnings);
        out.changed.push(change);
    }
    for object in &loaded.objects {
        if let Some(Ok(w)) = Workload::from_object(object)
            && !matches!(w.kind, WorkloadKind::Job | WorkloadKind::CronJob)
            && !out
                .changed
                .iter()
                .any(|c| c.object == object.display_name())
        {
            out.skipped.push(format!(
                "{}: {}",
                object.display_name(),
                if facts::gated(&w) {
                    "already behind the gate"
                } else {
                    "no serving container"
                }
            ));
        }
    }
    out.text = editor.text().to_owned();
    Ok(out)
}

type Planned = (Vec<Edit>, Change, Vec<String>);

/// The edits that put one workload behind the gate; `None` when there is nothing to do.
fn plan(w: &Workload<'_>, opts: &Options) -> Result<Option<Planned>, InjectError> {
    let o = w.object;
    let pod = w.kind.pod_path();
    let fail = |at: &str, message: String| {
        let pos = o.pos(at);
        InjectError::Workload {
            file: o.file.display().to_string(),
            line: pos.line,
            col: pos.col,
            object: o.display_name(),
            message,
        }
    };
    if facts::gated(w) {
        return Ok(None);
    }
    let containers = &w.spec.containers;
    let (index, c) = match &opts.container {
        Some(name) => containers
            .iter()
            .enumerate()
            .find(|(_, c)| &c.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
                fail(
                    &format!("{pod}.containers"),
                    format!(
                        "no container named `{name}` (it has: {}); fix --container",
                        names.join(", ")
                    ),
                )
            })?,
        None => {
            let serving: Vec<(usize, &core::Container)> = containers
                .iter()
                .enumerate()
                .filter(|(_, c)| serving(c))
                .collect();
            let inference: Vec<&(usize, &core::Container)> = serving
                .iter()
                .filter(|(_, c)| facts::is_inference(c))
                .collect();
            match (serving.as_slice(), inference.as_slice()) {
                ([], _) => return Ok(None),
                ([one], _) => *one,
                (_, [one]) => **one,
                (many, _) => {
                    let names: Vec<&str> = many.iter().map(|(_, c)| c.name.as_str()).collect();
                    return Err(fail(
                        &format!("{pod}.containers"),
                        format!(
                            "several containers serve ({}): choose one with --container",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    let cpath = format!("{pod}.containers[{index}]");
    let engine = known_engine(c);

    // Ports: the one clients use (the gate takes it), the engine's new one, the admin port.
    let declared: Vec<u16> = containers
        .iter()
        .chain(w.spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let port = match opts.port {
        Some(p) => p,
        None => traffic_port(c, engine.as_ref()).ok_or_else(|| {
            fail(
                &cpath,
                format!(
                    "cannot tell which port of container `{}` serves clients (it declares none, and its readiness probe names none): pass --port",
                    c.name
                ),
            )
        })?,
    };
    let admin = opts.admin_port;
    if admin == port || declared.contains(&admin) {
        return Err(fail(
            &cpath,
            format!(
                "port {admin} is already used in this pod; choose another admin port with --admin-port"
            ),
        ));
    }
    let engine_port = match opts.engine_port {
        Some(q) if q == port || q == admin => {
            return Err(fail(
                &cpath,
                format!(
                    "--engine-port {q} is the port the gate serves or its admin port; choose another"
                ),
            ));
        }
        Some(q) => q,
        None => (port.saturating_add(1)..=u16::MAX)
            .find(|q| !declared.contains(q) && *q != admin)
            .ok_or_else(|| {
                fail(
                    &cpath,
                    "no free port above the serving port: pass --engine-port".into(),
                )
            })?,
    };

    // The budget.
    let (max_request, source) = facts::max_request(w, opts.max_request).ok_or_else(|| {
        fail(
            "metadata",
            format!(
                "no idea how long its requests run: set the `{}` annotation or pass --max-request",
                facts::MAX_REQUEST_ANNOTATION
            ),
        )
    })?;
    let need = Budget::gated_grace(opts.convergence, max_request, MARGIN);
    let need_secs = need.as_secs() + u64::from(need.subsec_nanos() > 0);
    let grace_secs = need_secs.max(w.grace().as_secs());
    let from = match source {
        MaxRequestSource::Annotation => "annotation",
        MaxRequestSource::Flag => "--max-request",
        MaxRequestSource::Assumed => "assumed for an inference server",
    };

    // The engine's own health path: what its readiness probe asked the engine, else what the
    // engine is known to answer.
    let health = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .filter(|h| resolve(&h.port, c) == Some(port))
        .and_then(|h| h.path.clone())
        .or_else(|| engine.as_ref().map(|e| e.health.to_owned()))
        .unwrap_or_else(|| "/health".to_owned());

    let mut edits = Vec::new();
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    let secs = |d: Duration| format!("{}", d.as_secs_f64());
    let gate_flags = vec![
        "--listen".to_owned(),
        format!("0.0.0.0:{port}"),
        "--admin".to_owned(),
        format!("0.0.0.0:{admin}"),
        "--upstream".to_owned(),
        format!("http://127.0.0.1:{engine_port}"),
        "--grace-period".to_owned(),
        grace_secs.to_string(),
        "--convergence-max".to_owned(),
        secs(opts.convergence),
        "--health-path".to_owned(),
        health.clone(),
    ];

    // Move the engine off the port.
    let mut command = c.command.clone();
    let mut args = c.args.clone();
    let moved = move_port(&mut command, &mut args, port, engine_port);
    let env_index = c
        .env
        .iter()
        .flatten()
        .position(|e| e.name == "PORT" && e.value.as_deref() == Some(&port.to_string()));
    let how = if moved {
        "its port flag".to_owned()
    } else if let Some(i) = env_index {
        edits.push(Edit::Replace(
            format!("{cpath}.env[{i}].value"),
            json!(engine_port.to_string()),
        ));
        "env PORT".to_owned()
    } else if let Some(e) = engine.as_ref().filter(|e| e.default_port == port) {
        let shell = command
            .iter()
            .flatten()
            .any(|w| w == "-c" || w.ends_with("sh"));
        if shell {
            return Err(fail(
                &cpath,
                format!(
                    "the engine starts from a shell command and listens on its default port {port}: add `{} {port}` to its command line and run inject again",
                    e.flag
                ),
            ));
        }
        let extra = [e.flag.to_owned(), engine_port.to_string()];
        match (&mut command, &mut args) {
            (_, Some(a)) => a.extend(extra),
            (Some(cmd), None) => cmd.extend(extra),
            (None, None) => {
                warnings.push(format!(
                    "{}: container `{}` had neither command nor args; inject set args to `{} {engine_port}`, which replaces the image's CMD if it has one",
                    o.display_name(),
                    c.name,
                    e.flag
                ));
                args = Some(extra.to_vec());
            }
        }
        format!("{} {engine_port}", e.flag)
    } else {
        return Err(fail(
            &cpath,
            format!(
                "cannot move the server off port {port}: its command line has no {} {port} and no PORT={port} in env. Make the port explicit in its args (e.g. `--port {port}`) and run inject again, or pass --port if {port} is not the port clients use",
                PORT_FLAGS.join("/")
            ),
        ));
    };
    lines.push(format!(
        "the gate serves port {port}; the engine moves to port {engine_port} ({how}), which the gate reaches on 127.0.0.1; gate admin on {admin}"
    ));

    let gate_probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": admin}, "periodSeconds": period, "failureThreshold": failures});
    let security = json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}
    });
    let init_path = format!("{pod}.initContainers");
    let has_init = w
        .spec
        .init_containers
        .as_ref()
        .is_some_and(|v| !v.is_empty());
    let add_init = |edits: &mut Vec<Edit>, item: Value| {
        if has_init
            || edits
                .iter()
                .any(|e| matches!(e, Edit::Set(_, "initContainers", _)))
        {
            edits.push(Edit::Push(init_path.clone(), item));
        } else {
            edits.push(Edit::Set(pod.to_owned(), "initContainers", json!([item])));
        }
    };

    match opts.mode {
        Mode::Sidecar => {
            list_edits(
                &mut edits,
                &cpath,
                "command",
                c.command.as_ref(),
                command.as_ref(),
            );
            list_edits(&mut edits, &cpath, "args", c.args.as_ref(), args.as_ref());
            let mut cmd = vec!["lameduck".to_owned(), "gate".to_owned()];
            cmd.extend(gate_flags);
            add_init(
                &mut edits,
                json!({
                    "name": SIDECAR_NAME,
                    "image": opts.image,
                    "restartPolicy": "Always",
                    "command": cmd,
                    "readinessProbe": gate_probe("/ready", 2, 1),
                    "livenessProbe": gate_probe("/live", 10, 3),
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "securityContext": security,
                }),
            );
            lines.push(format!(
                "native sidecar `{SIDECAR_NAME}` ({}) added in initContainers",
                opts.image
            ));
            // The engine's own checks follow it to its new port.
            for (field, probe) in [
                ("livenessProbe", c.liveness_probe.as_ref()),
                ("startupProbe", c.startup_probe.as_ref()),
            ] {
                if let Some(p) = probe
                    && let Some(edit) =
                        repoint(p, c, port, engine_port, &format!("{cpath}.{field}"))
                {
                    edits.push(edit);
                    lines.push(format!("{field} follows the engine to port {engine_port}"));
                }
            }
        }
        Mode::Wrapper => {
            let engine_cmd = match (&command, &opts.entrypoint) {
                (Some(cmd), _) => cmd.clone(),
                (None, Some(ep)) => {
                    if args.is_none() {
                        warnings.push(format!(
                            "{}: container `{}` now has a command, so the image's CMD no longer applies; give its arguments in `args` if it needs them",
                            o.display_name(),
                            c.name
                        ));
                    }
                    ep.clone()
                }
                (None, None) => {
                    return Err(fail(
                        &cpath,
                        format!(
                            "container `{}` has no `command`, so its image's entrypoint runs, which inject cannot see: pass it with --entrypoint (`docker inspect` shows it), or use --mode sidecar",
                            c.name
                        ),
                    ));
                }
            };
            let bin = match &opts.binary {
                Some(b) => b.clone(),
                None => format!("{BIN_DIR}/lameduck"),
            };
            let mut cmd = vec![bin.clone(), "gate".to_owned()];
            cmd.extend(gate_flags);
            cmd.push("--".to_owned());
            cmd.extend(engine_cmd);
            edits.push(Edit::Set(cpath.clone(), "command", json!(cmd)));
            list_edits(&mut edits, &cpath, "args", c.args.as_ref(), args.as_ref());
            lines.push(format!("command wrapped: {bin} gate … -- <engine>"));
            if opts.binary.is_none() {
                add_init(
                    &mut edits,
                    json!({
                        "name": INSTALL_NAME,
                        "image": opts.image,
                        "command": ["lameduck", "copy-binary", BIN_DIR],
                        "volumeMounts": [{"name": VOLUME_NAME, "mountPath": BIN_DIR}],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                        "securityContext": security,
                    }),
                );
                let volume = json!({"name": VOLUME_NAME, "emptyDir": {"sizeLimit": "64Mi"}});
                if w.spec.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
                    edits.push(Edit::Push(format!("{pod}.volumes"), volume));
                } else {
                    edits.push(Edit::Set(pod.to_owned(), "volumes", json!([volume])));
                }
                let mount = json!({"name": VOLUME_NAME, "mountPath": BIN_DIR, "readOnly": true});
                if c.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
                    edits.push(Edit::Push(format!("{cpath}.volumeMounts"), mount));
                } else {
                    edits.push(Edit::Set(cpath.clone(), "volumeMounts", json!([mount])));
                }
                lines.push(format!(
                    "init container `{INSTALL_NAME}` copies the binary into volume `{VOLUME_NAME}` at {BIN_DIR}"
                ));
            }
            edits.push(Edit::Set(
                cpath.clone(),
                "livenessProbe",
                gate_probe("/live", 10, 3),
            ));
            lines.push("livenessProbe → the gate's /live".into());
        }
    }

    // Both modes: readiness from the gate, the preStop is the gate's drain.
    edits.push(Edit::Set(
        cpath.clone(),
        "readinessProbe",
        gate_probe("/ready", 2, 1),
    ));
    let pre_stop = json!({"httpGet": {"path": "/drain", "port": admin}});
    if c.lifecycle.is_some() {
        edits.push(Edit::Set(format!("{cpath}.lifecycle"), "preStop", pre_stop));
    } else {
        edits.push(Edit::Set(
            cpath.clone(),
            "lifecycle",
            json!({"preStop": pre_stop}),
        ));
    }
    lines.push("readinessProbe → the gate's /ready; preStop → the gate's /drain".into());

    let old = w.spec.termination_grace_period_seconds;
    if old != i64::try_from(grace_secs).ok() {
        edits.push(Edit::Set(
            pod.to_owned(),
            "terminationGracePeriodSeconds",
            json!(grace_secs),
        ));
    }
    let was = match old {
        Some(g) if g == i64::try_from(grace_secs).unwrap_or(-1) => format!("kept at {g}"),
        Some(g) => format!("{g} → {grace_secs}"),
        None => format!("unset (30) → {grace_secs}"),
    };
    lines.push(format!(
        "terminationGracePeriodSeconds {was} (needs {} s convergence + {} s longest request ({from}) + {} s margin = {} s)",
        secs(opts.convergence),
        secs(max_request),
        secs(MARGIN),
        secs(need)
    ));
    Ok(Some((
        edits,
        Change {
            object: o.display_name(),
            container: c.name.clone(),
            lines,
        },
        warnings,
    )))
}

/// The edits that turn the list `field` of the container at `cpath` from `old` into `new`
/// element by element, so that the rest of the list's text stays as it is.
fn list_edits(
    edits: &mut Vec<Edit>,
    cpath: &str,
    field: &'static str,
    old: Option<&Vec<String>>,
    new: Option<&Vec<String>>,
) {
    match (old, new) {
        (None, Some(new)) => edits.push(Edit::Set(cpath.to_owned(), field, json!(new))),
        (Some(old), Some(new)) => {
            for (i, v) in new.iter().enumerate() {
                match old.get(i) {
                    Some(o) if o == v => {}
                    Some(_) => edits.push(Edit::Replace(format!("{cpath}.{field}[{i}]"), json!(v))),
                    None => edits.push(Edit::Push(format!("{cpath}.{field}"), json!(v))),
                }
            }
        }
        _ => {}
    }
}

/// A probe or hook port as a number (named ports through the container's declarations).
fn resolve(port: &IntOrString, c: &core::Container) -> Option<u16> {
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

/// The port clients use: the only declared port, else the one named `http` or probed for
/// readiness, else the first; with none declared, the readiness probe's or the engine's
/// default.
fn traffic_port(c: &core::Container, engine: Option<&Engine>) -> Option<u16> {
    let ports: Vec<&core::ContainerPort> = c
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let probed = c.readiness_probe.as_ref().and_then(|p| {
        p.http_get
            .as_ref()
            .and_then(|h| resolve(&h.port, c))
            .or_else(|| p.tcp_socket.as_ref().and_then(|t| resolve(&t.port, c)))
    });
    let number = |p: &core::ContainerPort| u16::try_from(p.container_port).ok();
    match ports.as_slice() {
        [one] => number(one),
        [] => probed.or_else(|| engine.map(|e| e.default_port)),
        many => many
            .iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .and_then(|p| number(p))
            .or(probed.filter(|p| many.iter().any(|d| number(d) == Some(*p))))
            .or_else(|| number(many[0])),
    }
}

/// A byte range of a string and its new text.
type Replacement = (std::ops::Range<usize>, String);

/// Changes `--port P` / `--port=P` (and the other known port flags, also inside shell command
/// strings) to `to` in the command and args; whether anything changed.
fn move_port(
    command: &mut Option<Vec<String>>,
    args: &mut Option<Vec<String>>,
    port: u16,
    to: u16,
) -> bool {
    let p = port.to_string();
    // Every word of both lists, with where it is: (list, element, byte range).
    let mut words: Vec<(usize, usize, std::ops::Range<usize>, String)> = Vec::new();
    for (list, v) in [command.as_ref(), args.as_ref()].into_iter().enumerate() {
        for (i, elem) in v.into_iter().flatten().enumerate() {
            let mut at = 0;
            for w in elem.split_whitespace() {
                let start = elem[at..].find(w).map_or(at, |s| at + s);
                words.push((list, i, start..start + w.len(), w.to_owned()));
                at = start + w.len();
            }
        }
    }
    let clean = |w: &str| w.trim_matches(|c| c == '"' || c == '\'').to_owned();
    // (list, element) → replacements (range, text).
    let mut edits: BTreeMap<(usize, usize), Vec<Replacement>> = BTreeMap::new();
    for (k, (list, i, range, w)) in words.iter().enumerate() {
        for flag in PORT_FLAGS {
            if let Some(v) = w.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
                && clean(v) == p
            {
                edits
                    .entry((*list, *i))
                    .or_default()
                    .push((range.clone(), w.replace(&p, &to.to_string())));
            } else if w == flag
                && let Some((l2, i2, r2, v)) = words.get(k + 1)
                && clean(v) == p
            {
                edits
                    .entry((*l2, *i2))
                    .or_default()
                    .push((r2.clone(), v.replace(&p, &to.to_string())));
            }
        }
    }
    for ((list, i), mut reps) in edits.iter().map(|(k, v)| (*k, v.clone())) {
        let target = if list == 0 {
            command.as_mut()
        } else {
            args.as_mut()
        };
        if let Some(elem) = target.and_then(|v| v.get_mut(i)) {
            reps.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
            for (r, text) in reps {
                elem.replace_range(r, &text);
            }
        }
    }
    !edits.is_empty()
}

/// The edit that points a probe of the engine at its new port, if it checked the old one.
fn repoint(p: &core::Probe, c: &core::Container, from: u16, to: u16, path: &str) -> Option<Edit> {
    if let Some(h) = &p.http_get
        && resolve(&h.port, c) == Some(from)
    {
        return Some(Edit::Replace(format!("{path}.httpGet.port"), json!(to)));
    }
    if let Some(t) = &p.tcp_socket
        && resolve(&t.port, c) == Some(from)
    {
        return Some(Edit::Replace(format!("{path}.tcpSocket.port"), json!(to)));
    }
    if let Some(cmd) = p.exec.as_ref().and_then(|e| e.command.as_ref()) {
        let old: Vec<String> = [format!("localhost:{from}"), format!("127.0.0.1:{from}")].into();
        let new: Vec<String> = cmd
            .iter()
            .map(|w| {
                let mut w = w.clone();
                for o in &old {
                    w = w.replace(o, &o.replace(&from.to_string(), &to.to_string()));
                }
                w
            })
            .collect();
        if &new != cmd {
            return Some(Edit::Set(format!("{path}.exec"), "command", json!(new)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn ports_move_in_every_spelling() {
        let mut cmd = strings(&["vllm", "serve", "m", "--port", "8000"]);
        let mut args = strings(&["--http-port=8000", "--other", "8000"]);
        assert!(move_port(&mut cmd, &mut args, 8000, 8001));
        assert_eq!(cmd, strings(&["vllm", "serve", "m", "--port", "8001"]));
        assert_eq!(args, strings(&["--http-port=8001", "--other", "8000"]));
        let mut cmd = strings(&["sh", "-c", "exec vllm serve m --port 8000 --host 0.0.0.0"]);
        assert!(move_port(&mut cmd, &mut None, 8000, 8001));
        assert_eq!(
            cmd,
            strings(&["sh", "-c", "exec vllm serve m --port 8001 --host 0.0.0.0"])
        );
        let mut cmd = strings(&["--port"]);
        let mut args = strings(&["8000"]);
        assert!(move_port(&mut cmd, &mut args, 8000, 9000));
        assert_eq!(args, strings(&["9000"]));
        let mut cmd = strings(&["serve", "--port", "80000"]);
        assert!(!move_port(&mut cmd, &mut None, 8000, 8001));
    }
}
