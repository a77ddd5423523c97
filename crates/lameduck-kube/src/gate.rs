//! A pod's gate reached through the API server's pod proxy
//! (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/…`), for tools that run outside the pod network
//! (a laptop, a CI job). Inside the cluster, `lameduck_gate_api::GateClient` on the pod's IP is
//! the shorter path.
//!
//! RBAC: `get` on `pods/proxy` for `/status`, `create` for `/drain`. The API server uses the
//! `Authorization` header itself, so a gate started with `--admin-token` cannot be told to
//! drain this way: use its address and the token instead.

use std::time::Duration;

use kube::Client;
use lameduck_gate_api::{DrainAccepted, GateStatus};

use crate::{KubeError, Op};

fn path(namespace: &str, pod: &str, port: u16, rest: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{rest}")
}

/// The gate's `/status`.
pub async fn status(
    client: &Client,
    namespace: &str,
    pod: &str,
    admin_port: u16,
) -> Result<GateStatus, KubeError> {
    let op = || Op::new("get", "pods/proxy", namespace).named(pod);
    let req = http::Request::get(path(namespace, pod, admin_port, "/status"))
        .body(Vec::new())
        .map_err(|e| KubeError::new(op(), kube::Error::HttpError(e)))?;
    client
        .request::<GateStatus>(req)
        .await
        .map_err(|e| KubeError::new(op(), e))
}

/// Starts (or joins) the gate's drain, with `deadline` as the longest it may take; answers at
/// once.
pub async fn drain(
    client: &Client,
    namespace: &str,
    pod: &str,
    admin_port: u16,
    deadline: Option<Duration>,
) -> Result<DrainAccepted, KubeError> {
    let op = || Op::new("create", "pods/proxy", namespace).named(pod);
    let mut rest = "/drain?wait=false".to_owned();
    if let Some(d) = deadline {
        rest.push_str(&format!("&deadline={}ms", d.as_millis()));
    }
    let req = http::Request::post(path(namespace, pod, admin_port, &rest))
        .body(Vec::new())
        .map_err(|e| KubeError::new(op(), kube::Error::HttpError(e)))?;
    client
        .request::<DrainAccepted>(req)
        .await
        .map_err(|e| KubeError::new(op(), e))
}
