//! `lameduck drain`.

/// Drains the nodes; returns the exit status (3: blocked, nothing changed).
pub fn run(args: lameduck_drain::DrainArgs) -> anyhow::Result<i32> {
    Ok(super::runtime_with(2)?.block_on(lameduck_drain::run(args))?)
}
