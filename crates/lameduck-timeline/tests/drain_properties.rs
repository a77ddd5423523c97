//! Property tests for the drain state machine and the budget rule.

use std::time::Duration;

use lameduck_timeline::{
    Action, Admission, Budget, Convergence, DrainConfig, DrainMachine, DrainRequest, Outcome,
    Phase, Trigger,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    Start,
    Finish(Outcome),
    Drain {
        trigger: Trigger,
        deadline: Option<Duration>,
        exit: bool,
        spent: Duration,
    },
    Tick,
    ChildExited,
    /// A handed-off response's relay ended (completed or not).
    RelayEnded(bool),
    /// The control plane took the endpoint out of rotation.
    EndpointGone,
    /// The pod's deletion set a (possibly shorter) grace period.
    LimitGrace {
        grace: Duration,
        spent: Duration,
    },
}

/// How an admitted request can end (refusals are never "finished").
fn outcome() -> impl Strategy<Value = Outcome> {
    prop::sample::select(vec![
        Outcome::Ok,
        Outcome::UpstreamError,
        Outcome::Truncated,
        Outcome::ClientAbort,
        Outcome::ClientError,
        Outcome::HandedOff,
    ])
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop::sample::select(vec![
        Trigger::Endpoint,
        Trigger::Signal,
        Trigger::MarkerFile,
    ])
}

fn secs(max: u64) -> impl Strategy<Value = Duration> {
    (0..max * 1000).prop_map(Duration::from_millis)
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Start),
        4 => outcome().prop_map(Event::Finish),
        1 => (trigger(), prop::option::of(secs(200)), any::<bool>(), secs(60)).prop_map(
            |(trigger, deadline, exit, spent)| Event::Drain { trigger, deadline, exit, spent }
        ),
        3 => Just(Event::Tick),
        1 => Just(Event::ChildExited),
        2 => any::<bool>().prop_map(Event::RelayEnded),
        1 => Just(Event::EndpointGone),
        1 => (secs(300), secs(30)).prop_map(|(grace, spent)| Event::LimitGrace { grace, spent }),
    ]
}

fn config() -> impl Strategy<Value = DrainConfig> {
    (
        secs(300),
        secs(10),
        secs(20),
        secs(10),
        secs(40),
        prop::option::of(secs(10)),
        prop::option::of(0u64..20),
    )
        .prop_map(
            |(grace, margin, min, quiet, extra, child_timeout, max_in_flight)| DrainConfig {
                grace: grace + margin + Duration::from_millis(1),
                margin,
                convergence: Convergence {
                    min,
                    quiet,
                    max: min + extra,
                },
                child_timeout,
                deadline_linger: Duration::from_secs(1),
                max_in_flight,
            },
        )
}

/// One action as the driver saw it, with the machine's state right after the event.
#[derive(Debug, Clone)]
struct Seen {
    action: Action,
    now: Duration,
    in_flight: u64,
    relays: u64,
    deadline: Option<Duration>,
    phase: Phase,
}

/// Runs events at increasing times, as a driver would: a `Finish` only for a request that was
/// admitted, `ChildExited` once. Returns the machine and every action, in order.
fn run(
    config: DrainConfig,
    events: &[(Duration, Event)],
    mut check: impl FnMut(&DrainMachine, Duration, &Event),
) -> (DrainMachine, Vec<Seen>) {
    let mut m = DrainMachine::new(config);
    let mut now = Duration::ZERO;
    let mut admitted = 0u64;
    let mut relaying = 0u64;
    let mut child_alive = config.child_timeout.is_some();
    let mut seen = Vec::new();
    for (step, ev) in events {
        now += *step;
        match ev {
            Event::Start => {
                if matches!(
                    m.request_started(now),
                    Admission::Serve | Admission::ServeAndClose
                ) {
                    admitted += 1;
                }
            }
            Event::Finish(o) => {
                if admitted > 0 {
                    admitted -= 1;
                    m.request_finished(now, *o);
                    if *o == Outcome::HandedOff {
                        relaying += 1;
                    }
                }
            }
            Event::RelayEnded(completed) => {
                if relaying > 0 {
                    relaying -= 1;
                    m.relay_finished(now, *completed);
                }
            }
            Event::Drain {
                trigger,
                deadline,
                exit,
                spent,
            } => {
                m.drain(
                    now,
                    DrainRequest {
                        trigger: *trigger,
                        already_spent: *spent,
                        deadline: *deadline,
                        exit: *exit,
                    },
                );
            }
            Event::Tick => {
                if let Some(t) = m.poll_timeout() {
                    now = now.max(t);
                }
                m.handle_timeout(now);
            }
            Event::ChildExited => {
                if child_alive {
                    child_alive = false;
                    m.child_exited(now);
                }
            }
            Event::EndpointGone => m.endpoint_gone(now),
            Event::LimitGrace { grace, spent } => m.limit_grace(now, *grace, *spent),
        }
        while let Some(action) = m.poll_action() {
            seen.push(Seen {
                action,
                now,
                in_flight: m.in_flight(),
                relays: m.relays(),
                deadline: m.deadline(),
                phase: m.phase(),
            });
        }
        check(&m, now, ev);
    }
    (m, seen)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The in-flight count equals admitted starts minus finishes; the in-flight limit is
    /// never exceeded; a finish with nothing in flight does not wrap the count.
    #[test]
    fn in_flight_counts_admitted_work(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..200),
    ) {
        let mut model: u64 = 0;
        let mut m = DrainMachine::new(config);
        let mut now = Duration::ZERO;
        for (step, ev) in &events {
            now += *step;
            match ev {
                Event::Start => match m.request_started(now) {
                    Admission::Serve | Admission::ServeAndClose => model += 1,
                    Admission::Refuse | Admission::Overloaded => {}
                },
                Event::Finish(o) => {
                    m.request_finished(now, *o);
                    model = model.saturating_sub(1);
                }
                Event::Drain { trigger, .. } => {
                    m.drain(now, DrainRequest::new(*trigger));
                }
                Event::Tick => m.handle_timeout(now),
                Event::ChildExited => m.child_exited(now),
                Event::RelayEnded(c) => m.relay_finished(now, *c),
                Event::EndpointGone => m.endpoint_gone(now),
                Event::LimitGrace { grace, spent } => m.limit_grace(now, *grace, *spent),
            }
            prop_assert_eq!(m.in_flight(), model);
            if let Some(max) = config.max_in_flight {
                prop_assert!(m.in_flight() <= max, "{} in flight, limit {max}", m.in_flight());
            }
        }
    }

    /// The promises the gate relies on, checked on the actions themselves: the child gets
    /// SIGTERM only once nothing is in flight or the deadline has passed, at most once;
    /// SIGKILL only after SIGTERM, at most once; `Drained` before either; `Exit` at most once,
    /// last, and only once the drain is done.
    #[test]
    fn actions_keep_their_promises(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..300),
    ) {
        let (m, seen) = run(config, &events, |_, _, _| {});
        let pos = |a: Action| seen.iter().position(|s| s.action == a);
        let count = |a: Action| seen.iter().filter(|s| s.action == a).count();
        prop_assert!(count(Action::SignalChild) <= 1, "{seen:#?}");
        prop_assert!(count(Action::KillChild) <= 1, "{seen:#?}");
        prop_assert!(count(Action::Exit) <= 1, "{seen:#?}");
        prop_assert!(count(Action::Drained) <= 1, "{seen:#?}");
        if let Some(i) = pos(Action::SignalChild) {
            let s = &seen[i];
            let past_deadline = s.deadline.is_some_and(|d| s.now >= d);
            prop_assert!(s.in_flight == 0 || past_deadline, "SIGTERM with work in flight before the deadline: {s:?}");
            prop_assert!(pos(Action::Drained).is_some_and(|d| d < i), "SIGTERM before Drained: {seen:#?}");
            prop_assert!(config.child_timeout.is_some(), "SIGTERM with no child");
        }
        if let Some(i) = pos(Action::KillChild) {
            prop_assert!(pos(Action::SignalChild).is_some_and(|s| s < i), "SIGKILL before SIGTERM: {seen:#?}");
        }
        if let Some(i) = pos(Action::Exit) {
            prop_assert_eq!(i, seen.len() - 1, "Exit is not last: {:#?}", seen);
            let s = &seen[i];
            prop_assert_eq!(s.phase, Phase::Done);
            let past_deadline = s.deadline.is_some_and(|d| s.now >= d);
            prop_assert!(s.in_flight == 0 || past_deadline, "Exit with work in flight before the deadline: {s:?}");
            prop_assert!(pos(Action::Drained).is_some_and(|d| d < i), "Exit before Drained: {seen:#?}");
            prop_assert!(m.exiting());
            // Relays end on their own before the exit, or are ended just before it.
            let ended = pos(Action::EndRelays);
            prop_assert!(s.relays == 0 || ended.is_some_and(|e| e + 1 == i), "Exit while relaying: {seen:#?}");
        }
        prop_assert!(count(Action::EndRelays) <= 1, "{seen:#?}");
        if let Some(i) = pos(Action::EndRelays) {
            prop_assert!(seen[i].relays > 0, "EndRelays with nothing relaying: {:?}", seen[i]);
            prop_assert!(pos(Action::Exit) == Some(i + 1), "EndRelays not followed by Exit: {seen:#?}");
        }
        for a in [Action::EndStreams, Action::StartRefusing, Action::GoUnready, Action::Announce] {
            prop_assert!(count(a) <= 1, "{a:?} twice: {seen:#?}");
        }
    }

    /// Every admitted request of a drain is accounted for exactly once in its report.
    #[test]
    fn report_adds_up(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..300),
    ) {
        let (m, _) = run(config, &events, |_, _, _| {});
        if let Some(r) = m.report() {
            let admitted = r.in_flight_at_start + r.arrivals_after_unready - r.rejected - r.overloaded;
            let ended = r.completed + r.truncated + r.upstream_errors + r.client_errors + r.client_aborts + r.handed_off;
            prop_assert_eq!(admitted, ended + r.in_flight, "{:?}", r);
            prop_assert_eq!(r.relaying, m.relays());
        }
    }

    /// The deadline is never later than drain start + grace − margin, and only ever moves
    /// earlier once set.
    #[test]
    fn deadline_bounded_and_only_shortens(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..200),
    ) {
        let mut last: Option<Duration> = None;
        run(config, &events, |m, _now, _ev| {
            if let (Some(start), Some(deadline)) = (m.drain_started(), m.deadline()) {
                assert!(deadline <= start + config.grace.saturating_sub(config.margin),
                    "deadline {deadline:?} past start {start:?} + grace − margin");
                if let Some(prev) = last {
                    assert!(deadline <= prev, "deadline moved later: {prev:?} → {deadline:?}");
                }
                last = Some(deadline);
            }
        });
    }

    /// A repeated or concurrent drain request joins the first: same start, same trigger.
    #[test]
    fn repeated_drain_joins_first(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..200),
    ) {
        let mut first: Option<(Duration, Trigger)> = None;
        run(config, &events, |m, _now, _ev| {
            if let (Some(start), Some(report)) = (m.drain_started(), m.report()) {
                match first {
                    None => first = Some((start, report.trigger)),
                    Some((s, t)) => {
                        assert_eq!(s, start);
                        assert_eq!(t, report.trigger);
                    }
                }
            }
        });
    }

    /// Phases only move forward, and the report lists each phase once, in order.
    #[test]
    fn phases_move_forward(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..200),
    ) {
        let mut prev = Phase::Serving;
        let (m, _) = run(config, &events, |m, _now, _ev| {
            assert!(m.phase() >= prev, "{prev:?} → {:?}", m.phase());
            prev = m.phase();
        });
        if let Some(r) = m.report() {
            let phases: Vec<Phase> = r.phases.iter().map(|p| p.phase).collect();
            let mut sorted = phases.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(phases, sorted);
        }
    }

    /// With nothing in flight and no arrivals, the drain ends exactly when the minimum
    /// convergence window has passed (or at the deadline, if that is sooner).
    #[test]
    fn idle_drain_ends_after_minimum_window(config in config(), start in secs(1000)) {
        let mut m = DrainMachine::new(config);
        m.drain(start, DrainRequest::new(Trigger::Endpoint));
        let expected = start + config.convergence.min.min(config.grace - config.margin);
        let timeout = m.poll_timeout();
        if timeout.is_none() {
            // A zero window: the drain ends inside `drain` itself, with no timer to wait for.
            prop_assert_eq!(expected, start);
            prop_assert_eq!(m.phase(), Phase::Done);
            return Ok(());
        }
        prop_assert_eq!(timeout, Some(expected));
        if expected > start {
            m.handle_timeout(expected - Duration::from_nanos(1));
            prop_assert_eq!(m.phase(), Phase::Announcing);
        }
        m.handle_timeout(expected);
        prop_assert_eq!(m.phase(), Phase::Done);
        let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
        prop_assert!(actions.contains(&Action::Drained));
        prop_assert_eq!(m.report().and_then(|r| r.total), Some(expected - start));
    }

    /// Budget arithmetic: the deadline never exceeds grace − margin, and spending more of the
    /// grace period before the drain never makes the deadline later.
    #[test]
    fn budget_monotone(grace in secs(600), margin in secs(30), a in secs(300), b in secs(300), start in secs(1000)) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let budget = |spent| Budget { grace, already_spent: spent, margin };
        prop_assert!(budget(lo).deadline(start) <= start + grace.saturating_sub(margin));
        prop_assert!(budget(hi).deadline(start) <= budget(lo).deadline(start));
        prop_assert!(budget(lo).hard_stop(start) <= start + grace);
        prop_assert!(budget(lo).deadline(start) <= budget(lo).hard_stop(start) || margin.is_zero());
    }
}
