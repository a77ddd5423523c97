//! The eviction subresource: a delete that asks the pod's PodDisruptionBudget first.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::controllers::disruption;
use crate::error::ApiError;
use crate::meta;
use crate::ops::{self, DeleteOptions};
use crate::pods;
use crate::resources::{PDB, POD};
use crate::store::{Shared, Store};

const DENIED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// The answer to an allowed eviction: 201 with this body (the create handler fills in the
/// code of a Status that has none).
fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

fn too_many_requests(cause: String) -> ApiError {
    ApiError::new(429, "TooManyRequests", DENIED)
        .with_details(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}))
}

/// Unknown top-level fields of the Eviction body, which the apiserver drops with a warning.
pub(crate) fn unknown_fields(body: &Value) -> Vec<String> {
    body.as_object()
        .map(|m| {
            m.keys()
                .filter(|k| {
                    !matches!(
                        k.as_str(),
                        "apiVersion" | "kind" | "metadata" | "deleteOptions"
                    )
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Handles `POST .../pods/{name}/eviction`.
pub(crate) fn evict(
    st: &mut Store,
    shared: &Arc<Shared>,
    ns: &str,
    name: &str,
    body: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a JSON object",
        ));
    }
    let body_name = meta::name(body);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let mut opts = DeleteOptions::from_json(body.get("deleteOptions").unwrap_or(&Value::Null))?;
    opts.dry_run |= dry_run;
    let pod = st
        .get(POD, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(POD, name))?;

    // Finished, pending and terminating pods are not protected by a budget.
    if pods::is_finished(&pod) || pods::phase(&pod) == "Pending" || pods::is_terminating(&pod) {
        return delete(st, shared, &pod, &opts);
    }
    let budgets: Vec<Value> = disruption::budgets_for(st, &pod)
        .into_iter()
        .cloned()
        .collect();
    let pdb = match budgets.as_slice() {
        [] => return delete(st, shared, &pod, &opts),
        [one] => one,
        _ => {
            // The apiserver answers with a bare Status: code 500 and no reason.
            return Err(ApiError::new(
                500,
                "",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let pdb_name = meta::name(pdb);
    let generation = meta::i64_at(pdb, &["metadata", "generation"]).unwrap_or(1);
    let observed = meta::i64_at(pdb, &["status", "observedGeneration"]).unwrap_or(0);
    let allowed = meta::i64_at(pdb, &["status", "disruptionsAllowed"]).unwrap_or(0);
    let current = meta::i64_at(pdb, &["status", "currentHealthy"]).unwrap_or(0);
    let desired = meta::i64_at(pdb, &["status", "desiredHealthy"]).unwrap_or(0);
    let healthy = pods::is_ready(&pod);
    if !healthy {
        let always_allow =
            meta::str_at(pdb, &["spec", "unhealthyPodEvictionPolicy"]) == Some("AlwaysAllow");
        // An unhealthy pod does not count towards the budget: it may go when the policy says
        // so, or (IfHealthyBudget) when the budget is met without it. Nothing is decremented.
        if always_allow || (current >= desired && desired > 0) {
            return delete(st, shared, &pod, &opts);
        }
    }
    if observed < generation {
        return Err(too_many_requests(format!(
            "The disruption budget {pdb_name} is still being processed by the server."
        )));
    }
    if allowed < 0 {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "poddisruptionbudgets.policy \"{pdb_name}\" is forbidden: pdb disruptions allowed is negative"
            ),
        ));
    }
    if allowed == 0 {
        return Err(too_many_requests(format!(
            "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
        )));
    }
    if !opts.dry_run {
        let updated = disruption::record_eviction(pdb, name, &meta::now_rfc3339());
        st.update(PDB, updated);
    }
    delete(st, shared, &pod, &opts)
}

/// Marks the pod as a disruption target (unless it is already terminating) and deletes it.
fn delete(
    st: &mut Store,
    shared: &Arc<Shared>,
    pod: &Value,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let (ns, name) = (meta::namespace(pod).to_owned(), meta::name(pod).to_owned());
    if !opts.dry_run && !pods::is_terminating(pod) {
        let mut marked = pod.clone();
        let status = meta::obj_mut(&mut marked, &["status"]);
        let conds = status.entry("conditions").or_insert_with(|| json!([]));
        if let Some(list) = conds.as_array_mut() {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("DisruptionTarget"));
            list.push(json!({
                "type": "DisruptionTarget",
                "status": "True",
                "lastProbeTime": null,
                "lastTransitionTime": meta::now_rfc3339(),
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
            }));
        }
        st.update(POD, marked);
    }
    ops::delete(st, shared, POD, &ns, &name, opts)?;
    Ok(success())
}
