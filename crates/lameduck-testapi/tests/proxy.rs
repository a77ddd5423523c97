//! The pod proxy subresource against a real HTTP server on the pod's loopback IP.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::{api_error, bounded, client, pod};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use lameduck_testapi::TestApi;
use serde_json::json;
use tokio::net::TcpListener;

/// Answers every request with a line describing it.
async fn echo_server(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .await
        .expect("bind the echo server");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let method = req.method().to_string();
                    let uri = req.uri().to_string();
                    let marker = req
                        .headers()
                        .get("x-marker")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let text =
                        format!("{method} {uri} {marker} {}", String::from_utf8_lossy(&body));
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-from-pod", "yes")
                            .body(Full::new(Bytes::from(text)))
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn proxies_to_the_pod_ip_and_port() {
    bounded(async {
        let api = TestApi::start().await;
        let port = echo_server("127.0.0.2").await;
        let mut p = pod("web-0", json!({"app": "web"}), "127.0.0.2");
        p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": port}]);
        api.create(p);
        let c = client(&api);

        // The default port is the first container port.
        let req = http::Request::get("/api/v1/namespaces/default/pods/web-0/proxy/metrics?x=1&y=2")
            .header("x-marker", "m1")
            .body(Vec::new())
            .expect("request");
        let text = c.request_text(req).await.expect("proxied GET");
        assert_eq!(text, "GET /metrics?x=1&y=2 m1 ");

        // An explicit port, by number and by name, with a body.
        for target in [format!("web-0:{port}"), "http:web-0:http".to_owned()] {
            let req = http::Request::post(format!(
                "/api/v1/namespaces/default/pods/{target}/proxy/drain"
            ))
            .body(b"now".to_vec())
            .expect("request");
            let text = c.request_text(req).await.expect("proxied POST");
            assert_eq!(text, "POST /drain - now");
        }
        // Headers come back.
        let req = http::Request::get("/api/v1/namespaces/default/pods/web-0/proxy/")
            .body(Vec::new())
            .expect("request");
        let resp = c
            .send(req.map(kube::client::Body::from))
            .await
            .expect("proxied");
        assert_eq!(
            resp.headers().get("x-from-pod").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );

        // A pod without an IP, or with nothing listening: 503.
        let mut p = pod("no-ip", json!({}), "");
        p["status"] = json!({"phase": "Pending"});
        api.create(p);
        let req = http::Request::get("/api/v1/namespaces/default/pods/no-ip/proxy/x")
            .body(Vec::new())
            .expect("request");
        let err = api_error(c.request_text(req).await);
        assert_eq!((err.code, err.reason.as_str()), (503, "ServiceUnavailable"));
        api.create(pod("dead", json!({}), "127.0.0.3"));
        let req = http::Request::get("/api/v1/namespaces/default/pods/dead:1/proxy/x")
            .body(Vec::new())
            .expect("request");
        let err = api_error(c.request_text(req).await);
        assert_eq!((err.code, err.reason.as_str()), (503, "ServiceUnavailable"));
        let req = http::Request::get("/api/v1/namespaces/default/pods/missing/proxy/x")
            .body(Vec::new())
            .expect("request");
        assert_eq!(api_error(c.request_text(req).await).code, 404);
    })
    .await;
}
