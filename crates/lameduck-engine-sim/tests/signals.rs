//! `run` wires real SIGTERM into the shutdown. Alone in its own test binary because it signals
//! the whole test process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lameduck_engine_sim::{Config, run};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_run_with_status_zero() {
    // A free port for `run`, which binds its own listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut config = Config::try_from_args(["--on-sigterm", "drain"]).unwrap();
    config.listen = addr;
    let task = tokio::spawn(run(config));

    // Once the port answers, the signal handlers are installed (`run` sets them up first).
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the simulator never listened");

    kill(Pid::this(), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("SIGTERM did not stop run")
        .unwrap()
        .unwrap();
    assert_eq!(status, 0);
}
