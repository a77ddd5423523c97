//! The three patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a
//! strategic merge patch with the merge keys of the built-in types this server serves.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` removes, everything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, pv) in p {
        if pv.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), pv);
        }
    }
}

/// RFC 6902, including `test`.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &ops).map_err(|e| e.to_string())
}

/// The merge key of a list field in the built-in types, by field name. Lists without one are
/// replaced whole.
fn merge_key(field: &str, patch_items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "conditions" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "readinessGates" => "conditionType",
        "podIPs" | "hostIPs" | "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        // Container ports merge on containerPort, Service ports on port.
        "ports" => {
            if patch_items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Lists of scalars that merge as sets rather than being replaced.
fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

/// A strategic merge patch. Supports the `$patch: delete|replace` directives on list items and
/// objects and `$deleteFromPrimitiveList/`; `$setElementOrder/` and `$retainKeys` are accepted
/// and ignored.
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, pv) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(gone)) = (t.get_mut(field), pv) {
                items.retain(|i| !gone.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        if let Value::Object(po) = pv {
            match po.get("$patch").and_then(Value::as_str) {
                Some("delete") => {
                    t.remove(k);
                    continue;
                }
                Some("replace") => {
                    t.insert(k.clone(), strip_directives(pv));
                    continue;
                }
                _ => {}
            }
        }
        match (t.get_mut(k), pv) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => strategic_merge(tv, pv),
            (Some(Value::Array(tv)), Value::Array(pa)) => {
                if let Some(key) = merge_key(k, pa) {
                    merge_list(tv, pa, key);
                } else if merges_as_set(k) {
                    for item in pa {
                        if !tv.contains(item) {
                            tv.push(item.clone());
                        }
                    }
                } else {
                    *tv = pa.iter().map(strip_directives).collect();
                }
            }
            (_, Value::Array(pa)) => {
                let items: Vec<Value> = pa
                    .iter()
                    .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .map(strip_directives)
                    .collect();
                t.insert(k.clone(), Value::Array(items));
            }
            _ => {
                t.insert(k.clone(), strip_directives(pv));
            }
        }
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let Some(kv) = item.get(key).filter(|v| !v.is_null()) else {
            if item.get("$patch").and_then(Value::as_str) == Some("replace") {
                continue;
            }
            target.push(strip_directives(item));
            continue;
        };
        let pos = target.iter().position(|t| t.get(key) == Some(kv));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            target.retain(|t| t.get(key) != Some(kv));
            continue;
        }
        match pos {
            Some(i) => strategic_merge(&mut target[i], item),
            None => target.push(strip_directives(item)),
        }
    }
}

/// A value with every `$`-prefixed directive key removed.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_with_test() {
        let mut t = json!({"a": 1, "b": [1, 2]});
        json_patch(
            &mut t,
            &json!([{"op": "test", "path": "/a", "value": 1},
                                    {"op": "add", "path": "/b/-", "value": 3},
                                    {"op": "replace", "path": "/a", "value": 2}]),
        )
        .expect("applies");
        assert_eq!(t, json!({"a": 2, "b": [1, 2, 3]}));
        let err = json_patch(&mut t, &json!([{"op": "test", "path": "/a", "value": 7}]));
        assert!(err.is_err());
        assert_eq!(t["a"], 2);
    }

    #[test]
    fn strategic_conditions_merge_by_type() {
        let mut t = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"}]}});
        strategic_merge(
            &mut t,
            &json!({"status": {"conditions": [
            {"type": "example.com/gate", "status": "True"},
            {"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(
            t,
            json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "example.com/gate", "status": "True"}]}})
        );
    }

    #[test]
    fn strategic_containers_env_ports_and_replaced_lists() {
        let mut t = json!({"spec": {
            "containers": [{"name": "a", "image": "x:1",
                            "env": [{"name": "A", "value": "1"}],
                            "ports": [{"containerPort": 80, "name": "http"}],
                            "args": ["--one"]}],
            "tolerations": [{"key": "k1"}],
            "finalizers": ["f1"]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {
            "containers": [{"name": "a", "image": "x:2",
                            "env": [{"name": "B", "value": "2"}, {"name": "A", "$patch": "delete"}],
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "args": ["--two"]},
                           {"name": "b", "image": "y"}],
            "tolerations": [{"key": "k2"}],
            "finalizers": ["f2", "f1"]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {
            "containers": [{"name": "a", "image": "x:2",
                            "env": [{"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                            "args": ["--two"]},
                           {"name": "b", "image": "y"}],
            "tolerations": [{"key": "k2"}],
            "finalizers": ["f1", "f2"]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "x": {"y": 1, "z": 2}});
        strategic_merge(
            &mut t,
            &json!({
            "metadata": {"labels": {"a": null}},
            "x": {"$patch": "replace", "w": 3},
            "$setElementOrder/conditions": [{"type": "Ready"}]}),
        );
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2"}}, "x": {"w": 3}})
        );
    }
}
