//! The one model of a pod's termination timeline, shared by every part of lameduck.
//!
//! - [`pod`]: Kubernetes' termination sequence in numbers — grace period, preStop, probe
//!   timing, the convergence window — and the budget rule.
//! - [`drain`]: the drain state machine (serving → announcing → finishing → deadline → done).
//!
//! This crate performs no I/O and never reads a clock: time is always an input. The gate
//! drives it with real time; simulations drive it with virtual time.

pub mod drain;
pub mod duration;
pub mod pod;

pub use drain::{
    Action, Admission, ConfigError, DrainConfig, DrainMachine, DrainReport, DrainRequest, Join,
    Outcome, Phase, PhaseMark, Time, Trigger,
};
pub use duration::{Dur, ParseDurationError, fmt_secs, parse_duration, secs_plain};
pub use pod::{
    Budget, CONVERGENCE_REASON, Convergence, DEFAULT_CHILD_TIMEOUT, DEFAULT_CONVERGENCE_WINDOW,
    DEFAULT_GRACE, DEFAULT_KILL_MARGIN, GraceNeed, HOOK_TO_SIGTERM, KUBELET_MIN_STOP_WINDOW,
    PreStop, Probe, Termination, spent_at_sigterm, terminating_peak,
};
