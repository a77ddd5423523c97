//! What a drain of a node will do, and what will block it, decided from API objects before
//! anything is changed. No I/O: the objects are passed in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Serialize;

/// Who owns a pod, as the drain treats it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// A DaemonSet's pod: left alone (`--ignore-daemonsets`).
    DaemonSet,
    /// A static pod's mirror: the API cannot remove it.
    Mirror,
    /// No controller: nothing recreates it (`--force`).
    Bare,
    /// A Job's pod.
    Job,
    /// A ReplicaSet's pod (a Deployment's when the ReplicaSet has one).
    ReplicaSet,
    /// A StatefulSet's pod.
    StatefulSet,
    /// Another controller (a CRD's).
    Other(String),
}

/// What the drain does with a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Evicted through the Eviction API (its PodDisruptionBudget counts).
    Evict,
    /// Left on the node.
    Skip(String),
}

/// Something that would stop the drain, with the arithmetic and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The object at fault (`PodDisruptionBudget/ns/name`, the pod itself, the node).
    pub object: String,
    /// What blocks, with the numbers.
    pub why: String,
    /// What to change.
    pub fix: String,
}

/// One pod of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodPlan {
    /// `namespace/name`.
    pub pod: String,
    /// Its owner.
    pub owner: Owner,
    /// Behind the lameduck gate.
    pub gated: bool,
    /// Its grace period, seconds.
    pub grace_seconds: i64,
    /// The PodDisruptionBudget that counts it, if one.
    pub budget: Option<String>,
    /// What the drain does with it.
    pub action: Action,
}

/// The plan for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The node.
    pub node: String,
    /// Every pod on it, in the order they are handled.
    pub pods: Vec<PodPlan>,
    /// What would stop the drain; empty when it can run.
    pub blockers: Vec<Blocker>,
}

/// The drain's switches that change what blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// `--ignore-daemonsets`.
    pub ignore_daemonsets: bool,
    /// `--delete-emptydir-data`.
    pub delete_emptydir_data: bool,
    /// `--force`: bare pods too.
    pub force: bool,
}

fn name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pod's owner.
pub fn owner(p: &Pod) -> Owner {
    if p.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
    {
        return Owner::Mirror;
    }
    let controller = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match controller.map(|o| o.kind.as_str()) {
        None => Owner::Bare,
        Some("DaemonSet") => Owner::DaemonSet,
        Some("Job") => Owner::Job,
        Some("ReplicaSet") => Owner::ReplicaSet,
        Some("StatefulSet") => Owner::StatefulSet,
        Some(k) => Owner::Other(k.to_owned()),
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn selects(pdb: &PodDisruptionBudget, p: &Pod) -> bool {
    if pdb.metadata.namespace != p.metadata.namespace
        && !(pdb.metadata.namespace.is_none() && p.metadata.namespace.as_deref() == Some("default"))
    {
        return false;
    }
    let labels = p.metadata.labels.clone().unwrap_or_default();
    match pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        // A budget without a selector selects nothing (policy/v1).
        None => false,
        Some(sel) => lameduck_manifest::workload::selects(sel, &labels),
    }
}

fn tolerates(tolerations: &[Toleration], t: &Taint) -> bool {
    tolerations.iter().any(|tol| {
        let key_ok = match tol.key.as_deref() {
            None | Some("") => tol.operator.as_deref() == Some("Exists"),
            Some(k) => k == t.key,
        };
        let value_ok = tol.operator.as_deref() == Some("Exists")
            || tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or("");
        let effect_ok = tol
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == t.effect);
        key_ok && value_ok && effect_ok
    })
}

/// Whether `p`'s replacement could be scheduled on `n` as far as cordons and taints say
/// (resources and affinity are not judged).
fn could_host(n: &Node, p: &Pod) -> bool {
    let spec = n.spec.clone().unwrap_or_default();
    if spec.unschedulable == Some(true) {
        return false;
    }
    let tolerations = p
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    spec.taints
        .iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerates(&tolerations, t))
}

fn budget_words(pdb: &PodDisruptionBudget) -> String {
    let spec = pdb.spec.clone().unwrap_or_default();
    let s = |v: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString| match v {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    };
    match (&spec.min_available, &spec.max_unavailable) {
        (Some(m), _) => format!("minAvailable: {}", s(m)),
        (None, Some(m)) => format!("maxUnavailable: {}", s(m)),
        (None, None) => "no minAvailable or maxUnavailable".into(),
    }
}

/// Plans the drain of `node`: `pods` are the pods bound to it, `budgets` every
/// PodDisruptionBudget (all namespaces), `nodes` every node (to judge where replacements go).
pub fn plan(
    node: &str,
    pods: &[Pod],
    budgets: &[PodDisruptionBudget],
    nodes: &[Node],
    sw: Switches,
) -> Plan {
    let mut out = Plan {
        node: node.to_owned(),
        pods: Vec::new(),
        blockers: Vec::new(),
    };
    let others: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(node))
        .collect();
    // Pods of one budget on this node: they leave one at a time as the budget allows.
    let mut per_budget: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods {
        let pod = name(p);
        let owner = owner(p);
        let spec = p.spec.clone().unwrap_or_default();
        let gated = lameduck_pod::PodModel::new(&spec).gated();
        let finished = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        let matching: Vec<&PodDisruptionBudget> =
            budgets.iter().filter(|b| selects(b, p)).collect();
        let budget = matching.first().map(|b| {
            format!(
                "{}/{}",
                b.metadata.namespace.as_deref().unwrap_or("default"),
                b.metadata.name.as_deref().unwrap_or_default()
            )
        });
        let mut block = |object: String, why: String, fix: String| {
            out.blockers.push(Blocker {
                pod: pod.clone(),
                object,
                why,
                fix,
            })
        };
        let action = match &owner {
            Owner::Mirror => Action::Skip("a static pod's mirror: the kubelet owns it".into()),
            Owner::DaemonSet if sw.ignore_daemonsets => {
                Action::Skip("a DaemonSet's pod (--ignore-daemonsets)".into())
            }
            Owner::DaemonSet => {
                block(
                    format!("Pod/{pod}"),
                    "a DaemonSet's pod: its DaemonSet would put it back on the cordoned node"
                        .into(),
                    "pass --ignore-daemonsets to leave DaemonSet pods in place".into(),
                );
                Action::Skip("a DaemonSet's pod".into())
            }
            _ if finished => Action::Skip("finished".into()),
            _ => Action::Evict,
        };
        if action == Action::Evict {
            if owner == Owner::Bare && !sw.force {
                block(
                    format!("Pod/{pod}"),
                    "no controller owns it: once evicted nothing recreates it".into(),
                    "pass --force to evict it anyway, or run it under a Deployment".into(),
                );
            }
            let empty_dir = spec.volumes.iter().flatten().any(|v| v.empty_dir.is_some());
            if empty_dir && !sw.delete_emptydir_data {
                block(
                    format!("Pod/{pod}"),
                    "it has emptyDir volumes, whose data is lost when it goes".into(),
                    "pass --delete-emptydir-data to accept that".into(),
                );
            }
            let annotations = p.metadata.annotations.clone().unwrap_or_default();
            for (key, value, who) in [
                ("karpenter.sh/do-not-disrupt", "true", "Karpenter"),
                (
                    "cluster-autoscaler.kubernetes.io/safe-to-evict",
                    "false",
                    "cluster-autoscaler",
                ),
            ] {
                if annotations.get(key).is_some_and(|v| v == value) {
                    block(
                        format!("Pod/{pod}"),
                        format!(
                            "annotated `{key}: \"{value}\"`: {who} is told never to disrupt it"
                        ),
                        format!(
                            "remove the annotation if this drain should move it (kubectl annotate pod {} {key}-)",
                            p.metadata.name.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
            if matching.len() > 1 {
                let names: Vec<String> = matching
                    .iter()
                    .map(|b| b.metadata.name.clone().unwrap_or_default())
                    .collect();
                block(
                    format!("Pod/{pod}"),
                    format!(
                        "{} PodDisruptionBudgets select it ({}): the Eviction API refuses every eviction of such a pod (500)",
                        names.len(),
                        names.join(", ")
                    ),
                    "keep one PodDisruptionBudget per pod: narrow the selectors".into(),
                );
            } else if let Some(b) = matching.first() {
                let key = budget.clone().unwrap_or_default();
                let n = per_budget.entry(key.clone()).or_insert(0);
                *n += 1;
                let status = b.status.clone().unwrap_or_default();
                let expected = status.expected_pods.unwrap_or(0);
                let healthy_now = status.current_healthy.unwrap_or(0);
                let desired = status.desired_healthy.unwrap_or(0);
                let allowed = status.disruptions_allowed.unwrap_or(0);
                let spec = b.spec.clone().unwrap_or_default();
                let never = matches!(
                    (&spec.max_unavailable, &spec.min_available),
                    (
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
                        _
                    )
                ) || matches!(
                    &spec.max_unavailable,
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) if s.trim() == "0%"
                ) || matches!(
                    &spec.min_available,
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) if s.trim() == "100%"
                ) || (spec.min_available.is_some()
                    && expected > 0
                    && desired >= expected);
                let healthy = ready(p);
                let unhealthy_blocked = !healthy
                    && spec.unhealthy_pod_eviction_policy.as_deref() != Some("AlwaysAllow")
                    && healthy_now < desired;
                if never {
                    block(
                        format!("PodDisruptionBudget/{key}"),
                        format!(
                            "{}: with {} expected pods it needs {} healthy and allows {} disruptions, so no eviction can ever pass",
                            budget_words(b),
                            expected,
                            desired,
                            allowed
                        ),
                        "allow one disruption (maxUnavailable: 1, or minAvailable below the replica count), or scale the workload up first".into(),
                    );
                } else if unhealthy_blocked {
                    block(
                        format!("PodDisruptionBudget/{key}"),
                        format!(
                            "the pod is not ready and the budget is not met ({} healthy of {} needed): under unhealthyPodEvictionPolicy IfHealthyBudget it cannot be evicted until the others recover",
                            healthy_now, desired
                        ),
                        "set unhealthyPodEvictionPolicy: AlwaysAllow on the budget, or fix the pods that are not ready".into(),
                    );
                }
            }
            let replaced = matches!(
                owner,
                Owner::ReplicaSet | Owner::StatefulSet | Owner::Job | Owner::Other(_)
            );
            if replaced && !others.iter().any(|n| could_host(n, p)) {
                block(
                    format!("Node/{node}"),
                    format!(
                        "no other node can take its replacement: of {} other nodes, every one is cordoned or has a taint the pod does not tolerate",
                        others.len()
                    ),
                    "uncordon a node or add capacity first; the pod would stay Pending and its workload short".into(),
                );
            }
        }
        out.pods.push(PodPlan {
            pod,
            owner,
            gated,
            grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
            budget,
            action,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn rs_pod(name: &str, labels: serde_json::Value, ready: bool) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "ml", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
    }

    fn pdb(name: &str, spec: serde_json::Value, status: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml"},
            "spec": spec,
            "status": status,
        }))
        .expect("pdb")
    }

    fn node(name: &str, spec: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("node")
    }

    fn status(expected: i32, healthy: i32, desired: i32, allowed: i32) -> serde_json::Value {
        json!({"expectedPods": expected, "currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed})
    }

    #[test]
    fn a_clean_node_has_no_blockers() {
        let pods = [rs_pod("a", json!({"app": "a"}), true)];
        let budgets = [pdb(
            "a",
            json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "a"}}}),
            status(3, 3, 2, 1),
        )];
        let nodes = [node("n1", json!({})), node("n2", json!({}))];
        let p = plan("n1", &pods, &budgets, &nodes, Switches::default());
        assert!(p.blockers.is_empty(), "{:?}", p.blockers);
        assert_eq!(p.pods[0].action, Action::Evict);
        assert_eq!(p.pods[0].budget.as_deref(), Some("ml/a"));
    }

    #[test]
    fn every_blocker_class_is_named_with_its_arithmetic() {
        let mut dnd = rs_pod("dnd", json!({"app": "d"}), true);
        dnd.metadata.annotations =
            Some([("karpenter.sh/do-not-disrupt".to_owned(), "true".to_owned())].into());
        let bare = pod(json!({"metadata": {"name": "bare", "namespace": "ml"},
            "spec": {"containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "t", "emptyDir": {}}]}}));
        let ds = pod(json!({"metadata": {"name": "ds", "namespace": "ml",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}));
        let pods = [
            rs_pod("zero", json!({"app": "z"}), true),
            rs_pod("two", json!({"app": "t", "tier": "x"}), true),
            rs_pod("sick", json!({"app": "s"}), false),
            dnd,
            bare,
            ds,
        ];
        let budgets = [
            pdb(
                "zero",
                json!({"maxUnavailable": 0, "selector": {"matchLabels": {"app": "z"}}}),
                status(2, 2, 2, 0),
            ),
            pdb(
                "t1",
                json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "t"}}}),
                status(3, 3, 1, 2),
            ),
            pdb(
                "t2",
                json!({"minAvailable": 1, "selector": {"matchLabels": {"tier": "x"}}}),
                status(3, 3, 1, 2),
            ),
            pdb(
                "sick",
                json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "s"}}}),
                status(3, 1, 2, 0),
            ),
        ];
        let nodes = [
            node("n1", json!({})),
            node("n2", json!({"unschedulable": true})),
            node(
                "n3",
                json!({"taints": [{"key": "gpu", "value": "h100", "effect": "NoSchedule"}]}),
            ),
        ];
        let p = plan("n1", &pods, &budgets, &nodes, Switches::default());
        let words: Vec<String> = p
            .blockers
            .iter()
            .map(|b| format!("{} | {} | {}", b.pod, b.object, b.why))
            .collect();
        let has = |needle: &str| words.iter().any(|w| w.contains(needle));
        assert!(
            has(
                "PodDisruptionBudget/ml/zero | maxUnavailable: 0: with 2 expected pods it needs 2 healthy"
            ),
            "{words:#?}"
        );
        assert!(
            has("2 PodDisruptionBudgets select it (t1, t2)"),
            "{words:#?}"
        );
        assert!(
            has("not ready and the budget is not met (1 healthy of 2 needed)"),
            "{words:#?}"
        );
        assert!(has("karpenter.sh/do-not-disrupt"), "{words:#?}");
        assert!(
            has("ml/bare | Pod/ml/bare | no controller owns it"),
            "{words:#?}"
        );
        assert!(has("emptyDir"), "{words:#?}");
        assert!(has("a DaemonSet's pod"), "{words:#?}");
        assert!(has("no other node can take its replacement"), "{words:#?}");
        // Every blocker says what to change.
        assert!(p.blockers.iter().all(|b| !b.fix.is_empty()));
        // The switches lift theirs; a toleration makes the tainted node a home.
        let p = plan(
            "n1",
            &pods,
            &budgets,
            &nodes,
            Switches {
                ignore_daemonsets: true,
                delete_emptydir_data: true,
                force: true,
            },
        );
        let words: Vec<String> = p.blockers.iter().map(|b| b.why.clone()).collect();
        assert!(
            !words.iter().any(|w| w.contains("DaemonSet")
                || w.contains("emptyDir")
                || w.contains("no controller")),
            "{words:#?}"
        );
        let mut tolerant = rs_pod("ok", json!({"app": "ok"}), true);
        if let Some(s) = tolerant.spec.as_mut() {
            s.tolerations = Some(vec![Toleration {
                key: Some("gpu".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]);
        }
        let p = plan("n1", &[tolerant], &[], &nodes, Switches::default());
        assert!(p.blockers.is_empty(), "{:?}", p.blockers);
    }
}
