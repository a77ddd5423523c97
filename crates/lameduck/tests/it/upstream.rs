//! A small in-process upstream on loopback for behaviours engine-sim does not have: a slow
//! non-SSE body, an upgrade that echoes, an SSE stream that stalls mid-event, and which of
//! the gate's connections carried a request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

fn full(s: &'static str) -> Body {
    Full::new(Bytes::from_static(s.as_bytes())).boxed()
}

/// Chunks sent `every` apart, forever (until the client goes away).
fn ticking(chunks: Vec<&'static str>, every: Duration, then_stall: bool) -> Body {
    let s = stream::unfold((0usize, chunks), move |(i, chunks)| async move {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        if i >= chunks.len() {
            if then_stall {
                std::future::pending::<()>().await;
            }
            return None;
        }
        let frame = Frame::data(Bytes::from_static(chunks[i].as_bytes()));
        Some((Ok::<_, Infallible>(frame), (i + 1, chunks)))
    });
    StreamBody::new(s).boxed()
}

/// `peer`: the gate's end of the connection that carried `req`.
async fn route(peer: SocketAddr, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let resp = match req.uri().path() {
        "/health" => Response::new(full("ok")),
        // Which connection carried this request.
        "/conn" => {
            let body = serde_json::json!({ "peer": peer.to_string() });
            Response::new(Full::new(Bytes::from(body.to_string())).boxed())
        }
        // Answers, then closes the connection (as an engine does at its keep-alive limit).
        "/close" => {
            let mut r = Response::new(full("closing"));
            r.headers_mut()
                .insert(header::CONNECTION, "close".parse().expect("hv"));
            r
        }
        // A plain (non-SSE) body that never ends on its own: 100 chunks, 100 ms apart.
        "/slow" => {
            let chunks = vec!["chunk\n"; 100];
            let mut r = Response::new(ticking(chunks, Duration::from_millis(100), false));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, "text/plain".parse().expect("hv"));
            r
        }
        // SSE: one whole event, then half of the next, then silence (a stalled engine).
        "/stall-sse" => {
            let chunks = vec!["data: {\"n\":1}\n\n", "data: {\"n\":"];
            let mut r = Response::new(ticking(chunks, Duration::from_millis(50), true));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/event-stream".parse().expect("hv"),
            );
            r
        }
        // Echoes the request's hop-by-hop view back, to check what was forwarded.
        "/headers" => {
            let mut names: Vec<String> = req
                .headers()
                .keys()
                .map(|k| k.as_str().to_owned())
                .collect();
            names.sort();
            let body = serde_json::json!({
                "names": names,
                "host": req.headers().get(header::HOST).and_then(|v| v.to_str().ok()),
                "xff": req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
                "version": format!("{:?}", req.version()),
            });
            Response::new(Full::new(Bytes::from(body.to_string())).boxed())
        }
        // An upgrade to a line echo protocol.
        "/upgrade" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert(header::UPGRADE, "echo".parse().expect("hv"));
            r.headers_mut()
                .insert(header::CONNECTION, "upgrade".parse().expect("hv"));
            r
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(resp)
}

/// Starts the upstream on an ephemeral loopback port.
pub async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req| route(peer, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}
