//! `lameduck engine-sim`.

/// Runs the simulator; returns the process exit status.
pub fn run(config: lameduck_engine_sim::Config) -> anyhow::Result<i32> {
    Ok(super::runtime()?.block_on(lameduck_engine_sim::run(config))?)
}
