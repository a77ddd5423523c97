//! The gate's Prometheus metrics.
//!
//! Every labelled child is created once at start-up and kept as a handle, so the request path
//! touches only atomics: no label hashing, no registry lock.

use std::sync::atomic::AtomicU64;

use lameduck_timeline::{Outcome, Phase};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What kind of work a request in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary request/response.
    Request,
    /// A `text/event-stream` response.
    Stream,
    /// An upgraded connection (WebSocket).
    Upgraded,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Stream => "stream",
            Kind::Upgraded => "upgraded",
        }
    }
    const ALL: [Kind; 3] = [Kind::Request, Kind::Stream, Kind::Upgraded];
}

/// Why the gate closed a client connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request within --header-timeout of the connection's start.
    HeaderTimeout,
    /// Nothing in flight for --idle-timeout.
    IdleTimeout,
    /// The connection limit was reached: connections without work were closed first.
    Pressure,
}

impl CloseReason {
    const ALL: [CloseReason; 3] = [
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Pressure,
    ];

    /// Lower-case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Pressure => "pressure",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How a handed-off response ended (`handoffs_total`).
pub const HANDOFF_OUTCOMES: [&str; 4] = ["completed", "fell_back", "cut", "client_gone"];
/// How one attempt at a peer went (`handoff_attempts_total`).
pub const HANDOFF_ATTEMPT_RESULTS: [&str; 4] = ["ok", "refused", "timeout", "failed"];
/// Why a response that could not finish was not handed off (`handoffs_skipped_total`).
pub const HANDOFF_SKIP_REASONS: [&str; 5] = [
    "body_not_kept",
    "not_eligible",
    "tool_calls",
    "finished",
    "max_tokens",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

type FGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeLabel {
    operation: &'static str,
    kind: &'static str,
}

/// Handles to every metric the gate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    in_flight: [Gauge; 3],
    requests: [Counter; Outcome::ALL.len()],
    phase: [Gauge; 5],
    connection_closes: [Counter; CloseReason::ALL.len()],
    /// Client connections open on the proxy port.
    pub connections: Gauge,
    /// Client connections closed at once because the connection limit was reached.
    pub connections_refused: Counter,
    /// The connection limit in effect.
    pub max_connections: Gauge,
    /// The in-flight limit in effect (0: none).
    pub max_in_flight: Gauge,
    /// Seconds since the drain started (final once done).
    pub drain_duration: FGauge,
    /// Arrivals after the gate went unready.
    pub arrivals_after_unready: Counter,
    /// Delay from unready to the last arrival.
    pub propagation_lag: FGauge,
    /// 1 while /ready answers 200.
    pub ready: Gauge,
    /// 1 while the engine's health check passes.
    pub upstream_healthy: Gauge,
    /// 1 while the child process runs (wrapper mode).
    pub child_running: Gauge,
    kube_errors: Family<KubeLabel, Counter>,
    websockets: Family<EndLabel, Counter>,
    grpc_calls: Family<OutcomeLabel, Counter>,
    handoffs: Family<OutcomeLabel, Counter>,
    handoff_attempts: Family<ResultLabel, Counter>,
    handoff_skipped: Family<ReasonLabel, Counter>,
    /// Handed-off responses being relayed from a peer now.
    pub relaying: Gauge,
    /// Seconds from drain start until the control plane took the endpoint out of rotation.
    pub endpoint_gone: FGauge,
    /// From the endpoint's removal to the last arrival after it.
    pub data_plane_lag: FGauge,
    /// The pod-deletion-cost last written (--deletion-cost).
    pub deletion_cost: Gauge,
    /// --convergence-min in effect.
    pub convergence_min: FGauge,
    /// --convergence-max in effect.
    pub convergence_max: FGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lameduck_gate");
        let in_flight_f = Family::<KindLabel, Gauge>::default();
        registry.register(
            "in_flight",
            "Requests and streams in flight, by kind (request, stream, upgraded)",
            in_flight_f.clone(),
        );
        let requests_f = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "requests",
            "Requests by outcome (ok, upstream_error, rejected_draining, rejected_overload, truncated, client_abort, client_error)",
            requests_f.clone(),
        );
        let phase_f = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "drain_phase",
            "1 for the current drain phase (serving, announcing, finishing, deadline, done), 0 for the others",
            phase_f.clone(),
        );
        let drain_duration = FGauge::default();
        registry.register(
            "drain_duration_seconds",
            "Seconds since the drain started; final once the drain is done",
            drain_duration.clone(),
        );
        let arrivals_after_unready = Counter::default();
        registry.register(
            "arrivals_after_unready",
            "Requests that arrived after the gate went unready",
            arrivals_after_unready.clone(),
        );
        let propagation_lag = FGauge::default();
        registry.register(
            "propagation_lag_seconds",
            "Delay from going unready to the last arrival: the measured endpoint propagation lag",
            propagation_lag.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 while /ready answers 200", ready.clone());
        let upstream_healthy = Gauge::default();
        registry.register(
            "upstream_healthy",
            "1 while the engine's health check passes",
            upstream_healthy.clone(),
        );
        let child_running = Gauge::default();
        registry.register(
            "child_running",
            "1 while the wrapped engine process runs (wrapper mode)",
            child_running.clone(),
        );
        let closes_f = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connection_closes",
            "Client connections the gate closed on its own, by reason (header_timeout, idle_timeout, pressure)",
            closes_f.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Client connections open on the proxy port",
            connections.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed at once because the connection limit was reached",
            connections_refused.clone(),
        );
        let max_connections = Gauge::default();
        registry.register(
            "max_connections",
            "The client connection limit in effect",
            max_connections.clone(),
        );
        let max_in_flight = Gauge::default();
        registry.register(
            "max_in_flight",
            "The in-flight request limit in effect (0: none)",
            max_in_flight.clone(),
        );
        let websockets = Family::<EndLabel, Counter>::default();
        registry.register(
            "websockets",
            "WebSocket connections relayed, by how they ended (closed: by the client or the engine; going_away: the gate's 1001 Close at the deadline; broken)",
            websockets.clone(),
        );
        let grpc_calls = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "grpc_calls",
            "gRPC calls, by how they ended (the outcomes of requests_total; truncated: ended with grpc-status 14 at the deadline)",
            grpc_calls.clone(),
        );
        let handoffs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "handoffs",
            "Responses that could not finish here and were handed to a peer (--handoff-to), by how they ended (completed: the client got the whole completion; fell_back: no attempt finished, the terminal event ended it; cut: the hard stop came first; client_gone)",
            handoffs.clone(),
        );
        let handoff_attempts = Family::<ResultLabel, Counter>::default();
        registry.register(
            "handoff_attempts",
            "Continuation requests sent to a peer, by result (ok; refused: not a 200 event stream; timeout: no first event within --handoff-timeout; failed: broke or aborted mid-way)",
            handoff_attempts.clone(),
        );
        let handoff_skipped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "handoffs_skipped",
            "Streams that could not finish here and were not handed off although --handoff-to is set, by reason (body_not_kept: larger than --handoff-max-body or not read whole; not_eligible: not a streamed single-choice completion, structured output, or a prompt that cannot be extended; tool_calls; finished; max_tokens: nothing left to generate)",
            handoff_skipped.clone(),
        );
        let relaying = Gauge::default();
        registry.register(
            "relaying",
            "Handed-off responses being relayed from a peer now",
            relaying.clone(),
        );
        let kube_errors = Family::<KubeLabel, Counter>::default();
        registry.register(
            "kube_errors",
            "Kubernetes API calls that failed (--kube), by operation and kind (forbidden, unreachable, server_error, …); a drain never waits for them",
            kube_errors.clone(),
        );
        let endpoint_gone = FGauge::default();
        registry.register(
            "endpoint_gone_seconds",
            "Seconds from drain start until the pod's endpoint was marked not ready or removed in its EndpointSlices (--kube)",
            endpoint_gone.clone(),
        );
        let data_plane_lag = FGauge::default();
        registry.register(
            "data_plane_lag_seconds",
            "From the endpoint's removal by the control plane to the last arrival after it: the data plane's lag (--kube)",
            data_plane_lag.clone(),
        );
        let deletion_cost = Gauge::default();
        registry.register(
            "deletion_cost",
            "The controller.kubernetes.io/pod-deletion-cost last written (--deletion-cost)",
            deletion_cost.clone(),
        );
        let convergence_min = FGauge::default();
        registry.register(
            "convergence_min_seconds",
            "The shortest announcing phase (--convergence-min)",
            convergence_min.clone(),
        );
        let convergence_max = FGauge::default();
        registry.register(
            "convergence_max_seconds",
            "The longest announcing phase (--convergence-max): a propagation lag above it means requests arrived after announcing ended",
            convergence_max.clone(),
        );
        let connection_closes = CloseReason::ALL
            .map(|r| closes_f.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));
        let in_flight =
            Kind::ALL.map(|k| in_flight_f.get_or_create_owned(&KindLabel { kind: k.as_str() }));
        let requests = Outcome::ALL.map(|o| {
            requests_f.get_or_create_owned(&OutcomeLabel {
                outcome: o.as_str(),
            })
        });
        let phase =
            Phase::ALL.map(|p| phase_f.get_or_create_owned(&PhaseLabel { phase: p.as_str() }));
        phase[0].set(1);
        // Series with known label values start at zero: a counter that first appears at 1 is
        // invisible to Prometheus's increase(), so a pod's first truncation would not alert.
        for end in ["closed", "going_away", "broken"] {
            let _ = websockets.get_or_create_owned(&EndLabel { end });
        }
        for o in Outcome::ALL {
            let _ = grpc_calls.get_or_create_owned(&OutcomeLabel {
                outcome: o.as_str(),
            });
        }
        for outcome in HANDOFF_OUTCOMES {
            let _ = handoffs.get_or_create_owned(&OutcomeLabel { outcome });
        }
        for result in HANDOFF_ATTEMPT_RESULTS {
            let _ = handoff_attempts.get_or_create_owned(&ResultLabel { result });
        }
        for reason in HANDOFF_SKIP_REASONS {
            let _ = handoff_skipped.get_or_create_owned(&ReasonLabel { reason });
        }
        Metrics {
            registry,
            handoffs,
            handoff_attempts,
            handoff_skipped,
            relaying,
            in_flight,
            requests,
            phase,
            drain_duration,
            arrivals_after_unready,
            propagation_lag,
            ready,
            upstream_healthy,
            child_running,
            connection_closes,
            connections,
            connections_refused,
            max_connections,
            max_in_flight,
            kube_errors,
            websockets,
            grpc_calls,
            endpoint_gone,
            data_plane_lag,
            deletion_cost,
            convergence_min,
            convergence_max,
        }
    }

    /// Counts a failed Kubernetes API call.
    pub fn kube_error(&self, operation: &'static str, kind: &'static str) {
        self.kube_errors
            .get_or_create(&KubeLabel { operation, kind })
            .inc();
    }

    /// Counts a gRPC call that ended, by outcome.
    pub fn grpc_call_ended(&self, outcome: &'static str) {
        self.grpc_calls
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a handed-off response that ended (one of [`HANDOFF_OUTCOMES`]).
    pub fn handoff_ended(&self, outcome: &'static str) {
        self.handoffs.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one attempt at a peer (one of [`HANDOFF_ATTEMPT_RESULTS`]).
    pub fn handoff_attempt(&self, result: &'static str) {
        self.handoff_attempts
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a response not handed off (one of [`HANDOFF_SKIP_REASONS`]).
    pub fn handoff_skipped(&self, reason: &'static str) {
        self.handoff_skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a WebSocket connection that ended (`closed`, `going_away`, `broken`).
    pub fn websocket_ended(&self, end: &'static str) {
        self.websockets.get_or_create(&EndLabel { end }).inc();
    }

    /// The close counter of `reason`.
    pub fn connection_closes(&self, reason: CloseReason) -> &Counter {
        &self.connection_closes[reason as usize]
    }

    /// The in-flight gauge of `kind`.
    pub fn in_flight(&self, kind: Kind) -> &Gauge {
        &self.in_flight[kind as usize]
    }

    /// The request counter of `outcome`.
    pub fn requests(&self, outcome: Outcome) -> &Counter {
        &self.requests[outcome.index()]
    }

    /// Marks `phase` as the current one.
    pub fn set_phase(&self, phase: Phase) {
        for (p, g) in Phase::ALL.iter().zip(&self.phase) {
            g.set(i64::from(*p == phase));
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
