//! The kubelet emulator: one task per pod that starts its container as a real process, runs
//! its probes for the whole life of the pod, and terminates it the way the kubelet does.
//!
//! Termination, from the moment the pod is deleted:
//! 1. endpoint removal starts (see [`crate::balancer`]) — in parallel with
//! 2. the preStop hook (exec, httpGet or sleep), which runs inside the grace period;
//! 3. SIGTERM to the container's main process once the hook returns;
//! 4. SIGKILL to the whole process group when the grace period is over. A hook still running
//!    then is abandoned: SIGTERM is sent at once and SIGKILL two seconds later (the kubelet's
//!    minimum stop window, which also applies when a hook returns just before the end).
//!
//! Probes keep running during termination; a failed liveness probe (outside termination)
//! kills the container the same way and restarts it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use lameduck_timeline::{PreStop, Termination};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::balancer::Endpoints;
use crate::clock::{Clock, EventKind, ProbeKind, Recorder};
use crate::setup::{Handler, PortRef, ProbeSpec, Server, Setup, rewrite_exec};

/// The server every pod runs (alone or behind the gate).
#[derive(Debug, Clone)]
pub enum Engine {
    /// `lameduck engine-sim`.
    Sim {
        /// Decode speed (unscaled tokens per second).
        tokens_per_second: f64,
        /// Cold start before /health answers 200 (unscaled).
        cold_start: Duration,
        /// What SIGTERM does (vLLM's default is `abort`).
        on_sigterm: lameduck_engine_sim::OnSigterm,
    },
    /// The user's own server; it must listen on `$PORT`.
    Command(Vec<String>),
}

/// Process groups still alive; all of them are SIGKILLed when this is dropped, so that an
/// interrupted rehearsal leaves no server behind.
#[derive(Debug, Default)]
pub struct Reaper {
    groups: Mutex<HashSet<i32>>,
}

impl Reaper {
    fn add(&self, pgid: i32) {
        self.lock().insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.lock().remove(&pgid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILLs every live group, and every descendant in a group of its own (the gate
    /// starts its engine in a new process group, which a SIGKILLed gate cannot pass on).
    pub fn kill_all(&self) {
        for pgid in self.lock().drain() {
            kill_tree(pgid);
        }
    }
}

/// SIGKILLs the process group led by `pid` and every descendant's group. Descendants are
/// found first, through /proc, because once their parent dies they are reparented and can
/// no longer be told apart.
pub fn kill_tree(pid: i32) {
    let mut tree = vec![pid];
    let mut i = 0;
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let after = stat.get(stat.rfind(')')? + 1..)?;
            let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((child, ppid))
        })
        .collect();
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    for p in tree {
        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// What every pod of one setup's run shares.
#[derive(Debug)]
pub struct PodEnv {
    /// The run's clock.
    pub clock: Clock,
    /// The event log.
    pub rec: Recorder,
    /// The load balancer's endpoints.
    pub endpoints: Arc<Endpoints>,
    /// The pod spec.
    pub setup: Setup,
    /// The server.
    pub engine: Engine,
    /// The `lameduck` executable (for `gate` and `engine-sim`).
    pub exe: PathBuf,
    /// The run's directory; each pod gets a subdirectory.
    pub dir: PathBuf,
    /// Live process groups.
    pub reaper: Arc<Reaper>,
    /// Seed for engine-sim.
    pub seed: u64,
    /// The Service's address (the load balancer), for `--handoff-to`.
    pub service: std::net::SocketAddr,
}

/// How a pod is deleted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delete {
    /// The node goes away this long (unscaled) after the deletion, killing whatever still
    /// runs even inside the grace period (a spot reclaim).
    pub node_deadline: Option<Duration>,
}

/// A running pod.
#[derive(Debug)]
pub struct PodHandle {
    /// `<setup>-<n>`.
    pub name: String,
    /// The port it serves on (the gate's, or the engine's without one), on 127.0.0.1.
    pub serve_port: u16,
    /// The gate's admin port on 127.0.0.1 (unused without a gate).
    pub admin_port: u16,
    ready: watch::Receiver<bool>,
    gone: watch::Receiver<bool>,
    delete: Mutex<Option<oneshot::Sender<Delete>>>,
}

impl PodHandle {
    /// Whether the kubelet considers the pod ready.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// A receiver of the kubelet's readiness.
    pub fn clone_ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Whether the pod is gone (its container exited after deletion).
    pub fn is_gone(&self) -> bool {
        *self.gone.borrow()
    }

    /// Whether the pod was deleted (it may still be terminating).
    pub fn is_deleted(&self) -> bool {
        self.delete
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Deletes the pod; `false` when it already was.
    pub fn delete(&self, how: Delete) -> bool {
        let tx = self.delete.lock().unwrap_or_else(|e| e.into_inner()).take();
        tx.is_some_and(|tx| tx.send(how).is_ok())
    }

    /// Waits until the pod is gone.
    pub async fn wait_gone(&self) {
        let mut gone = self.gone.clone();
        let _ = gone.wait_for(|g| *g).await;
    }
}

/// The loopback ports of one pod.
#[derive(Debug, Clone, Copy)]
struct Ports {
    serve: u16,
    admin: u16,
    inner: u16,
}

impl Ports {
    fn of(&self, port: PortRef) -> u16 {
        match port {
            PortRef::Serve => self.serve,
            PortRef::Admin => self.admin,
        }
    }
}

struct Pod {
    env: Arc<PodEnv>,
    name: String,
    index: u32,
    ports: Ports,
    dir: PathBuf,
    tmp: PathBuf,
    ready: watch::Sender<bool>,
}

/// Creates a pod and starts its kubelet task.
pub fn spawn_pod(env: Arc<PodEnv>, index: u32) -> std::io::Result<PodHandle> {
    let name = format!("{}-{index}", env.setup.name);
    let dir = env.dir.join(&name);
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let ports = Ports {
        serve: crate::ports::free_port()?,
        admin: crate::ports::free_port()?,
        inner: crate::ports::free_port()?,
    };
    let (ready_tx, ready_rx) = watch::channel(false);
    let (gone_tx, gone_rx) = watch::channel(false);
    let (del_tx, del_rx) = oneshot::channel();
    let serve_port = ports.serve;
    let admin_port = ports.admin;
    let pod = Arc::new(Pod {
        env,
        name: name.clone(),
        index,
        ports,
        dir,
        tmp,
        ready: ready_tx,
    });
    tokio::spawn(async move {
        pod.run(del_rx).await;
        let _ = gone_tx.send(true);
    });
    Ok(PodHandle {
        name,
        serve_port,
        admin_port,
        ready: ready_rx,
        gone: gone_rx,
        delete: Mutex::new(Some(del_tx)),
    })
}

/// How a container generation ended.
enum Ended {
    Exited,
    /// A liveness or startup probe failed.
    Probe(ProbeKind),
    Deleted(Delete),
}

/// One started container process.
struct Container {
    pid: i32,
    exited: watch::Receiver<bool>,
}

impl Container {
    fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|e| *e).await;
    }
}

impl Pod {
    fn rec(&self, kind: EventKind) {
        self.env.rec.record(&self.name, kind);
    }

    fn clock(&self) -> Clock {
        self.env.clock
    }

    fn serve_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.ports.serve).into()
    }

    fn set_ready(&self, ready: bool) {
        let changed = self
            .ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
        if changed {
            self.rec(EventKind::Ready { ready });
            self.env
                .endpoints
                .set_ready(&self.name, self.serve_addr(), ready);
        }
    }

    async fn run(self: Arc<Self>, mut del_rx: oneshot::Receiver<Delete>) {
        self.rec(EventKind::Created);
        loop {
            let container = match self.start() {
                Ok(c) => c,
                Err(e) => {
                    self.rec(EventKind::StartFailed {
                        error: e.to_string(),
                    });
                    tokio::select! {
                        _ = self.clock().sleep(Duration::from_secs(10)) => continue,
                        _ = &mut del_rx => {
                            self.rec(EventKind::Deleted);
                            self.env.endpoints.remove(&self.name);
                            break;
                        }
                    }
                }
            };
            let probes = CancellationToken::new();
            let (live_tx, mut live_rx) = mpsc::channel(1);
            // Readiness and liveness, once the startup probe (if any) has succeeded.
            let others = {
                let (pod, probes, live_tx) = (self.clone(), probes.clone(), live_tx.clone());
                move || {
                    match pod.env.setup.readiness.clone() {
                        Some(spec) => {
                            let (p, stop) = (pod.clone(), probes.clone());
                            tokio::spawn(async move {
                                stop.run_until_cancelled(p.probe_loop(
                                    spec,
                                    ProbeKind::Readiness,
                                    None,
                                ))
                                .await;
                            });
                        }
                        None => pod.set_ready(true),
                    }
                    if let Some(spec) = pod.env.setup.liveness.clone() {
                        let (p, stop) = (pod.clone(), probes.clone());
                        tokio::spawn(async move {
                            stop.run_until_cancelled(p.probe_loop(
                                spec,
                                ProbeKind::Liveness,
                                Some(live_tx),
                            ))
                            .await;
                        });
                    }
                }
            };
            match self.env.setup.startup.clone() {
                Some(spec) => {
                    let (pod, stop, tx) = (self.clone(), probes.clone(), live_tx.clone());
                    tokio::spawn(async move {
                        let started = stop
                            .run_until_cancelled(pod.probe_loop(spec, ProbeKind::Startup, Some(tx)))
                            .await;
                        if started == Some(true) {
                            others();
                        }
                    });
                }
                None => others(),
            }
            drop(live_tx);
            let ended = tokio::select! {
                _ = container.wait() => Ended::Exited,
                Some(kind) = live_rx.recv() => Ended::Probe(kind),
                how = &mut del_rx => Ended::Deleted(how.unwrap_or_default()),
            };
            match ended {
                Ended::Exited => {
                    probes.cancel();
                    self.set_ready(false);
                    // restartPolicy: Always, after a back-off.
                    tokio::select! {
                        _ = self.clock().sleep(Duration::from_secs(10)) => continue,
                        how = &mut del_rx => {
                            let _ = how;
                            self.rec(EventKind::Deleted);
                            self.env.endpoints.remove(&self.name);
                            break;
                        }
                    }
                }
                Ended::Probe(kind) => {
                    self.rec(if kind == ProbeKind::Startup {
                        EventKind::StartupKill
                    } else {
                        EventKind::LivenessKill
                    });
                    self.terminate(&container, Delete::default()).await;
                    probes.cancel();
                    self.set_ready(false);
                }
                Ended::Deleted(how) => {
                    self.rec(EventKind::Deleted);
                    // Endpoint removal and the kubelet's termination start together.
                    self.env.endpoints.remove(&self.name);
                    self.terminate(&container, how).await;
                    probes.cancel();
                    break;
                }
            }
        }
        let _ = self.ready.send_replace(false);
        self.rec(EventKind::Gone);
    }

    /// The container's argv.
    fn argv(&self) -> Vec<String> {
        let env = &self.env;
        let scale = env.clock.scale().to_string();
        let engine = |port: u16| -> Vec<String> {
            match &env.engine {
                Engine::Sim {
                    tokens_per_second,
                    cold_start,
                    on_sigterm,
                } => vec![
                    env.exe.display().to_string(),
                    "engine-sim".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--time-scale".into(),
                    scale.clone(),
                    "--cold-start".into(),
                    format!("{}", cold_start.as_secs_f64()),
                    "--tokens-per-second".into(),
                    tokens_per_second.to_string(),
                    "--output-tokens".into(),
                    lameduck_engine_sim::MAX_OUTPUT_TOKENS.to_string(),
                    "--on-sigterm".into(),
                    on_sigterm.to_string(),
                    "--seed".into(),
                    (env.seed.wrapping_add(u64::from(self.index))).to_string(),
                ]
                .into_iter()
                .chain(
                    env.setup
                        .engine_health_paths()
                        .into_iter()
                        .flat_map(|p| ["--health-path".to_owned(), p]),
                )
                .collect(),
                Engine::Command(argv) => argv.clone(),
            }
        };
        match &env.setup.server {
            Server::Engine => engine(self.ports.serve),
            Server::Gate { args } => {
                let mut v = vec![
                    env.exe.display().to_string(),
                    "gate".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", self.ports.serve),
                    "--admin".into(),
                    format!("127.0.0.1:{}", self.ports.admin),
                    "--upstream".into(),
                    format!("http://127.0.0.1:{}", self.ports.inner),
                    "--threads".into(),
                    "1".into(),
                    "--time-scale".into(),
                    scale.clone(),
                ];
                let service = format!("http://{}", env.service);
                v.extend(args.iter().map(|a| {
                    if a == crate::setup::SERVICE_URL {
                        service.clone()
                    } else {
                        a.clone()
                    }
                }));
                v.push("--".into());
                v.extend(engine(self.ports.inner));
                v
            }
        }
    }

    /// The engine's port: where `$PORT` points.
    fn engine_port(&self) -> u16 {
        match self.env.setup.server {
            Server::Engine => self.ports.serve,
            Server::Gate { .. } => self.ports.inner,
        }
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.dir)
            .envs(self.env.setup.env.iter().map(|(k, v)| (k, v)))
            .env("PORT", self.engine_port().to_string())
            .env("LAMEDUCK_REHEARSE_PORT", self.engine_port().to_string())
            .env("LAMEDUCK_REHEARSE_POD", &self.name)
            .env("TMPDIR", &self.tmp)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    fn start(&self) -> std::io::Result<Container> {
        let argv = self.argv();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("container.log"))?;
        let mut cmd = self.command(&argv);
        if matches!(self.env.engine, Engine::Command(_)) {
            cmd.env("LAMEDUCK_TIME_SCALE", self.env.clock.scale().to_string());
        }
        cmd.stdout(log.try_clone()?).stderr(log);
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start `{}`: {e}", argv[0]))
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        self.env.reaper.add(pid);
        self.rec(EventKind::Started {
            pid: u32::try_from(pid).unwrap_or(0),
        });
        let (tx, rx) = watch::channel(false);
        let rec = self.env.rec.clone();
        let name = self.name.clone();
        let reaper = self.env.reaper.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => describe_status(s),
                Err(e) => format!("unknown ({e})"),
            };
            rec.record(&name, EventKind::Exited { status });
            // The container is gone with its main process: nothing of it survives.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            reaper.remove(pid);
            let _ = tx.send(true);
        });
        Ok(Container { pid, exited: rx })
    }

    /// The kubelet's termination of one container (deletion or a liveness kill).
    async fn terminate(&self, c: &Container, how: Delete) {
        let clock = self.clock();
        let deleted = clock.now();
        let model = Termination {
            grace: self.env.setup.grace,
            pre_stop: PreStop::None,
        };
        let grace_end = clock.instant(deleted + model.sigkill_at().as_secs_f64());
        // A reclaimed node takes everything with it, whatever the grace period says.
        let node_end = how
            .node_deadline
            .map(|n| clock.instant(deleted + n.as_secs_f64()));
        let hook_end = node_end.map_or(grace_end, |n| n.min(grace_end));
        let node_gone = async {
            match node_end {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(node_gone);
        const NODE: &str = "the node was reclaimed (spot notice ran out)";
        // The kubelet skips the hook when there is no grace period at all.
        if let Some(hook) = self
            .env
            .setup
            .pre_stop
            .as_ref()
            .filter(|_| !model.grace.is_zero())
        {
            self.rec(EventKind::PreStopStart);
            let started = clock.now();
            match tokio::time::timeout_at(hook_end, self.run_hook(hook)).await {
                Ok((ok, detail, body)) => {
                    self.rec(EventKind::PreStopEnd { ok, detail });
                    self.record_gate_phases(started, body.as_deref());
                }
                Err(_) => self.rec(EventKind::PreStopEnd {
                    ok: false,
                    detail: "still running when the grace period ran out; the kubelet stopped waiting for it".into(),
                }),
            }
        }
        if c.has_exited() {
            return;
        }
        if node_end.is_some_and(|n| tokio::time::Instant::now() >= n) {
            self.sigkill(c, NODE);
            c.wait().await;
            return;
        }
        // SIGTERM, then SIGKILL at the end of the grace period — but never less than the
        // kubelet's minimum stop window after SIGTERM, even when the hook used it all up: the
        // timeline's rule, with the time the hook really took.
        let spent = Duration::from_secs_f64((clock.now() - deleted).max(0.0));
        let after_hook = Termination {
            grace: model.grace,
            pre_stop: PreStop::Sleep(spent),
        };
        let kill_at = clock.instant(deleted + after_hook.sigkill_at().as_secs_f64());
        self.rec(EventKind::Sigterm);
        let _ = kill(Pid::from_raw(c.pid), Signal::SIGTERM);
        tokio::select! {
            _ = c.wait() => {}
            _ = tokio::time::sleep_until(kill_at) => {
                self.sigkill(c, "the grace period ran out");
                c.wait().await;
            }
            _ = &mut node_gone => {
                self.sigkill(c, NODE);
                c.wait().await;
            }
        }
    }

    /// A hook's action; an httpGet hook also returns the answer's body.
    async fn run_hook(&self, h: &Handler) -> (bool, String, Option<String>) {
        if let Handler::HttpGet { port, path } = h {
            return match http_get(self.ports.of(*port), path, true).await {
                Ok((status, body)) => (
                    (200..400).contains(&status),
                    format!("HTTP {status}"),
                    Some(body),
                ),
                Err(e) => (false, e, None),
            };
        }
        let (ok, detail) = self.run_handler(h).await;
        (ok, detail, None)
    }

    /// The gate's `/drain` answers its drain report: its phases, in seconds after the drain
    /// started (real time, so scaled back here).
    fn record_gate_phases(&self, started: f64, body: Option<&str>) {
        let Some(report) =
            body.and_then(|b| serde_json::from_str::<lameduck_gate_api::GateReport>(b).ok())
        else {
            return;
        };
        for mark in &report.report.phases {
            self.env.rec.record_at(
                &self.name,
                started + mark.at.as_secs_f64() * self.clock().scale(),
                EventKind::DrainPhase {
                    phase: mark.phase.as_str().to_owned(),
                },
            );
        }
    }

    fn sigkill(&self, c: &Container, reason: &str) {
        if c.has_exited() {
            return;
        }
        self.rec(EventKind::Sigkill {
            reason: reason.to_owned(),
        });
        kill_tree(c.pid);
    }

    /// Probes until cancelled. A startup probe returns `true` at its first success (the other
    /// probes then start) and `false` after `failureThreshold` failures in a row, when it asks
    /// for a restart through `live`, as a failed liveness probe does.
    async fn probe_loop(
        self: Arc<Self>,
        spec: ProbeSpec,
        kind: ProbeKind,
        live: Option<mpsc::Sender<ProbeKind>>,
    ) -> bool {
        let clock = self.clock();
        let t = spec.timing;
        clock.sleep(t.initial_delay).await;
        let mut ticker =
            tokio::time::interval(clock.real(t.period.max(Duration::from_millis(100))));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut healthy = kind == ProbeKind::Liveness;
        loop {
            ticker.tick().await;
            // A probe's timeout is scaled like everything else, but never below 500 ms of
            // real time: forking `sh` and `curl` on a busy machine takes that long, and a
            // spurious failure would flap readiness.
            let limit = clock.real(t.timeout).max(Duration::from_millis(500));
            let ok = match tokio::time::timeout(limit, self.run_handler(&spec.handler)).await {
                Ok((ok, _)) => ok,
                Err(_) => false,
            };
            self.rec(EventKind::Probe { probe: kind, ok });
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            match kind {
                ProbeKind::Readiness => {
                    if !healthy && successes >= t.success_threshold.max(1) {
                        healthy = true;
                        self.set_ready(true);
                    } else if healthy && failures >= t.failure_threshold.max(1) {
                        healthy = false;
                        self.set_ready(false);
                    }
                }
                ProbeKind::Liveness | ProbeKind::Startup => {
                    if kind == ProbeKind::Startup && ok {
                        return true;
                    }
                    if failures >= t.failure_threshold.max(1) {
                        if let Some(tx) = &live {
                            let _ = tx.try_send(kind);
                        }
                        return false;
                    }
                }
            }
        }
    }

    /// Runs a hook or probe action; `(success, what happened)`.
    async fn run_handler(&self, h: &Handler) -> (bool, String) {
        match h {
            Handler::Sleep { seconds } => {
                self.clock()
                    .sleep(Duration::from_secs_f64(seconds.max(0.0)))
                    .await;
                (true, format!("slept {seconds} s"))
            }
            Handler::Grpc { port, service } => {
                match grpc_health(self.ports.of(*port), service).await {
                    Ok(status) if status == GRPC_SERVING => (true, "SERVING".into()),
                    Ok(status) => (false, format!("health status {status}, not SERVING")),
                    Err(e) => (false, e),
                }
            }
            Handler::TcpSocket { port } => {
                match tokio::net::TcpStream::connect(("127.0.0.1", self.ports.of(*port))).await {
                    Ok(_) => (true, "connected".into()),
                    Err(e) => (false, e.to_string()),
                }
            }
            Handler::HttpGet { port, path } => match http_get(self.ports.of(*port), path, false)
                .await
            {
                Ok((status, _)) if (200..400).contains(&status) => (true, format!("HTTP {status}")),
                Ok((status, _)) => (false, format!("HTTP {status}")),
                Err(e) => (false, e),
            },
            Handler::Exec { command } => self.exec(command).await,
        }
    }

    async fn exec(&self, command: &[String]) -> (bool, String) {
        if command.is_empty() {
            return (false, "empty exec command".into());
        }
        let ports = [
            (self.env.setup_ports().0, self.ports.serve),
            (self.env.setup_ports().1, self.ports.admin),
        ];
        let argv = rewrite_exec(command, &self.tmp, &ports, self.clock().scale());
        let mut cmd = self.command(&argv);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return (false, format!("cannot run `{}`: {e}", argv[0])),
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        // If the caller's timeout drops this future, the group is killed here.
        let _guard = GroupGuard(pid);
        match child.wait_with_output().await {
            Ok(out) if out.status.success() => (true, "exit 0".into()),
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let line = err.lines().next().unwrap_or("").trim();
                (
                    false,
                    if line.is_empty() {
                        describe_status(out.status)
                    } else {
                        format!("{}: {line}", describe_status(out.status))
                    },
                )
            }
            Err(e) => (false, e.to_string()),
        }
    }
}

impl PodEnv {
    /// The container ports the setup's commands were written against.
    fn setup_ports(&self) -> (u16, u16) {
        (self.setup.serve_port, self.setup.admin_port)
    }
}

/// SIGKILLs a hook's process group when the hook is abandoned.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!(
            "signal {sig} ({})",
            Signal::try_from(sig).map_or("?", Signal::as_str)
        ),
        _ => "unknown".into(),
    }
}

/// A plain HTTP/1.1 GET on loopback: the status code, and with `read_body` the first 64 KiB
/// of the body.
pub(crate) async fn http_get(
    port: u16,
    path: &str,
    read_body: bool,
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
        .header(http::header::USER_AGENT, "kube-probe/lameduck-rehearse")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if !read_body {
        return Ok((status, String::new()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `SERVING` in `grpc.health.v1.HealthCheckResponse.ServingStatus`.
const GRPC_SERVING: u64 = 1;

/// The standard gRPC health check, as the kubelet makes it: `grpc.health.v1.Health/Check`
/// over HTTP/2 without TLS. Returns the serving status. The two messages are one optional
/// string field and one enum field, so they are encoded here by hand rather than with a
/// protobuf code generator for the whole rehearsal.
pub async fn grpc_health(port: u16, service: &str) -> Result<u64, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("no HTTP/2: {e}"))?;
    tokio::spawn(conn);
    // HealthCheckRequest { string service = 1; }, in one length-prefixed gRPC message.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = http::Request::post(format!(
        "http://127.0.0.1:{port}/grpc.health.v1.Health/Check"
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(http::header::USER_AGENT, "kube-probe/lameduck-rehearse")
    .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
    .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    // A trailers-only answer carries grpc-status in the headers.
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let early = status_of(resp.headers());
    let collected = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().and_then(status_of);
    match trailers.or(early).as_deref() {
        Some("0") => {}
        Some(code) => return Err(format!("grpc-status {code}")),
        None => return Err("no grpc-status".into()),
    }
    let body = collected.to_bytes();
    // HealthCheckResponse { ServingStatus status = 1; } after the 5-byte message prefix.
    let mut rest = body.get(5..).unwrap_or_default();
    let mut status = 0; // UNKNOWN when the field is absent
    while let Some((&tag, after)) = rest.split_first() {
        let (value, after) = get_varint(after).ok_or("a malformed health response")?;
        match tag {
            0x08 => status = value,
            _ => {
                return Err(format!(
                    "an unexpected field (tag {tag:#x}) in the health response"
                ));
            }
        }
        rest = after;
    }
    Ok(status)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &bytes[i + 1..]));
        }
    }
    None
}

/// Where a pod's files are (for error messages).
pub fn pod_log(dir: &Path, pod: &str) -> PathBuf {
    dir.join(pod).join("container.log")
}
