//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lameduck_testapi::TestApi;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every test body runs under this bound.
pub const TEST_BOUND: Duration = Duration::from_secs(30);

/// Runs a test body with a time bound.
pub async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("the test did not finish within its bound");
}

/// A kube client for the server, built from its URL, without kube's default retry layer (which
/// would retry 429, 503 and 504 answers up to 15 times) so tests see every answer.
pub fn client(api: &TestApi) -> kube::Client {
    let mut config = kube::Config::new(api.url().parse().expect("the server URL parses"));
    config.default_retry = false;
    kube::Client::try_from(config).expect("a client for the test server")
}

/// A kube client with kube's defaults, retry layer included.
pub fn default_client(api: &TestApi) -> kube::Client {
    let config = kube::Config::new(api.url().parse().expect("the server URL parses"));
    kube::Client::try_from(config).expect("a client for the test server")
}

/// A scheduled, running pod with an IP; no probes, so it is Ready at once.
pub fn pod(name: &str, labels: Value, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "app", "image": "example/app:1",
                            "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {"phase": "Running", "podIP": ip},
    })
}

/// Polls until `check` holds, failing after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `kube::Error::Api` status of a failed call.
pub fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A plain HTTP/1.1 server on `ip` answering `GET /ready` with 200 while `healthy` holds and
/// 503 otherwise, and anything else with 200 `ok`. Returns the port.
pub async fn health_server(ip: &str, healthy: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .await
        .expect("bind the health server");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let ready_path = head.starts_with("GET /ready ");
                let (code, text) = if ready_path && !healthy.load(Ordering::SeqCst) {
                    (503, "draining")
                } else {
                    (200, "ok")
                };
                let resp = format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}
