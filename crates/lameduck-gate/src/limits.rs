//! Limits derived from the process's file-descriptor limit, so that no client load can take
//! the descriptors the admin port (the kubelet's probes) and the engine need.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::server::ADMIN_MAX_CONNECTIONS;
use crate::state::Limits;

/// Descriptors kept out of the client budget: the admin port's connections, listeners,
/// signals, the runtime, the health checker, the child's pipes.
pub const RESERVED_FDS: u64 = ADMIN_MAX_CONNECTIONS as u64 + 64;

/// Raises the soft file-descriptor limit to the hard one (unprivileged and always allowed)
/// and returns the soft limit then in effect.
pub fn raise_nofile() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        // Unknown: assume the common default.
        Err(_) => 1024,
    }
}

/// The limits for `nofile` descriptors: each client connection may hold one engine
/// connection per request in flight, so the client budget is split evenly between client
/// connections and requests in flight. Flags can only lower what the descriptors allow… or
/// raise it, with a warning, when the operator knows better.
pub fn derive(nofile: u64, max_connections: Option<usize>, max_in_flight: Option<u64>) -> Limits {
    let budget = nofile.saturating_sub(RESERVED_FDS).max(32);
    let half = usize::try_from(budget / 2).unwrap_or(usize::MAX).max(16);
    let fd_in_flight = budget / 2;
    let max_connections = match max_connections {
        Some(m) => {
            if m > half {
                tracing::warn!(
                    max_connections = m,
                    nofile,
                    "--max-connections is more than the file-descriptor limit leaves room for: under load the admin port may not answer; raise the limit (ulimit -n)"
                );
            }
            m
        }
        None => half,
    };
    // The in-flight limit protects descriptors too (every request in flight may hold an
    // engine connection); an explicit --max-in-flight lower than that wins.
    let max_in_flight = Some(max_in_flight.map_or(fd_in_flight, |m| m.min(fd_in_flight)));
    Limits {
        max_connections,
        max_in_flight,
        nofile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_splits_what_is_left_after_the_reserve() {
        let l = derive(1024, None, None);
        assert_eq!(l.max_connections, (1024 - RESERVED_FDS as usize) / 2);
        assert_eq!(l.max_in_flight, Some((1024 - RESERVED_FDS) / 2));
        let l = derive(1024, Some(10), Some(5));
        assert_eq!((l.max_connections, l.max_in_flight), (10, Some(5)));
        // A flag above what the descriptors allow keeps the descriptor bound in flight.
        let l = derive(1024, None, Some(100_000));
        assert_eq!(l.max_in_flight, Some((1024 - RESERVED_FDS) / 2));
        // A tiny limit still leaves something.
        assert!(derive(10, None, None).max_connections >= 16);
    }
}
