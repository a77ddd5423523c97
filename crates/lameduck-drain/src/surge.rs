//! Surge first: for a Deployment's pods on the node, raise the Deployment's replicas by their
//! number, wait until the replacements are Ready on other nodes, then mark this node's pods with
//! the lowest `controller.kubernetes.io/pod-deletion-cost` and lower the replicas again, so the
//! ReplicaSet removes exactly them — through their normal graceful termination (preStop → the
//! gate's drain). The Deployment is never left scaled up: the change is recorded on it
//! (`lameduck.io/drain-surge`) and undone on failure, on Ctrl-C, and by the next run after a
//! crash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lameduck_kube::{Clients, Context, KubeError, Op};
use serde_json::json;

/// The annotation recording a surge on its Deployment.
pub const RECORD: &str = "lameduck.io/drain-surge";
/// The deletion cost given to the pods that must go (the ReplicaSet removes the lowest first).
pub const LEAVING_COST: i32 = -1_000_000;
const COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A Deployment and its pods on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Namespace.
    pub namespace: String,
    /// The Deployment.
    pub deployment: String,
    /// Its pods on the node.
    pub pods: Vec<String>,
}

/// What a surge changed, to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The Deployment's replicas before.
    pub replicas: i32,
    /// The HorizontalPodAutoscaler that owns the count: its name, minReplicas and maxReplicas
    /// before.
    pub hpa: Option<(String, Option<i32>, i32)>,
}

/// Surges in progress, for undoing them on Ctrl-C.
#[derive(Debug, Default, Clone)]
pub struct InProgress(Arc<Mutex<BTreeMap<(String, String), Saved>>>);

impl InProgress {
    fn start(&self, ns: &str, name: &str, saved: Saved) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((ns.to_owned(), name.to_owned()), saved);
    }

    fn done(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ns.to_owned(), name.to_owned()));
    }

    /// Every surge still in progress: (namespace, deployment, what to put back).
    pub fn all(&self) -> Vec<(String, String, Saved)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((ns, n), r)| (ns.clone(), n.clone(), r.clone()))
            .collect()
    }
}

/// The Deployments owning `pods` (namespace/name) through their ReplicaSets.
pub async fn groups(clients: &Clients, pods: &[&Pod]) -> Result<Vec<Group>, KubeError> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for p in pods {
        let ns = p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(rs_name) = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "ReplicaSet")
            .map(|o| o.name.clone())
        else {
            continue;
        };
        let sets: Api<ReplicaSet> = Api::namespaced(clients.api.clone(), &ns);
        let rs = sets
            .get_opt(&rs_name)
            .await
            .op(Op::new("get", "replicasets.apps", &ns).named(&rs_name))?;
        let Some(d) = rs.and_then(|rs| {
            rs.metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
        }) else {
            continue;
        };
        out.entry((ns, d.name))
            .or_default()
            .push(p.metadata.name.clone().unwrap_or_default());
    }
    Ok(out
        .into_iter()
        .map(|((namespace, deployment), pods)| Group {
            namespace,
            deployment,
            pods,
        })
        .collect())
}

fn record(node: &str, saved: &Saved, added: usize) -> String {
    let mut r = json!({"node": node, "replicas": saved.replicas, "added": added});
    if let Some((name, min, max)) = &saved.hpa {
        r["hpa"] = json!({"name": name, "minReplicas": min, "maxReplicas": max});
    }
    r.to_string()
}

/// The HorizontalPodAutoscaler (autoscaling/v2) that scales `deployment`, if any.
async fn hpa_of(
    clients: &Clients,
    ns: &str,
    deployment: &str,
) -> Result<Option<HorizontalPodAutoscaler>, KubeError> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(clients.api.clone(), ns);
    let list = api.list(&ListParams::default()).await.op(Op {
        verb: "list",
        resource: "horizontalpodautoscalers.autoscaling",
        namespace: Some(ns.to_owned()),
        name: None,
    })?;
    Ok(list.items.into_iter().find(|h| {
        h.spec.scale_target_ref.kind == "Deployment" && h.spec.scale_target_ref.name == deployment
    }))
}

/// Sets an HPA's bounds.
async fn set_hpa(
    clients: &Clients,
    ns: &str,
    name: &str,
    min: Option<i32>,
    max: i32,
) -> Result<(), KubeError> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(clients.api.clone(), ns);
    let patch = json!({"spec": {"minReplicas": min, "maxReplicas": max}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .op(Op::new("patch", "horizontalpodautoscalers.autoscaling", ns).named(name))?;
    Ok(())
}

async fn set_replicas(
    api: &Api<Deployment>,
    ns: &str,
    name: &str,
    replicas: i32,
    note: Option<String>,
) -> Result<(), KubeError> {
    let patch = json!({
        "metadata": {"annotations": {RECORD: note}},
        "spec": {"replicas": replicas},
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .op(Op::new("patch", "deployments.apps", ns).named(name))?;
    Ok(())
}

/// Undoes a surge: the HPA's bounds and the replica count back, the record gone.
pub async fn restore(
    clients: &Clients,
    ns: &str,
    name: &str,
    saved: &Saved,
) -> Result<(), KubeError> {
    if let Some((hpa, min, max)) = &saved.hpa {
        set_hpa(clients, ns, hpa, *min, *max).await?;
    }
    let api: Api<Deployment> = Api::namespaced(clients.api.clone(), ns);
    set_replicas(&api, ns, name, saved.replicas, None).await
}

/// Finds surges a crashed run left on Deployments for `node` and undoes them; returns what it
/// restored.
pub async fn recover(clients: &Clients, node: &str) -> Result<Vec<String>, KubeError> {
    let api: Api<Deployment> = Api::all(clients.api.clone());
    let list = api.list(&ListParams::default()).await.op(Op {
        verb: "list",
        resource: "deployments.apps",
        namespace: None,
        name: None,
    })?;
    let mut restored = Vec::new();
    for d in list.items {
        let Some(rec) = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RECORD))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            continue;
        };
        if rec["node"] != node {
            continue;
        }
        let ns = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = d.metadata.name.clone().unwrap_or_default();
        let replicas = rec["replicas"].as_i64().and_then(|r| i32::try_from(r).ok());
        let hpa = rec["hpa"]["name"].as_str().map(|h| {
            let int = |v: &serde_json::Value| v.as_i64().and_then(|n| i32::try_from(n).ok());
            (
                h.to_owned(),
                int(&rec["hpa"]["minReplicas"]),
                int(&rec["hpa"]["maxReplicas"]).unwrap_or(1),
            )
        });
        if let Some(r) = replicas {
            let saved = Saved { replicas: r, hpa };
            restore(clients, &ns, &name, &saved).await?;
            let bounds = match &saved.hpa {
                Some((h, min, max)) => format!(
                    ", HorizontalPodAutoscaler {h} back to minReplicas {}, maxReplicas {max}",
                    min.map_or("unset".to_owned(), |m| m.to_string())
                ),
                None => String::new(),
            };
            restored.push(format!("{ns}/{name} back to {r} replicas{bounds}"));
        }
    }
    Ok(restored)
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Surges one Deployment off `node`. On success its pods on the node are being removed by the
/// ReplicaSet; on failure everything is restored and the error says why.
pub async fn surge(
    clients: &Clients,
    node: &str,
    g: &Group,
    timeout: Duration,
    progress: &InProgress,
    say: &(dyn Fn(String) + Sync),
) -> Result<(), String> {
    let ns = &g.namespace;
    let api: Api<Deployment> = Api::namespaced(clients.api.clone(), ns);
    let d = api
        .get(&g.deployment)
        .await
        .op(Op::new("get", "deployments.apps", ns).named(&g.deployment))
        .map_err(|e| e.to_string())?;
    let replicas = d.spec.replicas.unwrap_or(1);
    let added = g.pods.len();
    let selector = d
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let target = replicas.saturating_add(i32::try_from(added).unwrap_or(i32::MAX));
    // An HPA owns the count: its minReplicas is raised too, or it would scale the surge away.
    let hpa = hpa_of(clients, ns, &g.deployment)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|h| Some((h.metadata.name?, h.spec.min_replicas, h.spec.max_replicas)));
    let saved = Saved { replicas, hpa };
    progress.start(ns, &g.deployment, saved.clone());
    set_replicas(
        &api,
        ns,
        &g.deployment,
        target,
        Some(record(node, &saved, added)),
    )
    .await
    .map_err(|e| e.to_string())?;
    if let Some((h, min, max)) = &saved.hpa {
        let r = set_hpa(
            clients,
            ns,
            h,
            Some(min.unwrap_or(1).max(target)),
            (*max).max(target),
        )
        .await;
        if let Err(e) = r {
            let _ = restore(clients, ns, &g.deployment, &saved).await;
            progress.done(ns, &g.deployment);
            return Err(e.to_string());
        }
        say(format!(
            "{ns}/{}: its HorizontalPodAutoscaler {h} owns the count: minReplicas raised to {target} for the surge",
            g.deployment
        ));
    }
    say(format!(
        "{ns}/{}: surging {replicas} → {target} replicas; waiting for {added} replacements to be Ready on other nodes",
        g.deployment
    ));
    let pods: Api<Pod> = Api::namespaced(clients.api.clone(), ns);
    let t0 = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let elsewhere = list
            .iter()
            .filter(|p| ready(p))
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node))
            .count();
        if i32::try_from(elsewhere).unwrap_or(i32::MAX) >= replicas {
            say(format!(
                "{ns}/{}: {elsewhere} Ready on other nodes after {:.1} s",
                g.deployment,
                t0.elapsed().as_secs_f64()
            ));
            break;
        }
        if t0.elapsed() > timeout {
            let _ = restore(clients, ns, &g.deployment, &saved).await;
            progress.done(ns, &g.deployment);
            return Err(format!(
                "{ns}/{}: only {elsewhere} of {replicas} Ready on other nodes after {:.0} s (--surge-timeout); restored to {replicas} replicas",
                g.deployment,
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // This node's pods first in line, then back to the original count.
    for name in &g.pods {
        let patch = json!({"metadata": {"annotations": {COST: LEAVING_COST.to_string()}}});
        if let Err(e) = pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .op(Op::new("patch", "pods", ns).named(name))
        {
            let _ = restore(clients, ns, &g.deployment, &saved).await;
            progress.done(ns, &g.deployment);
            return Err(e.to_string());
        }
    }
    restore(clients, ns, &g.deployment, &saved)
        .await
        .map_err(|e| e.to_string())?;
    progress.done(ns, &g.deployment);
    say(format!(
        "{ns}/{}: back to {replicas} replicas; the ReplicaSet removes this node's {added} pods through their graceful path",
        g.deployment
    ));
    Ok(())
}
