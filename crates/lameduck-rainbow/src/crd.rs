//! The `RainbowDeployment` custom resource (`lameduck.io/v1alpha1`): its Rust type is the one
//! source of its CRD (`lameduck rainbow crd` prints it).

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label every colour's Deployment, and the pods it makes, carry: the template's hash.
pub const COLOUR_LABEL: &str = "lameduck.io/colour";
/// The label naming the RainbowDeployment a colour belongs to.
pub const RAINBOW_LABEL: &str = "lameduck.io/rainbow";

/// One Deployment per release of a pod template (a "colour"); a new colour takes the Services
/// once Ready, and each old colour stays until its own pods' gates report no work in flight
/// for `retirement.quietPeriod` (or `retirement.maxAge` passes), then is scaled to zero and
/// deleted. See docs/rainbow.md.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "lameduck.io",
    version = "v1alpha1",
    kind = "RainbowDeployment",
    namespaced,
    status = "RainbowStatus",
    shortname = "rainbow",
    doc = "One Deployment per release of a pod template; each old one retired when its own gates report no work in flight (docs/rainbow.md)",
    printcolumn = r#"{"name":"Serving","type":"string","jsonPath":".status.serving","description":"The colour the Services select"}"#,
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".status.desired","description":"The colour of spec.template"}"#,
    printcolumn = r#"{"name":"Colours","type":"integer","jsonPath":".status.alive","description":"Colours with a Deployment"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RainbowDeploymentSpec {
    /// Replicas of the current colour (default 1). Old colours keep theirs until retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// The pod template of the release. Its labels select the colour's pods, with
    /// `lameduck.io/rainbow` and `lameduck.io/colour` added; its serving container should run
    /// behind `lameduck gate`, whose `/status` tells the controller what is in flight.
    #[schemars(schema_with = "any_object")]
    pub template: PodTemplateSpec,

    /// Services (in the same namespace) whose selector is moved to the current colour, by
    /// setting `lameduck.io/colour` in it. The rest of their selector is left as it is.
    #[serde(default)]
    pub services: Vec<String>,

    /// An autoscaler per colour, created with it and deleted when it is retired. The
    /// colour's replicas are then the autoscaler's: `replicas` is only where a new colour
    /// starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<Autoscaler>,

    /// When a new colour takes the Services.
    #[serde(default)]
    pub promotion: Promotion,

    /// When an old colour goes.
    #[serde(default)]
    pub retirement: Retirement,
}

/// An autoscaler made for each colour.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaler {
    /// `HorizontalPodAutoscaler` (autoscaling/v2) or `ScaledObject` (KEDA, keda.sh/v1alpha1).
    pub kind: AutoscalerKind,
    /// Its spec, without `scaleTargetRef` (the colour's Deployment is filled in); in its
    /// strings, `$(DEPLOYMENT)` and `$(COLOUR)` become the colour's Deployment name and colour.
    #[schemars(schema_with = "any_object")]
    pub spec: serde_json::Value,
}

/// The autoscalers a colour can have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq)]
pub enum AutoscalerKind {
    /// autoscaling/v2 HorizontalPodAutoscaler.
    HorizontalPodAutoscaler,
    /// KEDA's keda.sh/v1alpha1 ScaledObject (it may scale a colour to zero).
    ScaledObject,
}

impl AutoscalerKind {
    /// (group, version, kind, plural).
    pub fn resource(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            AutoscalerKind::HorizontalPodAutoscaler => (
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            AutoscalerKind::ScaledObject => {
                ("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")
            }
        }
    }
}

/// When a new colour takes the Services.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The fraction of the colour's replicas that must be Ready (0 < f ≤ 1; default 1: all).
    #[serde(default = "one")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ready_fraction: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion {
            ready_fraction: 1.0,
        }
    }
}

/// When an old colour goes: whichever comes first.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retirement {
    /// How long every gate of the colour must report nothing in flight (default `30s`).
    #[serde(default = "quiet")]
    pub quiet_period: String,

    /// The longest an old colour is kept after it lost the Services, work or not (default
    /// `24h`; `0` never retires it by age).
    #[serde(default = "max_age")]
    pub max_age: String,
}

fn quiet() -> String {
    "30s".to_owned()
}

fn max_age() -> String {
    "24h".to_owned()
}

impl Default for Retirement {
    fn default() -> Self {
        Retirement {
            quiet_period: quiet(),
            max_age: max_age(),
        }
    }
}

/// What the controller saw and did, per colour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RainbowStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The colour of `spec.template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// The colour the Services select (new requests go there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// How many colours have a Deployment.
    #[serde(default)]
    pub alive: i32,
    /// Every colour with a Deployment, newest first.
    #[serde(default)]
    pub colours: Vec<ColourStatus>,
    /// Why the last reconcile could not do all it meant to, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One colour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ColourStatus {
    /// The template hash.
    pub colour: String,
    /// Its Deployment.
    pub deployment: String,
    /// `Starting`, `Serving`, `Draining`, `Quiet` or `Retiring`.
    pub phase: String,
    /// Why it is still there, in words.
    pub message: String,
    /// The Deployment's `spec.replicas`.
    pub replicas: i32,
    /// Its Ready pods.
    pub ready_replicas: i32,
    /// Requests, streams and connections in flight on its gates (absent when a gate did not
    /// answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<i64>,
    /// When its Deployment was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it lost the Services (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<String>,
    /// Since when every gate has reported nothing in flight (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<String>,
    /// Why it is being retired: `quiet` or `maxAge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<String>,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // The pod template is the Pod API's own; the API server checks it when the colour's
    // Deployment is created. Embedding its full schema would make the CRD several hundred
    // kilobytes, past what `kubectl apply` can keep in its last-applied annotation.
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A `spec` whose durations and fraction do not parse or make sense.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A duration field.
    #[error("spec.retirement.{field}: {reason}")]
    Duration {
        /// `quietPeriod` or `maxAge`.
        field: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// `spec.promotion.readyFraction` outside (0, 1].
    #[error("spec.promotion.readyFraction must be more than 0 and at most 1, not {0}")]
    Fraction(f64),
    /// Negative replicas.
    #[error("spec.replicas must not be negative, not {0}")]
    Replicas(i32),
}

/// The spec's settings, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Replicas of the current colour.
    pub replicas: i32,
    /// Fraction of them Ready before the Services move.
    pub ready_fraction: f64,
    /// The quiet period.
    pub quiet: Duration,
    /// The longest an old colour stays; `None`: no limit.
    pub max_age: Option<Duration>,
    /// An autoscaler owns the colours' replicas: `replicas` only starts a new colour.
    pub autoscaled: bool,
}

impl RainbowDeploymentSpec {
    /// The settings, checked.
    pub fn settings(&self) -> Result<Settings, SpecError> {
        let parse = |field: &'static str, v: &str| {
            lameduck_timeline::duration::parse_duration(v).map_err(|e| SpecError::Duration {
                field,
                reason: e.to_string(),
            })
        };
        let replicas = self.replicas.unwrap_or(1);
        if replicas < 0 {
            return Err(SpecError::Replicas(replicas));
        }
        let f = self.promotion.ready_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(SpecError::Fraction(f));
        }
        let max_age = parse("maxAge", &self.retirement.max_age)?;
        Ok(Settings {
            replicas,
            ready_fraction: f,
            quiet: parse("quietPeriod", &self.retirement.quiet_period)?,
            max_age: (!max_age.is_zero()).then_some(max_age),
            autoscaled: self.autoscaler.is_some(),
        })
    }
}

/// The CustomResourceDefinition, as YAML (what `lameduck rainbow crd` prints).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let value = serde_json::to_value(RainbowDeployment::crd()).unwrap_or_default();
    to_yaml(&value)
}

/// A JSON value as a YAML document, block style.
pub fn to_yaml(value: &serde_json::Value) -> String {
    fn convert(v: &serde_json::Value) -> saphyr::Yaml<'static> {
        use saphyr::{Scalar, Yaml};
        match v {
            serde_json::Value::Null => Yaml::Value(Scalar::Null),
            serde_json::Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Value(Scalar::Integer(i)),
                None => Yaml::Value(Scalar::FloatingPoint(ordered_float::OrderedFloat(
                    n.as_f64().unwrap_or_default(),
                ))),
            },
            serde_json::Value::String(s) => Yaml::Value(Scalar::String(s.clone().into())),
            serde_json::Value::Array(a) => Yaml::Sequence(a.iter().map(convert).collect()),
            serde_json::Value::Object(m) => Yaml::Mapping(
                m.iter()
                    .map(|(k, v)| (Yaml::Value(Scalar::String(k.clone().into())), convert(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    let doc = convert(value);
    let mut emitter = saphyr::YamlEmitter::new(&mut out);
    emitter.multiline(true);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&doc);
    out.push('\n');
    out
}
