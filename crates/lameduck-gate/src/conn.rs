//! Per-connection bookkeeping on the proxy port, and the watchdog that closes connections
//! that carry nothing: silent ones (no request within `--header-timeout`, protocol detection
//! and the HTTP/2 preface included), idle ones (nothing in flight for `--idle-timeout`), and,
//! when the connection limit is reached, connections without work first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::Notify;

use crate::metrics::CloseReason;
use crate::state::Shared;

/// Under pressure, a connection that has sent nothing is closed once it is this old (or
/// `--header-timeout` old, if that is shorter): long enough for a real client's first request
/// to arrive, short enough that a flood of silent connections cannot hold the port.
pub const PRESSURE_MIN_AGE: Duration = Duration::from_secs(1);

/// Per-connection state shared between the connection task and its requests.
#[derive(Debug)]
pub struct ConnCtl {
    /// Notified when the connection must shut down gracefully.
    pub close: Notify,
    /// A request has arrived on this connection.
    pub used: AtomicBool,
    /// Requests admitted on this connection and not yet ended.
    active: AtomicU32,
    /// When `active` last dropped to zero (or the connection started), in nanoseconds on the
    /// machine's clock.
    idle_since: AtomicU64,
    /// The client's address as an `X-Forwarded-For` value, formatted once per connection.
    pub forwarded_for: Option<HeaderValue>,
}

impl ConnCtl {
    /// State for a connection from `peer` accepted at `now` (the machine's clock).
    pub fn new(peer: SocketAddr, now: Duration) -> Self {
        ConnCtl {
            close: Notify::new(),
            used: AtomicBool::new(false),
            active: AtomicU32::new(0),
            idle_since: AtomicU64::new(nanos(now)),
            forwarded_for: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        }
    }

    /// A request was admitted on this connection.
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// An admitted request ended at `now`.
    pub fn request_ended(&self, now: Duration) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(nanos(now), Ordering::Release);
        }
    }

    fn idle_since(&self) -> Duration {
        Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How the watchdog wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it at once: it never carried a request.
    Drop(CloseReason),
    /// Shut it down gracefully: it is idle (HTTP/1.1 closes, HTTP/2 gets GOAWAY).
    Graceful(CloseReason),
}

/// What to do with a connection now, and when to look again.
fn judge(
    shared: &Shared,
    ctl: &ConnCtl,
    accepted: Duration,
    now: Duration,
    pressure: bool,
) -> Result<Verdict, Duration> {
    let cfg = &shared.config;
    if !ctl.used.load(Ordering::Acquire) {
        let (limit, reason) = if pressure {
            (
                accepted + PRESSURE_MIN_AGE.min(cfg.header_timeout),
                CloseReason::Pressure,
            )
        } else {
            (accepted + cfg.header_timeout, CloseReason::HeaderTimeout)
        };
        return if now >= limit {
            Ok(Verdict::Drop(reason))
        } else {
            Err(limit)
        };
    }
    if ctl.active.load(Ordering::Acquire) > 0 {
        // Busy: look again later. A quarter of the idle timeout bounds how long past its
        // timeout an idle connection can stay open.
        return Err(now + cfg.idle_timeout / 4);
    }
    if pressure {
        return Ok(Verdict::Graceful(CloseReason::Pressure));
    }
    let limit = ctl.idle_since() + cfg.idle_timeout;
    if now >= limit {
        Ok(Verdict::Graceful(CloseReason::IdleTimeout))
    } else {
        Err(limit)
    }
}

/// Resolves when the connection should be closed, and how. Meant to be wrapped in
/// [`crate::quiet::Quiet`] so that it is polled only when its timer or the pressure signal
/// fires, never for the connection's data.
pub async fn watchdog(shared: &Shared, ctl: &ConnCtl, accepted: Duration) -> Verdict {
    loop {
        let pressure_changed = shared.pressure_changed.notified();
        tokio::pin!(pressure_changed);
        // Registered before the flag is read, so that a change in between is not missed.
        pressure_changed.as_mut().enable();
        let pressure = shared.pressure.load(Ordering::Acquire);
        let next = match judge(shared, ctl, accepted, shared.now(), pressure) {
            Ok(v) => return v,
            Err(next) => next,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(shared.origin() + next) => {}
            _ = pressure_changed => {}
        }
    }
}
