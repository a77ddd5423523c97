//! Object operations shared by the HTTP handlers and the `TestApi` methods: create, update,
//! patch and the graceful deletion of pods.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::meta::{self, obj_mut};
use crate::patch;
use crate::resources::{NAMESPACE, NODE, POD, ResId, Sub, res};
use crate::store::{Shared, Store};

/// Default `terminationGracePeriodSeconds`, as the apiserver's defaulting sets it.
const DEFAULT_GRACE: i64 = 30;

/// Fills in what a create sets: kind, namespace, name from `generateName`, uid, timestamps,
/// generation. `ns` is the request's namespace (or "default" for the test helpers).
pub(crate) fn prepare_new(
    st: &mut Store,
    id: ResId,
    obj: &mut Value,
    ns: Option<&str>,
) -> Result<(), ApiError> {
    let r = res(id);
    let Value::Object(top) = obj else {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    };
    let api_version = r.api_version();
    match top.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
        _ => {}
    }
    match top.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != r.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )));
        }
        _ => {}
    }
    top.insert("apiVersion".into(), Value::from(api_version));
    top.insert("kind".into(), Value::from(r.kind));
    let md = obj_mut(obj, &["metadata"]);
    if r.namespaced {
        let body_ns = md
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let want = ns.unwrap_or("default");
        if body_ns.is_empty() {
            md.insert("namespace".into(), Value::from(want));
        } else if ns.is_some() && body_ns != want {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    } else {
        md.remove("namespace");
    }
    let name = md
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if name.is_empty() {
        let Some(prefix) = md
            .get("generateName")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Err(ApiError::invalid(format!(
                "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                r.kind
            )));
        };
        let ns_now = md
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut candidate = format!("{prefix}{}", st.rng.suffix());
        while st.get(id, &ns_now, &candidate).is_some() {
            candidate = format!("{prefix}{}", st.rng.suffix());
        }
        let md = obj_mut(obj, &["metadata"]);
        md.insert("name".into(), Value::from(candidate));
    }
    let uid = st.rng.uid();
    let md = obj_mut(obj, &["metadata"]);
    if md
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        md.insert("uid".into(), Value::from(uid));
    }
    if md.get("creationTimestamp").is_none_or(Value::is_null) {
        md.insert("creationTimestamp".into(), Value::from(meta::now_rfc3339()));
    }
    if md.get("generation").is_none_or(Value::is_null) {
        md.insert("generation".into(), Value::from(1));
    }
    md.remove("resourceVersion");
    if id == POD
        && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
        && spec
            .get("terminationGracePeriodSeconds")
            .is_none_or(Value::is_null)
    {
        spec.insert(
            "terminationGracePeriodSeconds".into(),
            Value::from(DEFAULT_GRACE),
        );
    }
    Ok(())
}

/// What a create through the API does to `.status` (the test helper keeps it): kinds with a
/// status subresource start with an empty status, except nodes; pods start Pending and
/// namespaces Active.
pub(crate) fn reset_status_for_api_create(id: ResId, obj: &mut Value) {
    let r = res(id);
    if !r.has(Sub::Status) || id == NODE {
        return;
    }
    let Some(top) = obj.as_object_mut() else {
        return;
    };
    match id {
        POD => top.insert("status".into(), json!({"phase": "Pending"})),
        NAMESPACE => top.insert("status".into(), json!({"phase": "Active"})),
        _ => top.remove("status"),
    };
}

/// Prepares and stores a new object. `dry_run` answers without storing.
pub(crate) fn create(
    st: &mut Store,
    id: ResId,
    mut obj: Value,
    ns: Option<&str>,
    dry_run: bool,
) -> Result<Value, ApiError> {
    prepare_new(st, id, &mut obj, ns)?;
    let (ns, name) = (
        meta::namespace(&obj).to_owned(),
        meta::name(&obj).to_owned(),
    );
    if st.get(id, &ns, &name).is_some() {
        return Err(ApiError::already_exists(id, &name));
    }
    if dry_run {
        return Ok(obj);
    }
    Ok(st.insert(id, obj))
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// The main resource: everything but `.status` for kinds with a status subresource.
    Main,
    /// The status subresource: only `.status`.
    Status,
}

/// A 409 when `body_rv` is set and is not the stored object's resourceVersion.
pub(crate) fn check_rv(id: ResId, old: &Value, body_rv: Option<&str>) -> Result<(), ApiError> {
    match body_rv {
        Some(rv) if !rv.is_empty() && rv != meta::resource_version(old) => {
            Err(ApiError::conflict(id, meta::name(old)))
        }
        _ => Ok(()),
    }
}

/// The object a write of `new` over `old` stores: identity and bookkeeping from `old`, the
/// part the write may change from `new`.
pub(crate) fn merge_write(id: ResId, old: &Value, new: Value, part: Part) -> Value {
    if part == Part::Status {
        let mut out = old.clone();
        if let Some(top) = out.as_object_mut() {
            match new.get("status") {
                Some(s) if !s.is_null() => top.insert("status".into(), s.clone()),
                _ => top.remove("status"),
            };
        }
        return out;
    }
    let r = res(id);
    let mut out = match new {
        Value::Object(m) => Value::Object(m),
        _ => Value::Object(Map::new()),
    };
    if let Some(top) = out.as_object_mut() {
        top.insert("apiVersion".into(), Value::from(r.api_version()));
        top.insert("kind".into(), Value::from(r.kind));
        if r.has(Sub::Status) {
            match old.get("status") {
                Some(s) => top.insert("status".into(), s.clone()),
                None => top.remove("status"),
            };
        }
    }
    let spec_changed = {
        let strip = |v: &Value| -> Map<String, Value> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| {
                            !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        strip(old) != strip(&out)
    };
    let generation = meta::i64_at(old, &["metadata", "generation"]).unwrap_or(1);
    let md = obj_mut(&mut out, &["metadata"]);
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        match old.get("metadata").and_then(|m| m.get(key)) {
            Some(v) => md.insert(key.into(), v.clone()),
            None => md.remove(key),
        };
    }
    md.insert(
        "generation".into(),
        Value::from(if spec_changed {
            generation + 1
        } else {
            generation
        }),
    );
    out
}

/// Stores `new` over `old` unless nothing changed (a no-op write keeps the resourceVersion, as
/// the apiserver does).
pub(crate) fn store_write(
    st: &mut Store,
    id: ResId,
    old: &Value,
    new: Value,
    dry_run: bool,
) -> Value {
    if &new == old || dry_run {
        return new;
    }
    st.update(id, new)
}

/// A PUT: replace the object (or its status).
pub(crate) fn replace(
    st: &mut Store,
    id: ResId,
    ns: &str,
    name: &str,
    body: Value,
    part: Part,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    let body_name = meta::name(&body);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let body_ns = meta::namespace(&body);
    if res(id).namespaced && !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let old = st
        .get(id, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(id, name))?;
    check_rv(
        id,
        &old,
        meta::str_at(&body, &["metadata", "resourceVersion"]),
    )?;
    let new = merge_write(id, &old, body, part);
    Ok(store_write(st, id, &old, new, dry_run))
}

/// The patch formats, by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub(crate) fn from_content_type(ct: &str) -> Option<PatchKind> {
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Some(match base.as_str() {
            "application/json-patch+json" => PatchKind::Json,
            "application/merge-patch+json" => PatchKind::Merge,
            "application/strategic-merge-patch+json" => PatchKind::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchKind::Apply,
            _ => return None,
        })
    }
}

/// Applies a patch document to a copy of `target`.
pub(crate) fn apply_patch(kind: PatchKind, target: &Value, doc: &Value) -> Result<Value, ApiError> {
    let mut out = target.clone();
    match kind {
        PatchKind::Json => {
            if !doc.is_array() {
                return Err(ApiError::bad_request(
                    "a JSON patch must be a JSON array of operations",
                ));
            }
            patch::json_patch(&mut out, doc).map_err(|e| {
                ApiError::invalid(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        PatchKind::Merge => {
            if !doc.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            patch::merge_patch(&mut out, doc);
        }
        PatchKind::Strategic | PatchKind::Apply => {
            if !doc.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge(&mut out, doc);
        }
    }
    Ok(out)
}

/// A PATCH of an existing object (or its status). The resourceVersion in the patched result
/// must still be the stored one (a patch that sets it asks for that precondition).
#[allow(clippy::too_many_arguments)]
pub(crate) fn patch(
    st: &mut Store,
    id: ResId,
    ns: &str,
    name: &str,
    kind: PatchKind,
    doc: &Value,
    part: Part,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let old = st
        .get(id, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(id, name))?;
    let patched = apply_patch(kind, &old, doc)?;
    if kind == PatchKind::Json {
        check_rv(
            id,
            &old,
            meta::str_at(&patched, &["metadata", "resourceVersion"]),
        )?;
    } else {
        check_rv(
            id,
            &old,
            meta::str_at(doc, &["metadata", "resourceVersion"]),
        )?;
    }
    if patched.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    let new = merge_write(id, &old, patched, part);
    Ok(store_write(st, id, &old, new, dry_run))
}

/// DeleteOptions, from a body and the query.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeleteOptions {
    pub(crate) grace: Option<i64>,
    pub(crate) uid: Option<String>,
    pub(crate) rv: Option<String>,
    pub(crate) dry_run: bool,
}

impl DeleteOptions {
    pub(crate) fn from_json(v: &Value) -> Result<DeleteOptions, ApiError> {
        if v.is_null() {
            return Ok(DeleteOptions::default());
        }
        let Value::Object(m) = v else {
            return Err(ApiError::bad_request("DeleteOptions must be a JSON object"));
        };
        let grace = match m.get("gracePeriodSeconds") {
            None | Some(Value::Null) => None,
            Some(g) => Some(g.as_i64().ok_or_else(|| {
                ApiError::bad_request("DeleteOptions.gracePeriodSeconds must be an integer")
            })?),
        };
        let pre = m.get("preconditions");
        let get = |k: &str| {
            pre.and_then(|p| p.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let dry_run = m
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
        Ok(DeleteOptions {
            grace,
            uid: get("uid"),
            rv: get("resourceVersion"),
            dry_run,
        })
    }
}

/// The outcome of a delete.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// Removed for good (the object as last stored).
    Gone(Value),
    /// A pod now (or already) terminating, still stored.
    Terminating(Value),
}

/// Deletes an object. Pods are deleted gracefully like the apiserver does: unscheduled and
/// finished pods at once, others get `deletionTimestamp` = now + grace and stay until the grace
/// period ends (the kubelet's part), a delete with grace 0 arrives, or a shorter grace ends.
pub(crate) fn delete(
    st: &mut Store,
    shared: &Arc<Shared>,
    id: ResId,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let obj = st
        .get(id, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(id, name))?;
    if let Some(uid) = &opts.uid
        && uid != meta::uid(&obj)
    {
        return Err(ApiError::precondition(
            id,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(&obj)
            ),
        ));
    }
    if let Some(rv) = &opts.rv
        && rv != meta::resource_version(&obj)
    {
        return Err(ApiError::precondition(
            id,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta::resource_version(&obj)
            ),
        ));
    }
    if id != POD {
        if opts.dry_run {
            return Ok(Deleted::Gone(obj));
        }
        return st
            .remove(id, ns, name)
            .map(Deleted::Gone)
            .ok_or_else(|| ApiError::not_found(id, name));
    }
    let mut grace = opts
        .grace
        .or_else(|| meta::i64_at(&obj, &["spec", "terminationGracePeriodSeconds"]))
        .unwrap_or(DEFAULT_GRACE);
    let unscheduled = meta::str_at(&obj, &["spec", "nodeName"]).is_none_or(str::is_empty);
    let finished = matches!(
        meta::str_at(&obj, &["status", "phase"]),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        grace = 0;
    }
    if grace < 0 {
        grace = 1;
    }
    let current = meta::i64_at(&obj, &["metadata", "deletionGracePeriodSeconds"]);
    let terminating =
        meta::at(&obj, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
    if terminating && grace != 0 && (opts.grace.is_none() || current.is_some_and(|c| grace >= c)) {
        // Already terminating and not asked to hurry: answer with the object as it is.
        return Ok(Deleted::Terminating(obj));
    }
    if grace == 0 {
        if opts.dry_run {
            return Ok(Deleted::Gone(obj));
        }
        return st
            .remove(id, ns, name)
            .map(Deleted::Gone)
            .ok_or_else(|| ApiError::not_found(id, name));
    }
    let mut new = obj.clone();
    let md = obj_mut(&mut new, &["metadata"]);
    md.insert(
        "deletionTimestamp".into(),
        Value::from(meta::rfc3339(meta::unix_now() + grace)),
    );
    md.insert("deletionGracePeriodSeconds".into(), Value::from(grace));
    if opts.dry_run {
        return Ok(Deleted::Terminating(new));
    }
    let stored = st.update(id, new);
    let uid = meta::uid(&stored).to_owned();
    let deadline = Instant::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(0));
    st.deadlines.insert(uid.clone(), deadline);
    spawn_reaper(shared, ns.to_owned(), name.to_owned(), uid, deadline);
    Ok(Deleted::Terminating(stored))
}

/// The kubelet's final step: remove a terminating pod when its grace period has passed.
fn spawn_reaper(shared: &Arc<Shared>, ns: String, name: String, uid: String, deadline: Instant) {
    let weak = Arc::downgrade(shared);
    let mut shutdown = shared.shutdown.subscribe();
    shared.handle.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = crate::store::stopped(&mut shutdown) => return,
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        shared.mutate(|st| {
            let due = st.deadlines.get(&uid).is_some_and(|d| *d <= Instant::now());
            let same = st.get(POD, &ns, &name).is_some_and(|p| meta::uid(p) == uid);
            if due && same {
                tracing::debug!(pod = %name, namespace = %ns, "grace period over, removing pod");
                st.remove(POD, &ns, &name);
            }
        });
    });
}

/// The autoscaling/v1 Scale view of a workload.
pub(crate) fn scale_of(obj: &Value) -> Value {
    let selector = meta::at(obj, &["spec", "selector"])
        .and_then(|s| crate::selector::LabelSelector::from_object(s).ok())
        .map(|s| s.render())
        .unwrap_or_default();
    let md = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_md = Map::new();
    for key in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = md.get(key) {
            scale_md.insert(key.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_md,
        "spec": {"replicas": meta::i64_at(obj, &["spec", "replicas"]).unwrap_or(1)},
        "status": {
            "replicas": meta::i64_at(obj, &["status", "replicas"]).unwrap_or(0),
            "selector": selector,
        },
    })
}
