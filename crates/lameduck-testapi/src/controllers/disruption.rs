//! The disruption controller's arithmetic and the PodDisruptionBudget status it keeps.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::meta::{self, at};
use crate::pods;
use crate::resources::{DEPLOYMENT, PDB, POD, REPLICA_SET, STATEFUL_SET};
use crate::selector::LabelSelector;
use crate::store::Store;

/// A budget's numbers, as the controller computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) expected: i64,
    pub(crate) desired: i64,
    pub(crate) current: i64,
    pub(crate) allowed: i64,
}

enum IntOrPercent {
    Int(i64),
    Percent(i64),
}

fn int_or_percent(v: &Value) -> Option<IntOrPercent> {
    match v {
        Value::Number(n) => n.as_i64().map(IntOrPercent::Int),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p.trim().parse().ok().map(IntOrPercent::Percent),
            None => s.trim().parse().ok().map(IntOrPercent::Int),
        },
        _ => None,
    }
}

/// `percent` of `total`, rounded up (the controller's `GetScaledValueFromIntOrPercent(.., true)`).
fn scaled_up(percent: i64, total: i64) -> i64 {
    (percent * total + 99).div_euclid(100)
}

/// Whether the budget selects the pod. A null selector selects nothing, `{}` everything; a pod
/// without labels is never selected (the eviction code skips such pods).
pub(crate) fn selects(pdb: &Value, pod: &Value) -> bool {
    if meta::namespace(pdb) != meta::namespace(pod) {
        return false;
    }
    if meta::labels(pod).is_none_or(Map::is_empty) {
        return false;
    }
    let Some(sel) = at(pdb, &["spec", "selector"]).filter(|s| !s.is_null()) else {
        return false;
    };
    LabelSelector::from_object(sel).is_ok_and(|s| s.matches_object(pod))
}

/// The budgets selecting a pod.
pub(crate) fn budgets_for<'a>(st: &'a Store, pod: &'a Value) -> Vec<&'a Value> {
    st.list(PDB, Some(meta::namespace(pod)))
        .filter(|pdb| selects(pdb, pod))
        .collect()
}

/// The scale the pods' controllers ask for: each distinct controller's replicas (a ReplicaSet
/// owned by a Deployment counts with the Deployment's). Pods without a known controller count
/// one each (the real controller fails the sync instead).
fn expected_scale(st: &Store, ns: &str, matching: &[&Value]) -> i64 {
    let mut seen: HashSet<String> = HashSet::new();
    let mut total = 0;
    for pod in matching {
        let Some(owner) = controller_scale(st, ns, pod) else {
            total += 1;
            continue;
        };
        if seen.insert(owner.0) {
            total += owner.1;
        }
    }
    total
}

fn controller_scale(st: &Store, ns: &str, pod: &Value) -> Option<(String, i64)> {
    let uid = meta::controller_uid(pod)?;
    let replicas = |obj: &Value| meta::i64_at(obj, &["spec", "replicas"]).unwrap_or(1);
    for id in [REPLICA_SET, STATEFUL_SET, DEPLOYMENT] {
        if let Some(owner) = st.list(id, Some(ns)).find(|o| meta::uid(o) == uid) {
            if id == REPLICA_SET
                && let Some(dep_uid) = meta::controller_uid(owner)
                && let Some(dep) = st
                    .list(DEPLOYMENT, Some(ns))
                    .find(|d| meta::uid(d) == dep_uid)
            {
                return Some((dep_uid.to_owned(), replicas(dep)));
            }
            return Some((uid.to_owned(), replicas(owner)));
        }
    }
    None
}

/// The budget's numbers now.
pub(crate) fn compute(st: &Store, pdb: &Value) -> Budget {
    let ns = meta::namespace(pdb);
    let matching: Vec<&Value> = st.list(POD, Some(ns)).filter(|p| selects(pdb, p)).collect();
    let disrupted = at(pdb, &["status", "disruptedPods"]).and_then(Value::as_object);
    let current = i64::try_from(
        matching
            .iter()
            .filter(|p| !pods::is_terminating(p))
            .filter(|p| disrupted.is_none_or(|d| !d.contains_key(meta::name(p))))
            .filter(|p| pods::is_ready(p))
            .count(),
    )
    .unwrap_or(i64::MAX);
    let count = i64::try_from(matching.len()).unwrap_or(i64::MAX);
    let max_unavailable = at(pdb, &["spec", "maxUnavailable"]).and_then(int_or_percent);
    let min_available = at(pdb, &["spec", "minAvailable"]).and_then(int_or_percent);
    let (expected, desired) = match (max_unavailable, min_available) {
        (Some(mu), _) => {
            let expected = expected_scale(st, ns, &matching);
            let mu = match mu {
                IntOrPercent::Int(n) => n,
                IntOrPercent::Percent(p) => scaled_up(p, expected),
            };
            (expected, (expected - mu).max(0))
        }
        (None, Some(IntOrPercent::Int(n))) => (count, n),
        (None, Some(IntOrPercent::Percent(p))) => {
            let expected = expected_scale(st, ns, &matching);
            (expected, scaled_up(p, expected))
        }
        (None, None) => (count, 0),
    };
    Budget {
        expected,
        desired,
        current,
        allowed: (current - desired).max(0),
    }
}

/// The status a budget should have, keeping transition times that did not move.
fn desired_status(st: &Store, pdb: &Value, now: &str) -> Value {
    let b = compute(st, pdb);
    let generation = meta::i64_at(pdb, &["metadata", "generation"]).unwrap_or(1);
    let allowed = b.allowed > 0;
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let old_cond = at(pdb, &["status", "conditions"])
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("DisruptionAllowed"))
        });
    let since = match old_cond {
        Some(c) if c.get("status").and_then(Value::as_str) == Some(status) => c
            .get("lastTransitionTime")
            .and_then(Value::as_str)
            .unwrap_or(now)
            .to_owned(),
        _ => now.to_owned(),
    };
    let mut out = json!({
        "observedGeneration": generation,
        "disruptionsAllowed": b.allowed,
        "currentHealthy": b.current,
        "desiredHealthy": b.desired,
        "expectedPods": b.expected,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": status,
            "reason": reason,
            "message": "",
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }],
    });
    // Pods the eviction recorded stay listed until they are terminating or gone.
    if let Some(d) = at(pdb, &["status", "disruptedPods"]).and_then(Value::as_object) {
        let ns = meta::namespace(pdb);
        let kept: Map<String, Value> = d
            .iter()
            .filter(|(name, _)| {
                st.get(POD, ns, name)
                    .is_some_and(|p| !pods::is_terminating(p))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            out["disruptedPods"] = Value::Object(kept);
        }
    }
    out
}

/// Brings every budget's status up to date, writing only those that changed.
pub(crate) fn sync(st: &mut Store) {
    let now = meta::now_rfc3339();
    let mut changed = Vec::new();
    for pdb in st.list(PDB, None) {
        let mut status = desired_status(st, pdb, &now);
        if pdb.get("status").is_some_and(|s| same_status(s, &status)) {
            continue;
        }
        let mut new = pdb.clone();
        if let Some(top) = new.as_object_mut() {
            top.insert("status".into(), status.take());
        }
        changed.push(new);
    }
    for pdb in changed {
        st.update(PDB, pdb);
    }
}

fn same_status(old: &Value, new: &Value) -> bool {
    old == new
}

/// The eviction's decrement: one fewer disruption allowed, the pod recorded as disrupted.
pub(crate) fn record_eviction(pdb: &Value, pod_name: &str, now: &str) -> Value {
    let mut new = pdb.clone();
    let status = meta::obj_mut(&mut new, &["status"]);
    let allowed = status
        .get("disruptionsAllowed")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    status.insert(
        "disruptionsAllowed".into(),
        Value::from((allowed - 1).max(0)),
    );
    let disrupted = meta::obj_mut(&mut new, &["status", "disruptedPods"]);
    disrupted.insert(pod_name.to_owned(), Value::from(now));
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, owner: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        });
        if let Some(o) = owner {
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "rs", "uid": o, "controller": true}]);
        }
        p
    }

    fn pdb(spec: Value) -> Value {
        let mut s = spec;
        s["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "b", "namespace": "default", "generation": 1}, "spec": s})
    }

    #[test]
    fn min_available_and_max_unavailable() {
        let mut st = Store::new();
        for (n, ready) in [("a", true), ("b", true), ("c", false)] {
            st.insert(POD, pod(n, ready, None));
        }
        let b = compute(&st, &pdb(json!({"minAvailable": 2})));
        assert_eq!(
            b,
            Budget {
                expected: 3,
                desired: 2,
                current: 2,
                allowed: 0
            }
        );
        let b = compute(&st, &pdb(json!({"minAvailable": "50%"})));
        assert_eq!(
            b,
            Budget {
                expected: 3,
                desired: 2,
                current: 2,
                allowed: 0
            }
        );
        let b = compute(&st, &pdb(json!({"maxUnavailable": 1})));
        assert_eq!(
            b,
            Budget {
                expected: 3,
                desired: 2,
                current: 2,
                allowed: 0
            }
        );
        let b = compute(&st, &pdb(json!({"maxUnavailable": "34%"})));
        assert_eq!(
            b,
            Budget {
                expected: 3,
                desired: 1,
                current: 2,
                allowed: 1
            }
        );
        let b = compute(&st, &pdb(json!({"minAvailable": 1})));
        assert_eq!(b.allowed, 1);
    }

    #[test]
    fn expected_comes_from_the_controller() {
        let mut st = Store::new();
        st.insert(
            REPLICA_SET,
            json!({"metadata": {"name": "rs", "namespace": "default", "uid": "rs1"},
                                       "spec": {"replicas": 4}}),
        );
        for n in ["a", "b"] {
            st.insert(POD, pod(n, true, Some("rs1")));
        }
        let b = compute(&st, &pdb(json!({"maxUnavailable": 1})));
        assert_eq!(
            b,
            Budget {
                expected: 4,
                desired: 3,
                current: 2,
                allowed: 0
            }
        );
    }

    #[test]
    fn null_selector_selects_nothing_and_empty_everything() {
        let p = pod("a", true, None);
        let none = json!({"metadata": {"namespace": "default"}, "spec": {}});
        let all = json!({"metadata": {"namespace": "default"}, "spec": {"selector": {}}});
        assert!(!selects(&none, &p));
        assert!(selects(&all, &p));
    }
}
