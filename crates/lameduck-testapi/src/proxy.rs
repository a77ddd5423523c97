//! The pod proxy subresource: the request goes on over HTTP/1.1 to the pod's IP and port, and
//! the answer streams back.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::pods;
use crate::resources::POD;
use crate::store::Shared;
use crate::{Body, BoxError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
    )
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", message)
}

/// `name`, `name:port` or `scheme:name:port`.
fn split_target(target: &str) -> Result<(&str, Option<&str>), ApiError> {
    let parts: Vec<&str> = target.split(':').collect();
    match parts.as_slice() {
        [name] => Ok((name, None)),
        [name, port] => Ok((name, Some(*port).filter(|p| !p.is_empty()))),
        ["http" | "", name, port] => Ok((name, Some(*port).filter(|p| !p.is_empty()))),
        ["https", _, _] => Err(unavailable(
            "this test server does not proxy to pods over https".to_owned(),
        )),
        _ => Err(ApiError::bad_request(format!(
            "invalid pod proxy target {target:?}"
        ))),
    }
}

/// Forwards the request to the pod.
pub(crate) async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    ns: &str,
    target: &str,
    rest: &str,
) -> Result<Response<Body>, ApiError> {
    let (name, port) = split_target(target)?;
    let pod = shared
        .lock()
        .get(POD, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(POD, name))?;
    let Some(ip) = pods::pod_ip(&pod).map(str::to_owned) else {
        return Err(unavailable(format!(
            "error trying to reach service: pod {name} has no IP address"
        )));
    };
    let port: u16 = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) => n,
            Err(_) => pods::named_port(&pod, p)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| {
                    unavailable(format!(
                        "error trying to reach service: no port named {p:?} in pod {name}"
                    ))
                })?,
        },
        None => pods::serving_containers(&pod)
            .iter()
            .filter(|c| c.get("restartPolicy").is_none())
            .find_map(|c| {
                c.get("ports")?
                    .as_array()?
                    .first()?
                    .get("containerPort")?
                    .as_i64()
            })
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or(80),
    };
    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((ip.as_str(), port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(unavailable(format!(
                "error trying to reach service: dial tcp {ip}:{port}: {e}"
            )));
        }
        Err(_) => {
            return Err(unavailable(format!(
                "error trying to reach service: dial tcp {ip}:{port}: i/o timeout"
            )));
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(format!("error trying to reach service: {e}")))?;
    shared.handle.spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "proxied connection ended with an error");
        }
    });

    let (parts, body) = req.into_parts();
    let mut uri = format!("/{rest}");
    if let Some(q) = parts.uri.query() {
        uri.push('?');
        uri.push_str(q);
    }
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(uri.as_str());
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            out = out.header(k, v);
        }
    }
    let host = HeaderValue::from_str(&format!("{ip}:{port}"))
        .map_err(|e| ApiError::internal(format!("bad host header: {e}")))?;
    out = out.header(header::HOST, host);
    let upstream = out
        .body(body)
        .map_err(|e| ApiError::bad_request(format!("cannot forward the request: {e}")))?;
    tracing::debug!(pod = %name, %ip, port, path = %uri, "proxying");
    let resp = sender
        .send_request(upstream)
        .await
        .map_err(|e| unavailable(format!("error trying to reach service: {e}")))?;
    let (mut parts, body) = resp.into_parts();
    let names: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| hop_by_hop(k))
        .cloned()
        .collect();
    for n in names {
        parts.headers.remove(n);
    }
    let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("p").expect("ok"), ("p", None));
        assert_eq!(split_target("p:8080").expect("ok"), ("p", Some("8080")));
        assert_eq!(
            split_target("http:p:http").expect("ok"),
            ("p", Some("http"))
        );
        assert_eq!(split_target("p:").expect("ok"), ("p", None));
        assert!(split_target("https:p:443").is_err());
        assert!(split_target("a:b:c:d").is_err());
    }
}
