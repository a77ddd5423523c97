//! The one model of a pod's termination timeline.
pub mod duration;
pub use duration::{ParseDurationError, fmt_secs, parse_duration};
