//! The spot scenario with `lameduck agent` on the node, as real processes: a fake AWS
//! instance metadata service announces the reclaim, the agent (a child process, as on a node)
//! sees it, tells the reclaimed pod's gate the deadline on its admin port and deletes the pod
//! through a Kubernetes API. The API is the in-process test API server (`lameduck-testapi`),
//! holding the node and the reclaimed pod as the agent's watch expects them; the rehearsal's
//! kubelet emulator acts on the deletion the agent makes there.
//!
//! The agent runs in real time: its margin and poll interval are the unscaled defaults divided
//! by the time scale, and the gate takes `/drain?deadline=` in real seconds.

use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime};

use lameduck_cloud::Provider;
use lameduck_fakecloud::FakeMetadata;
use lameduck_testapi::TestApi;
use serde_json::json;
use tokio::process::Child;

use crate::Error;
use crate::clock::Clock;

/// The node the reclaimed pod runs on, in the API.
pub const NODE: &str = "rehearse-node";

/// The agent's poll interval on a real node, unscaled.
const POLL: Duration = Duration::from_secs(1);

/// A running agent with its metadata service and API server.
pub struct AgentRig {
    api: TestApi,
    cloud: FakeMetadata,
    child: Child,
    log: PathBuf,
    pod: String,
}

impl AgentRig {
    /// Starts the API server holding the node and `pod` (gated, its admin port on
    /// 127.0.0.1), the fake AWS metadata service, and the agent; returns once the agent
    /// watches.
    pub async fn start(
        exe: &Path,
        dir: &Path,
        clock: Clock,
        pod: &str,
        admin_port: u16,
        grace: Duration,
    ) -> Result<AgentRig, Error> {
        let api = TestApi::start().await;
        api.create(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            "spec": {}
        }));
        api.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod, "namespace": "default",
                // The rehearsal's own kubelet runs this pod, not the test server's.
                "annotations": {"testapi.lameduck.dev/kubelet": "off"}
            },
            "spec": {
                "nodeName": NODE,
                "terminationGracePeriodSeconds": grace.as_secs(),
                "containers": [{
                    "name": "server", "image": "lameduck",
                    "command": ["lameduck", "gate", "--admin", format!("127.0.0.1:{admin_port}"),
                                "--", "engine-sim"]
                }]
            },
            "status": {
                "phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }));
        let kubeconfig = dir.join("agent-kubeconfig");
        api.write_kubeconfig(&kubeconfig)
            .map_err(|e| Error::Io(format!("cannot write {}: {e}", kubeconfig.display())))?;
        let cloud = FakeMetadata::start(Provider::Aws).await;
        let log = dir.join("agent.log");
        let ms = |d: Duration| format!("{}ms", clock.real(d).as_millis().max(1));
        let args: Vec<String> = [
            "agent",
            "--node",
            NODE,
            "--provider",
            "aws",
            "--metadata-url",
            &cloud.url(),
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--margin",
            &ms(lameduck_pod::facts::NOTICE_MARGIN),
            "--poll",
            &ms(POLL),
            "--admin",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        let child = crate::spawn_logged(exe, &args, &log)?;
        let rig = AgentRig {
            api,
            cloud,
            child,
            log,
            pod: pod.to_owned(),
        };
        let t0 = tokio::time::Instant::now();
        while !rig.log_has("Agent watching for notices") {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(Error::Run(format!(
                    "`lameduck agent` did not start watching within 30 s; its log is {}",
                    rig.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(rig)
    }

    fn log_has(&self, line: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|s| s.contains(line))
    }

    /// The metadata service announces that the instance goes `real` from now.
    pub fn reclaim(&self, real: Duration) {
        self.cloud.reclaim(SystemTime::now() + real);
    }

    /// Waits until the agent deleted the pod through the API; `false` after `limit` (real).
    pub async fn deleted(&self, limit: Duration) -> bool {
        let t0 = tokio::time::Instant::now();
        loop {
            let gone = self
                .api
                .get("v1", "Pod", Some("default"), &self.pod)
                .is_none_or(|p| p["metadata"]["deletionTimestamp"].is_string());
            if gone {
                return true;
            }
            if t0.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the agent says the gate accepted its `/drain?deadline=`.
    pub fn gate_accepted(&self) -> bool {
        self.log_has("accepted=1")
    }

    /// Whether the node was tainted and cordoned.
    pub fn node_marked(&self) -> bool {
        self.api.get("v1", "Node", None, NODE).is_some_and(|n| {
            n["spec"]["unschedulable"] == true
                && n["spec"]["taints"].as_array().is_some_and(|t| {
                    t.iter()
                        .any(|t| t["key"] == lameduck_pod::facts::RECLAIMED_TAINT)
                })
        })
    }

    /// Stops the agent.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
