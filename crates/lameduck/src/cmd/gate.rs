//! `lameduck gate`.

/// Runs the gate; returns the process exit status.
pub fn run(args: lameduck_gate::GateArgs) -> anyhow::Result<i32> {
    // One thread by default: a request or an event costs the gate microseconds, and a
    // single-threaded runtime spends less CPU per event than a multi-threaded one that wakes
    // tasks across threads (docs/benchmarks.md: 1.15× nginx's CPU per event against 1.41×
    // with two threads, unpinned).
    let threads = args.threads.map_or(1, |n| n.get());
    Ok(super::runtime_with(threads)?.block_on(lameduck_gate::run(args))?)
}
