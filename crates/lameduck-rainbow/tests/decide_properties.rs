//! Properties of the rainbow decision, over random histories of releases, rollbacks, work,
//! readiness and time, played against a small model of the cluster that carries out the
//! actions.

use std::collections::BTreeMap;
use std::time::Duration;

use lameduck_rainbow::crd::Settings;
use lameduck_rainbow::decide::{
    Action, Colour, Decision, Input, Phase, Reason, Work, decide, ready_needed,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    /// Time passes (seconds).
    Advance(u64),
    /// A release (or a rollback) to template k.
    Release(usize),
    /// Colour k's work changes.
    Work(usize, Option<u64>),
    /// Pods become Ready, up to the replicas.
    Ready,
    /// Pods finish terminating.
    Settle,
    /// The controller runs.
    Tick,
    /// An autoscaler (when there is one) sets colour k's replicas, unless it is retired
    /// (its autoscaler is deleted then).
    Autoscale(usize, i32),
    /// The controller restarts: its memory is the status, so nothing is lost; but the
    /// Services may have been moved by hand to no colour.
    Unroute,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (1u64..400).prop_map(Event::Advance),
        1 => (0usize..4).prop_map(Event::Release),
        2 => (0usize..4, prop::option::of(0u64..5)).prop_map(|(k, w)| Event::Work(k, w)),
        2 => Just(Event::Ready),
        2 => Just(Event::Settle),
        5 => Just(Event::Tick),
        1 => (0usize..4, 0i32..4).prop_map(|(k, n)| Event::Autoscale(k, n)),
        1 => Just(Event::Unroute),
    ]
}

#[derive(Debug, Clone, Default)]
struct Dep {
    replicas: i32,
    ready: i32,
    pods: u32,
}

#[derive(Debug, Clone, Default)]
struct Memory {
    superseded_at: Option<Duration>,
    idle_since: Option<Duration>,
    retiring: Option<Reason>,
}

/// The model cluster, and what an observer independent of the decision code knows.
struct World {
    now: Duration,
    settings: Settings,
    desired: String,
    serving: Option<String>,
    deps: BTreeMap<String, Dep>,
    /// The work on each template's pods (`None`: unknown).
    work: BTreeMap<String, Option<u64>>,
    memory: BTreeMap<String, Memory>,
    /// Independent bookkeeping: the first tick at which the colour was seen idle, since it
    /// was last seen with work; and the first tick at which it was neither desired nor
    /// selected.
    idle_from: BTreeMap<String, Duration>,
    superseded_from: BTreeMap<String, Duration>,
}

fn name(k: usize) -> String {
    format!("c{k}")
}

impl World {
    fn new(settings: Settings) -> World {
        World {
            now: Duration::from_secs(1_000_000),
            settings,
            desired: name(0),
            serving: None,
            deps: BTreeMap::new(),
            work: BTreeMap::new(),
            memory: BTreeMap::new(),
            idle_from: BTreeMap::new(),
            superseded_from: BTreeMap::new(),
        }
    }

    fn observed_work(&self, colour: &str, dep: &Dep) -> Work {
        if dep.pods == 0 {
            return Work::Idle;
        }
        match self.work.get(colour).copied().unwrap_or(Some(0)) {
            None => Work::Unknown("no answer".into()),
            Some(0) => Work::Idle,
            Some(n) => Work::Busy(n),
        }
    }

    fn input(&self) -> Input {
        Input {
            now: self.now,
            settings: self.settings.clone(),
            desired: self.desired.clone(),
            serving: self.serving.clone(),
            colours: self
                .deps
                .iter()
                .map(|(c, d)| {
                    let m = self.memory.get(c).cloned().unwrap_or_default();
                    Colour {
                        colour: c.clone(),
                        replicas: d.replicas,
                        ready: d.ready,
                        pods: d.pods,
                        work: self.observed_work(c, d),
                        superseded_at: m.superseded_at,
                        idle_since: m.idle_since,
                        retiring: m.retiring,
                    }
                })
                .collect(),
            unroutable: None,
        }
    }

    /// Runs the decision, checks it, carries it out.
    fn tick(&mut self) -> Result<Decision, TestCaseError> {
        let input = self.input();
        let d = decide(&input);
        self.check(&input, &d)?;
        // The independent bookkeeping, from what was observed at this tick.
        for c in &input.colours {
            if c.work == Work::Idle {
                self.idle_from.entry(c.colour.clone()).or_insert(self.now);
            } else {
                self.idle_from.remove(&c.colour);
            }
        }
        for a in &d.actions {
            match a {
                Action::Create { colour, replicas } => {
                    self.deps.insert(
                        colour.clone(),
                        Dep {
                            replicas: *replicas,
                            ready: 0,
                            pods: u32::try_from(*replicas).unwrap_or(0),
                        },
                    );
                }
                Action::Scale { colour, replicas } => {
                    if let Some(dep) = self.deps.get_mut(colour) {
                        dep.replicas = *replicas;
                        dep.pods = dep.pods.max(u32::try_from(*replicas).unwrap_or(0));
                    }
                }
                Action::Retire { colour, .. } => {
                    if let Some(dep) = self.deps.get_mut(colour) {
                        dep.replicas = 0;
                    }
                }
                Action::Route { colour, .. } => self.serving = Some(colour.clone()),
                Action::Delete { colour } => {
                    self.deps.remove(colour);
                    self.memory.remove(colour);
                    self.idle_from.remove(colour);
                }
            }
        }
        for st in &d.colours {
            if matches!(st.phase, Phase::Serving | Phase::Starting) {
                self.superseded_from.remove(&st.colour);
            } else {
                self.superseded_from
                    .entry(st.colour.clone())
                    .or_insert(self.now);
            }
            if self.deps.contains_key(&st.colour) {
                self.memory.insert(
                    st.colour.clone(),
                    Memory {
                        superseded_at: st.superseded_at,
                        idle_since: st.idle_since,
                        retiring: st.retiring,
                    },
                );
            }
        }
        Ok(d)
    }

    fn check(&self, input: &Input, d: &Decision) -> Result<(), TestCaseError> {
        let wanted = self.settings.replicas;
        let find = |c: &str| input.colours.iter().find(|x| x.colour == c);
        for a in &d.actions {
            match a {
                Action::Create { colour, replicas } => {
                    prop_assert_eq!(colour, &self.desired);
                    prop_assert_eq!(*replicas, wanted);
                    prop_assert!(find(colour).is_none(), "created twice");
                }
                Action::Scale { colour, replicas } => {
                    if *colour == self.desired {
                        prop_assert_eq!(*replicas, wanted);
                    } else {
                        prop_assert_eq!(*replicas, 0, "only retired colours are scaled down");
                        prop_assert!(find(colour).is_some_and(|c| c.retiring.is_some()));
                    }
                }
                Action::Route { colour, .. } => {
                    prop_assert_eq!(colour, &self.desired, "only to the desired colour");
                    let c = find(colour).ok_or_else(|| TestCaseError::fail("routed to nothing"))?;
                    prop_assert!(c.ready >= ready_needed(c.replicas, self.settings.ready_fraction));
                    prop_assert!(c.retiring.is_none());
                    if !self.settings.autoscaled {
                        prop_assert_eq!(c.replicas, wanted);
                    }
                }
                Action::Retire {
                    colour,
                    reason,
                    in_flight,
                } => {
                    prop_assert_ne!(colour, &self.desired, "the desired colour is never retired");
                    prop_assert_ne!(
                        Some(colour),
                        d.serving.as_ref(),
                        "the serving colour is never retired"
                    );
                    prop_assert!(
                        d.serving.is_some(),
                        "nothing is retired while the Services select no colour"
                    );
                    let c = find(colour).ok_or_else(|| TestCaseError::fail("retired nothing"))?;
                    prop_assert_eq!(*in_flight, c.work.count());
                    match reason {
                        Reason::Quiet => {
                            prop_assert_eq!(&c.work, &Work::Idle, "retired with work");
                            let since = self.idle_from.get(colour).copied().unwrap_or(self.now);
                            prop_assert!(
                                self.now.saturating_sub(since) >= self.settings.quiet,
                                "quiet for {:?} < {:?}",
                                self.now.saturating_sub(since),
                                self.settings.quiet
                            );
                        }
                        Reason::MaxAge => {
                            let m = self
                                .settings
                                .max_age
                                .ok_or_else(|| TestCaseError::fail("maxAge off"))?;
                            let since = self
                                .superseded_from
                                .get(colour)
                                .copied()
                                .unwrap_or(self.now);
                            prop_assert!(self.now.saturating_sub(since) >= m);
                        }
                    }
                }
                Action::Delete { colour } => {
                    let c = find(colour).ok_or_else(|| TestCaseError::fail("deleted nothing"))?;
                    prop_assert!(c.retiring.is_some());
                    prop_assert_eq!(c.replicas, 0);
                    prop_assert_eq!(c.pods, 0);
                    prop_assert_ne!(colour, &self.desired);
                }
            }
        }
        for st in &d.colours {
            prop_assert!(st.superseded_at.is_none_or(|t| t <= self.now));
            prop_assert!(st.idle_since.is_none_or(|t| t <= self.now));
        }
        prop_assert_eq!(&d.colours[0].colour, &self.desired);
        Ok(())
    }

    fn apply(&mut self, e: &Event) -> Result<(), TestCaseError> {
        match e {
            Event::Advance(s) => self.now += Duration::from_secs(*s),
            Event::Release(k) => self.desired = name(*k),
            Event::Work(k, w) => {
                self.work.insert(name(*k), *w);
            }
            Event::Ready => {
                for d in self.deps.values_mut() {
                    d.ready = d.replicas;
                }
            }
            Event::Settle => {
                for d in self.deps.values_mut() {
                    d.pods = u32::try_from(d.replicas).unwrap_or(0);
                    d.ready = d.ready.min(d.replicas);
                }
            }
            Event::Tick => {
                self.tick()?;
            }
            Event::Unroute => self.serving = None,
            Event::Autoscale(k, n) => {
                let retired = self
                    .memory
                    .get(&name(*k))
                    .is_some_and(|m| m.retiring.is_some());
                if self.settings.autoscaled
                    && !retired
                    && let Some(d) = self.deps.get_mut(&name(*k))
                {
                    d.replicas = *n;
                    d.pods = d.pods.max(u32::try_from(*n).unwrap_or(0));
                }
            }
        }
        Ok(())
    }
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        0i32..4,
        prop_oneof![Just(1.0), Just(0.5), Just(0.34)],
        1u64..120,
        prop::option::of(60u64..3600),
        any::<bool>(),
    )
        .prop_map(
            |(replicas, ready_fraction, quiet, max_age, autoscaled)| Settings {
                replicas,
                ready_fraction,
                quiet: Duration::from_secs(quiet),
                max_age: max_age.map(Duration::from_secs),
                autoscaled,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Safety at every step, and convergence: once work stops and pods settle, the world
    /// ends with the desired colour alone, serving, and nothing more to do.
    #[test]
    fn safe_at_every_step_and_converges(
        s in settings(),
        events in prop::collection::vec(event(), 1..80),
    ) {
        let mut w = World::new(s.clone());
        for e in &events {
            w.apply(e)?;
        }
        // Work ends everywhere; pods start, finish and terminate as asked.
        w.work.clear();
        for _ in 0..12 {
            w.apply(&Event::Ready)?;
            w.apply(&Event::Settle)?;
            w.tick()?;
            w.now += s.quiet + Duration::from_secs(1);
        }
        prop_assert_eq!(w.deps.keys().cloned().collect::<Vec<_>>(), vec![w.desired.clone()]);
        prop_assert_eq!(w.serving.clone(), Some(w.desired.clone()));
        let last = w.tick()?;
        prop_assert!(last.actions.is_empty(), "{:?}", last.actions);
        prop_assert_eq!(last.colours.len(), 1);
        prop_assert_eq!(last.colours[0].phase, Phase::Serving);
    }

    /// A colour that keeps work is kept until maxAge, whatever else happens.
    #[test]
    fn busy_colours_stay_until_max_age(
        s in settings(),
        steps in prop::collection::vec(1u64..300, 1..40),
    ) {
        let mut w = World::new(s.clone());
        w.apply(&Event::Tick)?;
        w.apply(&Event::Ready)?;
        w.apply(&Event::Tick)?;
        w.work.insert(name(0), Some(3));
        w.apply(&Event::Release(1))?;
        w.apply(&Event::Tick)?;
        w.apply(&Event::Ready)?;
        w.apply(&Event::Tick)?;
        let superseded = w.now;
        for step in steps {
            w.now += Duration::from_secs(step);
            let d = w.tick()?;
            let retired = d.actions.iter().find_map(|a| match a {
                Action::Retire { colour, reason, .. } if *colour == name(0) => Some(*reason),
                _ => None,
            });
            let aged = s.max_age.is_some_and(|m| w.now.saturating_sub(superseded) >= m);
            if s.replicas > 0 {
                // Its pods hold work: only age retires it, and as soon as it is due.
                prop_assert_eq!(retired, aged.then_some(Reason::MaxAge));
            }
            if retired.is_some() || !w.deps.contains_key(&name(0)) {
                break;
            }
        }
    }
}
