//! Facts about pods the controllers and the eviction share.

use serde_json::Value;

use crate::meta;

/// The `Ready` condition is True.
pub(crate) fn is_ready(pod: &Value) -> bool {
    condition_status(pod, "Ready") == Some("True")
}

pub(crate) fn condition_status<'a>(pod: &'a Value, kind: &str) -> Option<&'a str> {
    meta::at(pod, &["status", "conditions"])?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))?
        .get("status")?
        .as_str()
}

/// `metadata.deletionTimestamp` is set.
pub(crate) fn is_terminating(pod: &Value) -> bool {
    meta::at(pod, &["metadata", "deletionTimestamp"]).is_some_and(|v| !v.is_null())
}

pub(crate) fn phase(pod: &Value) -> &str {
    meta::str_at(pod, &["status", "phase"]).unwrap_or("")
}

pub(crate) fn is_finished(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub(crate) fn pod_ip(pod: &Value) -> Option<&str> {
    meta::str_at(pod, &["status", "podIP"]).filter(|s| !s.is_empty())
}

pub(crate) fn node_name(pod: &Value) -> Option<&str> {
    meta::str_at(pod, &["spec", "nodeName"]).filter(|s| !s.is_empty())
}

/// Containers that count for readiness: the app containers and the native sidecars (init
/// containers with `restartPolicy: Always`).
pub(crate) fn serving_containers(pod: &Value) -> Vec<&Value> {
    let mut out: Vec<&Value> = Vec::new();
    if let Some(init) = meta::at(pod, &["spec", "initContainers"]).and_then(Value::as_array) {
        out.extend(
            init.iter()
                .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always")),
        );
    }
    if let Some(cs) = meta::at(pod, &["spec", "containers"]).and_then(Value::as_array) {
        out.extend(cs.iter());
    }
    out
}

/// A named container port anywhere in the pod.
pub(crate) fn named_port(pod: &Value, port_name: &str) -> Option<i64> {
    let mut all = serving_containers(pod);
    if let Some(init) = meta::at(pod, &["spec", "initContainers"]).and_then(Value::as_array) {
        all.extend(init.iter());
    }
    all.iter()
        .filter_map(|c| c.get("ports").and_then(Value::as_array))
        .flatten()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(port_name))
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_i64)
}

/// A port given as a number, a numeric string or a name of one of `container`'s ports.
pub(crate) fn resolve_port(port: &Value, container: &Value) -> Option<u16> {
    let n = match port {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => container
                .get("ports")
                .and_then(Value::as_array)?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s.as_str()))?
                .get("containerPort")?
                .as_i64()?,
        },
        _ => return None,
    };
    u16::try_from(n).ok().filter(|p| *p != 0)
}
