//! Kubernetes manifests read with exact positions, and resolved into the terms of the
//! timeline model.
//!
//! - [`load`]: files, directories and stdin; multi-document streams and `List` objects; every
//!   node's `line:column` kept by path.
//! - [`workload`]: the pod template of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod,
//!   Job or CronJob, typed with `k8s-openapi`, and each container's termination timeline
//!   (grace period, preStop, probes) as [`lameduck_timeline`] types.
//! - [`facts`]: what is known beyond the spec: request length, inference engine, spot
//!   capacity, the gate.
//!
//! The Kubernetes API version is chosen by the binary (one `k8s-openapi` version feature).

pub mod edit;
pub mod facts;
pub mod load;
pub mod workload;

pub use edit::{EditError, Editor};
pub use load::{LoadError, Loaded, Object, Pos, Positions, load_paths, load_str};
pub use workload::{ContainerTimeline, Workload, WorkloadKind};
