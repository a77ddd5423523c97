//! A colour: the hash of a pod template, and the Deployment that runs it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::Value;

use crate::crd::{COLOUR_LABEL, RAINBOW_LABEL};

/// The characters of a colour: Kubernetes' `pod-template-hash` alphabet (no vowels, so no
/// words; no `0`, `1`, `3` that read as letters).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Written by hand: FNV-1a is a few lines and must never change between releases (a changed
/// hash would make every running colour look like an old one).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes `v` with object keys sorted, so two equal templates hash alike whatever the order
/// their fields arrived in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The colour of a pod template: 10 characters of a hash of its canonical JSON (its `null`
/// fields dropped by the typed round trip, its keys sorted).
pub fn of(template: &PodTemplateSpec) -> String {
    let value = serde_json::to_value(template).unwrap_or(Value::Null);
    let mut text = String::new();
    canonical(&value, &mut text);
    let mut h = fnv1a64(text.as_bytes());
    let base = ALPHABET.len() as u64;
    let mut out = String::with_capacity(10);
    for _ in 0..10 {
        // The index is below 27.
        out.push(char::from(ALPHABET[(h % base) as usize]));
        h /= base;
    }
    out
}

/// The Deployment's name: the RainbowDeployment's and the colour.
pub fn deployment_name(rainbow: &str, colour: &str) -> String {
    format!("{rainbow}-{colour}")
}

/// The colour's labels: the template's, plus the rainbow's and the colour's.
pub fn labels(template: &PodTemplateSpec, rainbow: &str, colour: &str) -> BTreeMap<String, String> {
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(RAINBOW_LABEL.to_owned(), rainbow.to_owned());
    labels.insert(COLOUR_LABEL.to_owned(), colour.to_owned());
    labels
}

/// The colour's Deployment, owned by the RainbowDeployment (so deleting it deletes them).
pub fn deployment(
    template: &PodTemplateSpec,
    rainbow: &str,
    namespace: &str,
    owner: OwnerReference,
    colour: &str,
    replicas: i32,
) -> Deployment {
    let labels = labels(template, rainbow, colour);
    let mut pod = template.clone();
    let meta = pod.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels = Some(labels.clone());
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(rainbow, colour)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (RAINBOW_LABEL.to_owned(), rainbow.to_owned()),
                (COLOUR_LABEL.to_owned(), colour.to_owned()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            },
            template: pod,
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(json: Value) -> PodTemplateSpec {
        serde_json::from_value(json).unwrap_or_default()
    }

    #[test]
    fn equal_templates_share_a_colour_whatever_their_key_order() {
        let a = template(serde_json::json!({
            "metadata": {"labels": {"app": "llm", "tier": "gpu"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]}
        }));
        let b = template(serde_json::json!({
            "spec": {"containers": [{"image": "vllm/vllm-openai:v0.11.0", "name": "vllm"}]},
            "metadata": {"labels": {"tier": "gpu", "app": "llm"}}
        }));
        let c = template(serde_json::json!({
            "metadata": {"labels": {"app": "llm", "tier": "gpu"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.1"}]}
        }));
        assert_eq!(of(&a), of(&b));
        assert_ne!(of(&a), of(&c));
        assert_eq!(of(&a).len(), 10);
        assert!(of(&a).bytes().all(|b| ALPHABET.contains(&b)));
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // A changed hash function would orphan every running colour: this pins it.
        let t = template(serde_json::json!({
            "metadata": {"labels": {"app": "llm"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]}
        }));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut text = String::new();
        canonical(&serde_json::to_value(&t).unwrap_or_default(), &mut text);
        assert_eq!(
            text,
            r#"{"metadata":{"labels":{"app":"llm"}},"spec":{"containers":[{"image":"vllm/vllm-openai:v0.11.0","name":"vllm"}]}}"#
        );
    }

    #[test]
    fn the_deployment_selects_its_colour_only() {
        let t = template(serde_json::json!({
            "metadata": {"labels": {"app": "llm"}},
            "spec": {"containers": [{"name": "vllm", "image": "x"}]}
        }));
        let owner = OwnerReference {
            api_version: "lameduck.io/v1alpha1".into(),
            kind: "RainbowDeployment".into(),
            name: "llm".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let d = deployment(&t, "llm", "ml", owner, "bcdfg", 3);
        let v = serde_json::to_value(&d).unwrap_or_default();
        assert_eq!(v["metadata"]["name"], "llm-bcdfg");
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(
            v["spec"]["selector"]["matchLabels"],
            serde_json::json!({"app": "llm", "lameduck.io/colour": "bcdfg", "lameduck.io/rainbow": "llm"})
        );
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"],
            v["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(v["metadata"]["ownerReferences"][0]["controller"], true);
    }
}
