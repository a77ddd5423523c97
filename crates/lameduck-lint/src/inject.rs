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
//! In both, the gate takes over the port clients use and the engine moves to another one (the
//! way its server is told its port: a flag, an environment variable, an address; see
//! [`lameduck_pod::engines`]); readiness moves to the gate's `/ready`, the preStop is the
//! gate's `/drain`, and `terminationGracePeriodSeconds` is the one the pod needs behind the
//! gate ([`lameduck_pod::grace_need`], the same computation `lint` and `plan` use). A workload
//! already behind the gate is left as it is, so a second run changes nothing.

use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use lameduck_manifest::{Editor, Lifecycle, Workload, load_str};
use lameduck_pod::engines::{self, Engine, PortSetting};
use lameduck_pod::{ADMIN_PORT_NAME, GateFlags, PodModel, Slot};
use serde_json::{Value, json};

use crate::facts;

/// Where the gate goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A native sidecar in front of the engine container.
    Sidecar,
    /// The engine's command wrapped: the gate supervises it as a child process.
    Wrapper,
}

/// The gate's admin port unless told otherwise (`lameduck gate --admin`'s default).
pub const DEFAULT_ADMIN_PORT: u16 = lameduck_pod::DEFAULT_ADMIN_PORT;
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
    /// The convergence window (the gate's `--convergence-max`); `None`: the pod's own preStop
    /// sleep, else [`lameduck_timeline::DEFAULT_CONVERGENCE_WINDOW`].
    pub convergence: Option<Duration>,
    /// Wrapper mode, for a container without `command`: the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Leave a single replica's rollout strategy as written (by default a rolling update that
    /// takes the only replica down first becomes maxSurge 1, maxUnavailable 0).
    pub keep_strategy: bool,
    /// Loosen disruption budgets in the input that allow no eviction, so that one pod may go.
    pub fix_budgets: bool,
    /// Run the gate with `--kube`: the pod's identity from the downward API, the
    /// `lameduck.io/serving` readiness gate, and a ServiceAccount, Role and RoleBinding.
    pub kube: bool,
    /// With `kube`: also `--deletion-cost` (and the RBAC to patch pods).
    pub deletion_cost: bool,
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
            convergence: None,
            entrypoint: None,
            keep_strategy: false,
            fix_budgets: false,
            kube: false,
            deletion_cost: false,
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
    /// An edit did not read back as intended: a bug, reported rather than writing a broken
    /// manifest.
    #[error("{object}: inject could not edit `{}` safely ({source}); nothing was written. Please report this with the manifest", source_path(.source))]
    Edit {
        /// `kind/name`.
        object: String,
        /// The editor's error.
        source: lameduck_manifest::EditError,
    },
}

fn source_path(e: &lameduck_manifest::EditError) -> String {
    match e {
        lameduck_manifest::EditError::Path { path, .. }
        | lameduck_manifest::EditError::Unverified { path } => path.clone(),
        lameduck_manifest::EditError::Syntax { line, .. } => format!("line {line}"),
    }
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
    /// How the grace period the pod needs was computed (the sentence `lint` and `plan` print).
    pub grace_need: String,
}

/// A setting of an object changed for its drains or rollouts (not a container put behind the
/// gate): a rollout strategy, a Knative timeout, a disruption budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjusted {
    /// `kind/name` of the object changed.
    pub object: String,
    /// The fields set, as paths in the object.
    pub paths: Vec<String>,
    /// What was done and why, for people.
    pub line: String,
}

/// The result: the new text, and what changed or was left alone.
#[derive(Debug, Clone)]
pub struct Injected {
    /// The manifest with the gate added.
    pub text: String,
    /// The workloads changed.
    pub changed: Vec<Change>,
    /// Other settings changed for drains and rollouts.
    pub adjusted: Vec<Adjusted>,
    /// Workloads left alone, and why.
    pub skipped: Vec<String>,
    /// Things to check by hand.
    pub warnings: Vec<String>,
}

/// One edit, at a path of a document.
#[derive(Debug, Clone)]
enum Edit {
    Set(String, String, Value),
    Push(String, Value),
    Replace(String, Value),
}

/// Why a workload is left alone without an edit (not an error).
fn not_injected(w: &Workload<'_>) -> Option<String> {
    match w.kind.lifecycle() {
        Lifecycle::Batch => {
            return Some("batch work, not served through a load balancer".into());
        }
        Lifecycle::Knative => {
            return Some(
                "Knative drains revisions itself (its queue-proxy keeps serving for the revision's timeoutSeconds): `lameduck lint` checks that timeout instead".into(),
            );
        }
        Lifecycle::Served => {}
    }
    if w.template.model_container.is_some() {
        return Some(
            "its container comes from a KServe ServingRuntime (predictor.model): inject the ServingRuntime, or write the predictor's containers out".into(),
        );
    }
    if !w.template.behind_service() {
        return Some(
            "LeaderWorkerSet workers: only the leader is behind the Service, and the group is replaced as a whole".into(),
        );
    }
    None
}

/// Puts every workload of `text` (read from `path`) behind the gate.
pub fn inject(path: &std::path::Path, text: &str, opts: &Options) -> Result<Injected, InjectError> {
    let loaded = load_str(path, text);
    if let Some(e) = loaded.errors.first() {
        return Err(InjectError::Input(e.to_string()));
    }
    let mut out = Injected {
        text: String::new(),
        changed: Vec::new(),
        adjusted: Vec::new(),
        skipped: Vec::new(),
        warnings: Vec::new(),
    };
    let mut editor = Editor::new(text);
    let mut rbac = String::new();
    let apply = |editor: &mut Editor, object: &lameduck_manifest::Object, edits: Vec<Edit>| {
        for edit in edits {
            let doc = object.document;
            let r = match &edit {
                Edit::Set(p, key, v) => editor.set(doc, &object.path(p), key, v),
                Edit::Push(p, v) => editor.push(doc, &object.path(p), v),
                Edit::Replace(p, v) => editor.replace(doc, &object.path(p), v),
            };
            r.map_err(|source| InjectError::Edit {
                object: object.display_name(),
                source,
            })?;
        }
        Ok::<(), InjectError>(())
    };
    for object in &loaded.objects {
        // Settings of the object itself: the rollout of a single replica, Knative's timeout.
        if let Some(Ok(w)) = Workload::all(object).into_iter().next() {
            let (edits, adjusted, warnings) = object_settings(&w, opts);
            apply(&mut editor, object, edits)?;
            out.adjusted.extend(adjusted);
            out.warnings.extend(warnings);
        }
        for w in Workload::all(object) {
            let w = w.map_err(|e| InjectError::Input(e.to_string()))?;
            let name = w.display_name();
            if let Some(why) = not_injected(&w) {
                out.skipped.push(format!("{name}: {why}"));
                continue;
            }
            if facts::gated(&w) {
                out.skipped.push(format!("{name}: already behind the gate"));
                continue;
            }
            let Some((edits, change, warnings)) = plan(&w, opts)? else {
                out.skipped.push(format!("{name}: no serving container"));
                continue;
            };
            apply(&mut editor, object, edits)?;
            out.warnings.extend(warnings);
            out.changed.push(change);
            if opts.kube {
                rbac.push_str(&rbac_yaml(&w, opts.deletion_cost));
            }
        }
    }
    // Budgets that let no pod go, when asked to loosen them.
    for fix in crate::rules::budget_fixes(&loaded.objects) {
        let Some(object) = loaded.objects.get(fix.object) else {
            continue;
        };
        let name = object.display_name();
        if opts.fix_budgets {
            apply(
                &mut editor,
                object,
                vec![Edit::Replace(fix.field.to_owned(), fix.value.clone())],
            )?;
            out.adjusted.push(Adjusted {
                object: name,
                paths: vec![fix.field.to_owned()],
                line: format!("{}: {} (was {})", fix.field, fix.value, fix.why),
            });
        } else {
            out.warnings.push(format!(
                "{name}: {}; it blocks every node drain. `--fix-budgets` sets {}: {} (or change it by hand)",
                fix.why, fix.field, fix.value
            ));
        }
    }
    for p in editor.rewritten() {
        out.warnings.push(if p == lameduck_manifest::edit::RELAXED {
            "lines inside multi-line flow lists (`[`…`]`) that were not indented past their key were indented two spaces further, as the YAML spec requires; their values are unchanged".to_owned()
        } else {
            format!(
                "`{p}` was rewritten in flow style (JSON) to keep the YAML valid: its comments and layout there are gone; the values are the intended ones"
            )
        });
    }
    out.text = editor.text().into_owned();
    if !rbac.is_empty() {
        if path.extension().is_some_and(|e| e == "json")
            || serde_json::from_str::<Value>(text).is_ok()
        {
            // A JSON input stays JSON (kubectl reads a stream that starts with `{` as JSON
            // only): the RBAC objects are given as YAML to save beside it.
            out.warnings.push(format!(
                "--kube: the gate needs a Role and RoleBinding (and a ServiceAccount); the input is JSON, so they are not appended: save this YAML beside it:\n{}",
                rbac.trim_end()
            ));
        } else {
            if !out.text.ends_with('\n') {
                out.text.push('\n');
            }
            out.text.push_str(&rbac);
        }
    }
    Ok(out)
}

/// Knative's revision timeout below the longest request: raised (a draining Knative pod keeps
/// serving for that long, and longer requests are cut). A single replica's rolling update that
/// takes it down first: a surge instead (unless `keep_strategy`). Returns the edits, what they
/// do, and what is left to the user.
fn object_settings(w: &Workload<'_>, opts: &Options) -> (Vec<Edit>, Vec<Adjusted>, Vec<String>) {
    let (mut edits, mut adjusted, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    let name = w.display_name();
    match w.kind.lifecycle() {
        Lifecycle::Batch => {}
        Lifecycle::Knative => {
            let Some((max_req, from)) = facts::max_request_described(w, opts.max_request) else {
                return (edits, adjusted, warnings);
            };
            let pod = w.pod_path();
            let timeout = w
                .object
                .value
                .pointer(&format!("/{}/timeoutSeconds", pod.replace('.', "/")))
                .and_then(Value::as_u64)
                .unwrap_or(KNATIVE_DEFAULT_TIMEOUT);
            let need = max_req.as_secs() + u64::from(max_req.subsec_nanos() > 0);
            if timeout < need {
                edits.push(Edit::Set(
                    pod.to_owned(),
                    "timeoutSeconds".into(),
                    json!(need),
                ));
                adjusted.push(Adjusted {
                    object: name.clone(),
                    paths: vec![format!("{pod}.timeoutSeconds")],
                    line: format!(
                        "timeoutSeconds: {need} (was {timeout}): requests run up to {} ({from}), and Knative cuts longer ones",
                        crate::rules::secs(max_req)
                    ),
                });
                if need > KNATIVE_DEFAULT_MAX_TIMEOUT {
                    warnings.push(format!(
                        "{name}: timeoutSeconds {need} is above Knative's default max-revision-timeout-seconds ({KNATIVE_DEFAULT_MAX_TIMEOUT}): raise it in the config-defaults ConfigMap, or Knative rejects the revision"
                    ));
                }
            }
        }
        Lifecycle::Served => {
            let single = w.replicas == Some(1);
            let recreate = w
                .object
                .value
                .pointer("/spec/strategy/type")
                .and_then(Value::as_str)
                == Some("Recreate")
                && w.kind == lameduck_manifest::WorkloadKind::Deployment;
            if single && recreate {
                warnings.push(format!(
                    "{name}: one replica with the Recreate strategy: every rollout stops it before its replacement starts. If a second pod can run during a rollout (a spare GPU, no ReadWriteOnce volume), use a RollingUpdate with maxSurge: 1, maxUnavailable: 0"
                ));
            }
            let Some(ru) = w.rolling_update() else {
                return (edits, adjusted, warnings);
            };
            if !single || ru.max_unavailable < 1 {
                return (edits, adjusted, warnings);
            }
            if opts.keep_strategy {
                warnings.push(format!(
                    "{name}: one replica, and its rollout takes it down before the replacement is ready (kept as written: --keep-strategy)"
                ));
                return (edits, adjusted, warnings);
            }
            let path = w.strategy_path();
            let fields = json!({"maxSurge": 1, "maxUnavailable": 0});
            edits.extend(set_under(&w.object.value, path, &fields));
            adjusted.push(Adjusted {
                object: name,
                paths: vec![format!("{path}.maxSurge"), format!("{path}.maxUnavailable")],
                line: format!(
                    "{path}: maxSurge 1, maxUnavailable 0 (was {} unavailable of one replica): the replacement becomes ready before the old pod drains. A rollout then needs room for a second pod (a GPU); without it, it waits and the old pod keeps serving. --keep-strategy leaves it",
                    ru.max_unavailable
                ),
            });
        }
    }
    (edits, adjusted, warnings)
}

/// Knative's revision timeout when none is written (`revision-timeout-seconds`).
const KNATIVE_DEFAULT_TIMEOUT: u64 = 300;
/// Knative's default ceiling for it (`max-revision-timeout-seconds`).
const KNATIVE_DEFAULT_MAX_TIMEOUT: u64 = 600;

/// The edits that set each field of `fields` in the mapping at `path` (dot-separated, no
/// indices) of `value`, creating the missing mappings on the way.
fn set_under(value: &Value, path: &str, fields: &Value) -> Vec<Edit> {
    let parts: Vec<&str> = path.split('.').collect();
    // The deepest mapping of the path that exists.
    let mut depth = 0;
    let mut at = value;
    while depth < parts.len() {
        match at.get(parts[depth]) {
            Some(next) if next.is_object() => {
                at = next;
                depth += 1;
            }
            _ => break,
        }
    }
    let existing = parts[..depth].join(".");
    if depth == parts.len() {
        return fields
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| Edit::Set(existing.clone(), k.clone(), v.clone()))
            .collect();
    }
    // Nest the rest of the path around the fields.
    let mut nested = fields.clone();
    for part in parts[depth + 1..].iter().rev() {
        nested = json!({ *part: nested });
    }
    vec![Edit::Set(existing, parts[depth].to_owned(), nested)]
}

type Planned = (Vec<Edit>, Change, Vec<String>);

/// The edits that put one workload behind the gate; `None` when no container serves.
fn plan(w: &Workload<'_>, opts: &Options) -> Result<Option<Planned>, InjectError> {
    let o = w.object;
    let pod = w.pod_path().to_owned();
    let fail = |at: &str, message: String| {
        let pos = o.pos(at);
        InjectError::Workload {
            file: o.file.display().to_string(),
            line: pos.line,
            col: pos.col,
            object: w.display_name(),
            message,
        }
    };
    let model = &w.model;
    let index = match model.serving_container(opts.container.as_deref()) {
        Ok(Some(i)) => i,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(fail(
                &format!("{pod}.containers"),
                format!("{e}: choose one with --container"),
            ));
        }
    };
    let slot = model.containers[index].slot;
    let Some(c) = w.container(slot) else {
        return Ok(None);
    };
    if !matches!(slot, Slot::App(_)) {
        return Err(fail(
            &w.container_path(slot),
            format!(
                "container `{}` is an init container: put an app container behind the gate (--container)",
                c.name
            ),
        ));
    }
    let cpath = w.container_path(slot);
    let engine = model.containers[index].engine.map(|(e, _)| e);

    // Ports: the one clients use (the gate takes it), the engine's new one, the admin port.
    let declared: Vec<u16> = w
        .spec
        .containers
        .iter()
        .chain(w.spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let port = match opts.port {
        Some(p) => p,
        None => traffic_port(c, engine).ok_or_else(|| {
            fail(
                &cpath,
                format!(
                    "cannot tell which port of container `{}` serves clients (it declares none, its readiness probe names none, and its server is not one lameduck knows): pass --port",
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

    // The budget: what this pod needs behind the gate.
    let (max_request, source) = facts::max_request_described(w, opts.max_request).ok_or_else(|| {
        fail(
            "metadata",
            format!(
                "no idea how long its requests run: set the `{}` annotation or pass --max-request",
                facts::MAX_REQUEST_ANNOTATION
            ),
        )
    })?;
    // The pod's own convergence window (its preStop sleep) carries over to the gate, so the
    // pod needs the same grace before and after.
    let window = opts.convergence.unwrap_or_else(|| {
        model.convergence_window(Some(index), lameduck_timeline::DEFAULT_CONVERGENCE_WINDOW)
    });
    let need = lameduck_pod::grace_need_gated(
        window,
        lameduck_timeline::DEFAULT_KILL_MARGIN,
        (max_request, source),
    );
    let grace_secs = need.seconds().max(w.grace().as_secs());

    // The engine's own health path: what its readiness probe asked the engine, else what the
    // engine is known to answer.
    let health = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .filter(|h| lameduck_pod::model::resolve_port(&h.port, c) == Some(port))
        .and_then(|h| h.path.clone())
        .or_else(|| engine.map(|e| e.health.to_owned()))
        .unwrap_or_else(|| "/health".to_owned());

    let mut edits = Vec::new();
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    let mut gate = GateFlags::default();
    gate.set("listen", format!("0.0.0.0:{port}"))
        .set("admin", format!("0.0.0.0:{admin}"))
        .set("upstream", format!("http://127.0.0.1:{engine_port}"))
        .set("grace-period", grace_secs.to_string())
        .set("convergence-max", lameduck_timeline::secs_plain(window))
        .set("health-path", health.clone());
    if opts.kube {
        gate.switch("kube");
        if opts.deletion_cost {
            gate.switch("deletion-cost");
        }
    }
    // A window shorter than the gate's default minimum: the minimum follows it down.
    if window < lameduck_timeline::Convergence::DEFAULT.min {
        gate.set("convergence-min", lameduck_timeline::secs_plain(window));
    }

    // Move the engine off the port, the way its server is told its port.
    let mut command = c.command.clone();
    let mut args = c.args.clone();
    let moved = move_port(c, engine, &mut command, &mut args, port, engine_port)
        .map_err(|why| fail(&cpath, why))?;
    let how = match &moved {
        Moved::Argv(how) => how.clone(),
        Moved::Env { index, value, name } => {
            edits.push(Edit::Replace(
                format!("{cpath}.env[{index}].value"),
                json!(value),
            ));
            format!("env {name}={value}")
        }
        Moved::AddEnv { name, value } => {
            let var = json!({"name": name, "value": value});
            if c.env.as_ref().is_some_and(|e| !e.is_empty()) {
                edits.push(Edit::Push(format!("{cpath}.env"), var));
            } else {
                edits.push(Edit::Set(cpath.clone(), "env".into(), json!([var])));
            }
            format!("env {name}={value}, added")
        }
        Moved::AddArgs(extra) => {
            match (&mut command, &mut args) {
                (_, Some(a)) => a.extend(extra.iter().cloned()),
                (Some(cmd), None) => cmd.extend(extra.iter().cloned()),
                (None, None) => {
                    warnings.push(format!(
                        "{}: container `{}` had neither command nor args; inject set args to `{}`, which replaces the image's CMD if it has one",
                        w.display_name(),
                        c.name,
                        extra.join(" ")
                    ));
                    args = Some(extra.clone());
                }
            }
            format!("`{}` added", extra.join(" "))
        }
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
                .any(|e| matches!(e, Edit::Set(_, k, _) if k == "initContainers"))
        {
            edits.push(Edit::Push(init_path.clone(), item));
        } else {
            edits.push(Edit::Set(
                pod.clone(),
                "initContainers".into(),
                json!([item]),
            ));
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
            cmd.extend(gate.render());
            let mut sidecar = json!({
                "name": SIDECAR_NAME,
                "image": opts.image,
                "restartPolicy": "Always",
                "command": cmd,
                "ports": [{"name": ADMIN_PORT_NAME, "containerPort": admin}],
                "readinessProbe": gate_probe("/ready", 2, 1),
                "livenessProbe": gate_probe("/live", 10, 3),
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                "securityContext": security,
            });
            if opts.kube
                && let Some(o) = sidecar.as_object_mut()
            {
                o.insert("env".into(), identity_env());
            }
            add_init(&mut edits, sidecar);
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
                            w.display_name(),
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
            gate.command = engine_cmd;
            let mut cmd = vec![bin.clone(), "gate".to_owned()];
            cmd.extend(gate.render());
            edits.push(Edit::Set(cpath.clone(), "command".into(), json!(cmd)));
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
                    edits.push(Edit::Set(pod.clone(), "volumes".into(), json!([volume])));
                }
                let mount = json!({"name": VOLUME_NAME, "mountPath": BIN_DIR, "readOnly": true});
                if c.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
                    edits.push(Edit::Push(format!("{cpath}.volumeMounts"), mount));
                } else {
                    edits.push(Edit::Set(
                        cpath.clone(),
                        "volumeMounts".into(),
                        json!([mount]),
                    ));
                }
                lines.push(format!(
                    "init container `{INSTALL_NAME}` copies the binary into volume `{VOLUME_NAME}` at {BIN_DIR}"
                ));
            }
            edits.push(Edit::Set(
                cpath.clone(),
                "livenessProbe".into(),
                gate_probe("/live", 10, 3),
            ));
            lines.push("livenessProbe → the gate's /live".into());
            // Declared by name, as the sidecar declares it, so that a PodMonitor or a
            // kubernetes_sd relabel finds the gate's /metrics (it still goes into no Service).
            let port = json!({"name": ADMIN_PORT_NAME, "containerPort": admin});
            if c.ports.as_ref().is_some_and(|p| !p.is_empty()) {
                edits.push(Edit::Push(format!("{cpath}.ports"), port));
            } else {
                edits.push(Edit::Set(cpath.clone(), "ports".into(), json!([port])));
            }
            // A startup probe of the engine's old port would now ask the gate, which answers
            // only once the engine is healthy: point it at /ready.
            if c.startup_probe.is_some() {
                edits.push(Edit::Set(
                    cpath.clone(),
                    "startupProbe".into(),
                    json!({"httpGet": {"path": "/ready", "port": admin}, "periodSeconds": 10, "failureThreshold": startup_failures(c)}),
                ));
                lines.push("startupProbe → the gate's /ready (same patience)".into());
            }
        }
    }

    if opts.kube {
        kube_edits(w, c, &cpath, opts, &mut edits, &mut lines);
    }

    // Both modes: readiness from the gate, the preStop is the gate's drain.
    edits.push(Edit::Set(
        cpath.clone(),
        "readinessProbe".into(),
        gate_probe("/ready", 2, 1),
    ));
    let pre_stop = json!({"httpGet": {"path": "/drain", "port": admin}});
    if c.lifecycle.is_some() {
        edits.push(Edit::Set(
            format!("{cpath}.lifecycle"),
            "preStop".into(),
            pre_stop,
        ));
    } else {
        edits.push(Edit::Set(
            cpath.clone(),
            "lifecycle".into(),
            json!({"preStop": pre_stop}),
        ));
    }
    lines.push("readinessProbe → the gate's /ready; preStop → the gate's /drain".into());

    // The gate runs as non-root: a port below 1024 needs the runtime to allow it, which the
    // pod can ask for with a sysctl Kubernetes counts as safe (since 1.22).
    if port < 1024 {
        let sysctl = json!({"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"});
        let existing = w.spec.security_context.as_ref();
        let set_already = existing.and_then(|s| s.sysctls.as_ref()).is_some_and(|v| {
            v.iter()
                .any(|s| s.name == "net.ipv4.ip_unprivileged_port_start")
        });
        if !set_already {
            match existing {
                None => edits.push(Edit::Set(
                    pod.clone(),
                    "securityContext".into(),
                    json!({"sysctls": [sysctl]}),
                )),
                Some(sc) if sc.sysctls.as_ref().is_some_and(|v| !v.is_empty()) => {
                    edits.push(Edit::Push(format!("{pod}.securityContext.sysctls"), sysctl))
                }
                Some(_) => edits.push(Edit::Set(
                    format!("{pod}.securityContext"),
                    "sysctls".into(),
                    json!([sysctl]),
                )),
            }
            lines.push(format!(
                "the gate runs as non-root and takes port {port}: the pod's sysctl net.ipv4.ip_unprivileged_port_start=0 lets it"
            ));
        }
    }

    let old = w.spec.termination_grace_period_seconds;
    if old != i64::try_from(grace_secs).ok() {
        edits.push(Edit::Set(
            pod.clone(),
            "terminationGracePeriodSeconds".into(),
            json!(grace_secs),
        ));
    }
    let was = match old {
        Some(g) if g == i64::try_from(grace_secs).unwrap_or(-1) => format!("kept at {g}"),
        Some(g) if u64::try_from(g).is_ok_and(|g| g > need.seconds()) => {
            format!("kept at {g}, more than needed")
        }
        Some(g) => format!("{g} → {grace_secs}"),
        None => format!("unset (30) → {grace_secs}"),
    };
    lines.push(format!(
        "terminationGracePeriodSeconds {was}: {}",
        need.explain()
    ));
    Ok(Some((
        edits,
        Change {
            object: w.display_name(),
            container: c.name.clone(),
            lines,
            grace_need: need.explain(),
        },
        warnings,
    )))
}

/// The pod's identity for `--kube`, from the downward API.
fn identity_env() -> Value {
    json!([
        {"name": "LAMEDUCK_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LAMEDUCK_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ])
}

/// The name of the ServiceAccount (and Role, RoleBinding) inject makes for a workload whose
/// pods name none.
pub fn service_account_name(w: &Workload<'_>) -> String {
    format!("{}-lameduck", w.object.name)
}

/// `--kube`'s pod-spec edits: the readiness gate, the identity (wrapper mode: on the engine's
/// container, which runs the gate), a ServiceAccount of its own when the pod uses the
/// namespace's default one.
fn kube_edits(
    w: &Workload<'_>,
    c: &core::Container,
    cpath: &str,
    opts: &Options,
    edits: &mut Vec<Edit>,
    lines: &mut Vec<String>,
) {
    let pod = w.pod_path();
    let gate = json!({"conditionType": lameduck_gate_condition()});
    let gates = w.spec.readiness_gates.as_deref().unwrap_or_default();
    if !gates
        .iter()
        .any(|g| g.condition_type == lameduck_gate_condition())
    {
        if gates.is_empty() {
            edits.push(Edit::Set(
                pod.to_owned(),
                "readinessGates".into(),
                json!([gate]),
            ));
        } else {
            edits.push(Edit::Push(format!("{pod}.readinessGates"), gate));
        }
    }
    if opts.mode == Mode::Wrapper {
        let present = c.env.as_deref().unwrap_or_default();
        for var in identity_env().as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or_default();
            if present.iter().any(|e| e.name == name) {
                continue;
            }
            if present.is_empty()
                && !edits
                    .iter()
                    .any(|e| matches!(e, Edit::Set(p, k, _) if p == cpath && k == "env"))
            {
                edits.push(Edit::Set(cpath.to_owned(), "env".into(), json!([var])));
            } else {
                edits.push(Edit::Push(format!("{cpath}.env"), var.clone()));
            }
        }
    }
    let account = match w.spec.service_account_name.as_deref() {
        Some(a) if !a.is_empty() && a != "default" => a.to_owned(),
        _ => {
            let a = service_account_name(w);
            edits.push(Edit::Set(
                pod.to_owned(),
                "serviceAccountName".into(),
                json!(a),
            ));
            a
        }
    };
    lines.push(format!(
        "--kube: readiness gate `{}` (the endpoint leaves rotation the moment a drain starts), the pod's name and namespace from the downward API, ServiceAccount `{account}` with a Role and RoleBinding (appended)",
        lameduck_gate_condition()
    ));
}

fn lameduck_gate_condition() -> &'static str {
    lameduck_pod::SERVING_CONDITION
}

/// The RBAC objects `--kube` needs for `w`'s pods, as YAML documents to append: a
/// ServiceAccount (when inject named one of its own), a Role and a RoleBinding.
pub fn rbac_yaml(w: &Workload<'_>, deletion_cost: bool) -> String {
    let namespace = w.object.namespace.as_deref();
    let own = service_account_name(w);
    let account = match w.spec.service_account_name.as_deref() {
        Some(a) if !a.is_empty() && a != "default" => a.to_owned(),
        _ => own.clone(),
    };
    let ns_line = namespace
        .map(|n| format!("  namespace: {n}\n"))
        .unwrap_or_default();
    let mut out = String::new();
    if account == own {
        out.push_str(&format!(
            "---\n# The identity of {kind}/{name}'s pods (lameduck inject --kube).\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {own}\n{ns_line}",
            kind = w.object.kind,
            name = w.object.name
        ));
    }
    let pod_verbs = if deletion_cost {
        "[\"list\", \"watch\", \"patch\"]"
    } else {
        "[\"list\", \"watch\"]"
    };
    out.push_str(&format!(
        "---\n# What the gate's --kube needs, in this namespace only (docs/kube.md).\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {own}\n{ns_line}rules:\n  # Its own pod: uid, deletion grace period{cost}.\n  - apiGroups: [\"\"]\n    resources: [\"pods\"]\n    verbs: {pod_verbs}\n  # The lameduck.io/serving condition.\n  - apiGroups: [\"\"]\n    resources: [\"pods/status\"]\n    verbs: [\"patch\"]\n  # When the control plane took the endpoint out of rotation.\n  - apiGroups: [\"discovery.k8s.io\"]\n    resources: [\"endpointslices\"]\n    verbs: [\"list\", \"watch\"]\n  # The drain report, as an Event on the pod.\n  - apiGroups: [\"\"]\n    resources: [\"events\"]\n    verbs: [\"create\"]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {own}\n{ns_line}roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {own}\nsubjects:\n  - kind: ServiceAccount\n    name: {account}\n{subject_ns}",
        cost = if deletion_cost { ", and the pod-deletion-cost annotation" } else { "" },
        subject_ns = namespace.map(|n| format!("    namespace: {n}\n")).unwrap_or_default(),
    ));
    out
}

/// The engine's startup probe's patience (periodSeconds × failureThreshold) as a failure
/// threshold at a 10 s period.
fn startup_failures(c: &core::Container) -> i64 {
    let p = c.startup_probe.as_ref().map(lameduck_pod::model::probe);
    p.map_or(30, |p| {
        let total = p.time_to_fail().as_secs() + p.initial_delay.as_secs();
        i64::try_from(total.div_ceil(10)).unwrap_or(30).max(1)
    })
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
        (None, Some(new)) => edits.push(Edit::Set(cpath.to_owned(), field.to_owned(), json!(new))),
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

/// The port clients use: the only declared port, else the one named `http` or probed for
/// readiness, else the first; with none declared, the readiness probe's, the port the
/// server's settings name, or the engine's default.
fn traffic_port(c: &core::Container, engine: Option<&Engine>) -> Option<u16> {
    let ports: Vec<&core::ContainerPort> = c
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let resolve = |p| lameduck_pod::model::resolve_port(p, c);
    let probed = c.readiness_probe.as_ref().and_then(|p| {
        p.http_get
            .as_ref()
            .and_then(|h| resolve(&h.port))
            .or_else(|| p.tcp_socket.as_ref().and_then(|t| resolve(&t.port)))
    });
    let number = |p: &core::ContainerPort| u16::try_from(p.container_port).ok();
    let configured = || engine.and_then(|e| configured_port(c, e));
    match ports.as_slice() {
        [one] => number(one),
        [] => probed
            .or_else(configured)
            .or_else(|| engine.map(|e| e.default_port)),
        many => many
            .iter()
            .find(|p| matches!(p.name.as_deref(), Some("http" | "http1" | "openai")))
            .and_then(|p| number(p))
            .or(probed.filter(|p| many.iter().any(|d| number(d) == Some(*p))))
            .or_else(|| configured().filter(|p| many.iter().any(|d| number(d) == Some(*p))))
            .or_else(|| number(many[0])),
    }
}

/// The port an engine's settings name in this container (flag or env), if any.
fn configured_port(c: &core::Container, e: &Engine) -> Option<u16> {
    let words = argv_words(c);
    for setting in e.port {
        match setting {
            PortSetting::Flag(f) | PortSetting::FlagAddress(f) => {
                if let Some(v) = flag_value(&words, f) {
                    return port_of(&v);
                }
            }
            PortSetting::Env(name) | PortSetting::EnvAddress(name) => {
                if let Some(v) = env_value(c, name) {
                    return port_of(v);
                }
            }
        }
    }
    None
}

fn argv_words(c: &core::Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .flat_map(|s| s.split_whitespace())
        .map(|w| w.trim_matches(|ch| ch == '"' || ch == '\'').to_owned())
        .collect()
}

fn flag_value(words: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    words.iter().enumerate().find_map(|(i, w)| {
        if let Some(v) = w.strip_prefix(&eq) {
            Some(v.to_owned())
        } else if w == flag {
            words.get(i + 1).cloned()
        } else {
            None
        }
    })
}

fn env_value<'c>(c: &'c core::Container, name: &str) -> Option<&'c str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The port of `8000`, `:8000`, `0.0.0.0:8000`, `[::]:8000`, `http://0.0.0.0:8000`.
fn port_of(v: &str) -> Option<u16> {
    v.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// How the engine was moved off its port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Moved {
    /// A flag in its command or args was changed (described).
    Argv(String),
    /// An env var's value was changed.
    Env {
        index: usize,
        name: String,
        value: String,
    },
    /// An env var was added.
    AddEnv { name: String, value: String },
    /// These words were added to its args.
    AddArgs(Vec<String>),
}

/// Port flags of servers lameduck does not know, tried when the engine is unknown.
const GENERIC_FLAGS: [&str; 4] = ["--port", "--http-port", "--server-port", "--http_port"];
/// Port variables of servers lameduck does not know.
const GENERIC_ENV: [&str; 2] = ["PORT", "HTTP_PORT"];

/// Moves the engine from `port` to `to`: changes the flag or variable that sets it, or, when
/// nothing sets it and the server listens on its default, adds the setting its server takes.
fn move_port(
    c: &core::Container,
    engine: Option<&Engine>,
    command: &mut Option<Vec<String>>,
    args: &mut Option<Vec<String>>,
    port: u16,
    to: u16,
) -> Result<Moved, String> {
    // (name, whether its value is an address): flags, then variables.
    type Settings<'a> = Vec<(&'a str, bool)>;
    let (flags, env): (Settings<'_>, Settings<'_>) = match engine {
        Some(e) => {
            let flags = e
                .port
                .iter()
                .filter_map(|s| match s {
                    PortSetting::Flag(f) => Some((*f, false)),
                    PortSetting::FlagAddress(f) => Some((*f, true)),
                    _ => None,
                })
                .collect();
            let env = e
                .port
                .iter()
                .filter_map(|s| match s {
                    PortSetting::Env(n) => Some((*n, false)),
                    PortSetting::EnvAddress(n) => Some((*n, true)),
                    _ => None,
                })
                .collect();
            (flags, env)
        }
        None => (
            GENERIC_FLAGS.iter().map(|f| (*f, false)).collect(),
            GENERIC_ENV.iter().map(|n| (*n, false)).collect(),
        ),
    };
    for (flag, _) in &flags {
        if replace_flag(command, args, flag, port, to) {
            return Ok(Moved::Argv(format!("its {flag} flag")));
        }
    }
    for (name, address) in &env {
        if let Some((index, e)) = c
            .env
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, e)| e.name == *name)
        {
            let Some(v) = e.value.as_deref() else {
                return Err(format!(
                    "its port comes from env {name}, which is set from a reference (valueFrom): set {name} to a literal value, or pass --port if {port} is not the port clients use"
                ));
            };
            if port_of(v) == Some(port) {
                let value = if *address {
                    match v.rsplit_once(':') {
                        Some((host, _)) => format!("{host}:{to}"),
                        None => format!("0.0.0.0:{to}"),
                    }
                } else {
                    to.to_string()
                };
                return Ok(Moved::Env {
                    index,
                    name: (*name).to_owned(),
                    value,
                });
            }
        }
    }
    let Some(e) = engine else {
        return Err(format!(
            "cannot move the server off port {port}: lameduck does not know this server, and its command line has no {} {port} and its env no {}={port}. Make the port explicit (e.g. `--port {port}` in args, or env PORT) and run inject again, or pass --port if {port} is not the port clients use",
            GENERIC_FLAGS.join("/"),
            GENERIC_ENV.join("/")
        ));
    };
    let describe_all = || {
        e.port
            .iter()
            .map(|s| s.describe(port))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    if e.default_port != port {
        return Err(format!(
            "{} listens on port {} unless told otherwise, but the port clients use here is {port} and nothing in its command line or env sets it: set it explicitly ({}) and run inject again, or pass --port {} if that is the port clients use",
            e.name,
            e.default_port,
            describe_all(),
            e.default_port
        ));
    }
    // Nothing sets the port and the server is on its default: add the setting it takes.
    if e.id == "vllm" && flag_value(&argv_words(c), "--config").is_some() {
        return Err(format!(
            "vLLM reads a config file (--config) that may set its port, which inject cannot see: add `--port {port}` to its args and run inject again"
        ));
    }
    let shell = command
        .iter()
        .flatten()
        .any(|w| w == "-c" || engines::programs(c).len() > 1);
    let preferred = e.port.iter().find(|s| match s {
        PortSetting::Flag(_) | PortSetting::FlagAddress(_) => !shell,
        _ => true,
    });
    match preferred {
        Some(PortSetting::Flag(f)) => Ok(Moved::AddArgs(vec![(*f).to_owned(), to.to_string()])),
        Some(PortSetting::FlagAddress(f)) => Ok(Moved::AddArgs(vec![
            (*f).to_owned(),
            format!("0.0.0.0:{to}"),
        ])),
        Some(PortSetting::Env(n)) => Ok(Moved::AddEnv {
            name: (*n).to_owned(),
            value: to.to_string(),
        }),
        Some(PortSetting::EnvAddress(n)) => Ok(Moved::AddEnv {
            name: (*n).to_owned(),
            value: format!("0.0.0.0:{to}"),
        }),
        None => Err(format!(
            "{} starts from a shell command and listens on its default port {port}: add {} to the command it runs and run inject again",
            e.name,
            describe_all()
        )),
    }
}

/// A byte range of a string and its new text.
type Replacement = (std::ops::Range<usize>, String);

/// Changes `FLAG P` / `FLAG=P` / `FLAG HOST:P` to `to` in the command and args (also inside
/// shell command strings); whether anything changed.
fn replace_flag(
    command: &mut Option<Vec<String>>,
    args: &mut Option<Vec<String>>,
    flag: &str,
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
    let with_port = |v: &str| -> Option<String> {
        let v = clean(v);
        // `8000`, `:8000`, `0.0.0.0:8000`.
        (port_of(&v) == Some(port) && (v == p || v.ends_with(&format!(":{p}")))).then(|| {
            v.replacen(&p, &to.to_string(), 1)
                .replace(&format!(":{p}"), &format!(":{to}"))
        })
    };
    let mut edits: std::collections::BTreeMap<(usize, usize), Vec<Replacement>> =
        Default::default();
    for (k, (list, i, range, w)) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
            && let Some(new) = with_port(v)
        {
            edits
                .entry((*list, *i))
                .or_default()
                .push((range.clone(), format!("{flag}={new}")));
        } else if w == flag
            && let Some((l2, i2, r2, v)) = words.get(k + 1)
            && let Some(new) = with_port(v)
        {
            let quoted = v.starts_with(['"', '\'']);
            let new = if quoted {
                let q = &v[..1];
                format!("{q}{new}{q}")
            } else {
                new
            };
            edits.entry((*l2, *i2)).or_default().push((r2.clone(), new));
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
    let resolve = |p| lameduck_pod::model::resolve_port(p, c);
    if let Some(h) = &p.http_get
        && resolve(&h.port) == Some(from)
    {
        return Some(Edit::Replace(format!("{path}.httpGet.port"), json!(to)));
    }
    if let Some(t) = &p.tcp_socket
        && resolve(&t.port) == Some(from)
    {
        return Some(Edit::Replace(format!("{path}.tcpSocket.port"), json!(to)));
    }
    if let Some(g) = &p.grpc
        && u16::try_from(g.port).ok() == Some(from)
    {
        return Some(Edit::Replace(format!("{path}.grpc.port"), json!(to)));
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
            return Some(Edit::Set(
                format!("{path}.exec"),
                "command".into(),
                json!(new),
            ));
        }
    }
    None
}

/// The pod model of a workload after inject, for callers that check what inject produced.
pub fn model_of(spec: &core::PodSpec) -> PodModel {
    PodModel::new(spec)
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
        assert!(replace_flag(&mut cmd, &mut args, "--port", 8000, 8001));
        assert!(replace_flag(&mut cmd, &mut args, "--http-port", 8000, 8001));
        assert_eq!(cmd, strings(&["vllm", "serve", "m", "--port", "8001"]));
        assert_eq!(args, strings(&["--http-port=8001", "--other", "8000"]));
        let mut cmd = strings(&["sh", "-c", "exec vllm serve m --port 8000 --host 0.0.0.0"]);
        assert!(replace_flag(&mut cmd, &mut None, "--port", 8000, 8001));
        assert_eq!(
            cmd,
            strings(&["sh", "-c", "exec vllm serve m --port 8001 --host 0.0.0.0"])
        );
        let mut cmd = strings(&["--port"]);
        let mut args = strings(&["\"8000\""]);
        assert!(replace_flag(&mut cmd, &mut args, "--port", 8000, 9000));
        assert_eq!(args, strings(&["\"9000\""]));
        let mut cmd = strings(&["serve", "--port", "80000"]);
        assert!(!replace_flag(&mut cmd, &mut None, "--port", 8000, 8001));
        let mut cmd = strings(&["local-ai", "--address", ":8080"]);
        assert!(replace_flag(&mut cmd, &mut None, "--address", 8080, 8081));
        assert_eq!(cmd, strings(&["local-ai", "--address", ":8081"]));
    }

    #[test]
    fn ports_of_addresses() {
        assert_eq!(port_of("8000"), Some(8000));
        assert_eq!(port_of("0.0.0.0:11434"), Some(11434));
        assert_eq!(port_of(":8080"), Some(8080));
        assert_eq!(port_of("http://0.0.0.0:4000/"), Some(4000));
        assert_eq!(port_of("x"), None);
    }
}
