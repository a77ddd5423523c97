//! `lameduck gate` over real sockets, real child processes and real signals.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use crate::upstream;

const LONG: Duration = Duration::from_secs(30);

/// Asserts that a stream finished cleanly with `tokens` content tokens (finish reason
/// `stop` or `length`, then `[DONE]`) — not aborted, truncated or reset.
#[track_caller]
fn assert_finished(end: StreamEnd, tokens: usize) {
    match &end {
        StreamEnd::Finished {
            tokens: t,
            finish_reason,
        } => {
            assert_eq!(*t, tokens, "{end:?}");
            assert!(
                finish_reason == "stop" || finish_reason == "length",
                "{end:?}"
            );
        }
        other => panic!("expected a clean finish with {tokens} tokens, got {other:?}"),
    }
}

/// Index of the first stderr line containing `needle`.
fn line_index(lines: &[String], needle: &str) -> Option<usize> {
    lines.iter().position(|l| l.contains(needle))
}

/// 50 streams in flight when SIGTERM arrives all complete; the engine (which aborts streams
/// on SIGTERM, like vLLM's default) is signalled only after they finished; /live stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_streams_complete_through_a_drain() {
    let mut gate = Gate::wrapping_sim(
        &["--grace-period", "60"],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "1000",
            "--ttft",
            "50ms",
            "--on-sigterm",
            "abort",
        ],
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let req = post(&gate.url("/v1/chat/completions"), chat_body(true, 40));
        streams.push(tokio::spawn(
            async move { read_stream(send(req).await).await },
        ));
    }
    // Wait until all 50 are streaming through the gate.
    gate.wait_streams(50).await;
    gate.proc.signal(Signal::SIGTERM);

    // /live stays 200 for the whole drain (until the process is gone).
    let admin = gate.admin_url("/live");
    let live_probe = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..400 {
            match get(&admin).await {
                Ok((s, _)) => seen.push(s),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    });

    for s in streams {
        assert_finished(s.await.expect("join"), 40);
    }
    assert_eq!(gate.proc.wait_exit(LONG).await, 0);
    let live = live_probe.await.expect("join");
    assert!(!live.is_empty());
    assert!(live.iter().all(|s| *s == StatusCode::OK), "{live:?}");

    let report = gate.proc.report();
    assert_eq!(report["trigger"], "signal");
    assert_eq!(report["in_flight_at_start"], 50);
    assert_eq!(report["completed"], 50);
    assert_eq!(report["truncated"], 0);
    assert_eq!(report["exit_code"], 0);
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["phase"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(phases, ["announcing", "finishing", "done"]);

    // Order: the gate drained, then signalled the engine, then the engine saw SIGTERM.
    let lines = gate.proc.lines();
    let drained = line_index(&lines, "\"Drained\"").expect("Drained line");
    let sigterm = line_index(&lines, "SIGTERM to the engine").expect("SIGTERM line");
    let engine_saw = line_index(&lines, "shutdown signal received").expect("engine signal line");
    assert!(
        drained < sigterm && sigterm < engine_saw,
        "{drained} {sigterm} {engine_saw}"
    );
}

/// A stream still running at the deadline ends with the terminal event and [DONE]; a request
/// whose response has not started gets 503 JSON with Retry-After; the drain report counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_ends_streams_with_terminal_event() {
    let mut gate = Gate::wrapping_sim(
        &["--grace-period", "3", "--kill-margin", "1"],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "100000",
            "--ttft",
            "50ms",
        ],
    )
    .await;
    let stream = gate.open_stream(100000);
    // A non-streaming request for far more tokens than fit in the budget: its response has
    // not started when the deadline comes.
    let req = post(
        &gate.url("/v1/completions"),
        serde_json::json!({"prompt": "x", "max_tokens": 100000}).to_string(),
    );
    let pending = tokio::spawn(async move { send(req).await });
    let deadline = tokio::time::Instant::now() + LONG;
    while gate.status().await["in_flight"]["stream"] != 1
        || gate.status().await["in_flight"]["request"] != 1
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.proc.signal(Signal::SIGTERM);

    match stream.await.expect("join") {
        StreamEnd::TerminalError { kind, done } => {
            assert_eq!(kind, "server_shutdown");
            assert!(done, "terminal event must be followed by [DONE]");
        }
        other => panic!("expected the terminal event, got {other:?}"),
    }
    let resp = pending.await.expect("join").expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json error body");
    assert_eq!(v["error"]["type"], "server_shutdown");

    assert_eq!(gate.proc.wait_exit(LONG).await, 0);
    let report = gate.proc.report();
    assert_eq!(report["truncated"], 2);
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["phase"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(phases, ["announcing", "finishing", "deadline", "done"]);
    assert_eq!(report["deadline"], 2.0);
}

/// While announcing, an HTTP/1.1 keep-alive client is told `Connection: close` and the
/// connection is closed after the response; an idle keep-alive connection is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_are_told_to_close_while_announcing() {
    let gate = Gate::wrapping_sim(
        &["--convergence-min", "3s", "--convergence-max", "5s"],
        &[
            "--tokens-per-second",
            "50",
            "--output-tokens",
            "10",
            "--ttft",
            "10ms",
        ],
    )
    .await;
    async fn h1(
        addr: std::net::SocketAddr,
    ) -> (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<Result<(), hyper::Error>>,
    ) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        (send, tokio::spawn(conn))
    }
    let req = || {
        Request::post("/v1/chat/completions")
            .header(header::HOST, "gate")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(chat_body(false, 5))))
            .expect("req")
    };

    // Before the drain: keep-alive as usual.
    let (mut idle, idle_conn) = h1(gate.proxy).await;
    let r = idle.send_request(req()).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(
        r.headers().get(header::CONNECTION).map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    r.into_body().collect().await.expect("body");

    let (s, _) = get(&gate.admin_url("/drain?wait=false"))
        .await
        .expect("drain");
    assert_eq!(s, StatusCode::ACCEPTED);

    // The idle keep-alive connection is closed by the gate.
    tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .expect("idle keep-alive connection closed promptly")
        .expect("join")
        .expect("clean close");

    // A new connection during announcing is served, told to close, and closed.
    assert_eq!(gate.phase().await, "announcing");
    let (mut fresh, fresh_conn) = h1(gate.proxy).await;
    let r = fresh.send_request(req()).await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONNECTION], "close");
    r.into_body().collect().await.expect("body");
    tokio::time::timeout(Duration::from_secs(5), fresh_conn)
        .await
        .expect("connection closed after the response")
        .expect("join")
        .expect("clean close");
}

/// An HTTP/2 (prior knowledge) client receives GOAWAY when the drain starts; its stream in
/// flight completes, and the connection then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_receives_goaway() {
    let gate = Gate::wrapping_sim(
        &["--convergence-min", "2s"],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "20",
            "--ttft",
            "10ms",
        ],
    )
    .await;
    let tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = Request::post(gate.url("/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(())
        .expect("req");
    let (resp, mut body_tx) = client.send_request(req, false).expect("send");
    body_tx
        .send_data(Bytes::from(chat_body(true, 20)), true)
        .expect("body");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);

    let (s, _) = get(&gate.admin_url("/drain?wait=false"))
        .await
        .expect("drain");
    assert_eq!(s, StatusCode::ACCEPTED);

    // The stream that was in flight completes normally.
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("stream data");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    assert_finished(classify_sse(&String::from_utf8_lossy(&text)), 20);

    // GOAWAY: the connection ends gracefully once the stream is done, and no new stream can
    // be opened on it.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("connection closed after GOAWAY");
    assert!(ended.expect("join").is_ok(), "graceful close, not an error");
    let refused = match client.clone().ready().await {
        Err(e) => Some(e),
        Ok(mut c) => c
            .send_request(
                Request::get(gate.url("/v1/models")).body(()).expect("req"),
                true,
            )
            .err(),
    };
    assert!(
        refused.is_some(),
        "a new stream after GOAWAY must be refused"
    );
}

/// Two concurrent /drain calls join one drain; both block until the in-flight stream is done
/// and answer the same report. SIGTERM afterwards exits promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_drain_call_joins_the_first() {
    let mut gate = Gate::wrapping_sim(
        &[],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "30",
            "--ttft",
            "10ms",
        ],
    )
    .await;
    let stream = gate.open_stream(30);
    gate.wait_streams(1).await;
    let (url_a, url_b) = (gate.admin_url("/drain"), gate.admin_url("/drain"));
    let a = tokio::spawn(async move { get(&url_a).await });
    let b = tokio::spawn(async move { get(&url_b).await });
    let (a, b) = (
        a.await.expect("join").expect("drain a"),
        b.await.expect("join").expect("drain b"),
    );
    assert_finished(stream.await.expect("join"), 30);
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    let (ra, rb): (Value, Value) = (
        serde_json::from_str(&a.1).expect("json"),
        serde_json::from_str(&b.1).expect("json"),
    );
    assert_eq!(ra["started_at_unix"], rb["started_at_unix"]);
    assert_eq!(ra["trigger"], "endpoint");
    // Both answered only once the stream had completed.
    assert_eq!(ra["completed"], 1);
    assert_eq!(ra["in_flight"], 0);
    assert_eq!(ra, rb);

    // The /drain trigger does not stop the engine; SIGTERM (the kubelet's, after the preStop)
    // joins the finished drain and exits at once.
    assert_eq!(gate.phase().await, "done");
    assert_eq!(gate.status().await["live"], true);
    gate.proc.signal(Signal::SIGTERM);
    assert_eq!(gate.proc.wait_exit(Duration::from_secs(10)).await, 0);
}

/// In the finishing phase new arrivals get 503 with Retry-After and Connection: close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_refuses_new_arrivals() {
    let gate = Gate::wrapping_sim(
        &["--retry-after", "7"],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "60",
            "--ttft",
            "10ms",
        ],
    )
    .await;
    let stream = gate.open_stream(60);
    gate.wait_streams(1).await;
    get(&gate.admin_url("/drain?wait=false"))
        .await
        .expect("drain");
    gate.wait_phase("finishing", Duration::from_secs(10)).await;
    let resp = send(post(&gate.url("/v1/chat/completions"), chat_body(true, 5)))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
    assert_eq!(resp.headers()[header::CONNECTION], "close");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["type"], "server_shutdown");
    assert_finished(stream.await.expect("join"), 60);
    gate.wait_phase("done", Duration::from_secs(10)).await;
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"rejected_draining\"}")
            .await,
        Some(1.0)
    );
    let report = gate.status().await["drain"].clone();
    assert_eq!(report["rejected"], 1);
    assert!(report["arrivals_after_unready"].as_u64() >= Some(1));
}

/// A non-SSE response still running at the deadline is aborted (the client sees a broken
/// body, never a clean end it could mistake for success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_started_responses_are_aborted_at_the_deadline() {
    let up = upstream::start().await;
    let mut gate = Gate::sidecar(up, &["--grace-period", "2", "--kill-margin", "1"]).await;
    let resp = send(get_req(&gate.url("/slow"))).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::OK);
    let body =
        tokio::spawn(async move { resp.into_body().collect().await.map(|b| b.to_bytes().len()) });
    gate.proc.signal(Signal::SIGTERM);
    let result = body.await.expect("join");
    assert!(result.is_err(), "the body must be aborted, got {result:?}");
    assert_eq!(gate.proc.wait_exit(LONG).await, 0);
    assert_eq!(gate.proc.report()["truncated"], 1);
}

/// An upstream SSE stream that stalls mid-event (as vLLM's does when its engine is killed) is
/// ended by the gate at the deadline with only whole events, then the terminal event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_ends_at_an_event_boundary() {
    let up = upstream::start().await;
    let mut gate = Gate::sidecar(up, &["--grace-period", "2", "--kill-margin", "1"]).await;
    let resp = send(get_req(&gate.url("/stall-sse"))).await.expect("resp");
    let body = tokio::spawn(async move { resp.into_body().collect().await.map(|b| b.to_bytes()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.proc.signal(Signal::SIGTERM);
    let body = body.await.expect("join").expect("clean end, not a reset");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.starts_with("data: {\"n\":1}\n\nevent: error\ndata: {"),
        "{text:?}"
    );
    assert!(text.ends_with("\n\ndata: [DONE]\n\n"), "{text:?}");
    assert!(
        !text.contains("{\"n\":\n"),
        "a partial event leaked: {text:?}"
    );
    assert_eq!(gate.proc.wait_exit(LONG).await, 0);
}

/// With --upstream-idle-timeout, a stream whose engine went silent is ended with a terminal
/// event before the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_idle_timeout_ends_silent_streams() {
    let up = upstream::start().await;
    let gate = Gate::sidecar(up, &["--upstream-idle-timeout", "500ms"]).await;
    let resp = send(get_req(&gate.url("/stall-sse"))).await;
    match read_stream(resp).await {
        StreamEnd::TerminalError { kind, done } => {
            assert_eq!(kind, "upstream_timeout");
            assert!(done);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"upstream_error\"}")
            .await,
        Some(1.0)
    );
}

/// Upgraded connections pass through and hold the drain open until they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_and_count_as_in_flight() {
    let up = upstream::start().await;
    let gate = Gate::sidecar(up, &[]).await;

    let tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .expect("hs");
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/upgrade")
        .header(header::HOST, "gate")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .body(Empty::new())
        .expect("req");
    let resp = send.send_request(req).await.expect("send");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgrade"));
    io.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    assert_eq!(gate.status().await["in_flight"]["upgraded"], 1);

    get(&gate.admin_url("/drain?wait=false"))
        .await
        .expect("drain");
    gate.wait_phase("finishing", Duration::from_secs(10)).await;
    // Still open and working while the drain waits for it.
    io.write_all(b"pong").await.expect("write");
    io.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"pong");
    assert_eq!(gate.phase().await, "finishing");
    drop(io);
    gate.wait_phase("done", Duration::from_secs(10)).await;
    assert_eq!(gate.status().await["drain"]["completed"], 1);
}

/// Hop-by-hop headers are not forwarded; Host and X-Forwarded-For are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = upstream::start().await;
    let gate = Gate::sidecar(up, &[]).await;
    let mut tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    tcp.write_all(
        b"GET /headers HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 8192];
    let n = tcp.read(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    let json = &text[text.find('{').expect("json body")..];
    let v: Value = serde_json::from_str(json.trim()).expect("json");
    let names: Vec<&str> = v["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for banned in [
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "proxy-connection",
    ] {
        assert!(!names.contains(&banned), "{banned} forwarded: {names:?}");
    }
    assert!(names.contains(&"x-kept"));
    assert_eq!(v["host"], "example.test");
    assert_eq!(v["xff"], "127.0.0.1");
}

/// Sends `GET path` on `sender` (one client connection) and returns the status and the body.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (StatusCode, String) {
    sender.ready().await.expect("client connection ready");
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Opens one keep-alive client connection to `addr`.
async fn client_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Requests on one client connection reuse an idle engine connection from the pool, and an
/// engine that closes its connection after a response (as one does at its keep-alive limit) is
/// reconnected to without the client noticing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_connections_are_reused_and_replaced_when_closed() {
    let up = upstream::start().await;
    let gate = Gate::sidecar(up, &[]).await;
    // The gate's end of the engine connection that carried the request.
    let conn_of = |body: &str| -> String {
        let v: Value = serde_json::from_str(body).expect("json");
        v["peer"].as_str().expect("peer").to_owned()
    };

    let mut a = client_conn(gate.proxy).await;
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (status, body) = get_on(&mut a, gate.proxy, "/conn").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        peers.push(conn_of(&body));
        // The pool takes the connection back just after the response ends; a request sent in
        // that instant may open a new one, which is allowed. A pause leaves no such instant.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "sequential requests opened new engine connections: {peers:?}"
    );

    let (status, body) = get_on(&mut a, gate.proxy, "/close").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "closing"));
    for _ in 0..3 {
        let (status, body) = get_on(&mut a, gate.proxy, "/conn").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_ne!(
            conn_of(&body),
            peers[0],
            "a closed engine connection was reused"
        );
    }
}

/// An HTTP/1.0 request without a Host header reaches the engine with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_host_gets_the_engine_authority() {
    let up = upstream::start().await;
    let gate = Gate::sidecar(up, &[]).await;
    let mut tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    tcp.write_all(b"GET /headers HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.expect("read");
    assert_eq!(text.split_whitespace().nth(1), Some("200"), "{text}");
    let json = &text[text.find('{').expect("json body")..];
    let v: Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(v["host"], up.to_string(), "{v}");
}

/// A malformed request fails alone with 400 while a stream on another connection goes on;
/// an unreachable upstream gives 502 and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_alone() {
    let gate = Gate::wrapping_sim(
        &[],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "20",
            "--ttft",
            "10ms",
        ],
    )
    .await;
    let stream = gate.open_stream(20);
    let mut tcp = TcpStream::connect(gate.proxy).await.expect("connect");
    tcp.write_all(b"BLAH \x01\x02 nonsense\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_finished(stream.await.expect("join"), 20);

    // Sidecar mode against a port nobody listens on.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--upstream", &dead]);
    let orphan = Gate::start(&args, None).await;
    let resp = send(post(
        &orphan.url("/v1/chat/completions"),
        chat_body(false, 1),
    ))
    .await
    .expect("resp");
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot reach"),
        "{v}"
    );
    assert_eq!(
        orphan
            .metric("lameduck_gate_requests_total{outcome=\"upstream_error\"}")
            .await,
        Some(1.0)
    );
    // Never ready: the engine is not healthy.
    let (s, body) = get(&orphan.admin_url("/ready")).await.expect("ready");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("starting"), "{body}");
}

/// Invalid flags are named in the error, with exit status 2.
#[tokio::test]
async fn invalid_flags_are_named() {
    for (args, needle) in [
        (
            vec![
                "gate",
                "--grace-period",
                "soon",
                "--upstream",
                "http://127.0.0.1:1",
            ],
            "--grace-period",
        ),
        (vec!["gate"], "--upstream"),
        (
            vec!["gate", "--upstream", "https://127.0.0.1:1"],
            "--upstream",
        ),
        (
            vec![
                "gate",
                "--upstream",
                "http://127.0.0.1:1",
                "--convergence-min",
                "9",
                "--convergence-max",
                "3",
            ],
            "--convergence-min",
        ),
        (
            vec![
                "gate",
                "--upstream",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:9",
                "--admin",
                "127.0.0.1:9",
            ],
            "--admin",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .args(&args)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A child that dies on its own makes the gate exit non-zero (its status, or 1 for 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_dying_on_its_own_exits_non_zero() {
    for (script, expected) in [("sleep 0.3; exit 3", 3), ("sleep 0.3; exit 0", 1)] {
        let upstream = format!("http://127.0.0.1:{}", free_port());
        let mut gate = Gate::start(&["--upstream", &upstream], Some(&["sh", "-c", script])).await;
        assert_eq!(gate.proc.wait_exit(LONG).await, expected, "{script}");
        let lines = gate.proc.lines();
        assert!(
            line_index(&lines, "Engine exited on its own").is_some(),
            "{lines:?}"
        );
    }
}

/// /ready is 503 during the engine's cold start and 200 after; a warm-up request that fails
/// keeps it 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_start_up_and_warm_up() {
    let gate = {
        let port = free_port();
        let upstream = format!("http://127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{port}");
        let mut args = FAST.to_vec();
        args.extend_from_slice(&["--upstream", &upstream]);
        Gate::start(
            &args,
            Some(&[
                bin(),
                "engine-sim",
                "--listen",
                &listen,
                "--cold-start",
                "1500ms",
            ]),
        )
        .await
    };
    let (s, body) = get(&gate.admin_url("/ready")).await.expect("ready");
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        get(&gate.admin_url("/live")).await.expect("live").0,
        StatusCode::OK
    );
    gate.wait_ready(LONG).await;

    let dir = std::env::temp_dir().join(format!("lameduck-warmup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let good = dir.join("good.json");
    std::fs::write(&good, chat_body(false, 2)).expect("write");
    for (path, expect_ready) in [("/v1/chat/completions", true), ("/no-such-path", false)] {
        let port = free_port();
        let upstream = format!("http://127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{port}");
        let mut args = FAST.to_vec();
        let good = good.to_string_lossy().into_owned();
        args.extend_from_slice(&[
            "--upstream",
            &upstream,
            "--warmup-request",
            &good,
            "--warmup-path",
            path,
        ]);
        let g = Gate::start(&args, Some(&[bin(), "engine-sim", "--listen", &listen])).await;
        if expect_ready {
            g.wait_ready(LONG).await;
            assert!(line_index(&g.proc.lines(), "Warm-up request succeeded").is_some());
        } else {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(g.status().await["upstream_healthy"], true);
            let (s, _) = get(&g.admin_url("/ready")).await.expect("ready");
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The marker file starts a drain (unready at once) without stopping the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_file_starts_a_drain() {
    let dir = std::env::temp_dir().join(format!("lameduck-marker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let marker = dir.join("draining");
    let _ = std::fs::remove_file(&marker);
    let marker_s = marker.to_string_lossy().into_owned();
    let mut gate = Gate::wrapping_sim(&["--drain-file", &marker_s], &[]).await;
    assert_eq!(gate.phase().await, "serving");
    std::fs::write(&marker, b"").expect("touch");
    gate.wait_phase("done", Duration::from_secs(10)).await;
    assert_eq!(
        get(&gate.admin_url("/ready")).await.expect("ready").0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(gate.status().await["drain"]["trigger"], "marker_file");
    assert_eq!(gate.status().await["child"]["running"], true);
    gate.proc.signal(Signal::SIGTERM);
    assert_eq!(gate.proc.wait_exit(LONG).await, 0);

    // A marker left over from before the start (a volume that outlived a container restart)
    // does not drain the new gate; touching it again does.
    let gate = Gate::wrapping_sim(&["--drain-file", &marker_s], &[]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gate.phase().await, "serving");
    assert!(
        gate.proc
            .lines()
            .iter()
            .any(|l| l.contains("exists at start"))
    );
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&marker)
        .and_then(|f| f.set_modified(later))
        .expect("touch");
    gate.wait_phase("done", Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sidecar mode: /drain blocks until the engine's stream is done; SIGTERM then exits at once.
/// With --admin-token, /drain needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_drain_and_token() {
    let sim = Proc::spawn(&[
        "engine-sim",
        "--listen",
        "127.0.0.1:0",
        "--tokens-per-second",
        "20",
        "--output-tokens",
        "30",
        "--ttft",
        "10ms",
    ]);
    let line = sim.wait_for_line("engine-sim listening", LONG).await;
    let sim_addr = line["addr"].as_str().expect("addr").to_owned();
    let upstream = format!("http://{sim_addr}");
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--upstream", &upstream, "--admin-token", "s3cret"]);
    let mut gate = Gate::start(&args, None).await;
    gate.wait_ready(LONG).await;

    let stream = gate.open_stream(30);
    gate.wait_streams(1).await;
    let (s, _) = get(&gate.admin_url("/drain")).await.expect("drain");
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(gate.phase().await, "serving");
    let req = Request::get(gate.admin_url("/drain"))
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = send(req).await.expect("drain");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let report: Value = serde_json::from_slice(&body).expect("report");
    // /drain answered only once the stream had completed.
    assert_eq!(
        (report["completed"].as_u64(), report["in_flight"].as_u64()),
        (Some(1), Some(0))
    );
    assert_finished(stream.await.expect("join"), 30);
    gate.proc.signal(Signal::SIGTERM);
    assert_eq!(gate.proc.wait_exit(Duration::from_secs(10)).await, 0);
    assert_eq!(gate.proc.report()["completed"], 1);
}

/// Every metric the README documents is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported() {
    let gate = Gate::wrapping_sim(
        &[],
        &[
            "--output-tokens",
            "3",
            "--ttft",
            "1ms",
            "--tokens-per-second",
            "1000",
        ],
    )
    .await;
    let r =
        read_stream(send(post(&gate.url("/v1/chat/completions"), chat_body(true, 3))).await).await;
    assert_finished(r, 3);
    // Non-streamed (fixed-length) responses count as ok too, over HTTP/1.1 and HEAD-like
    // empty bodies alike.
    let resp = send(post(&gate.url("/v1/chat/completions"), chat_body(false, 3)))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key(header::CONTENT_LENGTH));
    resp.into_body().collect().await.expect("body");
    let (s, _) = get(&gate.url("/v1/models")).await.expect("models");
    assert_eq!(s, StatusCode::OK);
    let (_, text) = get(&gate.admin_url("/metrics")).await.expect("metrics");
    for series in [
        "lameduck_gate_in_flight{kind=\"request\"}",
        "lameduck_gate_in_flight{kind=\"stream\"}",
        "lameduck_gate_in_flight{kind=\"upgraded\"}",
        "lameduck_gate_requests_total{outcome=\"ok\"}",
        "lameduck_gate_requests_total{outcome=\"truncated\"}",
        "lameduck_gate_requests_total{outcome=\"client_abort\"}",
        "lameduck_gate_drain_phase{phase=\"serving\"}",
        "lameduck_gate_drain_duration_seconds",
        "lameduck_gate_arrivals_after_unready_total",
        "lameduck_gate_propagation_lag_seconds",
        "lameduck_gate_ready",
        "lameduck_gate_upstream_healthy",
        "lameduck_gate_child_running",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "{series} missing:\n{text}"
        );
    }
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"ok\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"client_abort\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(
        gate.metric("lameduck_gate_drain_phase{phase=\"serving\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(gate.metric("lameduck_gate_ready").await, Some(1.0));
    let resp = send(get_req(&gate.admin_url("/metrics")))
        .await
        .expect("metrics");
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap_or("")
            .starts_with("application/openmetrics-text"),
        "the body is OpenMetrics text and must say so"
    );
    assert!(text.trim_end().ends_with("# EOF"));
}

/// With stderr gone (its reader closed), SIGTERM still drains, stops the engine and exits:
/// a failed log write must never take a signal handler down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_work_after_stderr_is_closed() {
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(bin())
        .args(["gate", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--upstream", &upstream, "--convergence-min", "200ms"])
        .args(["--", bin(), "engine-sim", "--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until the engine is up (its start line), then close our end of the pipe.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("engine-sim listening"))),
        "engine never started"
    );
    drop(lines);
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .expect("kill");
    let deadline = tokio::time::Instant::now() + LONG;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gate ignored SIGTERM with its stderr closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    // The engine is gone too (its port is free again).
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "engine still listening"
    );
}

/// An engine that aborts a stream on its own (engine-sim's `abort`, like vLLM without
/// --shutdown-timeout) ends it with `finish_reason: "abort"` + [DONE], a fake success; through
/// the gate the client gets the terminal error event instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_abort_is_not_passed_on_as_success() {
    let sim = Proc::spawn(&[
        "engine-sim",
        "--listen",
        "127.0.0.1:0",
        "--tokens-per-second",
        "20",
        "--output-tokens",
        "1000",
        "--ttft",
        "10ms",
        "--on-sigterm",
        "abort",
    ]);
    let line = sim.wait_for_line("engine-sim listening", LONG).await;
    let addr: std::net::SocketAddr = line["addr"].as_str().expect("addr").parse().expect("addr");
    let gate = Gate::sidecar(addr, &[]).await;
    let stream = gate.open_stream(1000);
    gate.wait_streams(1).await;
    sim.signal(Signal::SIGTERM);
    match stream.await.expect("join") {
        StreamEnd::TerminalError { kind, done } => {
            assert_eq!(kind, "engine_abort");
            assert!(done);
        }
        other => panic!("expected the terminal event, got {other:?}"),
    }
    assert_eq!(
        gate.metric("lameduck_gate_requests_total{outcome=\"upstream_error\"}")
            .await,
        Some(1.0)
    );
}

/// The typed client: /status reads into `GateStatus` (the engine's program name, never its
/// arguments), /drain without the token is refused by name, with it starts (not waiting)
/// and then ends (waiting) the drain, whose report reads into `GateReport`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_status_and_drains() {
    use lameduck_gate_api::{DrainAnswer, GateClient, GateError, Phase};
    let gate = Gate::wrapping_sim(
        &["--admin-token", "s3cret"],
        &[
            "--output-tokens",
            "20",
            "--tokens-per-second",
            "20",
            "--ttft",
            "1ms",
            "--model",
            "secret-model-name",
        ],
    )
    .await;
    let client = GateClient::new(gate.admin);
    let status = client.status().await.expect("status");
    assert_eq!(status.phase, Phase::Serving);
    assert!(status.ready && status.live && status.drain.is_none());
    let child = status.child.expect("wrapper mode has a child");
    assert_eq!(child.program, "lameduck");
    assert!(child.running && child.pid.is_some());
    let raw = serde_json::to_string(&gate.status().await).expect("json");
    assert!(
        !raw.contains("secret-model-name"),
        "arguments leaked: {raw}"
    );

    let stream = gate.open_stream(20);
    gate.wait_streams(1).await;
    assert_eq!(client.status().await.expect("status").in_flight_total(), 1);
    let refused = client.drain(None, false, LONG).await;
    assert!(
        matches!(refused, Err(GateError::Unauthorized { .. })),
        "{refused:?}"
    );
    let client = client.with_token(Some("s3cret".into()));
    match client.drain(None, false, LONG).await.expect("drain") {
        DrainAnswer::Accepted(a) => {
            assert_eq!(a.drain, "started");
            assert_eq!(a.report.expect("report").report.in_flight_at_start, 1);
        }
        other => panic!("{other:?}"),
    }
    match client.drain(None, true, LONG).await.expect("drain") {
        DrainAnswer::Done(r) => {
            assert_eq!((r.report.completed, r.report.in_flight), (1, 0));
            assert!(r.started_at_unix.is_some_and(|t| t > 1.7e9));
        }
        other => panic!("{other:?}"),
    }
    assert_finished(stream.await.expect("join"), 20);
    // Another program's port answers something that is not a gate's.
    let not_a_gate = GateClient::new(gate.proxy);
    let err = not_a_gate
        .status()
        .await
        .expect_err("the proxy port is no admin port");
    assert!(err.to_string().contains(&gate.proxy.to_string()), "{err}");
}
