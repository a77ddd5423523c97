//! One module per subcommand.

pub mod engine_sim;
pub mod gate;
pub mod lint;
pub mod rehearse;

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
