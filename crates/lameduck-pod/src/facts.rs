//! What is known about a pod beyond its containers: how long its requests may run and whether
//! it runs on spot capacity. Read from annotations and the pod spec, so a live Pod and a
//! manifest's pod template give the same answers.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::PodModel;

/// Annotation: the longest request the workload serves, in seconds or with a unit.
pub const MAX_REQUEST_ANNOTATION: &str = "lameduck.io/max-request-seconds";
/// Annotation: the spot provider (`aws`, `gcp`, `azure`).
pub const SPOT_ANNOTATION: &str = "lameduck.io/spot";
/// Request length assumed for an inference server when nothing says otherwise.
pub const ASSUMED_INFERENCE_REQUEST: Duration = crate::engines::ASSUMED_GENERATION;

/// The annotations that speak for a pod, first match wins: the pod's own (a live Pod's, or a
/// manifest's pod template), then its workload's (the Deployment's own metadata), so the
/// annotation may sit on either and a live Pod created from a template reads the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct Annotations<'a> {
    /// The pod's (or pod template's) annotations.
    pub pod: Option<&'a BTreeMap<String, String>>,
    /// The owning workload's annotations, where known.
    pub workload: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Annotations<'a> {
    /// The annotations of a pod's metadata alone (a live Pod).
    pub fn of(meta: &'a ObjectMeta) -> Self {
        Annotations {
            pod: meta.annotations.as_ref(),
            workload: None,
        }
    }

    /// One annotation's value, the pod's own first.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        [self.pod, self.workload]
            .into_iter()
            .flatten()
            .find_map(|m| m.get(key))
            .map(String::as_str)
    }
}

/// Where a workload's max request duration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRequestSource {
    /// The `lameduck.io/max-request-seconds` annotation.
    Annotation,
    /// The `--max-request` flag.
    Flag,
    /// Assumed: the workload looks like an inference server.
    Assumed,
}

impl MaxRequestSource {
    /// Where the figure came from, for messages.
    pub fn describe(self) -> String {
        match self {
            MaxRequestSource::Annotation => format!("its `{MAX_REQUEST_ANNOTATION}` annotation"),
            MaxRequestSource::Flag => "--max-request".into(),
            MaxRequestSource::Assumed => "assumed for an inference server".into(),
        }
    }
}

/// The pod's max request duration and where it came from, if known: the annotation, else the
/// flag, else what its engine serves (an embedding server's requests are short; a GPU without
/// a known engine is assumed to generate).
pub fn max_request(
    annotations: Annotations<'_>,
    model: &PodModel,
    flag: Option<Duration>,
) -> Option<(Duration, MaxRequestSource)> {
    if let Some(v) = annotations.get(MAX_REQUEST_ANNOTATION)
        && let Ok(d) = lameduck_timeline::parse_duration(v)
    {
        return Some((d, MaxRequestSource::Annotation));
    }
    if let Some(d) = flag {
        return Some((d, MaxRequestSource::Flag));
    }
    let assumed = match model.engine() {
        Some(e) => e.work.assumed_request(),
        None if model.inference() => ASSUMED_INFERENCE_REQUEST,
        None => return None,
    };
    Some((assumed, MaxRequestSource::Assumed))
}

/// [`max_request`] with its source in words (naming the engine when it was assumed).
pub fn max_request_described(
    annotations: Annotations<'_>,
    model: &PodModel,
    flag: Option<Duration>,
) -> Option<(Duration, String)> {
    let (d, source) = max_request(annotations, model, flag)?;
    let from = match (source, model.engine()) {
        (MaxRequestSource::Assumed, Some(e)) => format!("assumed for {}", e.name),
        (s, _) => s.describe(),
    };
    Some((d, from))
}

/// Kept between the pods' deadline and the moment their node goes, for ending streams,
/// stopping engines and the API calls that remove the pods (`lameduck agent --margin`).
pub const NOTICE_MARGIN: Duration = Duration::from_secs(5);

/// The taint `lameduck agent` puts on a node whose instance is being reclaimed.
pub const RECLAIMED_TAINT: &str = "lameduck.io/reclaimed";

/// A spot provider and its termination notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spot {
    /// AWS: a two-minute interruption notice.
    Aws,
    /// GCP: 30 s before preemption.
    Gcp,
    /// Azure: at least 30 s (Scheduled Events `Preempt`).
    Azure,
}

impl Spot {
    /// The notice the provider gives.
    pub fn notice(self) -> Duration {
        match self {
            Spot::Aws => Duration::from_secs(120),
            Spot::Gcp | Spot::Azure => Duration::from_secs(30),
        }
    }

    /// The time the node's pods get to terminate: the notice, except on GCP, where GKE's
    /// graceful node shutdown gives regular pods 15 s of the 30 s (the rest is for
    /// system-critical pods).
    pub fn pod_window(self) -> Duration {
        match self {
            Spot::Gcp => Duration::from_secs(15),
            Spot::Aws | Spot::Azure => self.notice(),
        }
    }

    /// Whether the node is drained through the Eviction API (AWS's termination handler, AKS),
    /// rather than by the kubelet's own node shutdown (GKE), which ignores the PDB.
    pub fn evicts(self) -> bool {
        !matches!(self, Spot::Gcp)
    }

    /// The provider's name.
    pub fn name(self) -> &'static str {
        match self {
            Spot::Aws => "AWS",
            Spot::Gcp => "GCP",
            Spot::Azure => "Azure",
        }
    }

    /// The provider a node label says the node's capacity comes from.
    pub fn from_node_label(key: &str, value: &str) -> Option<Spot> {
        let v = value.to_ascii_lowercase();
        match key {
            "karpenter.sh/capacity-type" if v == "spot" => Some(Spot::Aws),
            "eks.amazonaws.com/capacityType" if v == "spot" => Some(Spot::Aws),
            "node.kubernetes.io/lifecycle" if v == "spot" => Some(Spot::Aws),
            "cloud.google.com/gke-spot" | "cloud.google.com/gke-preemptible" if v == "true" => {
                Some(Spot::Gcp)
            }
            "kubernetes.azure.com/scalesetpriority" if v == "spot" => Some(Spot::Azure),
            _ => None,
        }
    }
}

/// The spot provider the pod is scheduled on, from the annotation or known node labels in
/// nodeSelector, required node affinity or tolerations.
pub fn spot(annotations: Annotations<'_>, spec: &core::PodSpec) -> Option<Spot> {
    match annotations.get(SPOT_ANNOTATION) {
        Some("aws") => return Some(Spot::Aws),
        Some("gcp") => return Some(Spot::Gcp),
        Some("azure") => return Some(Spot::Azure),
        _ => {}
    }
    let from_selector = spec
        .node_selector
        .iter()
        .flatten()
        .find_map(|(k, v)| Spot::from_node_label(k, v));
    let from_affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flat_map(|r| &r.node_selector_terms)
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find_map(|e| {
            e.values
                .iter()
                .flatten()
                .find_map(|v| Spot::from_node_label(&e.key, v))
        });
    let from_tolerations = spec.tolerations.iter().flatten().find_map(|t| {
        Spot::from_node_label(t.key.as_deref()?, t.value.as_deref().unwrap_or("true"))
    });
    from_selector.or(from_affinity).or(from_tolerations)
}

/// Everything lameduck reads from one pod, in one value: what `lint`, `inject`, `plan`,
/// `rehearse` and the fleet tools decide from.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// The containers, the serving one, the gate, the grace period.
    pub model: PodModel,
    /// The longest request, if known, and where that came from.
    pub max_request: Option<(Duration, MaxRequestSource)>,
    /// The spot provider, if the pod runs on spot capacity.
    pub spot: Option<Spot>,
}

impl PodFacts {
    /// Read a pod: its metadata's annotations (with its workload's, for a template) and spec.
    pub fn read(annotations: Annotations<'_>, spec: &core::PodSpec) -> PodFacts {
        let model = PodModel::new(spec);
        PodFacts {
            max_request: max_request(annotations, &model, None),
            spot: spot(annotations, spec),
            model,
        }
    }

    /// Read a live Pod (its spec may be missing in a partial object: then an empty one).
    pub fn of_pod(pod: &core::Pod) -> PodFacts {
        let empty = core::PodSpec::default();
        PodFacts::read(
            Annotations::of(&pod.metadata),
            pod.spec.as_ref().unwrap_or(&empty),
        )
    }

    /// Whether the gate fronts the pod.
    pub fn gated(&self) -> bool {
        self.model.gated()
    }
}
