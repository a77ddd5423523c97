//! The node's side of a notice: the `lameduck.io/reclaimed` taint, the cordon, and the notice
//! recorded in an annotation so that a restarted agent knows what it was doing and a cancelled
//! notice undoes only what the agent did.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
use lameduck_kube::{Context, KubeError, Op, retry_conflicts};
use serde_json::{Value, json};

/// The taint a reclaimed node gets (effect NoSchedule).
pub const TAINT: &str = lameduck_pod::facts::RECLAIMED_TAINT;
/// The annotation holding the notice the agent acts on.
pub const RECORD: &str = "lameduck.io/notice";

/// What the agent recorded about the notice it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The notice's id.
    pub id: String,
    /// `aws`, `gcp`, `azure`.
    pub provider: String,
    /// `reclaim`, `maintenance`, `advisory`.
    pub kind: String,
    /// When the instance goes, in Unix seconds (0: not known).
    pub goes_at: u64,
    /// Whether the agent cordoned the node (it was schedulable before).
    pub cordoned: bool,
    /// Whether the agent tainted it.
    pub tainted: bool,
}

impl Record {
    fn to_json(&self) -> String {
        json!({
            "id": self.id, "provider": self.provider, "kind": self.kind,
            "goesAt": self.goes_at, "cordoned": self.cordoned, "tainted": self.tainted,
        })
        .to_string()
    }

    fn parse(s: &str) -> Option<Record> {
        let v: Value = serde_json::from_str(s).ok()?;
        Some(Record {
            id: v["id"].as_str()?.to_owned(),
            provider: v["provider"].as_str().unwrap_or_default().to_owned(),
            kind: v["kind"].as_str().unwrap_or_default().to_owned(),
            goes_at: v["goesAt"].as_u64().unwrap_or(0),
            cordoned: v["cordoned"].as_bool().unwrap_or(false),
            tainted: v["tainted"].as_bool().unwrap_or(false),
        })
    }

    /// When the instance goes.
    pub fn goes_at(&self) -> Option<SystemTime> {
        (self.goes_at > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(self.goes_at))
    }
}

fn op(verb: &'static str, node: &str) -> Op {
    Op {
        verb,
        resource: "nodes",
        namespace: None,
        name: Some(node.to_owned()),
    }
}

/// The notice recorded on the node, if any.
pub async fn recorded(api: &Api<Node>, node: &str) -> Result<Option<Record>, KubeError> {
    let n = api.get(node).await.op(op("get", node))?;
    Ok(n.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RECORD))
        .and_then(|s| Record::parse(s)))
}

/// Cordons the node and, with `taint`, taints it; records the notice. Keeps what another
/// actor did: a node already cordoned is not marked as cordoned by us.
pub async fn mark(
    api: &Api<Node>,
    node: &str,
    record: Record,
    taint: bool,
) -> Result<Record, KubeError> {
    retry_conflicts(5, || {
        let mut record_in = record.clone();
        async move {
            let n = api.get(node).await.op(op("get", node))?;
            let spec = n.spec.clone().unwrap_or_default();
            let already = spec.unschedulable == Some(true);
            let previous = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RECORD))
                .and_then(|s| Record::parse(s));
            // A second notice (or a restart) keeps what the first one found.
            record_in.cordoned = match &previous {
                Some(p) => p.cordoned,
                None => !already,
            };
            let mut taints: Vec<Taint> = spec.taints.clone().unwrap_or_default();
            let has = taints.iter().any(|t| t.key == TAINT);
            record_in.tainted = previous.as_ref().is_some_and(|p| p.tainted) || taint || has;
            if taint && !has {
                taints.push(Taint {
                    key: TAINT.into(),
                    value: Some(record_in.provider.clone()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                });
            }
            let patch = json!({
                "metadata": {
                    "resourceVersion": n.metadata.resource_version,
                    "annotations": {RECORD: record_in.to_json()},
                },
                "spec": {"unschedulable": true, "taints": taints},
            });
            api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .op(op("patch", node))?;
            Ok(record_in)
        }
    })
    .await
}

/// Undoes what the agent did for notice `id`: the taint, the cordon (only if the agent set
/// it), the record. Returns false when the node records another notice or none.
pub async fn unmark(api: &Api<Node>, node: &str, id: &str) -> Result<bool, KubeError> {
    retry_conflicts(5, || async move {
        let n = api.get(node).await.op(op("get", node))?;
        let Some(record) = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RECORD))
            .and_then(|s| Record::parse(s))
        else {
            return Ok(false);
        };
        if record.id != id {
            return Ok(false);
        }
        let spec = n.spec.clone().unwrap_or_default();
        let taints: Vec<Taint> = spec
            .taints
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != TAINT)
            .collect();
        let mut patch = json!({
            "metadata": {
                "resourceVersion": n.metadata.resource_version,
                "annotations": {RECORD: null},
            },
            "spec": {"taints": taints},
        });
        if record.cordoned {
            patch["spec"]["unschedulable"] = json!(false);
        }
        api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .op(op("patch", node))?;
        Ok(true)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            id: "instance-action:terminate:2026-12-03T10:00:00Z".into(),
            provider: "aws".into(),
            kind: "reclaim".into(),
            goes_at: 1_796_300_000,
            cordoned: true,
            tainted: true,
        };
        assert_eq!(Record::parse(&r.to_json()), Some(r.clone()));
        assert!(r.goes_at().is_some());
        assert_eq!(Record::parse("not json"), None);
    }
}
