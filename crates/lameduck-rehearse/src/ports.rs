//! Loopback ports for the rehearsed servers.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// A free loopback port below the kernel's ephemeral range.
///
/// A port the kernel picked for a `:0` bind and then released could be handed out again as
/// the source port of one of the many client connections a rehearsal opens; ports below the
/// ephemeral range are never used that way. The pick is random and checked by binding it.
pub fn free_port() -> std::io::Result<u16> {
    let low = ephemeral_low().clamp(2048, 65535);
    let floor = (low / 2).max(1024);
    // Ports are picked before the pods bind them: never hand one out twice.
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if given.len() > usize::from(low - floor) / 2 {
        given.clear();
    }
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(floor..low);
        if !given.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    // Crowded: let the kernel choose.
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_free_and_low() {
        let p = super::free_port().expect("a port");
        assert!(p >= 1024);
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
