//! `lameduck agent`.

/// Runs the node agent until it is stopped.
pub fn run(args: lameduck_agent::AgentArgs) -> anyhow::Result<i32> {
    Ok(super::runtime_with(2)?.block_on(lameduck_agent::run(args))?)
}
