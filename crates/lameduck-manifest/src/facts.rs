//! What is known about a workload beyond its spec, read by the pod model's
//! [`lameduck_pod::facts`] from the workload's pod template and its own annotations.

use std::collections::BTreeMap;
use std::time::Duration;

pub use lameduck_pod::facts::{
    ASSUMED_INFERENCE_REQUEST, Annotations, MAX_REQUEST_ANNOTATION, MaxRequestSource,
    NOTICE_MARGIN, PodFacts, SPOT_ANNOTATION, Spot,
};

use crate::Workload;

/// The annotations that speak for the workload's pods: the template's, then the object's.
pub struct WorkloadAnnotations {
    pod: BTreeMap<String, String>,
    object: BTreeMap<String, String>,
}

impl WorkloadAnnotations {
    /// Read them from the workload.
    pub fn of(w: &Workload<'_>) -> Self {
        WorkloadAnnotations {
            pod: w.pod_annotations(),
            object: w.object_annotations(),
        }
    }

    /// In the pod model's terms.
    pub fn view(&self) -> Annotations<'_> {
        Annotations {
            pod: Some(&self.pod),
            workload: Some(&self.object),
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
    lameduck_pod::facts::max_request(WorkloadAnnotations::of(w).view(), &w.model, flag)
}

/// The workload's max request duration with where it came from, in words.
pub fn max_request_described(
    w: &Workload<'_>,
    flag: Option<Duration>,
) -> Option<(Duration, String)> {
    lameduck_pod::facts::max_request_described(WorkloadAnnotations::of(w).view(), &w.model, flag)
}

/// The spot provider the workload is scheduled on.
pub fn spot(w: &Workload<'_>) -> Option<Spot> {
    lameduck_pod::facts::spot(WorkloadAnnotations::of(w).view(), &w.spec)
}

/// All the pod facts of the workload's template.
pub fn pod_facts(w: &Workload<'_>) -> PodFacts {
    PodFacts::read(WorkloadAnnotations::of(w).view(), &w.spec)
}
