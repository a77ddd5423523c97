//! `lameduck rehearse`: a pod drain under streaming load, on one machine, with real
//! processes — and the proof, in numbers and a picture, of what each setup loses.
//!
//! - [`setup`]: what a pod looks like (grace, preStop, probes, server); the built-in naive,
//!   shell and lameduck setups, or a user's manifest.
//! - [`kubelet`]: the kubelet emulator — real processes, real hooks and probes, the real
//!   termination order.
//! - [`balancer`]: a real HTTP proxy whose view of the endpoints lags the kubelet's.
//! - [`load`]: open-loop streamed chat completions, each classified.
//! - [`run`]: one setup's run and its scenario; [`report`] and [`html`] show the results.

pub mod agent;
pub mod balancer;
pub mod clock;
pub mod gateway;
pub mod html;
pub mod kubelet;
pub mod load;
pub mod noise;
mod ports;
pub mod rainbow;
pub mod report;
pub mod run;
pub mod setup;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lameduck_engine_sim::OutputTokens;
use lameduck_timeline::parse_duration;

pub use run::{Plan, Scenario, SetupResult, Status};

/// What the results look like on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table.
    Human,
    /// One JSON object.
    Json,
}

/// Why a rehearsal could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or the manifest is unusable.
    #[error("{0}")]
    Input(String),
    /// The machine refused something (a directory, a port, a process).
    #[error("{0}")]
    Io(String),
    /// The rehearsal itself failed.
    #[error("{0}")]
    Run(String),
}

fn dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// `lameduck rehearse`: rehearse a pod drain locally and compare setups.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Each setup runs in turn: its replicas start as real processes on loopback ports (engine-sim, \
alone or behind the gate), a kubelet emulator runs their probes and hooks, a load balancer \
routes streamed chat completions to ready pods and learns of endpoint changes after the \
propagation lag, and the scenario deletes pods mid-load. Every request is classified: ok, \
refused, reset or truncated.

All durations and figures are unscaled (cluster) seconds; --time-scale only makes the run \
faster. Exit status: 0 when the last setup (lameduck, or the one from -f) lost nothing, 1 when \
it lost requests, 2 on unusable input.

With -- CMD, your own server runs instead of engine-sim: it must listen on 127.0.0.1:$PORT \
and speak the OpenAI chat-completions API with `stream: true`.")]
pub struct RehearseArgs {
    /// The setup to rehearse, from a manifest (Deployment, StatefulSet, ReplicaSet or Pod;
    /// `-` for stdin). It is compared against the naive setup.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Setups to compare, in order: naive, shell, lameduck; also lameduck+pod-handoff (the
    /// pods' gates hand off with --handoff-to) and lameduck+handoff (the same behind a `lameduck
    /// gate --gateway`, which carries streams past their pod's end). Default: naive, shell and
    /// lameduck, or naive and the manifest's with -f.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub setups: Vec<String>,

    /// What happens mid-load.
    #[arg(long, value_enum, default_value_t = Scenario::Drain)]
    pub scenario: Scenario,

    /// Replicas (default 3; with -f, the manifest's, at most 10).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    pub replicas: Option<u32>,

    /// Mean request arrivals per second (Poisson, open loop).
    #[arg(long, default_value = "0.5", value_name = "RPS")]
    pub rate: f64,

    /// Output length of each request in tokens: N, uniform:MIN-MAX, normal:MEAN,STDDEV or
    /// lognormal:MEDIAN,SIGMA.
    #[arg(
        long = "output-tokens",
        alias = "lengths",
        default_value = "uniform:100-1200",
        value_name = "DIST"
    )]
    pub output_tokens: OutputTokens,

    /// engine-sim's decode speed per request (tokens per second).
    #[arg(long, default_value = "10", value_name = "RATE")]
    pub tokens_per_second: f64,

    /// engine-sim's cold start: /health answers 503 until it has passed.
    #[arg(long, default_value = "20s", value_parser = dur, value_name = "DURATION")]
    pub cold_start: Duration,

    /// What engine-sim does on SIGTERM: abort (vLLM's default: streams end at once), drain
    /// (finish in-flight work first), exit (die at once) or ignore (serve until SIGKILL).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = lameduck_engine_sim::OnSigterm::Abort)]
    pub on_sigterm: lameduck_engine_sim::OnSigterm,

    /// Requests arrive during this long after the load starts.
    #[arg(long, default_value = "100s", value_parser = dur, value_name = "DURATION")]
    pub load_for: Duration,

    /// The scenario starts this long after the load.
    #[arg(long, default_value = "40s", value_parser = dur, value_name = "DURATION")]
    pub at: Duration,

    /// Time for load balancers to act on an endpoint change: one duration, or a range
    /// (`1s-3s`, each change drawn uniformly from it).
    #[arg(
        long = "propagation-lag",
        alias = "lag",
        default_value = "1s-3s",
        value_name = "DURATION"
    )]
    pub propagation_lag: balancer::Lag,

    /// Spot scenario: time from the preemption notice until the node disappears.
    #[arg(long, default_value = "30s", value_parser = dur, value_name = "DURATION")]
    pub notice: Duration,

    /// Drain scenario: `evict` deletes the pod and lets its replacement cold-start afterwards
    /// (kubectl drain); `surge` starts the replacement first and deletes the pod once it is
    /// Ready (lameduck drain).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = run::DrainMode::Evict)]
    pub drain: run::DrainMode,

    /// Rainbow scenario: how long every gate of the old colour must report nothing in flight
    /// before it is retired.
    #[arg(long, default_value = "30s", value_parser = dur, value_name = "DURATION")]
    pub quiet_period: Duration,

    /// Rainbow scenario: the longest the old colour is kept after the Service left it, work or
    /// not. Shorter than the controller's 24h default so that setups without a gate, whose
    /// work cannot be read, end.
    #[arg(long, default_value = "5m", value_parser = dur, value_name = "DURATION")]
    pub max_age: Duration,

    /// Spot scenario: leave `lameduck agent` off the reclaimed node. By default setups with
    /// the gate run it (with a fake AWS metadata service and an in-process API server), so
    /// the gate learns the notice as its deadline.
    #[arg(long)]
    pub no_agent: bool,

    /// A stream silent this long is counted as truncated (stalled).
    #[arg(
        long = "stall-timeout",
        alias = "idle-timeout",
        default_value = "30s",
        value_parser = dur,
        value_name = "DURATION"
    )]
    pub stall_timeout: Duration,

    /// Speed-up: every duration is divided by it. Default 10 (1 with -- CMD, whose own
    /// timing cannot be scaled).
    #[arg(long, value_name = "FACTOR")]
    pub time_scale: Option<f64>,

    /// Seed for arrivals, lengths and lags: every setup gets the same requests.
    #[arg(long, default_value = "1", value_name = "SEED")]
    pub seed: u64,

    /// The `model` field of the requests.
    #[arg(long, default_value = "lameduck-sim", value_name = "NAME")]
    pub model: String,

    /// Write a self-contained HTML report with a timeline per setup.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Output on stdout: the table, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Same as --format json.
    #[arg(long, hide = true)]
    pub json: bool,

    /// Keep the run directory (each pod's log and files) instead of removing it.
    #[arg(long)]
    pub keep: bool,

    /// Your own server, instead of engine-sim (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A checked rehearsal: the plan and the setups, in order (the last one is judged).
#[derive(Debug)]
pub struct Rehearsal {
    /// The shared plan.
    pub plan: Plan,
    /// The setups.
    pub setups: Vec<setup::Setup>,
    /// The arrivals every setup gets.
    pub arrivals: Vec<(f64, u32)>,
}

impl RehearseArgs {
    /// Checks the flags and reads the manifest. `exe` is the `lameduck` executable that runs
    /// the gate and engine-sim.
    pub fn resolve(self, exe: PathBuf) -> Result<Rehearsal, Error> {
        let scale = self
            .time_scale
            .unwrap_or(if self.command.is_empty() { 10.0 } else { 1.0 });
        if !(scale.is_finite() && scale > 0.0 && scale <= 1000.0) {
            return Err(Error::Input(format!(
                "--time-scale {scale}: must be greater than 0 and at most 1000"
            )));
        }
        if !(self.tokens_per_second.is_finite() && self.tokens_per_second > 0.0) {
            return Err(Error::Input(format!(
                "--tokens-per-second {}: must be greater than 0",
                self.tokens_per_second
            )));
        }
        if self.at >= self.load_for {
            return Err(Error::Input(format!(
                "--at {} is not before the end of --load-for {}: the scenario would start after the last request",
                lameduck_timeline::fmt_secs(self.at),
                lameduck_timeline::fmt_secs(self.load_for)
            )));
        }
        let mut setups = Vec::new();
        let names: Vec<String> = if self.setups.is_empty() {
            if self.file.is_some() {
                vec!["naive".into()]
            } else {
                setup::BUILT_IN.iter().map(|s| (*s).to_owned()).collect()
            }
        } else {
            self.setups.clone()
        };
        for name in &names {
            let s = setup::built_in(name.trim()).ok_or_else(|| {
                Error::Input(format!(
                    "--setups: unknown setup {name:?}; the built-in setups are {}, {} (use -f for your own)",
                    setup::BUILT_IN.join(", "),
                    setup::BUILT_IN_EXTRA.join(", ")
                ))
            })?;
            setups.push(s);
        }
        if let Some(file) = &self.file {
            let mut s = setup::from_manifest(file)?;
            if setups.iter().any(|b| b.name == s.name) {
                s.name = format!("{}-manifest", s.name);
            }
            if let Some(r) = s.replicas
                && r > 10
                && self.replicas.is_none()
            {
                s.notes.push(format!(
                    "the manifest asks for {r} replicas; 10 are rehearsed (set --replicas)"
                ));
                s.replicas = Some(10);
            }
            setups.push(s);
        }
        if setups.is_empty() {
            return Err(Error::Input("--setups: name at least one setup".into()));
        }
        let engine = if self.command.is_empty() {
            kubelet::Engine::Sim {
                tokens_per_second: self.tokens_per_second,
                cold_start: self.cold_start,
                on_sigterm: self.on_sigterm,
            }
        } else {
            kubelet::Engine::Command(self.command.clone())
        };
        // A setup the rehearsal would run differently from a cluster stops the run: a verdict
        // on it would mislead.
        for s in &setups {
            if let Some(why) = s.unrehearsable(self.command.is_empty()) {
                return Err(Error::Input(format!(
                    "setup {} cannot be rehearsed faithfully: {why}",
                    s.name
                )));
            }
        }
        let load = load::LoadSpec {
            rate: self.rate,
            window: self.load_for,
            lengths: self.output_tokens,
            model: self.model.clone(),
            idle_timeout: self.stall_timeout,
            seed: self.seed,
        };
        let arrivals = load::arrivals(&load).map_err(Error::Input)?;
        let replicas = self
            .replicas
            .or_else(|| setups.last().and_then(|s| s.replicas))
            .unwrap_or(3);
        if self.scenario == Scenario::Rollout {
            for s in &setups {
                let r = if self.replicas.is_some() {
                    replicas
                } else {
                    s.replicas.unwrap_or(replicas)
                };
                s.strategy
                    .clone()
                    .unwrap_or_default()
                    .resolve(r)
                    .map_err(|e| Error::Input(format!("setup {}: {e}", s.name)))?;
            }
        }
        if self.scenario == Scenario::Rainbow && self.max_age.is_zero() {
            return Err(Error::Input(
                "--max-age 0: a rehearsal must end; give the old colour a bound (the controller's own default is 24h)".into(),
            ));
        }
        if self.scenario == Scenario::Rainbow && self.quiet_period.is_zero() {
            return Err(Error::Input(
                "--quiet-period 0: give the gates a period of reporting nothing in flight (the controller's default is 30s)".into(),
            ));
        }
        raise_fd_limit();
        let dir = std::env::temp_dir().join(format!("lameduck-rehearse-{}", std::process::id()));
        Ok(Rehearsal {
            plan: Plan {
                scenario: self.scenario,
                // Built-in setups compared with a manifest's get its replica count.
                replicas,
                replicas_forced: self.replicas.is_some(),
                engine,
                load: Arc::new(load),
                lag: self.propagation_lag,
                at: self.at,
                notice: self.notice,
                agent: !self.no_agent,
                drain: self.drain,
                rainbow: lameduck_rainbow::crd::Settings {
                    replicas: i32::try_from(replicas).unwrap_or(i32::MAX),
                    ready_fraction: 1.0,
                    quiet: self.quiet_period,
                    max_age: Some(self.max_age),
                    autoscaled: false,
                },
                time_scale: scale,
                seed: self.seed,
                exe,
                dir,
            },
            setups,
            arrivals,
        })
    }
}

/// Every stream in flight holds three descriptors (client, balancer, pod); a busy rehearsal
/// passes the usual soft limit of 1,024. Raised to the hard limit, as far as it goes.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard);
    }
}

/// Starts one of the rehearsal's own helper processes (`lameduck agent`, the gateway): `args`
/// after `exe`, info logs without colour into `log`, killed when its handle is dropped.
pub(crate) fn spawn_logged(
    exe: &std::path::Path,
    args: &[String],
    log: &std::path::Path,
) -> Result<tokio::process::Child, Error> {
    let out = std::fs::File::create(log)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", log.display())))?;
    tokio::process::Command::new(exe)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let what = args.first().map_or("", String::as_str);
            Error::Io(format!("cannot start `{} {what}`: {e}", exe.display()))
        })
}
