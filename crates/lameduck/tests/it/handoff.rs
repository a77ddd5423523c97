//! Stream handoff (`--handoff-to`) with real processes: a gate wrapping engine-sim, a peer
//! engine-sim, the official OpenAI clients. A stream cut by the deadline continues on the
//! peer and the client receives exactly the text an uninterrupted run produces; when no peer
//! can finish it, the stream ends as before, with the terminal event.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::process::Command;

use crate::support::*;

/// The engines' flags: gate's engine, peer and reference draw the same lengths (same seed).
const SIM: &[&str] = &[
    "--seed",
    "7",
    "--output-tokens",
    "uniform:150-230",
    "--ttft",
    "10ms",
];

/// Starts `lameduck engine-sim` on a free port with SIM's flags and `extra`; returns it once
/// it accepts connections.
async fn sim(extra: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["engine-sim", "--listen", &listen];
    args.extend_from_slice(SIM);
    args.extend_from_slice(extra);
    let proc = Proc::spawn(&args);
    let addr: SocketAddr = listen.parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while get(&format!("http://{addr}/v1/models")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine-sim never listened: {:?}",
            proc.lines()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proc, addr)
}

/// A gate wrapping engine-sim (40 tokens/s) that hands off to `peer`.
async fn gate(peer: SocketAddr, extra: &[&str]) -> Gate {
    gate_at(peer, "40", extra).await
}

/// A gate wrapping engine-sim at `tokens_per_second` that hands off to `peer`.
async fn gate_at(peer: SocketAddr, tokens_per_second: &str, extra: &[&str]) -> Gate {
    let to = format!("http://{peer}");
    let mut args = vec!["--handoff-to", &to];
    args.extend_from_slice(extra);
    let mut sim_args = SIM.to_vec();
    sim_args.extend_from_slice(&["--tokens-per-second", tokens_per_second]);
    Gate::wrapping_sim(&args, &sim_args).await
}

/// Waits until no relay runs on `gate`: a relay's counters and report fields are final then
/// (the client may see its last bytes a moment before the relay has counted itself).
async fn settled(gate: &Gate) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gate.metric("lameduck_gate_relaying").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relays still running: {}",
            gate.status().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

/// Runs the OpenAI client of `lang` (python or node) for one streamed completion; returns
/// its JSON line.
fn client(
    lang: &str,
    base: String,
    api: &str,
    usage: bool,
    seed: u32,
) -> tokio::task::JoinHandle<Value> {
    let dir = clients_dir();
    let mut cmd = match lang {
        "python" => {
            let mut c = Command::new(
                std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| "python3".into()),
            );
            c.arg(dir.join("openai_handoff.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(dir.join("openai_handoff.mjs"));
            c
        }
    };
    cmd.args([
        base.as_str(),
        api,
        if usage { "1" } else { "0" },
        &seed.to_string(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let lang = lang.to_owned();
    tokio::spawn(async move {
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("the {lang} client did not finish in 60 s"))
            .unwrap_or_else(|e| panic!("cannot run the {lang} client: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "the {lang} client printed no JSON ({e}); install the clients with scripts/test: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    })
}

/// The eight client runs: both libraries, both endpoints, with and without usage.
fn cases() -> Vec<(&'static str, &'static str, bool, u32)> {
    let mut v = Vec::new();
    let mut seed = 100;
    for lang in ["python", "node"] {
        for api in ["chat", "completions"] {
            for usage in [false, true] {
                v.push((lang, api, usage, seed));
                seed += 1;
            }
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_by_the_deadline_complete_on_a_peer_identical_to_an_uninterrupted_run() {
    let (_peer_proc, peer) = sim(&["--tokens-per-second", "40"]).await;
    // The reference: the same requests, uninterrupted, on a fast engine with the same seed.
    let (_ref_proc, reference) = sim(&["--tokens-per-second", "5000"]).await;
    // 20 tokens/s here: every stream (at least 7.5 s) is still running at the deadline, however
    // long the clients took to start one after another on a busy machine.
    let gate = gate_at(peer, "20", &[]).await;

    let expected: Vec<Value> = {
        let runs: Vec<_> = cases()
            .into_iter()
            .map(|(lang, api, usage, seed)| {
                client(lang, format!("http://{reference}/v1"), api, usage, seed)
            })
            .collect();
        let mut v = Vec::new();
        for r in runs {
            v.push(r.await.expect("join"));
        }
        v
    };
    for e in &expected {
        assert_eq!(e["result"], "completed", "reference run: {e}");
    }

    let runs: Vec<_> = cases()
        .into_iter()
        .map(|(lang, api, usage, seed)| client(lang, gate.url("/v1"), api, usage, seed))
        .collect();
    gate.wait_streams(8).await;
    // A deadline 2 s away: every stream (150–230 tokens at 20/s) is cut mid-way.
    let (status, body) = get(&gate.admin_url("/drain?deadline=2s&wait=false"))
        .await
        .expect("drain");
    assert_eq!(status, 202, "{body}");

    for ((lang, api, usage, seed), (run, want)) in
        cases().into_iter().zip(runs.into_iter().zip(&expected))
    {
        let got = run.await.expect("join");
        let what = format!("{lang} {api} usage={usage} seed={seed}");
        assert_eq!(got["result"], "completed", "{what}: {got}");
        assert_eq!(
            got["text"], want["text"],
            "{what}: the text differs from an uninterrupted run"
        );
        assert_eq!(got["finish"], want["finish"], "{what}");
        assert_eq!(
            got["ids"].as_array().map(Vec::len),
            Some(1),
            "{what}: one response id: {got}"
        );
        if api == "chat" {
            assert_eq!(got["roles"], 1, "{what}: one role delta: {got}");
        }
        if usage {
            assert_eq!(got["usage"], want["usage"], "{what}: usage adds both parts");
        } else {
            assert_eq!(got["usage"], Value::Null, "{what}");
        }
    }

    settled(&gate).await;
    assert_eq!(
        gate.metric("lameduck_gate_handoffs_total{outcome=\"completed\"}")
            .await,
        Some(8.0)
    );
    assert_eq!(
        gate.metric("lameduck_gate_handoffs_total{outcome=\"fell_back\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(gate.metric("lameduck_gate_relaying").await, Some(0.0));
    let status = gate.status().await;
    let report = &status["drain"];
    assert_eq!(report["handed_off"], 8, "{status}");
    assert_eq!(report["handoffs_completed"], 8, "{status}");
    assert_eq!(report["truncated"], 0, "{status}");
}

/// Reads a raw SSE body: the concatenated content, the events, and how it ended.
fn parse_raw(body: &str) -> (String, Vec<Value>, StreamEnd) {
    let mut text = String::new();
    let mut events = Vec::new();
    for event in body.split("\n\n") {
        if let Some(data) = event.strip_prefix("data: ")
            && let Ok(v) = serde_json::from_str::<Value>(data)
        {
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
            events.push(v);
        }
    }
    (text, events, classify_sse(body))
}

async fn stream_text(url: String, seed: u32) -> String {
    let body = serde_json::json!({
        "model": "sim-llm",
        "messages": [{"role": "user", "content": format!("tell me a long story number {seed}")}],
        "stream": true,
        "seed": seed,
    })
    .to_string();
    let resp = send(post(&url, body)).await.expect("send");
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let b = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_engine_stops_and_the_gate_exits_once_the_relay_ended() {
    let (_peer_proc, peer) = sim(&["--tokens-per-second", "40"]).await;
    let (_ref_proc, reference) = sim(&["--tokens-per-second", "5000"]).await;
    // SIGTERM → deadline 3 s later; the hard stop 11 s after it leaves room for the relay. At
    // 20 tokens/s the stream (at least 7.5 s) is still running at the deadline.
    let mut gate = gate_at(peer, "20", &["--grace-period", "12", "--kill-margin", "9"]).await;
    let want = stream_text(format!("http://{reference}/v1/chat/completions"), 3).await;
    let run = tokio::spawn(stream_text(gate.url("/v1/chat/completions"), 3));
    gate.wait_streams(1).await;
    gate.proc.signal(Signal::SIGTERM);
    let got = run.await.expect("join");
    let (text, events, end) = parse_raw(&got);
    let (want_text, _, want_end) = parse_raw(&want);
    assert_eq!(end, want_end, "{got}");
    assert_eq!(text, want_text);
    assert_eq!(got.matches("[DONE]").count(), 1);
    let ids: std::collections::BTreeSet<_> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(gate.proc.wait_exit(Duration::from_secs(20)).await, 0);
    let report = gate.proc.report();
    assert_eq!(report["handed_off"], 1, "{report}");
    assert_eq!(report["handoffs_completed"], 1, "{report}");
    let lines = gate.proc.lines().join("\n");
    let engine_stopped = lines.find("Drained").expect("drained");
    let relay_ended = lines.find("Handoff ended").expect("relay ended");
    assert!(
        engine_stopped < relay_ended,
        "the engine is stopped while the relay runs"
    );
}

/// A long raw request through the gate whose stream is cut; returns how it ended and its
/// text.
async fn cut_stream(gate: &Gate, body: Value) -> tokio::task::JoinHandle<(StreamEnd, String)> {
    let req = post(&gate.url("/v1/chat/completions"), body.to_string());
    tokio::spawn(async move {
        let resp = send(req).await.expect("send");
        use http_body_util::BodyExt;
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        let s = String::from_utf8_lossy(&b).into_owned();
        let (text, _, end) = parse_raw(&s);
        (end, text)
    })
}

/// How a stream ends when no peer finishes it: the gate's terminal event, then `[DONE]`.
fn shutdown_error() -> StreamEnd {
    StreamEnd::TerminalError {
        kind: "server_shutdown".into(),
        done: true,
    }
}

fn chat(seed: u32, extra: Value) -> Value {
    let mut v = serde_json::json!({
        "model": "sim-llm",
        "messages": [{"role": "user", "content": format!("tell me a long story number {seed}")}],
        "stream": true,
        "seed": seed,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_peer_or_an_eligible_request_streams_end_as_before() {
    // Nothing listens at the peer's address.
    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let gate = gate(
        nobody,
        &["--handoff-max-body", "2KiB", "--handoff-timeout", "2s"],
    )
    .await;
    let eligible = cut_stream(&gate, chat(1, Value::Null)).await;
    let two_choices = cut_stream(&gate, chat(2, serde_json::json!({"n": 2}))).await;
    let big = cut_stream(
        &gate,
        chat(
            3,
            serde_json::json!({"messages": [{"role": "user", "content": "word ".repeat(1000)}]}),
        ),
    )
    .await;
    gate.wait_streams(3).await;
    get(&gate.admin_url("/drain?deadline=1s&wait=false"))
        .await
        .expect("drain");
    for (what, run) in [
        ("eligible", eligible),
        ("n=2", two_choices),
        ("too large", big),
    ] {
        let (end, _) = run.await.expect("join");
        assert_eq!(end, shutdown_error(), "{what}");
    }
    settled(&gate).await;
    let m = |s: &'static str| gate.metric(s);
    assert_eq!(
        m("lameduck_gate_handoffs_total{outcome=\"fell_back\"}").await,
        Some(1.0)
    );
    assert_eq!(
        m("lameduck_gate_handoff_attempts_total{result=\"refused\"}").await,
        Some(3.0)
    );
    assert_eq!(
        m("lameduck_gate_handoffs_skipped_total{reason=\"not_eligible\"}").await,
        Some(1.0)
    );
    assert_eq!(
        m("lameduck_gate_handoffs_skipped_total{reason=\"body_not_kept\"}").await,
        Some(1.0)
    );
    let report = &gate.status().await["drain"];
    assert_eq!(
        (report["handed_off"].as_u64(), report["truncated"].as_u64()),
        (Some(1), Some(2)),
        "{report}"
    );
    assert_eq!(report["handoffs_failed"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_peer_and_a_peer_dying_mid_way_fall_back_without_duplicating_text() {
    let (_ref_proc, reference) = sim(&["--tokens-per-second", "5000"]).await;
    // A peer still loading its model answers 503.
    let (_cold, cold) = sim(&["--cold-start", "1h"]).await;
    let refusing = gate(cold, &[]).await;
    // A peer that is killed once it has sent part of the continuation.
    let (mut dying_proc, dying) = sim(&["--tokens-per-second", "20"]).await;
    let dies = gate(dying, &[]).await;

    let want =
        parse_raw(&stream_text(format!("http://{reference}/v1/chat/completions"), 5).await).0;
    let a = cut_stream(&refusing, chat(5, Value::Null)).await;
    let b = cut_stream(&dies, chat(5, Value::Null)).await;
    refusing.wait_streams(1).await;
    dies.wait_streams(1).await;
    for g in [&refusing, &dies] {
        get(&g.admin_url("/drain?deadline=1s&wait=false"))
            .await
            .expect("drain");
    }
    // Once the relay runs, let the peer send part of the rest, then kill it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dies.metric("lameduck_gate_relaying").await != Some(1.0) {
        assert!(tokio::time::Instant::now() < deadline, "no relay started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    dying_proc.signal(Signal::SIGKILL);
    let _ = dying_proc.wait_exit(Duration::from_secs(10)).await;

    for (what, run, g) in [("refusing", a, &refusing), ("dying", b, &dies)] {
        let (end, text) = run.await.expect("join");
        assert_eq!(end, shutdown_error(), "{what}");
        assert!(
            want.starts_with(&text),
            "{what}: the text is not a prefix of the uninterrupted one:\n{text}\n{want}"
        );
        assert!(text.len() < want.len(), "{what}");
        settled(g).await;
        assert_eq!(
            g.metric("lameduck_gate_handoffs_total{outcome=\"fell_back\"}")
                .await,
            Some(1.0),
            "{what}"
        );
    }
    assert_eq!(
        refusing
            .metric("lameduck_gate_handoff_attempts_total{result=\"refused\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        dies.metric("lameduck_gate_handoff_attempts_total{result=\"failed\"}")
            .await,
        Some(1.0)
    );
}

/// Where handoff saves a request outright: the pod lives on, but its engine stops serving a
/// stream mid-way — it crashes (SIGKILL), or it aborts its streams on SIGTERM as vLLM does
/// (`finish_reason: "abort"`), which a sidecar's engine container gets from the kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_engine_crashes_or_aborts_mid_way_completes_on_a_peer() {
    let (_peer_proc, peer) = sim(&["--tokens-per-second", "40"]).await;
    let (_ref_proc, reference) = sim(&["--tokens-per-second", "5000"]).await;
    let to = format!("http://{peer}");
    for (how, signal) in [("crash", Signal::SIGKILL), ("abort", Signal::SIGTERM)] {
        let (mut engine_proc, engine) =
            sim(&["--tokens-per-second", "20", "--on-sigterm", "abort"]).await;
        let gate = Gate::sidecar(engine, &["--handoff-to", &to]).await;
        let want = stream_text(format!("http://{reference}/v1/chat/completions"), 9).await;
        let run = tokio::spawn(stream_text(gate.url("/v1/chat/completions"), 9));
        gate.wait_streams(1).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        engine_proc.signal(signal);
        let got = run.await.expect("join");
        let (text, _, end) = parse_raw(&got);
        let (want_text, _, want_end) = parse_raw(&want);
        assert_eq!(end, want_end, "{how}: {got}");
        assert_eq!(text, want_text, "{how}");
        assert_eq!(got.matches("[DONE]").count(), 1, "{how}");
        settled(&gate).await;
        assert_eq!(
            gate.metric("lameduck_gate_handoffs_total{outcome=\"completed\"}")
                .await,
            Some(1.0),
            "{how}"
        );
        let _ = engine_proc.wait_exit(Duration::from_secs(10)).await;
    }
}

/// The continuation request on the wire, as a recording peer receives it: the client's headers
/// (authorization included), the original messages plus the text so far as the assistant's
/// message to continue, `max_tokens` less what was sent; and the peer's events rewritten into
/// the client's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_continuation_request_carries_the_text_so_far_and_the_clients_headers() {
    let port = free_port();
    let record =
        std::env::temp_dir().join(format!("lameduck-peer-{}-{port}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&record);
    let python = std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let _peer = Command::new(python)
        .arg(clients_dir().join("fake_peer.py"))
        .arg(port.to_string())
        .arg(&record)
        .kill_on_drop(true)
        .spawn()
        .expect("start the fake peer");
    let peer: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(peer).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fake peer never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gate = gate_at(peer, "20", &[]).await;
    let body = chat(11, serde_json::json!({"max_tokens": 1000})).to_string();
    let req = http::Request::post(gate.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-secret")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let run = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let resp = send(req).await.expect("send");
        let b = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    });
    gate.wait_streams(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    get(&gate.admin_url("/drain?deadline=1s&wait=false"))
        .await
        .expect("drain");
    let got = run.await.expect("join");
    let (text, events, end) = parse_raw(&got);
    assert!(matches!(end, StreamEnd::Finished { .. }), "{end:?}: {got}");
    let before = text
        .strip_suffix("peer-continuation ")
        .unwrap_or_else(|| panic!("the peer's text does not end the stream: {text}"));
    assert!(!before.is_empty(), "nothing was sent before the handoff");
    // Every event carries the first replica's identity, not the peer's.
    assert!(
        events
            .iter()
            .all(|e| e["id"] != "chatcmpl-peer" && e["model"] == "sim-llm"),
        "{got}"
    );
    let roles = events
        .iter()
        .filter(|e| !e["choices"][0]["delta"]["role"].is_null())
        .count();
    assert_eq!(roles, 1, "{got}");

    let recorded = std::fs::read_to_string(&record).expect("the peer's record");
    let seen: Value =
        serde_json::from_str(recorded.lines().next().expect("one request")).expect("json");
    assert_eq!(seen["headers"]["authorization"], "Bearer client-secret");
    assert_eq!(seen["headers"]["lameduck-handoff"], "1");
    let b = &seen["body"];
    let msgs = b["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2, "{b}");
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["content"], before);
    assert_eq!(b["continue_final_message"], true);
    assert_eq!(b["add_generation_prompt"], false);
    let sent = u64::try_from(before.split_whitespace().count()).expect("count");
    assert_eq!(b["max_tokens"].as_u64(), Some(1000 - sent), "{b}");
    assert_eq!(b["seed"], 11);
    let _ = std::fs::remove_file(&record);
}

/// `--gateway`: the gate in front of the Service instead of in the pod. The client's
/// connection ends on the gateway, so a stream can outlive the pod that served it: the pod's
/// own gate ends it at its deadline (its terminal event), or the pod vanishes with its gate
/// and engine (a reclaimed node), and the gateway continues it on another replica. The client
/// receives exactly the text of an uninterrupted run, one `id` and one `[DONE]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_carries_a_stream_past_the_end_of_its_pod() {
    let (_peer_proc, peer) = sim(&["--tokens-per-second", "40"]).await;
    let (_ref_proc, reference) = sim(&["--tokens-per-second", "5000"]).await;
    let to = format!("http://{peer}");
    for (seed, how) in [(21, "deadline"), (22, "vanished")] {
        // A plain lameduck pod: the gate wraps the engine and has no handoff of its own. At 20
        // tokens/s its stream (at least 7.5 s) is still running when its end comes.
        let mut sim_args = SIM.to_vec();
        sim_args.extend_from_slice(&["--tokens-per-second", "20"]);
        let pod = Gate::wrapping_sim(&[], &sim_args).await;
        // The gateway's upstream stands for the Service; the peer is where the Service sends
        // the continuation once the pod has left it.
        let gateway = Gate::sidecar(pod.proxy, &["--gateway", "--handoff-to", &to]).await;
        let want = stream_text(format!("http://{reference}/v1/chat/completions"), seed).await;
        let run = tokio::spawn(stream_text(gateway.url("/v1/chat/completions"), seed));
        pod.wait_streams(1).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        match how {
            "deadline" => {
                get(&pod.admin_url("/drain?deadline=1s&wait=false"))
                    .await
                    .expect("drain the pod");
            }
            // Its gate and engine SIGKILLed: the connection to the gateway breaks.
            _ => drop(pod),
        }
        let got = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("{how}: the stream never ended"))
            .expect("join");
        let (text, events, end) = parse_raw(&got);
        let (want_text, _, want_end) = parse_raw(&want);
        assert!(!want_text.is_empty());
        assert_eq!(end, want_end, "{how}: {got}");
        assert_eq!(text, want_text, "{how}");
        assert_eq!(got.matches("[DONE]").count(), 1, "{how}: {got}");
        assert!(!got.contains("event: error"), "{how}: {got}");
        let ids: std::collections::BTreeSet<_> =
            events.iter().filter_map(|e| e["id"].as_str()).collect();
        assert_eq!(ids.len(), 1, "{how}: {ids:?}");
        settled(&gateway).await;
        assert_eq!(
            gateway
                .metric("lameduck_gate_handoffs_total{outcome=\"completed\"}")
                .await,
            Some(1.0),
            "{how}: {}",
            gateway.status().await
        );
    }
}

/// A gateway cannot wrap an engine: the gate says so and exits with the usage status.
#[test]
fn a_gateway_wraps_no_engine() {
    let out = std::process::Command::new(bin())
        .args([
            "gate",
            "--gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--",
            "true",
        ])
        .output()
        .expect("run the gate");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gateway") && err.contains("--upstream"),
        "{err}"
    );
}

/// The official OpenAI Python and Node clients behind a gateway, chat and completions, with
/// and without usage: their pod vanishes mid-stream (its gate and engine SIGKILLed) and each
/// still receives one complete completion, the text of an uninterrupted run, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_behind_a_gateway_outlive_their_pod() {
    let (_peer_proc, peer) = sim(&["--tokens-per-second", "40"]).await;
    let (_ref_proc, reference) = sim(&["--tokens-per-second", "5000"]).await;
    let mut sim_args = SIM.to_vec();
    sim_args.extend_from_slice(&["--tokens-per-second", "20"]);
    let pod = Gate::wrapping_sim(&[], &sim_args).await;
    let to = format!("http://{peer}");
    let gateway = Gate::sidecar(pod.proxy, &["--gateway", "--handoff-to", &to]).await;
    let cases = [
        ("python", "chat", true, 41),
        ("python", "completions", false, 42),
        ("node", "chat", false, 43),
        ("node", "completions", true, 44),
    ];
    let mut expected = Vec::new();
    for &(lang, api, usage, seed) in &cases {
        expected.push(
            client(lang, format!("http://{reference}/v1"), api, usage, seed)
                .await
                .expect("join"),
        );
    }
    let runs: Vec<_> = cases
        .iter()
        .map(|&(lang, api, usage, seed)| client(lang, gateway.url("/v1"), api, usage, seed))
        .collect();
    pod.wait_streams(cases.len() as u64).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(pod);
    for ((lang, api, usage, seed), (run, want)) in
        cases.into_iter().zip(runs.into_iter().zip(&expected))
    {
        let what = format!("{lang} {api} usage={usage} seed={seed}");
        assert_eq!(want["result"], "completed", "reference run: {want}");
        let got = run.await.expect("join");
        assert_eq!(got["result"], "completed", "{what}: {got}");
        assert_eq!(got["text"], want["text"], "{what}");
        assert_eq!(got["finish"], want["finish"], "{what}");
        assert_eq!(
            got["ids"].as_array().map(Vec::len),
            Some(1),
            "{what}: {got}"
        );
        if usage {
            assert_eq!(got["usage"], want["usage"], "{what}: usage adds both parts");
        }
    }
    settled(&gateway).await;
    assert_eq!(
        gateway
            .metric("lameduck_gate_handoffs_total{outcome=\"completed\"}")
            .await,
        Some(cases.len() as f64)
    );
}

/// The kubelet's way: a blocking `/drain` as the preStop hook, SIGTERM as soon as it returns,
/// SIGKILL when the grace period counted from the hook's start runs out. A relay still running
/// then must be ended by the gate with the terminal event before that SIGKILL: the gate counts
/// the grace period from the hook's start, not from the SIGTERM (which came after the
/// deadline here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_pre_stop_drain_relays_end_cleanly_before_the_kubelets_sigkill() {
    // A slow peer: the rest of the stream never fits in what is left after the deadline.
    let (_peer_proc, peer) = sim(&["--tokens-per-second", "4"]).await;
    let grace = 12;
    let mut gate = gate_at(
        peer,
        "10",
        &["--grace-period", &grace.to_string(), "--kill-margin", "2"],
    )
    .await;
    let run = cut_stream(&gate, chat(51, Value::Null)).await;
    gate.wait_streams(1).await;
    // The preStop hook: blocks until the drain is over (here, the deadline's handoff).
    let hook_start = tokio::time::Instant::now();
    let (status, _) = get(&gate.admin_url("/drain"))
        .await
        .expect("preStop /drain");
    assert_eq!(status, 200);
    gate.proc.signal(Signal::SIGTERM);
    // The kubelet's SIGKILL would come `grace` after the hook started; allow 3 s of slack on a
    // busy machine, far less than the grace period a SIGTERM-based count would add.
    let kill_at = hook_start + Duration::from_secs(grace + 3);
    let left = kill_at.saturating_duration_since(tokio::time::Instant::now());
    assert_eq!(gate.proc.wait_exit(left).await, 0);
    let (end, text) = run.await.expect("join");
    assert_eq!(
        end,
        shutdown_error(),
        "the relay ended with the terminal event"
    );
    assert!(!text.is_empty());
    let report = gate.proc.report();
    assert_eq!(report["handed_off"], 1, "{report}");
    assert_eq!(report["handoffs_failed"], 1, "{report}");
}
