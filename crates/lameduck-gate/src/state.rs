//! The gate's shared state: the drain machine on real time, the engine process's state, and
//! the signals that fan the machine's actions out to connections, requests, the admin
//! endpoints and the supervisor. The task that performs the actions is in [`crate::driver`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_timeline::{Admission, DrainMachine, DrainReport, DrainRequest, Join, Outcome, Phase};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::{Kind, Metrics};

/// The engine process, as the gate knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// Sidecar mode: the engine is another container's business.
    Absent,
    /// Wrapper mode, before the process was started.
    NotStarted,
    /// Running; `pid` is also its process group.
    Running {
        /// Process id and group.
        pid: i32,
        /// The gate has signalled it (so its exit is expected).
        signalled: bool,
    },
    /// Exited with `status` (shell convention: 128 + signal number for a signal).
    Exited {
        /// Exit status.
        status: i32,
        /// The gate had signalled it: the exit was expected.
        signalled: bool,
    },
}

impl Child {
    /// Whether the engine may be serving (always, in sidecar mode).
    pub fn alive(self) -> bool {
        !matches!(self, Child::Exited { .. })
    }

    /// Whether /live may answer 200: the engine runs, or was stopped by the gate itself.
    /// Only an engine that died on its own fails liveness.
    pub fn live(self) -> bool {
        !matches!(
            self,
            Child::Exited {
                signalled: false,
                ..
            }
        )
    }

    /// The gate's exit status given how the engine ended: the engine's own status when the
    /// gate stopped it, never 0 when it died on its own, 1 when it never ran.
    pub fn exit_code(self) -> i32 {
        match self {
            Child::Absent => 0,
            Child::NotStarted | Child::Running { .. } => 1,
            Child::Exited {
                status,
                signalled: true,
            } => status,
            Child::Exited {
                status,
                signalled: false,
            } => {
                if status == 0 {
                    1
                } else {
                    status
                }
            }
        }
    }
}

/// Limits derived at start-up from the flags and the process's file-descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections held at most on the proxy port.
    pub max_connections: usize,
    /// Requests in flight at most (`None`: no limit).
    pub max_in_flight: Option<u64>,
    /// The file-descriptor limit they were derived from.
    pub nofile: u64,
}

/// Everything the gate's tasks share.
#[derive(Debug)]
pub struct Shared {
    /// The checked configuration.
    pub config: Config,
    /// Limits in effect.
    pub limits: Limits,
    /// Metric handles.
    pub metrics: Metrics,
    origin: Instant,
    origin_unix: SystemTime,
    machine: Mutex<DrainMachine>,
    /// Wakes the driver after an event queued actions.
    pub(crate) wake: Notify,
    /// Cancelled when the drain starts announcing: connections shut down gracefully.
    pub announce: CancellationToken,
    /// Cancelled at the deadline: streams end with the terminal event, the rest abort.
    pub deadline: CancellationToken,
    /// Cancelled at the hard stop: handed-off responses still relaying end with the terminal
    /// event.
    pub relays_end: CancellationToken,
    /// Cancelled when the process must exit.
    pub exit: CancellationToken,
    /// The final drain report, once drained.
    pub(crate) drained: watch::Sender<Option<DrainReport>>,
    /// Whether the engine's health check passes.
    pub upstream_healthy: AtomicBool,
    /// Whether start-up (health, then warm-up) has completed once.
    pub started: AtomicBool,
    child: Mutex<Child>,
    /// Client and admin connection tasks, and upgraded connections: waited for at exit so
    /// that every response is written out before the process ends.
    pub connections: TaskTracker,
    /// The connection limit is reached and a new connection waits: connections that have not
    /// sent a request and idle keep-alive connections close.
    pub pressure: AtomicBool,
    /// Notified when `pressure` is set.
    pub pressure_changed: Notify,
    /// gRPC calls and WebSocket connections that ended during the drain, by how.
    protocols: Mutex<ProtocolEnds>,
    /// Blocking `/drain` calls: how a preStop hook uses the gate.
    hook: Mutex<Hook>,
}

/// The blocking `/drain` calls seen, on the machine's clock: the kubelet's grace period starts
/// when its preStop hook does, and its SIGTERM follows the hook's return.
#[derive(Debug, Default)]
struct Hook {
    /// When the first of the calls still open (or the last ones) came.
    began: Option<Duration>,
    open: u32,
    returned: Option<Duration>,
}

/// Counts a blocking `/drain` call as open until dropped.
#[derive(Debug)]
pub struct HookCall<'a>(&'a Shared);

impl Drop for HookCall<'_> {
    fn drop(&mut self) {
        let now = self.0.now();
        let mut h = self.0.hook();
        h.open = h.open.saturating_sub(1);
        h.returned = Some(now);
    }
}

/// How gRPC calls and WebSocket connections ended during the drain.
#[derive(Debug, Default)]
struct ProtocolEnds {
    grpc: std::collections::BTreeMap<String, u64>,
    websockets: std::collections::BTreeMap<String, u64>,
}

impl Shared {
    /// Fresh state in the serving phase.
    pub fn new(config: Config, limits: Limits) -> Arc<Self> {
        let mut drain = config.drain;
        drain.max_in_flight = limits.max_in_flight;
        let machine = DrainMachine::new(drain);
        let (drained, _) = watch::channel(None);
        let child = if config.command.is_empty() {
            Child::Absent
        } else {
            Child::NotStarted
        };
        let metrics = Metrics::new();
        metrics.max_connections.set(limits.max_connections as i64);
        metrics
            .max_in_flight
            .set(limits.max_in_flight.map_or(0, |m| m as i64));
        let convergence = config.drain.convergence;
        metrics.convergence_min.set(convergence.min.as_secs_f64());
        metrics.convergence_max.set(convergence.max.as_secs_f64());
        Arc::new(Shared {
            config,
            limits,
            metrics,
            origin: Instant::now(),
            origin_unix: SystemTime::now(),
            machine: Mutex::new(machine),
            wake: Notify::new(),
            announce: CancellationToken::new(),
            deadline: CancellationToken::new(),
            relays_end: CancellationToken::new(),
            exit: CancellationToken::new(),
            drained,
            upstream_healthy: AtomicBool::new(false),
            started: AtomicBool::new(false),
            child: Mutex::new(child),
            connections: TaskTracker::new(),
            pressure: AtomicBool::new(false),
            pressure_changed: Notify::new(),
            protocols: Mutex::new(ProtocolEnds::default()),
            hook: Mutex::new(Hook::default()),
        })
    }

    fn hook(&self) -> std::sync::MutexGuard<'_, Hook> {
        self.hook.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A blocking `/drain` call begins (a preStop hook, usually); it ends when the returned
    /// value is dropped.
    pub fn hook_call(&self) -> HookCall<'_> {
        let now = self.now();
        let mut h = self.hook();
        if h.open == 0 {
            h.began = Some(now);
        }
        h.open += 1;
        drop(h);
        HookCall(self)
    }

    /// How much of the kubelet's grace period a SIGTERM arriving now finds spent: the time
    /// since the preStop `/drain` began, when one is still open or has just returned (the
    /// kubelet counts the grace period from the hook's start); `--pre-stop-spent` otherwise.
    pub fn spent_at_sigterm(&self) -> Duration {
        let h = self.hook();
        lameduck_timeline::spent_at_sigterm(
            self.now(),
            h.began,
            h.open > 0,
            h.returned,
            lameduck_timeline::HOOK_TO_SIGTERM.div_f64(self.config.time_scale),
            self.config.pre_stop_spent,
        )
    }

    /// Now, on the machine's clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The instant the machine's clock counts from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    pub(crate) fn machine(&self) -> MutexGuard<'_, DrainMachine> {
        // A panic while holding the lock leaves a machine that is still consistent (every
        // method finishes its bookkeeping before returning), so poisoning is ignored.
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine process's state.
    pub fn child(&self) -> Child {
        *self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the engine process's state.
    pub(crate) fn set_child(&self, f: impl FnOnce(&mut Child)) {
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
        self.metrics
            .child_running
            .set(i64::from(matches!(*c, Child::Running { .. })));
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.machine().phase()
    }

    /// Admits a new request, counting it as in flight unless refused.
    pub fn admit(&self, kind: Kind) -> Admission {
        let (admission, lag, after_gone) = {
            let mut m = self.machine();
            // Read the clock under the lock so events reach the machine in time order.
            let now = self.now();
            let a = m.request_started(now);
            (
                a,
                m.drain_started().map(|s| now.saturating_sub(s)),
                m.endpoint_gone_at().map(|g| now.saturating_sub(g)),
            )
        };
        if let Some(lag) = lag {
            self.metrics.arrivals_after_unready.inc();
            self.metrics.propagation_lag.set(lag.as_secs_f64());
        }
        if let Some(lag) = after_gone {
            self.metrics.data_plane_lag.set(lag.as_secs_f64());
        }
        match admission {
            Admission::Refuse => {
                self.metrics.requests(Outcome::RejectedDraining).inc();
            }
            Admission::Overloaded => {
                self.metrics.requests(Outcome::RejectedOverload).inc();
            }
            Admission::Serve | Admission::ServeAndClose => {
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

    /// A handed-off response's relay ended; `completed`: the client got the whole response.
    pub fn relay_finished(&self, completed: bool) {
        let wake = {
            let mut m = self.machine();
            m.relay_finished(self.now(), completed);
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

    /// The control plane took this pod's endpoint out of rotation (seen by `--kube`).
    pub fn endpoint_gone(&self) {
        let gone = {
            let mut m = self.machine();
            m.endpoint_gone(self.now());
            m.endpoint_gone_at()
                .zip(m.drain_started())
                .map(|(g, s)| g.saturating_sub(s))
        };
        if let Some(g) = gone {
            self.metrics.endpoint_gone.set(g.as_secs_f64());
        }
        // Actions may be queued, or the announcing window may now end sooner: either way the
        // driver re-plans.
        self.wake.notify_one();
    }

    /// The pod's deletion gave a grace period (`deletionGracePeriodSeconds`); `spent` of it
    /// has passed. A shorter one than configured moves the deadline earlier.
    pub fn limit_grace(&self, grace: Duration, spent: Duration) {
        {
            let mut m = self.machine();
            m.limit_grace(self.now(), grace, spent);
        }
        self.wake.notify_one();
    }

    /// Requests and streams in flight.
    pub fn in_flight(&self) -> u64 {
        self.machine().in_flight()
    }

    /// The child exited with `status` (shell convention: 128 + signal for a signal).
    pub fn child_exited(&self, status: i32) {
        self.set_child(|c| {
            let signalled = matches!(
                *c,
                Child::Running {
                    signalled: true,
                    ..
                }
            );
            *c = Child::Exited { status, signalled };
        });
        self.metrics.ready.set(0);
        {
            let mut m = self.machine();
            m.child_exited(self.now());
        }
        self.wake.notify_one();
    }

    /// Whether /live should answer 200.
    pub fn live(&self) -> bool {
        self.child().live()
    }

    /// Whether /ready should answer 200, and if not, why.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.child().alive() {
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
    pub fn gate_report(&self) -> Option<lameduck_gate_api::GateReport> {
        let report = self.report()?;
        let p = self.protocols.lock().unwrap_or_else(|e| e.into_inner());
        Some(lameduck_gate_api::GateReport {
            report,
            started_at_unix: self.drain_started_unix(),
            grpc_calls: p.grpc.clone(),
            websockets: p.websockets.clone(),
        })
    }

    /// A gRPC call ended (`websocket: false`) or a WebSocket connection did, `how`: counted in
    /// the drain report when a drain is under way.
    pub fn protocol_ended(&self, websocket: bool, how: &str) {
        if !self.announce.is_cancelled() {
            return;
        }
        let mut p = self.protocols.lock().unwrap_or_else(|e| e.into_inner());
        let map = if websocket {
            &mut p.websockets
        } else {
            &mut p.grpc
        };
        *map.entry(how.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GateArgs;
    use crate::driver::drive;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gate: GateArgs,
    }

    fn shared(args: &[&str]) -> Arc<Shared> {
        let mut argv = vec!["gate"];
        argv.extend_from_slice(args);
        let config = crate::config::Config::from_args(Cli::parse_from(argv).gate).expect("config");
        let limits = Limits {
            max_connections: 100,
            max_in_flight: config.drain.max_in_flight,
            nofile: 1024,
        };
        Shared::new(config, limits)
    }

    #[tokio::test]
    async fn engine_exit_fails_readiness_and_liveness_and_exits() {
        let s = shared(&["--upstream", "http://127.0.0.1:1", "--", "engine"]);
        s.set_child(|c| {
            *c = Child::Running {
                pid: 0,
                signalled: false,
            }
        });
        s.started.store(true, Ordering::SeqCst);
        s.upstream_healthy.store(true, Ordering::SeqCst);
        assert_eq!(s.readiness(), Ok(()));
        s.child_exited(3);
        assert_eq!(s.readiness(), Err("engine process exited"));
        assert!(!s.child().alive());
        assert!(!s.live(), "an engine that died on its own fails liveness");
        assert_eq!(s.child().exit_code(), 3);
        // The driver turns the machine's Exit action into the exit signal.
        tokio::time::timeout(Duration::from_secs(5), drive(s.clone()))
            .await
            .expect("driver returns");
        assert!(s.exit.is_cancelled());
        let report = s.report().expect("the engine's exit is a drain of its own");
        assert_eq!(report.trigger, lameduck_timeline::Trigger::EngineExit);
    }

    #[test]
    fn exit_codes_follow_the_engine() {
        let exited = |status, signalled| Child::Exited { status, signalled };
        assert_eq!(Child::Absent.exit_code(), 0);
        assert_eq!(exited(0, true).exit_code(), 0);
        assert_eq!(exited(143, true).exit_code(), 143);
        assert_eq!(exited(0, false).exit_code(), 1, "never success on its own");
        assert_eq!(exited(7, false).exit_code(), 7);
        assert_eq!(
            Child::Running {
                pid: 1,
                signalled: true
            }
            .exit_code(),
            1
        );
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
        s.set_child(|c| {
            *c = Child::Running {
                pid: 0,
                signalled: true,
            }
        });
        s.child_exited(0);
        assert!(s.live());
        assert_eq!(s.child().exit_code(), 0);
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
