//! The pods on this node, kept by a watch so that a notice finds them even when the API server
//! is slow or down at that moment, each read through the pod model once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use lameduck_pod::PodModel;

use crate::metrics::Metrics;

/// What a notice does with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Behind the gate: `/drain?deadline=` at this admin address, then deleted.
    Gated(SocketAddr),
    /// Behind the gate, but its address is not known yet (no pod IP): deleted only.
    GatedNoAddress,
    /// Not gated: evicted (its PodDisruptionBudget permitting), else deleted at the end.
    Evict,
    /// Stays: a DaemonSet's pod, a mirror (static) pod, or one that has finished.
    Stays(&'static str),
}

/// One pod on the node.
#[derive(Debug, Clone)]
pub struct NodePod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: Option<String>,
    /// Its own grace period.
    pub grace_seconds: i64,
    /// Already terminating.
    pub terminating: bool,
    /// What a notice does with it.
    pub role: Role,
}

/// Reads one pod.
pub fn classify(pod: &Pod) -> NodePod {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let mirror = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let daemon = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let role = if mirror {
        Role::Stays("a mirror (static) pod")
    } else if daemon {
        Role::Stays("a DaemonSet's pod")
    } else if matches!(phase, Some("Succeeded" | "Failed")) {
        Role::Stays("finished")
    } else {
        let model = PodModel::new(&spec);
        match &model.gate {
            Some(g) if g.flags.is_ok() => {
                let ip = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok());
                match ip {
                    Some(ip) => Role::Gated(SocketAddr::new(ip, g.admin_port())),
                    None => Role::GatedNoAddress,
                }
            }
            _ => Role::Evict,
        }
    };
    NodePod {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone(),
        grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
        terminating: meta.deletion_timestamp.is_some(),
        role,
    }
}

/// The node's pods, as the watch last saw them.
#[derive(Clone)]
pub struct Inventory {
    store: Store<Pod>,
}

impl Inventory {
    /// Starts the watch of the pods scheduled to `node`.
    pub fn start(client: kube::Client, node: &str, metrics: Arc<Metrics>) -> Inventory {
        let api: Api<Pod> = Api::all(client);
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut warned = false;
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    metrics.kube_error("watch_pods");
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "Cannot watch this node's pods (needs list and watch on pods); retrying with backoff, logged once");
                    } else {
                        tracing::debug!(error = %e, "Pod watch failed again");
                    }
                }
            }
        });
        Inventory { store }
    }

    /// Every pod on the node, read.
    pub fn pods(&self) -> Vec<NodePod> {
        self.store.state().iter().map(|p| classify(p)).collect()
    }

    /// Waits (up to `limit`) until the watch has listed the node's pods once.
    pub async fn ready(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.store.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn roles() {
        let gated = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"containers": [{"name": "e", "image": "vllm/vllm-openai",
                "command": ["lameduck", "gate", "--admin", "0.0.0.0:9911", "--", "vllm", "serve", "m"]}]},
            "status": {"podIP": "10.0.0.5", "phase": "Running"}
        }));
        assert_eq!(
            classify(&gated).role,
            Role::Gated("10.0.0.5:9911".parse().expect("addr"))
        );
        let plain = pod(serde_json::json!({
            "metadata": {"name": "b"},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            "status": {"podIP": "10.0.0.6"}
        }));
        assert_eq!(classify(&plain).role, Role::Evict);
        assert_eq!(classify(&plain).namespace, "default");
        let ds = pod(serde_json::json!({
            "metadata": {"name": "c", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "x", "image": "x"}]}
        }));
        assert!(matches!(classify(&ds).role, Role::Stays(_)));
        let mirror = pod(serde_json::json!({
            "metadata": {"name": "m", "annotations": {"kubernetes.io/config.mirror": "x"}},
            "spec": {"containers": [{"name": "x", "image": "x"}]}
        }));
        assert!(matches!(classify(&mirror).role, Role::Stays(_)));
    }
}
