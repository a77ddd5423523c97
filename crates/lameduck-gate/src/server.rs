//! Listeners: client connections (HTTP/1.1 and h2c) and the admin endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use lameduck_gate_api::{BudgetSettings, ChildStatus, DrainAccepted, GateStatus, InFlight, Limits};
use lameduck_timeline::{DrainRequest, Trigger, parse_duration};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::body::GateBody;
use crate::conn::{self, ConnCtl, Verdict};
use crate::proxy::{self, Proxy, text};
use crate::quiet::Quiet;
use crate::state::Shared;

/// Admin connections held at most: probes, preStop hooks, an agent and operators need few,
/// and a flood on the admin port must not take descriptors from the proxy or the engine.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The most an HTTP/1.1 connection buffers: a request head larger than this is refused (431).
pub const H1_MAX_BUF: usize = 64 * 1024;

/// HTTP/2 flow-control windows for request bodies, per stream and per connection.
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONN_WINDOW: u32 = 512 * 1024;

/// How long an accepted connection waits for a free slot when the proxy port is full, while
/// connections without work are closed to make room.
const FULL_WAIT: Duration = Duration::from_secs(1);

/// Logs "connection limit reached" at most this often.
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts client connections until the process exits.
pub async fn serve_proxy(listener: TcpListener, proxy: Arc<Proxy>) {
    let shared = proxy.shared.clone();
    let cfg = &shared.config;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Covers a request's headers and, for keep-alive, the wait for the next request;
        // the first request's deadline is the watchdog's (`--header-timeout`).
        .header_read_timeout(cfg.idle_timeout.max(cfg.header_timeout))
        // Bounds what one connection can make the gate buffer: a request head (431 beyond
        // it) or body data read ahead of the engine.
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        // What one HTTP/2 connection can make the gate buffer of request bodies the engine
        // has not read yet (hyper's defaults are 1 MiB for each).
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW);
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let exit = shared.exit.clone();
    let mut last_full_log: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "Accept failed on the proxy listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = exit.cancelled() => return,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: connections that carry nothing make room, and this one waits a little.
                shared.pressure.store(true, Ordering::Release);
                shared.pressure_changed.notify_waiters();
                let waited = tokio::select! {
                    p = tokio::time::timeout(FULL_WAIT, slots.clone().acquire_owned()) => p.ok().and_then(Result::ok),
                    _ = exit.cancelled() => return,
                };
                shared.pressure.store(false, Ordering::Release);
                match waited {
                    Some(p) => p,
                    None => {
                        shared.metrics.connections_refused.inc();
                        if last_full_log.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
                            last_full_log = Some(tokio::time::Instant::now());
                            tracing::warn!(
                                max_connections = shared.limits.max_connections,
                                "Connection limit reached and every connection carries work: new connections are closed (raise --max-connections or the file-descriptor limit)"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_conn(builder.clone(), stream, peer, proxy.clone(), permit);
        // A disabled span still costs a check on every poll of every event.
        let span = tracing::debug_span!("conn", client.addr = %peer);
        if span.is_disabled() {
            shared.connections.spawn(conn);
        } else {
            shared.connections.spawn(conn.instrument(span));
        }
    }
}

async fn serve_conn(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    _permit: OwnedSemaphorePermit,
) {
    let shared = &proxy.shared;
    let accepted = shared.now();
    shared.metrics.connections.inc();
    let _open = OnDrop(|| {
        shared.metrics.connections.dec();
    });
    let ctl = Arc::new(ConnCtl::new(peer, accepted));
    let svc = {
        let proxy = proxy.clone();
        let ctl = ctl.clone();
        service_fn(move |req| proxy::handle(proxy.clone(), ctl.clone(), peer, req))
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let announce = shared.announce.clone();
    let exit = shared.exit.clone();
    // When announcing starts, a connection that has carried a request is shut down
    // gracefully: closed at once if idle, after its current response otherwise (HTTP/1.1),
    // or sent GOAWAY (HTTP/2). A connection that has not carried a request yet is left
    // alone, since its first request may be in transit and closing it would lose that
    // request; that request is answered with Connection: close (or followed by GOAWAY).
    // At exit, every connection is shut down gracefully.
    // Quiet: polled again only when one of its signals fired, not for every streamed event.
    let shutdown = Quiet::new(async {
        if !announce.is_cancelled() {
            tokio::select! {
                _ = announce.cancelled() => {
                    if ctl.used.load(Ordering::Acquire) {
                        return;
                    }
                }
                _ = ctl.close.notified() => return,
                _ = exit.cancelled() => return,
            }
        }
        tokio::select! {
            _ = ctl.close.notified() => {}
            _ = exit.cancelled() => {}
        }
    });
    let watchdog = Quiet::new(conn::watchdog(shared, &ctl, accepted));
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        verdict = watchdog => match verdict {
            Verdict::Drop(reason) => {
                shared.metrics.connection_closes(reason).inc();
                tracing::debug!(reason = reason.as_str(), "Closing a connection that sent no request");
                return;
            }
            Verdict::Graceful(reason) => {
                shared.metrics.connection_closes(reason).inc();
                tracing::debug!(reason = reason.as_str(), "Closing an idle connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        },
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "Connection ended with an error");
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Serves the admin endpoints until the process exits.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let exit = shared.exit.clone();
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut last_full_log: Option<tokio::time::Instant> = None;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed on the admin listener");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = exit.cancelled() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if last_full_log.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
                last_full_log = Some(tokio::time::Instant::now());
                tracing::warn!(
                    max = ADMIN_MAX_CONNECTIONS,
                    "Admin connection limit reached: new admin connections are closed (is something flooding the admin port? it must never be in a Service)"
                );
            }
            continue;
        };
        let shared = shared.clone();
        let exit = exit.clone();
        let tracker = shared.connections.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let svc = {
                let shared = shared.clone();
                service_fn(move |req| admin(shared.clone(), req))
            };
            // HTTP/1.1 only: the header timeout starts at once, so a silent connection is
            // closed after it.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = exit.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "Admin connection ended with an error");
            }
        });
    }
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<GateBody> {
    let mut r = text(status, serde_json::to_string(v).unwrap_or_default());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Compares without an early exit, so response timing does not reveal the token.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn admin(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<GateBody>, Infallible> {
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let resp = match path {
        "/ready" | "/readyz" if get => match shared.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/live" | "/livez" if get => {
            if shared.live() {
                text(StatusCode::OK, "live\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not live: engine process exited\n",
                )
            }
        }
        "/metrics" if get => {
            let mut r = text(StatusCode::OK, shared.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                // prometheus-client writes the OpenMetrics text format (`# EOF`, counters
                // with a `_total` sample); Prometheus negotiates and parses it.
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/status" if get => json(StatusCode::OK, &status(&shared)),
        "/drain" if get || req.method() == Method::POST => drain(&shared, &req).await,
        "/ready" | "/readyz" | "/live" | "/livez" | "/metrics" | "/status" | "/drain" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin endpoints are /ready /live /drain /metrics /status\n",
        ),
    };
    Ok(resp)
}

async fn drain(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<GateBody> {
    if let Some(expected) = &shared.config.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !token_matches(given.as_bytes(), expected.as_bytes()) {
            return text(
                StatusCode::UNAUTHORIZED,
                "unauthorized: /drain needs `Authorization: Bearer <token>` (the gate's --admin-token)\n",
            );
        }
    }
    let query = req.uri().query();
    let deadline = match query_param(query, "deadline").map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return text(StatusCode::BAD_REQUEST, format!("?deadline: {e}\n"));
        }
    };
    let wait = !matches!(query_param(query, "wait"), Some("false" | "0"));
    // Open until this call returns: the kubelet's SIGTERM follows a preStop's return.
    let _hook = wait.then(|| shared.hook_call());
    let join = shared.drain(DrainRequest {
        deadline,
        ..DrainRequest::new(Trigger::Endpoint)
    });
    if !wait {
        return json(
            StatusCode::ACCEPTED,
            &DrainAccepted {
                drain: format!("{join:?}").to_lowercase(),
                report: shared.gate_report(),
            },
        );
    }
    shared.drained().await;
    json(StatusCode::OK, &shared.gate_report())
}

fn status(shared: &Shared) -> GateStatus {
    let m = &shared.metrics;
    // The machine's: a deletion with a shorter grace period (--kube) lowers it. Read on its
    // own: the lock must not be held while the rest of the status is built.
    let grace = shared.machine().config().grace;
    let child = shared.child();
    GateStatus {
        phase: shared.phase(),
        ready: shared.readiness().is_ok(),
        not_ready_reason: shared.readiness().err().map(str::to_owned),
        live: shared.live(),
        upstream: format!(
            "{}://{}",
            shared.config.upstream.scheme, shared.config.upstream.authority
        ),
        upstream_healthy: shared.upstream_healthy.load(Ordering::SeqCst),
        in_flight: InFlight {
            request: m.in_flight(crate::metrics::Kind::Request).get(),
            stream: m.in_flight(crate::metrics::Kind::Stream).get(),
            upgraded: m.in_flight(crate::metrics::Kind::Upgraded).get(),
        },
        // The program's name only: its arguments can hold secrets.
        child: shared.config.command.first().map(|program| ChildStatus {
            program: crate::supervisor::program_name(program).to_owned(),
            pid: match child {
                crate::state::Child::Running { pid, .. } if pid > 0 => Some(pid),
                _ => None,
            },
            running: matches!(child, crate::state::Child::Running { .. }),
            exit_status: match child {
                crate::state::Child::Exited { status, .. } => Some(status),
                _ => None,
            },
        }),
        limits: Limits {
            max_connections: shared.limits.max_connections,
            max_in_flight: shared.limits.max_in_flight,
            nofile: shared.limits.nofile,
            header_timeout_s: shared.config.header_timeout.as_secs_f64(),
            idle_timeout_s: shared.config.idle_timeout.as_secs_f64(),
        },
        connections: m.connections.get(),
        budget: BudgetSettings {
            grace_period_s: grace.as_secs_f64(),
            kill_margin_s: shared.config.drain.margin.as_secs_f64(),
            pre_stop_spent_s: shared.config.pre_stop_spent.as_secs_f64(),
            convergence_min_s: shared.config.drain.convergence.min.as_secs_f64(),
            convergence_quiet_s: shared.config.drain.convergence.quiet.as_secs_f64(),
            convergence_max_s: shared.config.drain.convergence.max.as_secs_f64(),
        },
        drain: shared.gate_report(),
        pod: shared
            .config
            .kube
            .as_ref()
            .map(|k| lameduck_gate_api::PodRef {
                namespace: k.namespace.clone(),
                name: k.pod.clone(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("deadline=30s&wait=false"), "wait"),
            Some("false")
        );
        assert_eq!(query_param(Some("deadline=30s"), "deadline"), Some("30s"));
        assert_eq!(query_param(Some("wait"), "wait"), Some(""));
        assert_eq!(query_param(None, "wait"), None);
    }

    #[test]
    fn tokens() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
    }
}
