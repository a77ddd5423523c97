//! One setup's run: start the pods and the balancer, wait until every pod is ready, send the
//! load, play the scenario (drain, rollout or spot), and collect what happened.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::Error;
use crate::agent::AgentRig;
use crate::balancer::{Balancer, Endpoints, Lag};
use crate::clock::{Clock, Event, EventKind, Recorder};
use crate::kubelet::{Delete, Engine, PodEnv, PodHandle, Reaper, pod_log, spawn_pod};
use crate::load::{self, Counts, LoadSpec, Outcome, RequestRecord};
use crate::setup::{Replace, Server, Setup, Strategy};

/// What happens mid-load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One pod is deleted (a node drain or eviction); the ReplicaSet replaces it at once.
    Drain,
    /// Every pod is replaced, within maxSurge and maxUnavailable.
    Rollout,
    /// A spot reclaim: the pod is drained at the notice and its node disappears when the
    /// notice runs out, whatever the grace period says.
    Spot,
    /// A release under `lameduck rainbow`: a new colour of every replica starts beside the
    /// old one, the Service moves to it once it is Ready, and the old colour is deleted when
    /// its gates have reported nothing in flight for the quiet period (or at maxAge).
    Rainbow,
}

/// How the `drain` scenario removes its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// As `kubectl drain`: the pod is deleted and its replacement cold-starts afterwards.
    #[default]
    Evict,
    /// As `lameduck drain`: the replacement is created first, and the pod is deleted once it
    /// is Ready (a Deployment's pods; others as with evict).
    Surge,
}

/// Everything a run needs besides the setup.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Replicas when the setup does not say.
    pub replicas: u32,
    /// Replicas given on the command line win over the manifest's.
    pub replicas_forced: bool,
    /// The server.
    pub engine: Engine,
    /// The load.
    pub load: Arc<LoadSpec>,
    /// Propagation lag.
    pub lag: Lag,
    /// The scenario starts this long (unscaled) after the load.
    pub at: Duration,
    /// Spot notice window (unscaled).
    pub notice: Duration,
    /// Spot scenario: `lameduck agent` runs on the reclaimed node of gated setups.
    pub agent: bool,
    /// Drain scenario: evict first or surge first.
    pub drain: DrainMode,
    /// Rainbow scenario: promotion and retirement (the replicas are the setup's).
    pub rainbow: lameduck_rainbow::crd::Settings,
    /// Speed-up.
    pub time_scale: f64,
    /// Seed.
    pub seed: u64,
    /// The `lameduck` executable.
    pub exe: PathBuf,
    /// Where pods keep their files.
    pub dir: PathBuf,
}

/// A setup's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Ended ok.
    pub ok: usize,
    /// Refused before the stream started.
    pub refused: usize,
    /// Connection broken.
    pub reset: usize,
    /// Stream ended incomplete.
    pub truncated: usize,
    /// Of the truncated, those the client was told about: a terminal error event or a finish
    /// reason. The rest stopped without either (cut silently, or stalled).
    pub truncated_clean: usize,
    /// Everything but ok.
    pub lost: usize,
    /// Median time to first token, in seconds as a client would see it at real speed: the
    /// engine's own time to first token (unscaled) plus what the path to it added, counted in
    /// real time (a proxy's cost does not grow with `--time-scale`). With your own server, as
    /// measured.
    pub ttft_p50: Option<f64>,
    /// 99th percentile time to first token, the same way.
    pub ttft_p99: Option<f64>,
    /// Median of what the path (balancer, gate) added to the engine's time to first token,
    /// real milliseconds (engine-sim only, whose own time to first token is known).
    pub added_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub added_p99_ms: Option<f64>,
    /// From the deletion (or the rollout's start) until the last deleted pod was gone.
    pub drain_seconds: Option<f64>,
    /// From a deletion until the balancer dropped the endpoint (the longest, over deleted
    /// pods): the propagation lag as measured.
    pub propagation_lag: Option<f64>,
    /// Requests the balancer sent to a pod after it was deleted.
    pub routed_after_delete: usize,
    /// Fewest ready endpoints in the balancer from the scenario's start to the end of the
    /// run: the capacity dip.
    pub min_ready: Option<usize>,
    /// SIGKILLs the kubelet sent.
    pub sigkills: usize,
    /// Containers restarted by a failed liveness probe.
    pub liveness_kills: usize,
}

/// One setup's result.
#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    /// The setup.
    pub setup: Setup,
    /// Figures.
    pub summary: Summary,
    /// One line.
    pub verdict: String,
    /// When the load started (unscaled seconds since the setup's start).
    pub load_start: f64,
    /// When the scenario started.
    pub scenario_start: f64,
    /// When the run ended.
    pub end: f64,
    /// Pods deleted by the scenario.
    pub deleted: Vec<String>,
    /// Every pod, in creation order.
    pub pods: Vec<String>,
    /// Every request.
    pub requests: Vec<RequestRecord>,
    /// Every kubelet and balancer event.
    pub events: Vec<Event>,
}

impl SetupResult {
    /// Whether nothing was lost.
    pub fn lost_nothing(&self) -> bool {
        self.summary.lost == 0 && self.summary.requests > 0
    }
}

/// Live status for a progress display.
#[derive(Debug, Default)]
pub struct Status {
    /// Request counts.
    pub counts: Arc<Counts>,
    /// What the run is doing.
    pub phase: Mutex<String>,
    /// Unscaled seconds since the setup's start, last seen.
    pub now: Mutex<f64>,
}

impl Status {
    pub(crate) fn phase(&self, p: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p.to_owned();
    }

    /// One line: phase, time, counts.
    pub fn line(&self) -> String {
        let c = &self.counts;
        format!(
            "{} · t={:.0}s · sent {} · ended {} · lost {}",
            self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            *self.now.lock().unwrap_or_else(|e| e.into_inner()),
            c.sent.load(Ordering::Relaxed),
            c.ended.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
        )
    }
}

/// Runs one setup.
pub async fn run_setup(
    plan: &Plan,
    setup: &Setup,
    arrivals: Vec<(f64, u32)>,
    status: Arc<Status>,
) -> Result<SetupResult, Error> {
    let clock = Clock::start(plan.time_scale);
    let ticker = {
        let status = status.clone();
        tokio::spawn(async move {
            loop {
                *status.now.lock().unwrap_or_else(|e| e.into_inner()) = clock.now();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let _ticker = AbortOnDrop(ticker);
    let rec = Recorder::new(clock);
    let endpoints = Endpoints::new(rec.clone(), plan.lag, plan.seed);
    let lb = Balancer::start(endpoints.clone())
        .await
        .map_err(|e| Error::Io(format!("cannot start the load balancer: {e}")))?;
    let dir = plan.dir.join(&setup.name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    let replicas = match (setup.replicas, plan.replicas_forced) {
        (Some(r), false) => r,
        _ => plan.replicas,
    };
    let reaper = Arc::new(Reaper::default());
    let env = Arc::new(PodEnv {
        clock,
        rec: rec.clone(),
        endpoints: endpoints.clone(),
        setup: setup.clone(),
        engine: plan.engine.clone(),
        exe: plan.exe.clone(),
        dir: dir.clone(),
        reaper: reaper.clone(),
        seed: plan.seed,
        service: lb.addr,
    });
    let spawn = |i: u32| {
        spawn_pod(env.clone(), i)
            .map_err(|e| Error::Io(format!("cannot create pod {}-{i}: {e}", setup.name)))
    };
    let mut pods: Vec<PodHandle> = (0..replicas).map(spawn).collect::<Result<_, _>>()?;

    // Start-up: every pod ready in the balancer's view.
    status.phase("starting pods");
    let cold = match &plan.engine {
        Engine::Sim { cold_start, .. } => *cold_start,
        Engine::Command(_) => Duration::ZERO,
    };
    // At least 30 real seconds, however fast the run.
    let ready_by = (clock.now() + (cold + Duration::from_secs(120)).as_secs_f64())
        .max(clock.now() + 30.0 * clock.scale());
    // Pods restarted by their probes twice each before any is ready will not become ready:
    // say so without waiting for the whole start-up allowance.
    let restarted = || {
        rec.events()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::LivenessKill | EventKind::StartupKill))
            .count()
    };
    while endpoints.ready_count() < replicas as usize {
        let hopeless = endpoints.ready_count() == 0 && restarted() >= 2 * replicas as usize;
        if clock.now() > ready_by || hopeless {
            let ready = endpoints.ready_count();
            let events = rec.events();
            let restarts = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count();
            let (liveness, startup) = (
                restarts(EventKind::LivenessKill),
                restarts(EventKind::StartupKill),
            );
            let why = if liveness > 0 {
                format!(
                    ": the liveness probe restarted them {liveness} time(s) while they started (the engine takes {} s to serve); add a startupProbe, or give liveness an initialDelaySeconds longer than the start",
                    lameduck_timeline::secs_plain(cold)
                )
            } else if startup > 0 {
                format!(
                    ": the startup probe gave up {startup} time(s) (the engine takes {} s to serve); allow it periodSeconds × failureThreshold longer than that",
                    lameduck_timeline::secs_plain(cold)
                )
            } else {
                String::new()
            };
            let within = if hopeless {
                format!("after {:.0} s (unscaled)", clock.now())
            } else {
                format!(
                    "within {:.0} s (unscaled)",
                    (cold + Duration::from_secs(120)).as_secs_f64()
                )
            };
            return Err(Error::Run(format!(
                "setup {}: only {ready} of {replicas} pods were ready {within}{why}; the server's log is in {}",
                setup.name,
                pod_log(&dir, &pods[0].name).display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // On spot, a gated setup's node runs the agent (unless --no-agent).
    let rig = if plan.scenario == Scenario::Spot
        && plan.agent
        && matches!(setup.server, Server::Gate { .. })
    {
        status.phase("starting lameduck agent");
        Some(
            AgentRig::start(
                &plan.exe,
                &dir,
                clock,
                &pods[0].name,
                pods[0].admin_port,
                setup.grace,
            )
            .await?,
        )
    } else {
        None
    };
    // A gateway in front of the Service, for setups that have one: the load goes through it.
    let gateway = if setup.gateway {
        status.phase("starting the gateway");
        Some(crate::gateway::Gateway::start(&plan.exe, &dir, clock, lb.addr).await?)
    } else {
        None
    };
    let front = gateway.as_ref().map_or(lb.addr, |g| g.addr);
    let mut agent_note = None;
    let mut surge_note = None;
    let mut rainbow_note = None;

    // The load.
    status.phase("load");
    let load_start = clock.now();
    let load = tokio::spawn(load::run(
        plan.load.clone(),
        arrivals,
        front,
        clock,
        load_start,
        status.counts.clone(),
    ));

    // The scenario.
    clock.sleep_until(load_start + plan.at.as_secs_f64()).await;
    let scenario_start = clock.now();
    let mut next = replicas;
    let mut deleted = Vec::new();
    match plan.scenario {
        Scenario::Drain | Scenario::Spot => {
            status.phase(if plan.scenario == Scenario::Drain {
                "draining one pod"
            } else {
                "spot reclaim of one pod"
            });
            let how = Delete {
                node_deadline: (plan.scenario == Scenario::Spot).then_some(plan.notice),
            };
            match &rig {
                // The metadata service announces the reclaim; the agent tells the gate the
                // deadline and deletes the pod through the API, where this kubelet sees it.
                Some(rig) => {
                    status.phase("spot reclaim: the agent acts on the notice");
                    let noticed = clock.now();
                    rig.reclaim(clock.real(plan.notice));
                    let by_agent = rig.deleted(clock.real(plan.notice)).await;
                    let after = clock.now() - noticed;
                    let left = (plan.notice.as_secs_f64() - after).max(0.0);
                    pods[0].delete(Delete {
                        node_deadline: Some(Duration::from_secs_f64(left)),
                    });
                    agent_note = Some(if by_agent {
                        format!(
                            "lameduck agent on the node: {}; it deleted the pod {after:.1} s after the notice{}",
                            if rig.gate_accepted() {
                                "the gate took the notice as its deadline"
                            } else {
                                "the gate did NOT accept the agent's /drain"
                            },
                            if rig.node_marked() {
                                ", the node tainted and cordoned"
                            } else {
                                ""
                            }
                        )
                    } else {
                        format!(
                            "lameduck agent on the node did NOT delete the pod before the node went; its log is {}",
                            dir.join("agent.log").display()
                        )
                    });
                }
                None if plan.scenario == Scenario::Drain
                    && plan.drain == DrainMode::Surge
                    && setup.replace == Replace::Immediately =>
                {
                    status.phase("surge: waiting for the replacement");
                    let surged = clock.now();
                    pods.push(spawn(next)?);
                    next += 1;
                    // Ready, and in the balancer: the capacity is there before the pod goes.
                    let limit = clock.real(cold + Duration::from_secs(600));
                    let in_balancer = async {
                        while endpoints.ready_count() <= replicas as usize {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    if tokio::time::timeout(limit, in_balancer).await.is_err() {
                        return Err(Error::Run(format!(
                            "setup {}: the surge's replacement was not ready within {:.0} s (unscaled); see the logs in {}",
                            setup.name,
                            (cold + Duration::from_secs(600)).as_secs_f64(),
                            dir.display()
                        )));
                    }
                    status.phase("draining one pod");
                    pods[0].delete(how);
                    surge_note = Some(format!(
                        "surge first (lameduck drain): the replacement was Ready and in the balancer {:.1} s after it was created, then the pod was deleted",
                        clock.now() - surged
                    ));
                }
                None => {
                    pods[0].delete(how);
                }
            }
            deleted.push(0);
            match setup.replace {
                // The surge created the replacement already.
                Replace::Immediately if surge_note.is_some() => {}
                // The ReplicaSet replaces a deleted pod at once.
                Replace::Immediately => pods.push(spawn(next)?),
                // The StatefulSet waits until the ordinal is free.
                Replace::AfterGone => {
                    let limit = clock.real(setup.grace + Duration::from_secs(30));
                    let _ = tokio::time::timeout(limit, pods[0].wait_gone()).await;
                    pods.push(spawn(next)?);
                }
                Replace::Never => {}
            }
        }
        Scenario::Rainbow => {
            let settings = lameduck_rainbow::crd::Settings {
                replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
                ..plan.rainbow.clone()
            };
            let gated = matches!(setup.server, Server::Gate { .. });
            // The new colour's start, the old colour's longest stream, maxAge, its drain.
            let limit = cold
                + settings.max_age.unwrap_or_default()
                + setup.grace
                + Duration::from_secs(600);
            let released = crate::rainbow::release(
                &mut pods, &mut next, &endpoints, clock, gated, &settings, &spawn, &status, limit,
            )
            .await
            .map_err(|e| match e {
                Error::Run(m) => Error::Run(format!(
                    "setup {}: {m}; see the logs in {}",
                    setup.name,
                    dir.display()
                )),
                other => other,
            })?;
            rainbow_note = Some(released.note(&settings));
            deleted = released.old;
        }
        Scenario::Rollout => {
            status.phase("rolling out");
            let strategy = setup.strategy.clone().unwrap_or_default();
            // Never wait forever for a pod that does not become ready.
            let limit = clock.real(cold + setup.grace + Duration::from_secs(600));
            let roll = rollout(
                &mut pods,
                &mut next,
                replicas,
                &strategy,
                setup.replace,
                clock,
                &spawn,
            );
            deleted = match tokio::time::timeout(limit, roll).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::Run(format!(
                        "setup {}: the rollout did not finish within {:.0} s (unscaled): a new pod never became ready; see the logs in {}",
                        setup.name,
                        (cold + setup.grace + Duration::from_secs(600)).as_secs_f64(),
                        dir.display()
                    )));
                }
            };
        }
    }
    let limit = setup.grace + Duration::from_secs(30);
    for &i in &deleted {
        let _ = tokio::time::timeout(clock.real(limit), pods[i].wait_gone()).await;
    }
    if let Some(rig) = rig {
        rig.stop().await;
    }
    status.phase("finishing requests");
    let requests = load
        .await
        .map_err(|e| Error::Run(format!("the load generator failed: {e}")))?;
    let end = clock.now();
    let gateway_note = match gateway {
        Some(g) => {
            let (handed_off, completed) = g.handoffs().await;
            g.stop().await;
            Some(format!(
                "gateway (lameduck gate --gateway) in front of the Service: {handed_off} streams cut by their pod continued on another pod, {completed} of them completed"
            ))
        }
        None => None,
    };
    let events = rec.events();
    status.phase("done");
    reaper.kill_all();
    drop(lb);

    let deleted_names: Vec<String> = deleted.iter().map(|&i| pods[i].name.clone()).collect();
    let engine_ttft = match &plan.engine {
        Engine::Sim { .. } => Some(lameduck_engine_sim::DEFAULT_TTFT),
        Engine::Command(_) => None,
    };
    let summary = summarize(
        &requests,
        &events,
        &endpoints.routed(),
        &deleted_names,
        scenario_start,
        (clock.scale(), engine_ttft),
    );
    let mut setup = setup.clone();
    setup.notes.extend(agent_note);
    setup.notes.extend(surge_note);
    setup.notes.extend(rainbow_note);
    setup.notes.extend(gateway_note);
    if plan.scenario == Scenario::Spot && !plan.agent && matches!(setup.server, Server::Gate { .. })
    {
        setup.notes.push(
            "without lameduck agent (--no-agent): the gate learns of the reclaim only from its preStop and plans for its whole grace period".into(),
        );
    }
    Ok(SetupResult {
        verdict: verdict(&summary),
        setup,
        summary,
        load_start,
        scenario_start,
        end,
        deleted: deleted_names,
        pods: pods.iter().map(|p| p.name.clone()).collect(),
        requests,
        events,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Deployment controller's rolling update: new pods up to `replicas + maxSurge` in
/// total, old pods deleted while at least `replicas − maxUnavailable` stay ready. Returns
/// the indices of the old pods.
async fn rollout(
    pods: &mut Vec<PodHandle>,
    next: &mut u32,
    replicas: u32,
    strategy: &Strategy,
    replace: Replace,
    clock: Clock,
    spawn: &impl Fn(u32) -> Result<PodHandle, Error>,
) -> Result<Vec<usize>, Error> {
    let old: Vec<usize> = (0..pods.len()).collect();
    let first_new = pods.len();
    let wait_ready = |p: &PodHandle| {
        let p = p.clone_ready();
        async move {
            let mut p = p;
            let _ = p.wait_for(|r| *r).await;
        }
    };
    match replace {
        Replace::Never => {
            return Err(Error::Input(
                "a bare Pod has no controller to roll it out; use --scenario drain".into(),
            ));
        }
        // A StatefulSet: one ordinal at a time, highest first; the old pod must be gone
        // before its successor is created, which must be ready before the next one goes.
        Replace::AfterGone => {
            for &i in old.iter().rev() {
                pods[i].delete(Delete::default());
                pods[i].wait_gone().await;
                pods.push(spawn(*next)?);
                *next += 1;
                let new = pods.len() - 1;
                wait_ready(&pods[new]).await;
            }
            return Ok(old);
        }
        Replace::Immediately if strategy.recreate => {
            for &i in &old {
                pods[i].delete(Delete::default());
            }
            for &i in &old {
                pods[i].wait_gone().await;
            }
            for _ in 0..replicas {
                pods.push(spawn(*next)?);
                *next += 1;
            }
            return Ok(old);
        }
        Replace::Immediately => {}
    }
    let (surge, unavailable) = strategy.resolve(replicas)?;
    let min_available = replicas.saturating_sub(unavailable) as usize;
    loop {
        let new_alive = pods.len() - first_new;
        let old_alive = old.iter().filter(|&&i| !pods[i].is_deleted()).count();
        // Scale the new ReplicaSet up.
        let room = (replicas + surge) as usize;
        let mut created = new_alive;
        while created < replicas as usize && old_alive + created < room {
            pods.push(spawn(*next)?);
            *next += 1;
            created += 1;
        }
        // Scale the old one down: unready pods first, then ready ones while enough stay.
        let new_ready = pods[first_new..].iter().filter(|p| p.is_ready()).count();
        let mut available = new_ready
            + old
                .iter()
                .filter(|&&i| !pods[i].is_deleted() && pods[i].is_ready())
                .count();
        let mut candidates: Vec<usize> = old
            .iter()
            .copied()
            .filter(|&i| !pods[i].is_deleted())
            .collect();
        candidates.sort_by_key(|&i| pods[i].is_ready());
        for i in candidates {
            if !pods[i].is_ready() {
                pods[i].delete(Delete::default());
            } else if available > min_available {
                pods[i].delete(Delete::default());
                available -= 1;
            }
        }
        let old_left = old.iter().filter(|&&i| !pods[i].is_deleted()).count();
        if old_left == 0 && new_ready == replicas as usize {
            return Ok(old);
        }
        clock.sleep(Duration::from_millis(500)).await;
    }
}

fn summarize(
    requests: &[RequestRecord],
    events: &[Event],
    routed: &[(f64, String)],
    deleted: &[String],
    scenario_start: f64,
    (scale, engine_ttft): (f64, Option<Duration>),
) -> Summary {
    let count = |o: Outcome| requests.iter().filter(|r| r.outcome == o).count();
    // What the path added to the engine's own time to first token, in real seconds.
    let mut added: Vec<f64> = match engine_ttft {
        Some(e) => requests
            .iter()
            .filter_map(RequestRecord::ttft)
            .map(|t| (t / scale - e.as_secs_f64() / scale).max(0.0))
            .collect(),
        None => Vec::new(),
    };
    let mut ttft: Vec<f64> = match engine_ttft {
        Some(e) => added.iter().map(|a| e.as_secs_f64() + a).collect(),
        None => requests.iter().filter_map(RequestRecord::ttft).collect(),
    };
    let at = |pod: &str, f: &dyn Fn(&EventKind) -> bool| {
        events
            .iter()
            .find(|e| e.pod == pod && f(&e.kind))
            .map(|e| e.t)
    };
    let mut lag: Option<f64> = None;
    let mut gone_last: Option<f64> = None;
    let mut after = 0;
    for pod in deleted {
        let del = at(pod, &|k| *k == EventKind::Deleted);
        let removed = at(pod, &|k| {
            matches!(k, EventKind::Endpoint { state: "removed" })
        });
        if let (Some(d), Some(r)) = (del, removed) {
            lag = Some(lag.unwrap_or(0.0).max(r - d));
        }
        if let Some(g) = at(pod, &|k| *k == EventKind::Gone) {
            gone_last = Some(gone_last.unwrap_or(0.0).max(g));
        }
        if let Some(d) = del {
            after += routed.iter().filter(|(t, p)| p == pod && *t >= d).count();
        }
    }
    let ok = count(Outcome::Ok);
    // Ready endpoints over time, as the balancer saw them.
    let mut ready: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    let mut min_ready: Option<usize> = None;
    let mut ordered: Vec<&Event> = events.iter().collect();
    ordered.sort_by(|a, b| a.t.total_cmp(&b.t));
    for e in ordered {
        if let EventKind::Endpoint { state } = e.kind {
            ready.insert(&e.pod, state == "ready");
        }
        if e.t >= scenario_start {
            let n = ready.values().filter(|r| **r).count();
            min_ready = Some(min_ready.map_or(n, |m| m.min(n)));
        }
    }
    Summary {
        requests: requests.len(),
        ok,
        refused: count(Outcome::Refused),
        reset: count(Outcome::Reset),
        truncated: count(Outcome::Truncated),
        truncated_clean: requests
            .iter()
            .filter(|r| r.outcome == Outcome::Truncated && r.told_client())
            .count(),
        lost: requests.len() - ok,
        ttft_p50: load::quantile(&mut ttft, 0.5),
        ttft_p99: load::quantile(&mut ttft, 0.99),
        added_p50_ms: load::quantile(&mut added, 0.5).map(|s| s * 1000.0),
        added_p99_ms: load::quantile(&mut added, 0.99).map(|s| s * 1000.0),
        drain_seconds: gone_last.map(|g| g - scenario_start),
        propagation_lag: lag,
        routed_after_delete: after,
        min_ready,
        sigkills: events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Sigkill { .. }))
            .count(),
        liveness_kills: events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::LivenessKill | EventKind::StartupKill))
            .count(),
    }
}

/// One line: what the setup lost.
pub fn verdict(s: &Summary) -> String {
    if s.requests == 0 {
        return "no requests were sent: raise --rate or --load-for".into();
    }
    if s.lost == 0 {
        return format!("lost nothing: all {} requests completed", s.requests);
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (s.refused, "refused"),
        (s.reset, "reset"),
        (s.truncated, "truncated"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "lost {} of {} requests ({})",
        s.lost,
        s.requests,
        parts.join(", ")
    )
}
