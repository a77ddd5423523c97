//! `lameduck plan`: size the drain budget from latency data, and simulate the fleet.
//!
//! - [`latency`]: request durations from samples, CSV or a Prometheus histogram.
//! - [`spec`]: a workload resolved into what the simulator runs.
//! - [`recommend`]: grace period, convergence window, probes, rollout limits, PDB and the
//!   spot cap, each with its arithmetic; the numbers come from [`lameduck_timeline`].
//! - [`sim`]: the discrete-event fleet simulator on virtual time, deterministic per seed.
//! - [`run`]: one `lameduck plan` invocation, start to finish.
//! - [`report`], [`chart`]: the table and the SVG.

pub mod chart;
pub mod latency;
pub mod recommend;
pub mod report;
pub mod run;
pub mod sim;
pub mod spec;

pub use latency::{Latency, LatencyError};
pub use recommend::{Inputs, Plan, Recommendation, plan};
pub use report::SimReport;
pub use sim::{Rate, Scenario, Sim, SimConfig};
pub use spec::{FleetSpec, OnSigterm, Overrides, PodModel, Shutdown};
