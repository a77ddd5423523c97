//! Command-line flags of `lameduck gate`, and their resolution into a checked [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use lameduck_timeline::{Convergence, DrainConfig, parse_duration};

use crate::Error;

fn dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// `lameduck gate`: the in-pod drain gate.
///
/// Wrapper mode: `lameduck gate [FLAGS] -- CMD ARGS…` starts CMD, proxies to it, and turns
/// SIGTERM into a graceful drain; the child gets SIGTERM only once nothing is in flight.
/// Sidecar mode: `lameduck gate --upstream URL [FLAGS]` fronts an engine in another container;
/// the engine's preStop calls the gate's `/drain`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Drain phases: serving → announcing (unready, still serving, Connection: close / GOAWAY) → \
finishing (new arrivals get 503 + Retry-After) → deadline (streams end with a terminal \
`event: error`, the rest aborted) → done.

Deadline = drain start + --grace-period − --prestop-spent − --kill-margin, shortened by \
`/drain?deadline=`. Set --grace-period to the pod's terminationGracePeriodSeconds.

Admin endpoints (on --admin only): /ready /live /drain /metrics /status.")]
pub struct GateArgs {
    /// Address the proxy listens on for client traffic.
    #[arg(long, default_value = "0.0.0.0:8000", env = "LAMEDUCK_LISTEN")]
    pub listen: SocketAddr,

    /// Address of the admin endpoints (/ready, /live, /drain, /metrics, /status). Never put it
    /// in a Service.
    #[arg(long, default_value = "0.0.0.0:9901", env = "LAMEDUCK_ADMIN")]
    pub admin: SocketAddr,

    /// The engine's base URL (http only). Required in sidecar mode; in wrapper mode defaults to
    /// http://127.0.0.1:8001.
    #[arg(long, env = "LAMEDUCK_UPSTREAM")]
    pub upstream: Option<Uri>,

    /// The pod's terminationGracePeriodSeconds. The drain budget is computed from it.
    #[arg(long, default_value = "30", value_parser = dur, env = "LAMEDUCK_GRACE_PERIOD")]
    pub grace_period: Duration,

    /// Kept at the end of the grace period to end streams, stop the engine and exit before
    /// the kubelet's SIGKILL.
    #[arg(long, default_value = "5", value_parser = dur, env = "LAMEDUCK_KILL_MARGIN")]
    pub kill_margin: Duration,

    /// Time a preStop hook spends before SIGTERM reaches the gate (for example a `sleep`).
    /// Subtracted from the budget of a SIGTERM-started drain. Not needed when the preStop is
    /// the gate's /drain.
    #[arg(long, default_value = "0", value_parser = dur, env = "LAMEDUCK_PRESTOP_SPENT")]
    pub prestop_spent: Duration,

    /// Keep serving at least this long after going unready, while load balancers converge.
    #[arg(long, default_value = "5", value_parser = dur, env = "LAMEDUCK_CONVERGENCE_MIN")]
    pub convergence_min: Duration,

    /// After the minimum, end announcing once no request arrived for this long.
    #[arg(long, default_value = "2", value_parser = dur, env = "LAMEDUCK_CONVERGENCE_QUIET")]
    pub convergence_quiet: Duration,

    /// Never announce longer than this.
    #[arg(long, default_value = "30", value_parser = dur, env = "LAMEDUCK_CONVERGENCE_MAX")]
    pub convergence_max: Duration,

    /// Wrapper mode: time between SIGTERM and SIGKILL to the child (never past the grace
    /// period).
    #[arg(long, default_value = "3", value_parser = dur, env = "LAMEDUCK_CHILD_TIMEOUT")]
    pub child_timeout: Duration,

    /// Start a drain when this file appears (compatible with `touch /tmp/draining`).
    #[arg(long, env = "LAMEDUCK_DRAIN_FILE")]
    pub drain_file: Option<PathBuf>,

    /// Path of the engine's health endpoint, mirrored by /ready.
    #[arg(long, default_value = "/health", env = "LAMEDUCK_HEALTH_PATH")]
    pub health_path: String,

    /// How often the engine's health is checked.
    #[arg(long, default_value = "2", value_parser = dur, env = "LAMEDUCK_HEALTH_INTERVAL")]
    pub health_interval: Duration,

    /// Timeout of one health check.
    #[arg(long, default_value = "1", value_parser = dur, env = "LAMEDUCK_HEALTH_TIMEOUT")]
    pub health_timeout: Duration,

    /// A JSON body POSTed to --warmup-path once the engine is healthy; /ready stays 503 until
    /// it succeeded.
    #[arg(long, env = "LAMEDUCK_WARMUP_REQUEST")]
    pub warmup_request: Option<PathBuf>,

    /// Path the warm-up request is sent to.
    #[arg(
        long,
        default_value = "/v1/chat/completions",
        env = "LAMEDUCK_WARMUP_PATH"
    )]
    pub warmup_path: String,

    /// Retry-After (seconds) on responses refused while draining.
    #[arg(long, default_value = "1", env = "LAMEDUCK_RETRY_AFTER")]
    pub retry_after: u32,

    /// End a response whose upstream sends nothing for this long (an engine can stall a stream
    /// without closing it). 0 disables.
    #[arg(long, default_value = "0", value_parser = dur, env = "LAMEDUCK_UPSTREAM_IDLE_TIMEOUT")]
    pub upstream_idle_timeout: Duration,

    /// Refuse new requests with 503 and Retry-After while this many are in flight, so the
    /// engine is never asked for more than it can hold (0: no limit).
    #[arg(long, default_value_t = 0, env = "LAMEDUCK_MAX_IN_FLIGHT")]
    pub max_in_flight: u64,

    /// Client connections the proxy port holds at most. Default: half of what the process's
    /// file-descriptor limit leaves after a reserve for the admin port and the engine, so that
    /// no client load can starve the probes. When full, connections that have not sent a
    /// request yet and idle keep-alive connections are closed first.
    #[arg(long, env = "LAMEDUCK_MAX_CONNECTIONS")]
    pub max_connections: Option<std::num::NonZeroUsize>,

    /// A new client connection must complete its first request's headers within this time
    /// (protocol detection and the HTTP/2 preface included), or it is closed.
    #[arg(long, default_value = "10", value_parser = dur, env = "LAMEDUCK_HEADER_TIMEOUT")]
    pub header_timeout: Duration,

    /// A client connection with nothing in flight for this long is closed (HTTP/1.1
    /// keep-alive and HTTP/2 alike). Keep it longer than your load balancer's own idle
    /// timeout towards the pod, so that the balancer, not the gate, closes idle connections.
    #[arg(long, default_value = "75", value_parser = dur, env = "LAMEDUCK_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,

    /// Require `Authorization: Bearer TOKEN` on /drain. Prefer the environment variable: a
    /// flag's value is visible in the process list.
    #[arg(long, env = "LAMEDUCK_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Worker threads. Default: the CPUs this process may run on (its affinity, and its
    /// cgroup quota where the runtime can see it). With 1, a single-threaded runtime is used.
    #[arg(long, env = "LAMEDUCK_THREADS")]
    pub threads: Option<std::num::NonZeroUsize>,

    /// Divide every duration flag by this factor (> 0). Used by `lameduck rehearse` to run a
    /// drain faster than real time; leave at 1 in a pod.
    #[arg(long, hide = true, default_value = "1", env = "LAMEDUCK_TIME_SCALE")]
    pub time_scale: f64,

    /// Wrapper mode: the engine command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

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
    pub prestop_spent: Duration,
    /// Marker file.
    pub drain_file: Option<PathBuf>,
    /// Health checking.
    pub health_path: String,
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
        let bad = |why: &str| Error::Config(format!("--upstream {uri}: {why}"));
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("missing scheme; write e.g. http://127.0.0.1:8001"))?;
        if scheme != http::uri::Scheme::HTTP {
            return Err(bad(
                "only http:// upstreams are supported (the engine is in the same pod)",
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

impl GateArgs {
    /// Checks the flags and resolves defaults. Every error names the flag to fix.
    pub fn resolve(mut self) -> Result<Config, Error> {
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
                &mut self.prestop_spent,
                &mut self.convergence_min,
                &mut self.convergence_quiet,
                &mut self.convergence_max,
                &mut self.child_timeout,
                &mut self.health_interval,
                &mut self.health_timeout,
                &mut self.upstream_idle_timeout,
                &mut self.header_timeout,
                &mut self.idle_timeout,
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
        if self.prestop_spent + self.kill_margin >= self.grace_period {
            return Err(Error::Config(format!(
                "--prestop-spent ({:?}) plus --kill-margin ({:?}) leave nothing of --grace-period ({:?}): a SIGTERM-started drain would cut every stream at once",
                self.prestop_spent, self.kill_margin, self.grace_period
            )));
        }
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
            prestop_spent: self.prestop_spent,
            drain_file: self.drain_file,
            health_path: self.health_path,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            warmup,
            retry_after: self.retry_after,
            upstream_idle_timeout: (!self.upstream_idle_timeout.is_zero())
                .then_some(self.upstream_idle_timeout),
            admin_token: self.admin_token.filter(|t| !t.is_empty()),
            max_connections: self.max_connections.map(std::num::NonZeroUsize::get),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            command: self.command,
        })
    }
}
