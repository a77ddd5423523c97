//! A pod's termination timeline as Kubernetes defines it, and the budget rule.
//!
//! Deleting a pod starts endpoint removal and the kubelet's termination at the same instant.
//! The kubelet runs each container's preStop hook, then sends SIGTERM, then SIGKILL once
//! `terminationGracePeriodSeconds` has passed since the start — the preStop runs *inside* the
//! grace period. Everything here is plain arithmetic on durations; nothing reads a clock.

use std::time::Duration;

/// The kubelet's default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Time kept at the end of the grace period for ending streams, stopping the engine and
/// exiting (the gate's `--kill-margin` default; the linter's margin).
pub const DEFAULT_KILL_MARGIN: Duration = Duration::from_secs(5);

/// The kubelet always leaves a container at least this long between SIGTERM and SIGKILL,
/// even when the preStop hook used up the grace period (it then stops waiting for the hook,
/// sends SIGTERM, and SIGKILL this much later).
pub const KUBELET_MIN_STOP_WINDOW: Duration = Duration::from_secs(2);

/// How a container's preStop hook spends time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreStop {
    /// No hook: SIGTERM is sent at once.
    None,
    /// An `exec` hook. `sleep` is how long it is known (or estimated) to take, e.g. from a
    /// `sleep 15` in the command; `None` when it cannot be known statically.
    Exec {
        /// Known or estimated run time.
        sleep: Option<Duration>,
    },
    /// An `httpGet` hook (for example the gate's `/drain`, which blocks until drained).
    /// `expected` is how long the call is expected to block, when known.
    HttpGet {
        /// Expected blocking time.
        expected: Option<Duration>,
    },
    /// The `sleep` lifecycle action (Kubernetes 1.29+).
    Sleep(Duration),
}

impl PreStop {
    /// How long the hook is known to take; zero when there is none, `None` when unknown.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            PreStop::None => Some(Duration::ZERO),
            PreStop::Exec { sleep } => *sleep,
            PreStop::HttpGet { expected } => *expected,
            PreStop::Sleep(d) => Some(*d),
        }
    }
}

/// Probe timing as in a container spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

impl Probe {
    /// Worst-case time from the moment the checked thing starts failing until the kubelet
    /// acts on it: `failureThreshold` consecutive failures, each up to a period apart.
    pub fn time_to_fail(&self) -> Duration {
        self.period.saturating_mul(self.failure_threshold.max(1))
    }

    /// Worst-case time from start-up until the probe first succeeds, given the checked thing
    /// becomes healthy at `healthy_after`.
    pub fn time_to_succeed(&self, healthy_after: Duration) -> Duration {
        let first_ok = if healthy_after <= self.initial_delay {
            self.initial_delay
        } else {
            // The first probe at or after `healthy_after`.
            let since = healthy_after - self.initial_delay;
            let periods = since.as_nanos().div_ceil(self.period.as_nanos().max(1));
            self.initial_delay
                + self
                    .period
                    .saturating_mul(periods.min(u32::MAX as u128) as u32)
        };
        first_ok
            + self
                .period
                .saturating_mul(self.success_threshold.max(1) - 1)
    }
}

/// The window in which load balancers are still converging after a pod went unready.
///
/// The gate keeps serving for at least `min`; after that it ends the window once no new
/// request has arrived for `quiet`, and never later than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Convergence {
    /// Always keep serving this long.
    #[serde(serialize_with = "secs")]
    pub min: Duration,
    /// End once no request arrived for this long (after `min`).
    #[serde(serialize_with = "secs")]
    pub quiet: Duration,
    /// Never keep announcing longer than this.
    #[serde(serialize_with = "secs")]
    pub max: Duration,
}

/// Durations in JSON are seconds.
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Convergence {
    fn default() -> Self {
        Convergence::DEFAULT
    }
}

/// The gate's default SIGTERM → SIGKILL window for its engine (`--child-timeout`).
pub const DEFAULT_CHILD_TIMEOUT: Duration = Duration::from_secs(3);

impl Convergence {
    /// The gate's defaults: serve at least 5 s, end after 2 s without arrivals, at most 30 s.
    pub const DEFAULT: Convergence = Convergence {
        min: Duration::from_secs(5),
        quiet: Duration::from_secs(2),
        max: Duration::from_secs(30),
    };

    /// A window that covers a measured propagation lag: serve at least the lag (and never
    /// less than the default minimum), and allow up to twice the lag (never less than the
    /// default maximum) for the balancers that are slower than the one measured.
    pub fn covering(lag: Duration) -> Convergence {
        Convergence::covering_window(lag, Convergence::default().max)
    }

    /// A window that covers a measured propagation lag (at least the lag, up to twice it) and
    /// never ends before `window`, the pod's own convergence window.
    pub fn covering_window(lag: Duration, window: Duration) -> Convergence {
        let d = Convergence::default();
        let max = lag.saturating_mul(2).max(window);
        Convergence {
            min: lag.max(d.min).min(max),
            quiet: d.quiet,
            max,
        }
    }
}

/// The budget rule: how long a drain may take.
///
/// `deadline = drain start + grace − time already spent − margin`. The margin is kept for
/// ending streams, stopping the engine and exiting before the kubelet's SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// Time of the grace period already used before the drain started (for example by a
    /// preStop that ran before SIGTERM triggered the drain).
    pub already_spent: Duration,
    /// Reserved at the end for cleanup.
    pub margin: Duration,
}

impl Budget {
    /// Time from drain start until in-flight work must be ended.
    pub fn available(&self) -> Duration {
        self.grace
            .saturating_sub(self.already_spent)
            .saturating_sub(self.margin)
    }

    /// The instant at which in-flight work must be ended.
    pub fn deadline(&self, drain_start: Duration) -> Duration {
        drain_start.saturating_add(self.available())
    }

    /// The last instant at which the workload may still be stopped with SIGKILL by us rather
    /// than by the kubelet: a quarter of the margin (at most one second) before the grace
    /// period runs out, so that most of the margin is left for the engine's own exit.
    pub fn hard_stop(&self, drain_start: Duration) -> Duration {
        let guard = (self.margin / 4).min(Duration::from_secs(1));
        drain_start.saturating_add(
            self.grace
                .saturating_sub(self.already_spent)
                .saturating_sub(guard),
        )
    }

    /// The grace period needed to finish a request of `max_request` after a preStop of
    /// `pre_stop` and a convergence window, keeping `margin`.
    pub fn required_grace(
        pre_stop: Duration,
        convergence: Duration,
        max_request: Duration,
        margin: Duration,
    ) -> Duration {
        // In-flight work runs during convergence too, so the longest request bounds the
        // drain unless convergence is longer.
        pre_stop + convergence.max(max_request) + margin
    }

    /// The grace period a pod behind the gate needs when its preStop is the gate's `/drain`:
    /// the gate still accepts requests while it announces the drain (at most `convergence`,
    /// its `--convergence-max`), each of those may run `max_request`, and `margin` is kept at
    /// the end.
    pub fn gated_grace(convergence: Duration, max_request: Duration, margin: Duration) -> Duration {
        convergence + max_request + margin
    }

    /// The longest request that still finishes inside a fixed window (a spot notice): what
    /// is left after the convergence window and the margin.
    pub fn request_cap(window: Duration, convergence: Duration, margin: Duration) -> Duration {
        Budget {
            grace: window,
            already_spent: convergence,
            margin,
        }
        .available()
    }
}

/// The convergence window assumed for a pod that states none (no preStop, no gate): how long
/// load balancers may still send requests after a drain starts. 15 s is the common preStop
/// sleep (KServe and llm-d use it). A pod's own preStop sleep, or its gate's
/// `--convergence-max`, is its statement of the window and wins.
pub const DEFAULT_CONVERGENCE_WINDOW: Duration = Duration::from_secs(15);

/// Why requests are admitted until the end of the convergence window: the words every tool
/// uses, for a pod behind the gate and one without it alike.
pub const CONVERGENCE_REASON: &str =
    "the convergence window, while load balancers may still send requests";

/// The grace period a pod needs, with the reasoning, in the words every tool prints.
///
/// A drain admits requests until the end of the pod's convergence window (its preStop sleep,
/// its gate's `--convergence-max`, or [`DEFAULT_CONVERGENCE_WINDOW`]); a request admitted then
/// may run as long as the longest request; and a margin is kept to stop. `lint`, `inject` and
/// `plan` all size the grace period with this, so they agree on one workload, before and after
/// `inject` (which gives the gate the pod's own window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraceNeed {
    /// How long after the drain starts requests are still admitted.
    pub admitted_until: Duration,
    /// Why then ([`CONVERGENCE_REASON`], or a preStop before the gate's drain).
    pub admitted_because: String,
    /// The longest request.
    pub longest: Duration,
    /// Where that figure comes from (`the max-request annotation`, `assumed for vLLM`).
    pub longest_from: String,
    /// Kept at the end to end streams, stop the engine and exit.
    pub margin: Duration,
}

impl GraceNeed {
    /// The grace period needed.
    pub fn total(&self) -> Duration {
        self.admitted_until + self.longest + self.margin
    }

    /// The same in whole seconds, rounded up (as `terminationGracePeriodSeconds` is written).
    pub fn seconds(&self) -> u64 {
        let t = self.total();
        t.as_secs() + u64::from(t.subsec_nanos() > 0)
    }

    /// How it was computed, in one sentence.
    pub fn explain(&self) -> String {
        let s = crate::duration::secs_plain;
        let admitted = if self.admitted_until.is_zero() {
            format!(
                "a request in flight when the drain starts ({})",
                self.admitted_because
            )
        } else {
            format!(
                "a request admitted up to {} s after the drain starts ({})",
                s(self.admitted_until),
                self.admitted_because
            )
        };
        format!(
            "{admitted} may run {} s ({}), and {} s are kept to stop: {} s",
            s(self.longest),
            self.longest_from,
            s(self.margin),
            self.seconds()
        )
    }
}

/// A rough model of a rolling update: each step replaces `per_step` pods and waits `ready`
/// for the new ones; a deleted pod stays terminating for `drain`. The pods still terminating
/// when the rollout ends (at most all of them).
pub fn terminating_peak(replicas: i32, per_step: i32, ready: Duration, drain: Duration) -> i32 {
    let ready = ready.max(Duration::from_secs(1)).as_secs_f64();
    let steps_overlapping = (drain.as_secs_f64() / ready).ceil().max(1.0);
    let overlapping = f64::from(per_step.max(1)) * steps_overlapping;
    replicas.min(overlapping.min(f64::from(i32::MAX)) as i32)
}

/// A SIGTERM this soon after a blocking `/drain` returned is the same termination's: the
/// kubelet sends it as soon as the preStop hook ends.
pub const HOOK_TO_SIGTERM: Duration = Duration::from_secs(2);

/// How much of the kubelet's grace period a SIGTERM arriving at `now` finds spent, given the
/// blocking `/drain` calls seen (a preStop hook: the first of the open ones `began`, `open` of
/// them still waiting, the last `returned`): the time since the hook began when one is still
/// open or returned at most `recent` ago (the grace period counts from the hook's start);
/// `floor` (`--pre-stop-spent`) otherwise, and never less.
pub fn spent_at_sigterm(
    now: Duration,
    began: Option<Duration>,
    open: bool,
    returned: Option<Duration>,
    recent: Duration,
    floor: Duration,
) -> Duration {
    let same_termination = open || returned.is_some_and(|r| now.saturating_sub(r) <= recent);
    match began {
        Some(began) if same_termination => now.saturating_sub(began).max(floor),
        _ => floor,
    }
}

/// One container's termination, as the kubelet runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// The container's preStop hook.
    pub pre_stop: PreStop,
}

impl Termination {
    /// When SIGTERM is sent, counted from the start of termination: when the preStop hook
    /// returns, or at the end of the grace period if the hook is still running then (the
    /// kubelet stops waiting for it). An unknown preStop duration counts as zero.
    pub fn sigterm_at(&self) -> Duration {
        self.pre_stop
            .duration()
            .unwrap_or(Duration::ZERO)
            .min(self.grace)
    }

    /// Whether the preStop hook uses up the whole grace period, so that SIGTERM comes only
    /// [`KUBELET_MIN_STOP_WINDOW`] before SIGKILL.
    pub fn hook_outlasts_grace(&self) -> bool {
        self.pre_stop.duration().is_some_and(|h| h >= self.grace)
    }

    /// When SIGKILL is sent, counted from the start of termination: at the end of the grace
    /// period, but never sooner than [`KUBELET_MIN_STOP_WINDOW`] after SIGTERM.
    pub fn sigkill_at(&self) -> Duration {
        self.grace.max(self.sigterm_at() + KUBELET_MIN_STOP_WINDOW)
    }

    /// Time left after SIGTERM for the process to finish its work.
    pub fn after_sigterm(&self) -> Duration {
        self.sigkill_at() - self.sigterm_at()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sigterm_after_the_pre_stop_hook_finds_the_hooks_time_spent() {
        let s = Duration::from_secs;
        let recent = HOOK_TO_SIGTERM;
        // The hook ran 170 s and returned just now: 170 s of the grace period are gone.
        assert_eq!(
            spent_at_sigterm(s(200), Some(s(30)), false, Some(s(199)), recent, s(0)),
            s(170)
        );
        // Still open (the kubelet's grace ran out first): all of it.
        assert_eq!(
            spent_at_sigterm(s(60), Some(s(30)), true, None, recent, s(0)),
            s(30)
        );
        // An operator's /drain long before: this SIGTERM starts its own count.
        assert_eq!(
            spent_at_sigterm(s(900), Some(s(30)), false, Some(s(100)), recent, s(0)),
            s(0)
        );
        // No hook: --pre-stop-spent; and it is a floor.
        assert_eq!(
            spent_at_sigterm(s(50), None, false, None, recent, s(15)),
            s(15)
        );
        assert_eq!(
            spent_at_sigterm(s(40), Some(s(35)), true, None, recent, s(15)),
            s(15)
        );
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn budget_arithmetic() {
        let b = Budget {
            grace: S(180),
            already_spent: S(15),
            margin: S(5),
        };
        assert_eq!(b.available(), S(160));
        assert_eq!(b.deadline(S(100)), S(260));
        assert_eq!(b.hard_stop(S(100)), S(264));
        let tiny = Budget {
            grace: S(3),
            already_spent: S(15),
            margin: S(5),
        };
        assert_eq!(tiny.available(), Duration::ZERO);
    }

    #[test]
    fn prestop_longer_than_grace_leaves_the_minimum_stop_window() {
        let t = Termination {
            grace: S(30),
            pre_stop: PreStop::Exec { sleep: Some(S(45)) },
        };
        assert!(t.hook_outlasts_grace());
        assert_eq!(t.sigterm_at(), S(30));
        assert_eq!(t.sigkill_at(), S(32));
        assert_eq!(t.after_sigterm(), KUBELET_MIN_STOP_WINDOW);
        // A hook that returns just before the end still gets the two seconds.
        let close = Termination {
            grace: S(30),
            pre_stop: PreStop::Sleep(S(29)),
        };
        assert!(!close.hook_outlasts_grace());
        assert_eq!(close.sigkill_at(), S(31));
        let ok = Termination {
            grace: S(180),
            pre_stop: PreStop::Sleep(S(15)),
        };
        assert_eq!(ok.sigterm_at(), S(15));
        assert_eq!(ok.sigkill_at(), S(180));
        assert_eq!(ok.after_sigterm(), S(165));
    }

    #[test]
    fn probe_timing() {
        let p = Probe {
            period: S(5),
            failure_threshold: 2,
            ..Probe::default()
        };
        assert_eq!(p.time_to_fail(), S(10));
        let p = Probe {
            initial_delay: S(10),
            period: S(10),
            ..Probe::default()
        };
        assert_eq!(p.time_to_succeed(S(5)), S(10));
        assert_eq!(p.time_to_succeed(S(31)), S(40));
    }

    #[test]
    fn grace_need_explains_itself() {
        let n = GraceNeed {
            admitted_until: S(15),
            admitted_because: "the gate's --convergence-max".into(),
            longest: S(150),
            longest_from: "assumed for vLLM".into(),
            margin: S(5),
        };
        assert_eq!(n.seconds(), 170);
        assert_eq!(
            n.explain(),
            "a request admitted up to 15 s after the drain starts (the gate's --convergence-max) may run 150 s (assumed for vLLM), and 5 s are kept to stop: 170 s"
        );
        let half = GraceNeed {
            longest: Duration::from_millis(150_500),
            ..n.clone()
        };
        assert_eq!(half.seconds(), 171, "rounded up");
    }

    #[test]
    fn required_grace() {
        assert_eq!(Budget::required_grace(S(0), S(15), S(150), S(5)), S(155));
        assert_eq!(Budget::required_grace(S(15), S(15), S(5), S(5)), S(35));
        // Behind the gate, a request accepted at the end of the announcing window runs whole.
        assert_eq!(Budget::gated_grace(S(15), S(150), S(5)), S(170));
        assert!(
            Budget::gated_grace(S(15), S(150), S(5))
                > Budget::required_grace(S(0), S(15), S(150), S(5))
        );
    }
}
