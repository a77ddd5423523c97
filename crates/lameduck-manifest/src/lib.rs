//! Kubernetes manifests read with exact positions, and resolved into the terms of the
//! timeline model.
//!
//! - [`load`]: files, directories and stdin; multi-document streams and `List` objects; every
//!   node's `line:column` kept by path.
//! - [`workload`]: the pod templates of every object that runs pods (the built-in kinds,
//!   LeaderWorkerSet, Argo Rollouts, Knative and KServe), typed with `k8s-openapi` and read
//!   into the pod model ([`lameduck_pod::PodModel`]), with paths into the object.
//! - [`facts`]: what is known beyond the spec: request length, inference engine, spot
//!   capacity, the gate.
//!
//! The Kubernetes API version is chosen by the binary (one `k8s-openapi` version feature).

pub mod edit;
pub mod facts;
pub mod lenient;
pub mod load;
pub mod workload;
mod yaml;

pub use edit::{EditError, Editor};
pub use load::{
    LoadError, Loaded, Object, Pos, Positions, Sink, load_paths, load_str, load_string, read_paths,
    read_string,
};
pub use workload::{Lifecycle, Template, Workload, WorkloadKind};
