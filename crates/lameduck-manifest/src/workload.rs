//! Workloads: the pod template of any object that runs pods, typed with `k8s-openapi`, and
//! each container's termination timeline in [`lameduck_timeline`] terms.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lameduck_timeline::{PreStop, Probe, Termination, parse_duration};

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
}

impl WorkloadKind {
    /// The kind for an object's `kind`, if it runs pods.
    pub fn of(kind: &str) -> Option<Self> {
        Some(match kind {
            "Deployment" => Self::Deployment,
            "StatefulSet" => Self::StatefulSet,
            "DaemonSet" => Self::DaemonSet,
            "ReplicaSet" => Self::ReplicaSet,
            "Pod" => Self::Pod,
            "Job" => Self::Job,
            "CronJob" => Self::CronJob,
            _ => return None,
        })
    }

    /// Where the pod spec is in such an object.
    pub fn pod_path(self) -> &'static str {
        match self {
            Self::Pod => "spec",
            Self::CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }

    /// Whether the object has a `spec.replicas`.
    pub fn has_replicas(self) -> bool {
        matches!(
            self,
            Self::Deployment | Self::StatefulSet | Self::ReplicaSet
        )
    }
}

/// An object that runs pods, with its pod spec typed.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    /// The object.
    pub object: &'a Object,
    /// Its kind.
    pub kind: WorkloadKind,
    /// `spec.replicas` (default 1) where the kind has it.
    pub replicas: Option<i32>,
    /// The pod spec.
    pub spec: core::PodSpec,
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
    pub path: &'static str,
    /// The cause.
    pub source: serde_json::Error,
}

impl<'a> Workload<'a> {
    /// The workload view of `object`; `None` when its kind does not run pods.
    pub fn from_object(object: &'a Object) -> Option<Result<Self, SpecError>> {
        let kind = WorkloadKind::of(&object.kind)?;
        let path = kind.pod_path();
        let pointer = format!("/{}", path.replace('.', "/"));
        let empty = serde_json::Value::Object(Default::default());
        let raw = object.value.pointer(&pointer).unwrap_or(&empty);
        // Deserialized from the borrowed value: no copy of the tree.
        let spec = match <core::PodSpec as serde::Deserialize>::deserialize(raw) {
            Ok(s) => s,
            Err(source) => {
                let pos = object.pos(path);
                return Some(Err(SpecError {
                    file: object.file.display().to_string(),
                    line: pos.line,
                    col: pos.col,
                    object: object.display_name(),
                    path,
                    source,
                }));
            }
        };
        let replicas = kind.has_replicas().then(|| {
            object
                .value
                .pointer("/spec/replicas")
                .and_then(serde_json::Value::as_i64)
                .and_then(|r| i32::try_from(r).ok())
                .unwrap_or(1)
        });
        Some(Ok(Workload {
            object,
            kind,
            replicas,
            spec,
        }))
    }

    /// `terminationGracePeriodSeconds`, or the kubelet's default.
    pub fn grace(&self) -> Duration {
        self.spec
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(lameduck_timeline::DEFAULT_GRACE, Duration::from_secs)
    }

    /// Path of `terminationGracePeriodSeconds` (or where it would go).
    pub fn grace_path(&self) -> String {
        format!("{}.terminationGracePeriodSeconds", self.kind.pod_path())
    }

    /// The labels its pods get (a Pod's own labels, else the template's).
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        let pointer = match self.kind {
            WorkloadKind::Pod => "/metadata/labels".to_owned(),
            k => format!(
                "/{}/metadata/labels",
                k.pod_path().trim_end_matches(".spec").replace('.', "/")
            ),
        };
        self.object
            .value
            .pointer(&pointer)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// A Deployment's rolling-update limits as pod counts (`None` for other kinds and for the
    /// `Recreate` strategy).
    pub fn rolling_update(&self) -> Option<RollingUpdate> {
        if self.kind != WorkloadKind::Deployment {
            return None;
        }
        let strategy = self.object.value.pointer("/spec/strategy");
        if strategy
            .and_then(|s| s.get("type"))
            .and_then(|t| t.as_str())
            == Some("Recreate")
        {
            return None;
        }
        let rolling = strategy.and_then(|s| s.get("rollingUpdate"));
        let field = |k: &str| -> Option<IntOrString> {
            rolling
                .and_then(|r| r.get(k))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        let replicas = self.replicas.unwrap_or(1).max(1);
        let surge_field = field("maxSurge");
        let unavailable_field = field("maxUnavailable");
        Some(RollingUpdate {
            max_surge: scaled(surge_field.as_ref(), replicas, 25, true).max(0),
            max_unavailable: scaled(unavailable_field.as_ref(), replicas, 25, false).max(0),
            surge_set: surge_field.is_some(),
            unavailable_set: unavailable_field.is_some(),
        })
    }

    /// Every long-running container: the app containers, then native sidecars (init containers
    /// with `restartPolicy: Always`).
    pub fn containers(&self) -> Vec<ContainerTimeline> {
        let grace = self.grace();
        let pod = self.kind.pod_path();
        let apps =
            self.spec.containers.iter().enumerate().map(|(i, c)| {
                ContainerTimeline::of(c, format!("{pod}.containers[{i}]"), false, grace)
            });
        let sidecars = self
            .spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| {
                ContainerTimeline::of(c, format!("{pod}.initContainers[{i}]"), true, grace)
            });
        apps.chain(sidecars).collect()
    }
}

/// A Deployment's `spec.strategy.rollingUpdate`, resolved to pod counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingUpdate {
    /// Pods that may exist above `replicas` (maxSurge, rounded up).
    pub max_surge: i32,
    /// Pods that may be unavailable (maxUnavailable, rounded down).
    pub max_unavailable: i32,
    /// Whether maxSurge was written (not the 25% default).
    pub surge_set: bool,
    /// Whether maxUnavailable was written (not the 25% default).
    pub unavailable_set: bool,
}

/// A percentage or count of `replicas` (rolling-update fields), rounded as the controller does.
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

/// One container's part in the pod's termination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTimeline {
    /// The container's name.
    pub name: String,
    /// Its path in the object (`spec.template.spec.containers[0]`).
    pub path: String,
    /// A native sidecar (SIGTERM only after every app container exited).
    pub sidecar: bool,
    /// Grace period and preStop.
    pub termination: Termination,
    /// Readiness probe timing.
    pub readiness: Option<Probe>,
    /// Liveness probe timing.
    pub liveness: Option<Probe>,
    /// Startup probe timing.
    pub startup: Option<Probe>,
}

impl ContainerTimeline {
    fn of(c: &core::Container, path: String, sidecar: bool, grace: Duration) -> Self {
        ContainerTimeline {
            name: c.name.clone(),
            path,
            sidecar,
            termination: Termination {
                grace,
                pre_stop: pre_stop(c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())),
            },
            readiness: c.readiness_probe.as_ref().map(probe),
            liveness: c.liveness_probe.as_ref().map(probe),
            startup: c.startup_probe.as_ref().map(probe),
        }
    }
}

/// A preStop handler in timeline terms.
pub fn pre_stop(handler: Option<&core::LifecycleHandler>) -> PreStop {
    let Some(h) = handler else {
        return PreStop::None;
    };
    if let Some(sleep) = &h.sleep {
        return PreStop::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        ));
    }
    if let Some(exec) = &h.exec {
        let cmd = exec.command.as_deref().unwrap_or_default();
        return PreStop::Exec {
            sleep: sleep_in_command(cmd),
        };
    }
    if h.http_get.is_some() {
        return PreStop::HttpGet { expected: None };
    }
    // tcpSocket is deprecated and does nothing useful as a hook.
    PreStop::None
}

/// The total of the `sleep N` steps in a command (`["sh", "-c", "touch /tmp/x && sleep 15"]`,
/// `["/bin/sleep", "15"]`), or `None` when there is none. GNU `sleep`'s units (`s`, `m`, `h`)
/// are understood.
pub fn sleep_in_command(command: &[String]) -> Option<Duration> {
    let text = command.join(" ");
    let tokens: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(' | ')' | '"' | '\''))
        .filter(|t| !t.is_empty())
        .collect();
    let mut total: Option<Duration> = None;
    for pair in tokens.windows(2) {
        let is_sleep = pair[0].rsplit('/').next() == Some("sleep");
        if is_sleep && let Ok(d) = parse_duration(pair[1]) {
            total = Some(total.unwrap_or_default() + d);
        }
    }
    total
}

/// A probe's timing, with Kubernetes' defaults for missing fields.
pub fn probe(p: &core::Probe) -> Probe {
    // The API server defaults a zero period, timeout or threshold as if it were unset.
    let secs = |v: Option<i32>, default: u64| {
        v.and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0 || default == 0)
            .map_or(Duration::from_secs(default), Duration::from_secs)
    };
    let count = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(default)
    };
    Probe {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10),
        timeout: secs(p.timeout_seconds, 1),
        success_threshold: count(p.success_threshold, 1),
        failure_threshold: count(p.failure_threshold, 3),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    /// The shell pattern: marker file + sleep, drain-aware readiness, long grace.
    const SHELL: &str = "\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: vllm}
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 180
      containers:
        - name: vllm
          image: vllm/vllm-openai:latest
          lifecycle:
            preStop:
              exec:
                command: [\"/bin/sh\", \"-c\", \"touch /tmp/draining && sleep 15\"]
          readinessProbe:
            exec: {command: [\"/bin/sh\", \"-c\", \"test ! -f /tmp/draining\"]}
            periodSeconds: 2
            failureThreshold: 1
          livenessProbe:
            httpGet: {path: /health, port: 8000}
            periodSeconds: 20
      initContainers:
        - name: gate
          image: lameduck
          restartPolicy: Always
          lifecycle:
            preStop:
              sleep: {seconds: 5}
        - name: setup
          image: busybox
";

    fn workload(text: &str) -> Vec<ContainerTimeline> {
        let l = load_str(Path::new("w.yaml"), text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let w = Workload::from_object(&l.objects[0])
            .expect("workload")
            .expect("spec");
        w.containers()
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
        let c = &w.containers()[0];
        assert_eq!(c.termination.pre_stop, PreStop::None);
        assert_eq!(c.termination.sigterm_at(), Duration::ZERO);
        let r = c.readiness.expect("readiness");
        assert_eq!(
            (r.period, r.failure_threshold),
            (Duration::from_secs(10), 3)
        );
        assert_eq!(c.liveness, None);
        assert_eq!(c.path, "spec.template.spec.containers[0]");
    }

    #[test]
    fn shell_pattern_and_native_sidecars() {
        let cs = workload(SHELL);
        assert_eq!(cs.len(), 2, "the plain init container is not long-running");
        let app = &cs[0];
        assert_eq!(app.termination.grace, Duration::from_secs(180));
        assert_eq!(
            app.termination.pre_stop,
            PreStop::Exec {
                sleep: Some(Duration::from_secs(15))
            }
        );
        assert_eq!(app.termination.after_sigterm(), Duration::from_secs(165));
        assert_eq!(
            app.readiness.map(|p| p.time_to_fail()),
            Some(Duration::from_secs(2))
        );
        let gate = &cs[1];
        assert!(gate.sidecar);
        assert_eq!(gate.path, "spec.template.spec.initContainers[0]");
        assert_eq!(
            gate.termination.pre_stop,
            PreStop::Sleep(Duration::from_secs(5))
        );
    }

    #[test]
    fn sleeps_in_commands() {
        let s = |v: &[&str]| sleep_in_command(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["/bin/sleep", "15"]), Some(Duration::from_secs(15)));
        assert_eq!(
            s(&[
                "sh",
                "-c",
                "sleep 5; curl -s localhost:9901/drain; sleep 2m"
            ]),
            Some(Duration::from_secs(125))
        );
        assert_eq!(s(&["sh", "-c", "kill -TERM 1"]), None);
        assert_eq!(s(&["sh", "-c", "sleep $DELAY"]), None);
    }

    #[test]
    fn every_kind_finds_its_pod_spec() {
        for (kind, api, wrap) in [
            ("Pod", "v1", "spec:\n  containers: [{name: c, image: i}]\n"),
            (
                "Job",
                "batch/v1",
                "spec:\n  template:\n    spec:\n      containers: [{name: c, image: i}]\n",
            ),
            (
                "CronJob",
                "batch/v1",
                "spec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers: [{name: c, image: i}]\n",
            ),
            (
                "DaemonSet",
                "apps/v1",
                "spec:\n  template:\n    spec:\n      containers: [{name: c, image: i}]\n",
            ),
        ] {
            let text = format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x}}\n{wrap}");
            let cs = workload(&text);
            assert_eq!(cs.len(), 1, "{kind}");
            assert_eq!(cs[0].name, "c", "{kind}");
        }
        let l = load_str(
            Path::new("s.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        );
        assert!(Workload::from_object(&l.objects[0]).is_none());
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
}
