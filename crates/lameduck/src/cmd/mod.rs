//! One module per subcommand.

pub mod agent;
pub mod copy_binary;
pub mod drain;
pub mod engine_sim;
pub mod gate;
pub mod inject;
pub mod lint;
pub mod plan;
pub mod rainbow;
pub mod rehearse;

/// A duration flag: seconds (`30`, `1.5`) or with a unit (`250ms`, `2m`).
fn dur(s: &str) -> Result<std::time::Duration, String> {
    lameduck_timeline::parse_duration(s).map_err(|e| e.to_string())
}

/// A multi-threaded tokio runtime for a subcommand, one worker per available CPU.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    runtime_with(threads)
}

/// A tokio runtime with `threads` workers; with one, the cheaper single-threaded scheduler.
fn runtime_with(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
