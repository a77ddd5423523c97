//! One reconcile of a RainbowDeployment: read the cluster into a [`decide::Input`], decide,
//! act, write the status. Every call is bounded; a failing call is counted, logged once at
//! `warn`, written to `status.problem`, and the next reconcile (every `--poll`) tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, Resource, ResourceExt};
use lameduck_kube::events::{Subject, event};
use lameduck_kube::{Context as _, KubeError, LogOnce, Op};
use lameduck_pod::model::PodModel;
use serde_json::json;

use crate::colour;
use crate::crd::{
    Autoscaler, AutoscalerKind, COLOUR_LABEL, ColourStatus, RAINBOW_LABEL, RainbowDeployment,
    RainbowStatus,
};
use crate::decide::{self, Action, Colour, Input, Reason, Work};
use crate::metrics::Metrics;

/// What every reconcile shares.
pub struct Ctx {
    /// Reads, patches, status, Events (retries with backoff).
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How long a gate's `/status` may take.
    pub gate_timeout: Duration,
    /// How often a rainbow is looked at again.
    pub poll: Duration,
    /// Failures logged once.
    pub logged: LogOnce,
    /// Change nothing, log what would be done.
    pub dry_run: bool,
}

/// Why a reconcile stopped early (reading failed: nothing was decided).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API read failed.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The spec cannot be used.
    #[error("RainbowDeployment {namespace}/{name}: {reason}")]
    Spec {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What to fix.
        reason: String,
    },
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

fn to_rfc3339(d: Duration) -> String {
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_millisecond(ms).map_or_else(|_| String::new(), |t| t.to_string())
}

fn from_rfc3339(s: &str) -> Option<Duration> {
    let t: Timestamp = s.parse().ok()?;
    u64::try_from(t.as_millisecond())
        .ok()
        .map(Duration::from_millis)
}

/// A pod's work: `Ok(n)`, or why it is not known. Pods that cannot hold work (no IP yet,
/// terminating, finished) are `None`: a terminating pod's work is its own gate's drain's.
async fn pod_work(
    client: &Client,
    pod: &Pod,
    admin_port: Option<u16>,
    timeout: Duration,
) -> Option<Result<u64, String>> {
    let status = pod.status.as_ref()?;
    status.pod_ip.as_ref().filter(|ip| !ip.is_empty())?;
    if pod.metadata.deletion_timestamp.is_some()
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let name = pod.name_any();
    let Some(port) = admin_port else {
        return Some(Err("its template has no lameduck gate".to_owned()));
    };
    let ns = pod.namespace().unwrap_or_default();
    let read = tokio::time::timeout(
        timeout,
        lameduck_kube::gate::status(client, &ns, &name, port),
    )
    .await;
    Some(match read {
        Ok(Ok(s)) => Ok(u64::try_from(s.in_flight_total()).unwrap_or(0)),
        Ok(Err(e)) => Err(format!("the gate of {name} did not answer: {}", e.kind())),
        Err(_) => Err(format!(
            "the gate of {name} did not answer within {}",
            lameduck_timeline::fmt_secs(timeout)
        )),
    })
}

/// Reads, decides, acts and writes the status.
pub async fn reconcile(rd: &RainbowDeployment, ctx: &Ctx) -> Result<(), ReconcileError> {
    let ns = rd.namespace().unwrap_or_else(|| "default".to_owned());
    let name = rd.name_any();
    let spec_error = |reason: String| ReconcileError::Spec {
        namespace: ns.clone(),
        name: name.clone(),
        reason,
    };
    let settings = match rd.spec.settings() {
        Ok(s) => s,
        Err(e) => {
            if !ctx.dry_run {
                let api: Api<RainbowDeployment> = Api::namespaced(ctx.client.clone(), &ns);
                let problem = json!({"status": {"problem": e.to_string(), "observedGeneration": rd.meta().generation}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(problem))
                    .await
                    .op(Op::new("patch", "rainbowdeployments/status", &ns).named(&name))
                {
                    fail(ctx, "write_status", &e);
                }
            }
            return Err(spec_error(e.to_string()));
        }
    };
    let desired = colour::of(&rd.spec.template);
    let selector = format!("{RAINBOW_LABEL}={name}");
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&selector);
    let listed = deployments
        .list(&lp)
        .await
        .op(Op::new("list", "deployments.apps", &ns))?;
    let owned: Vec<Deployment> = listed
        .items
        .into_iter()
        .filter(|d| d.labels().contains_key(COLOUR_LABEL))
        .filter(|d| {
            // Only Deployments this RainbowDeployment owns: a label copied by hand is not
            // enough to have one scaled or deleted.
            d.owner_references()
                .iter()
                .any(|o| Some(o.uid.as_str()) == rd.meta().uid.as_deref())
        })
        .collect();
    let all_pods = pods.list(&lp).await.op(Op::new("list", "pods", &ns))?.items;
    let mut serving_seen: Vec<Option<String>> = Vec::new();
    // The labels the desired colour's pods carry: a Service whose selector asks for anything
    // else would select none of them once it is moved.
    let mut pod_labels = rd
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    pod_labels.insert(RAINBOW_LABEL.to_owned(), name.clone());
    let mut unroutable = None;
    for svc in &rd.spec.services {
        let s = services
            .get_opt(svc)
            .await
            .op(Op::new("get", "services", &ns).named(svc))?;
        let selector = s.and_then(|s| s.spec.and_then(|sp| sp.selector));
        if unroutable.is_none()
            && let Some((k, v)) = selector
                .iter()
                .flatten()
                .find(|(k, v)| k.as_str() != COLOUR_LABEL && pod_labels.get(k.as_str()) != Some(v))
        {
            unroutable = Some(format!(
                "Service {svc} selects {k}={v}, which spec.template's labels do not carry: moved, it would select no pod; give the template that label or change the Service's selector"
            ));
        }
        serving_seen.push(selector.and_then(|sel| sel.get(COLOUR_LABEL).cloned()));
    }
    let remembered = rd.status.clone().unwrap_or_default();
    let serving = if rd.spec.services.is_empty() {
        remembered.serving.clone()
    } else {
        let first = serving_seen.first().cloned().flatten();
        serving_seen
            .iter()
            .all(|s| *s == first)
            .then_some(first)
            .flatten()
    };
    let memory: BTreeMap<&str, &ColourStatus> = remembered
        .colours
        .iter()
        .map(|c| (c.colour.as_str(), c))
        .collect();

    // The work on every colour's pods, read at once.
    let mut colours = Vec::new();
    let mut gate_failures = 0u64;
    for d in &owned {
        let c = d.labels().get(COLOUR_LABEL).cloned().unwrap_or_default();
        let admin_port = d
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| PodModel::new(s).gate.map(|g| g.admin_port()));
        let mine: Vec<&Pod> = all_pods
            .iter()
            .filter(|p| p.labels().get(COLOUR_LABEL) == Some(&c))
            .collect();
        let reads = join_all(
            mine.iter()
                .map(|p| pod_work(&ctx.client, p, admin_port, ctx.gate_timeout)),
        )
        .await;
        let mut sum = 0u64;
        let mut unknown = None;
        for r in reads.into_iter().flatten() {
            match r {
                Ok(n) => sum += n,
                Err(why) => {
                    gate_failures += 1;
                    unknown.get_or_insert(why);
                }
            }
        }
        let mem = memory.get(c.as_str());
        let status = d.status.clone().unwrap_or_default();
        colours.push(Colour {
            colour: c.clone(),
            replicas: d.spec.replicas.unwrap_or(1),
            ready: status.ready_replicas.unwrap_or(0),
            pods: u32::try_from(mine.len()).unwrap_or(u32::MAX),
            work: Work::from_sum(sum, unknown),
            superseded_at: mem
                .and_then(|m| m.superseded_at.as_deref())
                .and_then(from_rfc3339),
            idle_since: mem
                .and_then(|m| m.idle_since.as_deref())
                .and_then(from_rfc3339),
            retiring: d
                .annotations()
                .get(RETIRED_ANNOTATION)
                .map(String::as_str)
                .or_else(|| mem.and_then(|m| m.retiring.as_deref()))
                .and_then(Reason::parse),
        });
    }
    ctx.metrics.gate_errors(gate_failures);

    let now = since_epoch(SystemTime::now());
    let input = Input {
        now,
        settings,
        desired: desired.clone(),
        serving,
        colours,
        unroutable: unroutable.clone(),
    };
    let decision = decide::decide(&input);
    let mut problems: Vec<String> = unroutable.into_iter().collect();
    for action in &decision.actions {
        if let Err(e) = act(rd, &ns, &name, action, ctx).await {
            problems.push(e.to_string());
        }
    }

    // The current colour's autoscaler, made (or brought back after a rollback) and kept to the
    // spec. Old colours keep theirs until they are retired.
    if let Some(auto) = &rd.spec.autoscaler
        && !ctx.dry_run
        && (owned
            .iter()
            .any(|d| d.labels().get(COLOUR_LABEL) == Some(&desired))
            || decision
                .actions
                .iter()
                .any(|a| matches!(a, Action::Create { colour, .. } if *colour == desired)))
        && let Err(e) = ensure_autoscaler(rd, &ns, &name, &desired, auto, ctx).await
    {
        fail(ctx, "autoscaler", &e);
        problems.push(e.to_string());
    }

    // The status: the decision's colours, with the Deployment's numbers.
    let observed: BTreeMap<&str, &Colour> = input
        .colours
        .iter()
        .map(|c| (c.colour.as_str(), c))
        .collect();
    let created: BTreeMap<String, String> = owned
        .iter()
        .filter_map(|d| {
            Some((
                d.labels().get(COLOUR_LABEL)?.clone(),
                d.creation_timestamp()?.0.to_string(),
            ))
        })
        .collect();
    let deleted: Vec<&str> = decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { colour } => Some(colour.as_str()),
            _ => None,
        })
        .collect();
    let mut shown = Vec::new();
    let mut rows = Vec::new();
    for st in &decision.colours {
        if deleted.contains(&st.colour.as_str()) {
            continue;
        }
        let obs = observed.get(st.colour.as_str());
        let work = obs.and_then(|o| o.work.count());
        if obs.is_some() {
            shown.push((st.colour.clone(), work));
        }
        rows.push(ColourStatus {
            colour: st.colour.clone(),
            deployment: colour::deployment_name(&name, &st.colour),
            phase: st.phase.as_str().to_owned(),
            message: st.message.clone(),
            replicas: obs.map_or(input.settings.replicas, |o| o.replicas),
            ready_replicas: obs.map_or(0, |o| o.ready),
            in_flight: work.and_then(|n| i64::try_from(n).ok()),
            created_at: created.get(&st.colour).cloned(),
            superseded_at: st.superseded_at.map(to_rfc3339),
            idle_since: st.idle_since.map(to_rfc3339),
            retiring: st.retiring.map(|r| r.as_str().to_owned()),
        });
    }
    ctx.metrics.rainbow(&ns, &name, &shown);
    let status = RainbowStatus {
        observed_generation: rd.meta().generation,
        desired: Some(desired),
        serving: decision.serving.clone(),
        alive: i32::try_from(rows.len()).unwrap_or(i32::MAX),
        colours: rows,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    };
    if rd.status.as_ref() != Some(&status) && !ctx.dry_run {
        let api: Api<RainbowDeployment> = Api::namespaced(ctx.client.clone(), &ns);
        // A merge patch keeps a field it does not name: a field now absent (a problem that
        // went away) is sent as null, which removes it.
        let mut body = serde_json::to_value(&status).unwrap_or_default();
        if let Some(o) = body.as_object_mut() {
            for field in ["problem", "serving", "desired", "observedGeneration"] {
                o.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": body })),
            )
            .await
            .op(Op::new("patch", "rainbowdeployments/status", &ns).named(&name))
        {
            fail(ctx, "write_status", &e);
        }
    }
    Ok(())
}

fn autoscaler_api(ns: &str, auto: &Autoscaler, ctx: &Ctx) -> (Api<DynamicObject>, &'static str) {
    let (group, version, kind, plural) = auto.kind.resource();
    let ar = ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: format!("{group}/{version}"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    };
    let rbac = match auto.kind {
        AutoscalerKind::HorizontalPodAutoscaler => "horizontalpodautoscalers.autoscaling",
        AutoscalerKind::ScaledObject => "scaledobjects.keda.sh",
    };
    (Api::namespaced_with(ctx.client.clone(), ns, &ar), rbac)
}

/// The autoscaler spec for one colour: `$(COLOUR)` and `$(DEPLOYMENT)` in any string of it
/// become the colour and its Deployment's name, so that a trigger's query can select the
/// colour's own pods (`pod=~"$(DEPLOYMENT)-.*"`).
pub fn per_colour(spec: &serde_json::Value, colour: &str, deployment: &str) -> serde_json::Value {
    use serde_json::Value;
    match spec {
        Value::String(s) => Value::String(
            s.replace("$(COLOUR)", colour)
                .replace("$(DEPLOYMENT)", deployment),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| per_colour(v, colour, deployment))
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), per_colour(v, colour, deployment)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: what `to` changes or adds, and
/// null for each field `to` no longer has, at any depth (arrays are replaced whole).
pub fn merge_patch(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in b {
                match a.get(k) {
                    Some(old) if old == v => {}
                    Some(old) => {
                        out.insert(k.clone(), merge_patch(old, v));
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

/// Creates the colour's autoscaler, or brings its spec to the RainbowDeployment's.
async fn ensure_autoscaler(
    rd: &RainbowDeployment,
    ns: &str,
    name: &str,
    colour: &str,
    auto: &Autoscaler,
    ctx: &Ctx,
) -> Result<(), KubeError> {
    let (api, rbac) = autoscaler_api(ns, auto, ctx);
    let dname = colour::deployment_name(name, colour);
    let mut spec = per_colour(&auto.spec, colour, &dname);
    if let Some(o) = spec.as_object_mut() {
        o.insert(
            "scaleTargetRef".to_owned(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": dname}),
        );
    }
    let existing = api
        .get_opt(&dname)
        .await
        .op(Op::new("get", rbac, ns).named(&dname))?;
    match existing {
        Some(o) if o.data.get("spec") == Some(&spec) => Ok(()),
        Some(o) => api
            .patch(
                &dname,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "spec": merge_patch(o.data.get("spec").unwrap_or(&serde_json::Value::Null), &spec)
                })),
            )
            .await
            .op(Op::new("patch", rbac, ns).named(&dname))
            .map(|_| ()),
        None => {
            let (group, version, kind, _) = auto.kind.resource();
            let owner = rd.controller_owner_ref(&());
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": format!("{group}/{version}"),
                "kind": kind,
                "metadata": {
                    "name": dname,
                    "namespace": ns,
                    "labels": {RAINBOW_LABEL: name, COLOUR_LABEL: colour},
                    "ownerReferences": owner.map(|o| vec![o]).unwrap_or_default(),
                },
                "spec": spec,
            }))
            .map_err(|e| {
                KubeError::new(
                    Op::new("create", rbac, ns).named(&dname),
                    kube::Error::SerdeError(e),
                )
            })?;
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    post_event(
                        rd,
                        ns,
                        name,
                        "AutoscalerCreated",
                        format!("created {kind} {dname} for colour {colour}"),
                        false,
                        ctx,
                    )
                    .await;
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(KubeError::new(Op::new("create", rbac, ns).named(&dname), e)),
            }
        }
    }
}

async fn delete_autoscaler(
    ns: &str,
    name: &str,
    colour: &str,
    auto: &Autoscaler,
    ctx: &Ctx,
) -> Result<(), KubeError> {
    let (api, rbac) = autoscaler_api(ns, auto, ctx);
    let dname = colour::deployment_name(name, colour);
    match api.delete(&dname, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(KubeError::new(Op::new("delete", rbac, ns).named(&dname), e)),
    }
}

/// The annotation on a colour's Deployment that records its retirement (`quiet`, `maxAge`).
pub const RETIRED_ANNOTATION: &str = "lameduck.io/retired";

fn memory_reason(rd: &RainbowDeployment, colour: &str) -> Option<&'static str> {
    rd.status
        .as_ref()?
        .colours
        .iter()
        .find(|c| c.colour == colour)?
        .retiring
        .as_deref()
        .and_then(Reason::parse)
        .map(Reason::as_str)
}

fn fail(ctx: &Ctx, operation: &'static str, e: &KubeError) {
    ctx.metrics.kube_error(operation);
    if ctx.logged.first(operation) {
        tracing::warn!(error = %e, "{operation} failed; retrying on the next reconcile (logged once)");
    } else {
        tracing::debug!(error = %e, "{operation} failed");
    }
}

/// Performs one action, with its Event.
async fn act(
    rd: &RainbowDeployment,
    ns: &str,
    name: &str,
    action: &Action,
    ctx: &Ctx,
) -> Result<(), KubeError> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    // The retirement is written on the Deployment in the same patch that scales it, so the
    // next reconcile sees it even before the status written after this one.
    let scale = |colour: &str, replicas: i32, retired: Option<&'static str>| {
        let deployments = deployments.clone();
        let dname = colour::deployment_name(name, colour);
        async move {
            deployments
                .patch(
                    &dname,
                    &PatchParams::default(),
                    &Patch::Merge(json!({
                        "metadata": {"annotations": {RETIRED_ANNOTATION: retired}},
                        "spec": {"replicas": replicas},
                    })),
                )
                .await
                .op(Op::new("patch", "deployments.apps", ns).named(&dname))
                .map(|_| ())
        }
    };
    let (reason, message, operation) = match action {
        Action::Create {
            colour: c,
            replicas,
        } => (
            "ColourCreated",
            format!(
                "created Deployment {} for the new template ({replicas} replicas)",
                colour::deployment_name(name, c)
            ),
            "create_deployment",
        ),
        Action::Scale {
            colour: c,
            replicas,
        } => (
            "ColourScaled",
            format!("scaled colour {c} to {replicas} replicas"),
            "scale_deployment",
        ),
        Action::Route { colour: c, from } => (
            "ServicesMoved",
            match from {
                Some(f) => {
                    format!("Services now select colour {c} (was {f}); {f} keeps what it holds")
                }
                None => format!("Services now select colour {c}"),
            },
            "route_service",
        ),
        Action::Retire {
            colour: c,
            reason,
            in_flight,
        } => (
            "ColourRetired",
            match reason {
                Reason::Quiet => {
                    format!("colour {c} had nothing in flight for the quiet period: scaled to zero")
                }
                Reason::MaxAge => format!(
                    "colour {c} reached maxAge with {} in flight: scaled to zero",
                    in_flight.map_or_else(|| "unknown work".to_owned(), |n| n.to_string())
                ),
            },
            "scale_deployment",
        ),
        Action::Delete { colour: c } => (
            "ColourDeleted",
            format!("colour {c} has no pods left: Deployment deleted"),
            "delete_deployment",
        ),
    };
    tracing::info!(rainbow = %format!("{ns}/{name}"), dry_run = ctx.dry_run, "{message}");
    if ctx.dry_run {
        return Ok(());
    }
    let result = match action {
        Action::Create {
            colour: c,
            replicas,
        } => {
            let owner = rd.controller_owner_ref(&()).ok_or_else(|| {
                KubeError::new(
                    Op::new("create", "deployments.apps", ns),
                    kube::Error::Service("the RainbowDeployment has no uid yet".into()),
                )
            });
            match owner {
                Err(e) => Err(e),
                Ok(owner) => {
                    let d = colour::deployment(&rd.spec.template, name, ns, owner, c, *replicas);
                    match deployments.create(&PostParams::default(), &d).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                        Err(e) => Err(KubeError::new(
                            Op::new("create", "deployments.apps", ns)
                                .named(&colour::deployment_name(name, c)),
                            e,
                        )),
                    }
                }
            }
        }
        Action::Scale {
            colour: c,
            replicas,
        } => {
            // The desired colour scaled (back) up is no longer retired; a retired one stays so.
            let retired = (c != &colour::of(&rd.spec.template))
                .then(|| memory_reason(rd, c))
                .flatten();
            scale(c, *replicas, retired).await
        }
        Action::Retire {
            colour: c, reason, ..
        } => {
            // Its autoscaler first, or it would scale the colour back up.
            match &rd.spec.autoscaler {
                Some(auto) => match delete_autoscaler(ns, name, c, auto, ctx).await {
                    Ok(()) => scale(c, 0, Some(reason.as_str())).await,
                    Err(e) => Err(e),
                },
                None => scale(c, 0, Some(reason.as_str())).await,
            }
        }
        Action::Route { colour: c, .. } => {
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
            let mut r = Ok(());
            for svc in &rd.spec.services {
                if let Err(e) = services
                    .patch(
                        svc,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"selector": {COLOUR_LABEL: c}}})),
                    )
                    .await
                    .op(Op::new("patch", "services", ns).named(svc))
                {
                    r = Err(e);
                }
            }
            r
        }
        Action::Delete { colour: c } => {
            let dname = colour::deployment_name(name, c);
            match deployments
                .delete(&dname, &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(KubeError::new(
                    Op::new("delete", "deployments.apps", ns).named(&dname),
                    e,
                )),
            }
        }
    };
    match &result {
        Ok(()) => {
            match action {
                Action::Retire { reason, .. } => ctx.metrics.retired(match reason {
                    Reason::Quiet => "quiet",
                    Reason::MaxAge => "max_age",
                }),
                Action::Route { .. } => ctx.metrics.routed(),
                Action::Delete { .. } => ctx.metrics.deleted(),
                _ => {}
            }
            post_event(rd, ns, name, reason, message, false, ctx).await;
        }
        Err(e) => {
            fail(ctx, operation, e);
            // Once per problem, not once per poll: the last status already says it when the
            // same call failed the same way last time.
            let text = e.to_string();
            let known = rd
                .status
                .as_ref()
                .and_then(|s| s.problem.as_deref())
                .is_some_and(|p| p.contains(&text));
            if !known {
                post_event(rd, ns, name, "RainbowFailed", text, true, ctx).await;
            }
        }
    }
    result
}

async fn post_event(
    rd: &RainbowDeployment,
    ns: &str,
    name: &str,
    reason: &str,
    message: String,
    warning: bool,
    ctx: &Ctx,
) {
    let subject = Subject::object(
        "lameduck.io/v1alpha1",
        "RainbowDeployment",
        ns,
        name,
        rd.meta().uid.clone(),
    );
    let ev = event(
        &subject,
        reason,
        message,
        warning,
        "lameduck-rainbow",
        reason,
    );
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), ns);
    if let Err(e) = events
        .create(&PostParams::default(), &ev)
        .await
        .op(Op::new("create", "events", ns))
    {
        fail(ctx, "post_event", &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_patch_removes_what_the_new_spec_dropped() {
        let from = json!({"minReplicas": 1, "maxReplicas": 3, "behavior": {"scaleDown": {"policies": [1]}, "scaleUp": {"x": 1}}, "metrics": [1, 2]});
        let to = json!({"minReplicas": 1, "maxReplicas": 5, "behavior": {"scaleUp": {"x": 1}}, "metrics": [2]});
        let patch = merge_patch(&from, &to);
        assert_eq!(
            patch,
            json!({"maxReplicas": 5, "behavior": {"scaleDown": null}, "metrics": [2]})
        );
        assert_eq!(merge_patch(&to, &to), json!({}));
    }

    #[test]
    fn per_colour_names_the_colours_own_objects() {
        let spec = json!({"triggers": [{"metadata": {"query": "x{pod=~\"$(DEPLOYMENT)-.*\", c=\"$(COLOUR)\"}"}}], "n": 1});
        assert_eq!(
            per_colour(&spec, "abc", "llm-abc"),
            json!({"triggers": [{"metadata": {"query": "x{pod=~\"llm-abc-.*\", c=\"abc\"}"}}], "n": 1})
        );
    }
}
