//! The gate under hostile, failing and heavy conditions: silent and idle connections, a
//! connection flood with a small descriptor limit, an engine killed mid-drain, malformed
//! request bodies, a dying internal task, the in-flight limit, and an engine that writes to
//! the same stderr as the drain report.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Starts engine-sim on its own and waits until it answers.
async fn engine_sim(args: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec!["engine-sim", "--listen", listen.as_str()];
    all.extend_from_slice(args);
    let proc = Proc::spawn(&all);
    let addr: SocketAddr = listen.parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while get(&format!("http://{addr}/health")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine-sim did not start: {}",
            proc.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proc, addr)
}

/// Whether the peer closed `tcp` within `within` (a read returns end of file or an error).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Bytes (a GOAWAY, a 408): keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// A non-streamed chat completion through a fresh connection; its status.
async fn one_request(gate: &Gate) -> Result<StatusCode, String> {
    let resp = send(post(&gate.url("/v1/chat/completions"), chat_body(false, 2))).await?;
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// Connections that send nothing, or an HTTP/2 preface one byte at a time, are closed after
/// `--header-timeout`; an idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection
/// after `--idle-timeout`; a connection with a stream in flight is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let (_engine, engine) = engine_sim(&["--tokens-per-second", "10", "--ttft", "10ms"]).await;
    let gate = Gate::sidecar(engine, &["--header-timeout", "1s", "--idle-timeout", "2s"]).await;
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(gate.proxy).await.expect("connect");
    let mut dripping = TcpStream::connect(gate.proxy).await.expect("connect");
    let drip = tokio::spawn(async move {
        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if dripping.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        closed_within(&mut dripping, Duration::from_secs(10)).await
    });
    // A keep-alive connection that carried one request, then nothing.
    let mut idle = TcpStream::connect(gate.proxy).await.expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // A stream that lasts longer than the idle timeout (30 tokens at 10/s).
    let stream = gate.open_stream(30);

    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a silent connection was held"
    );
    let silent_after = started.elapsed();
    assert!(
        silent_after >= Duration::from_millis(900),
        "closed before the header timeout: {silent_after:?}"
    );
    assert!(drip.await.expect("join"), "a dripping preface was held");
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "an idle keep-alive connection was held"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "idle connection closed before the idle timeout"
    );
    // The stream outlived the idle timeout untouched.
    match stream.await.expect("join") {
        StreamEnd::Finished { tokens, .. } => assert_eq!(tokens, 30),
        other => panic!("stream cut: {other:?}"),
    }

    // HTTP/2 with prior knowledge: one request, then idle until GOAWAY and close.
    let tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://x/health")
        .body(())
        .expect("request");
    let (resp, _) = h2.send_request(req, true).expect("send");
    assert_eq!(resp.await.expect("response").status(), StatusCode::OK);
    let t0 = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("an idle HTTP/2 connection was held")
        .expect("join")
        .ok();
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );

    let closes = |reason: &str| {
        let series = format!("lameduck_gate_connection_closes_total{{reason=\"{reason}\"}}");
        let gate = &gate;
        async move { gate.metric(&series).await.unwrap_or(0.0) }
    };
    assert!(closes("header_timeout").await >= 2.0);
    assert!(closes("idle_timeout").await >= 1.0);
}

/// With a 300-descriptor limit, hundreds of silent connections cannot make the gate refuse
/// real clients for long, and never make /ready fail: the admin port keeps its descriptors,
/// and connections without work are closed first when the proxy port is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_starves_neither_clients_nor_probes() {
    let (_engine, engine) = engine_sim(&["--tokens-per-second", "200", "--ttft", "5ms"]).await;
    let url = format!("http://{engine}");
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--upstream", &url, "--header-timeout", "3s"]);
    let gate = Gate::start_with(&args, None, &[], Some(300)).await;
    gate.wait_ready(Duration::from_secs(20)).await;
    let status = gate.status().await;
    let max = status["limits"]["max_connections"].as_u64().expect("limit");
    assert!(max < 200, "the limit follows the descriptors: {status}");

    // Twice the descriptor limit in silent connections, opened as fast as we can.
    let mut flood = Vec::new();
    for _ in 0..600 {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(gate.proxy)).await
        {
            flood.push(c);
        }
    }
    assert!(flood.len() > max as usize * 2, "flood of {}", flood.len());

    // Probes answer at once throughout; real requests get through, if late.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut served = 0;
    while tokio::time::Instant::now() < until {
        let ready = tokio::time::timeout(Duration::from_secs(2), get(&gate.admin_url("/ready")))
            .await
            .expect("/ready did not answer within 2 s under the flood")
            .expect("/ready");
        assert_eq!(ready.0, StatusCode::OK, "{}", ready.1);
        let r = tokio::time::timeout(Duration::from_secs(20), one_request(&gate))
            .await
            .expect("a real request waited more than 20 s")
            .expect("request");
        assert_eq!(r, StatusCode::OK);
        served += 1;
    }
    assert!(served >= 2, "only {served} requests in 8 s");
    // Every silent connection is closed in the end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut held = 0;
    for c in &mut flood {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !closed_within(c, left.max(Duration::from_millis(1))).await {
            held += 1;
        }
    }
    assert_eq!(held, 0, "silent connections still open");
    let closes = gate
        .metric("lameduck_gate_connection_closes_total{reason=\"pressure\"}")
        .await
        .unwrap_or(0.0)
        + gate
            .metric("lameduck_gate_connection_closes_total{reason=\"header_timeout\"}")
            .await
            .unwrap_or(0.0);
    assert!(closes >= 500.0, "{closes} closes counted");
}

/// The engine dies (SIGKILL) right after a `/drain` started, with streams in flight: every
/// stream ends with the terminal event (or finishes), none is cut silently, the gate exits
/// only afterwards, and its final report adds up with nothing left in flight. The race is
/// run many times, with the kill at different moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_during_a_drain_ends_every_stream_cleanly() {
    for round in 0..8u64 {
        let mut gate = Gate::wrapping_sim(
            &["--grace-period", "60"],
            &["--tokens-per-second", "50", "--ttft", "5ms"],
        )
        .await;
        let streams: Vec<_> = (0..10).map(|_| gate.open_stream(500)).collect();
        gate.wait_streams(10).await;
        let pid = gate.status().await["child"]["pid"]
            .as_i64()
            .expect("engine pid") as i32;
        let (s, _) = get(&gate.admin_url("/drain?wait=false"))
            .await
            .expect("drain");
        assert_eq!(s, StatusCode::ACCEPTED);
        tokio::time::sleep(Duration::from_millis(round * 40)).await;
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
            .expect("kill the engine");
        for s in streams {
            match s.await.expect("join") {
                StreamEnd::TerminalError { done: true, .. } | StreamEnd::Finished { .. } => {}
                other => panic!("round {round}: a stream was cut: {other:?}"),
            }
        }
        let code = gate.proc.wait_exit(Duration::from_secs(30)).await;
        assert_ne!(
            code, 0,
            "round {round}: an engine that died is never success"
        );
        let r = gate.proc.report();
        assert_eq!(r["in_flight"], 0, "round {round}: {r}");
        let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
        assert_eq!(
            n("in_flight_at_start") + n("arrivals_after_unready") - n("rejected") - n("overloaded"),
            n("completed")
                + n("truncated")
                + n("upstream_errors")
                + n("client_errors")
                + n("client_aborts"),
            "round {round}: the report does not add up: {r}"
        );
        assert_eq!(n("in_flight_at_start"), 10, "{r}");
    }
}

/// A malformed chunked request body is the client's error: 400, counted as `client_error`,
/// and no warning blames the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_body_is_the_clients_error() {
    let gate = Gate::wrapping_sim(&[], &["--ttft", "5ms"]).await;
    let mut tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"mod\r\nzz\r\nnot a chunk\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 2048];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer: {:?}", String::from_utf8_lossy(&got)),
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("invalid_request_error"), "{text}");
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"client_error\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"upstream_error\"}")
            .await,
        Some(0.0)
    );
    assert!(
        !gate
            .proc
            .lines()
            .iter()
            .any(|l| l.contains("Upstream error")),
        "the engine was blamed: {}",
        gate.proc.lines().join("\n")
    );
    // The gate goes on serving.
    assert_eq!(one_request(&gate).await.expect("request"), StatusCode::OK);
}

/// An essential task that panics ends the gate with a clear log line and a non-zero status,
/// and takes the engine down with it (no orphan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_essential_task_ends_the_gate() {
    for task in ["driver", "admin", "proxy"] {
        let upstream = format!("http://127.0.0.1:{}", free_port());
        let mut gate = Gate::start_with(
            &["--upstream", &upstream],
            Some(&["sh", "-c", "sleep 60"]),
            &[("LAMEDUCK_GATE_FAULT", task)],
            None,
        )
        .await;
        let pid = loop {
            if let Some(p) = gate.status().await["child"]["pid"].as_i64() {
                break p as i32;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let code = gate.proc.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(code, 70, "{task}");
        let line = gate
            .proc
            .json_lines()
            .into_iter()
            .find(|v| v["message"] == "The gate cannot go on: exiting without a drain (the kubelet restarts the container)")
            .unwrap_or_else(|| panic!("{task}: no log line: {}", gate.proc.lines().join("\n")));
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!("the {task} task panicked")),
            "{reason}"
        );
        // The engine's process group is gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{task}: the engine outlived the gate"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Past `--max-in-flight`, new requests get 503 with Retry-After (counted), and the
/// connection is kept; once work ends, requests pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_refuses_with_503() {
    let gate = Gate::wrapping_sim(
        &["--max-in-flight", "2"],
        &["--tokens-per-second", "20", "--ttft", "5ms"],
    )
    .await;
    let a = gate.open_stream(20);
    let b = gate.open_stream(20);
    gate.wait_streams(2).await;
    let resp = send(post(&gate.url("/v1/chat/completions"), chat_body(false, 2)))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(resp.headers().get("connection").is_none());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["type"], "server_overloaded");
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"rejected_overload\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(gate.status().await["limits"]["max_in_flight"], 2);
    for s in [a, b] {
        assert!(matches!(s.await.expect("join"), StreamEnd::Finished { .. }));
    }
    assert_eq!(one_request(&gate).await.expect("request"), StatusCode::OK);
}

/// The drain report is one line even when the engine writes to the same stderr without
/// pause: it is written whole, in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_report_is_one_line_amid_engine_output() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let upstream = format!("http://{listen}");
    // The engine: engine-sim behind a shell that, when stopped, floods the shared stderr
    // from a background loop that outlives it (as an engine's dying workers do): the gate
    // writes its report while the noise goes on.
    let script = format!(
        "{bin} engine-sim --listen {listen} & sim=$!; echo engine noise >&2; \
         trap '(i=0; while [ $i -lt 40000 ]; do echo engine noise engine noise >&2; i=$((i+1)); done) & \
         kill $sim; wait $sim; exit 0' TERM; wait $sim",
        bin = bin(),
    );
    let log = std::env::temp_dir().join(format!("lameduck-noise-{port}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = std::process::Command::new(bin())
        .args(["gate", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(FAST)
        .args(["--upstream", &upstream, "--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn");
    // Let the engine start and the noise run, then stop the gate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("engine noise") && text.contains("Engine health changed") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    // The noise goes on for a while after the gate exits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_file(&log);
    let reports: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"msg\":\"drain report\""))
        .collect();
    assert_eq!(reports.len(), 1, "{} report lines", reports.len());
    let v: Value = serde_json::from_str(reports[0])
        .unwrap_or_else(|e| panic!("the report line was broken up ({e}): {}", reports[0]));
    assert_eq!(v["trigger"], "signal");
    assert!(text.lines().filter(|l| l.contains("engine noise")).count() > 100);
}
