//! The simulator's HTTP API over real loopback sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const FAST: &[&str] = &["--time-scale", "100"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_completion() {
    let sim = Sim::start(&["--time-scale", "100", "--output-tokens", "1000"]).await;
    let r = sim
        .post_json(
            "/v1/chat/completions",
            json!({"model": "my-model", "stream": true, "max_tokens": 25,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "three word prompt"}]}),
        )
        .await;
    let mut sse = Sse::new(r);
    let first = sse.next_json().await;
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "my-model");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(first["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(first["created"].as_u64().unwrap() > 1_600_000_000);
    let mut events = vec![first.to_string()];
    events.extend(sse.rest().await);
    let s = summarize(&events, true);
    assert_eq!(s.contents.len(), 25, "{events:?}");
    assert!(s.contents.iter().all(|c| c.ends_with(' ') && c.len() > 1));
    assert_eq!(s.finish_reason.as_deref(), Some("length"));
    assert_eq!(
        s.usage,
        Some(json!({"prompt_tokens": 3, "completion_tokens": 25, "total_tokens": 28}))
    );
    assert!(s.done_last);
    assert!(s.ids.iter().all(|id| *id == s.ids[0]), "one id per stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_completion_stops_naturally_without_usage() {
    let sim = Sim::start(&["--time-scale", "100", "--output-tokens", "7"]).await;
    let r = sim
        .post_json(
            "/v1/completions",
            json!({"prompt": "hi", "stream": true, "max_tokens": 100}),
        )
        .await;
    let events = Sse::new(r).rest().await;
    let s = summarize(&events, false);
    assert_eq!(s.contents.len(), 7, "{events:?}");
    assert_eq!(s.finish_reason.as_deref(), Some("stop"));
    assert_eq!(s.usage, None);
    assert!(s.done_last);
    assert!(s.ids[0].starts_with("cmpl-"));
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["model"], "sim-llm", "the default model is echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_follows_ttft_tokens_per_second_and_time_scale() {
    use std::time::Instant;
    // Unscaled this request takes 2 s + 4 × 0.5 s = 4 s; at --time-scale 20, 0.2 s.
    let sim = Sim::start(&[
        "--ttft",
        "2s",
        "--tokens-per-second",
        "2",
        "--output-tokens",
        "5",
        "--time-scale",
        "20",
    ])
    .await;
    let t0 = Instant::now();
    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x", "stream": true}))
        .await;
    let mut sse = Sse::new(r);
    sse.next_json().await;
    let first = t0.elapsed();
    let rest = sse.rest().await;
    let total = t0.elapsed();
    assert_eq!(summarize(&rest, false).contents.len(), 4);
    // Lower bounds are exact (timers never fire early); upper bounds only catch a missing scale.
    assert!(first >= Duration::from_millis(100), "ttft {first:?}");
    assert!(total >= Duration::from_millis(200), "total {total:?}");
    assert!(
        total < Duration::from_secs(3),
        "time scale not applied: {total:?}"
    );

    // Non-streaming answers when the last token would have been streamed.
    let t0 = Instant::now();
    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x"}))
        .await;
    assert_eq!(r.status(), 200);
    let total = t0.elapsed();
    assert!(total >= Duration::from_millis(200), "total {total:?}");
    assert!(
        total < Duration::from_secs(3),
        "time scale not applied: {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_stream() {
    let sim = Sim::start(FAST).await;
    let r = send_h2(
        sim.addr,
        "/v1/chat/completions",
        r#"{"stream":true,"max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(r.version(), http::Version::HTTP_2);
    let events = Sse::new(r).rest().await;
    let s = summarize(&events, true);
    assert_eq!(s.contents.len(), 5);
    assert_eq!(s.finish_reason.as_deref(), Some("length"));
    assert!(s.done_last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_responses() {
    let sim = Sim::start(&["--time-scale", "100", "--output-tokens", "12"]).await;
    let v = json(
        sim.post_json(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a b"}], "max_completion_tokens": 4}),
        )
        .await,
    )
    .await;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sim-llm");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 4, "{content:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );

    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x", "model": "other"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = json(r).await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "other");
    assert_eq!(
        v["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        12
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_lengths_are_reproducible() {
    async fn lengths(seed: &str) -> Vec<u64> {
        let sim = Sim::start(&[
            "--time-scale",
            "1000",
            "--output-tokens",
            "uniform:1-400",
            "--seed",
            seed,
        ])
        .await;
        let mut out = Vec::new();
        for _ in 0..4 {
            let v = json(
                sim.post_json("/v1/completions", json!({"prompt": "x"}))
                    .await,
            )
            .await;
            out.push(v["usage"]["completion_tokens"].as_u64().unwrap());
        }
        out
    }
    let a = lengths("7").await;
    assert_eq!(a, lengths("7").await);
    assert_ne!(a, lengths("8").await);
    assert!(a.iter().all(|n| (1..=400).contains(n)), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_unknown_routes() {
    let sim = Sim::start(&["--model", "llama-sim"]).await;
    let r = sim.get("/v1/models").await;
    assert_eq!(r.status(), 200);
    let v = json(r).await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "llama-sim");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "lameduck");
    assert!(v["data"][0]["created"].is_u64());

    let r = sim.get("/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(text(r).await, "");

    let r = sim.get("/nope").await;
    assert_eq!(r.status(), 404);
    let v = json(r).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("/nope"));

    let r = sim.get("/v1/chat/completions").await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = sim.post("/health", "").await;
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let sim = Sim::start(FAST).await;
    let r = sim.post("/v1/chat/completions", "{not json").await;
    assert_eq!(r.status(), 400);
    let v = json(r).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));
    assert_eq!(v["error"]["code"], Value::Null);

    let r = sim.post("/v1/chat/completions", r#"{"model":"x"}"#).await;
    assert_eq!(r.status(), 400);
    let v = json(r).await;
    assert_eq!(v["error"]["param"], "messages");

    let r = sim.post("/v1/completions", r#"{"messages":[]}"#).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"]["param"], "prompt");

    let big = format!(
        r#"{{"prompt":"{}"}}"#,
        "a".repeat(lameduck_engine_sim::MAX_BODY_BYTES)
    );
    let r = sim.post("/v1/completions", &big).await;
    assert_eq!(r.status(), 413);

    // A bad request fails alone: the server still answers.
    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x", "max_tokens": 2}))
        .await;
    assert_eq!(r.status(), 200);

    let m = sim.metrics().await;
    assert_eq!(requests(&m, "chat_completions", "bad_request"), 2.0);
    assert_eq!(requests(&m, "completions", "bad_request"), 2.0);
    assert_eq!(requests(&m, "completions", "ok"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_tokens() {
    let sim = Sim::start(FAST).await;
    let m = sim.metrics().await;
    assert_eq!(metric(&m, "lameduck_engine_sim_in_flight"), Some(0.0));
    assert_eq!(metric(&m, "lameduck_engine_sim_shutting_down"), Some(0.0));
    assert_eq!(metric(&m, "lameduck_engine_sim_tokens_total"), Some(0.0));
    assert_eq!(requests(&m, "chat_completions", "ok"), 0.0);

    let r = sim
        .post_json(
            "/v1/chat/completions",
            json!({"stream": true, "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    Sse::new(r).rest().await;
    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x", "max_tokens": 3}))
        .await;
    assert_eq!(r.status(), 200);
    let m = sim
        .wait_metrics("both requests counted", |m| {
            requests(m, "chat_completions", "ok") == 1.0
        })
        .await;
    assert_eq!(requests(&m, "completions", "ok"), 1.0);
    assert_eq!(metric(&m, "lameduck_engine_sim_tokens_total"), Some(12.0));
    assert_eq!(metric(&m, "lameduck_engine_sim_in_flight"), Some(0.0));
    for outcome in ["aborted", "rejected", "bad_request", "client_abort"] {
        assert_eq!(requests(&m, "chat_completions", outcome), 0.0, "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_answers_503_then_200() {
    let sim = Sim::start(&["--cold-start", "1s"]).await;
    let r = sim.get("/health").await;
    assert_eq!(r.status(), 503, "health must fail while starting");
    let r = sim
        .post_json("/v1/completions", json!({"prompt": "x"}))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(json(r).await["error"]["code"], 503);
    within("health to turn 200", async {
        while sim.get("/health").await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let m = sim.metrics().await;
    assert_eq!(requests(&m, "completions", "rejected"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_stops_generation() {
    let sim = Sim::start(&["--time-scale", "100", "--output-tokens", "1000000"]).await;
    let r = sim
        .post_json(
            "/v1/chat/completions",
            json!({"stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let mut sse = Sse::new(r);
    sse.next_json().await; // role
    sse.next_json().await; // first token
    drop(sse); // closes the connection: the client goes away mid-stream
    let m = sim
        .wait_metrics("the generation to stop", |m| {
            requests(m, "chat_completions", "client_abort") == 1.0
        })
        .await;
    assert_eq!(metric(&m, "lameduck_engine_sim_in_flight"), Some(0.0));
    // Tokens stop growing once the request is gone.
    let t1 = metric(&m, "lameduck_engine_sim_tokens_total").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t2 = metric(&sim.metrics().await, "lameduck_engine_sim_tokens_total").unwrap();
    assert_eq!(t1, t2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams() {
    let sim = Sim::start(FAST).await;
    let addr = sim.addr;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let body = json!({"stream": true, "max_tokens": 20 + i % 7,
                                  "messages": [{"role": "user", "content": "x"}]});
                let r = send(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body.to_string()),
                )
                .await;
                let s = summarize(&Sse::new(r).rest().await, true);
                assert_eq!(s.contents.len(), 20 + i % 7);
                assert!(s.done_last);
            })
        })
        .collect();
    for t in tasks {
        within("a concurrent stream", t).await.unwrap();
    }
    let m = sim.metrics().await;
    assert_eq!(requests(&m, "chat_completions", "ok"), 200.0);
}

/// The performance target: 1,000 concurrent streams at 50 tokens/s in real time. Ignored by
/// default (it takes ~6 s and wants an otherwise idle machine); run with
/// `cargo test -p lameduck-engine-sim --release -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test; run explicitly"]
async fn thousand_streams_at_fifty_tokens_per_second() {
    let sim = Sim::start(&["--output-tokens", "250"]).await;
    let addr = sim.addr;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn(async move {
                let body = json!({"stream": true, "messages": [{"role": "user", "content": "x"}]});
                let r = send(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body.to_string()),
                )
                .await;
                let s = summarize(&Sse::new(r).rest().await, true);
                assert_eq!(s.contents.len(), 250);
                assert!(s.done_last);
            })
        })
        .collect();
    for t in tasks {
        within("a stream", t).await.unwrap();
    }
    // Ideal: 0.2 s + 249 / 50 s ≈ 5.2 s. Allow for the client sharing the same two cores.
    let took = started.elapsed();
    eprintln!("1000 streams x 250 tokens took {took:?}");
    assert!(took < Duration::from_secs(9), "took {took:?}");
}
