//! `lameduck gate`.

/// Runs the gate; returns the process exit status.
pub fn run(args: lameduck_gate::GateArgs) -> anyhow::Result<i32> {
    Ok(super::runtime()?.block_on(lameduck_gate::run(args))?)
}
