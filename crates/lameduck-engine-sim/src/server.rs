//! The HTTP server: listener, connections, request handlers, generation tasks and the shutdown
//! sequence.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use crate::Error;
use crate::config::{Config, OnSigterm, OutputTokens};
use crate::metrics::{Endpoint, Metrics, Outcome};
use crate::openai::{self, Chunks, FinishReason, Kind, Usage};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How long the shutdown waits (in real time, not scaled) for aborted requests to end and for
/// connections to flush their last bytes before dropping them.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Streamed events buffered per response before the generator waits for the client.
const STREAM_BUFFER: usize = 16;

/// Exit status for "killed by SIGTERM" (128 + 15).
pub const EXIT_SIGTERM: i32 = 143;

/// Stands in for SIGTERM/SIGINT: each [`ShutdownHandle::signal`] is one signal. The first starts
/// the shutdown chosen by `--on-sigterm`; a second one during it exits at once with 143.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<u32>>,
}

impl ShutdownHandle {
    /// Delivers one shutdown signal.
    pub fn signal(&self) {
        self.tx.send_modify(|n| *n = n.saturating_add(1));
    }
}

/// A bound, not yet serving simulator. The port accepts connections from [`bind`] on; they are
/// answered once [`Server::serve`] runs.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
    signals: watch::Receiver<u32>,
    handle: ShutdownHandle,
    mode: OnSigterm,
    drain_timeout: Option<Duration>,
}

const SERVING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

#[derive(Debug)]
struct State {
    model: String,
    /// Paths answered as `/health` is (`--health-path`).
    health_paths: Vec<String>,
    ttft: Duration,
    token_interval: Duration,
    output_tokens: OutputTokens,
    seed: u64,
    ready_at: Instant,
    created: u64,
    next_id: AtomicU64,
    phase: AtomicU8,
    in_flight: AtomicUsize,
    idle: Notify,
    /// One abort trigger per in-flight request, fired (by dropping the senders) on abort.
    /// Locked once at the start and once at the end of a request, never per token.
    aborts: Mutex<Aborts>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Aborts {
    aborting: bool,
    senders: HashMap<u64, oneshot::Sender<()>>,
}

/// Binds the listener and prepares the simulator; validates the configuration.
pub async fn bind(config: Config) -> Result<Server, Error> {
    let ts = config.time_scale;
    if !(ts.is_finite() && ts > 0.0) {
        return Err(Error::InvalidFlag {
            flag: "time-scale",
            value: ts.to_string(),
            reason: "must be a finite number greater than 0 (10 = ten times faster)".into(),
        });
    }
    let tps = config.tokens_per_second;
    if !(tps.is_finite() && tps > 0.0) {
        return Err(Error::InvalidFlag {
            flag: "tokens-per-second",
            value: tps.to_string(),
            reason: "must be a finite number greater than 0".into(),
        });
    }
    let scaled = |flag: &'static str, d: Duration| {
        Duration::try_from_secs_f64(d.as_secs_f64() / ts).map_err(|_| Error::InvalidFlag {
            flag,
            value: lameduck_timeline::fmt_secs(d),
            reason: format!("too long once divided by --time-scale {ts}"),
        })
    };
    let ttft = scaled("ttft", config.ttft)?;
    let cold_start = scaled("cold-start", config.cold_start)?;
    let drain_timeout = config
        .drain_timeout
        .map(|d| scaled("drain-timeout", d))
        .transpose()?;
    let token_interval =
        Duration::try_from_secs_f64(1.0 / (tps * ts)).map_err(|_| Error::InvalidFlag {
            flag: "tokens-per-second",
            value: tps.to_string(),
            reason: format!(
                "gives a token interval out of range with --time-scale {ts}; use a larger value"
            ),
        })?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|cause| Error::Listen {
            addr: config.listen,
            cause,
        })?;
    let local_addr = listener.local_addr().map_err(|cause| Error::Listen {
        addr: config.listen,
        cause,
    })?;
    let now = Instant::now();
    let seed = config.seed.unwrap_or_else(rand::random);
    let (tx, signals) = watch::channel(0u32);
    let state = Arc::new(State {
        model: config.model.clone(),
        health_paths: config.health_paths.clone(),
        ttft,
        token_interval,
        output_tokens: config.output_tokens,
        seed,
        ready_at: now.checked_add(cold_start).unwrap_or_else(far_future),
        created: unix_now(),
        next_id: AtomicU64::new(1),
        phase: AtomicU8::new(SERVING),
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
        aborts: Mutex::new(Aborts::default()),
        metrics: Metrics::new(),
    });
    info!(
        addr = %local_addr,
        model = %config.model,
        ttft = ?config.ttft,
        tokens_per_second = tps,
        output_tokens = %config.output_tokens,
        cold_start = ?config.cold_start,
        seed,
        time_scale = ts,
        on_sigterm = %config.on_sigterm,
        drain_timeout = ?config.drain_timeout,
        "engine-sim listening"
    );
    Ok(Server {
        listener,
        local_addr,
        state,
        signals,
        handle: ShutdownHandle { tx: Arc::new(tx) },
        mode: config.on_sigterm,
        drain_timeout,
    })
}

impl Server {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that delivers shutdown signals to [`Server::serve`]; [`crate::run`] connects
    /// SIGTERM and SIGINT to it.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Serves until a shutdown signal (see [`ShutdownHandle`]) has been handled as
    /// `--on-sigterm` says; returns the exit status: 0 after `abort` or `drain`, 143 for `exit`
    /// or a second signal.
    pub async fn serve(self) -> Result<i32, Error> {
        let Server {
            listener,
            local_addr,
            state,
            mut signals,
            handle,
            mode,
            drain_timeout,
        } = self;
        // Keeps the signal channel open even if every caller-held handle is dropped.
        let _handle = handle;
        let mut conns = Conns::new(state.clone());
        let mut startup_pending = state.ready_at > Instant::now();

        loop {
            tokio::select! {
                r = listener.accept() => conns.accept(r).await,
                _ = signals.changed() => {
                    if mode == OnSigterm::Ignore {
                        // Like a server that installs no handler for it: only SIGKILL ends it.
                        warn!("signal received and ignored (--on-sigterm ignore): serving until SIGKILL");
                        continue;
                    }
                    break;
                }
                Some(_) = conns.set.join_next(), if !conns.set.is_empty() => {}
                () = sleep_until(state.ready_at), if startup_pending => {
                    startup_pending = false;
                    info!(addr = %local_addr, "cold start over: ready");
                }
            }
        }
        let count = *signals.borrow_and_update();
        state.metrics.shutting_down.set(1);
        info!(
            mode = %mode,
            in_flight = state.in_flight.load(Ordering::SeqCst),
            "shutdown signal received"
        );
        if count >= 2 || mode == OnSigterm::Exit {
            info!(
                status = EXIT_SIGTERM,
                "exiting at once; open connections drop"
            );
            return Ok(EXIT_SIGTERM);
        }

        let abort = match mode {
            OnSigterm::Drain => {
                state.phase.store(DRAINING, Ordering::SeqCst);
                info!(
                    in_flight = state.in_flight.load(Ordering::SeqCst),
                    drain_timeout = ?drain_timeout,
                    "draining: new completions get 503, in-flight requests finish"
                );
                let deadline = drain_timeout.and_then(|d| Instant::now().checked_add(d));
                loop {
                    tokio::select! {
                        biased;
                        _ = signals.changed() => return Ok(second_signal()),
                        () = state.wait_idle() => break false,
                        () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                            break true;
                        }
                        r = listener.accept() => conns.accept(r).await,
                        Some(_) = conns.set.join_next(), if !conns.set.is_empty() => {}
                    }
                }
            }
            OnSigterm::Abort | OnSigterm::Exit | OnSigterm::Ignore => true,
        };
        drop(listener);
        info!("listener closed");

        if abort {
            let n = state.abort_all();
            info!(in_flight = n, "aborting in-flight requests");
            tokio::select! {
                _ = signals.changed() => return Ok(second_signal()),
                r = tokio::time::timeout(FLUSH_TIMEOUT, state.wait_idle()) => {
                    if r.is_err() {
                        warn!(
                            in_flight = state.in_flight.load(Ordering::SeqCst),
                            "aborted requests did not end within {FLUSH_TIMEOUT:?}; dropping them"
                        );
                    }
                }
            }
        } else {
            info!("drained: nothing in flight");
        }

        let open = conns.graceful.count();
        info!(connections = open, "closing connections");
        let Conns { set, graceful, .. } = conns;
        tokio::select! {
            _ = signals.changed() => return Ok(second_signal()),
            r = tokio::time::timeout(FLUSH_TIMEOUT, graceful.shutdown()) => {
                if r.is_err() {
                    warn!("connections still open after {FLUSH_TIMEOUT:?}; dropping them");
                }
            }
        }
        drop(set);
        info!(status = 0, "shutdown complete");
        Ok(0)
    }
}

fn second_signal() -> i32 {
    info!(
        status = EXIT_SIGTERM,
        "second signal: exiting at once; open connections drop"
    );
    EXIT_SIGTERM
}

/// The open connections.
struct Conns {
    state: Arc<State>,
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    /// Dropping the set aborts every connection task.
    set: JoinSet<()>,
}

impl Conns {
    fn new(state: Arc<State>) -> Self {
        Self {
            state,
            builder: auto::Builder::new(TokioExecutor::new()),
            graceful: GracefulShutdown::new(),
            set: JoinSet::new(),
        }
    }

    async fn accept(&mut self, r: std::io::Result<(TcpStream, SocketAddr)>) {
        let (stream, peer) = match r {
            Ok(x) => x,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = self.state.clone();
        let svc = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req).await) }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = self.graceful.watch(conn);
        self.set.spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

impl State {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    /// Fires every request's abort trigger, and those of requests registering later.
    /// Returns how many requests were in flight.
    fn abort_all(&self) -> usize {
        self.phase.store(ABORTING, Ordering::SeqCst);
        let mut aborts = self.aborts.lock().unwrap_or_else(PoisonError::into_inner);
        aborts.aborting = true;
        let n = aborts.senders.len();
        aborts.senders.clear();
        n
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A completion request in flight: counted from creation to drop, when its outcome is recorded
/// (a request dropped without an outcome is a client abort).
struct InFlight {
    state: Arc<State>,
    id: u64,
    endpoint: Endpoint,
    outcome: Option<Outcome>,
}

impl InFlight {
    /// Registers a request; the receiver resolves when the server aborts it.
    fn start(state: &Arc<State>, endpoint: Endpoint) -> (Self, oneshot::Receiver<()>) {
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut aborts = state.aborts.lock().unwrap_or_else(PoisonError::into_inner);
            if !aborts.aborting {
                aborts.senders.insert(id, tx);
            } // else: `tx` drops here, so `rx` resolves at once.
        }
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        state.metrics.in_flight.inc();
        (
            Self {
                state: state.clone(),
                id,
                endpoint,
                outcome: None,
            },
            rx,
        )
    }

    fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.state;
        s.aborts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .senders
            .remove(&self.id);
        s.metrics
            .request(self.endpoint, self.outcome.unwrap_or(Outcome::client_abort));
        s.metrics.in_flight.dec();
        if s.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            s.idle.notify_waiters();
        }
    }
}

/// Response bodies: a whole buffer, or events produced by a generation task as they happen.
#[derive(Debug)]
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    response(status, "application/json", body)
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = status;
    r
}

fn invalid_request(status: StatusCode, message: &str, param: Option<&str>) -> Response<Body> {
    json(
        status,
        openai::error_body(message, "invalid_request_error", param, Value::Null),
    )
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/v1/chat/completions") => completion(state, Kind::Chat, req).await,
        (&Method::POST, "/v1/completions") => completion(state, Kind::Completion, req).await,
        (&Method::GET, "/v1/models") => {
            json(StatusCode::OK, openai::models(&state.model, state.created))
        }
        (&Method::GET, p) if p == "/health" || state.health_paths.iter().any(|h| h == p) => {
            if Instant::now() < state.ready_at || state.phase() == ABORTING {
                empty(StatusCode::SERVICE_UNAVAILABLE)
            } else {
                empty(StatusCode::OK)
            }
        }
        (&Method::GET, "/metrics") => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from(state.metrics.encode()),
        ),
        (m, "/v1/chat/completions" | "/v1/completions" | "/v1/models" | "/health" | "/metrics") => {
            let allow = if path.starts_with("/v1/") && path.ends_with("completions") {
                "POST"
            } else {
                "GET"
            };
            let mut r = json(
                StatusCode::METHOD_NOT_ALLOWED,
                openai::error_body(
                    &format!("{m} is not allowed on {path}; use {allow}"),
                    "invalid_request_error",
                    None,
                    Value::from(405),
                ),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        (m, _) => json(
            StatusCode::NOT_FOUND,
            openai::error_body(
                &format!(
                    "no route for {m} {path}; this server answers POST /v1/chat/completions, \
                     POST /v1/completions, GET /v1/models, GET /health and GET /metrics"
                ),
                "not_found_error",
                None,
                Value::from(404),
            ),
        ),
    }
}

async fn completion(state: Arc<State>, kind: Kind, req: Request<Incoming>) -> Response<Body> {
    let endpoint = Endpoint::from(kind);
    if Instant::now() < state.ready_at {
        state.metrics.request(endpoint, Outcome::rejected);
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            openai::error_body(
                "server is starting up (loading the model); retry later",
                "server_starting",
                None,
                Value::from(503),
            ),
        );
    }
    if state.phase() != SERVING {
        state.metrics.request(endpoint, Outcome::rejected);
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            openai::shutting_down_body(),
        );
    }
    // In flight from here on: a request still uploading its body holds a drain open.
    let (guard, mut abort) = InFlight::start(&state, endpoint);

    let too_large = || {
        invalid_request(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            None,
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        guard.finish(Outcome::bad_request);
        return too_large();
    }
    let aborted = || {
        json(
            StatusCode::INTERNAL_SERVER_ERROR,
            openai::error_body(
                "request aborted: the server is shutting down",
                "server_error",
                None,
                Value::from(500),
            ),
        )
    };
    let collected = tokio::select! {
        biased;
        _ = &mut abort => {
            guard.finish(Outcome::aborted);
            return aborted();
        }
        r = Limited::new(req.into_body(), MAX_BODY_BYTES).collect() => r,
    };
    let body = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            guard.finish(Outcome::bad_request);
            return too_large();
        }
        Err(e) => {
            // The client stopped sending; the guard records a client abort.
            debug!(error = %e, "could not read request body");
            return invalid_request(
                StatusCode::BAD_REQUEST,
                &format!("could not read the request body: {e}"),
                None,
            );
        }
    };
    let request = match openai::parse_request(kind, &body) {
        Ok(r) => r,
        Err(bad) => {
            debug!(message = %bad.message, "bad request");
            guard.finish(Outcome::bad_request);
            return invalid_request(StatusCode::BAD_REQUEST, &bad.message, bad.param);
        }
    };

    // With the request's own seed, the output is a function of the seed and the prompt, so a
    // continuation (the prompt plus the start of the output) yields exactly the rest. Without
    // one, every request draws its own length.
    let draw = match request.seed {
        Some(seed) => seed ^ request.prompt_hash,
        None => guard.id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    };
    let mut rng = StdRng::seed_from_u64(state.seed ^ draw);
    let start = request.already;
    // `max_tokens` counts this request's output, which starts after what it already carries.
    let (len, capped) = state.output_tokens.length_for(
        &mut rng,
        request.max_tokens.map(|m| m.saturating_add(start)),
    );
    let len = len.max(start);
    let plan = Plan {
        kind,
        id: openai::response_id(kind, guard.id),
        created: unix_now(),
        model: request.model.unwrap_or_else(|| state.model.clone()),
        start,
        len,
        reason: if capped {
            FinishReason::Length
        } else {
            FinishReason::Stop
        },
        include_usage: request.include_usage,
        prompt_tokens: request.prompt_tokens,
        first_token_at: Instant::now()
            .checked_add(state.ttft)
            .unwrap_or_else(far_future),
        interval: state.token_interval,
    };

    if request.stream {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(generate(state, guard, abort, tx, plan));
        let mut r = Response::new(Body::Stream(rx));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return r;
    }

    // Non-streaming: answer when the last token would have been streamed.
    tokio::select! {
        biased;
        _ = &mut abort => {
            guard.finish(Outcome::aborted);
            aborted()
        }
        () = sleep_until(plan.token_at(plan.len.saturating_sub(1).max(plan.start))) => {
            state.metrics.tokens.inc_by(u64::from(plan.len - plan.start));
            guard.finish(Outcome::ok);
            json(
                StatusCode::OK,
                openai::full_response(
                    kind,
                    &plan.id,
                    plan.created,
                    &plan.model,
                    plan.start..plan.len,
                    plan.reason,
                    plan.prompt_tokens,
                ),
            )
        }
    }
}

/// Everything decided about one generation before it starts.
struct Plan {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// The index of the first token to send (a continuation starts after what it carries).
    start: u32,
    /// The index after the last token (≥ `start`; the whole output's length).
    len: u32,
    reason: FinishReason,
    include_usage: bool,
    prompt_tokens: u32,
    first_token_at: Instant,
    interval: Duration,
}

impl Plan {
    /// When token `i` (0-based, from `start`) is due: absolute, so delays never accumulate.
    fn token_at(&self, i: u32) -> Instant {
        self.interval
            .checked_mul(i.saturating_sub(self.start))
            .and_then(|d| self.first_token_at.checked_add(d))
            .unwrap_or_else(far_future)
    }
}

enum Stop {
    Done,
    Aborted,
    ClientGone,
}

/// Produces one streamed response: role (chat), one event per token on schedule, the finish
/// event, optional usage, `[DONE]`. Stops early when the server aborts or the client leaves.
async fn generate(
    state: Arc<State>,
    guard: InFlight,
    mut abort: oneshot::Receiver<()>,
    tx: mpsc::Sender<Bytes>,
    plan: Plan,
) {
    let chunks = Chunks::new(plan.kind, &plan.id, plan.created, &plan.model);
    let sleep = sleep_until(plan.first_token_at);
    tokio::pin!(sleep);
    let mut sent: u32 = 0;
    let mut next = plan.start;

    let stop = loop {
        if next == plan.len {
            break Stop::Done;
        }
        sleep.as_mut().reset(plan.token_at(next));
        tokio::select! {
            biased;
            _ = &mut abort => break Stop::Aborted,
            () = tx.closed() => break Stop::ClientGone,
            () = &mut sleep => {}
        }
        if sent == 0 && plan.kind == Kind::Chat {
            match send(&tx, &mut abort, chunks.role()).await {
                Ok(()) => {}
                Err(stop) => break stop,
            }
        }
        match send(&tx, &mut abort, chunks.token(next)).await {
            Ok(()) => {}
            Err(stop) => break stop,
        }
        state.metrics.tokens.inc();
        sent += 1;
        next += 1;
    };

    let reason = match stop {
        Stop::ClientGone => {
            debug!(id = %plan.id, tokens = sent, "client went away");
            guard.finish(Outcome::client_abort);
            return;
        }
        Stop::Aborted => FinishReason::Abort,
        Stop::Done => plan.reason,
    };
    // The ending goes out even while aborting: that is the simulated engine's (fake) success.
    let mut ending = vec![chunks.finish(reason)];
    if plan.include_usage {
        ending.push(chunks.usage(Usage {
            prompt_tokens: plan.prompt_tokens,
            completion_tokens: sent,
        }));
    }
    ending.push(Bytes::from_static(openai::DONE));
    let mut delivered = true;
    for event in ending {
        if tx.send(event).await.is_err() {
            delivered = false;
            break;
        }
    }
    guard.finish(match (delivered, reason) {
        (false, _) => Outcome::client_abort,
        (true, FinishReason::Abort) => Outcome::aborted,
        (true, _) => Outcome::ok,
    });
}

/// Sends one event, giving up if the server aborts while the client is not reading.
async fn send(
    tx: &mpsc::Sender<Bytes>,
    abort: &mut oneshot::Receiver<()>,
    event: Bytes,
) -> Result<(), Stop> {
    // Fast path: room in the buffer.
    match tx.try_send(event) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::ClientGone),
        Err(mpsc::error::TrySendError::Full(event)) => tokio::select! {
            biased;
            _ = abort => Err(Stop::Aborted),
            r = tx.send(event) => r.map_err(|_| Stop::ClientGone),
        },
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An instant no test or simulation reaches (30 years from now), for unrepresentable deadlines.
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or(now)
}
