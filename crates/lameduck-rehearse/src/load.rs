//! The load generator: open-loop Poisson arrivals of streamed chat completions, each on its
//! own connection to the balancer, each classified by how it ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lameduck_engine_sim::OutputTokens;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;

use crate::clock::Clock;

/// Most requests one run may make (rate × window); more is a typo.
pub const MAX_REQUESTS: usize = 50_000;

/// What load to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Mean arrivals per unscaled second.
    pub rate: f64,
    /// Arrivals happen during this long (unscaled) after the load starts.
    pub window: Duration,
    /// Output length of each request, in tokens (sent as `max_tokens`).
    pub lengths: OutputTokens,
    /// The `model` field.
    pub model: String,
    /// A stream that sends nothing for this long (unscaled) is given up as stalled.
    pub idle_timeout: Duration,
    /// Seed for arrivals and lengths: every setup of a run gets the same requests.
    pub seed: u64,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The whole stream, ending with a finish reason of `stop` or `length` and `[DONE]`.
    Ok,
    /// Turned away before the stream started: 503 (no ready endpoint, connection refused
    /// by the pod, or the server's own 503), or another error status.
    Refused,
    /// The connection broke: reset or closed before the answer, or mid-stream.
    Reset,
    /// The stream ended in order but incomplete: a terminal error event, no `[DONE]`, a
    /// finish reason like `abort`, or it stalled.
    Truncated,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Reset,
        Outcome::Truncated,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Truncated => "truncated",
        }
    }
}

/// One request, as the client saw it. Times are unscaled seconds since the run's start.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Sequence number.
    pub id: u32,
    /// When it was sent.
    pub start: f64,
    /// When the first token arrived.
    pub first_token: Option<f64>,
    /// When it ended.
    pub end: f64,
    /// How.
    pub outcome: Outcome,
    /// The pod the balancer chose (none when no endpoint was ready).
    pub pod: Option<String>,
    /// Tokens received.
    pub tokens: u32,
    /// Tokens asked for.
    pub expected: u32,
    /// What happened, in words.
    pub detail: String,
}

impl RequestRecord {
    /// Whether the stream said how it ended: a terminal error event or a finish reason.
    pub fn told_client(&self) -> bool {
        self.detail.starts_with(TERMINAL_EVENT) || self.detail.starts_with(FINISH_REASON)
    }
}

const TERMINAL_EVENT: &str = "terminal error event";
const FINISH_REASON: &str = "finish_reason";

impl RequestRecord {
    /// Time to first token, in unscaled seconds.
    pub fn ttft(&self) -> Option<f64> {
        self.first_token.map(|t| t - self.start)
    }
}

/// Live counts for the progress display.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests sent.
    pub sent: AtomicU32,
    /// Requests ended.
    pub ended: AtomicU32,
    /// Requests that ended other than ok.
    pub lost: AtomicU32,
}

/// The arrivals of a run: (unscaled offset from the load's start, tokens), deterministic in
/// the seed.
pub fn arrivals(spec: &LoadSpec) -> Result<Vec<(f64, u32)>, String> {
    if !(spec.rate.is_finite() && spec.rate > 0.0) {
        return Err(format!("--rate {}: must be greater than 0", spec.rate));
    }
    let expected = spec.rate * spec.window.as_secs_f64();
    if expected > MAX_REQUESTS as f64 {
        return Err(format!(
            "--rate {} over {} s would send about {expected:.0} requests; at most {MAX_REQUESTS} are allowed",
            spec.rate,
            spec.window.as_secs_f64()
        ));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let gap = Exp::new(spec.rate).map_err(|e| format!("--rate {}: {e}", spec.rate))?;
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += gap.sample(&mut rng);
        if t >= spec.window.as_secs_f64() || out.len() >= MAX_REQUESTS {
            return Ok(out);
        }
        out.push((t, spec.lengths.sample(&mut rng)));
    }
}

/// Sends the load, starting at unscaled time `start`, and returns every request's record
/// once all have ended.
pub async fn run(
    spec: Arc<LoadSpec>,
    plan: Vec<(f64, u32)>,
    lb: SocketAddr,
    clock: Clock,
    start: f64,
    counts: Arc<Counts>,
) -> Vec<RequestRecord> {
    let mut tasks = tokio::task::JoinSet::new();
    for (id, (offset, tokens)) in plan.into_iter().enumerate() {
        clock.sleep_until(start + offset).await;
        let spec = spec.clone();
        let counts = counts.clone();
        let id = u32::try_from(id).unwrap_or(u32::MAX);
        counts.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let r = one(id, tokens, &spec, lb, clock).await;
            counts.ended.fetch_add(1, Ordering::Relaxed);
            if r.outcome != Outcome::Ok {
                counts.lost.fetch_add(1, Ordering::Relaxed);
            }
            r
        });
    }
    let mut records = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            records.push(r);
        }
    }
    records.sort_by_key(|r| r.id);
    records
}

async fn one(id: u32, tokens: u32, spec: &LoadSpec, lb: SocketAddr, clock: Clock) -> RequestRecord {
    let mut r = RequestRecord {
        id,
        start: clock.now(),
        first_token: None,
        end: 0.0,
        outcome: Outcome::Ok,
        pod: None,
        tokens: 0,
        expected: tokens,
        detail: String::new(),
    };
    let (outcome, detail) = stream(&mut r, spec, lb, clock).await;
    r.outcome = outcome;
    r.detail = detail;
    r.end = clock.now();
    r
}

async fn stream(
    r: &mut RequestRecord,
    spec: &LoadSpec,
    lb: SocketAddr,
    clock: Clock,
) -> (Outcome, String) {
    let idle = clock.real(spec.idle_timeout);
    let tcp = match tokio::net::TcpStream::connect(lb).await {
        Ok(s) => s,
        Err(e) => return (Outcome::Refused, format!("cannot reach the balancer: {e}")),
    };
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) =
        match hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await {
            Ok(x) => x,
            Err(e) => return (Outcome::Reset, format!("handshake: {e}")),
        };
    tokio::spawn(conn);
    let body = serde_json::json!({
        "model": spec.model,
        "messages": [{"role": "user", "content": format!("rehearsal request {}", r.id)}],
        "stream": true,
        "max_tokens": r.expected,
    });
    let req = match http::Request::post("/v1/chat/completions")
        .header(http::header::HOST, lb.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::from(body.to_string())))
    {
        Ok(req) => req,
        Err(e) => return (Outcome::Refused, format!("cannot build the request: {e}")),
    };
    let resp = match tokio::time::timeout(idle, send.send_request(req)).await {
        Err(_) => {
            return (
                Outcome::Truncated,
                "no answer: stalled before the headers".into(),
            );
        }
        Ok(Err(e)) => {
            return (
                Outcome::Reset,
                format!("connection broke before the answer: {e}"),
            );
        }
        Ok(Ok(resp)) => resp,
    };
    r.pod = resp
        .headers()
        .get("x-rehearse-pod")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = resp.status();
    if status != http::StatusCode::OK {
        let flags = resp
            .headers()
            .get("x-lb-flags")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = match tokio::time::timeout(idle, resp.into_body().collect()).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
            _ => String::new(),
        };
        let text: String = text.chars().take(160).collect();
        let what = match flags.as_str() {
            "NR" => "no ready endpoint".to_owned(),
            "UF" => "the pod refused the connection".to_owned(),
            "UC" => "the pod closed the connection before answering".to_owned(),
            _ => format!("HTTP {}: {text}", status.as_u16()),
        };
        let outcome = if flags == "UC" {
            Outcome::Reset
        } else {
            Outcome::Refused
        };
        return (outcome, what);
    }
    let mut body = resp.into_body();
    let mut sse = Sse::default();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return (
                    Outcome::Truncated,
                    format!("stalled: nothing for {} s", spec.idle_timeout.as_secs_f64()),
                );
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return (Outcome::Reset, format!("connection broke mid-stream: {e}"));
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let before = r.tokens;
                    sse.feed(data, &mut r.tokens);
                    if before == 0 && r.tokens > 0 {
                        r.first_token = Some(clock.now());
                    }
                    // The answer is complete at [DONE], whatever happens to the connection
                    // afterwards.
                    if sse.done {
                        break;
                    }
                }
            }
        }
    }
    sse.verdict()
}

/// Just enough of an SSE reader for OpenAI chat-completion chunks.
#[derive(Debug, Default)]
struct Sse {
    buf: Vec<u8>,
    event: Option<String>,
    error: Option<String>,
    finish: Option<String>,
    done: bool,
}

impl Sse {
    fn feed(&mut self, data: &[u8], tokens: &mut u32) {
        self.buf.extend_from_slice(data);
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            self.line(line, tokens);
        }
    }

    fn line(&mut self, line: &str, tokens: &mut u32) {
        if line.is_empty() {
            self.event = None;
        } else if let Some(e) = line.strip_prefix("event:") {
            self.event = Some(e.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            let d = d.trim();
            if self.event.as_deref() == Some("error") {
                let v: serde_json::Value = serde_json::from_str(d).unwrap_or_default();
                let kind = v
                    .pointer("/error/type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("error");
                self.error = Some(kind.to_owned());
            } else if d == "[DONE]" {
                self.done = true;
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(d) {
                if let Some(e) = v.get("error") {
                    self.error = Some(
                        e.get("type")
                            .and_then(|t| t.as_str())
                            .unwrap_or("error")
                            .to_owned(),
                    );
                }
                let choice = v.pointer("/choices/0");
                if choice
                    .and_then(|c| c.pointer("/delta/content"))
                    .and_then(|c| c.as_str())
                    .is_some_and(|c| !c.is_empty())
                {
                    *tokens += 1;
                }
                if let Some(f) = choice
                    .and_then(|c| c.get("finish_reason"))
                    .and_then(|f| f.as_str())
                {
                    self.finish = Some(f.to_owned());
                }
            }
        }
    }

    fn verdict(&self) -> (Outcome, String) {
        if let Some(e) = &self.error {
            return (Outcome::Truncated, format!("{TERMINAL_EVENT} ({e})"));
        }
        match (&self.finish, self.done) {
            (Some(f), true) if f == "stop" || f == "length" => {
                (Outcome::Ok, format!("{FINISH_REASON} {f}"))
            }
            (Some(f), _) => (Outcome::Truncated, format!("{FINISH_REASON} {f}")),
            (None, true) => (Outcome::Truncated, "[DONE] without a finish reason".into()),
            (None, false) => (Outcome::Truncated, "ended without [DONE]".into()),
        }
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Outcome, String, u32) {
        let mut s = Sse::default();
        let mut tokens = 0;
        // Split mid-line to check the buffering.
        let (a, b) = text.split_at(text.len() / 2);
        s.feed(a.as_bytes(), &mut tokens);
        s.feed(b.as_bytes(), &mut tokens);
        let (o, d) = s.verdict();
        (o, d, tokens)
    }

    const CHUNK: &str =
        r#"data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;

    #[test]
    fn complete_stream_is_ok() {
        let end = r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        let text = format!("{CHUNK}\n\n{CHUNK}\r\n\r\n{end}\n\ndata: [DONE]\n\n");
        assert_eq!(read(&text).0, Outcome::Ok);
        assert_eq!(read(&text).2, 2);
    }

    #[test]
    fn fake_success_abort_is_truncated() {
        let end = r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"abort"}]}"#;
        let text = format!("{CHUNK}\n\n{end}\n\ndata: [DONE]\n\n");
        let (o, d, _) = read(&text);
        assert_eq!(o, Outcome::Truncated);
        assert!(d.contains("abort"), "{d}");
    }

    #[test]
    fn terminal_error_event_and_missing_done_are_truncated() {
        let text = format!(
            "{CHUNK}\n\nevent: error\ndata: {{\"error\":{{\"type\":\"server_shutdown\"}}}}\n\ndata: [DONE]\n\n"
        );
        let (o, d, _) = read(&text);
        assert_eq!(o, Outcome::Truncated);
        assert!(d.contains("server_shutdown"), "{d}");
        assert_eq!(read(&format!("{CHUNK}\n\n")).0, Outcome::Truncated);
    }

    #[test]
    fn arrivals_are_deterministic_and_near_the_rate() {
        let spec = LoadSpec {
            rate: 5.0,
            window: Duration::from_secs(200),
            lengths: "uniform:10-20".parse().expect("dist"),
            model: "m".into(),
            idle_timeout: Duration::from_secs(30),
            seed: 9,
        };
        let a = arrivals(&spec).expect("arrivals");
        assert_eq!(a, arrivals(&spec).expect("arrivals"));
        assert!((800..1200).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(a.iter().all(|(t, n)| *t < 200.0 && (10..=20).contains(n)));
        let huge = LoadSpec { rate: 1e6, ..spec };
        assert!(arrivals(&huge).is_err());
    }

    #[test]
    fn quantiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
