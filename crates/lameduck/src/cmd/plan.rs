//! `lameduck plan`.

use std::path::PathBuf;
use std::time::Duration;

use super::dur;
use anyhow::Context;
use lameduck_manifest::facts::Spot;
use lameduck_plan::run::{self, LatencySource, Request};
use lameduck_plan::{OnSigterm, Overrides, Rate, Scenario};

/// What the results look like on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table.
    Human,
    /// One JSON object.
    Json,
}

/// A spot provider.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpotArg {
    /// AWS (120 s notice).
    Aws,
    /// GCP (30 s notice; pods get 15 s).
    Gcp,
    /// Azure (30 s notice).
    Azure,
}

/// `lameduck plan`: size the drain budget and simulate the fleet.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reads one workload (-f) and request durations (--latency), prints the recommended \
terminationGracePeriodSeconds, convergence window, probes, rollout limits, PodDisruptionBudget \
and (on spot) the cap on request length, each with its arithmetic, then simulates the fleet \
through each scenario in virtual time and tables what every request became.

--latency takes durations one per line (seconds, or with a unit), CSV with a header naming \
the column, or a Prometheus exposition with the histogram's _bucket lines (for example \
`curl -s engine:8000/metrics > m.txt`; vLLM's vllm:e2e_request_latency_seconds is picked \
by itself).

The same --seed gives the same numbers. Without --rate the fleet runs at 60% of its capacity \
(replicas × --concurrency / mean request).

Examples:
  lameduck plan -f deploy.yaml --latency durations.txt --compare
  lameduck plan -f deploy.yaml --latency metrics.txt --scenario rollout --chart rollout.svg
  lameduck plan --replicas 40 --max-request 120s --rate 50 --scenario rollout --every 1h --duration 24h")]
pub struct PlanArgs {
    /// The manifest holding the workload (YAML or JSON; `-` for stdin). Without it, the
    /// fleet comes from flags (--replicas, --grace-period, --pre-stop, …).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Which workload, when the manifest has several (`name` or `Kind/name`).
    #[arg(long, value_name = "NAME")]
    pub workload: Option<String>,

    /// Request durations: lines, CSV or a Prometheus histogram; `-` for stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "max_request")]
    pub latency: Option<PathBuf>,

    /// The histogram to read from a Prometheus exposition with several.
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,

    /// The CSV column with the durations (name, or 1-based number).
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,

    /// Only the longest request is known (durations are then assumed uniform from a fifth of
    /// it up to it).
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub max_request: Option<Duration>,

    /// The percentile of request duration the grace period must cover.
    #[arg(long, value_name = "PERCENTILE", default_value_t = 99.9, value_parser = percentile)]
    pub percentile: f64,

    /// Scenarios to simulate (repeat or comma-separate). Default: drain, rollout,
    /// scale-down, the spot scenario of the workload's provider, and rainbow for a
    /// RainbowDeployment.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,

    /// Also simulate the recommended spec, side by side.
    #[arg(long)]
    pub compare: bool,

    /// Requests per second (Poisson).
    #[arg(long, value_name = "RPS", conflicts_with = "rate_profile", value_parser = rate)]
    pub rate: Option<f64>,

    /// A daily rate profile: lines of `HH:MM RATE`, each holding until the next.
    #[arg(long, value_name = "FILE")]
    pub rate_profile: Option<PathBuf>,

    /// Seed of the simulation's random numbers.
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    pub seed: u64,

    /// Repeat the disruption this often (e.g. a rollout every `1h`).
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub every: Option<Duration>,

    /// Simulate this long (default: until the disruption is over; 24h with --every).
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub duration: Option<Duration>,

    /// Replicas (default: the manifest's).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,

    /// Time from container start until the engine serves (default: 60 s for an inference
    /// server, else 5 s).
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub cold_start: Option<Duration>,

    /// Requests one replica runs at once; more wait in its queue.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,

    /// The workload's pods per node (how many one node drain takes).
    #[arg(long, value_name = "N")]
    pub pods_per_node: Option<u32>,

    /// Time for load balancers to act on an endpoint change (the gate's drain report measures
    /// it as propagation_lag): one duration, or a range (`1s-3s`, whose longest end counts).
    #[arg(long, value_name = "DURATION", value_parser = lag)]
    pub propagation_lag: Option<Duration>,

    /// What the engine does on SIGTERM: abort (end in-flight requests at once, vLLM's
    /// default), drain (finish them, refuse new ones), exit (die at once) or ignore (serve
    /// until SIGKILL). Default: detected from the manifest; vLLM without --shutdown-timeout
    /// aborts, others are assumed to drain.
    #[arg(long, value_enum, value_name = "MODE", alias = "engine-on-sigterm")]
    pub on_sigterm: Option<lameduck_engine_sim::OnSigterm>,

    /// The pods run on spot capacity of this provider (default: from node selectors,
    /// affinity, tolerations or the lameduck.io/spot annotation).
    #[arg(long, value_enum)]
    pub spot: Option<SpotArg>,

    /// Without -f: terminationGracePeriodSeconds.
    #[arg(long, value_name = "DURATION", value_parser = dur, requires = "replicas")]
    pub grace_period: Option<Duration>,

    /// Without -f: the preStop's length.
    #[arg(long, value_name = "DURATION", value_parser = dur, requires = "replicas")]
    pub pre_stop: Option<Duration>,

    /// The `rainbow` scenario: how long every gate of the old colour must report nothing in
    /// flight before it is retired (default: the RainbowDeployment's, else 30s).
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub quiet_period: Option<Duration>,

    /// The `rainbow` scenario: the longest an old colour is kept, work or not (`0`: no
    /// limit; default: the RainbowDeployment's, else 24h).
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub max_age: Option<Duration>,

    /// Also simulate gated pods whose gates hand streams that cannot finish to a peer
    /// (`--handoff-to`; on by itself when the manifest's gate has it): rows `+ handoff`.
    #[arg(long)]
    pub handoff: bool,

    /// Also simulate clients that reach the pods through `lameduck gate --gateway`, which
    /// continues on a peer every stream a pod ends (its deadline, its SIGKILL, its node's
    /// end): rows `+ gateway`.
    #[arg(long)]
    pub gateway: bool,

    /// Output on stdout: the table, or JSON.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Same as --format json.
    #[arg(long, hide = true)]
    pub json: bool,

    /// Write an SVG chart of every simulation here.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
}

fn percentile(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=100.0).contains(&p) && p > 0.0 {
        Ok(p)
    } else {
        Err("a percentile is above 0 and at most 100 (e.g. 99.9)".into())
    }
}

/// A propagation lag: one duration, or a range whose longest end is the one to cover.
fn lag(s: &str) -> Result<Duration, String> {
    s.parse::<lameduck_rehearse::balancer::Lag>().map(|l| l.max)
}

fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if r.is_finite() && r >= 0.0 {
        Ok(r)
    } else {
        Err("a rate is a number of requests per second, 0 or more".into())
    }
}

/// Runs `lameduck plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<i32> {
    if args.file.is_none() && args.replicas.is_none() {
        anyhow::bail!(
            "give the workload: -f deployment.yaml, or --replicas N (with --grace-period, --pre-stop) for a fleet from flags"
        );
    }
    if args.file.is_some() && (args.grace_period.is_some() || args.pre_stop.is_some()) {
        anyhow::bail!(
            "--grace-period and --pre-stop describe a fleet without -f; with -f they come from the manifest"
        );
    }
    let objects = match &args.file {
        Some(f) => {
            let loaded = lameduck_manifest::load_paths(std::slice::from_ref(f));
            if let Some(e) = loaded.errors.first() {
                anyhow::bail!("{e}");
            }
            loaded.objects
        }
        None => Vec::new(),
    };
    let latency = match (&args.latency, args.max_request) {
        (Some(p), _) => {
            let (name, text) = run::read_text(p)?;
            LatencySource::Text { name, text }
        }
        (None, Some(d)) => LatencySource::Max(d),
        (None, None) => LatencySource::FromWorkload,
    };
    let rate = match (&args.rate, &args.rate_profile) {
        (Some(r), _) => Some(Rate::Constant(*r)),
        (None, Some(p)) => {
            let (name, text) = run::read_text(p)?;
            Some(run::parse_rate_profile(&name, &text)?)
        }
        (None, None) => None,
    };
    let req = Request {
        objects,
        workload: args.workload,
        latency,
        metric: args.metric,
        column: args.column,
        percentile: args.percentile,
        rate,
        scenarios: args.scenario,
        compare: args.compare,
        seed: args.seed,
        every: args.every,
        duration: args.duration,
        spot: args.spot.map(|s| match s {
            SpotArg::Aws => Spot::Aws,
            SpotArg::Gcp => Spot::Gcp,
            SpotArg::Azure => Spot::Azure,
        }),
        overrides: Overrides {
            replicas: args.replicas,
            cold_start: args.cold_start,
            concurrency: args.concurrency,
            pods_per_node: args.pods_per_node,
            propagation_lag: args.propagation_lag,
            on_sigterm: args.on_sigterm.map(|s| match s {
                // A process that exits at once cuts its requests as an abort does.
                lameduck_engine_sim::OnSigterm::Abort | lameduck_engine_sim::OnSigterm::Exit => {
                    OnSigterm::Abort
                }
                lameduck_engine_sim::OnSigterm::Drain => OnSigterm::Drain { limit: None },
                lameduck_engine_sim::OnSigterm::Ignore => OnSigterm::Ignore,
            }),
            grace: args.grace_period,
            pre_stop: args.pre_stop,
        },
        quiet_period: args.quiet_period,
        max_age: args.max_age,
        handoff: args.handoff,
        gateway: args.gateway,
    };
    let out = run::execute(&req)?;
    if let Some(path) = &args.chart {
        let runs: Vec<(&str, &lameduck_plan::SimReport)> = out
            .runs
            .iter()
            .map(|r| (r.spec.as_str(), &r.report))
            .collect();
        std::fs::write(path, lameduck_plan::chart::render(&runs))
            .with_context(|| format!("cannot write the chart to {}", path.display()))?;
    }
    if args.json || args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", run::render_text(&out));
        if let Some(path) = &args.chart {
            println!("\nchart: {}", path.display());
        }
    }
    Ok(0)
}
