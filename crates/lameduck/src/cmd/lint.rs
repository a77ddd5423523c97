//! `lameduck lint`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::dur;
use lameduck_lint::config::Config;
use lameduck_lint::{Options, Severity, report};

/// Output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// file:line:column, the source line, the fix.
    Human,
    /// One JSON object: findings, notes, object count.
    Json,
    /// SARIF 2.1.0, for GitHub code scanning.
    Sarif,
}

/// The lowest severity that makes the exit status 1.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FailOn {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Never (always exit 0 unless the input is unusable).
    Never,
}

/// `lameduck lint`: checks manifests for drain mistakes.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 clean, 1 a finding at or above --fail-on, 2 an input could not be read or \
parsed (the others are still checked).

Per workload, the longest request comes from the `lameduck.io/max-request-seconds` annotation, \
else --max-request, else 150 s when the workload looks like an inference server.")]
pub struct LintArgs {
    /// Files, directories (searched for *.yaml, *.yml, *.json) or `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Exit 1 when a finding of this severity or worse exists [default: error].
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,

    /// The longest request, for workloads without the annotation.
    #[arg(long, value_name = "DURATION", value_parser = dur)]
    pub max_request: Option<Duration>,

    /// The convergence window of pods that state none (no preStop sleep, no gate): how long
    /// load balancers may still send requests after a drain starts [default: 15].
    #[arg(long, value_name = "DURATION", value_parser = dur, alias = "convergence")]
    pub convergence_max: Option<Duration>,

    /// Report workloads with replicas that no PodDisruptionBudget selects.
    #[arg(long)]
    pub require_pdb: bool,

    /// Config file (rules off or re-severitied, defaults for these flags). Default:
    /// `.lameduck.yaml` in the current directory, if there is one. Flags win over the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Runs the linter; returns the exit status.
pub fn run(args: LintArgs) -> anyhow::Result<i32> {
    let config_path = args.config.clone().or_else(|| {
        let default = PathBuf::from(".lameduck.yaml");
        default.exists().then_some(default)
    });
    let config = match &config_path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: {e}");
                return Ok(2);
            }
        },
        None => Config::default(),
    };
    let options = Options {
        max_request: args.max_request.or(config.max_request),
        convergence: args
            .convergence_max
            .or(config.convergence_max)
            .unwrap_or(lameduck_timeline::DEFAULT_CONVERGENCE_WINDOW),
        require_pdb: args.require_pdb || config.require_pdb.unwrap_or(false),
        rules: config.rules.clone(),
    };
    let fail_on = args.fail_on.unwrap_or(match config.fail_on.as_deref() {
        Some("warning") => FailOn::Warning,
        Some("never") => FailOn::Never,
        _ => FailOn::Error,
    });
    // Objects are checked as they are read and then dropped (see `Linter`).
    let result = lameduck_lint::lint_paths(&args.paths, &options);
    // JSON and SARIF are written as they are made: on a large input the report is tens of
    // megabytes.
    let out = std::io::stdout().lock();
    let _ = match args.format {
        Format::Json => report::write_json(&result, out),
        Format::Sarif => lameduck_lint::sarif::write_sarif(&result, out),
        Format::Human => report::write_human(&result, |f| result.sources.get(f).cloned(), out),
    };
    Ok(exit_status(&result, fail_on))
}

/// 2 when an input could not be read, 1 when a finding reaches `fail_on`, else 0.
fn exit_status(result: &lameduck_lint::Report, fail_on: FailOn) -> i32 {
    if !result.input_errors.is_empty() {
        return 2;
    }
    let worst = result.worst();
    let fail = match fail_on {
        FailOn::Error => worst >= Some(Severity::Error),
        FailOn::Warning => worst >= Some(Severity::Warning),
        FailOn::Never => false,
    };
    i32::from(fail)
}
