//! What is known about a workload beyond its spec: how long its requests may run, whether it
//! is an inference server, whether it runs on spot capacity, whether the gate fronts it.

use std::time::Duration;

use crate::Workload;

/// Annotation: the longest request the workload serves, in seconds or with a unit.
pub const MAX_REQUEST_ANNOTATION: &str = "lameduck.io/max-request-seconds";
/// Annotation: the spot provider (`aws`, `gcp`, `azure`).
pub const SPOT_ANNOTATION: &str = "lameduck.io/spot";
/// Request length assumed for an inference server when nothing says otherwise.
pub const ASSUMED_INFERENCE_REQUEST: Duration = lameduck_pod::engines::ASSUMED_GENERATION;

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

/// The workload's max request duration with where it came from, in words (naming the engine
/// when it was assumed).
pub fn max_request_described(
    w: &Workload<'_>,
    flag: Option<Duration>,
) -> Option<(Duration, String)> {
    let (d, source) = max_request(w, flag)?;
    let from = match (source, w.model.engine()) {
        (MaxRequestSource::Assumed, Some(e)) => format!("assumed for {}", e.name),
        (s, _) => s.describe(),
    };
    Some((d, from))
}

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
}

/// Whether the gate fronts the workload (in any container, init containers included).
pub fn gated(w: &Workload<'_>) -> bool {
    w.model.gated()
}

/// The workload's max request duration and where it came from, if known.
pub fn max_request(
    w: &Workload<'_>,
    flag: Option<Duration>,
) -> Option<(Duration, MaxRequestSource)> {
    if let Some(v) = w.object.annotation(MAX_REQUEST_ANNOTATION)
        && let Ok(d) = lameduck_timeline::parse_duration(v)
    {
        return Some((d, MaxRequestSource::Annotation));
    }
    if let Some(d) = flag {
        return Some((d, MaxRequestSource::Flag));
    }
    // What the engine serves decides the assumption (an embedding server's requests are
    // short); a GPU without a known engine is assumed to generate.
    let assumed = match w.model.engine() {
        Some(e) => e.work.assumed_request(),
        None if w.model.inference() => ASSUMED_INFERENCE_REQUEST,
        None => return None,
    };
    Some((assumed, MaxRequestSource::Assumed))
}

/// The spot provider the workload is scheduled on, from the annotation or known node labels in
/// nodeSelector, node affinity or tolerations.
pub fn spot(w: &Workload<'_>) -> Option<Spot> {
    match w.object.annotation(SPOT_ANNOTATION) {
        Some("aws") => return Some(Spot::Aws),
        Some("gcp") => return Some(Spot::Gcp),
        Some("azure") => return Some(Spot::Azure),
        _ => {}
    }
    let label = |k: &str, v: &str| -> Option<Spot> {
        let v = v.to_ascii_lowercase();
        match k {
            "karpenter.sh/capacity-type" if v == "spot" => Some(Spot::Aws),
            "eks.amazonaws.com/capacityType" if v == "spot" => Some(Spot::Aws),
            "node.kubernetes.io/lifecycle" if v == "spot" => Some(Spot::Aws),
            "cloud.google.com/gke-spot" | "cloud.google.com/gke-preemptible" if v == "true" => {
                Some(Spot::Gcp)
            }
            "kubernetes.azure.com/scalesetpriority" if v == "spot" => Some(Spot::Azure),
            _ => None,
        }
    };
    let spec = &w.spec;
    let from_selector = spec
        .node_selector
        .iter()
        .flatten()
        .find_map(|(k, v)| label(k, v));
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
        .find_map(|e| e.values.iter().flatten().find_map(|v| label(&e.key, v)));
    let from_tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .find_map(|t| label(t.key.as_deref()?, t.value.as_deref().unwrap_or("true")));
    from_selector.or(from_affinity).or(from_tolerations)
}
