//! Retries with backoff for API calls.
//!
//! Written here rather than taken from `kube::client::retry::RetryPolicy` because that policy
//! retries only 429, 503 and 504: an API server that restarts or sits behind a load balancer
//! also answers 500 and 502 and drops connections, and a gate or drain should ride that out.
//! Transport failures are retried only for methods that are safe to repeat.

use std::time::{Duration, SystemTime};

use http::{Method, Request, Response};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use tower::BoxError;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;

/// How [`Clients::api`](crate::Clients::api) retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause.
    pub first: Duration,
    /// The longest pause (a server's `Retry-After` is capped to it too).
    pub max: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(2),
            retries: 4,
        }
    }
}

impl Backoff {
    /// The pause before retry number `n` (1-based): doubling from `first`, capped at `max`,
    /// with up to a quarter taken off at random so that many clients do not retry in step.
    pub fn pause(&self, n: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        let capped = doubled.min(self.max);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        capped.saturating_sub(capped / 4 * (nanos % 100) / 100)
    }
}

#[derive(Clone)]
struct Policy {
    backoff: Backoff,
    attempt: u32,
}

fn retryable_status(code: u16) -> bool {
    matches!(code, 429 | 500 | 502 | 503 | 504)
}

fn safe_to_repeat(m: &Method) -> bool {
    // PATCH and PUT of a whole object land on the same state twice; a POST (create, eviction)
    // may have happened before the connection broke.
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::PATCH | Method::DELETE
    )
}

impl<Res> tower::retry::Policy<Request<Body>, Response<Res>, BoxError> for Policy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        if self.attempt >= self.backoff.retries {
            return None;
        }
        let server_says = match result {
            Ok(resp) if retryable_status(resp.status().as_u16()) => resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            Ok(_) => return None,
            Err(_) if safe_to_repeat(req.method()) => None,
            Err(_) => return None,
        };
        self.attempt += 1;
        let pause = server_says
            .map(|d| d.min(self.backoff.max))
            .unwrap_or_else(|| self.backoff.pause(self.attempt));
        tracing::debug!(
            method = %req.method(),
            path = req.uri().path(),
            attempt = self.attempt,
            pause_ms = pause.as_millis() as u64,
            "API request failed; retrying"
        );
        Some(tokio::time::sleep(pause))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        // Streaming bodies cannot be replayed; those requests are not retried.
        let body = req.body().try_clone()?;
        let mut out = Request::builder()
            .method(req.method().clone())
            .uri(req.uri().clone())
            .version(req.version())
            .body(body)
            .ok()?;
        *out.headers_mut() = req.headers().clone();
        *out.extensions_mut() = req.extensions().clone();
        Some(out)
    }
}

/// A client whose requests are retried by `backoff`. Must be called inside a tokio runtime
/// (the buffer that makes the stack cloneable runs as a task).
pub(crate) fn client(config: Config, backoff: Backoff) -> Result<Client, kube::Error> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(Policy {
            backoff,
            attempt: 0,
        }))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(700),
            retries: 5,
        };
        for (n, full) in [(1, 100), (2, 200), (3, 400), (4, 700), (40, 700)] {
            let p = b.pause(n);
            let full = Duration::from_millis(full);
            assert!(
                p <= full && p >= full * 3 / 4,
                "retry {n}: {p:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn what_is_retried() {
        assert!(retryable_status(503) && retryable_status(500) && retryable_status(429));
        assert!(!retryable_status(403) && !retryable_status(409) && !retryable_status(404));
        assert!(safe_to_repeat(&Method::PATCH) && !safe_to_repeat(&Method::POST));
    }
}
