//! The `rainbow` scenario: a release as `lameduck rainbow` makes it, on the real pods. The
//! controller's own decision ([`lameduck_rainbow::decide::decide`]) runs every 5 s against
//! what this rehearsal observes: each colour's pods (readiness from the kubelet emulator),
//! and the in-flight work their gates report on `/status`. Its actions are carried out here:
//! a new colour of every replica started beside the old one, the Service's selector moved
//! once it is Ready, the old colour's pods deleted (through their graceful termination) once
//! its gates have reported nothing in flight for the quiet period, or at maxAge.
//!
//! What is not rehearsed is the controller's Kubernetes side (Deployments, the pod proxy,
//! the status, the Lease): the integration tests run the controller itself against the test
//! API server for that.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lameduck_gate_api::GateClient;
use lameduck_rainbow::crd::Settings;
use lameduck_rainbow::decide::{Action, Colour, ColourState, Input, Work, decide};

use crate::Error;
use crate::balancer::Endpoints;
use crate::clock::Clock;
use crate::kubelet::PodHandle;
use crate::run::Status;

/// How often the controller decides (`lameduck rainbow run --poll`'s default), unscaled.
pub const POLL: Duration = lameduck_rainbow::DEFAULT_POLL;

/// How long a gate has to answer `/status` (the controller's `--gate-timeout`), real time.
const GATE_TIMEOUT: Duration = lameduck_rainbow::DEFAULT_GATE_TIMEOUT;

/// What the release did.
#[derive(Debug, Clone)]
pub struct Released {
    /// The old colour's pods (indices into the pods).
    pub old: Vec<usize>,
    /// Unscaled seconds from the release until the Service moved to the new colour.
    pub moved_after: Option<f64>,
    /// Unscaled seconds from the move until the old colour was retired.
    pub retired_after: Option<f64>,
    /// Why it was retired, in the controller's words.
    pub why: Option<String>,
    /// The most work its gates reported in flight after the move.
    pub most_in_flight: Option<u64>,
}

impl Released {
    /// One line for the report's notes.
    pub fn note(&self, settings: &Settings) -> String {
        let moved = self.moved_after.map_or_else(
            || "the Service never moved to the new colour".to_owned(),
            |t| format!("the new colour was Ready and the Service moved to it {t:.1} s after the release"),
        );
        let held = match self.most_in_flight {
            Some(n) if n > 0 => format!("kept serving up to {n} in-flight requests and "),
            Some(_) => String::new(),
            None => "could not report its work (no gate) and ".to_owned(),
        };
        let retired = match (self.retired_after, &self.why) {
            (Some(t), Some(why)) => format!("was {why}, {t:.1} s after the move"),
            _ => "was never retired".to_owned(),
        };
        format!(
            "lameduck rainbow (its decision every {} s, quiet period {}, maxAge {}): {moved}; the old colour ({} pods) {held}{retired}",
            POLL.as_secs(),
            secs(settings.quiet),
            settings.max_age.map_or_else(|| "none".to_owned(), secs),
            self.old.len(),
        )
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", lameduck_timeline::secs_plain(d))
}

fn name(rev: u32) -> String {
    format!("colour-{rev}")
}

fn rev_of(colour: &str) -> Option<u32> {
    colour.strip_prefix("colour-").and_then(|n| n.parse().ok())
}

/// What the gates of these pods report in flight; any that cannot answer makes it unknown.
async fn work(pods: &[&PodHandle], gated: bool) -> Work {
    if !gated {
        return Work::Unknown("the setup has no gate".into());
    }
    let mut sum = 0u64;
    for p in pods {
        let addr = SocketAddr::from(([127, 0, 0, 1], p.admin_port));
        match GateClient::new(addr)
            .with_timeout(GATE_TIMEOUT)
            .status()
            .await
        {
            Ok(s) => sum += u64::try_from(s.in_flight_total()).unwrap_or(0),
            Err(e) => return Work::Unknown(format!("{}: {e}", p.name)),
        }
    }
    Work::from_sum(sum, None)
}

/// Plays one release: the pods there are now are the old colour, `replicas` new ones the new
/// colour. Returns once only the new colour is left, or fails after `limit` (unscaled).
#[allow(clippy::too_many_arguments)]
pub async fn release(
    pods: &mut Vec<PodHandle>,
    next: &mut u32,
    endpoints: &Arc<Endpoints>,
    clock: Clock,
    gated: bool,
    settings: &Settings,
    spawn: &impl Fn(u32) -> Result<PodHandle, Error>,
    status: &Status,
    limit: Duration,
) -> Result<Released, Error> {
    let started = clock.now();
    let old: Vec<usize> = (0..pods.len()).collect();
    let select = |members: &[usize], pods: &[PodHandle]| -> HashSet<String> {
        members.iter().map(|&i| pods[i].name.clone()).collect()
    };
    // The Service selects the old colour from the start.
    endpoints.select(select(&old, pods));
    let mut members: BTreeMap<u32, Vec<usize>> = [(0, old.clone())].into();
    let mut replicas: BTreeMap<u32, i32> =
        [(0, i32::try_from(old.len()).unwrap_or(i32::MAX))].into();
    let mut serving = 0u32;
    let mut memory: Vec<ColourState> = Vec::new();
    let mut out = Released {
        old: old.clone(),
        moved_after: None,
        retired_after: None,
        why: None,
        most_in_flight: None,
    };
    let mut moved_at = None;
    loop {
        let now = clock.now();
        let mut colours = Vec::new();
        for (&rev, of) in &members {
            let alive: Vec<&PodHandle> = of
                .iter()
                .map(|&i| &pods[i])
                .filter(|p| !p.is_gone())
                .collect();
            let ready = alive
                .iter()
                .filter(|p| !p.is_deleted() && p.is_ready())
                .count();
            let work = work(&alive, gated).await;
            if rev == 0 && moved_at.is_some() && out.why.is_none() {
                out.most_in_flight = match (out.most_in_flight, work.count()) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, None) if !gated => a,
                    (a, b) => a.or(b),
                };
                status.phase(&format!(
                    "rainbow: the old colour is serving what it holds ({})",
                    work.count()
                        .map_or_else(|| "work unknown".to_owned(), |n| format!("{n} in flight"))
                ));
            }
            colours.push(Colour::observed(
                name(rev),
                replicas.get(&rev).copied().unwrap_or(0),
                ready,
                alive.len(),
                work,
                memory.iter().find(|m| m.colour == name(rev)),
            ));
        }
        let decision = decide(&Input {
            now: Duration::from_secs_f64(now),
            settings: settings.clone(),
            desired: name(1),
            serving: Some(name(serving)),
            colours,
            unroutable: None,
        });
        for action in decision.actions {
            match action {
                Action::Create {
                    colour,
                    replicas: n,
                }
                | Action::Scale {
                    colour,
                    replicas: n,
                } => {
                    let Some(rev) = rev_of(&colour) else { continue };
                    replicas.insert(rev, n);
                    let of = members.entry(rev).or_default();
                    let alive = of.iter().filter(|&&i| !pods[i].is_deleted()).count();
                    let want = usize::try_from(n).unwrap_or(0);
                    for _ in alive..want {
                        pods.push(spawn(*next)?);
                        *next += 1;
                        of.push(pods.len() - 1);
                    }
                    if rev == 1 {
                        status.phase("rainbow: the new colour is starting");
                    }
                }
                Action::Route { colour, .. } => {
                    let Some(rev) = rev_of(&colour) else { continue };
                    serving = rev;
                    endpoints.select(select(members.get(&rev).map_or(&[][..], |v| v), pods));
                    moved_at = Some(now);
                    out.moved_after = Some(now - started);
                }
                Action::Retire {
                    colour,
                    reason,
                    in_flight,
                } => {
                    let Some(rev) = rev_of(&colour) else { continue };
                    replicas.insert(rev, 0);
                    for &i in members.get(&rev).map_or(&[][..], |v| v) {
                        pods[i].delete(crate::kubelet::Delete::default());
                    }
                    out.retired_after = moved_at.map(|m| now - m);
                    out.why = Some(match reason {
                        lameduck_rainbow::decide::Reason::Quiet => {
                            format!("retired: nothing in flight for {}", secs(settings.quiet))
                        }
                        lameduck_rainbow::decide::Reason::MaxAge => format!(
                            "retired at maxAge with {} in flight",
                            in_flight.map_or_else(|| "unknown work".to_owned(), |n| n.to_string())
                        ),
                    });
                    status.phase("rainbow: the old colour is retired and draining");
                }
                Action::Delete { colour } => {
                    if let Some(rev) = rev_of(&colour) {
                        members.remove(&rev);
                        replicas.remove(&rev);
                    }
                }
            }
        }
        memory = decision.colours;
        if serving == 1 && members.len() == 1 {
            return Ok(out);
        }
        if now - started > limit.as_secs_f64() {
            let why = if moved_at.is_none() {
                "the new colour's pods never became Ready"
            } else {
                "the old colour was never retired"
            };
            return Err(Error::Run(format!(
                "the rainbow release did not finish within {:.0} s (unscaled): {why}",
                limit.as_secs_f64()
            )));
        }
        clock.sleep(POLL).await;
    }
}
