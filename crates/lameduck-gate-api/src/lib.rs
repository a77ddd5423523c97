//! The gate's admin API, typed: what `/status` and `/drain` answer ([`GateStatus`],
//! [`GateReport`], [`DrainAccepted`]), and a small client ([`GateClient`]) that the fleet tools
//! (node drain, preemption agent, rainbow controller) and `rehearse` use to read a gate and to
//! drain it. The gate serves these very types, so a field added there is a field here.

mod client;

pub use client::{DrainAnswer, GateClient, GateError};
pub use lameduck_timeline::{DrainReport, Phase, PhaseMark, Trigger};

use serde::{Deserialize, Serialize};

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateStatus {
    /// The drain phase: `serving` until a drain starts.
    pub phase: Phase,
    /// Whether `/ready` answers 200.
    pub ready: bool,
    /// Why not, when not.
    pub not_ready_reason: Option<String>,
    /// Whether `/live` answers 200.
    pub live: bool,
    /// The engine's address (`http://127.0.0.1:8001`).
    pub upstream: String,
    /// Whether the engine's health check passes.
    pub upstream_healthy: bool,
    /// Work in flight, by kind.
    pub in_flight: InFlight,
    /// The engine process, in wrapper mode. Its program's name only: arguments can hold
    /// secrets and are never shown.
    pub child: Option<ChildStatus>,
    /// The connection and in-flight limits in effect.
    pub limits: Limits,
    /// Client connections open on the proxy port.
    pub connections: i64,
    /// The drain budget's settings.
    pub budget: BudgetSettings,
    /// The drain, once one started.
    pub drain: Option<GateReport>,
    /// The pod, when the gate knows it (`--kube`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

impl GateStatus {
    /// Everything in flight.
    pub fn in_flight_total(&self) -> i64 {
        self.in_flight.request + self.in_flight.stream + self.in_flight.upgraded
    }
}

/// Requests in flight by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InFlight {
    /// Plain requests.
    pub request: i64,
    /// Streamed responses.
    pub stream: i64,
    /// Upgraded connections (WebSocket).
    pub upgraded: i64,
}

/// The engine process the gate supervises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildStatus {
    /// The program's file name (`vllm`), without its arguments.
    pub program: String,
    /// Its process id while it runs.
    pub pid: Option<i32>,
    /// Whether it runs.
    pub running: bool,
    /// Its exit status once it ended (128 + the signal's number when a signal ended it).
    pub exit_status: Option<i32>,
}

/// Limits in effect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Client connections accepted at once.
    pub max_connections: usize,
    /// Requests in flight at once (`None`: no limit).
    pub max_in_flight: Option<u64>,
    /// The descriptor limit.
    pub nofile: u64,
    /// Seconds a connection may take to send its first request.
    pub header_timeout_s: f64,
    /// Seconds a connection with nothing in flight is kept.
    pub idle_timeout_s: f64,
}

/// The drain budget's settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetSettings {
    /// `--grace-period` (or the pod's shorter `deletionGracePeriodSeconds` under `--kube`).
    pub grace_period_s: f64,
    /// `--kill-margin`.
    pub kill_margin_s: f64,
    /// `--pre-stop-spent`.
    pub pre_stop_spent_s: f64,
    /// `--convergence-min`.
    pub convergence_min_s: f64,
    /// `--convergence-quiet`.
    pub convergence_quiet_s: f64,
    /// `--convergence-max`.
    pub convergence_max_s: f64,
}

/// The pod a gate runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// A drain's report as the gate gives it: the timeline's report, with when the drain started
/// (wall clock) and what the Kubernetes API said about the pod's endpoint (`--kube`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// The report.
    #[serde(flatten)]
    pub report: DrainReport,
    /// When the drain started, Unix seconds.
    pub started_at_unix: Option<f64>,
    /// gRPC calls that ended during the drain, by outcome (`ok`, `truncated`: ended with
    /// `grpc-status: 14` at the deadline, …); empty without any.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub grpc_calls: std::collections::BTreeMap<String, u64>,
    /// WebSocket connections that ended during the drain (`closed`, `going_away`: the gate's
    /// 1001 Close at the deadline, `broken`); empty without any.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub websockets: std::collections::BTreeMap<String, u64>,
}

/// `POST /drain?wait=false`: the drain was started or joined; its report so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainAccepted {
    /// `started` or `joined`.
    pub drain: String,
    /// The report so far.
    pub report: Option<GateReport>,
}
