//! `lameduck gate`.

/// Runs the gate; returns the process exit status.
pub fn run(args: lameduck_gate::GateArgs) -> anyhow::Result<i32> {
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, |n| n.get());
    Ok(super::runtime_with(threads)?.block_on(lameduck_gate::run(args))?)
}
