//! Command-line flags of `lameduck gate`, and their resolution into a checked [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
pub use lameduck_pod::GateArgs;
use lameduck_timeline::{Convergence, DrainConfig};

use crate::Error;

/// The checked configuration the gate runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Engine base URL, `scheme://authority`.
    pub upstream: Upstream,
    /// The drain machine's settings.
    pub drain: DrainConfig,
    /// Budget already spent when SIGTERM arrives.
    pub pre_stop_spent: Duration,
    /// Marker file.
    pub drain_file: Option<PathBuf>,
    /// Health checking.
    pub health_path: String,
    /// `--health-grpc`: the service whose gRPC health is checked instead of the path.
    pub health_grpc: Option<String>,
    /// Health check period.
    pub health_interval: Duration,
    /// Health check timeout.
    pub health_timeout: Duration,
    /// Warm-up body and path.
    pub warmup: Option<(Vec<u8>, String)>,
    /// Retry-After seconds.
    pub retry_after: u32,
    /// Upstream idle timeout.
    pub upstream_idle_timeout: Option<Duration>,
    /// `--upstream-protocol`.
    pub upstream_protocol: UpstreamProtocol,
    /// Admin token.
    pub admin_token: Option<String>,
    /// Most client connections, when set by flag (otherwise derived from the fd limit).
    pub max_connections: Option<usize>,
    /// From accept to the first request's headers.
    pub header_timeout: Duration,
    /// Connection idle timeout.
    pub idle_timeout: Duration,
    /// Child command, empty in sidecar mode.
    pub command: Vec<String>,
    /// `--kube`: the pod and the cluster, when the gate talks to the API server.
    pub kube: Option<KubeSettings>,
    /// `--time-scale` (1 in a pod): the gate's own fixed intervals are divided by it too.
    pub time_scale: f64,
    /// `--handoff-to` and its settings, when stream handoff is on.
    pub handoff: Option<HandoffSettings>,
    /// `--gateway`: in front of the Service rather than beside one engine.
    pub gateway: bool,
}

/// Stream handoff's settings (`--handoff-*`).
#[derive(Debug, Clone)]
pub struct HandoffSettings {
    /// The peers' address (the Service).
    pub to: Upstream,
    /// Request bodies kept at most.
    pub max_body: usize,
    /// Attempts per handed-off stream.
    pub attempts: u32,
    /// From an attempt's start to its first event.
    pub timeout: Duration,
}

/// How the gate speaks to the engine (`--upstream-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 for everything.
    Http1,
    /// HTTP/2 with prior knowledge for everything.
    H2c,
    /// gRPC over HTTP/2, the rest over HTTP/1.1.
    Auto,
}

impl UpstreamProtocol {
    /// Whether a request goes over HTTP/2.
    pub fn h2(self, grpc: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2c => true,
            UpstreamProtocol::Auto => grpc,
        }
    }
}

/// What `--kube` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// This pod's name.
    pub pod: String,
    /// This pod's namespace.
    pub namespace: String,
    /// Which cluster configuration.
    pub target: lameduck_kube::Target,
    /// `--deletion-cost`.
    pub deletion_cost: bool,
}

/// The engine's address, split for cheap request rewriting.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http`.
    pub scheme: http::uri::Scheme,
    /// `host:port`.
    pub authority: http::uri::Authority,
}

impl Upstream {
    /// Parses and checks an upstream URL.
    pub fn parse(uri: &Uri) -> Result<Self, Error> {
        Self::parse_flag(uri, "--upstream")
    }

    /// Parses and checks the URL given to `flag`.
    pub fn parse_flag(uri: &Uri, flag: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("{flag} {uri}: {why}"));
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("missing scheme; write e.g. http://127.0.0.1:8001"))?;
        if scheme != http::uri::Scheme::HTTP {
            return Err(bad(
                "only http:// is supported (the engine is in the same pod; peers are reached through their Service inside the cluster)",
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("missing host:port"))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("must not have a path; requests keep their own path"));
        }
        Ok(Upstream { scheme, authority })
    }

    /// The absolute URI of `path_and_query` on the upstream.
    pub fn uri(
        &self,
        path_and_query: Option<&http::uri::PathAndQuery>,
    ) -> Result<Uri, http::Error> {
        let mut b = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        b = match path_and_query {
            Some(pq) => b.path_and_query(pq.clone()),
            None => b.path_and_query("/"),
        };
        b.build()
    }
}

impl Config {
    /// Checks the flags and resolves defaults. Every error names the flag to fix.
    pub fn from_args(args: GateArgs) -> Result<Config, Error> {
        Resolver::from(args).resolve()
    }
}

/// The flags as plain durations, scaled, on their way to a [`Config`].
struct Resolver {
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: Option<Uri>,
    grace_period: Duration,
    kill_margin: Duration,
    pre_stop_spent: Duration,
    convergence_min: Duration,
    convergence_quiet: Duration,
    convergence_max: Duration,
    child_timeout: Duration,
    drain_file: Option<PathBuf>,
    health_path: String,
    health_grpc: Option<String>,
    health_interval: Duration,
    health_timeout: Duration,
    warmup_request: Option<PathBuf>,
    warmup_path: String,
    retry_after: u32,
    upstream_idle_timeout: Duration,
    upstream_protocol: String,
    max_in_flight: u64,
    max_connections: Option<std::num::NonZeroUsize>,
    header_timeout: Duration,
    idle_timeout: Duration,
    admin_token: Option<String>,
    time_scale: f64,
    command: Vec<String>,
    kube: bool,
    deletion_cost: bool,
    pod_name: Option<String>,
    pod_namespace: Option<String>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    handoff_to: Option<Uri>,
    handoff_max_body: u64,
    handoff_attempts: u32,
    handoff_timeout: Duration,
    gateway: bool,
}

impl From<GateArgs> for Resolver {
    fn from(a: GateArgs) -> Self {
        Resolver {
            listen: a.listen,
            admin: a.admin,
            upstream: a.upstream,
            grace_period: a.grace_period.0,
            kill_margin: a.kill_margin.0,
            pre_stop_spent: a.pre_stop_spent.0,
            convergence_min: a.convergence_min.0,
            convergence_quiet: a.convergence_quiet.0,
            convergence_max: a.convergence_max.0,
            child_timeout: a.child_timeout.0,
            drain_file: a.drain_file,
            health_path: a.health_path,
            health_grpc: a.health_grpc,
            health_interval: a.health_interval.0,
            health_timeout: a.health_timeout.0,
            warmup_request: a.warmup_request,
            warmup_path: a.warmup_path,
            retry_after: a.retry_after,
            upstream_idle_timeout: a.upstream_idle_timeout.0,
            upstream_protocol: a.upstream_protocol,
            max_in_flight: a.max_in_flight,
            max_connections: a.max_connections,
            header_timeout: a.header_timeout.0,
            idle_timeout: a.idle_timeout.0,
            admin_token: a.admin_token,
            time_scale: a.time_scale,
            command: a.command,
            kube: a.kube,
            deletion_cost: a.deletion_cost,
            pod_name: a.pod_name,
            pod_namespace: a.pod_namespace,
            kubeconfig: a.kubeconfig,
            context: a.context,
            handoff_to: a.handoff_to,
            handoff_max_body: a.handoff_max_body,
            handoff_attempts: a.handoff_attempts,
            handoff_timeout: a.handoff_timeout.0,
            gateway: a.gateway,
        }
    }
}

impl Resolver {
    fn resolve(mut self) -> Result<Config, Error> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(Error::Config(format!(
                "--time-scale {}: must be a number greater than 0",
                self.time_scale
            )));
        }
        if self.time_scale != 1.0 {
            let k = self.time_scale;
            for d in [
                &mut self.grace_period,
                &mut self.kill_margin,
                &mut self.pre_stop_spent,
                &mut self.convergence_min,
                &mut self.convergence_quiet,
                &mut self.convergence_max,
                &mut self.child_timeout,
                &mut self.health_interval,
                &mut self.health_timeout,
                &mut self.upstream_idle_timeout,
                &mut self.header_timeout,
                &mut self.idle_timeout,
                &mut self.handoff_timeout,
            ] {
                *d = d.div_f64(k);
            }
        }
        let wrapper = !self.command.is_empty();
        let upstream = match (&self.upstream, wrapper) {
            (Some(u), _) => Upstream::parse(u)?,
            (None, true) => Upstream::parse(&Uri::from_static("http://127.0.0.1:8001"))?,
            (None, false) => {
                return Err(Error::Config(
                    "no engine to front: pass --upstream URL (sidecar mode) or the engine command after `--` (wrapper mode)".into(),
                ));
            }
        };
        if !self.health_path.starts_with('/')
            || http::uri::PathAndQuery::try_from(self.health_path.as_str()).is_err()
        {
            return Err(Error::Config(format!(
                "--health-path {:?} must be a URL path starting with `/`",
                self.health_path
            )));
        }
        if self.health_interval.is_zero() {
            return Err(Error::Config(
                "--health-interval must be greater than 0".into(),
            ));
        }
        if self.listen == self.admin && self.listen.port() != 0 {
            return Err(Error::Config(format!(
                "--listen and --admin are both {}: the admin port must be separate so it is never reachable through the Service",
                self.listen
            )));
        }
        let drain = DrainConfig {
            grace: self.grace_period,
            margin: self.kill_margin,
            convergence: Convergence {
                min: self.convergence_min,
                quiet: self.convergence_quiet,
                max: self.convergence_max,
            },
            child_timeout: wrapper.then_some(self.child_timeout),
            deadline_linger: Duration::from_secs(1).div_f64(self.time_scale),
            max_in_flight: (self.max_in_flight > 0).then_some(self.max_in_flight),
        };
        for (flag, d) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!(
                    "{flag} must be greater than 0: a connection that never sends a request would be held forever"
                )));
            }
        }
        drain.validate().map_err(|e| Error::Config(e.0))?;
        if self.pre_stop_spent + self.kill_margin >= self.grace_period {
            return Err(Error::Config(format!(
                "--pre-stop-spent ({:?}) plus --kill-margin ({:?}) leave nothing of --grace-period ({:?}): a SIGTERM-started drain would cut every stream at once",
                self.pre_stop_spent, self.kill_margin, self.grace_period
            )));
        }
        let kube = if self.kube {
            let need = |v: Option<String>, flag: &str, env: &str, field: &str| {
                v.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                    Error::Config(format!(
                        "--kube needs the pod's identity: pass {flag} or set {env} from the downward API (`valueFrom: {{fieldRef: {{fieldPath: {field}}}}}`)"
                    ))
                })
            };
            Some(KubeSettings {
                pod: need(
                    self.pod_name,
                    "--pod-name",
                    "LAMEDUCK_POD_NAME",
                    "metadata.name",
                )?,
                namespace: need(
                    self.pod_namespace,
                    "--pod-namespace",
                    "LAMEDUCK_POD_NAMESPACE",
                    "metadata.namespace",
                )?,
                target: lameduck_kube::Target {
                    kubeconfig: self.kubeconfig,
                    context: self.context,
                },
                deletion_cost: self.deletion_cost,
            })
        } else {
            if self.deletion_cost {
                return Err(Error::Config("--deletion-cost needs --kube".into()));
            }
            None
        };
        if self.gateway && wrapper {
            return Err(Error::Config(
                "--gateway fronts a Service and cannot wrap an engine: drop the command after `--` and pass the Service as --upstream".into(),
            ));
        }
        // A gateway hands off to the Service it fronts unless told otherwise.
        let handoff_to = match (&self.handoff_to, self.gateway) {
            (Some(uri), _) => Some(Upstream::parse_flag(uri, "--handoff-to")?),
            (None, true) => Some(upstream.clone()),
            (None, false) => None,
        };
        let handoff = match (handoff_to, &self.handoff_to) {
            (Some(to), uri) => {
                if !self.gateway && to.authority == upstream.authority {
                    let uri = uri.as_ref().map(ToString::to_string).unwrap_or_default();
                    return Err(Error::Config(format!(
                        "--handoff-to {uri} is this pod's own engine: give the Service's address, so that a continuation reaches another replica (or pass --gateway when --upstream is the Service itself)"
                    )));
                }
                if self.handoff_timeout.is_zero() {
                    return Err(Error::Config(
                        "--handoff-timeout must be greater than 0".into(),
                    ));
                }
                Some(HandoffSettings {
                    to,
                    max_body: usize::try_from(self.handoff_max_body).unwrap_or(usize::MAX),
                    attempts: self.handoff_attempts,
                    timeout: self.handoff_timeout,
                })
            }
            (None, _) => None,
        };
        let warmup = match self.warmup_request {
            Some(path) => {
                let body = std::fs::read(&path).map_err(|e| {
                    Error::Config(format!(
                        "--warmup-request {}: cannot read it: {e}",
                        path.display()
                    ))
                })?;
                Some((body, self.warmup_path))
            }
            None => None,
        };
        Ok(Config {
            listen: self.listen,
            admin: self.admin,
            upstream,
            drain,
            pre_stop_spent: self.pre_stop_spent,
            drain_file: self.drain_file,
            health_path: self.health_path,
            health_grpc: self.health_grpc,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            warmup,
            retry_after: self.retry_after,
            upstream_idle_timeout: (!self.upstream_idle_timeout.is_zero())
                .then_some(self.upstream_idle_timeout),
            upstream_protocol: match self.upstream_protocol.as_str() {
                "http1" => UpstreamProtocol::Http1,
                "h2c" => UpstreamProtocol::H2c,
                _ => UpstreamProtocol::Auto,
            },
            admin_token: self.admin_token.filter(|t| !t.is_empty()),
            max_connections: self.max_connections.map(std::num::NonZeroUsize::get),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            command: self.command,
            kube,
            time_scale: self.time_scale,
            handoff,
            gateway: self.gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(words: &str) -> Result<Config, Error> {
        let words: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
        let (_, args) =
            lameduck_pod::GateFlags::parse(&words, &[]).map_err(|e| Error::Config(e.0))?;
        Config::from_args(args)
    }

    #[test]
    fn a_gateway_hands_off_to_the_service_it_fronts() {
        let c = config("--gateway --upstream http://vllm.ml.svc:8000").expect("config");
        assert!(c.gateway);
        let to = c.handoff.expect("handoff on").to;
        assert_eq!(to.authority.as_str(), "vllm.ml.svc:8000");
        // An explicit --handoff-to wins.
        let c = config("--gateway --upstream http://a:8000 --handoff-to http://b:8000")
            .expect("config");
        assert_eq!(
            c.handoff.expect("handoff on").to.authority.as_str(),
            "b:8000"
        );
    }

    #[test]
    fn only_a_gateway_may_hand_off_to_its_own_upstream() {
        let e = config("--upstream http://127.0.0.1:8001 --handoff-to http://127.0.0.1:8001")
            .expect_err("a pod's own engine");
        assert!(e.to_string().contains("--gateway"), "{e}");
        config("--gateway --upstream http://svc:8000 --handoff-to http://svc:8000")
            .expect("a gateway may");
        let e = config("--gateway -- vllm serve m").expect_err("a gateway wraps nothing");
        assert!(e.to_string().contains("cannot wrap an engine"), "{e}");
        assert!(
            config("--upstream http://127.0.0.1:8001")
                .expect("plain")
                .handoff
                .is_none()
        );
    }
}
