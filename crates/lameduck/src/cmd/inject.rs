//! `lameduck inject`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::dur;
use anyhow::Context;
use lameduck_lint::inject::{self, Mode};

/// Where the gate goes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    /// A native sidecar (init container with restartPolicy: Always, Kubernetes 1.29+) in front
    /// of the engine; the engine's image is untouched.
    Sidecar,
    /// The engine's command wrapped by `lameduck gate … --`; the binary comes from an init
    /// container (or --binary).
    Wrapper,
}

/// `lameduck inject`: puts each workload's server behind the gate.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
For each workload that serves (Deployments, StatefulSets, DaemonSets, ReplicaSets, Pods, \
LeaderWorkerSet leaders, Argo Rollouts, KServe ServingRuntimes and InferenceServices with their \
own containers), the serving container is put behind the gate: the gate takes the port clients \
use and the engine moves to the next free port, the way its server takes its port (a flag, an \
environment variable or an address; docs/inject.md has the table). Readiness becomes the gate's \
/ready, the preStop the gate's /drain, and terminationGracePeriodSeconds what the pod needs \
behind the gate: the convergence window + the longest request + 5 s. A single replica whose rolling update \
takes it down first gets maxSurge 1, maxUnavailable 0 (--keep-strategy leaves it); a Knative \
Service's timeoutSeconds is raised to the longest request. Disruption budgets that allow no \
eviction are reported, and loosened with --fix-budgets. Everything else in the file is left as \
it was, comments included; running inject twice changes nothing.

The longest request comes from the `lameduck.io/max-request-seconds` annotation, else \
--max-request, else 150 s when the workload looks like an inference server.

Exit status: 0 written, 2 the input cannot be injected (the message says what to change).")]
pub struct InjectArgs {
    /// The manifest (YAML or JSON, several documents allowed), or `-` for stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Where the gate goes.
    #[arg(long, value_enum, default_value_t = ModeArg::Sidecar)]
    pub mode: ModeArg,

    /// Write the result here instead of stdout.
    #[arg(short, long, value_name = "FILE", conflicts_with = "in_place")]
    pub output: Option<PathBuf>,

    /// Rewrite FILE itself.
    #[arg(short, long)]
    pub in_place: bool,

    /// Image that has `lameduck` on its PATH (the sidecar, or wrapper mode's init container).
    #[arg(long, default_value_t = inject::default_image())]
    pub image: String,

    /// Wrapper mode: the engine image already contains the binary at this path (no init
    /// container, no volume).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<String>,

    /// Wrapper mode, for a container without `command`: the image's entrypoint, as one
    /// shell-style string (`--entrypoint 'python3 -m server'`).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,

    /// The container to put behind the gate, when several serve.
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,

    /// The port clients use [default: the container's declared port].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Where the engine moves [default: the next free port after --port].
    #[arg(long, value_name = "PORT")]
    pub engine_port: Option<u16>,

    /// The gate's admin port (/ready, /live, /drain; never put it in a Service).
    #[arg(long, value_name = "PORT", default_value_t = inject::DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,

    /// The longest request, for workloads without the annotation.
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub max_request: Option<Duration>,

    /// The convergence window: how long load balancers may still send requests after a drain
    /// starts; given to the gate as its --convergence-max. Default: the pod's own preStop
    /// sleep, else 15 s.
    #[arg(long, value_name = "DURATION", value_parser = dur, alias = "convergence")]
    pub convergence_max: Option<Duration>,

    /// Leave a single replica's rollout strategy as written, even when a rollout takes it down
    /// before its replacement is ready.
    #[arg(long)]
    pub keep_strategy: bool,

    /// Loosen PodDisruptionBudgets in the input that allow no eviction (minAvailable equal to
    /// the replicas, 100 %, maxUnavailable 0) so that one pod may go; without it they are only
    /// reported.
    #[arg(long)]
    pub fix_budgets: bool,

    /// Run the gate with `--kube`: adds the `lameduck.io/serving` readiness gate (the
    /// endpoint leaves rotation the moment a drain starts), the pod's name and namespace from
    /// the downward API, and a ServiceAccount (when the pods use the default one), Role and
    /// RoleBinding, appended to the output. See docs/kube.md.
    #[arg(long)]
    pub kube: bool,

    /// With --kube: also keep the pod-deletion-cost annotation in step with in-flight work, so
    /// that scale-downs remove idle replicas first (adds `patch` on pods to the Role).
    #[arg(long, requires = "kube")]
    pub deletion_cost: bool,

    /// Print only the manifest, not the summary of changes on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs inject; returns the exit status.
pub fn run(args: InjectArgs) -> anyhow::Result<i32> {
    let stdin = args.file.as_os_str() == "-";
    if stdin && args.in_place {
        anyhow::bail!("--in-place needs a file, not stdin (`-`)");
    }
    let mut text = String::new();
    if stdin {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
    } else {
        text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("{}: cannot read", args.file.display()))?;
    }
    let entrypoint = args
        .entrypoint
        .as_deref()
        .map(|e| e.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|e| !e.is_empty());
    if args.entrypoint.is_some() && entrypoint.is_none() {
        anyhow::bail!(
            "--entrypoint is empty: give the image's entrypoint, e.g. --entrypoint 'python3 -m server'"
        );
    }
    let opts = inject::Options {
        mode: match args.mode {
            ModeArg::Sidecar => Mode::Sidecar,
            ModeArg::Wrapper => Mode::Wrapper,
        },
        image: args.image,
        binary: args.binary,
        container: args.container,
        port: args.port,
        engine_port: args.engine_port,
        admin_port: args.admin_port,
        max_request: args.max_request,
        convergence: args.convergence_max,
        entrypoint,
        keep_strategy: args.keep_strategy,
        fix_budgets: args.fix_budgets,
        kube: args.kube,
        deletion_cost: args.deletion_cost,
    };
    let out = inject::inject(&args.file, &text, &opts)?;
    let target = if args.in_place {
        Some(args.file.clone())
    } else {
        args.output.clone()
    };
    match &target {
        Some(path) => std::fs::write(path, &out.text)
            .with_context(|| format!("{}: cannot write", path.display()))?,
        None => std::io::stdout()
            .write_all(out.text.as_bytes())
            .context("writing stdout")?,
    }
    if !args.quiet {
        let mut err = std::io::stderr().lock();
        for c in &out.changed {
            writeln!(
                err,
                "{}: container `{}` behind the gate",
                c.object, c.container
            )?;
            for l in &c.lines {
                writeln!(err, "  {l}")?;
            }
        }
        for a in &out.adjusted {
            writeln!(err, "{}: {}", a.object, a.line)?;
        }
        for s in &out.skipped {
            writeln!(err, "unchanged: {s}")?;
        }
        for w in &out.warnings {
            writeln!(err, "warning: {w}")?;
        }
        if out.changed.is_empty() && out.skipped.is_empty() && out.adjusted.is_empty() {
            writeln!(err, "no workload found: nothing changed")?;
        }
    }
    Ok(0)
}
