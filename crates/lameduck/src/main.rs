//! `lameduck`: make Kubernetes pod drains invisible for long-request workloads.
//!
//! This crate only parses arguments and dispatches; each subcommand lives in its own module
//! under `cmd/` and calls into a library crate.

mod cmd;
mod logging;
#[cfg(test)]
mod vocabulary;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc (the default feature): freed memory goes back to the system about a second after a
/// load ends (docs/benchmarks.md).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// With `--no-default-features --features mimalloc`: less CPU per streamed event, about twice
/// the memory (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Make Kubernetes pod drains invisible for long-request workloads (LLM inference, SSE,
/// WebSocket).
#[derive(Debug, Parser)]
#[command(
    name = "lameduck",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, display_order = 1000, value_enum, default_value_t = logging::Format::Text, env = "LAMEDUCK_LOG_FORMAT")]
    log_format: logging::Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The in-pod drain gate: a streaming-aware reverse proxy owning readiness, liveness and
    /// the drain.
    Gate(Box<lameduck_gate::GateArgs>),
    /// An OpenAI-compatible streaming inference simulator with configurable timing and
    /// shutdown behaviour.
    EngineSim(lameduck_engine_sim::Config),
    /// Check manifests for drain mistakes, with file:line:column positions.
    Lint(cmd::lint::LintArgs),
    /// Rewrite a manifest so that its server runs behind the gate, with a sized grace period,
    /// the gate's readiness and a /drain preStop; nothing else changes.
    Inject(cmd::inject::InjectArgs),
    /// Size the drain budget from latency data and simulate drains, rollouts, scale-downs and
    /// spot preemptions across the fleet.
    Plan(Box<cmd::plan::PlanArgs>),
    /// Rehearse a pod drain locally under streaming load, with real processes, and compare
    /// what a naive setup, the shell pattern and lameduck lose.
    Rehearse(Box<lameduck_rehearse::RehearseArgs>),
    /// The node agent (a DaemonSet): a cloud's preemption or maintenance notice becomes a
    /// drain of the node's gated pods, with the notice as their deadline.
    Agent(Box<lameduck_agent::AgentArgs>),
    /// Drain nodes: say what will block before anything changes, then cordon and evict,
    /// showing why a PodDisruptionBudget makes an eviction wait.
    Drain(Box<lameduck_drain::DrainArgs>),
    /// The rainbow controller: one Deployment per release of a pod template, each old one
    /// retired when its own gates report no work in flight.
    Rainbow(lameduck_rainbow::RainbowCommand),
    /// Copy this binary into a directory (the init container of `inject --mode wrapper`).
    CopyBinary(cmd::copy_binary::CopyBinaryArgs),
    /// Print a shell completion script: `source <(lameduck completions bash)`.
    Completions(CompletionsArgs),
}

/// `lameduck completions`.
#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// The name the binary answers to: `kubectl lameduck` when run as the kubectl plugin
/// `kubectl-lameduck` (kubectl finds plugins by that file name on the PATH).
fn invoked_as() -> &'static str {
    let argv0 = std::env::args_os().next();
    let plugin = argv0
        .as_deref()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .is_some_and(|n| n == "kubectl-lameduck");
    if plugin {
        "kubectl lameduck"
    } else {
        "lameduck"
    }
}

/// The command line, named as invoked.
fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().bin_name(invoked_as())
}

fn main() -> ExitCode {
    use clap::FromArgMatches;
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Gate(args) => cmd::gate::run(*args),
        Command::EngineSim(args) => cmd::engine_sim::run(args),
        Command::Lint(args) => cmd::lint::run(args),
        Command::Rehearse(args) => cmd::rehearse::run(*args),
        Command::Inject(args) => cmd::inject::run(args),
        Command::Plan(args) => cmd::plan::run(*args),
        Command::Agent(args) => cmd::agent::run(*args),
        Command::Drain(args) => cmd::drain::run(*args),
        Command::Rainbow(args) => cmd::rainbow::run(args),
        Command::CopyBinary(args) => cmd::copy_binary::run(args),
        Command::Completions(args) => {
            let mut cmd = command();
            let name = cmd.get_bin_name().unwrap_or("lameduck").to_owned();
            // As a kubectl plugin the completion is kubectl's; the script is for `lameduck`.
            let name = if name.contains(' ') {
                "lameduck".to_owned()
            } else {
                name
            };
            // Into a buffer first: the generator panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, name, &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {}", one_statement(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes in one line, each said once: our errors name their cause in their
/// own message, so a cause already in the text is not repeated.
fn one_statement(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn errors_say_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{name}: {source}")]
        struct Outer {
            name: &'static str,
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Outer {
            name: "m.csv",
            source: std::io::Error::other("no duration column: pass --column NAME"),
        })
        .context("reading the latency");
        assert_eq!(
            super::one_statement(&e),
            "reading the latency: m.csv: no duration column: pass --column NAME"
        );
    }
}
