//! Workloads: the pod templates of every object that runs pods — the built-in kinds and the
//! common workload CRDs (LeaderWorkerSet, Argo Rollouts, Knative and KServe) — typed with
//! `k8s-openapi`, read into the pod model ([`lameduck_pod::PodModel`]), with the paths that
//! let findings and edits point into the object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_pod::{PodModel, Slot};
use serde_json::Value;

use crate::load::Object;

/// The kinds of object that run pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// v1 Pod.
    Pod,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
    /// leaderworkerset.x-k8s.io LeaderWorkerSet: groups of a leader and workers, rolled as
    /// groups.
    LeaderWorkerSet,
    /// argoproj.io Rollout (Argo Rollouts): a Deployment with canary or blue-green steps.
    Rollout,
    /// serving.knative.dev Service: Knative's queue-proxy drains the pod.
    KnativeService,
    /// serving.kserve.io InferenceService.
    InferenceService,
    /// serving.kserve.io ServingRuntime or ClusterServingRuntime: the containers KServe runs
    /// for a model format.
    ServingRuntime,
    /// lameduck.io RainbowDeployment: one Deployment per release of its template, each old
    /// one kept until its gates report no work (`lameduck rainbow`).
    RainbowDeployment,
}

/// How a kind is rolled out and drained, where that differs from a Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Pods behind a load balancer, replaced by a controller: every rule applies.
    Served,
    /// Batch work, not behind a load balancer: no drain rules.
    Batch,
    /// Knative drains through its queue-proxy for the revision's `timeoutSeconds`; the gate
    /// rules do not apply, the timeout does.
    Knative,
}

impl WorkloadKind {
    /// The kind for an object's `apiVersion` and `kind`, if it runs pods.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.split('/').next().unwrap_or("");
        Some(match (group, kind) {
            (_, "Deployment") if !group.contains('.') || group == "apps" => Self::Deployment,
            ("apps", "StatefulSet") => Self::StatefulSet,
            ("apps", "DaemonSet") => Self::DaemonSet,
            ("apps", "ReplicaSet") => Self::ReplicaSet,
            (_, "Pod") if !api_version.contains('/') => Self::Pod,
            ("batch", "Job") => Self::Job,
            ("batch", "CronJob") => Self::CronJob,
            ("leaderworkerset.x-k8s.io", "LeaderWorkerSet") => Self::LeaderWorkerSet,
            ("argoproj.io", "Rollout") => Self::Rollout,
            ("serving.knative.dev", "Service") => Self::KnativeService,
            ("serving.kserve.io", "InferenceService") => Self::InferenceService,
            ("serving.kserve.io", "ServingRuntime" | "ClusterServingRuntime") => {
                Self::ServingRuntime
            }
            ("lameduck.io", "RainbowDeployment") => Self::RainbowDeployment,
            _ => return None,
        })
    }

    /// The pod templates of such an object: (pod spec path, labels path, role).
    fn templates(self, value: &Value) -> Vec<Template> {
        let t = |pod: &str, labels: &str, role: Option<&'static str>| Template {
            pod_path: pod.to_owned(),
            labels_path: labels.to_owned(),
            role,
            model_container: None,
        };
        match self {
            Self::Pod => vec![t("spec", "metadata.labels", None)],
            Self::CronJob => vec![t(
                "spec.jobTemplate.spec.template.spec",
                "spec.jobTemplate.spec.template.metadata.labels",
                None,
            )],
            Self::LeaderWorkerSet => {
                let base = "spec.leaderWorkerTemplate";
                let mut out = Vec::new();
                if value
                    .pointer("/spec/leaderWorkerTemplate/leaderTemplate")
                    .is_some()
                {
                    out.push(t(
                        &format!("{base}.leaderTemplate.spec"),
                        &format!("{base}.leaderTemplate.metadata.labels"),
                        Some("leader"),
                    ));
                }
                out.push(t(
                    &format!("{base}.workerTemplate.spec"),
                    &format!("{base}.workerTemplate.metadata.labels"),
                    Some(if out.is_empty() {
                        "leader and workers"
                    } else {
                        "workers"
                    }),
                ));
                out
            }
            Self::InferenceService => ["predictor", "transformer", "explainer"]
                .into_iter()
                .filter(|c| value.pointer(&format!("/spec/{c}")).is_some())
                .map(|c| {
                    let mut tpl = t(&format!("spec.{c}"), &format!("spec.{c}.labels"), Some(c));
                    // The single-model form: the container is `model` (KServe fills in the
                    // rest from the ServingRuntime).
                    if value.pointer(&format!("/spec/{c}/model")).is_some() {
                        tpl.model_container = Some(format!("spec.{c}.model"));
                    }
                    tpl
                })
                .collect(),
            Self::ServingRuntime => vec![t("spec", "metadata.labels", None)],
            _ => vec![t(
                "spec.template.spec",
                "spec.template.metadata.labels",
                None,
            )],
        }
    }

    /// Whether the object has a `spec.replicas`.
    pub fn has_replicas(self) -> bool {
        matches!(
            self,
            Self::Deployment
                | Self::StatefulSet
                | Self::ReplicaSet
                | Self::LeaderWorkerSet
                | Self::Rollout
                | Self::RainbowDeployment
        )
    }

    /// How it is drained and rolled out.
    pub fn lifecycle(self) -> Lifecycle {
        match self {
            Self::Job | Self::CronJob => Lifecycle::Batch,
            Self::KnativeService => Lifecycle::Knative,
            _ => Lifecycle::Served,
        }
    }
}

/// Where one pod template is in its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Path of the pod spec (`spec.template.spec`).
    pub pod_path: String,
    /// Path of the pods' labels.
    pub labels_path: String,
    /// Which pods of the object it makes, when there are several templates (`leader`).
    pub role: Option<&'static str>,
    /// KServe's single-model form: the path of the one container (`spec.predictor.model`).
    pub model_container: Option<String>,
}

impl Template {
    /// Whether clients reach these pods through a Service: not a LeaderWorkerSet's workers
    /// when it has a leader template (only the leader serves; the group is replaced whole).
    pub fn behind_service(&self) -> bool {
        self.role != Some("workers")
    }
}

/// A pod template of an object, with its pod spec typed and read.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    /// The object.
    pub object: &'a Object,
    /// Its kind.
    pub kind: WorkloadKind,
    /// Which of its templates this is.
    pub template: Template,
    /// The replica count (`spec.replicas`, default 1) where the kind has one; KServe's
    /// `minReplicas`.
    pub replicas: Option<i32>,
    /// The pod spec.
    pub spec: core::PodSpec,
    /// The pod, read.
    pub model: PodModel,
}

/// Why a workload's pod spec could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{col}: {object}: the pod spec at `{path}` is not valid: {source}")]
pub struct SpecError {
    /// The file.
    pub file: String,
    /// Line of the pod spec.
    pub line: usize,
    /// Column of the pod spec.
    pub col: usize,
    /// `kind/name`.
    pub object: String,
    /// The pod spec's path.
    pub path: String,
    /// The cause.
    pub source: serde_json::Error,
}

fn pointer(path: &str) -> String {
    format!("/{}", path.replace('.', "/"))
}

impl<'a> Workload<'a> {
    /// Every pod template of `object`; empty when its kind does not run pods.
    pub fn all(object: &'a Object) -> Vec<Result<Self, SpecError>> {
        let Some(kind) = WorkloadKind::of(&object.api_version, &object.kind) else {
            return Vec::new();
        };
        kind.templates(&object.value)
            .into_iter()
            .map(|template| Self::read(object, kind, template))
            .collect()
    }

    /// The first pod template of `object` (most kinds have one); `None` when its kind does not
    /// run pods.
    pub fn from_object(object: &'a Object) -> Option<Result<Self, SpecError>> {
        Self::all(object).into_iter().next()
    }

    fn read(object: &'a Object, kind: WorkloadKind, template: Template) -> Result<Self, SpecError> {
        let empty = Value::Object(Default::default());
        let raw = object
            .value
            .pointer(&pointer(&template.pod_path))
            .unwrap_or(&empty);
        let err = |source| {
            let pos = object.pos(&template.pod_path);
            SpecError {
                file: object.file.display().to_string(),
                line: pos.line,
                col: pos.col,
                object: object.display_name(),
                path: template.pod_path.clone(),
                source,
            }
        };
        let spec = match &template.model_container {
            // KServe's model form: the model is the one container; the rest of the predictor
            // is the pod spec.
            Some(path) => {
                let mut pod = raw.clone();
                let mut model = object
                    .value
                    .pointer(&pointer(path))
                    .cloned()
                    .unwrap_or_default();
                if let Value::Object(m) = &mut model {
                    m.entry("name").or_insert_with(|| "kserve-container".into());
                    m.retain(|k, _| {
                        !matches!(
                            k.as_str(),
                            "modelFormat"
                                | "runtime"
                                | "storageUri"
                                | "protocolVersion"
                                | "storage"
                        )
                    });
                }
                if let Value::Object(p) = &mut pod {
                    p.insert("containers".into(), Value::Array(vec![model]));
                }
                <core::PodSpec as serde::Deserialize>::deserialize(&pod).map_err(err)?
            }
            None if raw.get("containers").is_none() => {
                let mut pod = raw.clone();
                if let Value::Object(p) = &mut pod {
                    p.insert("containers".into(), Value::Array(Vec::new()));
                }
                <core::PodSpec as serde::Deserialize>::deserialize(&pod).map_err(err)?
            }
            // Deserialized from the borrowed value: no copy of the tree.
            None => <core::PodSpec as serde::Deserialize>::deserialize(raw).map_err(err)?,
        };
        let replicas = match kind {
            WorkloadKind::InferenceService => Some(
                object
                    .value
                    .pointer(&format!("{}/minReplicas", pointer(&template.pod_path)))
                    .and_then(Value::as_i64)
                    .and_then(|r| i32::try_from(r).ok())
                    .unwrap_or(1),
            ),
            k if k.has_replicas() => Some(
                object
                    .value
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .and_then(|r| i32::try_from(r).ok())
                    .unwrap_or(1),
            ),
            _ => None,
        };
        let model = PodModel::new(&spec);
        Ok(Workload {
            object,
            kind,
            template,
            replicas,
            spec,
            model,
        })
    }

    /// The object's name for people, with the template's role when it has several.
    pub fn display_name(&self) -> String {
        match self.template.role {
            Some(role)
                if self.kind == WorkloadKind::LeaderWorkerSet
                    || self.kind == WorkloadKind::InferenceService =>
            {
                format!("{} ({role})", self.object.display_name())
            }
            _ => self.object.display_name(),
        }
    }

    /// Path of the pod spec (`spec.template.spec`).
    pub fn pod_path(&self) -> &str {
        &self.template.pod_path
    }

    /// Path of a container in the object.
    pub fn container_path(&self, slot: Slot) -> String {
        match (&self.template.model_container, slot) {
            (Some(model), Slot::App(0)) => model.clone(),
            _ => format!("{}.{}", self.template.pod_path, slot.path()),
        }
    }

    /// The container at `slot`, as written.
    pub fn container(&self, slot: Slot) -> Option<&core::Container> {
        match slot {
            Slot::App(i) => self.spec.containers.get(i),
            Slot::Sidecar(i) | Slot::Init(i) => self.spec.init_containers.as_ref()?.get(i),
        }
    }

    /// `terminationGracePeriodSeconds`, or the kubelet's default.
    pub fn grace(&self) -> std::time::Duration {
        self.model.grace
    }

    /// Path of `terminationGracePeriodSeconds` (or where it would go).
    pub fn grace_path(&self) -> String {
        format!("{}.terminationGracePeriodSeconds", self.template.pod_path)
    }

    /// The labels its pods get.
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        self.object
            .value
            .pointer(&pointer(&self.template.labels_path))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// The annotations its pods get (the template's `metadata.annotations`; a bare Pod's own).
    pub fn pod_annotations(&self) -> BTreeMap<String, String> {
        let path = match self.template.labels_path.strip_suffix("labels") {
            Some(base) => format!("{base}annotations"),
            None => return BTreeMap::new(),
        };
        string_map(self.object.value.pointer(&pointer(&path)))
    }

    /// The object's own annotations (a Deployment's `metadata.annotations`).
    pub fn object_annotations(&self) -> BTreeMap<String, String> {
        string_map(self.object.value.pointer("/metadata/annotations"))
    }

    /// Rolling-update limits as pod counts: a Deployment's `spec.strategy.rollingUpdate`, a
    /// LeaderWorkerSet's `rolloutStrategy.rollingUpdateConfiguration` (in groups), an Argo
    /// canary's `maxSurge`/`maxUnavailable`. `None` for other kinds, `Recreate`, and blue-green
    /// (which brings the whole new set up before switching).
    pub fn rolling_update(&self) -> Option<RollingUpdate> {
        let v = &self.object.value;
        let (rolling, defaults) = match self.kind {
            WorkloadKind::Deployment => {
                let strategy = v.pointer("/spec/strategy");
                if strategy.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("Recreate")
                {
                    return None;
                }
                (strategy.and_then(|s| s.get("rollingUpdate")), (25, 25))
            }
            WorkloadKind::LeaderWorkerSet => (
                v.pointer("/spec/rolloutStrategy/rollingUpdateConfiguration"),
                // LWS: maxUnavailable 1 group, maxSurge 0 by default.
                (0, -1),
            ),
            WorkloadKind::Rollout => {
                let canary = v.pointer("/spec/strategy/canary")?;
                (Some(canary), (25, 25))
            }
            _ => return None,
        };
        let field = |k: &str| -> Option<IntOrString> {
            rolling
                .and_then(|r| r.get(k))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        let replicas = self.replicas.unwrap_or(1).max(1);
        let surge_field = field("maxSurge");
        let unavailable_field = field("maxUnavailable");
        let scaled_default = |f: Option<&IntOrString>, pct: i32, up: bool| {
            if pct < 0 {
                // A fixed count of one (LWS's maxUnavailable default).
                f.map_or(1, |f| scaled(Some(f), replicas, 0, up))
            } else {
                scaled(f, replicas, pct, up)
            }
        };
        Some(RollingUpdate {
            max_surge: scaled_default(surge_field.as_ref(), defaults.0, true).max(0),
            max_unavailable: scaled_default(unavailable_field.as_ref(), defaults.1, false).max(0),
            surge_set: surge_field.is_some(),
            unavailable_set: unavailable_field.is_some(),
        })
    }

    /// Path of the rollout strategy (where rollout findings point).
    pub fn strategy_path(&self) -> &'static str {
        match self.kind {
            WorkloadKind::LeaderWorkerSet => "spec.rolloutStrategy.rollingUpdateConfiguration",
            WorkloadKind::Rollout => "spec.strategy.canary",
            _ => "spec.strategy.rollingUpdate",
        }
    }
}

/// Rolling-update limits resolved to pod counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingUpdate {
    /// Pods that may exist above `replicas` (maxSurge, rounded up).
    pub max_surge: i32,
    /// Pods that may be unavailable (maxUnavailable, rounded down).
    pub max_unavailable: i32,
    /// Whether maxSurge was written (not the default).
    pub surge_set: bool,
    /// Whether maxUnavailable was written (not the default).
    pub unavailable_set: bool,
}

/// A percentage or count of `replicas`, rounded as the controllers do (rolling-update fields:
/// surge up, unavailable down).
pub fn scaled(v: Option<&IntOrString>, replicas: i32, default_pct: i32, round_up: bool) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i32 = s
                .trim_end_matches('%')
                .trim()
                .parse()
                .unwrap_or(default_pct);
            let x = f64::from(replicas) * f64::from(pct) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
        None => {
            let x = f64::from(replicas) * f64::from(default_pct) / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
    }
}

/// Whether a label selector selects pods with `labels` (an empty selector selects all).
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_exprs = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_exprs
}

/// A map's string entries (an annotation written as a bare YAML number is not a string and the
/// API server would refuse it; it is skipped here rather than losing the other entries).
fn string_map(v: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    v.and_then(serde_json::Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use lameduck_timeline::PreStop;

    use super::*;
    use crate::load::load_str;

    /// The naive pod of the seed articles: no preStop, default grace, one health check.
    const NAIVE: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm}
spec:
  replicas: 4
  template:
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai:latest
          readinessProbe:
            httpGet: {path: /health, port: 8000}
";

    fn workloads(text: &str) -> Vec<(String, String, Vec<String>)> {
        let l = load_str(Path::new("w.yaml"), text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        l.objects
            .iter()
            .flat_map(Workload::all)
            .map(|w| {
                let w = w.expect("spec");
                let names = w.model.containers.iter().map(|c| c.name.clone()).collect();
                (w.display_name(), w.template.pod_path.clone(), names)
            })
            .collect()
    }

    #[test]
    fn naive_pod_has_defaults() {
        let l = load_str(Path::new("w.yaml"), NAIVE);
        let w = Workload::from_object(&l.objects[0])
            .expect("workload")
            .expect("spec");
        assert_eq!(w.replicas, Some(4));
        assert_eq!(w.grace(), Duration::from_secs(30));
        assert_eq!(
            w.object.pos(&w.grace_path()).line,
            7,
            "points at the pod spec"
        );
        let c = &w.model.containers[0];
        assert_eq!(c.termination.pre_stop, PreStop::None);
        assert_eq!(c.engine.map(|(e, _)| e.id), Some("vllm"));
        assert_eq!(w.container_path(c.slot), "spec.template.spec.containers[0]");
    }

    #[test]
    fn every_kind_finds_its_pod_templates() {
        let c = "containers: [{name: c, image: i}]";
        for (api, kind, body, want) in [
            ("v1", "Pod", format!("spec: {{{c}}}"), vec!["spec"]),
            (
                "batch/v1",
                "Job",
                format!("spec: {{template: {{spec: {{{c}}}}}}}"),
                vec!["spec.template.spec"],
            ),
            (
                "batch/v1",
                "CronJob",
                format!(
                    "spec: {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {{spec: {{{c}}}}}}}}}}}"
                ),
                vec!["spec.jobTemplate.spec.template.spec"],
            ),
            (
                "leaderworkerset.x-k8s.io/v1",
                "LeaderWorkerSet",
                format!(
                    "spec: {{leaderWorkerTemplate: {{size: 2, leaderTemplate: {{spec: {{{c}}}}}, workerTemplate: {{spec: {{{c}}}}}}}}}"
                ),
                vec![
                    "spec.leaderWorkerTemplate.leaderTemplate.spec",
                    "spec.leaderWorkerTemplate.workerTemplate.spec",
                ],
            ),
            (
                "argoproj.io/v1alpha1",
                "Rollout",
                format!("spec: {{template: {{spec: {{{c}}}}}}}"),
                vec!["spec.template.spec"],
            ),
            (
                "serving.knative.dev/v1",
                "Service",
                format!("spec: {{template: {{spec: {{{c}}}}}}}"),
                vec!["spec.template.spec"],
            ),
            (
                "serving.kserve.io/v1alpha1",
                "ServingRuntime",
                format!("spec: {{{c}}}"),
                vec!["spec"],
            ),
            (
                "serving.kserve.io/v1beta1",
                "InferenceService",
                "spec: {predictor: {model: {modelFormat: {name: huggingface}, args: [--x]}}}"
                    .to_owned(),
                vec!["spec.predictor"],
            ),
        ] {
            let text = format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\n{body}\n");
            let got = workloads(&text);
            let paths: Vec<&str> = got.iter().map(|(_, p, _)| p.as_str()).collect();
            assert_eq!(paths, want, "{kind}");
            assert!(
                got.iter().all(|(_, _, names)| names.len() == 1),
                "{kind}: {got:?}"
            );
        }
        // A Service is not a workload, a Knative Service is.
        assert!(workloads("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n").is_empty());
    }

    #[test]
    fn kserve_model_container_has_its_own_path() {
        let text = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: m}\nspec:\n  predictor:\n    minReplicas: 2\n    model:\n      modelFormat: {name: huggingface}\n      args: [--model_name=m]\n";
        let l = load_str(Path::new("k.yaml"), text);
        let w = Workload::from_object(&l.objects[0])
            .expect("w")
            .expect("spec");
        assert_eq!(w.replicas, Some(2));
        assert_eq!(w.container_path(Slot::App(0)), "spec.predictor.model");
        assert_eq!(w.display_name(), "InferenceService/m (predictor)");
    }

    #[test]
    fn an_invalid_pod_spec_names_its_position() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: 7\n";
        let l = load_str(Path::new("bad.yaml"), text);
        let e = Workload::from_object(&l.objects[0])
            .expect("workload")
            .expect_err("invalid");
        let msg = e.to_string();
        assert!(msg.starts_with("bad.yaml:4:1: Pod/p"), "{msg}");
    }

    #[test]
    fn rolling_updates_of_each_kind() {
        let lws = "apiVersion: leaderworkerset.x-k8s.io/v1\nkind: LeaderWorkerSet\nmetadata: {name: x}\nspec:\n  replicas: 4\n  leaderWorkerTemplate: {workerTemplate: {spec: {containers: [{name: c, image: i}]}}}\n";
        let l = load_str(Path::new("l.yaml"), lws);
        let w = Workload::from_object(&l.objects[0])
            .expect("w")
            .expect("spec");
        let ru = w.rolling_update().expect("rolling");
        assert_eq!((ru.max_surge, ru.max_unavailable), (0, 1));
        let blue = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: x}\nspec:\n  strategy: {blueGreen: {activeService: a}}\n  template: {spec: {containers: [{name: c, image: i}]}}\n";
        let l = load_str(Path::new("r.yaml"), blue);
        let w = Workload::from_object(&l.objects[0])
            .expect("w")
            .expect("spec");
        assert_eq!(w.rolling_update(), None);
    }
}
