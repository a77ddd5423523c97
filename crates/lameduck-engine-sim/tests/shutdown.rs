//! The `--on-sigterm` modes, with the shutdown handle standing in for SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn chat(stream: bool) -> serde_json::Value {
    json!({"stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_ends_streams_with_a_fake_success() {
    let sim = Sim::start(&["--on-sigterm", "abort", "--output-tokens", "100000"]).await;
    let addr = sim.addr;
    let mut sse = Sse::new(sim.post_json("/v1/chat/completions", chat(true)).await);
    sse.next_json().await; // role
    let tok = sse.next_json().await;
    assert!(tok["choices"][0]["delta"]["content"].is_string());
    let unary = tokio::spawn(async move {
        send(addr, "POST", "/v1/completions", Some(r#"{"prompt":"x"}"#)).await
    });
    sim.wait_metrics("both requests in flight", |m| {
        metric(m, "lameduck_engine_sim_in_flight") == Some(2.0)
    })
    .await;

    sim.handle.signal();

    let rest = sse.rest().await;
    let s = summarize(&rest, true);
    assert_eq!(s.finish_reason.as_deref(), Some("abort"), "{rest:?}");
    assert!(
        s.done_last,
        "an aborted stream still ends with [DONE]: {rest:?}"
    );
    let r = within("the unary response", unary).await.unwrap();
    assert_eq!(r.status(), 500);
    let v = json(r).await;
    assert_eq!(v["error"]["code"], 500);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );

    // The listener closed before the streams were ended.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener must be closed at once"
    );
    assert_eq!(sim.exit_status().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_closes_the_listener_before_in_flight_work_ends() {
    // A stream whose client does not read: the generator fills every buffer and blocks, so the
    // shutdown has to wait for it (up to its flush bound) after closing the listener.
    let sim = Sim::start(&["--time-scale", "1000000", "--output-tokens", "1000000"]).await;
    let addr = sim.addr;
    let r = sim.post_json("/v1/chat/completions", chat(true)).await;
    assert_eq!(r.status(), 200);
    let mut last = -1.0;
    within("the stream to stall on backpressure", async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t = metric(&sim.metrics().await, "lameduck_engine_sim_tokens_total").unwrap();
            if t > 0.0 && t == last {
                break;
            }
            last = t;
        }
    })
    .await;

    sim.handle.signal();
    within("the listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        !sim.task.is_finished(),
        "the stalled stream should still hold the exit"
    );
    drop(r); // the client leaves; nothing holds the exit any more
    assert_eq!(sim.exit_status().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_with_usage_reports_tokens_sent() {
    let sim = Sim::start(&["--output-tokens", "100000"]).await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut sse = Sse::new(sim.post_json("/v1/chat/completions", body).await);
    sse.next_json().await; // role
    sse.next_json().await; // token 0
    sim.handle.signal();
    let rest = sse.rest().await;
    let s = summarize(&rest, true);
    assert_eq!(s.finish_reason.as_deref(), Some("abort"));
    let usage = s.usage.expect("usage chunk");
    assert_eq!(usage["completion_tokens"], 1 + s.contents.len());
    assert!(s.done_last);
    assert_eq!(sim.exit_status().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_and_rejects_new_work() {
    // 10 tokens at 5/s: about two seconds per request, far longer than the checks below.
    let sim = Sim::start(&[
        "--on-sigterm",
        "drain",
        "--tokens-per-second",
        "5",
        "--output-tokens",
        "10",
    ])
    .await;
    let addr = sim.addr;
    let mut sse = Sse::new(sim.post_json("/v1/chat/completions", chat(true)).await);
    let first = sse.next_json().await; // role
    let unary = tokio::spawn(async move {
        send(
            addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat(false).to_string()),
        )
        .await
    });
    sim.wait_metrics("both requests in flight", |m| {
        metric(m, "lameduck_engine_sim_in_flight") == Some(2.0)
    })
    .await;

    sim.handle.signal();
    let m = sim
        .wait_metrics("shutting down", |m| {
            metric(m, "lameduck_engine_sim_shutting_down") == Some(1.0)
        })
        .await;
    assert_eq!(metric(&m, "lameduck_engine_sim_in_flight"), Some(2.0));

    // New work is refused, health stays up (as vLLM does), the listener stays open.
    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x"}))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        json(r).await,
        json!({"error":{"message":"server is shutting down","type":"server_shutdown","code":503}})
    );
    assert_eq!(sim.get("/health").await.status(), 200);

    let mut events = vec![first.to_string()];
    events.extend(sse.rest().await);
    let s = summarize(&events, true);
    assert_eq!(s.contents.len(), 10, "{events:?}");
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert!(s.done_last);
    let r = within("the unary response", unary).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["usage"]["completion_tokens"], 10);

    assert_eq!(sim.exit_status().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_aborts_what_is_left() {
    let sim = Sim::start(&[
        "--on-sigterm",
        "drain",
        "--drain-timeout",
        "300ms",
        "--output-tokens",
        "100000",
    ])
    .await;
    let mut sse = Sse::new(
        sim.post_json("/v1/completions", json!({"prompt": "x", "stream": true}))
            .await,
    );
    sse.next_json().await; // token 0
    sim.handle.signal();
    let rest = sse.rest().await;
    let s = summarize(&rest, false);
    assert_eq!(s.finish_reason.as_deref(), Some("abort"));
    assert!(s.done_last);
    assert_eq!(sim.exit_status().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let sim = Sim::start(&["--on-sigterm", "drain", "--output-tokens", "100000"]).await;
    let mut sse = Sse::new(sim.post_json("/v1/chat/completions", chat(true)).await);
    sse.next_json().await;
    sim.handle.signal();
    sim.wait_metrics("shutting down", |m| {
        metric(m, "lameduck_engine_sim_shutting_down") == Some(1.0)
    })
    .await;
    sim.handle.signal();
    assert_eq!(sim.exit_status().await, 143);
    assert_stream_broken(&mut sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_mode_drops_connections() {
    let sim = Sim::start(&["--on-sigterm", "exit", "--output-tokens", "100000"]).await;
    let mut sse = Sse::new(sim.post_json("/v1/chat/completions", chat(true)).await);
    sse.next_json().await;
    sim.handle.signal();
    assert_eq!(sim.exit_status().await, 143);
    assert_stream_broken(&mut sse).await;
}

/// The stream must end without a finish chunk or [DONE]: an error or a bare end of body.
async fn assert_stream_broken(sse: &mut Sse) {
    loop {
        match sse.next().await {
            Err(_) | Ok(None) => return,
            Ok(Some(e)) => {
                assert!(e != "[DONE]", "a dropped stream must not end with [DONE]");
                let v: serde_json::Value = serde_json::from_str(&e).unwrap();
                assert!(
                    v["choices"][0]["finish_reason"].is_null(),
                    "a dropped stream must not finish: {e}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_do_not_hold_the_exit() {
    let sim = Sim::start(&["--on-sigterm", "abort"]).await;
    // One idle keep-alive connection, left open after a request.
    let stream = tokio::net::TcpStream::connect(sim.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/health")
        .header("host", "sim")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);

    sim.handle.signal();
    // Well under the 5 s flush bound: the idle connection is closed, not waited for.
    let status = tokio::time::timeout(Duration::from_secs(4), sim.task)
        .await
        .expect("an idle connection held the exit")
        .unwrap()
        .unwrap();
    assert_eq!(status, 0);
    within("the client connection to close", conn)
        .await
        .unwrap()
        .unwrap();
}
