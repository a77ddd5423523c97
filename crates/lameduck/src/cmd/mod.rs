//! One module per subcommand.

pub mod engine_sim;
pub mod gate;

/// A multi-threaded tokio runtime for a subcommand.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
