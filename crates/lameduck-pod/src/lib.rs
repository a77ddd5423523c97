//! One reading of a pod, shared by every part of lameduck.
//!
//! - [`engines`]: the inference servers lameduck knows: how to recognise them, their ports
//!   and how those are set, their health endpoints, how long their requests run.
//! - [`gate_args`]: `lameduck gate`'s flags, one clap definition for the gate itself and for
//!   everything that reads or writes a gate's command line.
//! - [`facts`]: what annotations and scheduling say: the longest request, spot capacity.
//! - [`model`]: a pod spec read into those terms: the containers, the serving one, the gate.
//!
//! No file positions here (the manifest crate layers them on top) and no I/O: a live Pod and a
//! manifest's pod template are read by the same code.

pub mod budget;
pub mod engines;
pub mod facts;
pub mod gate_args;
pub mod model;

/// The pod condition the gate sets with `--kube` (`False` the moment a drain starts); a pod
/// lists it in `spec.readinessGates` so that its endpoint leaves rotation at once.
pub const SERVING_CONDITION: &str = "lameduck.io/serving";

pub use budget::grace_need_gated;
pub use engines::{ENGINES, Engine, PortSetting, Work};
pub use facts::{Annotations, MaxRequestSource, PodFacts, Spot};
pub use gate_args::{ADMIN_PORT_NAME, DEFAULT_ADMIN_PORT, GateArgs, GateArgsError, GateFlags};
pub use model::{Container, Gate, GateMode, PodModel, ServingError, Slot};
