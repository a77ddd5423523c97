//! The small admin server of the cluster components (agent, rainbow controller): `/metrics`
//! from a render function, and `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Renders the metrics' text exposition.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `/metrics` and `/healthz` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, render: Render) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, render()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
                        _ => (
                            StatusCode::NOT_FOUND,
                            "not found: /metrics, /healthz\n".to_owned(),
                        ),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    if status == StatusCode::OK && req.uri().path() == "/metrics" {
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            ),
                        );
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
