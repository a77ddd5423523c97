//! The fleet simulator: a discrete-event simulation on virtual time.
//!
//! One event queue ordered by (time, sequence) drives everything: Poisson arrivals, request
//! completions, each pod's start-up (cold start, readiness, endpoint propagation) and
//! termination (the kubelet's preStop → SIGTERM → SIGKILL from [`lameduck_timeline::Termination`],
//! or the gate's drain run by the real [`DrainMachine`]), the Deployment and ReplicaSet
//! controllers, kubectl-style node drains through the Eviction API with the PDB, spot notices
//! and scale-downs. Randomness comes from one seeded PCG generator, so a seed fixes the run.
//!
//! Requests are not stored one by one: a completion event carries its pod, and a pod that was
//! cut (killed, or its streams ended by the gate's deadline) counts every request it held at
//! that instant; their completion events are skipped when they come due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use lameduck_manifest::facts::{NOTICE_MARGIN, Spot};
use lameduck_timeline::{
    Action, Admission, DrainConfig, DrainMachine, DrainRequest, Outcome, Time, Trigger,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::latency::Latency;
use crate::report::{Counts, EventSpan, Percentiles, Series, SimReport};
use crate::spec::{FleetSpec, OnSigterm, Shutdown};
use lameduck_rainbow::crd::{RainbowDeploymentSpec, Settings};
use lameduck_rainbow::decide::{
    Action as RainbowAction, Colour, ColourState, Input as RainbowInput, Work, decide,
};

/// What disrupts the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Nothing: steady state.
    #[value(skip)]
    None,
    /// `kubectl drain` of the node holding the most pods: evictions through the PDB, retried
    /// every 5 s.
    Drain,
    /// A rolling update of the Deployment.
    Rollout,
    /// An autoscaler scale-down by a quarter of the replicas (at least one).
    ScaleDown,
    /// An AWS spot interruption: 2 minutes' notice; the termination handler drains the node.
    SpotAws,
    /// A GCP spot preemption: 30 s; the kubelet's graceful node shutdown gives pods 15 s.
    SpotGcp,
    /// An Azure spot eviction: 30 s (Scheduled Events `Preempt`); AKS drains the node.
    SpotAzure,
    /// The spot reclaim of the workload's provider (--spot, or read from the manifest).
    Spot,
    /// A release under `lameduck rainbow`: a new colour (a Deployment of all the replicas)
    /// starts beside the old one, the Services move once it is Ready, and the old colour is
    /// scaled to zero when its gates report nothing in flight for the quiet period, or at
    /// maxAge. The controller's own decision runs every 5 s.
    Rainbow,
}

impl Scenario {
    /// Every scenario with a name on the command line.
    pub const ALL: [Scenario; 7] = [
        Scenario::Drain,
        Scenario::Rollout,
        Scenario::ScaleDown,
        Scenario::SpotAws,
        Scenario::SpotGcp,
        Scenario::SpotAzure,
        Scenario::Rainbow,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::Drain => "drain",
            Scenario::Rollout => "rollout",
            Scenario::ScaleDown => "scale-down",
            Scenario::SpotAws => "spot-aws",
            Scenario::SpotGcp => "spot-gcp",
            Scenario::SpotAzure => "spot-azure",
            Scenario::Spot => "spot",
            Scenario::Rainbow => "rainbow",
        }
    }

    /// The spot provider a scenario preempts.
    pub fn provider(self) -> Option<Spot> {
        match self {
            Scenario::SpotAws => Some(Spot::Aws),
            Scenario::SpotGcp => Some(Spot::Gcp),
            Scenario::SpotAzure => Some(Spot::Azure),
            _ => None,
        }
    }

    /// The spot scenario of a provider.
    pub fn of(spot: Spot) -> Scenario {
        match spot {
            Spot::Aws => Scenario::SpotAws,
            Spot::Gcp => Scenario::SpotGcp,
            Spot::Azure => Scenario::SpotAzure,
        }
    }
}
/// kubectl drain (and the termination handlers built on it) retry a refused eviction this often.
pub const EVICTION_RETRY: Duration = Duration::from_secs(5);
/// A pod on a node that vanished keeps its endpoint until the node controller notices
/// (node-monitor-grace-period).
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(40);

/// The agent never tells a gate less than this (it still ends its streams cleanly).
const MIN_AGENT_BUDGET: Duration = Duration::from_millis(500);

/// A single disruption still under way this long after it started is reported as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(2 * 3600);

/// How often the simulated rainbow controller decides (`lameduck rainbow run --poll`'s
/// default).
pub const RAINBOW_POLL: Duration = lameduck_rainbow::DEFAULT_POLL;

/// How requests arrive.
#[derive(Debug, Clone, PartialEq)]
pub enum Rate {
    /// Poisson at this many requests per second.
    Constant(f64),
    /// Poisson whose rate follows the time of day: `(seconds since midnight, rate)` steps,
    /// sorted; each holds until the next, wrapping at midnight.
    Daily(Vec<(f64, f64)>),
}

impl Rate {
    fn at(&self, t: Duration) -> f64 {
        match self {
            Rate::Constant(r) => *r,
            Rate::Daily(steps) => {
                let day = t.as_secs_f64() % 86_400.0;
                let i = steps.partition_point(|(s, _)| *s <= day);
                let idx = if i == 0 { steps.len() - 1 } else { i - 1 };
                steps.get(idx).map_or(0.0, |s| s.1)
            }
        }
    }

    /// The highest rate (for thinning).
    pub fn peak(&self) -> f64 {
        match self {
            Rate::Constant(r) => *r,
            Rate::Daily(steps) => steps.iter().map(|s| s.1).fold(0.0, f64::max),
        }
    }

    /// The mean rate over a day.
    pub fn mean(&self) -> f64 {
        match self {
            Rate::Constant(r) => *r,
            Rate::Daily(steps) => {
                let mut total = 0.0;
                for (i, (s, r)) in steps.iter().enumerate() {
                    let end = steps.get(i + 1).map_or(86_400.0, |n| n.0);
                    total += (end - s) * r;
                }
                // The wrap: before the first step the last one holds.
                if let (Some(first), Some(last)) = (steps.first(), steps.last()) {
                    total += first.0 * last.1;
                }
                total / 86_400.0
            }
        }
    }
}

/// One simulation's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The disruption.
    pub scenario: Scenario,
    /// Seed of the random generator.
    pub seed: u64,
    /// When the first disruption starts (the fleet warms up before it).
    pub start: Duration,
    /// Repeat the disruption this often (a rollout every hour); `None`: once.
    pub every: Option<Duration>,
    /// Stop sending requests at this time; `None`: once the disruption is over and the fleet
    /// has settled.
    pub horizon: Option<Duration>,
    /// How often the time series is sampled.
    pub sample_every: Duration,
    /// `lameduck agent` runs on the nodes: on a spot notice it tells every gated pod the
    /// notice's deadline (minus [`NOTICE_MARGIN`]) and deletes it with the time left as its
    /// grace period. Pods without a gate are removed as without the agent.
    pub agent: bool,
    /// The `drain` scenario as `lameduck drain` does it: surge first (the Deployment's replicas
    /// raised by the node's pods, replacements Ready elsewhere), then the count lowered so
    /// that exactly the node's pods go, through their graceful termination. Without it, as
    /// `kubectl drain`: evictions first, replacements cold-start afterwards.
    pub surge: bool,
    /// The `rainbow` scenario's promotion and retirement settings (the fleet's replicas win
    /// over `replicas`); `None`: a RainbowDeployment's defaults.
    pub rainbow: Option<Settings>,
    /// The gates hand what cannot finish to a peer (`--handoff-to`): at the drain deadline,
    /// each stream in flight continues on another pod that has a free slot (after one extra
    /// prefill, [`HANDOFF_PREFILL`]) and is relayed through its own pod. That pod's gate stays
    /// up until its last relay ends or its hard stop (the [`DrainMachine`]'s, the same as the
    /// gate's) cuts the relay with the terminal event. Without a peer with a free slot the
    /// stream ends at the deadline, as without handoff.
    pub handoff: bool,
    /// Clients reach the pods through a `lameduck gate --gateway` in front of the Service:
    /// every stream a pod ends — its gate's deadline, its SIGKILL, its node's end — continues on
    /// a peer with a free slot (after [`HANDOFF_PREFILL`]). The gateway holds the client's
    /// connection, so nothing is relayed through the pod: it exits as without handoff. A
    /// continuation cut by a second drain is not continued again. Implies `handoff`.
    pub gateway: bool,
}

/// Attempts at a peer per handed-off stream: the gate's `--handoff-attempts` default.
pub const HANDOFF_ATTEMPTS: u32 = 3;

/// What a handoff adds before the peer's first token: its prefill of the prompt and the text
/// so far. An assumption, the same for every stream.
pub const HANDOFF_PREFILL: Duration = Duration::from_secs(1);

/// A RainbowDeployment's defaults: all replicas Ready before the Services move, a 30 s quiet
/// period, a 24 h maxAge.
pub fn rainbow_defaults(replicas: u32) -> Settings {
    let spec = RainbowDeploymentSpec {
        replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
        template: Default::default(),
        services: Vec::new(),
        promotion: Default::default(),
        retirement: Default::default(),
        autoscaler: None,
    };
    spec.settings().unwrap_or(Settings {
        replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
        ready_fraction: 1.0,
        quiet: Duration::from_secs(30),
        max_age: Some(Duration::from_secs(24 * 3600)),
        autoscaled: false,
    })
}

/// The rainbow controller as simulated: one Deployment per colour (a revision), the colour
/// the Services select, and what the last decision remembered. The decision itself is the
/// controller's own [`decide`], so the simulation and the controller cannot disagree.
#[derive(Debug)]
struct Rainbow {
    settings: Settings,
    /// Each colour's Deployment replicas.
    replicas: std::collections::BTreeMap<u32, i32>,
    /// The colour the Services select.
    serving: u32,
    /// The last decision's colours (the controller keeps them in the status).
    memory: Vec<ColourState>,
    /// A poll is queued.
    polling: bool,
}

fn colour_name(rev: u32) -> String {
    format!("r{rev}")
}

fn colour_rev(name: &str) -> Option<u32> {
    name.strip_prefix('r').and_then(|n| n.parse().ok())
}

/// What happens to a pod's requests when it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Killed,
    Truncated,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Arrival,
    Done {
        pod: u32,
    },
    Serving {
        pod: u32,
    },
    Ready {
        pod: u32,
    },
    Routable {
        pod: u32,
    },
    Unroutable {
        pod: u32,
    },
    Sigterm {
        pod: u32,
    },
    EngineLimit {
        pod: u32,
    },
    Sigkill {
        pod: u32,
    },
    GateTimer {
        pod: u32,
    },
    NodeGone {
        node: u32,
    },
    Evict {
        pod: u32,
    },
    Disrupt,
    Sample,
    RainbowPoll,
    /// A handed-off stream's continuation ends on its peer.
    RelayEnd {
        relay: u32,
    },
}

#[derive(Debug)]
struct Pod {
    node: u32,
    revision: u32,
    serving: bool,
    ready: bool,
    routable: Option<usize>,
    deleted_at: Option<Time>,
    grace: Duration,
    accepting: bool,
    exiting_when_idle: bool,
    cut: bool,
    exited: bool,
    in_flight: u32,
    queue: VecDeque<(Time, Duration)>,
    gate: Option<DrainMachine>,
    gate_timer: Option<Time>,
    held_at_delete: u32,
    lost: u32,
}

/// A handed-off stream: from `pod`, continued on `peer`; relayed through `pod` unless a
/// gateway holds the client's connection.
#[derive(Debug, Clone, Copy)]
struct Relay {
    pod: u32,
    peer: u32,
    active: bool,
    via_pod: bool,
}

impl Pod {
    fn load(&self) -> u32 {
        self.in_flight + self.queue.len() as u32
    }
    fn alive(&self) -> bool {
        self.deleted_at.is_none() && !self.exited
    }
}

/// An active disruption and how to tell it is over.
#[derive(Debug, Clone, Copy)]
struct Active {
    scenario: Scenario,
    started: Time,
    node: Option<u32>,
    scaled_down: bool,
}

/// The simulator. Build with [`Sim::new`], run with [`Sim::run`].
pub struct Sim<'a> {
    spec: &'a FleetSpec,
    latency: &'a Latency,
    rate: Rate,
    cfg: SimConfig,
    /// Arrivals and durations: the same for every spec under one seed.
    rng: Pcg64Mcg,
    /// The balancer's choices.
    lb_rng: Pcg64Mcg,
    /// The handoff's choice of peer (apart, so that handoff leaves the balancer's choices
    /// as they were).
    peer_rng: Pcg64Mcg,
    exp: Exp<f64>,
    arrivals_until: Option<Time>,
    now: Time,
    seq: u64,
    heap: BinaryHeap<Reverse<(Time, u64, EvSlot)>>,
    pods: Vec<Pod>,
    routable: Vec<u32>,
    node_load: Vec<u32>,
    cordoned: Vec<bool>,
    desired: u32,
    revision: u32,
    active: Option<Active>,
    disruptions: u32,
    arrivals_open: bool,
    counts: Counts,
    delays: Vec<f32>,
    zero_delays: u64,
    in_flight: u64,
    terminating: u32,
    peak_pods: u32,
    peak_since: Time,
    time_at_peak: Duration,
    peak_terminating: u32,
    min_ready: u32,
    drain_times: Vec<f64>,
    spans: Vec<EventSpan>,
    series: Series,
    drained_pods: u32,
    drained_pods_losing: u32,
    /// A surge-first drain waiting for its replacements: the node's pods.
    surge_victims: Vec<u32>,
    /// The rainbow controller (scenario `rainbow` only).
    rainbow: Option<Rainbow>,
    /// Pod-seconds above the spec's replicas, up to `pods_since`.
    extra_pod_seconds: f64,
    /// Every handoff's relay.
    relays: Vec<Relay>,
    pods_since: Time,
}

/// Heap payload; ordering is by (time, seq) only.
#[derive(Debug, Clone, Copy)]
struct EvSlot(Ev);
impl PartialEq for EvSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EvSlot {}
impl PartialOrd for EvSlot {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for EvSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl<'a> Sim<'a> {
    /// A fleet of `spec.replicas` warm pods at time zero.
    pub fn new(spec: &'a FleetSpec, latency: &'a Latency, rate: Rate, cfg: SimConfig) -> Self {
        let peak = rate.peak().max(1e-9);
        let mut sim = Sim {
            spec,
            latency,
            exp: Exp::new(peak).unwrap_or_else(|_| Exp::new(1.0).expect("1 is a valid rate")),
            rate,
            rng: Pcg64Mcg::seed_from_u64(cfg.seed),
            lb_rng: Pcg64Mcg::seed_from_u64(cfg.seed ^ 0x9e37_79b9_7f4a_7c15),
            peer_rng: Pcg64Mcg::seed_from_u64(cfg.seed ^ 0x2545_f491_4f6c_dd1d),
            arrivals_until: None,
            cfg,
            now: Duration::ZERO,
            seq: 0,
            heap: BinaryHeap::new(),
            pods: Vec::new(),
            routable: Vec::new(),
            node_load: Vec::new(),
            cordoned: Vec::new(),
            desired: spec.replicas,
            revision: 0,
            active: None,
            disruptions: 0,
            arrivals_open: true,
            counts: Counts::default(),
            delays: Vec::new(),
            zero_delays: 0,
            in_flight: 0,
            terminating: 0,
            peak_pods: 0,
            peak_since: Duration::ZERO,
            time_at_peak: Duration::ZERO,
            peak_terminating: 0,
            min_ready: u32::MAX,
            drain_times: Vec::new(),
            spans: Vec::new(),
            series: Series::default(),
            drained_pods: 0,
            drained_pods_losing: 0,
            surge_victims: Vec::new(),
            rainbow: None,
            extra_pod_seconds: 0.0,
            relays: Vec::new(),
            pods_since: Duration::ZERO,
        };
        if sim.cfg.scenario == Scenario::Rainbow {
            let mut settings = sim
                .cfg
                .rainbow
                .clone()
                .unwrap_or_else(|| rainbow_defaults(spec.replicas));
            settings.replicas = i32::try_from(spec.replicas).unwrap_or(i32::MAX);
            sim.rainbow = Some(Rainbow {
                settings,
                replicas: [(0, i32::try_from(spec.replicas).unwrap_or(i32::MAX))].into(),
                serving: 0,
                memory: Vec::new(),
                polling: false,
            });
        }
        for _ in 0..spec.replicas {
            let p = sim.create_pod();
            // The initial fleet is warm: serving, ready and in the balancer from the start.
            sim.serving(p);
            sim.pods[p as usize].ready = true;
            sim.routable(p);
        }
        sim
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, EvSlot(ev))));
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> SimReport {
        if self.rate.peak() > 0.0 {
            self.next_arrival();
        }
        let start = self.cfg.start;
        self.push(start, Ev::Disrupt);
        self.push(Duration::ZERO, Ev::Sample);
        while let Some(Reverse((at, _, EvSlot(ev)))) = self.heap.pop() {
            self.now = at;
            self.handle(ev);
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival => self.arrival(),
            Ev::Done { pod } => self.done(pod),
            Ev::Serving { pod } => self.serving(pod),
            Ev::Ready { pod } => {
                self.ready(pod);
                self.reconcile();
                self.surge_ready();
                self.check_active();
            }
            Ev::Routable { pod } => self.routable(pod),
            Ev::Unroutable { pod } => self.unroutable(pod),
            Ev::Sigterm { pod } => self.sigterm(pod),
            Ev::EngineLimit { pod } => {
                if !self.pods[pod as usize].exited {
                    self.cut(pod, Fate::Killed);
                    self.exit(pod);
                }
            }
            Ev::Sigkill { pod } => {
                if !self.pods[pod as usize].exited {
                    self.cut(pod, Fate::Killed);
                    self.exit(pod);
                }
            }
            Ev::GateTimer { pod } => {
                let p = &mut self.pods[pod as usize];
                if p.gate_timer == Some(self.now) {
                    p.gate_timer = None;
                    if let Some(g) = p.gate.as_mut() {
                        g.handle_timeout(self.now);
                    }
                    self.drive_gate(pod);
                }
            }
            Ev::NodeGone { node } => self.node_gone(node),
            Ev::Evict { pod } => self.evict(pod),
            Ev::Disrupt => self.disrupt(),
            Ev::Sample => self.sample(),
            Ev::RelayEnd { relay } => self.end_relay(relay, None, true),
            Ev::RainbowPoll => {
                if let Some(rb) = self.rainbow.as_mut() {
                    rb.polling = false;
                }
                self.rainbow_poll();
            }
        }
    }

    // ---- arrivals and requests -------------------------------------------------------------

    fn next_arrival(&mut self) {
        // Thinning: candidates at the peak rate, kept with probability rate(t) / peak.
        let peak = self.rate.peak();
        let mut t = self.now;
        loop {
            t += Duration::from_secs_f64(self.exp.sample(&mut self.rng));
            let keep = match self.rate {
                Rate::Constant(_) => true,
                Rate::Daily(_) => self.rng.random::<f64>() * peak < self.rate.at(t),
            };
            if keep {
                break;
            }
        }
        self.push(t, Ev::Arrival);
    }

    fn arrival(&mut self) {
        if !self.arrivals_open {
            return;
        }
        self.next_arrival();
        let dur = self.latency.sample(self.rng.random::<f64>());
        self.counts.total += 1;
        let Some(pod) = self.pick() else {
            self.counts.refused += 1;
            return;
        };
        let now = self.now;
        let p = &mut self.pods[pod as usize];
        if p.exited || p.cut || !p.serving || !p.accepting {
            self.counts.refused += 1;
            return;
        }
        if let Some(g) = p.gate.as_mut()
            && g.request_started(now) == Admission::Refuse
        {
            self.counts.refused += 1;
            return;
        }
        self.in_flight += 1;
        if p.in_flight < self.spec.pod.concurrency {
            p.in_flight += 1;
            self.zero_delays += 1;
            self.push(now + dur, Ev::Done { pod });
        } else {
            p.queue.push_back((now, dur));
        }
    }

    /// The balancer: power of two choices on outstanding requests (Envoy's least-request).
    fn pick(&mut self) -> Option<u32> {
        let mut rng = std::mem::replace(&mut self.lb_rng, Pcg64Mcg::seed_from_u64(0));
        let picked = self.pick_with(&mut rng);
        self.lb_rng = rng;
        picked
    }

    fn pick_with(&self, rng: &mut Pcg64Mcg) -> Option<u32> {
        match self.routable.len() {
            0 => None,
            1 => Some(self.routable[0]),
            n => {
                let a = self.routable[rng.random_range(0..n)];
                let b = self.routable[rng.random_range(0..n)];
                let (la, lb) = (self.pods[a as usize].load(), self.pods[b as usize].load());
                Some(if lb < la { b } else { a })
            }
        }
    }

    fn done(&mut self, pod: u32) {
        let now = self.now;
        let p = &mut self.pods[pod as usize];
        if p.cut {
            return;
        }
        p.in_flight -= 1;
        self.in_flight -= 1;
        self.counts.ok += 1;
        if let Some(g) = p.gate.as_mut() {
            g.request_finished(now, Outcome::Ok);
        }
        if let Some((arrived, dur)) = p.queue.pop_front() {
            p.in_flight += 1;
            let delay = (now - arrived).as_secs_f32();
            self.delays.push(delay);
            self.push(now + dur, Ev::Done { pod });
        }
        if self.pods[pod as usize].gate.is_some() {
            self.drive_gate(pod);
        }
        let p = &self.pods[pod as usize];
        if p.exiting_when_idle && p.load() == 0 && !p.exited {
            self.exit(pod);
        }
    }

    /// Ends everything the pod holds with `fate`; it serves nothing afterwards. Behind a
    /// gateway, its streams continue on peers instead.
    fn cut(&mut self, pod: u32, fate: Fate) {
        if self.cfg.gateway {
            self.hand_off(pod, fate);
            return;
        }
        let now = self.now;
        let p = &mut self.pods[pod as usize];
        if p.cut {
            return;
        }
        p.cut = true;
        let n = p.load();
        p.in_flight = 0;
        p.queue.clear();
        p.lost += n;
        if let Some(g) = p.gate.as_mut() {
            for _ in 0..n {
                g.request_finished(now, Outcome::Truncated);
            }
        }
        self.in_flight -= u64::from(n);
        match fate {
            Fate::Killed => self.counts.killed += u64::from(n),
            Fate::Truncated => self.counts.truncated += u64::from(n),
        }
    }

    /// The deadline came with streams in flight (or, behind a gateway, anything ended the
    /// pod): each goes to a peer with a free slot and is relayed through this pod until it
    /// completes there or this pod's hard stop ends it (behind a gateway: until it completes).
    /// Responses still waiting in the engine's queue had not started: they end with `fate`, as
    /// without handoff, and so do continuations this pod was running for other pods.
    fn hand_off(&mut self, pod: u32, fate: Fate) {
        let now = self.now;
        if self.pods[pod as usize].cut {
            return;
        }
        // This pod's own streams: their completion instants (its pending Done events).
        let mut ends: Vec<Time> = self
            .heap
            .iter()
            .filter_map(|Reverse((t, _, EvSlot(ev)))| match ev {
                Ev::Done { pod: q } if *q == pod => Some(*t),
                _ => None,
            })
            .collect();
        // Behind a gateway, the continuations this pod was running for other pods go on too
        // (the gateway's next attempt): their relays end here and new ones start.
        if self.cfg.gateway {
            let continuing: Vec<(u32, Time)> = self
                .heap
                .iter()
                .filter_map(|Reverse((t, _, EvSlot(ev)))| match ev {
                    Ev::RelayEnd { relay } => Some((*relay, *t)),
                    _ => None,
                })
                .filter(|&(r, _)| {
                    let x = self.relays[r as usize];
                    x.active && x.peer == pod
                })
                .collect();
            for (r, t) in continuing {
                self.relays[r as usize].active = false;
                ends.push(t);
            }
        }
        ends.sort();
        let p = &mut self.pods[pod as usize];
        ends.truncate(p.in_flight as usize);
        let (streams, queued) = (p.in_flight, p.queue.len() as u32);
        p.cut = true;
        p.in_flight = 0;
        p.queue.clear();
        let ended = queued + (streams - ends.len() as u32);
        p.lost += ended;
        if let Some(g) = p.gate.as_mut() {
            for _ in 0..ended {
                g.request_finished(now, Outcome::Truncated);
            }
        }
        self.in_flight -= u64::from(ended);
        match fate {
            Fate::Killed => self.counts.killed += u64::from(ended),
            Fate::Truncated => self.counts.truncated += u64::from(ended),
        }
        let via_pod = !self.cfg.gateway;
        for end in ends {
            // Through the balancer, as the continuation goes to the Service: a pick that cannot
            // take it (this pod, still in a lagging balancer; one that is draining or full) is
            // an attempt that fails, and the gate tries again up to its `--handoff-attempts`.
            let mut rng = std::mem::replace(&mut self.peer_rng, Pcg64Mcg::seed_from_u64(0));
            let peer = (0..HANDOFF_ATTEMPTS).find_map(|_| {
                self.pick_with(&mut rng).filter(|&q| {
                    let c = &self.pods[q as usize];
                    q != pod
                        && !c.cut
                        && !c.exited
                        && c.serving
                        && c.accepting
                        && c.in_flight < self.spec.pod.concurrency
                })
            });
            self.peer_rng = rng;
            // Behind a gateway the pod's gate ended the stream as it would have without
            // handoff; the gateway continues it, and the pod relays nothing.
            let outcome = if peer.is_some() && via_pod {
                Outcome::HandedOff
            } else {
                Outcome::Truncated
            };
            if let Some(g) = self.pods[pod as usize].gate.as_mut() {
                g.request_finished(now, outcome);
            }
            let Some(peer) = peer else {
                // Nowhere to go: ended as without handoff.
                self.pods[pod as usize].lost += 1;
                self.in_flight -= 1;
                match fate {
                    Fate::Killed => self.counts.killed += 1,
                    Fate::Truncated => self.counts.truncated += 1,
                }
                continue;
            };
            self.pods[peer as usize].in_flight += 1;
            if let Some(g) = self.pods[peer as usize].gate.as_mut() {
                let _ = g.request_started(now);
            }
            let relay = self.relays.len() as u32;
            self.relays.push(Relay {
                pod,
                peer,
                active: true,
                via_pod,
            });
            let finish = now + HANDOFF_PREFILL + end.saturating_sub(now);
            self.push(finish, Ev::RelayEnd { relay });
        }
    }

    /// A relay ends: its continuation completed (`cut` None), or the relaying pod's hard stop
    /// or its end cut it. `drive`: run the relaying pod's gate afterwards (not when its own
    /// actions are being carried out already).
    fn end_relay(&mut self, relay: u32, cut: Option<Fate>, drive: bool) {
        let now = self.now;
        let Relay {
            pod,
            peer,
            active,
            via_pod,
        } = self.relays[relay as usize];
        if !active {
            return;
        }
        self.relays[relay as usize].active = false;
        // The continuation's slot on the peer; a peer cut meanwhile counted it already.
        let counted = self.pods[peer as usize].cut;
        if !counted {
            self.in_flight -= 1;
            match cut {
                None => {
                    self.counts.ok += 1;
                    self.counts.handed_off += 1;
                }
                Some(Fate::Truncated) => self.counts.truncated += 1,
                Some(Fate::Killed) => self.counts.killed += 1,
            }
            if cut.is_some() {
                self.pods[pod as usize].lost += 1;
            }
            let q = &mut self.pods[peer as usize];
            q.in_flight -= 1;
            if let Some(g) = q.gate.as_mut() {
                g.request_finished(now, Outcome::Ok);
            }
            if let Some((arrived, dur)) = q.queue.pop_front() {
                q.in_flight += 1;
                self.delays.push((now - arrived).as_secs_f32());
                self.push(now + dur, Ev::Done { pod: peer });
            }
            if self.pods[peer as usize].gate.is_some() {
                self.drive_gate(peer);
            }
            let q = &self.pods[peer as usize];
            if q.exiting_when_idle && q.load() == 0 && !q.exited {
                self.exit(peer);
            }
        }
        if via_pod && !self.pods[pod as usize].exited {
            if let Some(g) = self.pods[pod as usize].gate.as_mut() {
                g.relay_finished(now, cut.is_none() && !counted);
            }
            if drive {
                self.drive_gate(pod);
            }
        }
    }

    /// Ends every relay still running through `pod`: its gate's hard stop (`Truncated`: the
    /// terminal event), or the pod's end (`Killed`).
    fn cut_relays(&mut self, pod: u32, fate: Fate) {
        for r in 0..self.relays.len() as u32 {
            let x = self.relays[r as usize];
            if x.active && x.via_pod && x.pod == pod {
                self.end_relay(r, Some(fate), false);
            }
        }
    }

    // ---- pod life cycle --------------------------------------------------------------------

    fn place(&mut self) -> u32 {
        let per = self.spec.pods_per_node;
        let node = (0..self.node_load.len())
            .find(|&n| !self.cordoned[n] && self.node_load[n] < per)
            .unwrap_or_else(|| {
                self.node_load.push(0);
                self.cordoned.push(false);
                self.node_load.len() - 1
            });
        self.node_load[node] += 1;
        node as u32
    }

    fn create_pod(&mut self) -> u32 {
        self.create_pod_of(self.revision)
    }

    fn create_pod_of(&mut self, revision: u32) -> u32 {
        self.count_pods();
        let node = self.place();
        let id = self.pods.len() as u32;
        let gate = match self.spec.pod.shutdown {
            Shutdown::Gate {
                convergence,
                margin,
            } => Some(DrainMachine::new(DrainConfig {
                grace: self.spec.pod.grace,
                margin,
                convergence,
                // Sidecar mode: the engine is stopped by the kubelet, not by the gate.
                child_timeout: None,
                deadline_linger: Duration::from_secs(1),
                max_in_flight: None,
            })),
            Shutdown::Plain { .. } => None,
        };
        self.pods.push(Pod {
            node,
            revision,
            serving: false,
            ready: false,
            routable: None,
            deleted_at: None,
            grace: self.spec.pod.grace,
            accepting: true,
            exiting_when_idle: false,
            cut: false,
            exited: false,
            in_flight: 0,
            queue: VecDeque::new(),
            gate,
            gate_timer: None,
            held_at_delete: 0,
            lost: 0,
        });
        let now = self.now;
        let pm = self.spec.pod;
        self.push(now + pm.cold_start, Ev::Serving { pod: id });
        self.push(now + pm.ready_after, Ev::Ready { pod: id });
        self.track_peak();
        id
    }

    fn serving(&mut self, pod: u32) {
        self.pods[pod as usize].serving = true;
    }

    fn ready(&mut self, pod: u32) {
        let lag = self.spec.propagation_lag;
        let p = &mut self.pods[pod as usize];
        if !p.alive() || p.ready {
            return;
        }
        p.ready = true;
        // Under the rainbow, the Services select one colour: the others' pods are Ready but
        // get no requests.
        if self
            .rainbow
            .as_ref()
            .is_some_and(|rb| rb.serving != p.revision)
        {
            return;
        }
        let at = self.now + lag;
        self.push(at, Ev::Routable { pod });
    }

    fn routable(&mut self, pod: u32) {
        let p = &mut self.pods[pod as usize];
        if !p.alive() || p.routable.is_some() {
            return;
        }
        if self
            .rainbow
            .as_ref()
            .is_some_and(|rb| rb.serving != p.revision)
        {
            return;
        }
        p.routable = Some(self.routable.len());
        self.routable.push(pod);
    }

    fn unroutable(&mut self, pod: u32) {
        let Some(i) = self.pods[pod as usize].routable.take() else {
            return;
        };
        self.routable.swap_remove(i);
        if let Some(&moved) = self.routable.get(i) {
            self.pods[moved as usize].routable = Some(i);
        }
    }

    /// The API deletes a pod (eviction, scale-down, rollout); `grace` overrides its own
    /// (GCP's node shutdown).
    fn delete(&mut self, pod: u32, grace: Option<Duration>) {
        let now = self.now;
        let lag = self.spec.propagation_lag;
        let pm = self.spec.pod;
        let p = &mut self.pods[pod as usize];
        if !p.alive() {
            return;
        }
        p.deleted_at = Some(now);
        p.ready = false;
        p.held_at_delete = p.load();
        p.lost = 0;
        let grace = grace.map_or(p.grace, |g| g.min(p.grace));
        p.grace = grace;
        self.terminating += 1;
        self.peak_terminating = self.peak_terminating.max(self.terminating);
        self.drained_pods += 1;
        self.push(now + lag, Ev::Unroutable { pod });
        let term = pm.termination(grace);
        match pm.shutdown {
            Shutdown::Gate { .. } => {
                if let Some(g) = self.pods[pod as usize].gate.as_mut() {
                    g.drain(now, DrainRequest::new(Trigger::Endpoint));
                }
                self.drive_gate(pod);
            }
            Shutdown::Plain { .. } => {
                self.push(now + term.sigterm_at(), Ev::Sigterm { pod });
            }
        }
        if !self.pods[pod as usize].exited {
            self.push(now + term.sigkill_at(), Ev::Sigkill { pod });
        }
    }

    fn sigterm(&mut self, pod: u32) {
        let p = &self.pods[pod as usize];
        if p.exited {
            return;
        }
        let Shutdown::Plain { on_sigterm, .. } = self.spec.pod.shutdown else {
            return;
        };
        match on_sigterm {
            OnSigterm::Abort => {
                self.cut(pod, Fate::Killed);
                self.exit(pod);
            }
            OnSigterm::Drain { limit } => {
                let p = &mut self.pods[pod as usize];
                p.accepting = false;
                p.exiting_when_idle = true;
                if p.load() == 0 {
                    self.exit(pod);
                } else if let Some(l) = limit {
                    let at = self.now + l;
                    self.push(at, Ev::EngineLimit { pod });
                }
            }
            OnSigterm::Ignore => {}
        }
    }

    /// Feeds the gate's actions back into the simulation and arms its next timer.
    fn drive_gate(&mut self, pod: u32) {
        while let Some(action) = self.pods[pod as usize]
            .gate
            .as_mut()
            .and_then(DrainMachine::poll_action)
        {
            match action {
                Action::StartRefusing => self.pods[pod as usize].accepting = false,
                Action::EndStreams if self.cfg.handoff || self.cfg.gateway => {
                    self.hand_off(pod, Fate::Truncated);
                }
                Action::EndStreams => self.cut(pod, Fate::Truncated),
                // The preStop `/drain` returns: the kubelet sends SIGTERM to an idle engine.
                Action::Drained => {
                    if !self.pods[pod as usize].exited {
                        self.cut(pod, Fate::Truncated);
                        let now = self.now;
                        // The kubelet's grace period began at the deletion.
                        let spent = self.pods[pod as usize]
                            .deleted_at
                            .map_or(Duration::ZERO, |d| now.saturating_sub(d));
                        match self.pods[pod as usize].gate.as_mut() {
                            // The engine stops; the kubelet's SIGTERM reaches the gate, which
                            // stays to relay what it handed off, until they end or its hard stop.
                            Some(g) if g.relays() > 0 => {
                                let _ = g.drain(
                                    now,
                                    DrainRequest {
                                        exit: true,
                                        already_spent: spent,
                                        ..DrainRequest::new(Trigger::Signal)
                                    },
                                );
                            }
                            _ => self.exit(pod),
                        }
                    }
                }
                // The hard stop came with relays running: each ends with the terminal event.
                Action::EndRelays => self.cut_relays(pod, Fate::Truncated),
                Action::Exit => self.exit(pod),
                Action::GoUnready | Action::Announce | Action::SignalChild | Action::KillChild => {}
            }
        }
        let p = &mut self.pods[pod as usize];
        if p.exited {
            return;
        }
        let next = p.gate.as_ref().and_then(DrainMachine::poll_timeout);
        // A timeout already due fires now; the timer remembers the instant it was armed for.
        if let Some(t) = next.map(|t| t.max(self.now))
            && p.gate_timer != Some(t)
        {
            p.gate_timer = Some(t);
            self.push(t, Ev::GateTimer { pod });
        }
    }

    fn exit(&mut self, pod: u32) {
        let now = self.now;
        if self.pods[pod as usize].exited {
            return;
        }
        self.count_pods();
        let p = &mut self.pods[pod as usize];
        p.exited = true;
        let node = p.node as usize;
        if let Some(d) = p.deleted_at {
            self.terminating -= 1;
            self.drain_times.push((now - d).as_secs_f64());
            if p.held_at_delete > 0 && p.lost > 0 {
                self.drained_pods_losing += 1;
            }
        }
        self.node_load[node] = self.node_load[node].saturating_sub(1);
        // Relays that outlive their pod (SIGKILL, the node's end) are cut dead.
        self.cut_relays(pod, Fate::Killed);
        self.track_peak();
        self.check_active();
    }

    fn track_peak(&mut self) {
        let pods = self.pods_now();
        if pods > self.peak_pods {
            self.peak_pods = pods;
            self.peak_since = self.now;
            self.time_at_peak = Duration::ZERO;
        } else if pods < self.peak_pods && self.peak_since != Duration::MAX {
            // Leaving the peak: count the time spent there.
            self.time_at_peak += self.now - self.peak_since;
            self.peak_since = Duration::MAX;
        } else if pods == self.peak_pods && self.peak_since == Duration::MAX {
            self.peak_since = self.now;
        }
    }

    fn pods_now(&self) -> u32 {
        self.node_load.iter().sum()
    }

    /// Adds the pod-seconds above the spec's replicas since the last change; called just
    /// before the number of pods changes.
    fn count_pods(&mut self) {
        // Every change calls this first, so the count now is the count since `pods_since`.
        let above = self.pods_now().saturating_sub(self.spec.replicas);
        self.extra_pod_seconds += f64::from(above) * (self.now - self.pods_since).as_secs_f64();
        self.pods_since = self.now;
    }

    // ---- controllers -----------------------------------------------------------------------

    /// The Deployment and ReplicaSet controllers: keep `desired` pods of the current revision,
    /// replacing old ones within maxSurge / maxUnavailable.
    fn reconcile(&mut self) {
        // The controllers sync again on every pod they create or delete; a few rounds settle.
        for _ in 0..4 {
            if !self.reconcile_once() {
                break;
            }
        }
    }

    /// One sync of the controllers; whether it created or deleted any pod.
    fn reconcile_once(&mut self) -> bool {
        if self.rainbow.is_some() {
            return self.reconcile_colours();
        }
        let rev = self.revision;
        let (mut new, mut new_ready, mut old) = (0u32, 0u32, 0u32);
        for p in self.pods.iter().filter(|p| p.alive()) {
            if p.revision == rev {
                new += 1;
                new_ready += u32::from(p.ready);
            } else {
                old += 1;
            }
        }
        let r = self.desired;
        if old == 0 {
            for _ in new..r {
                self.create_pod();
            }
            if new > r {
                let surplus = self.pick_victims(new - r, |p| p.revision == rev);
                for v in surplus {
                    self.delete(v, None);
                }
            }
            return new != r;
        }
        let mut changed = false;
        // Rolling update, as the Deployment controller computes it.
        let max_total = r + self.spec.max_surge;
        let all = new + old;
        if new < r {
            let up = max_total.saturating_sub(all).min(r - new);
            for _ in 0..up {
                self.create_pod();
            }
            new += up;
            changed |= up > 0;
        }
        let all = new + old;
        let min_available = r.saturating_sub(self.spec.max_unavailable);
        let new_unavailable = new - new_ready;
        let mut max_down = all as i64 - min_available as i64 - new_unavailable as i64;
        if max_down <= 0 {
            return changed;
        }
        // Old pods that are not ready go first.
        let unhealthy = self.pick_victims(max_down as u32, |p| p.revision != rev && !p.ready);
        max_down -= unhealthy.len() as i64;
        changed |= !unhealthy.is_empty();
        for v in unhealthy {
            self.delete(v, None);
        }
        if max_down <= 0 {
            return changed;
        }
        let available = self.pods.iter().filter(|p| p.alive() && p.ready).count() as i64;
        let down = (available - min_available as i64).min(max_down);
        if down > 0 {
            let victims = self.pick_victims(down as u32, |p| p.revision != rev);
            changed |= !victims.is_empty();
            for v in victims {
                self.delete(v, None);
            }
        }
        changed
    }

    /// Under the rainbow each colour is a Deployment of its own: its ReplicaSet keeps its
    /// replicas, and nothing rolls.
    fn reconcile_colours(&mut self) -> bool {
        let Some(rb) = self.rainbow.as_ref() else {
            return false;
        };
        let want: Vec<(u32, u32)> = rb
            .replicas
            .iter()
            .map(|(&rev, &n)| (rev, u32::try_from(n).unwrap_or(0)))
            .collect();
        let mut changed = false;
        for (rev, n) in want {
            let alive = self
                .pods
                .iter()
                .filter(|p| p.alive() && p.revision == rev)
                .count() as u32;
            for _ in alive..n {
                self.create_pod_of(rev);
                changed = true;
            }
            if alive > n {
                for v in self.pick_victims(alive - n, |p| p.revision == rev) {
                    self.delete(v, None);
                    changed = true;
                }
            }
        }
        changed
    }

    /// One poll of the rainbow controller: what it would read from the cluster and the gates,
    /// its decision, and the decision carried out.
    fn rainbow_poll(&mut self) {
        let gated = self.spec.pod.gated();
        let now = self.now;
        let Some(rb) = self.rainbow.as_ref() else {
            return;
        };
        let colours = rb
            .replicas
            .iter()
            .map(|(&rev, &replicas)| {
                let name = colour_name(rev);
                let of: Vec<&Pod> = self
                    .pods
                    .iter()
                    .filter(|p| p.revision == rev && !p.exited)
                    .collect();
                let ready = of.iter().filter(|p| p.alive() && p.ready).count();
                let busy: u64 = of.iter().map(|p| u64::from(p.load())).sum();
                let work = if gated {
                    Work::from_sum(busy, None)
                } else {
                    Work::Unknown("the pods have no gate".into())
                };
                let remembered = rb.memory.iter().find(|m| m.colour == name);
                Colour::observed(name, replicas, ready, of.len(), work, remembered)
            })
            .collect();
        let decision = decide(&RainbowInput {
            now,
            settings: rb.settings.clone(),
            desired: colour_name(self.revision),
            serving: Some(colour_name(rb.serving)),
            colours,
            unroutable: None,
        });
        let lag = self.spec.propagation_lag;
        for action in decision.actions {
            let Some(rb) = self.rainbow.as_mut() else {
                return;
            };
            match action {
                RainbowAction::Create { colour, replicas }
                | RainbowAction::Scale { colour, replicas } => {
                    if let Some(rev) = colour_rev(&colour) {
                        rb.replicas.insert(rev, replicas);
                    }
                }
                RainbowAction::Retire { colour, .. } => {
                    if let Some(rev) = colour_rev(&colour) {
                        rb.replicas.insert(rev, 0);
                    }
                }
                RainbowAction::Delete { colour } => {
                    if let Some(rev) = colour_rev(&colour) {
                        rb.replicas.remove(&rev);
                    }
                }
                RainbowAction::Route { colour, .. } => {
                    let Some(rev) = colour_rev(&colour) else {
                        continue;
                    };
                    rb.serving = rev;
                    // The Services' selector changes; the balancers follow one lag later.
                    for i in 0..self.pods.len() as u32 {
                        let p = &self.pods[i as usize];
                        if p.revision == rev && p.alive() && p.ready {
                            self.push(now + lag, Ev::Routable { pod: i });
                        } else if p.revision != rev && p.routable.is_some() {
                            self.push(now + lag, Ev::Unroutable { pod: i });
                        }
                    }
                }
            }
        }
        if let Some(rb) = self.rainbow.as_mut() {
            rb.memory = decision.colours;
        }
        self.reconcile();
        self.check_active();
        // Poll on while there is more than one colour, or the release is still starting.
        let settled = self
            .rainbow
            .as_ref()
            .is_none_or(|rb| rb.replicas.len() == 1 && rb.serving == self.revision);
        if let Some(rb) = self.rainbow.as_mut()
            && !settled
            && !rb.polling
        {
            rb.polling = true;
            self.push(now + RAINBOW_POLL, Ev::RainbowPoll);
        }
    }

    /// Pods the ReplicaSet deletes first: not ready before ready, then the newest.
    fn pick_victims(&self, n: u32, filter: impl Fn(&Pod) -> bool) -> Vec<u32> {
        let mut c: Vec<u32> = (0..self.pods.len() as u32)
            .filter(|&i| {
                let p = &self.pods[i as usize];
                p.alive() && filter(p)
            })
            .collect();
        c.sort_by_key(|&i| (self.pods[i as usize].ready, Reverse(i)));
        c.truncate(n as usize);
        c
    }

    // ---- disruptions -----------------------------------------------------------------------

    fn disrupt(&mut self) {
        if let Some(every) = self.cfg.every {
            let next = self.now + every;
            if self.cfg.horizon.is_none_or(|h| next < h) {
                self.push(next, Ev::Disrupt);
            }
        }
        if self.active.is_some() {
            // The previous one is still running; this one is skipped.
            return;
        }
        self.disruptions += 1;
        let scenario = self.cfg.scenario;
        let mut active = Active {
            scenario,
            started: self.now,
            node: None,
            scaled_down: false,
        };
        match scenario {
            Scenario::None => return,
            Scenario::Rollout => {
                self.revision += 1;
                self.reconcile();
            }
            Scenario::Rainbow => {
                // A new template: the controller sees it at once (it watches the resource).
                self.revision += 1;
                self.active = Some(active);
                self.rainbow_poll();
                return;
            }
            Scenario::ScaleDown => {
                if self.desired < self.spec.replicas {
                    self.desired = self.spec.replicas;
                } else {
                    let by = (self.spec.replicas / 4).max(1).min(self.desired - 1);
                    self.desired -= by;
                    active.scaled_down = true;
                }
                self.reconcile();
            }
            Scenario::Drain
            | Scenario::SpotAws
            | Scenario::SpotGcp
            | Scenario::SpotAzure
            | Scenario::Spot => {
                let Some(node) = self.busiest_node() else {
                    return;
                };
                active.node = Some(node);
                self.cordoned[node as usize] = true;
                let victims: Vec<u32> = (0..self.pods.len() as u32)
                    .filter(|&i| {
                        let p = &self.pods[i as usize];
                        p.alive() && p.node == node
                    })
                    .collect();
                match scenario.provider() {
                    Some(spot) if self.cfg.agent && self.spec.pod.gated() => {
                        // The agent: every gate learns the real deadline at once, then the
                        // pods are deleted with the time left (on GCP the kubelet's node
                        // shutdown leaves them less than the notice: that is the time left).
                        let left = spot.pod_window();
                        let deadline = left.saturating_sub(NOTICE_MARGIN).max(MIN_AGENT_BUDGET);
                        let now = self.now;
                        for &v in &victims {
                            if let Some(g) = self.pods[v as usize].gate.as_mut() {
                                g.drain(
                                    now,
                                    DrainRequest {
                                        deadline: Some(deadline),
                                        ..DrainRequest::new(Trigger::Endpoint)
                                    },
                                );
                            }
                            self.drive_gate(v);
                        }
                        for v in victims {
                            self.delete(v, Some(left));
                        }
                        self.reconcile();
                        self.push(self.now + spot.notice(), Ev::NodeGone { node });
                    }
                    Some(spot) if !spot.evicts() => {
                        // The kubelet's graceful node shutdown: no evictions, no PDB.
                        for v in victims {
                            self.delete(v, Some(spot.pod_window()));
                        }
                        self.reconcile();
                        self.push(self.now + spot.notice(), Ev::NodeGone { node });
                    }
                    Some(spot) => {
                        for v in victims {
                            self.evict(v);
                        }
                        self.push(self.now + spot.notice(), Ev::NodeGone { node });
                    }
                    None if self.cfg.surge => {
                        // lameduck drain: replacements first, on other nodes.
                        self.desired += victims.len() as u32;
                        self.surge_victims = victims;
                        self.reconcile();
                    }
                    None => {
                        for v in victims {
                            self.evict(v);
                        }
                    }
                }
            }
        }
        self.active = Some(active);
        self.check_active();
    }

    /// A surge-first drain goes on once as many pods are Ready off the node as the
    /// Deployment had: the count goes back down, and pod-deletion-cost makes the node's pods
    /// the ones the ReplicaSet deletes (a scale-down: no eviction, no PDB).
    fn surge_ready(&mut self) {
        if self.surge_victims.is_empty() {
            return;
        }
        let k = self.surge_victims.len() as u32;
        let elsewhere = self
            .pods
            .iter()
            .enumerate()
            .filter(|(i, p)| p.alive() && p.ready && !self.surge_victims.contains(&(*i as u32)))
            .count() as u32;
        if elsewhere < self.desired - k {
            return;
        }
        self.desired -= k;
        for v in std::mem::take(&mut self.surge_victims) {
            self.delete(v, None);
        }
        self.reconcile();
    }

    fn busiest_node(&self) -> Option<u32> {
        (0..self.node_load.len())
            .filter(|&n| !self.cordoned[n])
            .max_by_key(|&n| (self.node_load[n], Reverse(n)))
            .filter(|&n| self.node_load[n] > 0)
            .map(|n| n as u32)
    }

    /// The Eviction API: allowed while the PDB keeps its floor of healthy pods; refused
    /// evictions are retried like kubectl drain does.
    fn evict(&mut self, pod: u32) {
        let p = &self.pods[pod as usize];
        if !p.alive() || !self.arrivals_open {
            return;
        }
        if let Some(floor) = self.spec.pdb_min_available {
            let healthy = self.pods.iter().filter(|p| p.alive() && p.ready).count() as u32;
            let this = u32::from(p.ready);
            if healthy.saturating_sub(this) < floor && p.ready {
                let at = self.now + EVICTION_RETRY;
                self.push(at, Ev::Evict { pod });
                return;
            }
        }
        self.delete(pod, None);
        self.reconcile();
    }

    fn node_gone(&mut self, node: u32) {
        let now = self.now;
        let on: Vec<u32> = (0..self.pods.len() as u32)
            .filter(|&i| {
                let p = &self.pods[i as usize];
                p.node == node && !p.exited
            })
            .collect();
        for pod in on {
            let never_deleted = self.pods[pod as usize].deleted_at.is_none();
            if never_deleted {
                // Its endpoint stays until the node controller notices the node is gone.
                self.pods[pod as usize].deleted_at = Some(now);
                self.pods[pod as usize].held_at_delete = self.pods[pod as usize].load();
                self.terminating += 1;
                self.drained_pods += 1;
                self.push(
                    now + NODE_MONITOR_GRACE + self.spec.propagation_lag,
                    Ev::Unroutable { pod },
                );
            }
            self.cut(pod, Fate::Killed);
            self.exit(pod);
            if never_deleted {
                self.reconcile();
            }
        }
    }

    /// Ends the active disruption once it has nothing left to do.
    fn check_active(&mut self) {
        let Some(a) = self.active else {
            return;
        };
        let done = match a.scenario {
            Scenario::None => true,
            Scenario::Rollout => self
                .pods
                .iter()
                .all(|p| p.exited || (p.revision == self.revision && p.ready && p.alive())),
            Scenario::Rainbow => {
                self.rainbow
                    .as_ref()
                    .is_some_and(|rb| rb.serving == self.revision && rb.replicas.len() == 1)
                    && self
                        .pods
                        .iter()
                        .all(|p| p.exited || (p.revision == self.revision && p.ready && p.alive()))
            }
            Scenario::ScaleDown => self.pods.iter().all(|p| p.exited || p.alive()),
            _ => {
                let node = a.node.unwrap_or(u32::MAX);
                let node_clear = self.pods.iter().all(|p| p.exited || p.node != node);
                let replaced = self.pods.iter().filter(|p| p.alive() && p.ready).count() as u32
                    >= self.desired;
                node_clear && replaced
            }
        };
        if done {
            self.spans.push(EventSpan {
                scenario: a.scenario.name(),
                start: a.started.as_secs_f64(),
                end: Some(self.now.as_secs_f64()),
            });
            self.active = None;
            if self.cfg.every.is_none() && self.cfg.horizon.is_none() {
                // Let the fleet run a little longer, then stop sending requests.
                let settle = self.spec.propagation_lag + Duration::from_secs(30);
                self.cfg.horizon = Some(self.now + settle);
            }
        }
    }

    // ---- measurement -----------------------------------------------------------------------

    fn sample(&mut self) {
        let ready = self.routable.len() as u32;
        if self.now >= self.cfg.start {
            self.min_ready = self.min_ready.min(ready);
        }
        self.series.t.push(self.now.as_secs_f64() as f32);
        self.series.ready.push(ready);
        self.series.terminating.push(self.terminating);
        self.series
            .in_flight
            .push(self.in_flight.min(u64::from(u32::MAX)) as u32);
        // A rainbow's old colour may rightly stay until its maxAge.
        let stuck_after = match self.rainbow.as_ref().and_then(|rb| rb.settings.max_age) {
            Some(max_age) => STUCK_AFTER.max(max_age + Duration::from_secs(3600)),
            None => STUCK_AFTER,
        };
        let stuck = self.cfg.horizon.is_none() && self.now >= self.cfg.start + stuck_after;
        if stuck && let Some(a) = self.active.take() {
            // A disruption that never ends (a PDB that allows no eviction): report it open.
            self.spans.push(EventSpan {
                scenario: a.scenario.name(),
                start: a.started.as_secs_f64(),
                end: None,
            });
        }
        let stop = stuck || self.cfg.horizon.is_some_and(|h| self.now >= h);
        if stop {
            self.arrivals_open = false;
            self.arrivals_until = Some(self.now);
        } else {
            let at = self.now + self.cfg.sample_every;
            self.push(at, Ev::Sample);
        }
    }

    fn finish(mut self) -> SimReport {
        self.count_pods();
        if self.peak_since != Duration::MAX {
            self.time_at_peak += self.now - self.peak_since;
        }
        let zero = self.zero_delays;
        let mut delays = std::mem::take(&mut self.delays);
        delays.sort_by(f32::total_cmp);
        let served = zero + delays.len() as u64;
        let pct = |p: f64| -> f64 {
            if served == 0 {
                return 0.0;
            }
            let rank = ((p / 100.0) * served as f64).ceil() as u64;
            let rank = rank.clamp(1, served);
            if rank <= zero {
                0.0
            } else {
                f64::from(delays[(rank - zero - 1) as usize])
            }
        };
        let mut drains = std::mem::take(&mut self.drain_times);
        drains.sort_by(f64::total_cmp);
        let drain_pct = |p: f64| -> f64 {
            if drains.is_empty() {
                return 0.0;
            }
            let rank = ((p / 100.0) * drains.len() as f64).ceil() as usize;
            drains[rank.clamp(1, drains.len()) - 1]
        };
        SimReport {
            scenario: self.cfg.scenario.name(),
            seed: self.cfg.seed,
            requests: self.counts,
            queue_delay: Percentiles {
                p50: pct(50.0),
                p99: pct(99.0),
                p999: pct(99.9),
                max: pct(100.0),
            },
            min_ready: if self.min_ready == u32::MAX {
                self.routable.len() as u32
            } else {
                self.min_ready
            },
            peak_pods: self.peak_pods,
            peak_terminating: self.peak_terminating,
            time_at_peak: self.time_at_peak.as_secs_f64(),
            extra_pod_hours: self.extra_pod_seconds / 3600.0,
            pods_deleted: self.drained_pods,
            pods_losing_work: self.drained_pods_losing,
            pod_drain: Percentiles {
                p50: drain_pct(50.0),
                p99: drain_pct(99.0),
                p999: drain_pct(99.9),
                max: drain_pct(100.0),
            },
            disruptions: self.spans,
            simulated: self.now.as_secs_f64(),
            arrivals_until: self.arrivals_until.unwrap_or(self.now).as_secs_f64(),
            series: self.series,
        }
    }
}
