//! A load client for the benchmarks: holds N streamed chat completions open at once and
//! measures event delivery.
//!
//! ```text
//! cargo run --release -p lameduck-gate --example sse_load -- \
//!     URL STREAMS MAX_TOKENS TOKENS_PER_SECOND [RAMP_SECONDS]
//! ```
//!
//! Every stream is one HTTP/1.1 connection. The engine (engine-sim) paces token `i` at
//! `first + i / rate`; an event's *lateness* is how much later than that schedule it arrived,
//! measured from the stream's first event. Through a proxy, lateness minus the direct run's
//! lateness is the latency the proxy adds per event. Prints one JSON object.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Default)]
struct StreamResult {
    events: u64,
    lateness_us: Vec<u32>,
    ok: bool,
    error: Option<String>,
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: sse_load URL STREAMS MAX_TOKENS TOKENS_PER_SECOND [RAMP_SECONDS]");
        std::process::exit(2);
    }
    let url: hyper::Uri = args[0].parse()?;
    let streams: usize = args[1].parse()?;
    let max_tokens: u32 = args[2].parse()?;
    let rate: f64 = args[3].parse()?;
    let ramp: f64 = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let interval = Duration::from_secs_f64(1.0 / rate);

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(streams)
        .build_http();
    let body = serde_json::json!({
        "model": "sim-llm",
        "stream": true,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "benchmark"}],
    })
    .to_string();

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        // Spread stream starts over the ramp so events do not all fall on the same instant.
        let delay = Duration::from_secs_f64(ramp * i as f64 / streams as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut r = StreamResult::default();
            let req = hyper::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)));
            let req = match req {
                Ok(req) => req,
                Err(e) => {
                    r.error = Some(e.to_string());
                    return r;
                }
            };
            let resp = match client.request(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    r.error = Some(format!("{e:?}"));
                    return r;
                }
            };
            let mut body = resp.into_body();
            let mut first: Option<Instant> = None;
            let mut index = 0u32;
            let mut done = false;
            r.lateness_us.reserve(max_tokens as usize + 4);
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        r.error = Some(e.to_string());
                        return r;
                    }
                };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                let now = Instant::now();
                // Count complete events in this chunk; each is stamped with the chunk's arrival.
                let n = data.windows(2).filter(|w| w == b"\n\n").count() as u32;
                if data.windows(6).any(|w| w == b"[DONE]") {
                    done = true;
                }
                for _ in 0..n {
                    let f = *first.get_or_insert(now);
                    // Event 0 is the role chunk, sent with token 0 (event 1); event k ≥ 1 is
                    // token k − 1, due (k − 1) intervals after the first event.
                    let due = f + interval * index.saturating_sub(1);
                    let late = now.saturating_duration_since(due);
                    r.lateness_us
                        .push(late.as_micros().min(u32::MAX as u128) as u32);
                    index += 1;
                    r.events += 1;
                }
            }
            r.ok = done;
            r
        }));
    }
    let mut events = 0u64;
    let mut ok = 0usize;
    let mut errors = Vec::new();
    let mut lateness = Vec::new();
    for t in tasks {
        let r = t.await?;
        events += r.events;
        if r.ok {
            ok += 1;
        }
        if let Some(e) = r.error {
            errors.push(e);
        }
        // The first two events (role chunk, first token) define the anchor.
        lateness.extend(r.lateness_us.into_iter().skip(2));
    }
    let elapsed = started.elapsed().as_secs_f64();
    lateness.sort_unstable();
    errors.sort();
    errors.dedup();
    let out = serde_json::json!({
        "streams": streams,
        "streams_ok": ok,
        "events": events,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "events_per_second": (events as f64 / elapsed).round(),
        "lateness_us": {
            "p50": percentile(&lateness, 50.0),
            "p99": percentile(&lateness, 99.0),
            "p99.9": percentile(&lateness, 99.9),
        },
        "errors": errors.into_iter().take(5).collect::<Vec<_>>(),
    });
    println!("{out}");
    Ok(())
}
