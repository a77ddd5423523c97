//! `lameduck rainbow`.

/// Runs the rainbow controller, or prints its CRD.
pub fn run(cmd: lameduck_rainbow::RainbowCommand) -> anyhow::Result<i32> {
    Ok(super::runtime_with(2)?.block_on(lameduck_rainbow::run(cmd))?)
}
