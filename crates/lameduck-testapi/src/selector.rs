//! Label selectors (the query-string syntax and the `LabelSelector` object) and field selectors.

use serde_json::{Map, Value};

use crate::meta::{self, at};
use crate::resources::{self, ResId};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A label selector; no requirements matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax: `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub(crate) fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!(
                    "unable to parse requirement: found empty requirement in {s:?}"
                ));
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector { reqs })
    }

    /// From a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub(crate) fn from_object(sel: &Value) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("matchLabels[{k}] is not a string"))?;
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::Eq(v.to_owned()),
                });
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or("matchExpressions entry without key")?
                    .to_owned();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let op = match e.get("operator").and_then(Value::as_str) {
                    Some("In") => Op::In(values),
                    Some("NotIn") => Op::NotIn(values),
                    Some("Exists") => Op::Exists,
                    Some("DoesNotExist") => Op::NotExists,
                    other => {
                        return Err(format!("{other:?} is not a valid label selector operator"));
                    }
                };
                reqs.push(Requirement { key, op });
            }
        }
        Ok(LabelSelector { reqs })
    }

    /// From a plain map of labels, as a Service's `spec.selector` is.
    pub(crate) fn from_map(map: &Map<String, Value>) -> LabelSelector {
        LabelSelector {
            reqs: map
                .iter()
                .filter_map(|(k, v)| {
                    Some(Requirement {
                        key: k.clone(),
                        op: Op::Eq(v.as_str()?.to_owned()),
                    })
                })
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub(crate) fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.reqs.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match &r.op {
                Op::Eq(want) => v == Some(want.as_str()),
                Op::NotEq(want) => v != Some(want.as_str()),
                Op::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }

    pub(crate) fn matches_object(&self, obj: &Value) -> bool {
        self.matches(meta::labels(obj))
    }

    /// The query syntax for this selector (for `Scale.status.selector`).
    pub(crate) fn render(&self) -> String {
        let parts: Vec<String> = self
            .reqs
            .iter()
            .map(|r| match &r.op {
                Op::Eq(v) => format!("{}={v}", r.key),
                Op::NotEq(v) => format!("{}!={v}", r.key),
                Op::In(s) => format!("{} in ({})", r.key, s.join(",")),
                Op::NotIn(s) => format!("{} notin ({})", r.key, s.join(",")),
                Op::Exists => r.key.clone(),
                Op::NotExists => format!("!{}", r.key),
                Op::Gt(n) => format!("{}>{n}", r.key),
                Op::Lt(n) => format!("{}<{n}", r.key),
            })
            .collect();
        parts.join(",")
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why}: {part:?}");
    if let Some(open) = part.find('(') {
        let close = part
            .rfind(')')
            .ok_or_else(|| bad("missing closing parenthesis"))?;
        if close < open || !part[close + 1..].trim().is_empty() {
            return Err(bad("unexpected text after the value set"));
        }
        let mut words = part[..open].split_whitespace();
        let key = words.next().ok_or_else(|| bad("missing key"))?;
        let op = words.next().ok_or_else(|| bad("missing operator"))?;
        if words.next().is_some() || !valid_key(key) {
            return Err(bad("invalid key"));
        }
        let values: Vec<String> = part[open + 1..close]
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        if values.iter().any(|v| !valid_value(v)) {
            return Err(bad("invalid value"));
        }
        let op = match op {
            "in" => Op::In(values),
            "notin" => Op::NotIn(values),
            _ => return Err(bad("unknown set operator")),
        };
        return Ok(Requirement {
            key: key.to_owned(),
            op,
        });
    }
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        if !valid_key(key) {
            return Err(bad("invalid key"));
        }
        return Ok(Requirement {
            key: key.to_owned(),
            op: Op::NotExists,
        });
    }
    let split = [("!=", 0u8), ("==", 1), ("=", 1), (">", 2), ("<", 3)]
        .into_iter()
        .find_map(|(tok, kind)| part.split_once(tok).map(|(k, v)| (k, v, kind)));
    let Some((key, value, kind)) = split else {
        if !valid_key(part) {
            return Err(bad("invalid key"));
        }
        return Ok(Requirement {
            key: part.to_owned(),
            op: Op::Exists,
        });
    };
    let (key, value) = (key.trim(), value.trim());
    if !valid_key(key) {
        return Err(bad("invalid key"));
    }
    let op = match kind {
        0 | 1 => {
            if !valid_value(value) {
                return Err(bad("invalid value"));
            }
            if kind == 0 {
                Op::NotEq(value.to_owned())
            } else {
                Op::Eq(value.to_owned())
            }
        }
        2 => Op::Gt(value.parse().map_err(|_| bad("not an integer"))?),
        _ => Op::Lt(value.parse().map_err(|_| bad("not an integer"))?),
    };
    Ok(Requirement {
        key: key.to_owned(),
        op,
    })
}

/// A field selector: `a=b,c!=d` over the fields the kind supports.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub(crate) fn parse(s: &str, id: ResId) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if !supported_field(id, field) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector { reqs })
    }

    pub(crate) fn matches(&self, id: ResId, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, equal, want)| {
            let have = field_value(id, obj, field);
            (have == *want) == *equal
        })
    }
}

fn supported_field(id: ResId, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let r = resources::res(id);
    match (r.group, r.kind) {
        ("", "Pod") => matches!(
            field,
            "spec.nodeName"
                | "spec.restartPolicy"
                | "spec.schedulerName"
                | "spec.serviceAccountName"
                | "spec.hostNetwork"
                | "status.phase"
                | "status.podIP"
                | "status.nominatedNodeName"
        ),
        ("", "Node") => field == "spec.unschedulable",
        ("", "Namespace") => field == "status.phase",
        ("", "Event") => matches!(
            field,
            "involvedObject.kind"
                | "involvedObject.namespace"
                | "involvedObject.name"
                | "involvedObject.uid"
                | "involvedObject.apiVersion"
                | "involvedObject.resourceVersion"
                | "involvedObject.fieldPath"
                | "reason"
                | "reportingComponent"
                | "source"
                | "type"
        ),
        ("apps", "ReplicaSet") => field == "status.replicas",
        _ => false,
    }
}

/// A field's value as the selector compares it (absent fields compare as empty, booleans as
/// `true`/`false`).
fn field_value(id: ResId, obj: &Value, field: &str) -> String {
    let r = resources::res(id);
    if r.group.is_empty() && r.kind == "Event" && field == "source" {
        return meta::str_at(obj, &["source", "component"])
            .or_else(|| meta::str_at(obj, &["reportingComponent"]))
            .unwrap_or("")
            .to_owned();
    }
    let path: Vec<&str> = field.split('.').collect();
    match at(obj, &path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => match field {
            "spec.hostNetwork" | "spec.unschedulable" => "false".to_owned(),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::POD;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn query_syntax() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "tier notin (back)",
            "app",
            "!missing",
            "app=web,tier=front",
            "n>4",
            "n<6",
            "missing!=x",
            "missing notin (x)",
        ];
        for s in yes {
            let sel = LabelSelector::parse(s).expect(s);
            assert!(sel.matches(Some(&l)), "{s} should match");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "missing",
            "!app",
            "missing in (x)",
            "n>5",
        ];
        for s in no {
            let sel = LabelSelector::parse(s).expect(s);
            assert!(!sel.matches(Some(&l)), "{s} should not match");
        }
        for bad in ["app in (web", "a b", "app=we b", ",", "x in"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn object_form() {
        let sel = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]},
                                 {"key": "gone", "operator": "DoesNotExist"}]
        }))
        .expect("valid");
        assert!(sel.matches(Some(&labels(json!({"app": "web", "tier": "front"})))));
        assert!(!sel.matches(Some(&labels(json!({"app": "web", "tier": "back"})))));
        assert_eq!(sel.render(), "app=web,tier in (front),!gone");
        assert!(
            LabelSelector::from_object(&json!({}))
                .expect("empty")
                .is_empty()
        );
    }

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"},
                         "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", POD).expect("ok");
        assert!(f.matches(POD, &pod));
        let f = FieldSelector::parse("metadata.name==b", POD).expect("ok");
        assert!(!f.matches(POD, &pod));
        let f = FieldSelector::parse("spec.hostNetwork=false", POD).expect("ok");
        assert!(f.matches(POD, &pod));
        let err = FieldSelector::parse("spec.bogus=1", POD).expect_err("unsupported");
        assert_eq!(err, "field label not supported: spec.bogus");
    }
}
