//! Response bodies: local answers, and proxied bodies that stream through untouched while
//! counting the request as in flight, ending cleanly at the deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use lameduck_timeline::Outcome;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::conn::ConnCtl;
use crate::handoff::{Capture, Handoff};
use crate::metrics::Kind;
use crate::quiet::Quiet;
use crate::state::Shared;

/// The error type of gate bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts one admitted request as in flight until dropped; reports its outcome then.
///
/// Dropping without an explicit outcome means the client went away first.
#[derive(Debug)]
pub struct Guard {
    shared: Arc<Shared>,
    kind: Kind,
    outcome: Outcome,
    conn: Option<Arc<ConnCtl>>,
    grpc: bool,
}

impl Guard {
    /// A guard for a request that was admitted (and counted) as `kind`, on the client
    /// connection `conn` (whose idle time starts when its last request ends).
    pub fn new(shared: Arc<Shared>, kind: Kind, conn: Option<Arc<ConnCtl>>) -> Self {
        if let Some(c) = &conn {
            c.request_started();
        }
        Guard {
            shared,
            kind,
            outcome: Outcome::ClientAbort,
            conn,
            grpc: false,
        }
    }

    /// Marks the request as a gRPC call (also counted in `grpc_calls_total`).
    pub fn set_grpc(&mut self) {
        self.grpc = true;
    }

    /// Records how the request ended (applied on drop).
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Changes the kind counted in the in-flight gauge.
    pub fn set_kind(&mut self, kind: Kind) {
        self.shared.rekind(self.kind, kind);
        self.kind = kind;
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Hands the client connection's busy count over to the caller (a handoff's relay, which
    /// goes on writing to the connection after the request left the in-flight count): the
    /// connection stays busy until the caller calls `request_ended` on it.
    pub fn take_conn(&mut self) -> Option<Arc<ConnCtl>> {
        self.conn.take()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.finish(self.kind, self.outcome);
        if self.grpc {
            self.shared.metrics.grpc_call_ended(self.outcome.as_str());
            self.shared.protocol_ended(false, self.outcome.as_str());
        }
        if let Some(c) = &self.conn {
            c.request_ended(self.shared.now());
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way to the engine. Notes when the client's body fails
    /// (a malformed chunked encoding, a reset mid-upload), so that the failure is answered as
    /// the client's error (400) and not blamed on the engine.
    #[derive(Debug)]
    pub struct ClientBody {
        #[pin]
        inner: Incoming,
        failed: Option<Arc<AtomicBool>>,
        // The body as it passes, for a handoff (`--handoff-to`).
        capture: Option<Arc<Capture>>,
    }
}

impl ClientBody {
    /// Wraps a request body; the returned flag (none for an empty body, which cannot fail) is
    /// set if it fails. `capture` keeps a copy of the body as it passes.
    pub fn new(inner: Incoming, capture: Option<Arc<Capture>>) -> (Self, Option<Arc<AtomicBool>>) {
        let failed = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        if let Some(c) = &capture
            && inner.is_end_stream()
        {
            c.complete();
        }
        (
            ClientBody {
                inner,
                failed: failed.clone(),
                capture,
            },
            failed,
        )
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled
            && let Some(f) = this.failed
        {
            f.store(true, Ordering::Release);
        }
        if let Some(c) = this.capture {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        c.push(d);
                    }
                    if this.inner.is_end_stream() {
                        c.complete();
                    }
                }
                Poll::Ready(Some(Err(_))) => c.fail(),
                Poll::Ready(None) => c.complete(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the client's request body failed.
pub fn client_failed(flag: Option<&Arc<AtomicBool>>) -> bool {
    flag.is_some_and(|f| f.load(Ordering::Acquire))
}

/// The terminal event that ends a stream the gate could not let finish.
///
/// `event: error` with an `error` object is what the official OpenAI client libraries raise
/// as an API error; `[DONE]` then ends the stream for clients that wait for it.
pub fn terminal_event(kind: &str, code: u16, message: &str) -> Bytes {
    let data = serde_json::json!({
        "error": { "type": kind, "code": code, "message": message }
    });
    Bytes::from(format!("event: error\ndata: {data}\n\ndata: [DONE]\n\n"))
}

/// Where an event reporting `"finish_reason": "abort"` starts in `events` (whole events only).
///
/// vLLM ends the streams it aborts (on SIGTERM without `--shutdown-timeout`, on engine
/// errors) with such a chunk and then `[DONE]`: a client cannot tell it from a finished
/// completion. The gate turns it into a terminal error event instead.
pub fn aborted_event_start(events: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"finish_reason\"";
    // Built once: constructing a searcher costs more than a search of one event.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let mut from = 0;
    while let Some(i) = FINDER.find(&events[from..]) {
        let at = from + i;
        let rest = &events[at + KEY.len()..];
        let rest = rest.trim_ascii_start();
        if let Some(rest) = rest.strip_prefix(b":")
            && rest.trim_ascii_start().starts_with(b"\"abort\"")
        {
            // The event starts after the last blank line before the match.
            let before = &events[..at];
            let start = [&b"\n\n"[..], b"\r\n\r\n", b"\r\r"]
                .iter()
                .filter_map(|sep| memchr::memmem::rfind(before, sep).map(|p| p + sep.len()))
                .max()
                .unwrap_or(0);
            return Some(start);
        }
        from = at + KEY.len();
    }
    None
}

/// An error event found in a stream: where it starts and whether a gate sent it because its
/// pod is shutting down (`"type": "server_shutdown"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorEvent {
    /// Its first byte in the events searched.
    pub start: usize,
    /// A draining gate's terminal event.
    pub shutdown: bool,
}

/// The fields of an event's data that make it an error.
#[derive(serde::Deserialize)]
struct ErrorView<'a> {
    #[serde(default, borrow)]
    error: Option<ErrorBody<'a>>,
    #[serde(default, borrow)]
    object: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ErrorBody<'a> {
    Object {
        #[serde(default, rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    },
    Other(serde::de::IgnoredAny),
}

/// Whether one event (`event:` field, `data` joined) is an error; `Some(shutdown)` when it is.
fn event_error(event_error: bool, data: &[u8]) -> Option<bool> {
    let view = (memchr::memmem::find(data, b"error").is_some())
        .then(|| serde_json::from_slice::<ErrorView<'_>>(data).ok())
        .flatten();
    let kind = match view.as_ref().and_then(|v| v.error.as_ref()) {
        Some(ErrorBody::Object { kind }) => kind.as_deref(),
        _ => None,
    };
    let is_error = event_error
        || view
            .as_ref()
            .is_some_and(|v| v.error.is_some() || v.object.as_deref() == Some("error"));
    is_error.then_some(kind == Some("server_shutdown"))
}

/// The first error event in `events` (whole events only): one named `error` (`event: error`,
/// how a gate ends a stream it cannot finish), or whose data is an object with an `error`
/// member or `"object": "error"` (how vLLM and others report a failure mid-stream).
///
/// Only the bytes of candidate events are parsed: a stream with no `error` in it costs one
/// substring search.
pub fn error_event_start(events: &[u8]) -> Option<ErrorEvent> {
    memchr::memmem::find(events, b"error")?;
    let mut start = 0;
    let mut pos = 0;
    let mut named_error = false;
    let mut data: Vec<u8> = Vec::new();
    while pos < events.len() {
        let end = memchr::memchr(b'\n', &events[pos..]).map_or(events.len(), |i| pos + i);
        let line = &events[pos..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Some(shutdown) = event_error(named_error, &data) {
                return Some(ErrorEvent { start, shutdown });
            }
            data.clear();
            named_error = false;
            start = end + 1;
        } else if let Some(v) = line.strip_prefix(b"event:") {
            named_error = v.trim_ascii() == b"error";
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        }
        pos = end + 1;
    }
    event_error(named_error, &data).map(|shutdown| ErrorEvent { start, shutdown })
}

/// Bytes the gate holds back at most while waiting for an SSE event boundary. Larger events
/// are passed on unframed: a stream that never has a boundary is not really SSE.
const MAX_HELD: usize = 256 * 1024;

/// Splits an SSE byte stream at event boundaries so that the client only ever receives whole
/// events: each call returns everything up to the last complete event and holds the rest.
///
/// Written by hand because it must work on the proxy's own chunks without copying them
/// (the common case — an engine flushing whole events — returns the chunk itself); SSE
/// parsing crates decode events, which is more work than needed here.
#[derive(Debug, Default)]
pub struct SseFramer {
    held: BytesMut,
    /// The previous byte ended a line (so a line end now ends an event).
    line_start: bool,
    /// The previous byte was CR (a following LF belongs to the same line end).
    after_cr: bool,
    /// That CR ended an event (a following LF extends the boundary).
    cr_boundary: bool,
    started: bool,
    /// Everything passed on so far ended at an event boundary.
    at_boundary: bool,
}

impl SseFramer {
    /// Feeds a chunk; returns the bytes that end at an event boundary, if any.
    pub fn push(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            self.line_start = true;
            self.at_boundary = true;
        }
        let mut boundary = None;
        // Only CR and LF change the state; memchr jumps between them. Any other byte between
        // two line ends means the line was not empty.
        let mut next = 0;
        for i in memchr::memchr2_iter(b'\n', b'\r', &chunk) {
            if i > next {
                self.line_start = false;
                self.after_cr = false;
            }
            next = i + 1;
            if chunk[i] == b'\n' {
                if self.after_cr {
                    self.after_cr = false;
                    if self.cr_boundary {
                        boundary = Some(i + 1);
                    }
                    continue;
                }
                if self.line_start {
                    boundary = Some(i + 1);
                }
                self.line_start = true;
            } else {
                self.cr_boundary = self.line_start;
                if self.line_start {
                    boundary = Some(i + 1);
                }
                self.line_start = true;
                self.after_cr = true;
            }
        }
        if chunk.len() > next {
            self.line_start = false;
            self.after_cr = false;
        }
        match boundary {
            None => {
                self.held.extend_from_slice(&chunk);
                if self.held.len() > MAX_HELD {
                    self.at_boundary = false;
                    return Some(self.held.split().freeze());
                }
                None
            }
            Some(end) if self.held.is_empty() => {
                self.at_boundary = true;
                let out = chunk.split_to(end);
                if !chunk.is_empty() {
                    self.held.extend_from_slice(&chunk);
                }
                Some(out)
            }
            Some(end) => {
                self.at_boundary = true;
                self.held.extend_from_slice(&chunk[..end]);
                let out = self.held.split().freeze();
                self.held.extend_from_slice(&chunk[end..]);
                Some(out)
            }
        }
    }

    /// Whatever is held back (an unfinished event), for when the upstream ended normally.
    pub fn take_rest(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| self.held.split().freeze())
    }

    /// The terminal event, preceded by a blank line when what was sent so far did not end at
    /// an event boundary (only after an oversized event was passed on unframed).
    pub fn terminal(&self, event: Bytes) -> Bytes {
        if self.at_boundary {
            event
        } else {
            let mut b = BytesMut::with_capacity(event.len() + 2);
            b.extend_from_slice(b"\n\n");
            b.extend_from_slice(&event);
            b.freeze()
        }
    }
}

/// Why a proxied body was cut.
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    /// The drain deadline came.
    #[error("drain deadline reached: response aborted")]
    Deadline,
    /// The upstream went silent for longer than --upstream-idle-timeout.
    #[error("upstream sent nothing for longer than --upstream-idle-timeout")]
    Idle,
}

/// How a response ends when the gate cannot let it finish (the deadline, an engine that
/// fails mid-response): chosen once per response, from what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A `text/event-stream`: framed at event boundaries and ended with the terminal event.
    Sse,
    /// A gRPC call: ended with trailers `grpc-status: 14` (UNAVAILABLE), which gRPC clients
    /// treat as retryable — a reset would surface as INTERNAL or UNKNOWN.
    Grpc,
    /// Anything else: aborted (a reset, or a closed connection on HTTP/1.1).
    Abort,
}

impl Ending {
    /// The ending of a response with these headers, to a request that was (or not) gRPC. A
    /// compressed event stream cannot be framed or extended with a plain-text event: it ends
    /// like any other body.
    pub fn of(headers: &http::HeaderMap, grpc: bool) -> Ending {
        let event_stream = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"));
        let identity = headers
            .get(http::header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if event_stream && identity {
            Ending::Sse
        } else if grpc {
            Ending::Grpc
        } else {
            Ending::Abort
        }
    }
}

/// gRPC's status UNAVAILABLE.
pub const GRPC_UNAVAILABLE: u16 = 14;

/// Trailers ending a gRPC call with `code` and `message` (the message percent-encoded as the
/// gRPC HTTP/2 protocol asks: bytes outside printable ASCII, and `%`).
pub fn grpc_trailers(code: u16, message: &str) -> http::HeaderMap {
    let mut enc = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    let mut h = http::HeaderMap::new();
    h.insert("grpc-status", http::HeaderValue::from(code));
    if let Ok(v) = http::HeaderValue::from_str(&enc) {
        h.insert("grpc-message", v);
    }
    h
}

pin_project_lite::pin_project! {
    /// A proxied response body.
    pub struct TrackedBody {
        // The engine's body; dropped when a handoff takes over, so that the engine sees the
        // request end and stops generating for it.
        inner: Option<Incoming>,
        #[pin]
        deadline: Quiet<WaitForCancellationFutureOwned>,
        #[pin]
        idle: Option<tokio::time::Sleep>,
        idle_timeout: Option<Duration>,
        last_data: Instant,
        sse: Option<SseFramer>,
        grpc: bool,
        // Kept until the body has been read to its end (or dropped), so that a request counts
        // as in flight until its last bytes were handed to the connection.
        guard: Option<Guard>,
        done: bool,
        client_failed: Option<Arc<AtomicBool>>,
        // Set for a stream that may be handed off (`--handoff-to`).
        handoff: Option<Box<Handoff>>,
        // A handoff's relay, once it took over: the body reads from it from then on.
        relay: Option<tokio::sync::mpsc::Receiver<Bytes>>,
    }
}

impl TrackedBody {
    /// Wraps an upstream body; `ending` says how it ends if it cannot finish (SSE also enables
    /// event framing).
    /// `deadline` is this request's own child of the gate's deadline token, so that polling
    /// it touches no lock shared with other requests.
    /// `client_failed` is the request body's failure flag ([`ClientBody::new`]).
    pub fn new(
        inner: Incoming,
        guard: Guard,
        ending: Ending,
        deadline: CancellationToken,
        client_failed: Option<Arc<AtomicBool>>,
        handoff: Option<Box<Handoff>>,
    ) -> Self {
        let idle_timeout = guard.shared().config.upstream_idle_timeout;
        let mut guard = Some(guard);
        let mut done = false;
        // An empty body (HEAD, 204, 304, Content-Length: 0) is never polled: it is complete.
        if inner.is_end_stream() {
            finish(&mut guard, &mut done, Outcome::Ok);
        }
        TrackedBody {
            inner: Some(inner),
            deadline: Quiet::new(deadline.cancelled_owned()),
            idle: idle_timeout.map(tokio::time::sleep),
            idle_timeout,
            last_data: Instant::now(),
            sse: (ending == Ending::Sse).then(SseFramer::default),
            grpc: ending == Ending::Grpc,
            guard,
            done,
            client_failed,
            handoff: if ending == Ending::Sse { handoff } else { None },
            relay: None,
        }
    }
}

/// Hands the stream off if it can be: the relay replaces the engine's body, and the request
/// leaves the in-flight count as handed off. Counts why not otherwise.
fn hand_off(
    handoff: &mut Option<Box<Handoff>>,
    guard: &mut Option<Guard>,
    inner: &mut Option<Incoming>,
    relay: &mut Option<tokio::sync::mpsc::Receiver<Bytes>>,
) -> bool {
    if handoff.is_none() || guard.is_none() {
        return false;
    }
    let (Some(h), Some(g)) = (handoff.take(), guard.take()) else {
        return false;
    };
    let shared = g.shared().clone();
    match crate::handoff::start(&shared, *h, g) {
        Ok(rx) => {
            *relay = Some(rx);
            *inner = None;
            true
        }
        Err((skip, g)) => {
            shared.metrics.handoff_skipped(skip.as_str());
            *guard = Some(g);
            false
        }
    }
}

/// Reads the relay of a handed-off stream.
fn poll_relay(
    relay: &mut tokio::sync::mpsc::Receiver<Bytes>,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    match relay.poll_recv(cx) {
        Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
        Poll::Ready(None) => {
            *done = true;
            Poll::Ready(None)
        }
        Poll::Pending => Poll::Pending,
    }
}

/// Records how the response ended; the guard itself is released when the body is read to its
/// end or dropped.
fn finish(guard: &mut Option<Guard>, done: &mut bool, outcome: Outcome) {
    if let Some(g) = guard {
        g.set_outcome(outcome);
    }
    *done = true;
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(relay) = this.relay.as_mut() {
            return poll_relay(relay, this.done, cx);
        }
        if *this.done {
            this.guard.take();
            return Poll::Ready(None);
        }
        loop {
            // The deadline comes first: a stream with data always ready must still be cut.
            let mut cut = this
                .deadline
                .as_mut()
                .poll(cx)
                .is_ready()
                .then_some(CutError::Deadline);
            let polled = match (&cut, this.inner.as_mut()) {
                (None, Some(inner)) => Some(Pin::new(inner).poll_frame(cx)),
                _ => None,
            };
            if let Some(Poll::Pending) = polled
                && let (Some(mut idle), Some(timeout)) =
                    (this.idle.as_mut().as_pin_mut(), *this.idle_timeout)
            {
                // The timer is re-armed lazily from the last data, not on every chunk.
                if idle.as_mut().poll(cx).is_ready() {
                    let due = *this.last_data + timeout;
                    if Instant::now() >= due {
                        cut = Some(CutError::Idle);
                    } else {
                        idle.as_mut().reset(due);
                        let _ = idle.poll(cx);
                    }
                }
            }
            if let Some(why) = cut {
                if hand_off(this.handoff, this.guard, this.inner, this.relay)
                    && let Some(relay) = this.relay.as_mut()
                {
                    return poll_relay(relay, this.done, cx);
                }
                let outcome = match why {
                    CutError::Deadline => Outcome::Truncated,
                    CutError::Idle => Outcome::UpstreamError,
                };
                finish(this.guard, this.done, outcome);
                if *this.grpc {
                    return Poll::Ready(Some(Ok(Frame::trailers(grpc_trailers(
                        GRPC_UNAVAILABLE,
                        match why {
                            CutError::Deadline => {
                                "the server is shutting down and could not finish this call in time; retry it"
                            }
                            CutError::Idle => "the server stopped sending; retry the call",
                        },
                    )))));
                }
                return Poll::Ready(match this.sse.as_ref() {
                    Some(framer) => Some(Ok(Frame::data(framer.terminal(match why {
                        CutError::Deadline => terminal_event(
                            "server_shutdown",
                            503,
                            "the server is shutting down and could not finish this response in time; retry the request",
                        ),
                        CutError::Idle => terminal_event(
                            "upstream_timeout",
                            504,
                            "the inference engine stopped sending; retry the request",
                        ),
                    })))),
                    None => Some(Err(Box::new(why))),
                });
            }
            let frame = match polled {
                Some(Poll::Ready(Some(Ok(frame)))) => frame,
                Some(Poll::Ready(Some(Err(e)))) => {
                    if client_failed(this.client_failed.as_ref()) {
                        // The client's own body broke the exchange: its error, not the engine's.
                        tracing::debug!(error = %e, "Client request body failed mid-response");
                        finish(this.guard, this.done, Outcome::ClientError);
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    tracing::debug!(error = %e, "Upstream body failed mid-response");
                    if hand_off(this.handoff, this.guard, this.inner, this.relay)
                        && let Some(relay) = this.relay.as_mut()
                    {
                        return poll_relay(relay, this.done, cx);
                    }
                    finish(this.guard, this.done, Outcome::UpstreamError);
                    if *this.grpc {
                        return Poll::Ready(Some(Ok(Frame::trailers(grpc_trailers(
                            GRPC_UNAVAILABLE,
                            "the server failed mid-call; retry it",
                        )))));
                    }
                    return Poll::Ready(match this.sse.as_ref() {
                        Some(framer) => Some(Ok(Frame::data(framer.terminal(terminal_event(
                            "upstream_error",
                            502,
                            "the inference engine failed mid-response; retry the request",
                        ))))),
                        None => Some(Err(Box::new(e))),
                    });
                }
                Some(Poll::Ready(None)) => {
                    let rest = this.sse.as_mut().and_then(SseFramer::take_rest);
                    finish(this.guard, this.done, Outcome::Ok);
                    if rest.is_none() {
                        this.guard.take();
                    }
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
                Some(Poll::Pending) | None => return Poll::Pending,
            };
            if this.idle_timeout.is_some() {
                *this.last_data = Instant::now();
            }
            let ended = this.inner.as_ref().is_none_or(Incoming::is_end_stream);
            let frame = match (this.sse.as_mut(), frame.into_data()) {
                (Some(framer), Ok(data)) => {
                    let out = framer.push(data);
                    let out = if ended {
                        // The last frame: pass on whatever is held with it.
                        match (out, framer.take_rest()) {
                            (Some(a), Some(b)) => Some([a, b].concat().into()),
                            (a, b) => a.or(b),
                        }
                    } else {
                        out
                    };
                    if let Some(start) = out.as_deref().and_then(aborted_event_start)
                        && let Some(mut out) = out
                    {
                        // The engine aborted this request: never pass that on as a success.
                        let before = out.split_to(start);
                        if let Some(h) = this.handoff.as_mut() {
                            h.tracker.observe(&before);
                        }
                        if hand_off(this.handoff, this.guard, this.inner, this.relay) {
                            tracing::info!("Engine aborted a stream; handing it off");
                            if before.is_empty()
                                && let Some(relay) = this.relay.as_mut()
                            {
                                return poll_relay(relay, this.done, cx);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(before))));
                        }
                        tracing::warn!("Engine aborted a stream; ending it with an error event");
                        finish(this.guard, this.done, Outcome::UpstreamError);
                        let mut b = BytesMut::with_capacity(start + 256);
                        b.extend_from_slice(&before);
                        b.extend_from_slice(&terminal_event(
                            "engine_abort",
                            502,
                            "the inference engine aborted this request before it finished; retry the request",
                        ));
                        return Poll::Ready(Some(Ok(Frame::data(b.freeze()))));
                    }
                    let mut observed = false;
                    if this.handoff.is_some()
                        && let Some(found) = out.as_deref().and_then(error_event_start)
                        && let Some(mut rest) = out.clone()
                    {
                        // The upstream reported a failure mid-stream: a draining gate's
                        // terminal event (this gate is then a --gateway in front of it), or the
                        // engine's own error.
                        let before = rest.split_to(found.start);
                        if let Some(h) = this.handoff.as_mut() {
                            h.tracker.observe(&before);
                        }
                        // An error before any text is most likely the request's own fault and
                        // is passed on as it is, unless a draining gate sent it.
                        let worth = found.shutdown
                            || this
                                .handoff
                                .as_ref()
                                .is_some_and(|h| !h.tracker.text().is_empty());
                        if worth && hand_off(this.handoff, this.guard, this.inner, this.relay) {
                            tracing::info!(
                                shutdown = found.shutdown,
                                "The upstream ended a stream with an error event; handing it off"
                            );
                            if before.is_empty()
                                && let Some(relay) = this.relay.as_mut()
                            {
                                return poll_relay(relay, this.done, cx);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(before))));
                        }
                        if let Some(h) = this.handoff.as_mut() {
                            h.tracker.observe(&rest);
                        }
                        observed = true;
                    }
                    if !observed && let (Some(h), Some(out)) = (this.handoff.as_mut(), out.as_ref())
                    {
                        h.tracker.observe(out);
                    }
                    match out {
                        Some(out) => Frame::data(out),
                        None if ended => {
                            finish(this.guard, this.done, Outcome::Ok);
                            this.guard.take();
                            return Poll::Ready(None);
                        }
                        None => continue,
                    }
                }
                (None, Ok(data)) => Frame::data(data),
                (_, Err(frame)) => frame,
            };
            // A body of known length is not polled again after its last byte: it is complete
            // now (otherwise it would be counted as a client abort on drop).
            if ended {
                finish(this.guard, this.done, Outcome::Ok);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) if self.sse.is_none() => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Every body the gate sends to clients.
    #[project = GateBodyProj]
    pub enum GateBody {
        /// A complete local answer (errors, admin responses).
        Full { data: Option<Bytes> },
        /// A proxied body.
        Proxied { #[pin] body: TrackedBody },
        /// An empty body (101 Switching Protocols).
        Empty,
    }
}

impl GateBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        GateBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for GateBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GateBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GateBodyProj::Proxied { body } => body.poll_frame(cx),
            GateBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GateBody::Full { data } => data.is_none(),
            GateBody::Proxied { body } => body.is_end_stream(),
            GateBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GateBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GateBody::Proxied { body } => body.size_hint(),
            GateBody::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&str]) -> (Vec<String>, Option<String>) {
        let mut f = SseFramer::default();
        let out = chunks
            .iter()
            .filter_map(|c| f.push(Bytes::copy_from_slice(c.as_bytes())))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        let rest = f
            .take_rest()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        (out, rest)
    }

    #[test]
    fn whole_events_pass_as_they_are() {
        let (out, rest) = feed(&["data: a\n\n", "data: b\n\n"]);
        assert_eq!(out, ["data: a\n\n", "data: b\n\n"]);
        assert_eq!(rest, None);
    }

    #[test]
    fn split_events_are_held_until_complete() {
        let (out, rest) = feed(&["data: {\"x\":", "1}\n", "\ndata: y\n\nda", "ta: z"]);
        // The third chunk completes two events: both go out together.
        assert_eq!(out, ["data: {\"x\":1}\n\ndata: y\n\n"]);
        assert_eq!(rest.as_deref(), Some("data: z"));
    }

    #[test]
    fn crlf_and_cr_line_ends() {
        let (out, _) = feed(&[
            "data: a\r\n\r\n",
            "data: b\r\r",
            "event: x\r\ndata: c\r\n",
            "\r\n",
        ]);
        assert_eq!(
            out,
            [
                "data: a\r\n\r\n",
                "data: b\r\r",
                "event: x\r\ndata: c\r\n\r\n"
            ]
        );
        // A boundary split between CR and LF: the CR ends the event.
        let (out, rest) = feed(&["data: a\r\n\r", "\ndata: b\r\n\r\n"]);
        assert_eq!(out, ["data: a\r\n\r", "\ndata: b\r\n\r\n"]);
        assert_eq!(rest, None);
    }

    #[test]
    fn multi_line_events_are_not_split() {
        let (out, _) = feed(&["event: e\ndata: 1\ndata: 2\n", "\n"]);
        assert_eq!(out, ["event: e\ndata: 1\ndata: 2\n\n"]);
    }

    #[test]
    fn oversized_unframed_data_is_passed_on() {
        let mut f = SseFramer::default();
        let big = "x".repeat(MAX_HELD + 1);
        assert_eq!(
            f.push(Bytes::from(big.clone())).map(|b| b.len()),
            Some(big.len())
        );
    }

    /// The byte-by-byte definition of an event boundary (an empty line; LF, CRLF or CR line
    /// ends): the offsets just after each boundary.
    fn reference_boundaries(input: &[u8]) -> Vec<usize> {
        let (mut line_start, mut after_cr, mut cr_boundary) = (true, false, false);
        let mut out = Vec::new();
        for (i, &b) in input.iter().enumerate() {
            match b {
                b'\n' if after_cr => {
                    after_cr = false;
                    if cr_boundary {
                        out.push(i + 1);
                    }
                }
                b'\n' => {
                    if line_start {
                        out.push(i + 1);
                    }
                    line_start = true;
                }
                b'\r' => {
                    cr_boundary = line_start;
                    if line_start {
                        out.push(i + 1);
                    }
                    line_start = true;
                    after_cr = true;
                }
                _ => {
                    line_start = false;
                    after_cr = false;
                }
            }
        }
        out
    }

    proptest::proptest! {
        /// However the stream is cut into chunks, the framer passes on every byte once, in
        /// order, and each piece it passes on ends at the last boundary seen so far.
        #[test]
        fn framer_matches_reference(
            input in proptest::collection::vec(proptest::sample::select(b"ab:\n\r ".to_vec()), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < input.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let boundaries = reference_boundaries(&input);
            let mut framer = SseFramer::default();
            let mut sent = Vec::new();
            let mut prev = 0;
            for end in cuts.into_iter().chain(std::iter::once(input.len())) {
                let chunk = Bytes::copy_from_slice(&input[prev..end]);
                prev = end;
                let last_boundary = boundaries.iter().copied().filter(|b| *b <= end).max();
                match framer.push(chunk) {
                    Some(out) => {
                        sent.extend_from_slice(&out);
                        proptest::prop_assert_eq!(Some(sent.len()), last_boundary);
                    }
                    None => proptest::prop_assert!(last_boundary.unwrap_or(0) <= sent.len()),
                }
            }
            if let Some(rest) = framer.take_rest() {
                sent.extend_from_slice(&rest);
            }
            proptest::prop_assert_eq!(sent, input);
        }
    }

    #[test]
    fn aborted_finish_is_found_at_its_event() {
        let ok = b"data: {\"choices\":[{\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(aborted_event_start(ok), None);
        let first =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
        let abort = b"data: {\"choices\":[{\"delta\":{},\"finish_reason\": \"abort\"}]}\n\ndata: [DONE]\n\n";
        let both = [&first[..], &abort[..]].concat();
        assert_eq!(aborted_event_start(&both), Some(first.len()));
        assert_eq!(aborted_event_start(abort), Some(0));
        // The word in content is not a finish reason.
        let content =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"abort\"},\"finish_reason\":null}]}\n\n";
        assert_eq!(aborted_event_start(content), None);
    }

    #[test]
    fn error_events_are_found_at_their_start() {
        let ok =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"error\"},\"finish_reason\":null}]}\n\n";
        assert_eq!(error_event_start(ok), None);
        let gate = terminal_event("server_shutdown", 503, "going away");
        let both = [&ok[..], &gate[..]].concat();
        assert_eq!(
            error_event_start(&both),
            Some(ErrorEvent {
                start: ok.len(),
                shutdown: true
            })
        );
        // vLLM's mid-stream error, with CRLF line ends.
        let vllm = b"data: {\"object\":\"error\",\"message\":\"boom\",\"code\":500}\r\n\r\n";
        let both = [&ok[..], &vllm[..]].concat();
        assert_eq!(
            error_event_start(&both),
            Some(ErrorEvent {
                start: ok.len(),
                shutdown: false
            })
        );
        let wrapped =
            b"data: {\"error\":{\"message\":\"boom\",\"type\":\"InternalServerError\"}}\n\n";
        assert_eq!(
            error_event_start(wrapped),
            Some(ErrorEvent {
                start: 0,
                shutdown: false
            })
        );
        // `"error": null` and a field merely named like it are not errors.
        let null = b"data: {\"error\":null,\"choices\":[]}\n\n";
        assert_eq!(error_event_start(null), None);
        let named = b"event: message\ndata: {\"errors\":1}\n\n";
        assert_eq!(error_event_start(named), None);
    }

    #[test]
    fn terminal_event_shape() {
        let ev = terminal_event("server_shutdown", 503, "bye");
        let s = std::str::from_utf8(&ev).unwrap();
        assert!(s.starts_with("event: error\ndata: {"));
        assert!(s.ends_with("\n\ndata: [DONE]\n\n"));
        let json = s.lines().nth(1).unwrap().trim_start_matches("data: ");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["error"]["type"], "server_shutdown");
        assert_eq!(v["error"]["code"], 503);
    }
}
