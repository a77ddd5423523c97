//! The ReplicaSet controller: deletes surplus pods in the real controller's order, creates
//! missing ones from the template, and keeps the status counts.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::meta::{self, at};
use crate::ops::{self, DeleteOptions};
use crate::pods;
use crate::resources::{POD, REPLICA_SET};
use crate::selector::LabelSelector;
use crate::store::{Shared, Store};

const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn phase_rank(pod: &Value) -> u8 {
    match pods::phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Value) -> i64 {
    meta::annotation(pod, DELETION_COST)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn ready_since(pod: &Value) -> Option<&str> {
    at(pod, &["status", "conditions"])?
        .as_array()?
        .iter()
        .find(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })?
        .get("lastTransitionTime")?
        .as_str()
}

fn restarts(pod: &Value) -> i64 {
    at(pod, &["status", "containerStatuses"])
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum()
        })
        .unwrap_or(0)
}

/// `Less` means "delete first": unscheduled before scheduled, Pending before Unknown before
/// Running, not ready before ready, lower deletion cost first, more replicas on the same node
/// first, ready for less time first, more restarts first, newer before older.
fn delete_order(st: &Store, colocated: &HashMap<String, usize>, a: &Value, b: &Value) -> Ordering {
    let node_rank = |p: &Value| u8::from(pods::node_name(p).is_some());
    let ready_rank = |p: &Value| u8::from(pods::is_ready(p));
    let co = |p: &Value| {
        pods::node_name(p)
            .and_then(|n| colocated.get(n))
            .copied()
            .unwrap_or(0)
    };
    node_rank(a)
        .cmp(&node_rank(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| ready_rank(a).cmp(&ready_rank(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| co(b).cmp(&co(a)))
        .then_with(|| match (ready_since(a), ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(x),
            _ => Ordering::Equal,
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Value| {
                meta::str_at(p, &["metadata", "creationTimestamp"])
                    .unwrap_or("")
                    .to_owned()
            };
            created(b).cmp(&created(a))
        })
        .then_with(|| {
            st.creation_seq(meta::uid(b))
                .cmp(&st.creation_seq(meta::uid(a)))
        })
}

pub(crate) fn sync(st: &mut Store, shared: &Arc<Shared>) {
    let sets = st.list_cloned(REPLICA_SET, None);
    for rs in sets {
        let ns = meta::namespace(&rs).to_owned();
        let name = meta::name(&rs).to_owned();
        let uid = meta::uid(&rs).to_owned();
        let Some(selector) =
            at(&rs, &["spec", "selector"]).and_then(|s| LabelSelector::from_object(s).ok())
        else {
            continue;
        };
        if selector.is_empty() {
            continue;
        }
        let owned = |st: &Store| -> Vec<Value> {
            st.list(POD, Some(&ns))
                .filter(|p| {
                    meta::controller_uid(p) == Some(uid.as_str()) && selector.matches_object(p)
                })
                .cloned()
                .collect()
        };
        let active = |pods_: &[Value]| -> Vec<Value> {
            pods_
                .iter()
                .filter(|p| !pods::is_terminating(p) && !pods::is_finished(p))
                .cloned()
                .collect()
        };
        let want =
            usize::try_from(meta::i64_at(&rs, &["spec", "replicas"]).unwrap_or(1)).unwrap_or(0);
        let terminating_rs =
            at(&rs, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null());
        let mut current = active(&owned(st));
        if !terminating_rs && current.len() > want {
            let mut colocated: HashMap<String, usize> = HashMap::new();
            for p in &current {
                if let Some(n) = pods::node_name(p) {
                    *colocated.entry(n.to_owned()).or_default() += 1;
                }
            }
            current.sort_by(|a, b| delete_order(st, &colocated, a, b));
            let surplus = current.len() - want;
            for pod in current.iter().take(surplus) {
                let pod_name = meta::name(pod);
                tracing::debug!(replicaset = %name, pod = %pod_name, "scaling down");
                if let Err(e) =
                    ops::delete(st, shared, POD, &ns, pod_name, &DeleteOptions::default())
                {
                    tracing::warn!(replicaset = %name, pod = %pod_name, error = %e, "scale-down delete failed");
                }
            }
        } else if !terminating_rs
            && current.len() < want
            && let Some(template) = at(&rs, &["spec", "template"])
            // The apiserver refuses a template its selector does not match; creating from one
            // would never converge.
            && selector.matches(at(template, &["metadata", "labels"]).and_then(Value::as_object))
        {
            for _ in current.len()..want {
                let mut md = json!({
                    "generateName": format!("{name}-"),
                    "namespace": ns,
                    "ownerReferences": [{
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": name,
                        "uid": uid,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                });
                for key in ["labels", "annotations"] {
                    if let Some(v) = at(template, &["metadata", key]) {
                        md[key] = v.clone();
                    }
                }
                let pod = json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": md,
                    "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
                    "status": {"phase": "Pending"},
                });
                if let Err(e) = ops::create(st, POD, pod, Some(&ns), false) {
                    tracing::warn!(replicaset = %name, error = %e, "scale-up create failed");
                }
            }
        }
        // Status: counts of the pods as they are now.
        let now_owned = owned(st);
        let now_active = active(&now_owned);
        let ready = now_active.iter().filter(|p| pods::is_ready(p)).count();
        let labeled = now_active.len();
        let status = json!({
            "replicas": now_active.len(),
            "fullyLabeledReplicas": labeled,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": meta::i64_at(&rs, &["metadata", "generation"]).unwrap_or(1),
        });
        let Some(stored) = st.get(REPLICA_SET, &ns, &name).cloned() else {
            continue;
        };
        let mut new = stored.clone();
        let st_obj = meta::obj_mut(&mut new, &["status"]);
        if let Some(fields) = status.as_object() {
            for (k, v) in fields {
                st_obj.insert(k.clone(), v.clone());
            }
        }
        if new != stored {
            st.update(REPLICA_SET, new);
        }
    }
}
