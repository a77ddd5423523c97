//! Scaled time, and the record of everything that happened in a run.
//!
//! A rehearsal runs `scale` times faster than real life. Every duration the user gives and
//! every figure the report shows is in unscaled ("cluster") seconds; only the sleeps and
//! timeouts handed to tokio are divided by the scale.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// The run's clock: real time since the start, read and written in unscaled seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
    scale: f64,
}

impl Clock {
    /// A clock starting now, `scale` times faster than real time (`scale` > 0).
    pub fn start(scale: f64) -> Self {
        Clock {
            epoch: Instant::now(),
            scale,
        }
    }

    /// The speed-up factor.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Unscaled seconds since the start.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * self.scale
    }

    /// The real duration of an unscaled one.
    pub fn real(&self, unscaled: Duration) -> Duration {
        Duration::from_secs_f64((unscaled.as_secs_f64() / self.scale).min(365.0 * 24.0 * 3600.0))
    }

    /// The real instant of an unscaled time since the start.
    pub fn instant(&self, at: f64) -> Instant {
        // Capped at a year: a huge grace period or sleep must not overflow the clock.
        let real = (at / self.scale).clamp(0.0, 365.0 * 24.0 * 3600.0);
        self.epoch + Duration::from_secs_f64(real)
    }

    /// Sleeps an unscaled duration.
    pub async fn sleep(self, unscaled: Duration) {
        tokio::time::sleep(self.real(unscaled)).await;
    }

    /// Sleeps until an unscaled time since the start.
    pub async fn sleep_until(self, at: f64) {
        tokio::time::sleep_until(self.instant(at)).await;
    }
}

/// Which probe a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
    /// `startupProbe`.
    Startup,
}

/// Something that happened to a pod, as the kubelet or the load balancer saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The pod object was created.
    Created,
    /// A container process started.
    Started {
        /// Its process id.
        pid: u32,
    },
    /// The process could not be started.
    StartFailed {
        /// Why.
        error: String,
    },
    /// One probe ran.
    Probe {
        /// Which probe.
        probe: ProbeKind,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The kubelet's view of readiness changed.
    Ready {
        /// Ready or not.
        ready: bool,
    },
    /// Liveness failed its threshold: the container is killed and restarted.
    LivenessKill,
    /// The startup probe failed its threshold: the container is killed and restarted.
    StartupKill,
    /// The pod was deleted (termination and endpoint removal start).
    Deleted,
    /// The preStop hook started.
    PreStopStart,
    /// The preStop hook returned.
    PreStopEnd {
        /// Whether it succeeded.
        ok: bool,
        /// What it returned or why it failed.
        detail: String,
    },
    /// SIGTERM was sent to the container's main process.
    Sigterm,
    /// SIGKILL was sent to the container's process group.
    Sigkill {
        /// Why: the grace period ran out, or the node went away.
        reason: String,
    },
    /// The container's main process exited.
    Exited {
        /// How (`exit 0`, `signal 9`).
        status: String,
    },
    /// The pod is gone.
    Gone,
    /// The gate entered a drain phase (from the report its `/drain` answered).
    DrainPhase {
        /// `announcing`, `finishing`, `deadline` or `done`.
        phase: String,
    },
    /// The load balancer's view of the endpoint changed (after the propagation lag).
    Endpoint {
        /// `ready`, `unready` or `removed`.
        state: &'static str,
    },
}

/// One event, at an unscaled time since the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unscaled seconds since the start.
    pub t: f64,
    /// The pod.
    pub pod: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The shared event log of one setup's run.
#[derive(Debug, Clone)]
pub struct Recorder {
    clock: Clock,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// An empty log on `clock`.
    pub fn new(clock: Clock) -> Self {
        Recorder {
            clock,
            events: Arc::default(),
        }
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Records an event now.
    pub fn record(&self, pod: &str, kind: EventKind) {
        let t = self.clock.now();
        tracing::debug!(t, pod, event = ?kind, "event");
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(Event {
            t,
            pod: pod.to_owned(),
            kind,
        });
    }

    /// Records an event that happened at unscaled time `t`.
    pub fn record_at(&self, pod: &str, t: f64, kind: EventKind) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push(Event {
            t,
            pod: pod.to_owned(),
            kind,
        });
    }

    /// Everything recorded so far, in time order.
    pub fn events(&self) -> Vec<Event> {
        let mut v = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by(|a, b| a.t.total_cmp(&b.t));
        v
    }
}
