//! A tiny client toolkit over real loopback sockets for the simulator's integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck_engine_sim::{Config, Error, ShutdownHandle, bind};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Generous bound on any single step; only hit when something is broken.
pub const STEP: Duration = Duration::from_secs(10);

pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A simulator running in-process on an ephemeral loopback port.
pub struct Sim {
    pub addr: SocketAddr,
    pub handle: ShutdownHandle,
    pub task: JoinHandle<Result<i32, Error>>,
}

impl Sim {
    pub async fn start(args: &[&str]) -> Sim {
        let mut config = Config::try_from_args(args).unwrap();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let server = bind(config).await.unwrap();
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let task = tokio::spawn(server.serve());
        Sim { addr, handle, task }
    }

    /// Waits for `serve` to return and gives its exit status.
    pub async fn exit_status(self) -> i32 {
        within("serve to return", self.task).await.unwrap().unwrap()
    }

    pub async fn get(&self, path: &str) -> Response<Incoming> {
        send(self.addr, "GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Response<Incoming> {
        send(self.addr, "POST", path, Some(body)).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Response<Incoming> {
        self.post(path, &body.to_string()).await
    }

    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status(), 200);
        text(r).await
    }

    /// Polls /metrics until `pred` holds.
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        within(what, async {
            loop {
                let m = self.metrics().await;
                if pred(&m) {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

/// The value of one sample line of the metrics text, e.g. `lameduck_engine_sim_in_flight`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

pub fn requests(text: &str, endpoint: &str, outcome: &str) -> f64 {
    let series = format!(
        r#"lameduck_engine_sim_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}}"#
    );
    metric(text, &series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Response<Incoming> {
    within("request", async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .unwrap();
        sender.send_request(req).await.unwrap()
    })
    .await
}

/// One request over cleartext HTTP/2 with prior knowledge.
pub async fn send_h2(addr: SocketAddr, path: &str, body: &str) -> Response<Incoming> {
    within("h2 request", async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        sender.send_request(req).await.unwrap()
    })
    .await
}

pub async fn text(r: Response<Incoming>) -> String {
    let b = within("body", r.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

pub async fn json(r: Response<Incoming>) -> Value {
    let t = text(r).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t:?}"))
}

/// Reads server-sent events from a response body.
pub struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

impl Sse {
    pub fn new(r: Response<Incoming>) -> Sse {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        Sse {
            body: r.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event's data; `Ok(None)` when the body ended cleanly, `Err` when the connection
    /// broke.
    pub async fn next(&mut self) -> Result<Option<String>, hyper::Error> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let event = String::from_utf8(event).unwrap();
                let data = event
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {event:?}"));
                return Ok(Some(data.trim_end_matches('\n').to_owned()));
            }
            match within("next stream frame", self.body.frame()).await {
                None => {
                    assert!(self.buf.is_empty(), "partial event at end: {:?}", self.buf);
                    return Ok(None);
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event, which must exist, as JSON.
    pub async fn next_json(&mut self) -> Value {
        let data = self.next().await.unwrap().expect("stream ended early");
        serde_json::from_str(&data).unwrap_or_else(|e| panic!("not JSON ({e}): {data:?}"))
    }

    /// Every remaining event, until the body ends cleanly.
    pub async fn rest(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await.unwrap() {
            out.push(e);
        }
        out
    }
}

/// A summary of a finished stream's events (after any already consumed).
#[derive(Debug)]
pub struct Summary {
    pub contents: Vec<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub done_last: bool,
    pub ids: Vec<String>,
}

pub fn summarize(events: &[String], chat: bool) -> Summary {
    let mut s = Summary {
        contents: Vec::new(),
        finish_reason: None,
        usage: None,
        done_last: events.last().map(String::as_str) == Some("[DONE]"),
        ids: Vec::new(),
    };
    assert_eq!(
        events.iter().filter(|e| *e == "[DONE]").count(),
        usize::from(s.done_last),
        "[DONE] must be last and only once: {events:?}"
    );
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        s.ids.push(v["id"].as_str().unwrap().to_owned());
        assert_eq!(
            v["object"],
            if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            }
        );
        let choices = v["choices"].as_array().unwrap();
        if choices.is_empty() {
            assert!(s.usage.is_none(), "two usage chunks");
            s.usage = Some(v["usage"].clone());
            continue;
        }
        assert!(s.usage.is_none(), "choices after usage: {events:?}");
        let c = &choices[0];
        assert!(
            s.finish_reason.is_none(),
            "chunk after the finish chunk: {events:?}"
        );
        if let Some(r) = c["finish_reason"].as_str() {
            s.finish_reason = Some(r.to_owned());
            continue;
        }
        let piece = if chat {
            if c["delta"].get("role").is_some() {
                assert_eq!(c["delta"]["role"], "assistant");
                assert!(s.contents.is_empty(), "role chunk must come first");
                continue;
            }
            c["delta"]["content"].as_str()
        } else {
            c["text"].as_str()
        };
        s.contents.push(piece.unwrap().to_owned());
    }
    s
}
