//! The gate's shared state: the drain machine on real time, and the signals that fan its
//! actions out to connections, requests, the admin endpoints and the supervisor.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_timeline::{
    Action, Admission, DrainMachine, DrainReport, DrainRequest, Join, Outcome, Phase,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Kind, Metrics};

/// Everything the gate's tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The checked configuration.
    pub config: Config,
    /// Metric handles.
    pub metrics: Metrics,
    origin: Instant,
    origin_unix: SystemTime,
    machine: Mutex<DrainMachine>,
    /// Wakes the driver after an event queued actions.
    wake: Notify,
    /// Cancelled when the drain starts announcing: connections shut down gracefully.
    pub announce: CancellationToken,
    /// Cancelled at the deadline: streams end with the terminal event, the rest abort.
    pub deadline: CancellationToken,
    /// Cancelled when the process must exit.
    pub exit: CancellationToken,
    /// The final drain report, once drained.
    drained: watch::Sender<Option<DrainReport>>,
    /// Whether the engine's health check passes.
    pub upstream_healthy: AtomicBool,
    /// Whether start-up (health, then warm-up) has completed once.
    pub started: AtomicBool,
    /// Whether the child runs (always true in sidecar mode).
    pub child_alive: AtomicBool,
    /// The child's exit status as a shell would report it, once it exited.
    pub child_status: AtomicI32,
    /// The child's process group, while it runs.
    pub child_pgid: AtomicI32,
    /// The gate has signalled the child (so its exit is expected).
    pub child_signalled: AtomicBool,
}

/// `child_status` before the child exited.
pub const NO_STATUS: i32 = i32::MIN;

impl Shared {
    /// Fresh state in the serving phase.
    pub fn new(config: Config) -> Arc<Self> {
        let machine = DrainMachine::new(config.drain);
        let (drained, _) = watch::channel(None);
        Arc::new(Shared {
            config,
            metrics: Metrics::new(),
            origin: Instant::now(),
            origin_unix: SystemTime::now(),
            machine: Mutex::new(machine),
            wake: Notify::new(),
            announce: CancellationToken::new(),
            deadline: CancellationToken::new(),
            exit: CancellationToken::new(),
            drained,
            upstream_healthy: AtomicBool::new(false),
            started: AtomicBool::new(false),
            child_alive: AtomicBool::new(true),
            child_status: AtomicI32::new(NO_STATUS),
            child_pgid: AtomicI32::new(0),
            child_signalled: AtomicBool::new(false),
        })
    }

    /// Now, on the machine's clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn machine(&self) -> MutexGuard<'_, DrainMachine> {
        // A panic while holding the lock leaves a machine that is still consistent (every
        // method finishes its bookkeeping before returning), so poisoning is ignored.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.machine().phase()
    }

    /// Admits a new request, counting it as in flight unless refused.
    pub fn admit(&self, kind: Kind) -> Admission {
        let (admission, lag) = {
            let mut m = self.machine();
            // Read the clock under the lock so events reach the machine in time order.
            let now = self.now();
            let a = m.request_started(now);
            (a, m.drain_started().map(|s| now.saturating_sub(s)))
        };
        if let Some(lag) = lag {
            self.metrics.arrivals_after_unready.inc();
            self.metrics.propagation_lag.set(lag.as_secs_f64());
        }
        match admission {
            Admission::Refuse => {
                self.metrics.requests(Outcome::RejectedDraining).inc();
            }
            _ => {
                self.metrics.in_flight(kind).inc();
            }
        }
        admission
    }

    /// Moves an in-flight request from one kind to another (a response turned out to be a
    /// stream).
    pub fn rekind(&self, from: Kind, to: Kind) {
        if from != to {
            self.metrics.in_flight(from).dec();
            self.metrics.in_flight(to).inc();
        }
    }

    /// An admitted request ended.
    pub fn finish(&self, kind: Kind, outcome: Outcome) {
        self.metrics.in_flight(kind).dec();
        self.metrics.requests(outcome).inc();
        let wake = {
            let mut m = self.machine();
            m.request_finished(self.now(), outcome);
            m.has_actions()
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Starts or joins a drain.
    pub fn drain(&self, req: DrainRequest) -> Join {
        let join = {
            let mut m = self.machine();
            m.drain(self.now(), req)
        };
        match join {
            Join::Started => tracing::info!(
                trigger = req.trigger.as_str(),
                deadline_s = req.deadline.map(|d| d.as_secs_f64()),
                exit = req.exit,
                "Drain started"
            ),
            Join::Joined => tracing::info!(
                trigger = req.trigger.as_str(),
                deadline_s = req.deadline.map(|d| d.as_secs_f64()),
                exit = req.exit,
                "Drain request joined the drain under way"
            ),
        }
        self.wake.notify_one();
        join
    }

    /// The child exited with `status` (shell convention: 128 + signal for a signal).
    pub fn child_exited(&self, status: i32) {
        self.child_status.store(status, Ordering::SeqCst);
        self.child_alive.store(false, Ordering::SeqCst);
        self.metrics.child_running.set(0);
        self.metrics.ready.set(0);
        {
            let mut m = self.machine();
            m.child_exited(self.now());
        }
        self.wake.notify_one();
    }

    /// Whether /live should answer 200: the engine runs, or was stopped by the gate itself at
    /// the end of a drain. Only an engine that died on its own fails liveness.
    pub fn live(&self) -> bool {
        self.child_alive.load(Ordering::SeqCst) || self.child_signalled.load(Ordering::SeqCst)
    }

    /// Whether /ready should answer 200, and if not, why.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.child_alive.load(Ordering::SeqCst) {
            return Err("engine process exited");
        }
        if self.machine().is_draining() {
            return Err("draining");
        }
        if !self.started.load(Ordering::SeqCst) {
            return Err("starting: engine not healthy yet");
        }
        if !self.upstream_healthy.load(Ordering::SeqCst) {
            return Err("engine health check failing");
        }
        Ok(())
    }

    /// The drain report so far, if a drain started.
    pub fn report(&self) -> Option<DrainReport> {
        self.machine().report()
    }

    /// Wall-clock time of the drain's start, in Unix seconds.
    pub fn drain_started_unix(&self) -> Option<f64> {
        let started = self.machine().drain_started()?;
        let t = self.origin_unix + started;
        t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
    }

    /// Waits until the drain is done and returns its report.
    pub async fn drained(&self) -> Option<DrainReport> {
        let mut rx = self.drained.subscribe();
        let r = rx.wait_for(|r| r.is_some()).await;
        r.ok().and_then(|r| r.clone())
    }

    /// The report as one JSON object, with wall-clock anchors.
    pub fn report_json(&self) -> serde_json::Value {
        let report = self.report();
        let mut v = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.insert(
                "started_at_unix".into(),
                serde_json::json!(self.drain_started_unix()),
            );
        }
        v
    }
}

/// Drives the drain machine on real time until the process must exit: performs every action,
/// sleeps until the machine's next timeout or the next event.
pub async fn drive(shared: Arc<Shared>) {
    let mut actions = Vec::with_capacity(8);
    loop {
        let timeout = {
            let mut m = shared.machine();
            m.handle_timeout(shared.now());
            while let Some(a) = m.poll_action() {
                actions.push(a);
            }
            shared.metrics.set_phase(m.phase());
            if let Some(start) = m.drain_started() {
                let end = m.report().and_then(|r| r.total).map(|t| start + t);
                let elapsed = end.unwrap_or_else(|| shared.now()).saturating_sub(start);
                shared.metrics.drain_duration.set(elapsed.as_secs_f64());
            }
            m.poll_timeout()
        };
        for action in actions.drain(..) {
            perform(&shared, action);
        }
        if shared.exit.is_cancelled() {
            return;
        }
        // While draining, refresh the duration gauge at least once a second.
        let draining = shared.announce.is_cancelled();
        let until = match (timeout, draining) {
            (Some(t), true) => Some(t.min(shared.now() + Duration::from_secs(1))),
            (Some(t), false) => Some(t),
            (None, true) if shared.drained.borrow().is_none() => {
                Some(shared.now() + Duration::from_secs(1))
            }
            (None, _) => None,
        };
        match until {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(shared.origin + t) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

fn perform(shared: &Shared, action: Action) {
    match action {
        Action::GoUnready => {
            shared.metrics.ready.set(0);
            tracing::info!(phase = "announcing", "Unready: readiness now fails");
        }
        Action::Announce => {
            shared.announce.cancel();
            tracing::info!(
                "Announcing: closing idle connections, GOAWAY to HTTP/2 clients, Connection: close on HTTP/1.1 responses"
            );
        }
        Action::StartRefusing => {
            let in_flight = shared.machine().in_flight();
            tracing::info!(
                phase = "finishing",
                in_flight,
                "Finishing: new arrivals are refused"
            );
        }
        Action::EndStreams => {
            let in_flight = shared.machine().in_flight();
            tracing::warn!(
                phase = "deadline",
                in_flight,
                "Deadline: ending streams with a terminal event, aborting the rest"
            );
            shared.deadline.cancel();
        }
        Action::Drained => {
            let report = shared.report();
            if let Some(r) = &report {
                tracing::info!(
                    phase = "done",
                    total_s = r.total.map(|t| t.as_secs_f64()),
                    completed = r.completed,
                    truncated = r.truncated,
                    rejected = r.rejected,
                    "Drained"
                );
            }
            // Anything still around after the linger is cut now.
            shared.deadline.cancel();
            shared.drained.send_replace(report);
        }
        Action::SignalChild => crate::supervisor::signal_child(shared, false),
        Action::KillChild => crate::supervisor::signal_child(shared, true),
        Action::Exit => shared.exit.cancel(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GateArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gate: GateArgs,
    }

    fn shared(args: &[&str]) -> Arc<Shared> {
        let mut argv = vec!["gate"];
        argv.extend_from_slice(args);
        let config = Cli::parse_from(argv).gate.resolve().expect("config");
        Shared::new(config)
    }

    #[tokio::test]
    async fn engine_exit_fails_readiness_and_liveness_and_exits() {
        let s = shared(&["--upstream", "http://127.0.0.1:1", "--", "engine"]);
        s.started.store(true, Ordering::SeqCst);
        s.upstream_healthy.store(true, Ordering::SeqCst);
        assert_eq!(s.readiness(), Ok(()));
        s.child_exited(3);
        assert_eq!(s.readiness(), Err("engine process exited"));
        assert!(!s.child_alive.load(Ordering::SeqCst));
        assert!(!s.live(), "an engine that died on its own fails liveness");
        assert_eq!(s.child_status.load(Ordering::SeqCst), 3);
        // The driver turns the machine's Exit action into the exit signal.
        tokio::time::timeout(Duration::from_secs(5), drive(s.clone()))
            .await
            .expect("driver returns");
        assert!(s.exit.is_cancelled());
    }

    #[test]
    fn flag_defaults_are_the_timeline_models() {
        let s = shared(&["--upstream", "http://127.0.0.1:1"]);
        assert_eq!(s.config.drain.grace, lameduck_timeline::DEFAULT_GRACE);
        assert_eq!(
            s.config.drain.margin,
            lameduck_timeline::DEFAULT_KILL_MARGIN
        );
    }

    #[tokio::test]
    async fn engine_stopped_by_the_gate_stays_live() {
        let s = shared(&["--upstream", "http://127.0.0.1:1", "--", "engine"]);
        s.child_signalled.store(true, Ordering::SeqCst);
        s.child_exited(0);
        assert!(s.live());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_on_paused_clock_reaches_done_after_the_minimum_window() {
        let s = shared(&[
            "--upstream",
            "http://127.0.0.1:1",
            "--convergence-min",
            "10s",
            "--grace-period",
            "120",
        ]);
        let driver = tokio::spawn(drive(s.clone()));
        assert_eq!(s.admit(Kind::Stream), Admission::Serve);
        s.drain(DrainRequest::new(lameduck_timeline::Trigger::Endpoint));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(s.announce.is_cancelled());
        assert_eq!(s.readiness(), Err("draining"));
        // Arrivals while announcing are served and counted as propagation lag.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(s.admit(Kind::Request), Admission::ServeAndClose);
        s.finish(Kind::Request, Outcome::Ok);
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(s.phase(), Phase::Finishing);
        assert_eq!(s.admit(Kind::Request), Admission::Refuse);
        s.finish(Kind::Stream, Outcome::Ok);
        let report = tokio::time::timeout(Duration::from_secs(1), s.drained())
            .await
            .expect("drained")
            .expect("report");
        assert_eq!(report.completed, 2);
        assert_eq!(report.rejected, 1);
        assert_eq!(report.arrivals_after_unready, 2);
        assert_eq!(report.propagation_lag.map(|d| d.as_secs()), Some(11));
        assert_eq!(s.metrics.requests(Outcome::RejectedDraining).get(), 1);
        assert!(!s.deadline.is_cancelled() || report.truncated == 0);
        driver.abort();
    }
}
