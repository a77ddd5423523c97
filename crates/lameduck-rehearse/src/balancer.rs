//! The load balancer: a real HTTP/1.1 proxy that sends each new request to a ready endpoint,
//! round-robin, like an ingress controller. Its view of the endpoints lags the kubelet's:
//! every change (ready, unready, removed at deletion) reaches it after a propagation lag
//! drawn from a distribution, and changes to one endpoint apply in the order they happened.
//!
//! It never retries. Its own answers carry `x-lb-flags` (Envoy's response flags): `NR` no
//! ready endpoint, `UF` the endpoint refused the connection, `UC` the endpoint closed or
//! reset it before answering. Every answer names the pod in `x-rehearse-pod`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::clock::{Clock, EventKind, Recorder};

/// The propagation lag: uniform between two durations (unscaled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Shortest.
    pub min: Duration,
    /// Longest.
    pub max: Duration,
}

impl Default for Lag {
    fn default() -> Self {
        Lag {
            min: Duration::from_secs(1),
            max: Duration::from_secs(3),
        }
    }
}

impl FromStr for Lag {
    type Err = String;

    /// `2s` (fixed) or `MIN-MAX` (`1s-3s`, `500ms-2s`, `1-3`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |t: &str| lameduck_timeline::parse_duration(t).map_err(|e| e.to_string());
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let d = parse(s)?;
                (d, d)
            }
        };
        if min > max {
            return Err(format!(
                "{s:?}: the shortest lag is longer than the longest; write MIN-MAX"
            ));
        }
        Ok(Lag { min, max })
    }
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Seconds without trailing zeros: `1s-3s`, `0.5s`.
        let s = |d: Duration| {
            let t = format!("{:.3}", d.as_secs_f64());
            format!("{}s", t.trim_end_matches('0').trim_end_matches('.'))
        };
        if self.min == self.max {
            write!(f, "{}", s(self.min))
        } else {
            write!(f, "{}-{}", s(self.min), s(self.max))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Ready(bool),
    Removed,
}

#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    ready: bool,
}

#[derive(Debug)]
struct State {
    rng: StdRng,
    endpoints: BTreeMap<String, Endpoint>,
    /// Per pod: the latest scheduled apply time and sequence number, and the last applied.
    scheduled: HashMap<String, (f64, u64)>,
    applied: HashMap<String, u64>,
    removed: std::collections::HashSet<String>,
    seq: u64,
    next: usize,
    routed: Vec<(f64, String)>,
    /// The pods the Service selects (`None`: every pod), as the `rainbow` scenario moves it.
    selector: Option<std::collections::HashSet<String>>,
    /// What the kubelet last reported of each pod: its address and readiness.
    reported: HashMap<String, (SocketAddr, bool)>,
}

/// The load balancer's endpoint table.
#[derive(Debug)]
pub struct Endpoints {
    clock: Clock,
    rec: Recorder,
    lag: Lag,
    state: Mutex<State>,
}

impl Endpoints {
    /// An empty table; lags drawn with `seed`.
    pub fn new(rec: Recorder, lag: Lag, seed: u64) -> Arc<Self> {
        Arc::new(Endpoints {
            clock: rec.clock(),
            rec,
            lag,
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                endpoints: BTreeMap::new(),
                scheduled: HashMap::new(),
                applied: HashMap::new(),
                removed: Default::default(),
                seq: 0,
                next: 0,
                routed: Vec::new(),
                selector: None,
                reported: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kubelet saw the pod become ready or unready.
    pub fn set_ready(self: &Arc<Self>, pod: &str, addr: SocketAddr, ready: bool) {
        let selected = {
            let mut st = self.lock();
            st.reported.insert(pod.to_owned(), (addr, ready));
            st.selector.as_ref().is_none_or(|s| s.contains(pod))
        };
        if selected {
            self.schedule(pod, addr, Change::Ready(ready));
        }
    }

    /// The Service's selector changes to these pods (the rainbow's Services moving to a new
    /// colour). Ready pods that enter it join the balancer and pods that leave it stop getting
    /// requests, all at once after one propagation lag: the EndpointSlice is rewritten in one
    /// update, so a proxy sees both halves together.
    pub fn select(self: &Arc<Self>, pods: std::collections::HashSet<String>) {
        let now = self.clock.now();
        let (at, changes) = {
            let mut st = self.lock();
            let before = st.selector.replace(pods);
            let was = |p: &str| before.as_ref().is_none_or(|s| s.contains(p));
            let now_in = |p: &str| st.selector.as_ref().is_none_or(|s| s.contains(p));
            let mut changes: Vec<(String, SocketAddr, bool)> = st
                .reported
                .iter()
                .filter(|(pod, _)| !st.removed.contains(*pod))
                .filter_map(|(pod, &(addr, ready))| match (was(pod), now_in(pod)) {
                    (false, true) if ready => Some((pod.clone(), addr, true)),
                    (true, false) => Some((pod.clone(), addr, false)),
                    _ => None,
                })
                .collect();
            // The pods joining first, so the balancer never has fewer than before.
            changes.sort_by_key(|c| !c.2);
            let lag = self.draw_lag(&mut st);
            // After any change already scheduled for these pods, so changes stay in order.
            let at = changes
                .iter()
                .filter_map(|c| st.scheduled.get(&c.0).map(|(t, _)| *t))
                .fold(now + lag.as_secs_f64(), f64::max);
            let mut batch = Vec::new();
            for (pod, addr, ready) in changes {
                st.seq += 1;
                let seq = st.seq;
                st.scheduled.insert(pod.clone(), (at, seq));
                batch.push((pod, addr, Change::Ready(ready), seq));
            }
            (at, batch)
        };
        if changes.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.clock.sleep_until(at).await;
            for (pod, addr, change, seq) in changes {
                this.apply(&pod, addr, change, seq);
            }
        });
    }

    fn draw_lag(&self, st: &mut State) -> Duration {
        if self.lag.max > self.lag.min {
            st.rng.random_range(self.lag.min..=self.lag.max)
        } else {
            self.lag.min
        }
    }

    /// The pod was deleted: its endpoint is removed (after the lag).
    pub fn remove(self: &Arc<Self>, pod: &str) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        self.schedule(pod, addr, Change::Removed);
    }

    fn schedule(self: &Arc<Self>, pod: &str, addr: SocketAddr, change: Change) {
        let now = self.clock.now();
        let (at, seq) = {
            let mut st = self.lock();
            if st.removed.contains(pod) {
                return;
            }
            if change == Change::Removed {
                st.removed.insert(pod.to_owned());
            }
            let lag = self.draw_lag(&mut st);
            st.seq += 1;
            let seq = st.seq;
            let earliest = st.scheduled.get(pod).map_or(0.0, |(t, _)| *t);
            let at = (now + lag.as_secs_f64()).max(earliest);
            st.scheduled.insert(pod.to_owned(), (at, seq));
            (at, seq)
        };
        let this = self.clone();
        let pod = pod.to_owned();
        tokio::spawn(async move {
            this.clock.sleep_until(at).await;
            this.apply(&pod, addr, change, seq);
        });
    }

    fn apply(&self, pod: &str, addr: SocketAddr, change: Change, seq: u64) {
        {
            let mut st = self.lock();
            if st.applied.get(pod).is_some_and(|s| *s > seq) {
                return;
            }
            st.applied.insert(pod.to_owned(), seq);
            match change {
                Change::Ready(ready) => {
                    st.endpoints
                        .entry(pod.to_owned())
                        .and_modify(|e| e.ready = ready)
                        .or_insert(Endpoint { addr, ready });
                }
                Change::Removed => {
                    st.endpoints.remove(pod);
                }
            }
        }
        let state = match change {
            Change::Ready(true) => "ready",
            Change::Ready(false) => "unready",
            Change::Removed => "removed",
        };
        self.rec.record(pod, EventKind::Endpoint { state });
    }

    /// The next ready endpoint, round-robin.
    pub fn pick(&self) -> Option<(String, SocketAddr)> {
        let now = self.clock.now();
        let mut st = self.lock();
        let ready: Vec<(&String, SocketAddr)> = st
            .endpoints
            .iter()
            .filter(|(_, e)| e.ready)
            .map(|(n, e)| (n, e.addr))
            .collect();
        if ready.is_empty() {
            return None;
        }
        let (name, addr) = ready[st.next % ready.len()];
        let name = name.clone();
        st.next = st.next.wrapping_add(1);
        st.routed.push((now, name.clone()));
        Some((name, addr))
    }

    /// How many endpoints are ready in the balancer's view.
    pub fn ready_count(&self) -> usize {
        self.lock().endpoints.values().filter(|e| e.ready).count()
    }

    /// Every routing decision: (unscaled time, pod).
    pub fn routed(&self) -> Vec<(f64, String)> {
        self.lock().routed.clone()
    }
}

type LbBody = BoxBody<Bytes, hyper::Error>;

/// A running balancer.
#[derive(Debug)]
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Balancer {
    /// Listens on a loopback port and routes to `endpoints`.
    pub async fn start(endpoints: Arc<Endpoints>) -> std::io::Result<Balancer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            // One upstream connection per request, as a connection-level balancer would: a
            // pooled idle connection the pod closes as it drains would otherwise fail the
            // next request sent on it, a loss of the emulator rather than of the setup.
            .pool_max_idle_per_host(0)
            .build(connector);
        let accept = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "balancer: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let endpoints = endpoints.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        route(endpoints.clone(), client.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Balancer { addr, accept })
    }
}

fn own(status: StatusCode, flags: &str, pod: Option<&str>, msg: String) -> Response<LbBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "x-lb-flags",
        http::HeaderValue::from_str(flags).unwrap_or(http::HeaderValue::from_static("-")),
    );
    if let Some(p) = pod.and_then(|p| http::HeaderValue::from_str(p).ok()) {
        h.insert("x-rehearse-pod", p);
    }
    r
}

async fn route(
    endpoints: Arc<Endpoints>,
    client: Client<HttpConnector, Incoming>,
    req: Request<Incoming>,
) -> Result<Response<LbBody>, Infallible> {
    let Some((pod, addr)) = endpoints.pick() else {
        return Ok(own(
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
            None,
            "no ready endpoint\n".into(),
        ));
    };
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    parts.uri = match format!("http://{addr}{pq}").parse() {
        Ok(u) => u,
        Err(e) => {
            return Ok(own(
                StatusCode::BAD_REQUEST,
                "-",
                Some(&pod),
                format!("bad request target: {e}\n"),
            ));
        }
    };
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let mut resp = resp.map(BodyExt::boxed);
            if let Ok(v) = http::HeaderValue::from_str(&pod) {
                resp.headers_mut().insert("x-rehearse-pod", v);
            }
            Ok(resp)
        }
        Err(e) if e.is_connect() => Ok(own(
            StatusCode::SERVICE_UNAVAILABLE,
            "UF",
            Some(&pod),
            format!("{pod} refused the connection: {e}\n"),
        )),
        Err(e) => Ok(own(
            StatusCode::BAD_GATEWAY,
            "UC",
            Some(&pod),
            format!("{pod} closed the connection before answering: {e}\n"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_parses() {
        let l: Lag = "1s-3s".parse().expect("lag");
        assert_eq!(l.min, Duration::from_secs(1));
        assert_eq!(l.max, Duration::from_secs(3));
        let f: Lag = "500ms".parse().expect("lag");
        assert_eq!(
            (f.min, f.max),
            (Duration::from_millis(500), Duration::from_millis(500))
        );
        assert_eq!(l.to_string(), "1s-3s");
        assert_eq!(f.to_string(), "0.5s");
        assert!("3-1".parse::<Lag>().is_err());
        assert!("fast".parse::<Lag>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn changes_to_one_endpoint_apply_in_order() {
        let clock = Clock::start(1.0);
        let rec = Recorder::new(clock);
        let eps = Endpoints::new(rec.clone(), "1s-3s".parse().expect("lag"), 7);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        for _ in 0..20 {
            eps.set_ready("p", addr, true);
            eps.set_ready("p", addr, false);
        }
        eps.set_ready("p", addr, true);
        eps.remove("p");
        eps.set_ready("p", addr, true); // after removal: ignored
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(eps.ready_count(), 0);
        let states: Vec<_> = rec
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Endpoint { state } => Some(state),
                _ => None,
            })
            .collect();
        assert_eq!(states.last(), Some(&"removed"));
        // Every change took between 1 and 3 s after the first was made, never less.
        let first = rec.events().first().map(|e| e.t).unwrap_or_default();
        assert!(first >= 1.0, "{first}");
    }

    /// A selector keeps ready pods it does not select out of the balancer; moving it brings
    /// the selected ones in and takes the others out, after the lag.
    #[tokio::test(start_paused = true)]
    async fn the_selector_decides_which_ready_pods_get_requests() {
        let clock = Clock::start(1.0);
        let rec = Recorder::new(clock);
        let eps = Endpoints::new(rec.clone(), "1s".parse().expect("lag"), 7);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        eps.select(["old".to_owned()].into());
        eps.set_ready("old", addr, true);
        eps.set_ready("new", addr, true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(eps.ready_count(), 1);
        assert_eq!(eps.pick().map(|p| p.0).as_deref(), Some("old"));
        eps.select(["new".to_owned()].into());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(eps.pick().map(|p| p.0).as_deref(), Some("old"), "the lag");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..4 {
            assert_eq!(eps.pick().map(|p| p.0).as_deref(), Some("new"));
        }
        // A pod that is not selected stays out when it turns ready again.
        eps.set_ready("old", addr, false);
        eps.set_ready("old", addr, true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(eps.ready_count(), 1);
    }
}
