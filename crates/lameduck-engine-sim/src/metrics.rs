//! Prometheus metrics of the simulator.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::openai::Kind;

/// The endpoint label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Endpoint {
    // Discriminants index `Metrics::requests`; keep them in `ENDPOINTS` order.
    chat_completions,
    completions,
}

impl From<Kind> for Endpoint {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Chat => Self::chat_completions,
            Kind::Completion => Self::completions,
        }
    }
}

/// How a completion request ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Outcome {
    // Discriminants index `Metrics::requests`; keep them in `OUTCOMES` order.
    /// Finished normally (stop or length).
    ok,
    /// Ended by the server's shutdown (finish_reason "abort" or 500).
    aborted,
    /// Refused with 503 (starting up or shutting down).
    rejected,
    /// Refused with 400 or 413.
    bad_request,
    /// The client went away first.
    client_abort,
}

const ENDPOINTS: [Endpoint; 2] = [Endpoint::chat_completions, Endpoint::completions];
const OUTCOMES: [Outcome; 5] = [
    Outcome::ok,
    Outcome::aborted,
    Outcome::rejected,
    Outcome::bad_request,
    Outcome::client_abort,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Endpoint,
    outcome: Outcome,
}

/// All metrics, registered once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// The family's counters, looked up once: `[endpoint][outcome]`.
    requests: [[Counter; OUTCOMES.len()]; ENDPOINTS.len()],
    pub in_flight: Gauge,
    pub tokens: Counter,
    pub shutting_down: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let in_flight = Gauge::default();
        let tokens = Counter::default();
        let shutting_down = Gauge::default();
        registry.register(
            "lameduck_engine_sim_requests",
            "Completion requests by endpoint and outcome (ok, aborted, rejected, bad_request, client_abort)",
            requests.clone(),
        );
        registry.register(
            "lameduck_engine_sim_in_flight",
            "Completion requests being generated now",
            in_flight.clone(),
        );
        registry.register(
            "lameduck_engine_sim_tokens",
            "Output tokens generated (streamed or returned)",
            tokens.clone(),
        );
        registry.register(
            "lameduck_engine_sim_shutting_down",
            "1 once SIGTERM/SIGINT started the shutdown, else 0",
            shutting_down.clone(),
        );
        // Every series exists from the start, at 0, so rates and alerts work at once.
        let counters = ENDPOINTS.map(|endpoint| {
            OUTCOMES.map(|outcome| {
                requests
                    .get_or_create(&RequestLabels { endpoint, outcome })
                    .clone()
            })
        });
        Self {
            registry,
            requests: counters,
            in_flight,
            tokens,
            shutting_down,
        }
    }

    pub(crate) fn request(&self, endpoint: Endpoint, outcome: Outcome) {
        self.requests[endpoint as usize][outcome as usize].inc();
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arrays_match_discriminants() {
        for (i, e) in ENDPOINTS.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        for (i, o) in OUTCOMES.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn exposition_names_every_series() {
        let m = Metrics::new();
        m.request(Endpoint::completions, Outcome::client_abort);
        m.tokens.inc_by(3);
        m.in_flight.set(2);
        let text = m.encode();
        assert!(
            text.contains(
                r#"lameduck_engine_sim_requests_total{endpoint="completions",outcome="client_abort"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"lameduck_engine_sim_requests_total{endpoint="chat_completions",outcome="ok"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains("lameduck_engine_sim_tokens_total 3"),
            "{text}"
        );
        assert!(text.contains("lameduck_engine_sim_in_flight 2"), "{text}");
        assert!(
            text.contains("lameduck_engine_sim_shutting_down 0"),
            "{text}"
        );
    }
}
