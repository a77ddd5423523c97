//! The drain state machine: serving → announcing → finishing → deadline → done.
//!
//! Sans-IO in the style of `quinn-proto`: the driver feeds events with the current time
//! (`drain`, `request_started`, `request_finished`, `child_exited`, `handle_timeout`), then
//! takes the resulting [`Action`]s with [`DrainMachine::poll_action`] and sleeps until
//! [`DrainMachine::poll_timeout`]. Time is a [`Duration`] since an origin the driver picks;
//! the gate uses real time, the rehearsal and the simulator virtual time.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pod::{Budget, Convergence};

/// A point in time: the offset from the driver's origin.
pub type Time = Duration;

/// What started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The admin `/drain` endpoint (a preStop httpGet, an operator, a controller).
    Endpoint,
    /// SIGTERM or SIGINT.
    Signal,
    /// The drain marker file appeared.
    MarkerFile,
    /// The engine process exited on its own: what is in flight is wound down, then the gate
    /// exits.
    EngineExit,
}

impl Trigger {
    /// Lower-case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Endpoint => "endpoint",
            Trigger::Signal => "signal",
            Trigger::MarkerFile => "marker_file",
            Trigger::EngineExit => "engine_exit",
        }
    }
}

/// The phases of a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Normal operation.
    Serving,
    /// Unready; still serving while load balancers converge; telling clients to go elsewhere.
    Announcing,
    /// New arrivals refused; in-flight work finishing.
    Finishing,
    /// The budget ran out: streams are being ended cleanly, the rest aborted.
    Deadline,
    /// Nothing in flight any more.
    Done,
}

impl Phase {
    /// All phases in order.
    pub const ALL: [Phase; 5] = [
        Phase::Serving,
        Phase::Announcing,
        Phase::Finishing,
        Phase::Deadline,
        Phase::Done,
    ];

    /// Lower-case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Announcing => "announcing",
            Phase::Finishing => "finishing",
            Phase::Deadline => "deadline",
            Phase::Done => "done",
        }
    }
}

/// How a request that is starting must be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it normally.
    Serve,
    /// Serve it, and tell the client to go elsewhere next time (`Connection: close`).
    ServeAndClose,
    /// Refuse it: 503 with `Retry-After` and `Connection: close`. Not counted as in flight.
    Refuse,
    /// Refuse it because the in-flight limit is reached: 503 with `Retry-After`, the
    /// connection kept. Not counted as in flight.
    Overloaded,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed normally (whatever the status code the upstream chose).
    Ok,
    /// The upstream could not be reached or failed mid-response.
    UpstreamError,
    /// Refused because the drain had reached the finishing phase.
    RejectedDraining,
    /// Refused because the in-flight limit was reached.
    RejectedOverload,
    /// Ended by the deadline: a stream closed with the terminal event, a response not yet
    /// started answered 503, or any other response aborted.
    Truncated,
    /// The client went away first.
    ClientAbort,
    /// The client sent a request the gate could not pass on (a malformed body): answered 400.
    ClientError,
    /// The response could not finish here and was handed to a peer replica: it is no longer
    /// the engine's work, but the gate relays the peer's continuation until it ends (see
    /// [`DrainMachine::relay_finished`]).
    HandedOff,
}

impl Outcome {
    /// All outcomes.
    pub const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::UpstreamError,
        Outcome::RejectedDraining,
        Outcome::RejectedOverload,
        Outcome::Truncated,
        Outcome::ClientAbort,
        Outcome::ClientError,
        Outcome::HandedOff,
    ];

    /// Lower-case name, as in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::RejectedDraining => "rejected_draining",
            Outcome::RejectedOverload => "rejected_overload",
            Outcome::Truncated => "truncated",
            Outcome::ClientAbort => "client_abort",
            Outcome::ClientError => "client_error",
            Outcome::HandedOff => "handed_off",
        }
    }

    /// Its index in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail readiness from now on.
    GoUnready,
    /// Tell every client to go elsewhere: close idle keep-alive connections, send HTTP/2
    /// GOAWAY, add `Connection: close` to HTTP/1.1 responses.
    Announce,
    /// Refuse new arrivals from now on.
    StartRefusing,
    /// The deadline: end every stream at an event boundary with the terminal event, answer
    /// requests whose response has not started with 503, abort the rest.
    EndStreams,
    /// Nothing is in flight any more (or the deadline passed): the drain report is final
    /// except for arrivals that are refused from now on.
    Drained,
    /// Send SIGTERM to the child.
    SignalChild,
    /// Send SIGKILL to the child.
    KillChild,
    /// The hard stop came with handed-off responses still relaying: end them now with the
    /// terminal event (the kubelet's SIGKILL is about to end the process).
    EndRelays,
    /// Exit the process. Always the machine's last action, and queued at most once.
    Exit,
}

/// A request to drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainRequest {
    /// What asked for it.
    pub trigger: Trigger,
    /// Time of the grace period already spent before this trigger fired.
    pub already_spent: Duration,
    /// End in-flight work no later than this long from now (a spot notice, an operator's
    /// deadline). Can only shorten the budget.
    pub deadline: Option<Duration>,
    /// Stop the child and exit once drained (SIGTERM); `/drain` and the marker file only drain.
    pub exit: bool,
}

impl DrainRequest {
    /// A request from `trigger` with nothing spent, no explicit deadline, no exit.
    pub fn new(trigger: Trigger) -> Self {
        DrainRequest {
            trigger,
            already_spent: Duration::ZERO,
            deadline: None,
            exit: false,
        }
    }
}

/// Whether a drain request started a drain or joined the one under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// This request started the drain.
    Started,
    /// A drain was already under way; this request joined it.
    Joined,
}

/// The machine's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// The pod's `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// Kept at the end of the grace period for ending streams, stopping the child, exiting.
    pub margin: Duration,
    /// The announcing window.
    pub convergence: Convergence,
    /// Time between SIGTERM and SIGKILL to the child; `None` when there is no child.
    pub child_timeout: Option<Duration>,
    /// After `EndStreams`, how long to wait for in-flight work to reach zero before the drain
    /// is declared done anyway. Also how long in-flight work gets to end on its own after the
    /// engine exited unexpectedly, before it is cut.
    pub deadline_linger: Duration,
    /// Refuse new requests while this many are in flight (`None`: no limit).
    pub max_in_flight: Option<u64>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            grace: crate::pod::DEFAULT_GRACE,
            margin: crate::pod::DEFAULT_KILL_MARGIN,
            convergence: Convergence::default(),
            child_timeout: Some(crate::pod::DEFAULT_CHILD_TIMEOUT),
            deadline_linger: Duration::from_secs(1),
            max_in_flight: None,
        }
    }
}

/// An inconsistent [`DrainConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl DrainConfig {
    /// Checks that the settings make sense together; the error names the settings at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.convergence;
        if c.min > c.max {
            return Err(ConfigError(format!(
                "convergence minimum ({:?}) is longer than its maximum ({:?}): lower --convergence-min or raise --convergence-max",
                c.min, c.max
            )));
        }
        if self.margin >= self.grace && !self.grace.is_zero() {
            return Err(ConfigError(format!(
                "kill margin ({:?}) leaves nothing of the grace period ({:?}): lower --kill-margin or raise --grace-period",
                self.margin, self.grace
            )));
        }
        Ok(())
    }

    /// The budget for a drain request.
    pub fn budget(&self, already_spent: Duration) -> Budget {
        Budget {
            grace: self.grace,
            already_spent,
            margin: self.margin,
        }
    }
}

/// A phase and when it began, relative to the drain's start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseMark {
    /// The phase.
    pub phase: Phase,
    /// Seconds since the drain started.
    #[serde(serialize_with = "secs", deserialize_with = "de_secs")]
    pub at: Duration,
}

/// The drain report: everything a person needs to judge a drain.
///
/// Every request the gate admitted during the drain is counted exactly once, so
/// `in_flight_at_start + arrivals_after_unready − rejected − overloaded` equals
/// `completed + truncated + upstream_errors + client_errors + client_aborts + handed_off +
/// in_flight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// What started the drain.
    pub trigger: Trigger,
    /// Every phase entered, with when.
    pub phases: Vec<PhaseMark>,
    /// Seconds from drain start to the deadline that applied.
    #[serde(serialize_with = "secs", deserialize_with = "de_secs")]
    pub deadline: Duration,
    /// Requests in flight when the drain started.
    pub in_flight_at_start: u64,
    /// Requests still in flight now.
    pub in_flight: u64,
    /// Requests that completed normally during the drain.
    pub completed: u64,
    /// Requests ended by the deadline.
    pub truncated: u64,
    /// Arrivals refused during finishing.
    pub rejected: u64,
    /// Arrivals refused because the in-flight limit was reached.
    #[serde(default)]
    pub overloaded: u64,
    /// Requests that failed upstream during the drain.
    pub upstream_errors: u64,
    /// Requests the client sent malformed (answered 400) during the drain.
    #[serde(default)]
    pub client_errors: u64,
    /// Requests whose client went away during the drain.
    pub client_aborts: u64,
    /// Responses handed to a peer replica during the drain (each then ends as one of
    /// `handoffs_completed`, `handoffs_failed`, or is still `relaying`).
    #[serde(default)]
    pub handed_off: u64,
    /// Handed-off responses whose continuation reached the client whole.
    #[serde(default)]
    pub handoffs_completed: u64,
    /// Handed-off responses that ended with the terminal event after all (no peer finished
    /// them in time) or whose client went away.
    #[serde(default)]
    pub handoffs_failed: u64,
    /// Handed-off responses still relaying now.
    #[serde(default)]
    pub relaying: u64,
    /// Requests that arrived after the gate went unready (served or refused).
    pub arrivals_after_unready: u64,
    /// Delay from going unready to the last arrival: the measured propagation lag.
    #[serde(serialize_with = "opt_secs", deserialize_with = "de_opt_secs", default)]
    pub propagation_lag: Option<Duration>,
    /// Seconds from drain start until nothing was in flight, once done.
    #[serde(serialize_with = "opt_secs", deserialize_with = "de_opt_secs", default)]
    pub total: Option<Duration>,
    /// Seconds from drain start until the control plane took the pod's endpoint out of
    /// rotation (marked not ready or removed in its EndpointSlices), when watched.
    #[serde(
        serialize_with = "opt_secs",
        deserialize_with = "de_opt_secs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_gone: Option<Duration>,
    /// From that instant to the last arrival after it: how long the data plane (kube-proxy,
    /// load balancers, meshes) still sent requests. Zero when nothing arrived after it.
    #[serde(
        serialize_with = "opt_secs",
        deserialize_with = "de_opt_secs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub data_plane_lag: Option<Duration>,
}

impl DrainReport {
    /// Requests that did not complete normally: truncated by the deadline, failed upstream,
    /// or still in flight.
    pub fn lost(&self) -> u64 {
        self.truncated
            + self.upstream_errors
            + self.in_flight
            + self.handoffs_failed
            + self.relaying
    }

    /// Requests that reached their client whole: completed here, or handed off and completed
    /// by a peer.
    pub fn delivered(&self) -> u64 {
        self.completed + self.handoffs_completed
    }

    /// Requests ended with the terminal event: truncated here, or handed off without a peer
    /// finishing them (a relay still running counts here: it ends by the hard stop at the
    /// latest, and the report is read as the pod goes).
    pub fn cut_short(&self) -> u64 {
        self.truncated + self.handoffs_failed + self.relaying
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => secs(d, s),
        None => s.serialize_none(),
    }
}

fn de_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
}

fn de_opt_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        Some(v) => Duration::try_from_secs_f64(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[derive(Debug, Clone)]
struct Draining {
    trigger: Trigger,
    started: Time,
    deadline: Time,
    hard_stop: Time,
    /// The latest hard stop an explicit deadline allows.
    cap: Option<Time>,
    exit: bool,
    last_arrival: Option<Time>,
    phases: Vec<PhaseMark>,
    in_flight_at_start: u64,
    completed: u64,
    truncated: u64,
    rejected: u64,
    overloaded: u64,
    upstream_errors: u64,
    client_errors: u64,
    client_aborts: u64,
    handed_off: u64,
    handoffs_completed: u64,
    handoffs_failed: u64,
    arrivals: u64,
    drained_at: Option<Time>,
    child_signalled: Option<Time>,
    child_killed: bool,
    endpoint_gone: Option<Time>,
}

impl Draining {
    fn new(trigger: Trigger, started: Time, deadline: Time, hard_stop: Time, exit: bool) -> Self {
        Draining {
            trigger,
            started,
            deadline,
            hard_stop,
            cap: None,
            exit,
            last_arrival: None,
            phases: Vec::with_capacity(4),
            in_flight_at_start: 0,
            completed: 0,
            truncated: 0,
            rejected: 0,
            overloaded: 0,
            upstream_errors: 0,
            client_errors: 0,
            client_aborts: 0,
            handed_off: 0,
            handoffs_completed: 0,
            handoffs_failed: 0,
            arrivals: 0,
            drained_at: None,
            child_signalled: None,
            child_killed: false,
            endpoint_gone: None,
        }
    }
}

/// The drain state machine. See the module docs.
///
/// Its promises, checked by property tests over its actions:
/// - the child gets `SignalChild` only once the drain is done: nothing in flight, or the
///   deadline (and its linger) passed;
/// - `KillChild` only after `SignalChild`;
/// - `Exit` at most once, and nothing after it; it comes only once the drain is done, so that
///   every response has ended its own way (or was cut at the deadline) before the process
///   exits — also when the engine died on its own.
#[derive(Debug, Clone)]
pub struct DrainMachine {
    config: DrainConfig,
    phase: Phase,
    in_flight: u64,
    /// Handed-off responses the gate is relaying.
    relays: u64,
    relays_ended: bool,
    drain: Option<Draining>,
    child_exited: bool,
    exit_queued: bool,
    actions: VecDeque<Action>,
}

impl DrainMachine {
    /// A machine in the serving phase.
    pub fn new(config: DrainConfig) -> Self {
        DrainMachine {
            config,
            phase: Phase::Serving,
            in_flight: 0,
            relays: 0,
            relays_ended: false,
            drain: None,
            child_exited: false,
            exit_queued: false,
            actions: VecDeque::with_capacity(8),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DrainConfig {
        &self.config
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Requests and streams in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Whether a drain is under way or done.
    pub fn is_draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Whether the `Exit` action has been queued.
    pub fn exiting(&self) -> bool {
        self.exit_queued
    }

    /// When the drain started, if one did.
    pub fn drain_started(&self) -> Option<Time> {
        self.drain.as_ref().map(|d| d.started)
    }

    /// When the control plane took the endpoint out of rotation, if seen during this drain.
    pub fn endpoint_gone_at(&self) -> Option<Time> {
        self.drain.as_ref().and_then(|d| d.endpoint_gone)
    }

    /// The deadline for in-flight work, if a drain is under way.
    pub fn deadline(&self) -> Option<Time> {
        self.drain.as_ref().map(|d| d.deadline)
    }

    /// When the announcing window ends given what has been seen so far. Once the control
    /// plane has taken the endpoint out of rotation, the minimum no longer applies (it stands
    /// in for that unseen moment): the quiet period after the later of that instant and the
    /// last arrival is enough.
    fn announce_end(&self, d: &Draining) -> Time {
        let c = &self.config.convergence;
        let floor = match d.endpoint_gone {
            Some(gone) => gone
                .saturating_add(c.quiet)
                .min(d.started.saturating_add(c.min).max(gone)),
            None => d.started.saturating_add(c.min),
        };
        let end = match d.last_arrival {
            Some(last) => floor.max(last.saturating_add(c.quiet)),
            None => floor,
        };
        end.min(d.started.saturating_add(c.max)).min(d.deadline)
    }

    /// The control plane took the pod's endpoint out of rotation (the gate saw it in the
    /// EndpointSlices it watches). Only the first report of a drain counts; before a drain it
    /// is ignored (the endpoint goes when the pod is deleted, just before the drain starts, and
    /// the drain's own start is then the better mark).
    pub fn endpoint_gone(&mut self, now: Time) {
        let Some(d) = &mut self.drain else { return };
        if d.endpoint_gone.is_none() {
            d.endpoint_gone = Some(now.max(d.started));
            self.advance(now);
        }
    }

    /// The pod's deletion gives a shorter grace period than configured (its
    /// `deletionGracePeriodSeconds`), of which `spent` has already passed. The budget is
    /// recomputed with it; a drain under way gets the earlier deadline and stop. A longer one
    /// changes nothing: the gate never plans past what it was told.
    pub fn limit_grace(&mut self, now: Time, grace: Duration, spent: Duration) {
        if grace >= self.config.grace {
            return;
        }
        self.config.grace = grace;
        if self.exit_queued {
            return;
        }
        let budget = self.config.budget(spent);
        if let Some(d) = &mut self.drain {
            d.deadline = d.deadline.min(budget.deadline(now).max(d.started));
            d.hard_stop = d.hard_stop.min(budget.hard_stop(now)).max(d.deadline);
        }
        self.advance(now);
    }

    /// Starts a drain, or joins the one under way. A join can only shorten the deadline and
    /// can add the wish to exit.
    pub fn drain(&mut self, now: Time, req: DrainRequest) -> Join {
        if self.exit_queued {
            return Join::Joined;
        }
        let explicit = req.deadline.map(|d| now.saturating_add(d));
        // An explicit deadline (a spot notice less its margin) says when the end comes: the
        // process may live at most the kill margin past it, whatever the grace period says
        // (the hard stop then bounds the engine's stop and the relays of handed-off streams).
        let cap = req.deadline.map(|d| {
            Budget {
                grace: d.saturating_add(self.config.margin),
                already_spent: Duration::ZERO,
                margin: self.config.margin,
            }
            .hard_stop(now)
        });
        let join = match &mut self.drain {
            Some(d) => {
                if let Some(e) = explicit {
                    d.deadline = d.deadline.min(e.max(d.started));
                }
                if req.exit && !d.exit {
                    // A SIGTERM that joins an earlier drain (marker file, operator, spot
                    // notice) starts the kubelet's grace period now, less what the caller
                    // says is spent (a preStop `/drain` that just returned: its time): the
                    // engine may be stopped as late as that period allows.
                    let hard_stop = self.config.budget(req.already_spent).hard_stop(now);
                    d.hard_stop = d.hard_stop.max(hard_stop);
                }
                d.cap = match (d.cap, cap) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(c) = d.cap {
                    d.hard_stop = d.hard_stop.min(c).max(d.deadline);
                }
                d.exit |= req.exit;
                Join::Joined
            }
            None => {
                let budget = self.config.budget(req.already_spent);
                let mut deadline = budget.deadline(now);
                if let Some(e) = explicit {
                    deadline = deadline.min(e);
                }
                let mut hard_stop = budget.hard_stop(now);
                if let Some(c) = cap {
                    hard_stop = hard_stop.min(c);
                }
                let mut draining = Draining::new(
                    req.trigger,
                    now,
                    deadline,
                    hard_stop.max(deadline),
                    req.exit,
                );
                draining.cap = cap;
                self.start(now, draining);
                self.enter(now, Phase::Announcing);
                self.actions.push_back(Action::GoUnready);
                self.actions.push_back(Action::Announce);
                Join::Started
            }
        };
        self.advance(now);
        join
    }

    fn start(&mut self, now: Time, mut d: Draining) {
        d.in_flight_at_start = self.in_flight;
        d.started = now;
        self.drain = Some(d);
    }

    /// A request is starting. Admitted requests count as in flight until
    /// [`request_finished`](Self::request_finished).
    pub fn request_started(&mut self, now: Time) -> Admission {
        let mut admission = match self.phase {
            Phase::Serving => Admission::Serve,
            Phase::Announcing => Admission::ServeAndClose,
            Phase::Finishing | Phase::Deadline | Phase::Done => Admission::Refuse,
        };
        if admission != Admission::Refuse
            && self
                .config
                .max_in_flight
                .is_some_and(|m| self.in_flight >= m)
        {
            admission = Admission::Overloaded;
        }
        if let Some(d) = &mut self.drain {
            d.arrivals += 1;
            // Never before the drain's start, whatever order callers read their clocks in.
            d.last_arrival = Some(now.max(d.started));
            match admission {
                Admission::Refuse => d.rejected += 1,
                Admission::Overloaded => d.overloaded += 1,
                Admission::Serve | Admission::ServeAndClose => {}
            }
        }
        if matches!(admission, Admission::Serve | Admission::ServeAndClose) {
            self.in_flight += 1;
        }
        // A new arrival can only push the end of announcing later; nothing to advance.
        admission
    }

    /// An admitted request ended.
    pub fn request_finished(&mut self, now: Time, outcome: Outcome) {
        // Saturating: a stray finish must never make the count wrap.
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(d) = &mut self.drain {
            match outcome {
                Outcome::Ok => d.completed += 1,
                Outcome::Truncated => d.truncated += 1,
                Outcome::UpstreamError => d.upstream_errors += 1,
                Outcome::ClientAbort => d.client_aborts += 1,
                Outcome::ClientError => d.client_errors += 1,
                Outcome::RejectedDraining => d.rejected += 1,
                Outcome::RejectedOverload => d.overloaded += 1,
                Outcome::HandedOff => d.handed_off += 1,
            }
        }
        if outcome == Outcome::HandedOff {
            self.relays += 1;
        }
        if self.in_flight == 0 {
            self.advance(now);
        }
    }

    /// A handed-off response ended: its continuation reached the client whole
    /// (`completed`), or not.
    ///
    /// Relays keep the process alive after the drain (the engine is stopped meanwhile) until
    /// they end or the hard stop comes, when [`Action::EndRelays`] cuts them.
    pub fn relay_finished(&mut self, now: Time, completed: bool) {
        self.relays = self.relays.saturating_sub(1);
        if let Some(d) = &mut self.drain {
            if completed {
                d.handoffs_completed += 1;
            } else {
                d.handoffs_failed += 1;
            }
        }
        if self.relays == 0 {
            self.advance(now);
        }
    }

    /// Handed-off responses being relayed now.
    pub fn relays(&self) -> u64 {
        self.relays
    }

    /// The child process exited (on its own or because it was signalled).
    ///
    /// The gate exits afterwards, but only once what is in flight has ended: responses get
    /// `deadline_linger` to end on their own (an engine's death fails them quickly), then
    /// the deadline cuts the rest cleanly. With no drain under way, one starts (trigger
    /// `engine_exit`) directly in the finishing phase: the engine is gone, so new arrivals
    /// are refused with 503 rather than sent to a dead port.
    pub fn child_exited(&mut self, now: Time) {
        if self.child_exited {
            return;
        }
        self.child_exited = true;
        let cut = now.saturating_add(self.config.deadline_linger);
        match &mut self.drain {
            Some(d) => {
                d.exit = true;
                d.deadline = d.deadline.min(cut.max(d.started));
                if self.phase == Phase::Announcing {
                    self.enter(now, Phase::Finishing);
                    self.actions.push_back(Action::StartRefusing);
                }
            }
            None => {
                let budget = self.config.budget(Duration::ZERO);
                let deadline = budget.deadline(now).min(cut);
                // The hard stop only bounds relays here (the child is gone): a handed-off
                // response may finish within the grace period.
                let hard_stop = budget.hard_stop(now).max(deadline);
                self.start(
                    now,
                    Draining::new(Trigger::EngineExit, now, deadline, hard_stop, true),
                );
                self.enter(now, Phase::Finishing);
                self.actions.push_back(Action::GoUnready);
                self.actions.push_back(Action::Announce);
                self.actions.push_back(Action::StartRefusing);
            }
        }
        self.advance(now);
    }

    /// Time has passed; call at or after [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.exit_queued {
            return None;
        }
        let d = self.drain.as_ref()?;
        match self.phase {
            Phase::Serving => None,
            Phase::Announcing => Some(self.announce_end(d)),
            Phase::Finishing => Some(d.deadline),
            Phase::Deadline => Some(d.deadline.saturating_add(self.config.deadline_linger)),
            Phase::Done => match (d.child_signalled, d.child_killed, self.child_exited) {
                (Some(at), false, false) => Some(self.kill_at(d, at)),
                _ if d.exit && self.relays > 0 && !self.relays_ended => Some(d.hard_stop),
                _ => None,
            },
        }
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether actions are waiting.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// The drain report so far, if a drain started.
    pub fn report(&self) -> Option<DrainReport> {
        let d = self.drain.as_ref()?;
        Some(DrainReport {
            trigger: d.trigger,
            phases: d.phases.clone(),
            deadline: d.deadline.saturating_sub(d.started),
            in_flight_at_start: d.in_flight_at_start,
            in_flight: self.in_flight,
            completed: d.completed,
            truncated: d.truncated,
            rejected: d.rejected,
            overloaded: d.overloaded,
            upstream_errors: d.upstream_errors,
            client_errors: d.client_errors,
            client_aborts: d.client_aborts,
            handed_off: d.handed_off,
            handoffs_completed: d.handoffs_completed,
            handoffs_failed: d.handoffs_failed,
            relaying: self.relays,
            arrivals_after_unready: d.arrivals,
            propagation_lag: d.last_arrival.map(|t| t.saturating_sub(d.started)),
            total: d.drained_at.map(|t| t.saturating_sub(d.started)),
            endpoint_gone: d.endpoint_gone.map(|t| t.saturating_sub(d.started)),
            data_plane_lag: d.endpoint_gone.map(|gone| match d.last_arrival {
                Some(last) => last.saturating_sub(gone),
                None => Duration::ZERO,
            }),
        })
    }

    fn kill_at(&self, d: &Draining, signalled: Time) -> Time {
        match self.config.child_timeout {
            Some(t) => signalled.saturating_add(t).min(d.hard_stop.max(signalled)),
            None => signalled,
        }
    }

    /// Exits once no handed-off response is relaying; at the hard stop, ends them first.
    fn exit_after_relays(&mut self, now: Time) {
        let Some(d) = &self.drain else { return };
        if self.relays > 0 && !self.relays_ended {
            if now < d.hard_stop {
                return;
            }
            self.relays_ended = true;
            self.actions.push_back(Action::EndRelays);
        }
        self.queue_exit();
    }

    fn queue_exit(&mut self) {
        if !self.exit_queued {
            self.exit_queued = true;
            self.actions.push_back(Action::Exit);
        }
    }

    fn enter(&mut self, now: Time, phase: Phase) {
        self.phase = phase;
        if let Some(d) = &mut self.drain {
            d.phases.push(PhaseMark {
                phase,
                at: now.saturating_sub(d.started),
            });
        }
    }

    /// Runs every transition that is due at `now`.
    fn advance(&mut self, now: Time) {
        if self.exit_queued {
            return;
        }
        loop {
            let Some(d) = &self.drain else { return };
            let next = match self.phase {
                Phase::Serving => None,
                Phase::Announcing => (now >= self.announce_end(d))
                    .then_some((Phase::Finishing, Action::StartRefusing)),
                Phase::Finishing => {
                    if self.in_flight == 0 {
                        Some((Phase::Done, Action::Drained))
                    } else if now >= d.deadline {
                        Some((Phase::Deadline, Action::EndStreams))
                    } else {
                        None
                    }
                }
                Phase::Deadline => (self.in_flight == 0
                    || now >= d.deadline.saturating_add(self.config.deadline_linger))
                .then_some((Phase::Done, Action::Drained)),
                Phase::Done => None,
            };
            match next {
                Some((phase, action)) => {
                    self.enter(now, phase);
                    if phase == Phase::Done
                        && let Some(d) = &mut self.drain
                    {
                        d.drained_at = Some(now.max(d.started));
                    }
                    self.actions.push_back(action);
                }
                None => break,
            }
        }
        self.advance_exit(now);
    }

    /// Once drained and asked to exit: stop the child (SIGTERM, then SIGKILL), then exit.
    fn advance_exit(&mut self, now: Time) {
        if self.phase != Phase::Done {
            return;
        }
        let Some(d) = &self.drain else { return };
        if !d.exit {
            return;
        }
        if self.child_exited {
            self.exit_after_relays(now);
            return;
        }
        match (self.config.child_timeout, d.child_signalled, d.child_killed) {
            (None, _, _) => self.exit_after_relays(now),
            (Some(_), None, _) => {
                if let Some(d) = &mut self.drain {
                    d.child_signalled = Some(now);
                }
                self.actions.push_back(Action::SignalChild);
            }
            (Some(_), Some(at), false) if now >= self.kill_at(d, at) => {
                if let Some(d) = &mut self.drain {
                    d.child_killed = true;
                }
                self.actions.push_back(Action::KillChild);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn config() -> DrainConfig {
        DrainConfig {
            grace: S(60),
            margin: S(5),
            convergence: Convergence {
                min: S(2),
                quiet: S(1),
                max: S(10),
            },
            child_timeout: Some(S(3)),
            deadline_linger: S(1),
            max_in_flight: None,
        }
    }

    fn drain_actions(m: &mut DrainMachine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    #[test]
    fn relays_outlive_the_engine_until_they_end_or_the_hard_stop() {
        for relay_ends in [true, false] {
            let mut m = DrainMachine::new(config());
            assert_eq!(m.request_started(S(0)), Admission::Serve);
            let req = DrainRequest {
                exit: true,
                ..DrainRequest::new(Trigger::Signal)
            };
            m.drain(S(1), req);
            m.handle_timeout(S(56));
            assert!(drain_actions(&mut m).contains(&Action::EndStreams));
            // At the deadline the stream is handed to a peer: the engine's work is done.
            m.request_finished(S(56), Outcome::HandedOff);
            assert_eq!(
                drain_actions(&mut m),
                [Action::Drained, Action::SignalChild]
            );
            m.child_exited(S(57));
            assert_eq!(drain_actions(&mut m), [], "no exit while relaying");
            assert_eq!(m.poll_timeout(), Some(S(60)), "the hard stop");
            if relay_ends {
                m.relay_finished(S(58), true);
                assert_eq!(drain_actions(&mut m), [Action::Exit]);
                let r = m.report().unwrap();
                assert_eq!((r.handed_off, r.handoffs_completed, r.relaying), (1, 1, 0));
            } else {
                m.handle_timeout(S(60));
                assert_eq!(drain_actions(&mut m), [Action::EndRelays, Action::Exit]);
                assert_eq!(m.report().unwrap().relaying, 1);
            }
        }
    }

    #[test]
    fn an_explicit_deadline_bounds_relays_by_the_kill_margin() {
        let mut m = DrainMachine::new(config());
        assert_eq!(m.request_started(S(0)), Admission::Serve);
        // A spot notice: end work within 20 s (the node goes about the margin later).
        let notice = DrainRequest {
            deadline: Some(S(20)),
            ..DrainRequest::new(Trigger::Endpoint)
        };
        m.drain(S(1), notice);
        // The kubelet's SIGTERM joins with the long grace period: it must not extend the end.
        let term = DrainRequest {
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        };
        m.drain(S(2), term);
        m.handle_timeout(S(21));
        m.request_finished(S(21), Outcome::HandedOff);
        m.child_exited(S(22));
        let _ = drain_actions(&mut m);
        // 1 + 20 + 5 − 1 (a quarter of the margin, at most 1 s).
        assert_eq!(m.poll_timeout(), Some(S(25)));
        m.handle_timeout(S(25));
        assert_eq!(drain_actions(&mut m), [Action::EndRelays, Action::Exit]);
    }

    #[test]
    fn full_sequence_with_child() {
        let mut m = DrainMachine::new(config());
        assert_eq!(m.request_started(S(0)), Admission::Serve);
        let req = DrainRequest {
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        };
        assert_eq!(m.drain(S(1), req), Join::Started);
        assert_eq!(drain_actions(&mut m), [Action::GoUnready, Action::Announce]);
        assert_eq!(m.deadline(), Some(S(56)));
        // Arrivals during announcing are served and told to close; they extend the window.
        assert_eq!(m.request_started(MS(2500)), Admission::ServeAndClose);
        assert_eq!(m.poll_timeout(), Some(MS(3500)));
        m.handle_timeout(MS(3500));
        assert_eq!(m.phase(), Phase::Finishing);
        assert_eq!(drain_actions(&mut m), [Action::StartRefusing]);
        assert_eq!(m.request_started(S(4)), Admission::Refuse);
        m.request_finished(S(5), Outcome::Ok);
        assert_eq!(m.phase(), Phase::Finishing);
        m.request_finished(S(6), Outcome::Ok);
        assert_eq!(m.phase(), Phase::Done);
        assert_eq!(
            drain_actions(&mut m),
            [Action::Drained, Action::SignalChild]
        );
        assert_eq!(m.poll_timeout(), Some(S(9)));
        m.handle_timeout(S(9));
        assert_eq!(drain_actions(&mut m), [Action::KillChild]);
        m.child_exited(MS(9100));
        assert_eq!(drain_actions(&mut m), [Action::Exit]);
        let r = m.report().unwrap();
        assert_eq!(r.in_flight_at_start, 1);
        assert_eq!(r.completed, 2);
        assert_eq!(r.rejected, 1);
        assert_eq!(r.arrivals_after_unready, 2);
        assert_eq!(r.propagation_lag, Some(S(3)));
        assert_eq!(r.total, Some(S(5)));
        let phases: Vec<_> = r.phases.iter().map(|p| p.phase).collect();
        assert_eq!(phases, [Phase::Announcing, Phase::Finishing, Phase::Done]);
    }

    #[test]
    fn deadline_ends_streams_then_done_after_linger() {
        let mut m = DrainMachine::new(config());
        m.request_started(S(0));
        m.drain(S(0), DrainRequest::new(Trigger::Endpoint));
        m.handle_timeout(S(2));
        assert_eq!(m.phase(), Phase::Finishing);
        m.handle_timeout(S(55));
        assert_eq!(m.phase(), Phase::Deadline);
        drain_actions(&mut m);
        m.handle_timeout(S(56));
        assert_eq!(m.phase(), Phase::Done);
        // Not asked to exit: nothing more happens.
        assert_eq!(drain_actions(&mut m), [Action::Drained]);
        assert_eq!(m.poll_timeout(), None);
        // A later SIGTERM joins and stops the child.
        let sig = DrainRequest {
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        };
        assert_eq!(m.drain(S(70), sig), Join::Joined);
        assert_eq!(drain_actions(&mut m), [Action::SignalChild]);
    }

    #[test]
    fn explicit_deadline_only_shortens() {
        let mut m = DrainMachine::new(config());
        let req = DrainRequest {
            deadline: Some(S(20)),
            ..DrainRequest::new(Trigger::Endpoint)
        };
        m.drain(S(10), req);
        assert_eq!(m.deadline(), Some(S(30)));
        let longer = DrainRequest {
            deadline: Some(S(100)),
            ..DrainRequest::new(Trigger::Endpoint)
        };
        m.drain(S(11), longer);
        assert_eq!(m.deadline(), Some(S(30)));
        let shorter = DrainRequest {
            deadline: Some(S(1)),
            ..DrainRequest::new(Trigger::Endpoint)
        };
        m.drain(S(12), shorter);
        assert_eq!(m.deadline(), Some(S(13)));
    }

    #[test]
    fn child_dying_on_its_own_exits() {
        let mut m = DrainMachine::new(config());
        m.child_exited(S(3));
        assert_eq!(
            drain_actions(&mut m),
            [
                Action::GoUnready,
                Action::Announce,
                Action::StartRefusing,
                Action::Drained,
                Action::Exit
            ]
        );
        assert_eq!(m.phase(), Phase::Done);
        assert_eq!(m.report().unwrap().trigger, Trigger::EngineExit);
    }

    #[test]
    fn child_dying_with_work_in_flight_exits_only_once_it_ended() {
        let mut m = DrainMachine::new(config());
        m.request_started(S(0));
        m.request_started(S(0));
        m.child_exited(S(3));
        assert_eq!(
            drain_actions(&mut m),
            [Action::GoUnready, Action::Announce, Action::StartRefusing]
        );
        assert_eq!(m.request_started(S(3)), Admission::Refuse);
        // One response fails on its own (the engine is gone).
        m.request_finished(MS(3200), Outcome::UpstreamError);
        assert!(drain_actions(&mut m).is_empty());
        // The other is still there after the linger: cut, then done after another linger.
        assert_eq!(m.poll_timeout(), Some(S(4)));
        m.handle_timeout(S(4));
        assert_eq!(drain_actions(&mut m), [Action::EndStreams]);
        m.request_finished(MS(4100), Outcome::Truncated);
        assert_eq!(drain_actions(&mut m), [Action::Drained, Action::Exit]);
        let r = m.report().unwrap();
        assert_eq!(
            (r.in_flight_at_start, r.upstream_errors, r.truncated),
            (2, 1, 1)
        );
        assert_eq!(r.in_flight, 0);
        // Nothing after Exit, whatever happens.
        m.drain(S(5), DrainRequest::new(Trigger::Signal));
        m.request_started(S(5));
        m.handle_timeout(S(100));
        assert!(drain_actions(&mut m).is_empty());
    }

    #[test]
    fn child_dying_during_a_drain_shortens_it() {
        let mut m = DrainMachine::new(config());
        m.request_started(S(0));
        m.drain(S(0), DrainRequest::new(Trigger::Endpoint));
        drain_actions(&mut m);
        m.child_exited(MS(500));
        assert_eq!(m.phase(), Phase::Finishing);
        assert_eq!(drain_actions(&mut m), [Action::StartRefusing]);
        assert_eq!(m.deadline(), Some(MS(1500)));
        m.request_finished(MS(600), Outcome::UpstreamError);
        assert_eq!(drain_actions(&mut m), [Action::Drained, Action::Exit]);
    }

    #[test]
    fn in_flight_limit_refuses_without_counting() {
        let mut m = DrainMachine::new(DrainConfig {
            max_in_flight: Some(2),
            ..config()
        });
        assert_eq!(m.request_started(S(0)), Admission::Serve);
        assert_eq!(m.request_started(S(0)), Admission::Serve);
        assert_eq!(m.request_started(S(0)), Admission::Overloaded);
        assert_eq!(m.in_flight(), 2);
        m.request_finished(S(1), Outcome::Ok);
        assert_eq!(m.request_started(S(1)), Admission::Serve);
        m.drain(S(2), DrainRequest::new(Trigger::Endpoint));
        assert_eq!(m.request_started(S(2)), Admission::Overloaded);
        let r = m.report().unwrap();
        assert_eq!((r.overloaded, r.arrivals_after_unready), (1, 1));
    }

    #[test]
    fn report_round_trips_through_json() {
        let mut m = DrainMachine::new(config());
        m.request_started(S(0));
        m.drain(MS(1500), DrainRequest::new(Trigger::Endpoint));
        m.request_finished(S(2), Outcome::Ok);
        m.handle_timeout(S(4));
        let r = m.report().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let back: DrainReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn sidecar_exits_without_child() {
        let mut m = DrainMachine::new(DrainConfig {
            child_timeout: None,
            ..config()
        });
        let req = DrainRequest {
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        };
        m.drain(S(0), req);
        m.handle_timeout(S(2));
        assert_eq!(
            drain_actions(&mut m),
            [
                Action::GoUnready,
                Action::Announce,
                Action::StartRefusing,
                Action::Drained,
                Action::Exit
            ]
        );
    }

    #[test]
    fn kill_comes_before_the_kubelet_would() {
        let mut m = DrainMachine::new(DrainConfig {
            child_timeout: Some(S(30)),
            ..config()
        });
        m.request_started(S(0));
        let req = DrainRequest {
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        };
        m.drain(S(0), req);
        m.handle_timeout(S(2));
        m.handle_timeout(S(55));
        m.handle_timeout(S(56));
        assert_eq!(m.phase(), Phase::Done);
        // Grace 60 s from 0: SIGKILL from us at 59 s at the latest, not 56 + 30.
        assert_eq!(m.poll_timeout(), Some(S(59)));
    }

    #[test]
    fn sigterm_joining_an_old_drain_gets_its_own_kill_window() {
        let mut m = DrainMachine::new(config());
        m.drain(S(0), DrainRequest::new(Trigger::MarkerFile));
        m.handle_timeout(S(2));
        assert_eq!(m.phase(), Phase::Done);
        drain_actions(&mut m);
        // SIGTERM arrives long after the marker-file drain (grace 60 from now).
        let sig = DrainRequest {
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        };
        m.drain(S(500), sig);
        assert_eq!(drain_actions(&mut m), [Action::SignalChild]);
        assert_eq!(
            m.poll_timeout(),
            Some(S(503)),
            "child timeout, not an instant SIGKILL"
        );
    }

    #[test]
    fn clocks_read_out_of_order_never_panic() {
        let mut m = DrainMachine::new(config());
        m.drain(S(10), DrainRequest::new(Trigger::Endpoint));
        // A request whose clock was read just before the drain's.
        assert_eq!(m.request_started(S(9)), Admission::ServeAndClose);
        m.request_finished(S(8), Outcome::Ok);
        m.handle_timeout(S(5));
        let r = m.report().unwrap();
        assert_eq!(r.propagation_lag, Some(Duration::ZERO));
        assert_eq!(r.total, None, "still announcing");
        let huge = DrainRequest {
            deadline: Some(Duration::MAX),
            ..DrainRequest::new(Trigger::Endpoint)
        };
        m.drain(S(11), huge);
        assert_eq!(m.deadline(), Some(S(65)));
    }

    #[test]
    fn validate_names_the_flags() {
        let bad = DrainConfig {
            convergence: Convergence {
                min: S(20),
                quiet: S(1),
                max: S(10),
            },
            ..config()
        };
        assert!(bad.validate().unwrap_err().0.contains("--convergence-min"));
        let bad = DrainConfig {
            margin: S(60),
            ..config()
        };
        assert!(bad.validate().unwrap_err().0.contains("--kill-margin"));
        assert!(config().validate().is_ok());
    }
    #[test]
    fn a_seen_endpoint_removal_ends_announcing_after_the_quiet_period() {
        let mut c = config();
        c.convergence = Convergence {
            min: S(10),
            quiet: S(1),
            max: S(20),
        };
        let mut m = DrainMachine::new(c);
        m.drain(S(100), DrainRequest::new(Trigger::Endpoint));
        assert_eq!(m.poll_timeout(), Some(S(110)), "blind: the minimum");
        m.request_started(MS(100_300));
        m.endpoint_gone(MS(100_200));
        // Gone at 0.2 s, last arrival 0.3 s after the start: quiet from 0.3 s.
        assert_eq!(m.poll_timeout(), Some(MS(101_300)));
        m.handle_timeout(MS(101_300));
        assert_eq!(m.phase(), Phase::Finishing);
        let r = m.report().expect("report");
        assert_eq!(r.endpoint_gone, Some(MS(200)));
        assert_eq!(r.data_plane_lag, Some(MS(100)));
        // A second report changes nothing.
        m.endpoint_gone(S(105));
        assert_eq!(m.report().expect("report").endpoint_gone, Some(MS(200)));
        // Without a watch the report says nothing about it.
        let mut blind = DrainMachine::new(config());
        blind.drain(S(1), DrainRequest::new(Trigger::Endpoint));
        let r = blind.report().expect("report");
        assert_eq!((r.endpoint_gone, r.data_plane_lag), (None, None));
        let json = serde_json::to_value(&r).expect("json");
        assert!(json.get("endpoint_gone").is_none(), "{json}");
    }

    #[test]
    fn a_shorter_deletion_grace_moves_the_deadline_earlier_only() {
        let mut m = DrainMachine::new(config());
        m.drain(S(0), DrainRequest::new(Trigger::Endpoint));
        assert_eq!(m.deadline(), Some(S(55)));
        // Deleted with --grace-period=20 one second before we saw it.
        m.limit_grace(S(1), S(20), S(1));
        assert_eq!(m.deadline(), Some(S(15)));
        m.limit_grace(S(2), S(40), S(0));
        assert_eq!(m.deadline(), Some(S(15)), "a longer grace changes nothing");
        // Seen before the drain: the drain's budget uses it.
        let mut early = DrainMachine::new(config());
        early.limit_grace(S(0), S(12), S(0));
        early.drain(S(1), DrainRequest::new(Trigger::Signal));
        assert_eq!(early.deadline(), Some(S(8)));
    }
}
