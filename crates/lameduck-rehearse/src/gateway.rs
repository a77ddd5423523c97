//! A `lameduck gate --gateway` in front of the rehearsal's Service, for setups that run one
//! (`lameduck+handoff`): the load's connections end on it instead of on the pods, so a stream
//! whose pod is deleted or reclaimed continues on another pod. It stands for a gateway
//! Deployment on nodes other than the one that goes, so the scenario never touches it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Child;

use crate::Error;
use crate::clock::Clock;
use crate::kubelet::http_get;
use crate::ports::free_port;

/// The running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where the load sends its requests.
    pub addr: SocketAddr,
    admin_port: u16,
    child: Child,
    /// Its log.
    pub log: PathBuf,
}

impl Gateway {
    /// Starts the gateway in front of `service` with the rehearsal's time scale, and returns
    /// once it is ready (the pods behind the Service must be ready already).
    pub async fn start(
        exe: &Path,
        dir: &Path,
        clock: Clock,
        service: SocketAddr,
    ) -> Result<Gateway, Error> {
        let port = free_port().map_err(|e| Error::Io(format!("no free port: {e}")))?;
        let admin_port = free_port().map_err(|e| Error::Io(format!("no free port: {e}")))?;
        let log = dir.join("gateway.log");
        let args: Vec<String> = [
            "gate",
            "--gateway",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
            "--upstream",
            &format!("http://{service}"),
            // A vanished node leaves its connections silent rather than closed.
            "--upstream-idle-timeout",
            "20",
            "--threads",
            "1",
            "--time-scale",
            &clock.scale().to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let child = crate::spawn_logged(exe, &args, &log)?;
        let gateway = Gateway {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin_port,
            child,
            log,
        };
        let t0 = tokio::time::Instant::now();
        while !matches!(http_get(admin_port, "/ready", false).await, Ok((200, _))) {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(Error::Run(format!(
                    "the gateway was not ready within 30 s; its log is {}",
                    gateway.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gateway)
    }

    /// How many streams it handed off, and how many of those completed, from its metrics.
    pub async fn handoffs(&self) -> (u64, u64) {
        let Ok((_, text)) = http_get(self.admin_port, "/metrics", true).await else {
            return (0, 0);
        };
        let sum = |prefix: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum()
        };
        (
            sum("lameduck_gate_handoffs_total{"),
            sum("lameduck_gate_handoffs_total{outcome=\"completed\"}"),
        )
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
