//! Stream handoff (`--handoff-to`): a streamed OpenAI-style completion that cannot finish on
//! this pod — the drain deadline came, the engine failed or aborted it mid-stream, or it went
//! silent — continues on a peer replica, and the peer's events are spliced into the client's
//! stream so that the client sees one completion.
//!
//! While a stream runs, the gate keeps the request body ([`Capture`], bounded by
//! `--handoff-max-body`) and follows the events it passes on ([`Tracker`]: the text so far,
//! the tokens so far, the response's identity). To hand off, it asks the peer to continue:
//! for chat, the original messages plus an assistant message holding the text so far with
//! `continue_final_message: true` and `add_generation_prompt: false`; for completions, the
//! prompt plus the text so far; `max_tokens` reduced by the tokens already sent. The peer's
//! events are rewritten to the original `id`, `created`, `model` and `system_fingerprint`,
//! without a second role delta, with usage that adds both parts; a peer that refuses, is slow
//! to start or fails mid-way is replaced by another attempt while attempts and time are left,
//! and the terminal error event ends the stream when none is.
//!
//! The relay outlives the request's in-flight count: the engine's work is done, so the drain
//! may stop it, and the drain machine keeps the process alive until relays end or its hard
//! stop comes ([`lameduck_timeline::Action::EndRelays`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use std::borrow::Cow;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::body::{Guard, SseFramer, terminal_event};
use crate::config::HandoffSettings;
use crate::conn::ConnCtl;
use crate::state::Shared;
use lameduck_timeline::Outcome;

/// Header naming the attempt on a continuation request, for the peer's logs.
pub const HANDOFF_HEADER: HeaderName = HeaderName::from_static("lameduck-handoff");

/// Events buffered between a relay and the client's connection.
const RELAY_BUFFER: usize = 32;

/// Pause between two attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Which completion endpoint a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completion,
}

impl Api {
    /// The endpoint of a request, if it is one that can be handed off.
    pub fn of(method: &Method, path: &str) -> Option<Api> {
        if method != Method::POST {
            return None;
        }
        match path {
            "/v1/chat/completions" => Some(Api::Chat),
            "/v1/completions" => Some(Api::Completion),
            _ => None,
        }
    }
}

/// The request body as it went to the engine, kept while its response streams.
#[derive(Debug)]
pub struct Capture {
    max: usize,
    state: Mutex<Captured>,
}

#[derive(Debug)]
enum Captured {
    Filling(BytesMut),
    Complete(Bytes),
    /// Over the limit, or not read whole: not kept.
    Dropped,
}

impl Capture {
    /// A capture of at most `max` bytes; one that keeps nothing when the declared length is
    /// already larger.
    pub fn new(max: usize, declared: Option<u64>) -> Arc<Capture> {
        let state = if declared.is_some_and(|n| n > max as u64) {
            Captured::Dropped
        } else {
            let initial = declared.map_or(4096, |n| n as usize).min(max);
            Captured::Filling(BytesMut::with_capacity(initial))
        };
        Arc::new(Capture {
            max,
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a chunk of the body (or gives up on the body past the limit).
    pub fn push(&self, data: &[u8]) {
        let mut s = self.state();
        if let Captured::Filling(b) = &mut *s {
            if b.len() + data.len() > self.max {
                *s = Captured::Dropped;
            } else {
                b.extend_from_slice(data);
            }
        }
    }

    /// The body was read to its end.
    pub fn complete(&self) {
        let mut s = self.state();
        if let Captured::Filling(b) = &mut *s {
            *s = Captured::Complete(b.split().freeze());
        }
    }

    /// The body failed: nothing is kept.
    pub fn fail(&self) {
        *self.state() = Captured::Dropped;
    }

    /// The whole body, once read to its end within the limit.
    pub fn body(&self) -> Option<Bytes> {
        match &*self.state() {
            Captured::Complete(b) => Some(b.clone()),
            _ => None,
        }
    }
}

/// The peers and the client that reaches them.
#[derive(Debug)]
pub struct Peer {
    /// `--handoff-*`.
    pub settings: HandoffSettings,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Peer {
    /// A client for the peers' address.
    pub fn new(settings: HandoffSettings) -> Peer {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector);
        Peer { settings, client }
    }
}

/// What a handoff needs of the original request.
#[derive(Debug)]
pub struct Origin {
    /// The endpoint.
    pub api: Api,
    /// Path and query, as sent to the engine.
    pub path: http::uri::PathAndQuery,
    /// The request's headers as sent to the engine (authorization included).
    pub headers: HeaderMap,
    /// Its body.
    pub capture: Arc<Capture>,
}

/// Why a response that cannot finish here is not handed off (a label of
/// `handoffs_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The body was over the limit or not read whole.
    BodyNotKept,
    /// Not a streamed single-choice completion, structured output, or a prompt that cannot
    /// be extended with text.
    NotEligible,
    /// The model was calling a tool.
    ToolCalls,
    /// The completion had already finished.
    Finished,
    /// `max_tokens` leaves nothing to generate.
    MaxTokens,
}

impl Skip {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::BodyNotKept => "body_not_kept",
            Skip::NotEligible => "not_eligible",
            Skip::ToolCalls => "tool_calls",
            Skip::Finished => "finished",
            Skip::MaxTokens => "max_tokens",
        }
    }
}

/// The response's identity, from its first chunk.
#[derive(Debug, Clone, Default)]
struct Head {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    system_fingerprint: Option<Value>,
}

/// The fields of a streamed chunk the tracker reads, borrowed from the event's text.
#[derive(Debug, Deserialize)]
struct ChunkView<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceView<'a>>,
    #[serde(default)]
    usage: Option<UsageView>,
}

#[derive(Debug, Deserialize)]
struct ChoiceView<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct DeltaView<'a> {
    #[serde(default)]
    role: Option<IgnoredAny>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    function_call: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct UsageView {
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Follows a streamed completion event by event: what the client has received so far.
#[derive(Debug)]
pub struct Tracker {
    api: Api,
    head: Option<Head>,
    /// The generated text the client has received.
    text: String,
    /// Tokens the client has received: as the engine reports them in per-chunk usage, else
    /// one per content-carrying event (exact for engines that send a token per event).
    tokens: u64,
    role_sent: bool,
    finished: bool,
    done: bool,
    tool_calls: bool,
}

/// What became of one event of a peer's stream.
#[derive(Debug, PartialEq)]
enum PeerEvent {
    /// Pass these bytes on.
    Send(Bytes),
    /// Nothing to pass on (a second role delta, a comment).
    Drop,
    /// `[DONE]`.
    Done,
    /// An error event or an aborted finish: this attempt failed.
    Failed,
}

impl Tracker {
    /// A tracker for a response of `api`.
    pub fn new(api: Api) -> Tracker {
        Tracker {
            api,
            head: None,
            text: String::new(),
            tokens: 0,
            role_sent: false,
            finished: false,
            done: false,
            tool_calls: false,
        }
    }

    /// The text the client has received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Follows whole events the client is about to receive from the engine.
    pub fn observe(&mut self, events: &[u8]) {
        for_each_event(events, |data| {
            if data.trim() == "[DONE]" {
                self.done = true;
            } else {
                self.note_text(data);
            }
        });
    }

    /// Records what one chunk adds.
    fn note(&mut self, v: &Value) {
        if self.head.is_none() && v.get("id").is_some() {
            self.head = Some(Head {
                id: v.get("id").cloned(),
                created: v.get("created").cloned(),
                model: v.get("model").cloned(),
                system_fingerprint: v.get("system_fingerprint").cloned(),
            });
        }
        if let Ok(view) = ChunkView::deserialize(v) {
            self.apply(&view);
        }
    }

    /// Records what one chunk adds, from its JSON text: parsed into borrowed fields only
    /// (the whole value is built for the first chunk only, for the response's identity).
    fn note_text(&mut self, data: &str) {
        if self.head.is_none() {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                self.note(&v);
            }
        } else if let Ok(view) = serde_json::from_str::<ChunkView<'_>>(data) {
            self.apply(&view);
        }
    }

    fn apply(&mut self, c: &ChunkView<'_>) {
        // Engines that report usage on every chunk (vLLM's `continuous_usage_stats`) count
        // the tokens exactly; the count of content events stands in otherwise.
        let reported = c.usage.as_ref().and_then(|u| u.completion_tokens);
        let Some(choice) = c.choices.first() else {
            if let Some(n) = reported {
                self.tokens = self.tokens.max(n);
            }
            return;
        };
        let piece = match self.api {
            Api::Chat => {
                let delta = choice.delta.as_ref();
                if delta.is_some_and(|d| d.role.is_some()) {
                    self.role_sent = true;
                }
                if delta.is_some_and(|d| {
                    d.tool_calls.as_ref().is_some_and(|t| !t.is_empty())
                        || d.function_call.is_some()
                }) {
                    self.tool_calls = true;
                }
                delta.and_then(|d| d.content.as_deref())
            }
            Api::Completion => choice.text.as_deref(),
        };
        if let Some(p) = piece.filter(|p| !p.is_empty()) {
            self.text.push_str(p);
            self.tokens += 1;
        }
        if let Some(n) = reported {
            self.tokens = n;
        }
        if choice.finish_reason.is_some() {
            self.finished = true;
        }
    }

    /// Whether a handoff can continue this response; the reason when not.
    pub fn check(&self, capture: &Capture) -> Result<Bytes, Skip> {
        if self.tool_calls {
            return Err(Skip::ToolCalls);
        }
        if self.finished || self.done {
            return Err(Skip::Finished);
        }
        capture.body().ok_or(Skip::BodyNotKept)
    }

    /// The continuation request's body, from the original body and what was sent so far.
    fn continuation(&self, original: &[u8]) -> Result<Bytes, Skip> {
        let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(original) else {
            return Err(Skip::NotEligible);
        };
        eligible(&req)?;
        if self.text.is_empty() {
            // Nothing reached the client yet: the same request again.
            return Ok(Bytes::copy_from_slice(original));
        }
        for key in ["max_tokens", "max_completion_tokens"] {
            if let Some(n) = req.get(key).and_then(Value::as_u64) {
                if n <= self.tokens {
                    return Err(Skip::MaxTokens);
                }
                req.insert(key.into(), Value::from(n - self.tokens));
            }
        }
        match self.api {
            Api::Chat => {
                let continuing = req.get("continue_final_message") == Some(&Value::Bool(true));
                let Some(Value::Array(msgs)) = req.get_mut("messages") else {
                    return Err(Skip::NotEligible);
                };
                let last_is_assistant = msgs
                    .last()
                    .and_then(|m| m.get("role"))
                    .and_then(Value::as_str)
                    == Some("assistant");
                if continuing && last_is_assistant {
                    // The client was already continuing its own assistant message.
                    let Some(Value::String(c)) = msgs.last_mut().and_then(|m| m.get_mut("content"))
                    else {
                        return Err(Skip::NotEligible);
                    };
                    c.push_str(&self.text);
                } else {
                    msgs.push(serde_json::json!({"role": "assistant", "content": self.text}));
                }
                req.insert("continue_final_message".into(), Value::Bool(true));
                req.insert("add_generation_prompt".into(), Value::Bool(false));
            }
            Api::Completion => match req.get_mut("prompt") {
                Some(Value::String(p)) => p.push_str(&self.text),
                Some(Value::Array(items)) if items.len() == 1 => match items.first_mut() {
                    Some(Value::String(p)) => p.push_str(&self.text),
                    _ => return Err(Skip::NotEligible),
                },
                _ => return Err(Skip::NotEligible),
            },
        }
        serde_json::to_vec(&Value::Object(req))
            .map(Bytes::from)
            .map_err(|_| Skip::NotEligible)
    }

    /// Rewrites one event of the peer's stream into the original stream; `base` is the
    /// tokens the client had received when this attempt started (already in the peer's
    /// prompt).
    fn peer_event(&mut self, data: &str, base: u64) -> PeerEvent {
        if data.trim() == "[DONE]" {
            return PeerEvent::Done;
        }
        let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(data) else {
            return PeerEvent::Failed;
        };
        if v.contains_key("error") {
            return PeerEvent::Failed;
        }
        let first = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        if first
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
            == Some("abort")
        {
            return PeerEvent::Failed;
        }
        // Nothing reached the client before when there is no head yet: the peer's identity
        // is then the response's.
        if let Some(h) = &self.head {
            for (key, value) in [
                ("id", &h.id),
                ("created", &h.created),
                ("model", &h.model),
                ("system_fingerprint", &h.system_fingerprint),
            ] {
                match value {
                    Some(x) => {
                        v.insert(key.into(), x.clone());
                    }
                    None => {
                        v.remove(key);
                    }
                }
            }
        }
        if self.api == Api::Chat
            && self.role_sent
            && let Some(Value::Array(choices)) = v.get_mut("choices")
            && let Some(Value::Object(delta)) = choices.first_mut().and_then(|c| c.get_mut("delta"))
            && delta.remove("role").is_some()
        {
            let empty = delta
                .get("content")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
                && delta.len() <= 1;
            let unfinished = choices
                .first()
                .and_then(|c| c.get("finish_reason"))
                .is_none_or(Value::is_null);
            if empty && unfinished {
                return PeerEvent::Drop;
            }
        }
        if let Some(Value::Object(u)) = v.get_mut("usage") {
            let get = |u: &Map<String, Value>, k: &str| u.get(k).and_then(Value::as_u64);
            if let (Some(p), Some(c)) = (get(u, "prompt_tokens"), get(u, "completion_tokens")) {
                let prompt = p.saturating_sub(base);
                let completion = c + base;
                u.insert("prompt_tokens".into(), prompt.into());
                u.insert("completion_tokens".into(), completion.into());
                u.insert("total_tokens".into(), (prompt + completion).into());
            }
        }
        let v = Value::Object(v);
        self.note(&v);
        PeerEvent::Send(Bytes::from(format!("data: {v}\n\n")))
    }
}

/// Rejects requests a continuation cannot reproduce: not a stream, several choices, echoed
/// prompts, structured output.
fn eligible(req: &Map<String, Value>) -> Result<(), Skip> {
    let no = Err(Skip::NotEligible);
    if req.get("stream") != Some(&Value::Bool(true)) {
        return no;
    }
    for key in ["n", "best_of"] {
        if req.get(key).and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return no;
        }
    }
    if req.get("echo") == Some(&Value::Bool(true)) {
        return no;
    }
    if let Some(f) = req.get("response_format").filter(|f| !f.is_null())
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return no;
    }
    // vLLM's and TGI's guided decoding.
    if req.keys().any(|k| {
        (k.starts_with("guided_") || k == "structured_outputs" || k == "grammar")
            && !req[k.as_str()].is_null()
    }) {
        return no;
    }
    Ok(())
}

/// Calls `f` with the `data` of each whole event in `events` (its `data:` lines joined).
fn for_each_event(events: &[u8], mut f: impl FnMut(&str)) {
    let Ok(s) = std::str::from_utf8(events) else {
        return;
    };
    let mut data = String::new();
    let mut has_data = false;
    let mut lines = s.split('\n').peekable();
    while let Some(line) = lines.next() {
        // LF, CRLF and lone CR line ends.
        let line = line.strip_suffix('\r').unwrap_or(line);
        for line in line.split('\r') {
            if line.is_empty() {
                if has_data {
                    f(&data);
                }
                data.clear();
                has_data = false;
                continue;
            }
            if let Some(v) = line.strip_prefix("data:") {
                if has_data {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
                has_data = true;
            }
        }
        if lines.peek().is_none() && has_data {
            f(&data);
        }
    }
}

/// A handoff under way: what the relay task needs.
pub struct Handoff {
    /// The peers.
    pub peer: Arc<Peer>,
    /// The original request.
    pub origin: Arc<Origin>,
    /// The stream so far.
    pub tracker: Tracker,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("api", &self.origin.api)
            .field("tokens", &self.tracker.tokens)
            .finish_non_exhaustive()
    }
}

/// Counts a relay as alive until dropped; reports how it ended.
struct Relay {
    shared: Arc<Shared>,
    outcome: &'static str,
    // The client connection, busy while the relay writes to it (its idle time starts then).
    conn: Option<Arc<ConnCtl>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.metrics.handoff_ended(self.outcome);
        self.shared.relay_finished(self.outcome == "completed");
        if let Some(c) = &self.conn {
            c.request_ended(self.shared.now());
        }
        // Last: once `relaying` is back down, everything about this relay is counted.
        self.shared.metrics.relaying.dec();
    }
}

/// How a relay ended.
enum End {
    Completed,
    FellBack,
    ClientGone,
}

/// Starts relaying the continuation of a response the gate could not finish: ends the
/// request's in-flight count (`guard`) as handed off and returns the receiving end the
/// response body reads from from now on; or why no handoff is possible, with the guard back.
pub fn start(
    shared: &Arc<Shared>,
    h: Handoff,
    mut guard: Guard,
) -> Result<mpsc::Receiver<Bytes>, (Skip, Guard)> {
    let original = match h.tracker.check(&h.origin.capture) {
        Ok(b) => b,
        Err(skip) => return Err((skip, guard)),
    };
    if let Err(skip) = h.tracker.continuation(&original) {
        return Err((skip, guard));
    }
    // The engine's part is over: the request leaves the in-flight count before the relay
    // exists, so that the machine counts the relay before it can end.
    guard.set_outcome(Outcome::HandedOff);
    let conn = guard.take_conn();
    drop(guard);
    let (tx, rx) = mpsc::channel(RELAY_BUFFER);
    shared.metrics.relaying.inc();
    tracing::info!(
        api = ?h.origin.api,
        tokens_sent = h.tracker.tokens,
        "Handing a stream off to a peer"
    );
    tokio::spawn(relay(shared.clone(), h, original, tx, conn));
    Ok(rx)
}

async fn relay(
    shared: Arc<Shared>,
    mut h: Handoff,
    original: Bytes,
    tx: mpsc::Sender<Bytes>,
    conn: Option<Arc<ConnCtl>>,
) {
    let mut guard = Relay {
        shared: shared.clone(),
        outcome: "fell_back",
        conn,
    };
    let end = shared.relays_end.clone();
    let ended = tokio::select! {
        e = attempts(&shared, &mut h, &original, &tx) => Some(e),
        () = tx.closed() => Some(End::ClientGone),
        () = end.cancelled() => None,
    };
    let (outcome, terminal) = match ended {
        Some(End::Completed) => ("completed", None),
        Some(End::ClientGone) => ("client_gone", None),
        Some(End::FellBack) => (
            "fell_back",
            Some(terminal_event(
                "server_shutdown",
                503,
                "the server is shutting down and no other replica could finish this response; retry the request",
            )),
        ),
        None => (
            "cut",
            Some(terminal_event(
                "server_shutdown",
                503,
                "the server is shutting down and could not finish relaying this response in time; retry the request",
            )),
        ),
    };
    guard.outcome = outcome;
    if let Some(t) = terminal {
        // Bounded: the process is about to exit when the relay was cut.
        let _ = tokio::time::timeout(Duration::from_millis(500), tx.send(t)).await;
    }
    tracing::info!(outcome, "Handoff ended");
}

/// Tries the peers until one finishes the response, the attempts run out, or the client
/// leaves.
async fn attempts(
    shared: &Shared,
    h: &mut Handoff,
    original: &[u8],
    tx: &mpsc::Sender<Bytes>,
) -> End {
    let attempts = h.peer.settings.attempts;
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let body = match h.tracker.continuation(original) {
            Ok(b) => b,
            Err(skip) => {
                // The text the peers sent left nothing to ask for.
                shared.metrics.handoff_skipped(skip.as_str());
                return End::FellBack;
            }
        };
        match attempt_once(h, body, attempt, tx).await {
            Ok(()) => {
                shared.metrics.handoff_attempt("ok");
                return End::Completed;
            }
            Err(Failure::ClientGone) => return End::ClientGone,
            Err(Failure::Attempt(result, why)) => {
                shared.metrics.handoff_attempt(result);
                tracing::warn!(attempt, attempts, result, reason = %why, "Handoff attempt failed");
            }
        }
    }
    End::FellBack
}

enum Failure {
    ClientGone,
    /// A result label of `handoff_attempts_total` and what happened.
    Attempt(&'static str, String),
}

async fn attempt_once(
    h: &mut Handoff,
    body: Bytes,
    attempt: u32,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Failure> {
    let settings = &h.peer.settings;
    let uri = settings
        .to
        .uri(Some(&h.origin.path))
        .map_err(|e| Failure::Attempt("refused", e.to_string()))?;
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.extend(h.origin.headers.clone());
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::EXPECT,
    ] {
        headers.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(settings.to.authority.as_str()) {
        headers.insert(header::HOST, v);
    }
    headers.insert(HANDOFF_HEADER, HeaderValue::from(attempt));
    let first_by = Instant::now() + settings.timeout;
    let timeout = || {
        Failure::Attempt(
            "timeout",
            format!(
                "no event from {} within --handoff-timeout ({:?})",
                settings.to.authority, settings.timeout
            ),
        )
    };
    let resp = match tokio::time::timeout_at(first_by, h.peer.client.request(req)).await {
        Err(_) => return Err(timeout()),
        Ok(Err(e)) => {
            return Err(Failure::Attempt(
                "refused",
                format!("cannot reach {}: {e}", settings.to.authority),
            ));
        }
        Ok(Ok(r)) => r,
    };
    let event_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
    if resp.status() != StatusCode::OK || !event_stream {
        return Err(Failure::Attempt(
            "refused",
            format!("the peer answered {} (not an event stream)", resp.status()),
        ));
    }
    let idle = h.peer.settings.timeout;
    let mut body = resp.into_body();
    let mut framer = SseFramer::default();
    let mut started = false;
    let base = h.tracker.tokens;
    loop {
        let due = if started {
            Instant::now() + idle
        } else {
            first_by
        };
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) => return Err(timeout()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Failure::Attempt(
                    "failed",
                    format!("the peer's stream broke: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let Some(events) = framer.push(data) else {
            continue;
        };
        let mut out = BytesMut::new();
        let mut result = None;
        for_each_event(&events, |data| {
            if result.is_some() {
                return;
            }
            match h.tracker.peer_event(data, base) {
                PeerEvent::Send(b) => out.extend_from_slice(&b),
                PeerEvent::Drop => {}
                PeerEvent::Done => {
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    result = Some(true);
                }
                PeerEvent::Failed => result = Some(false),
            }
        });
        started = true;
        if !out.is_empty() && tx.send(out.freeze()).await.is_err() {
            return Err(Failure::ClientGone);
        }
        match result {
            Some(true) => return Ok(()),
            Some(false) => {
                return Err(Failure::Attempt(
                    "failed",
                    "the peer ended the continuation with an error".into(),
                ));
            }
            None => {}
        }
    }
    if h.tracker.finished {
        // The peer finished but closed without `[DONE]`: end the stream as OpenAI does.
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_err()
        {
            return Err(Failure::ClientGone);
        }
        return Ok(());
    }
    Err(Failure::Attempt(
        "failed",
        "the peer's stream ended before the completion finished".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"system_fingerprint\":\"fp\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
            Value::from(content)
        )
    }

    #[test]
    fn the_tracker_follows_text_and_tokens() {
        let mut t = Tracker::new(Api::Chat);
        t.observe(b"data: {\"id\":\"chatcmpl-1\",\"created\":5,\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        t.observe(format!("{}{}", chunk("Hello"), chunk(" world")).as_bytes());
        assert_eq!((t.text(), t.tokens, t.role_sent), ("Hello world", 2, true));
        t.observe(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\r\n\r\n");
        assert!(t.tool_calls);
        // Per-chunk usage (vLLM's continuous_usage_stats) is taken as the exact count.
        t.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}],\"usage\":{\"completion_tokens\":7}}\n\n");
        assert_eq!(t.tokens, 7);
    }

    #[test]
    fn events_are_read_whatever_their_line_ends() {
        let mut seen = Vec::new();
        for_each_event(
            b"data: a\r\ndata: b\r\n\r\ndata: c\n\n: comment\n\ndata: d\r\rdata: e\n\n",
            |d| seen.push(d.to_owned()),
        );
        assert_eq!(seen, ["a\nb", "c", "d", "e"]);
    }

    #[test]
    fn chat_continuations_carry_the_text_and_the_rest_of_max_tokens() {
        let mut t = Tracker::new(Api::Chat);
        t.observe(format!("{}{}", chunk("a "), chunk("b ")).as_bytes());
        let body = br#"{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        let c: Value = serde_json::from_slice(&t.continuation(body).unwrap()).unwrap();
        assert_eq!(c["max_tokens"], 8);
        assert_eq!(
            c["messages"][1],
            serde_json::json!({"role":"assistant","content":"a b "})
        );
        assert_eq!(c["continue_final_message"], true);
        assert_eq!(c["add_generation_prompt"], false);
        let short =
            br#"{"stream":true,"max_tokens":2,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(t.continuation(short), Err(Skip::MaxTokens));
        for bad in [
            &br#"{"stream":false,"messages":[]}"#[..],
            br#"{"stream":true,"n":2,"messages":[]}"#,
            br#"{"stream":true,"response_format":{"type":"json_object"},"messages":[]}"#,
            br#"{"stream":true,"guided_json":{},"messages":[]}"#,
        ] {
            assert_eq!(t.continuation(bad), Err(Skip::NotEligible));
        }
    }

    #[test]
    fn completion_continuations_extend_the_prompt() {
        let mut t = Tracker::new(Api::Completion);
        t.observe(b"data: {\"id\":\"cmpl-1\",\"choices\":[{\"text\":\"x y\",\"finish_reason\":null}]}\n\n");
        let c: Value = serde_json::from_slice(
            &t.continuation(br#"{"stream":true,"prompt":["say: "]}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(c["prompt"], serde_json::json!(["say: x y"]));
        assert_eq!(
            t.continuation(br#"{"stream":true,"prompt":[1,2,3]}"#),
            Err(Skip::NotEligible)
        );
    }

    /// The JSON of an event passed on.
    fn sent(e: PeerEvent) -> Value {
        let PeerEvent::Send(b) = e else {
            panic!("not passed on: {e:?}")
        };
        let s = std::str::from_utf8(&b).unwrap();
        serde_json::from_str(s.trim().trim_start_matches("data: ")).unwrap()
    }

    #[test]
    fn peer_events_take_the_original_identity() {
        let mut t = Tracker::new(Api::Chat);
        t.observe(b"data: {\"id\":\"chatcmpl-1\",\"created\":5,\"model\":\"m\",\"system_fingerprint\":\"fp\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        t.observe(chunk("a ").as_bytes());
        let role = r#"{"id":"chatcmpl-9","created":9,"model":"m","choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(t.peer_event(role, 1), PeerEvent::Drop);
        let v = sent(t.peer_event(
            r#"{"id":"chatcmpl-9","created":9,"model":"m","choices":[{"delta":{"content":"b "},"finish_reason":null}]}"#,
            1,
        ));
        assert_eq!(
            (v["id"].as_str(), v["created"].as_u64()),
            (Some("chatcmpl-1"), Some(5))
        );
        assert_eq!(v["system_fingerprint"], "fp");
        assert_eq!(t.text(), "a b ");
        let u = sent(t.peer_event(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
            1,
        ));
        assert_eq!(
            u["usage"],
            serde_json::json!({"prompt_tokens":11,"completion_tokens":4,"total_tokens":15})
        );
        assert_eq!(
            t.peer_event(r#"{"error":{"message":"x"}}"#, 1),
            PeerEvent::Failed
        );
        assert_eq!(
            t.peer_event(r#"{"choices":[{"delta":{},"finish_reason":"abort"}]}"#, 1),
            PeerEvent::Failed
        );
        assert_eq!(t.peer_event("[DONE]", 1), PeerEvent::Done);
    }

    #[test]
    fn a_capture_keeps_bodies_within_the_limit_only() {
        let c = Capture::new(8, None);
        c.push(b"1234");
        assert_eq!(c.body(), None, "not complete yet");
        c.complete();
        assert_eq!(c.body().as_deref(), Some(&b"1234"[..]));
        let big = Capture::new(8, None);
        big.push(b"123456789");
        big.complete();
        assert_eq!(big.body(), None);
        let declared = Capture::new(8, Some(9));
        declared.push(b"1");
        declared.complete();
        assert_eq!(declared.body(), None);
    }
}
