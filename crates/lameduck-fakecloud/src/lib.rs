//! Fake cloud metadata servers for tests: AWS IMDSv2, the GCE metadata server and Azure
//! Scheduled Events, each on `127.0.0.1:<random port>`, with notices and faults on demand.
//!
//! The protocols are imitated closely enough that a client which works against the fake should
//! work against the real service: the same paths, headers, status codes and body shapes, the
//! same refusals (IMDSv2 tokens, `Metadata-Flavor: Google`, `Metadata: true`, `api-version`).
//! Each faithful behaviour cites its source next to the code (`aws.rs`, `gcp.rs`, `azure.rs`);
//! README.md lists what is simplified.
//!
//! ```no_run
//! # async fn example() {
//! use lameduck_fakecloud::{FakeMetadata, Provider};
//! let fake = FakeMetadata::start(Provider::Aws).await;
//! fake.reclaim(std::time::SystemTime::now() + std::time::Duration::from_secs(120));
//! // point the client under test at fake.url()
//! # }
//! ```

mod aws;
mod azure;
mod format;
mod gcp;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use lameduck_cloud::Provider;

/// Misbehaviour to inject, applied to every request that arrives while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `200 OK` with a body no client can parse (not UTF-8, not JSON, not a value).
    Garbage,
    /// Accept the request and never answer.
    Hang,
    /// `500 Internal Server Error`.
    Error500,
}

/// A running fake metadata server. Dropping it stops the server and every open connection.
pub struct FakeMetadata {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

type Resp = Response<Full<Bytes>>;

/// One recorded request: method, path with query, and the headers that matter.
type Recorded = (String, String, Vec<String>);

/// Request headers worth recording (as `name: value`, name lowercase).
const RECORDED_HEADERS: [&str; 6] = [
    "x-aws-ec2-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token",
    "metadata-flavor",
    "metadata",
    "content-type",
    "x-forwarded-for",
];

pub(crate) struct Shared {
    provider: Provider,
    state: Mutex<State>,
    /// Bumped on every change, for GCP's hanging GETs.
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
pub(crate) struct State {
    fault: Option<Fault>,
    requests: Vec<Recorded>,
    serial: u64,
    seed: u64,
    pub(crate) aws: aws::AwsState,
    pub(crate) gcp: gcp::GcpState,
    pub(crate) azure: azure::AzureState,
}

impl State {
    /// A fresh pseudo-random number (ids and tokens only need to be unique and look the part).
    pub(crate) fn next_random(&mut self) -> u64 {
        self.serial += 1;
        splitmix(self.seed ^ self.serial.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes every request waiting for a change.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let out = change(&mut self.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        out
    }
}

/// A parsed request, body included.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl FakeMetadata {
    /// Serve `provider`'s metadata protocol on 127.0.0.1:0 (background tokio task; dropped =
    /// stopped).
    pub async fn start(provider: Provider) -> FakeMetadata {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0 for the fake metadata server");
        let addr = listener
            .local_addr()
            .expect("local address of the fake metadata server");
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED)
            ^ u64::from(addr.port());
        let state = State {
            seed,
            azure: azure::AzureState::new(),
            ..State::default()
        };
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            provider,
            state: Mutex::new(state),
            changed,
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        FakeMetadata {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn provider(&self) -> Provider {
        self.shared.provider
    }

    /// AWS: spot instance-action {action, time}; GCP: preempted=TRUE (time ignored); Azure: a
    /// Preempt event with NotBefore = time.
    pub fn reclaim(&self, at: SystemTime) {
        match self.shared.provider {
            Provider::Aws => self.shared.update(|s| aws::reclaim(s, at)),
            Provider::Gcp => self.shared.update(gcp::reclaim),
            Provider::Azure => self.shared.update(|s| azure::reclaim(s, at)),
        }
    }

    /// AWS: scheduled maintenance event (system-reboot, active); GCP: maintenance-event
    /// TERMINATE_ON_HOST_MAINTENANCE; Azure: Reboot event.
    pub fn maintenance(&self, at: SystemTime) {
        match self.shared.provider {
            Provider::Aws => self.shared.update(|s| aws::maintenance(s, at)),
            Provider::Gcp => self.shared.update(gcp::maintenance),
            Provider::Azure => self.shared.update(|s| azure::maintenance(s, at)),
        }
    }

    /// AWS: rebalance recommendation; GCP: MIGRATE_ON_HOST_MAINTENANCE; Azure: Freeze.
    pub fn advisory(&self) {
        match self.shared.provider {
            Provider::Aws => self.shared.update(aws::advisory),
            Provider::Gcp => self.shared.update(gcp::advisory),
            Provider::Azure => self.shared.update(azure::advisory),
        }
    }

    /// Withdraw everything (AWS: 404 again / scheduled event canceled; GCP: FALSE/NONE; Azure:
    /// events removed).
    pub fn clear(&self) {
        match self.shared.provider {
            Provider::Aws => self.shared.update(aws::clear),
            Provider::Gcp => self.shared.update(gcp::clear),
            Provider::Azure => self.shared.update(azure::clear),
        }
    }

    /// Fault injection: answer garbage (unparseable bodies), or hang requests (never answer), or
    /// 500s; None clears. Requests already hanging stay hung.
    pub fn fault(&self, f: Option<Fault>) {
        self.shared.lock().fault = f;
    }

    /// Every request: (method, path with query, headers that matter as "name: value" strings).
    pub fn requests(&self) -> Vec<(String, String, Vec<String>)> {
        self.shared.lock().requests.clone()
    }

    /// AWS: forget every IMDSv2 token handed out, as IMDS does when tokens expire; the next
    /// request with an old token gets 401. No-op for other providers.
    pub fn revoke_tokens(&self) {
        self.shared.lock().aws.revoke_tokens();
    }

    /// Azure: EventIds acknowledged with StartRequests so far.
    pub fn acknowledged(&self) -> Vec<String> {
        self.shared.lock().azure.acknowledged.clone()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    // A client that goes away mid-request is not the fake's problem.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();

    let recorded: Vec<String> = RECORDED_HEADERS
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .map(|v| format!("{name}: {}", String::from_utf8_lossy(v.as_bytes())))
        })
        .collect();
    let fault = {
        let mut state = shared.lock();
        state
            .requests
            .push((method.to_string(), path_and_query, recorded));
        state.fault
    };
    match fault {
        Some(Fault::Hang) => return std::future::pending::<Resp>().await,
        Some(Fault::Error500) => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "Internal Server Error",
            );
        }
        Some(Fault::Garbage) => {
            let mut resp = respond(
                StatusCode::OK,
                "application/octet-stream",
                Bytes::from_static(b"\x00\xff\xfe<<garbage]]\x7f{\"Events\":"),
            );
            if shared.provider == Provider::Gcp {
                resp.headers_mut()
                    .insert("metadata-flavor", http::HeaderValue::from_static("Google"));
            }
            return resp;
        }
        None => {}
    }

    let req = Req {
        method,
        path,
        query,
        headers,
        body,
    };
    match shared.provider {
        Provider::Aws => aws::handle(shared, &req),
        Provider::Gcp => gcp::handle(shared, &req).await,
        Provider::Azure => azure::handle(shared, &req),
    }
}

pub(crate) fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

pub(crate) fn with_header(mut resp: Resp, name: &'static str, value: &str) -> Resp {
    if let Ok(v) = http::HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = parse_query("wait_for_change=true&last_etag=ab%2Fc&timeout_sec=3&flag");
        assert_eq!(q.get("wait_for_change").map(String::as_str), Some("true"));
        assert_eq!(q.get("last_etag").map(String::as_str), Some("ab/c"));
        assert_eq!(q.get("flag").map(String::as_str), Some(""));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a+b"), "a b");
    }
}
