//! A Deployment controller good enough for scaling: each Deployment gets one ReplicaSet of its
//! own (created from its template) whose `spec.replicas` follows the Deployment's, and the
//! Deployment's status counts that ReplicaSet's pods.
//!
//! Simplified: a changed template does not roll out a new ReplicaSet (no rolling updates, no
//! `pod-template-hash`); strategies, `minReadySeconds` and revision history are ignored.

use serde_json::{Value, json};

use crate::meta::{self, at};
use crate::ops;
use crate::resources::{DEPLOYMENT, REPLICA_SET};
use crate::store::Store;

pub(crate) fn sync(st: &mut Store) {
    for d in st.list_cloned(DEPLOYMENT, None) {
        let ns = meta::namespace(&d).to_owned();
        let name = meta::name(&d).to_owned();
        let uid = meta::uid(&d).to_owned();
        if at(&d, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null()) {
            continue;
        }
        let replicas = meta::i64_at(&d, &["spec", "replicas"]).unwrap_or(1);
        let owned = st
            .list(REPLICA_SET, Some(&ns))
            .find(|rs| meta::controller_uid(rs) == Some(uid.as_str()))
            .cloned();
        let rs = match owned {
            Some(mut rs) => {
                if meta::i64_at(&rs, &["spec", "replicas"]) != Some(replicas) {
                    rs["spec"]["replicas"] = json!(replicas);
                    rs = st.update(REPLICA_SET, rs);
                }
                rs
            }
            None => {
                let short: String = uid
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(8)
                    .collect();
                let rs = json!({
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": format!("{name}-{}", short.to_ascii_lowercase()),
                        "namespace": ns,
                        "labels": at(&d, &["spec", "template", "metadata", "labels"]).cloned().unwrap_or(json!({})),
                        "ownerReferences": [{
                            "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                            "uid": uid, "controller": true, "blockOwnerDeletion": true,
                        }],
                    },
                    "spec": {
                        "replicas": replicas,
                        "selector": at(&d, &["spec", "selector"]).cloned().unwrap_or(json!({})),
                        "template": at(&d, &["spec", "template"]).cloned().unwrap_or(json!({})),
                    },
                });
                match ops::create(st, REPLICA_SET, rs, Some(&ns), false) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(deployment = %name, error = %e, "cannot create its ReplicaSet");
                        continue;
                    }
                }
            }
        };
        let count = |k: &str| at(&rs, &["status", k]).cloned().unwrap_or(json!(0));
        let status = json!({
            "replicas": count("replicas"),
            "readyReplicas": count("readyReplicas"),
            "availableReplicas": count("availableReplicas"),
            "updatedReplicas": count("replicas"),
            "observedGeneration": meta::i64_at(&d, &["metadata", "generation"]).unwrap_or(1),
        });
        if d.get("status") != Some(&status) {
            let mut new: Value = d.clone();
            new["status"] = status;
            st.update(DEPLOYMENT, new);
        }
    }
}
