//! The reverse proxy: one request in, one request to the engine, the response streamed back
//! through a [`TrackedBody`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck_timeline::{Admission, Outcome};

use crate::body::{
    ClientBody, Ending, GRPC_UNAVAILABLE, GateBody, Guard, TrackedBody, client_failed,
    grpc_trailers,
};
use crate::conn::ConnCtl;
use crate::handoff::{Api, Capture, Handoff, Origin, Peer, Tracker};
use crate::metrics::Kind;
use crate::state::Shared;

/// Idle engine connections kept for reuse. Enough for the concurrency of short requests; after a
/// burst of streams, the connections beyond it are closed at once instead of holding their
/// buffers for the pool's idle timeout (as nginx's `keepalive 32` does).
pub const ENGINE_POOL_IDLE: usize = 128;

/// The proxy: shared state plus the pooled clients to the engine (HTTP/1.1, and HTTP/2 with
/// prior knowledge for gRPC or `--upstream-protocol h2c`).
#[derive(Debug)]
pub struct Proxy {
    /// Shared state.
    pub shared: Arc<Shared>,
    client: Client<HttpConnector, ClientBody>,
    h2: Client<HttpConnector, ClientBody>,
    /// `--handoff-to`: the peers a stream that cannot finish continues on.
    peer: Option<Arc<Peer>>,
}

impl Proxy {
    /// A proxy with keep-alive connection pools to the engine.
    pub fn new(shared: Arc<Shared>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(ENGINE_POOL_IDLE)
            .build(connector.clone());
        // One HTTP/2 connection carries many calls; it is reused like the HTTP/1.1 pool.
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .http2_only(true)
            .build(connector);
        let peer = shared
            .config
            .handoff
            .clone()
            .map(|settings| Arc::new(Peer::new(settings)));
        Proxy {
            shared,
            client,
            h2,
            peer,
        }
    }
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `application/grpc+proto`,
/// …).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            let t = t.trim().to_ascii_lowercase();
            t == "application/grpc"
                || t.starts_with("application/grpc+")
                || t.starts_with("application/grpc;")
        })
}

/// A gRPC answer from the gate itself, with no message: HTTP 200, the status in the headers
/// ("trailers-only", as the gRPC HTTP/2 protocol allows).
fn grpc_response(code: u16, message: &str) -> Response<GateBody> {
    let mut resp = Response::new(GateBody::Empty);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.extend(grpc_trailers(code, message));
    resp
}

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names, and
/// `Upgrade` unless the exchange is an upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                let framing = t.is_empty()
                    || t.eq_ignore_ascii_case("close")
                    || t.eq_ignore_ascii_case("keep-alive");
                let hop_upgrade = keep_upgrade && t.eq_ignore_ascii_case("upgrade");
                !(framing || hop_upgrade)
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() <= Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// An OpenAI-style JSON error answered by the gate itself.
pub fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
    retry_after: Option<u32>,
    close: bool,
) -> Response<GateBody> {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "code": status.as_u16() }
    })
    .to_string();
    let mut resp = Response::new(GateBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Handles one client request.
pub async fn handle(
    proxy: Arc<Proxy>,
    ctl: Arc<ConnCtl>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<GateBody>, Infallible> {
    let shared = &proxy.shared;
    let h1 = req.version() <= Version::HTTP_11;
    let admission = shared.admit(Kind::Request);
    ctl.used.store(true, std::sync::atomic::Ordering::Release);
    if admission == Admission::Overloaded {
        tracing::debug!(%peer, uri = %req.uri(), "Refused: in-flight limit reached");
        return Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_overloaded",
            "this server has as many requests in flight as it accepts (--max-in-flight); retry the request",
            Some(shared.config.retry_after),
            false,
        ));
    }
    let close = admission != Admission::Serve;
    if close {
        // This connection must not carry more work: close it after this response (HTTP/1.1)
        // or send GOAWAY (HTTP/2).
        ctl.close.notify_one();
    }
    if admission == Admission::Refuse {
        tracing::debug!(%peer, uri = %req.uri(), "Refused: draining");
        return Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutdown",
            "this server is draining; retry the request (it will reach another replica)",
            Some(shared.config.retry_after),
            h1,
        ));
    }
    let grpc = is_grpc(req.headers());
    let mut guard = Guard::new(shared.clone(), Kind::Request, Some(ctl.clone()));
    if grpc {
        guard.set_grpc();
    }
    // This request's own view of the deadline: waiting on it locks nothing shared.
    let deadline = shared.deadline.child_token();

    let upgrade = wants_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let route = match rewrite_request(shared, &mut parts, peer, &ctl, grpc, upgrade) {
        Ok(route) => route,
        Err(e) => {
            guard.set_outcome(Outcome::Ok);
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid request target: {e}"),
                None,
                close && h1,
            ));
        }
    };
    // A request a handoff could continue keeps its body while it runs.
    let origin = match (&proxy.peer, grpc || upgrade) {
        (Some(peer), false) => Api::of(&parts.method, parts.uri.path()).map(|api| {
            let declared = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            Arc::new(Origin {
                api,
                path: parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                headers: parts.headers.clone(),
                capture: Capture::new(peer.settings.max_body, declared),
            })
        }),
        _ => None,
    };
    let (body, body_failed) = ClientBody::new(body, origin.as_ref().map(|o| o.capture.clone()));
    let upstream_req = Request::from_parts(parts, body);

    let upstream = if route.h2 { &proxy.h2 } else { &proxy.client };
    let result = tokio::select! {
        r = upstream.request(upstream_req) => r,
        _ = deadline.cancelled() => {
            guard.set_outcome(Outcome::Truncated);
            return Ok(not_started(shared, grpc, h1));
        }
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let client_error = client_failed(body_failed.as_ref());
            return Ok(upstream_failed(
                shared,
                &mut guard,
                peer,
                &e,
                client_error,
                grpc,
                (close, h1),
            ));
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        guard.set_kind(Kind::Upgraded);
        tokio::spawn(relay_upgraded(
            guard,
            client_upgrade,
            upstream_upgrade,
            route.websocket,
            deadline,
        ));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, GateBody::Empty));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // How this response ends if it cannot finish: decided once, here.
    let ending = Ending::of(&parts.headers, grpc);
    if ending == Ending::Sse {
        // The gate may append a terminal event, so the length is no longer known.
        parts.headers.remove(header::CONTENT_LENGTH);
        guard.set_kind(Kind::Stream);
    }
    if close && h1 {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(Response::from_parts(
        parts,
        GateBody::Proxied {
            body: TrackedBody::new(
                body,
                guard,
                ending,
                deadline,
                body_failed,
                match (origin, &proxy.peer) {
                    (Some(origin), Some(peer)) => Some(Box::new(Handoff {
                        peer: peer.clone(),
                        tracker: Tracker::new(origin.api),
                        origin,
                    })),
                    _ => None,
                },
            ),
        },
    ))
}

/// Where a request goes, decided from the client's request.
struct Route {
    /// A WebSocket upgrade.
    websocket: bool,
    /// Over the HTTP/2 client.
    h2: bool,
}

/// Turns the client's request into the engine's: its URI, hop-by-hop headers (an upgrade's
/// kept), `Host`, `X-Forwarded-For`, `te: trailers` for gRPC, and the protocol version.
fn rewrite_request(
    shared: &Shared,
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    ctl: &ConnCtl,
    grpc: bool,
    upgrade: bool,
) -> Result<Route, http::Error> {
    let original_authority = parts.uri.authority().cloned();
    parts.uri = shared.config.upstream.uri(parts.uri.path_and_query())?;
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    let websocket = upgrade
        && upgrade_value
            .as_ref()
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade && let Some(v) = upgrade_value {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, v);
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = original_authority
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    append_forwarded_for(&mut parts.headers, peer, ctl.forwarded_for.as_ref());
    if grpc {
        // gRPC servers require it; it was removed with the other hop-by-hop headers.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let h2 = !upgrade && shared.config.upstream_protocol.h2(grpc);
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    Ok(Route { websocket, h2 })
}

/// The deadline came before the engine's response started.
fn not_started(shared: &Shared, grpc: bool, h1: bool) -> Response<GateBody> {
    if grpc {
        return grpc_response(
            GRPC_UNAVAILABLE,
            "the server is shutting down and could not start this call in time; retry it",
        );
    }
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_shutdown",
        "the server is shutting down and could not start this response in time; retry the request",
        Some(shared.config.retry_after),
        h1,
    )
}

/// The exchange with the engine failed before its response: the client's body broke it, or
/// the engine could not be reached or failed.
fn upstream_failed(
    shared: &Shared,
    guard: &mut Guard,
    peer: SocketAddr,
    e: &hyper_util::client::legacy::Error,
    client_error: bool,
    grpc: bool,
    (close, h1): (bool, bool),
) -> Response<GateBody> {
    if client_error {
        // The client's body could not be read (a malformed chunked encoding, a reset
        // mid-upload): the client's error, and nothing the engine did.
        guard.set_outcome(Outcome::ClientError);
        tracing::debug!(%peer, error = %error_chain(e), "Client request body failed");
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request body could not be read: it ended early or its framing is malformed",
            None,
            h1,
        );
    }
    guard.set_outcome(Outcome::UpstreamError);
    let msg = if e.is_connect() {
        format!(
            "cannot reach the inference engine at {}: {}",
            shared.config.upstream.authority,
            error_chain(e)
        )
    } else {
        format!("the inference engine failed: {}", error_chain(e))
    };
    tracing::warn!(%peer, error = %msg, "Upstream error");
    if grpc {
        return grpc_response(GRPC_UNAVAILABLE, &msg);
    }
    error_response(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        &msg,
        None,
        close && h1,
    )
}

/// Relays an upgraded connection once both sides switched protocols: a WebSocket frame-aware
/// (a 1001 Close at the deadline), anything else byte for byte (cut at the deadline).
async fn relay_upgraded(
    mut guard: Guard,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
    websocket: bool,
    deadline: tokio_util::sync::CancellationToken,
) {
    let (client_io, upstream_io) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
        Ok(ios) => ios,
        Err(e) => {
            tracing::debug!(error = %e, "Upgrade failed");
            guard.set_outcome(Outcome::UpstreamError);
            return;
        }
    };
    let mut client_io = TokioIo::new(client_io);
    let mut upstream_io = TokioIo::new(upstream_io);
    if websocket {
        let end = crate::ws::relay(client_io, upstream_io, deadline).await;
        let (outcome, name) = match end {
            crate::ws::WsEnd::Closed => (Outcome::Ok, "closed"),
            crate::ws::WsEnd::GoingAway => (Outcome::Truncated, "going_away"),
            crate::ws::WsEnd::Broken => (Outcome::ClientAbort, "broken"),
        };
        guard.shared().metrics.websocket_ended(name);
        guard.shared().protocol_ended(true, name);
        guard.set_outcome(outcome);
        return;
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io) => {
            guard.set_outcome(if r.is_ok() { Outcome::Ok } else { Outcome::ClientAbort });
        }
        _ = deadline.cancelled() => guard.set_outcome(Outcome::Truncated),
    }
}

/// Appends the client's address to `X-Forwarded-For`; `cached` is its formatted value.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr, cached: Option<&HeaderValue>) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    match (headers.get(&XFF).and_then(|v| v.to_str().ok()), cached) {
        (None, Some(v)) => {
            headers.insert(XFF, v.clone());
        }
        (prev, _) => {
            let ip = peer.ip().to_string();
            let value = match prev {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(XFF, v);
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// A complete body for tests and admin answers.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<GateBody> {
    let mut r = Response::new(GateBody::full(body));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
        strip_hop_by_hop(&mut up, true);
        assert!(up.contains_key(header::UPGRADE));
        assert!(!up.contains_key("x-secret"));
    }

    #[test]
    fn the_ending_is_chosen_from_the_response_and_the_request() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Event-Stream; charset=utf-8"),
        );
        assert_eq!(Ending::of(&h, false), Ending::Sse);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(Ending::of(&h, false), Ending::Abort, "compressed SSE");
        let mut g = HeaderMap::new();
        g.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert_eq!(Ending::of(&g, true), Ending::Grpc);
        let mut j = HeaderMap::new();
        j.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(Ending::of(&j, false), Ending::Abort);
    }

    #[test]
    fn grpc_requests_are_recognised() {
        for (t, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=x", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            assert_eq!(is_grpc(&h), grpc, "{t}");
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let cached = ConnCtl::new(peer, std::time::Duration::ZERO).forwarded_for;
        append_forwarded_for(&mut h, peer, cached.as_ref());
        append_forwarded_for(&mut h, peer, cached.as_ref());
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 10.1.2.3");
    }
}
