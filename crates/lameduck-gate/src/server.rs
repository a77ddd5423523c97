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
use lameduck_timeline::{DrainRequest, Trigger, parse_duration};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::body::GateBody;
use crate::proxy::{self, ConnCtl, Proxy, text};
use crate::quiet::Quiet;
use crate::state::Shared;

/// Accepts client connections until the process exits.
pub async fn serve_proxy(listener: TcpListener, proxy: Arc<Proxy>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let exit = proxy.shared.exit.clone();
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
        let _ = stream.set_nodelay(true);
        let conn = serve_conn(builder.clone(), stream, peer, proxy.clone());
        // A disabled span still costs a check on every poll of every event.
        let span = tracing::debug_span!("conn", client.addr = %peer);
        if span.is_disabled() {
            tokio::spawn(conn);
        } else {
            tokio::spawn(conn.instrument(span));
        }
    }
}

async fn serve_conn(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
) {
    let ctl = Arc::new(ConnCtl::new(peer));
    let svc = {
        let proxy = proxy.clone();
        let ctl = ctl.clone();
        service_fn(move |req| proxy::handle(proxy.clone(), ctl.clone(), peer, req))
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let announce = proxy.shared.announce.clone();
    // When announcing starts, a connection that has carried a request is shut down
    // gracefully: closed at once if idle, after its current response otherwise (HTTP/1.1),
    // or sent GOAWAY (HTTP/2). A connection that has not carried a request yet is left
    // alone, since its first request may be in transit and closing it would lose that
    // request; that request is answered with Connection: close (or followed by GOAWAY).
    // Quiet: polled again only when one of its signals fired, not for every streamed event.
    let shutdown = Quiet::new(async {
        if !announce.is_cancelled() {
            tokio::select! {
                _ = announce.cancelled() => {
                    if ctl.used.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                }
                _ = ctl.close.notified() => return,
            }
        }
        ctl.close.notified().await;
    });
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "Connection ended with an error");
    }
}

/// Serves the admin endpoints until the process exits.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    let exit = shared.exit.clone();
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
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| admin(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Admin connection ended with an error");
            }
        });
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<GateBody> {
    let mut r = text(status, v.to_string());
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
    let join = shared.drain(DrainRequest {
        deadline,
        ..DrainRequest::new(Trigger::Endpoint)
    });
    if !wait {
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "drain": format!("{join:?}").to_lowercase(), "report": shared.report_json() }),
        );
    }
    shared.drained().await;
    json(StatusCode::OK, &shared.report_json())
}

fn status(shared: &Shared) -> serde_json::Value {
    let m = &shared.metrics;
    let pgid = shared.child_pgid.load(Ordering::SeqCst);
    serde_json::json!({
        "phase": shared.phase().as_str(),
        "ready": shared.readiness().is_ok(),
        "not_ready_reason": shared.readiness().err(),
        "live": shared.live(),
        "upstream": format!("{}://{}", shared.config.upstream.scheme, shared.config.upstream.authority),
        "upstream_healthy": shared.upstream_healthy.load(Ordering::SeqCst),
        "in_flight": {
            "request": m.in_flight(crate::metrics::Kind::Request).get(),
            "stream": m.in_flight(crate::metrics::Kind::Stream).get(),
            "upgraded": m.in_flight(crate::metrics::Kind::Upgraded).get(),
        },
        "child": if shared.config.command.is_empty() { serde_json::Value::Null } else {
            serde_json::json!({
                "command": shared.config.command,
                "pid": (pgid > 0).then_some(pgid),
                "running": shared.child_alive.load(Ordering::SeqCst),
            })
        },
        "budget": {
            "grace_period_s": shared.config.drain.grace.as_secs_f64(),
            "kill_margin_s": shared.config.drain.margin.as_secs_f64(),
            "prestop_spent_s": shared.config.prestop_spent.as_secs_f64(),
            "convergence_min_s": shared.config.drain.convergence.min.as_secs_f64(),
            "convergence_quiet_s": shared.config.drain.convergence.quiet.as_secs_f64(),
            "convergence_max_s": shared.config.drain.convergence.max.as_secs_f64(),
        },
        "drain": shared.report_json(),
    })
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
