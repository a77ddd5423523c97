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
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop::sample::select(Outcome::ALL.to_vec())
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
    )
        .prop_map(
            |(grace, margin, min, quiet, extra, child_timeout)| DrainConfig {
                grace: grace + margin + Duration::from_millis(1),
                margin,
                convergence: Convergence {
                    min,
                    quiet,
                    max: min + extra,
                },
                child_timeout,
                deadline_linger: Duration::from_secs(1),
            },
        )
}

/// Runs events at increasing times; returns the machine and the times used.
fn run(
    config: DrainConfig,
    events: &[(Duration, Event)],
    mut check: impl FnMut(&DrainMachine, Duration, &Event),
) -> DrainMachine {
    let mut m = DrainMachine::new(config);
    let mut now = Duration::ZERO;
    for (step, ev) in events {
        now += *step;
        match ev {
            Event::Start => {
                m.request_started(now);
            }
            Event::Finish(o) => m.request_finished(now, *o),
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
            Event::ChildExited => m.child_exited(now),
        }
        while m.poll_action().is_some() {}
        check(&m, now, ev);
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The in-flight count equals admitted starts minus finishes, and never wraps.
    #[test]
    fn in_flight_never_negative(
        config in config(),
        events in prop::collection::vec((secs(5), event()), 0..200),
    ) {
        let mut model: i64 = 0;
        let mut m = DrainMachine::new(config);
        let mut now = Duration::ZERO;
        for (step, ev) in &events {
            now += *step;
            match ev {
                Event::Start => {
                    if m.request_started(now) != Admission::Refuse {
                        model += 1;
                    }
                }
                Event::Finish(o) => {
                    m.request_finished(now, *o);
                    model = (model - 1).max(0);
                }
                Event::Drain { trigger, .. } => {
                    m.drain(now, DrainRequest::new(*trigger));
                }
                Event::Tick => m.handle_timeout(now),
                Event::ChildExited => m.child_exited(now),
            }
            prop_assert!(model >= 0);
            prop_assert_eq!(m.in_flight() as i64, model);
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
                assert!(deadline <= start + config.grace - config.margin,
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
        let m = run(config, &events, |m, _now, _ev| {
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
