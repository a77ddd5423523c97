//! Protocols other than SSE through the gate, with third-party peers on both ends: the Python
//! `websockets` library and `grpcio`, each as server and client.
//!
//! `scripts/test` installs the libraries; run alone, set LAMEDUCK_TEST_PYTHON to a Python with
//! `websockets` and `grpcio` installed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::*;

fn python() -> String {
    std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients")
        .join(name)
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts the WebSocket script with `args`; returns it and its stdout's lines.
fn start(args: &[&str]) -> (Child, Lines) {
    start_script("ws_through_gate.py", args)
}

/// Starts `tests/clients/NAME` with `args`; returns it and its stdout's lines.
fn start_script(name: &str, args: &[&str]) -> (Child, Lines) {
    let mut child = Command::new(python())
        .arg(script(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (install it with scripts/test): {e}",
                python()
            )
        });
    let out = child.stdout.take().expect("stdout");
    (child, BufReader::new(out).lines())
}

async fn line(lines: &mut Lines) -> String {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within 30 s")
        .expect("read")
        .expect("the peer exited early (is `websockets` installed? run scripts/test)")
}

/// A gate in sidecar mode in front of the peer server on `port`, with a short convergence.
async fn gate_in_front_of(port: &str) -> Gate {
    let upstream = format!("http://127.0.0.1:{port}");
    Gate::start(
        &[
            "--upstream",
            &upstream,
            "--grace-period",
            "30",
            "--kill-margin",
            "1",
            "--convergence-min",
            "100ms",
            "--convergence-max",
            "500ms",
        ],
        None,
    )
    .await
}

/// Starts a drain whose deadline is a second away.
async fn drain_within_a_second(gate: &Gate) {
    let (status, _) = get(&gate.admin_url("/drain?deadline=1s&wait=false"))
        .await
        .expect("drain");
    assert!(status.is_success(), "{status}");
}

/// A connection that closes on its own passes untouched. Messages, a ping and a fragmented
/// message pass through untouched; at the deadline, with
/// 256 KiB frames streaming from the server, the client receives a Close with 1001 (going
/// away) — a clean close, no protocol error — and the gate counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_pass_and_get_going_away_at_the_deadline() {
    let (_server, mut server_out) = start(&["server"]);
    let port = line(&mut server_out).await;
    let gate = gate_in_front_of(&port).await;
    let url = format!("ws://{}/ws", gate.proxy);
    // A connection that ends on its own, before any drain: untouched, counted as closed.
    let (mut short, mut short_out) = start(&["short", &url]);
    let v: Value = serde_json::from_str(&line(&mut short_out).await).expect("JSON");
    let _ = tokio::time::timeout(Duration::from_secs(10), short.wait()).await;
    assert_eq!(v["echo"], true, "{v}");
    assert_eq!(v["close_code"], 1000, "{v}");
    let (mut client, mut client_out) = start(&["client", &url]);
    assert_eq!(line(&mut client_out).await, "ready");
    // Let frames flow, then drain with a short deadline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain_within_a_second(&gate).await;
    let result = line(&mut client_out).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.wait()).await;
    let v: Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert_eq!(v["echo"], true, "{v}");
    assert_eq!(v["ping"], true, "{v}");
    assert_eq!(v["fragmented"], true, "{v}");
    assert!(v["pushed"].as_u64().unwrap_or(0) > 2, "{v}");
    assert!(v.get("bad_message").is_none(), "a message arrived cut: {v}");
    assert_eq!(v["code"], 1001, "{v}");
    assert_eq!(v["error"], "ConnectionClosedOK", "{v}");
    let (_, metrics) = get(&gate.admin_url("/metrics")).await.expect("metrics");
    let (_, status) = get(&gate.admin_url("/status")).await.expect("status");
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(
        status["drain"]["websockets"],
        serde_json::json!({"going_away": 1}),
        "{status}"
    );
    for end in ["going_away", "closed"] {
        assert!(
            metrics.contains(&format!(
                "lameduck_gate_websockets_total{{end=\"{end}\"}} 1"
            )),
            "{end}: {metrics}"
        );
    }
}

/// gRPC through the gate, to a gRPC server over HTTP/2: a unary call and a short
/// server-streaming call finish untouched (trailing metadata included); at the deadline a long
/// server-streaming call ends with status UNAVAILABLE (retryable), not INTERNAL or UNKNOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_and_end_unavailable_at_the_deadline() {
    let (_server, mut server_out) = start_script("grpc_through_gate.py", &["server"]);
    let port = line(&mut server_out).await;
    let gate = gate_in_front_of(&port).await;
    let target = gate.proxy.to_string();
    let (mut client, mut client_out) = start_script("grpc_through_gate.py", &["client", &target]);
    assert_eq!(line(&mut client_out).await, "ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain_within_a_second(&gate).await;
    let result = line(&mut client_out).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), client.wait()).await;
    let v: Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert_eq!(v["unary"], "kcudemal", "{v}");
    assert_eq!(v["unary_code"], "OK", "{v}");
    assert_eq!(v["unary_trailer"], "kept", "{v}");
    assert_eq!(v["short"], 5, "{v}");
    assert_eq!(v["short_code"], "OK", "{v}");
    assert_eq!(v["long_code"], "UNAVAILABLE", "{v}");
    assert!(v["long_received"].as_u64().unwrap_or(0) > 5, "{v}");
    let report = get(&gate.admin_url("/status")).await.expect("status").1;
    let report: Value = serde_json::from_str(&report).expect("status JSON");
    assert_eq!(report["drain"]["truncated"], 1, "{report}");
    // The calls before the drain are not the drain's.
    assert_eq!(
        report["drain"]["grpc_calls"],
        serde_json::json!({"truncated": 1}),
        "{report}"
    );
    let (_, metrics) = get(&gate.admin_url("/metrics")).await.expect("metrics");
    for (outcome, n) in [("ok", 2), ("truncated", 1)] {
        assert!(
            metrics.contains(&format!(
                "lameduck_gate_grpc_calls_total{{outcome=\"{outcome}\"}} {n}"
            )),
            "{outcome}: {metrics}"
        );
    }
}

/// `--health-grpc`: /ready mirrors the engine's gRPC health service, as a grpcio server
/// reports it (SERVING, then NOT_SERVING, then SERVING again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_mirrors_the_grpc_health_service() {
    let (_server, mut server_out) = start_script("grpc_through_gate.py", &["server"]);
    let port = line(&mut server_out).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let gate = Gate::start(
        &[
            "--upstream",
            &upstream,
            "--health-grpc",
            "--health-interval",
            "200ms",
        ],
        None,
    )
    .await;
    gate.wait_ready(Duration::from_secs(20)).await;
    let ready = || async { get(&gate.admin_url("/ready")).await.map(|r| r.0.as_u16()) };
    let target = format!("127.0.0.1:{port}");
    for (status, want) in [("not_serving", 503), ("serving", 200)] {
        let (mut c, mut out) = start_script("grpc_through_gate.py", &["health", &target, status]);
        assert_eq!(line(&mut out).await, "ok");
        let _ = c.wait().await;
        let t0 = std::time::Instant::now();
        while ready().await != Ok(want) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "/ready never answered {want} after the engine went {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `--upstream-protocol h2c`: plain HTTP requests reach the engine over HTTP/2 too (engine-sim
/// serves both); a short stream completes, and a long one still ends with the terminal event
/// at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_over_an_h2c_upstream_still_ends_with_the_terminal_event() {
    let gate = Gate::wrapping_sim(
        &[
            "--upstream-protocol",
            "h2c",
            "--grace-period",
            "4",
            "--kill-margin",
            "1",
        ],
        crate::cluster::LONG_STREAMS,
    )
    .await;
    let short = gate.open_stream(5).await.expect("join");
    assert!(matches!(short, StreamEnd::Finished { .. }), "{short:?}");
    let long = gate.open_stream(100_000);
    gate.wait_streams(1).await;
    drain_within_a_second(&gate).await;
    let end = long.await.expect("join");
    assert!(
        matches!(&end, StreamEnd::TerminalError { done: true, .. }),
        "{end:?}"
    );
    // The same flag in front of a server that speaks only HTTP/1.1 (the websockets library's)
    // fails with 502: the gate really spoke HTTP/2 to the engine.
    let (_server, mut server_out) = start(&["server"]);
    let port = line(&mut server_out).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let h1_only = Gate::start(
        &["--upstream", &upstream, "--upstream-protocol", "h2c"],
        None,
    )
    .await;
    let (status, body) = get(&h1_only.url("/")).await.expect("answer");
    assert_eq!(status.as_u16(), 502, "{body}");
}
