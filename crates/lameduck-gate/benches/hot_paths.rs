//! Microbenchmarks of the gate's per-request and per-event work.
//!
//! `cargo bench -p lameduck-gate --bench hot_paths`

use bytes::Bytes;
use clap::Parser;
use divan::{Bencher, black_box};
use http::header::{HeaderMap, HeaderValue};
use lameduck_gate::GateArgs;
use lameduck_gate::body::SseFramer;
use lameduck_gate::metrics::Kind;
use lameduck_gate::proxy::strip_hop_by_hop;
use lameduck_gate::state::Shared;
use lameduck_timeline::{DrainConfig, DrainMachine, Outcome};

fn main() {
    divan::main();
}

/// One OpenAI chat chunk as an engine sends it.
const EVENT: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1795403085,\"model\":\"sim-llm\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"token \"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// A whole event per chunk (the common case: zero-copy pass-through).
#[divan::bench]
fn sse_framer_whole_event(bencher: Bencher) {
    let chunk = Bytes::from_static(EVENT.as_bytes());
    let mut framer = SseFramer::default();
    bencher.bench_local(|| black_box(framer.push(black_box(chunk.clone()))));
}

/// An event split in two chunks (held back, then joined).
#[divan::bench]
fn sse_framer_split_event(bencher: Bencher) {
    let (a, b) = EVENT.split_at(100);
    let (a, b) = (
        Bytes::from_static(a.as_bytes()),
        Bytes::from_static(b.as_bytes()),
    );
    let mut framer = SseFramer::default();
    bencher.bench_local(|| {
        black_box(framer.push(black_box(a.clone())));
        black_box(framer.push(black_box(b.clone())))
    });
}

/// The per-event check for an engine's fake-success abort (on an ordinary event).
#[divan::bench]
fn sse_abort_check(bencher: Bencher) {
    let chunk = Bytes::from_static(EVENT.as_bytes());
    bencher.bench_local(|| black_box(lameduck_gate::body::aborted_event_start(black_box(&chunk))));
}

/// What `--handoff-to` adds per event of an eligible stream: following it (the text so far
/// grows, so a fresh tracker is used every 1,000 events).
#[divan::bench]
fn handoff_tracker_observe(bencher: Bencher) {
    use lameduck_gate::handoff::{Api, Tracker};
    let chunk = Bytes::from_static(EVENT.as_bytes());
    let mut tracker = Tracker::new(Api::Chat);
    let mut n = 0u32;
    bencher.bench_local(|| {
        n += 1;
        if n % 1000 == 0 {
            tracker = Tracker::new(Api::Chat);
        }
        tracker.observe(black_box(&chunk));
    });
}

fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "inference.example.com"),
        ("user-agent", "OpenAI/Python 1.54.0"),
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
        ("authorization", "Bearer sk-xxxxxxxxxxxxxxxxxxxx"),
        ("content-length", "182"),
        ("connection", "keep-alive"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

/// Request headers as a typical client sends them.
#[divan::bench]
fn strip_hop_by_hop_typical(bencher: Bencher) {
    let h = typical_headers();
    bencher
        .with_inputs(|| h.clone())
        .bench_local_values(|mut h| {
            strip_hop_by_hop(&mut h, false);
            h
        });
}

/// Headers with a `Connection` header naming extra hop-by-hop headers.
#[divan::bench]
fn strip_hop_by_hop_listed(bencher: Bencher) {
    let mut h = typical_headers();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-trace, x-debug"),
    );
    h.insert("x-trace", HeaderValue::from_static("1"));
    h.insert("x-debug", HeaderValue::from_static("1"));
    bencher
        .with_inputs(|| h.clone())
        .bench_local_values(|mut h| {
            strip_hop_by_hop(&mut h, false);
            h
        });
}

/// The drain machine's bookkeeping for one request (start + finish).
#[divan::bench]
fn machine_request_start_finish(bencher: Bencher) {
    let mut m = DrainMachine::new(DrainConfig::default());
    let mut t = std::time::Duration::ZERO;
    bencher.bench_local(|| {
        t += std::time::Duration::from_nanos(100);
        black_box(m.request_started(t));
        m.request_finished(t, Outcome::Ok);
    });
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    gate: GateArgs,
}

fn limits() -> lameduck_gate::state::Limits {
    lameduck_gate::limits::derive(1 << 20, None, None)
}

/// The gate's full in-flight accounting for one request: clock, mutex, machine, metrics.
#[divan::bench]
fn shared_admit_finish(bencher: Bencher) {
    let config = lameduck_gate::Config::from_args(
        Cli::parse_from(["gate", "--upstream", "http://127.0.0.1:1"]).gate,
    )
    .expect("config");
    let shared = Shared::new(config, limits());
    bencher.bench_local(|| {
        black_box(shared.admit(Kind::Stream));
        shared.finish(Kind::Stream, Outcome::Ok);
    });
}

/// The same from two threads at once (contention on the machine's mutex).
#[divan::bench(threads = 2)]
fn shared_admit_finish_2_threads(bencher: Bencher) {
    use std::sync::OnceLock;
    static SHARED: OnceLock<std::sync::Arc<Shared>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        let config = lameduck_gate::Config::from_args(
            Cli::parse_from(["gate", "--upstream", "http://127.0.0.1:1"]).gate,
        )
        .expect("config");
        Shared::new(config, limits())
    });
    bencher.bench(|| {
        black_box(shared.admit(Kind::Stream));
        shared.finish(Kind::Stream, Outcome::Ok);
    });
}
