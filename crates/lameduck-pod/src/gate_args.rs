//! `lameduck gate`'s flags: one clap definition, used by the gate to parse its own command
//! line, by `lint`, `rehearse` and the fleet tools to read a gate out of a manifest or a live
//! pod, and by `inject` to write one. Defaults come from the timeline model's constants.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use lameduck_timeline::{
    Convergence, DEFAULT_CHILD_TIMEOUT, DEFAULT_GRACE, DEFAULT_KILL_MARGIN, Dur,
};

/// The gate's admin port when `--admin` is not given.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// The name `lameduck inject` gives the admin port where it declares it: scrapers select the
/// gate's `/metrics` by it, and the pod model does not count it as a port clients use.
pub const ADMIN_PORT_NAME: &str = "lameduck-admin";
/// The gate's client port when `--listen` is not given.
pub const DEFAULT_LISTEN_PORT: u16 = 8000;

const ZERO: Dur = Dur(std::time::Duration::ZERO);
const CONVERGENCE: Convergence = Convergence::DEFAULT;

/// `lameduck gate`: the in-pod drain gate.
///
/// Wrapper mode: `lameduck gate [FLAGS] -- CMD ARGS…` starts CMD, proxies to it, and turns
/// SIGTERM into a graceful drain; the child gets SIGTERM only once nothing is in flight.
/// Sidecar mode: `lameduck gate --upstream URL [FLAGS]` fronts an engine in another container;
/// the engine's preStop calls the gate's `/drain`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "\
Drain phases: serving → announcing (unready, still serving, Connection: close / GOAWAY) → \
finishing (new arrivals get 503 + Retry-After) → deadline (streams end with a terminal \
`event: error`, the rest aborted) → done.

Deadline = drain start + --grace-period − --pre-stop-spent − --kill-margin, shortened by \
`/drain?deadline=`. Set --grace-period to the pod's terminationGracePeriodSeconds.

Admin endpoints (on --admin only): /ready /live /drain /metrics /status.")]
pub struct GateArgs {
    /// Address the proxy listens on for client traffic.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:8000",
        env = "LAMEDUCK_LISTEN"
    )]
    pub listen: SocketAddr,

    /// Address of the admin endpoints (/ready, /live, /drain, /metrics, /status). Never put it
    /// in a Service.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:9901",
        env = "LAMEDUCK_ADMIN"
    )]
    pub admin: SocketAddr,

    /// The engine's base URL (http only). Required in sidecar mode; in wrapper mode defaults to
    /// http://127.0.0.1:8001.
    #[arg(long, value_name = "URL", env = "LAMEDUCK_UPSTREAM")]
    pub upstream: Option<http::Uri>,

    /// How the gate speaks to the engine: `http1`; `h2c` (HTTP/2 without TLS, prior
    /// knowledge) for everything; `auto`: gRPC requests (`content-type: application/grpc…`)
    /// over h2c, the rest over HTTP/1.1.
    #[arg(long, value_name = "PROTOCOL", default_value = "auto", value_parser = ["http1", "h2c", "auto"], env = "LAMEDUCK_UPSTREAM_PROTOCOL")]
    pub upstream_protocol: String,

    /// The pod's terminationGracePeriodSeconds. The drain budget is computed from it.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(DEFAULT_GRACE), env = "LAMEDUCK_GRACE_PERIOD")]
    pub grace_period: Dur,

    /// Kept at the end of the grace period to end streams, stop the engine and exit before
    /// the kubelet's SIGKILL.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(DEFAULT_KILL_MARGIN), env = "LAMEDUCK_KILL_MARGIN")]
    pub kill_margin: Dur,

    /// Time a preStop hook spends before SIGTERM reaches the gate (for example a `sleep`).
    /// Subtracted from the budget of a SIGTERM-started drain. Not needed when the preStop is
    /// the gate's /drain.
    #[arg(
        long = "pre-stop-spent",
        alias = "prestop-spent",
        value_name = "DURATION",
        default_value_t = ZERO,
        env = "LAMEDUCK_PRE_STOP_SPENT"
    )]
    pub pre_stop_spent: Dur,

    /// Keep serving at least this long after going unready, while load balancers converge.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(CONVERGENCE.min), env = "LAMEDUCK_CONVERGENCE_MIN")]
    pub convergence_min: Dur,

    /// After the minimum, end announcing once no request arrived for this long.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(CONVERGENCE.quiet), env = "LAMEDUCK_CONVERGENCE_QUIET")]
    pub convergence_quiet: Dur,

    /// Never announce longer than this.
    #[arg(long, value_name = "DURATION", default_value_t = Dur(CONVERGENCE.max), env = "LAMEDUCK_CONVERGENCE_MAX")]
    pub convergence_max: Dur,

    /// Wrapper mode: time between SIGTERM and SIGKILL to the child (never past the grace
    /// period).
    #[arg(long, value_name = "DURATION", default_value_t = Dur(DEFAULT_CHILD_TIMEOUT), env = "LAMEDUCK_CHILD_TIMEOUT")]
    pub child_timeout: Dur,

    /// Start a drain when this file appears (compatible with `touch /tmp/draining`).
    #[arg(long, value_name = "FILE", env = "LAMEDUCK_DRAIN_FILE")]
    pub drain_file: Option<PathBuf>,

    /// Path of the engine's health endpoint, mirrored by /ready.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/health",
        env = "LAMEDUCK_HEALTH_PATH"
    )]
    pub health_path: String,

    /// Check the engine's health with the gRPC health service instead
    /// (`grpc.health.v1.Health/Check` over h2c) for SERVICE (empty, or the flag alone: the
    /// server as a whole); /ready mirrors SERVING.
    #[arg(
        long,
        value_name = "SERVICE",
        num_args = 0..=1,
        default_missing_value = "",
        env = "LAMEDUCK_HEALTH_GRPC"
    )]
    pub health_grpc: Option<String>,

    /// How often the engine's health is checked.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2",
        env = "LAMEDUCK_HEALTH_INTERVAL"
    )]
    pub health_interval: Dur,

    /// Timeout of one health check.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1",
        env = "LAMEDUCK_HEALTH_TIMEOUT"
    )]
    pub health_timeout: Dur,

    /// A JSON body POSTed to --warmup-path once the engine is healthy; /ready stays 503 until
    /// it succeeded.
    #[arg(long, value_name = "FILE", env = "LAMEDUCK_WARMUP_REQUEST")]
    pub warmup_request: Option<PathBuf>,

    /// Path the warm-up request is sent to.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/v1/chat/completions",
        env = "LAMEDUCK_WARMUP_PATH"
    )]
    pub warmup_path: String,

    /// Retry-After (seconds) on responses refused while draining.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "1",
        env = "LAMEDUCK_RETRY_AFTER"
    )]
    pub retry_after: u32,

    /// End a response whose upstream sends nothing for this long (an engine can stall a stream
    /// without closing it). 0 disables.
    #[arg(long, value_name = "DURATION", default_value_t = ZERO, env = "LAMEDUCK_UPSTREAM_IDLE_TIMEOUT")]
    pub upstream_idle_timeout: Dur,

    /// Refuse new requests with 503 and Retry-After while this many are in flight, so the
    /// engine is never asked for more than it can hold (0: no limit).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        env = "LAMEDUCK_MAX_IN_FLIGHT"
    )]
    pub max_in_flight: u64,

    /// Client connections the proxy port holds at most. Default: half of what the process's
    /// file-descriptor limit leaves after a reserve for the admin port and the engine, so that
    /// no client load can starve the probes. When full, connections that have not sent a
    /// request yet and idle keep-alive connections are closed first.
    #[arg(long, value_name = "N", env = "LAMEDUCK_MAX_CONNECTIONS")]
    pub max_connections: Option<std::num::NonZeroUsize>,

    /// A new client connection must complete its first request's headers within this time
    /// (protocol detection and the HTTP/2 preface included), or it is closed.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10",
        env = "LAMEDUCK_HEADER_TIMEOUT"
    )]
    pub header_timeout: Dur,

    /// A client connection with nothing in flight for this long is closed (HTTP/1.1
    /// keep-alive and HTTP/2 alike). Keep it longer than your load balancer's own idle
    /// timeout towards the pod, so that the balancer, not the gate, closes idle connections.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "75",
        env = "LAMEDUCK_IDLE_TIMEOUT"
    )]
    pub idle_timeout: Dur,

    /// Require `Authorization: Bearer TOKEN` on /drain. Prefer the environment variable: a
    /// flag's value is visible in the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LAMEDUCK_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Stream handoff: when a streamed OpenAI-style completion (`POST /v1/chat/completions`,
    /// `/v1/completions`) cannot finish here (the drain deadline, the engine failing or
    /// aborting it mid-stream), continue it on a peer replica at this base URL (http only;
    /// the Service's address: a draining pod has already left it) and splice the
    /// continuation into the client's stream. Off by default. See docs/handoff.md.
    #[arg(long, value_name = "URL", env = "LAMEDUCK_HANDOFF_TO")]
    pub handoff_to: Option<http::Uri>,

    /// With --handoff-to: request bodies up to this size are kept while their stream runs
    /// (larger requests are not handed off). Bytes, or with a unit: `512KiB`, `1MiB`.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size, env = "LAMEDUCK_HANDOFF_MAX_BODY")]
    pub handoff_max_body: u64,

    /// With --handoff-to: attempts at most per handed-off stream (a peer that refuses, is
    /// slow to start or fails mid-way is replaced by another attempt while time is left).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10), env = "LAMEDUCK_HANDOFF_ATTEMPTS")]
    pub handoff_attempts: u32,

    /// With --handoff-to: how long one attempt may take to send its first event (the peer
    /// prefills the prompt and the text so far first).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "15",
        env = "LAMEDUCK_HANDOFF_TIMEOUT"
    )]
    pub handoff_timeout: Dur,

    /// Run as a gateway in front of the Service instead of beside one engine: --upstream is
    /// the Service, and --handoff-to defaults to it. The client's connection then ends on this
    /// gateway, not on the pod that drains, so a stream that a draining or vanished pod cuts
    /// mid-way (its gate's terminal event, a broken connection, silence past
    /// --upstream-idle-timeout) continues on another replica even after that pod is gone.
    /// Cannot wrap an engine. See docs/handoff.md.
    #[arg(long, env = "LAMEDUCK_GATEWAY")]
    pub gateway: bool,

    /// Worker threads. Default 1: a single-threaded runtime, the cheapest per request and per
    /// streamed event; one core carries tens of thousands of requests per second. More only
    /// for a gate in front of something much faster than an inference engine.
    #[arg(long, value_name = "N", env = "LAMEDUCK_THREADS")]
    pub threads: Option<std::num::NonZeroUsize>,

    /// Talk to the Kubernetes API (off by default; the gate works without any API access):
    /// set the pod's `lameduck.io/serving` condition (with a readiness gate the endpoint
    /// leaves rotation the instant a drain starts), watch the pod's EndpointSlices to measure
    /// convergence, take a shorter deletion grace period as the deadline, and post the drain
    /// report as an Event on the pod. Needs --pod-name and --pod-namespace (the downward API)
    /// and RBAC (docs/kube.md). A slow, down or refusing API server never delays a drain.
    #[arg(long, env = "LAMEDUCK_KUBE")]
    pub kube: bool,

    /// With --kube: keep the pod's `controller.kubernetes.io/pod-deletion-cost` annotation in
    /// step with its in-flight work (at most one patch per 10 s), so that a scale-down removes
    /// idle replicas first.
    #[arg(long, env = "LAMEDUCK_DELETION_COST", requires = "kube")]
    pub deletion_cost: bool,

    /// With --kube: this pod's name (from the downward API: `fieldRef: metadata.name`).
    #[arg(long, value_name = "NAME", env = "LAMEDUCK_POD_NAME")]
    pub pod_name: Option<String>,

    /// With --kube: this pod's namespace (downward API: `fieldRef: metadata.namespace`).
    #[arg(long, value_name = "NAMESPACE", env = "LAMEDUCK_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// With --kube: a kubeconfig file instead of the pod's service account (for running the
    /// gate outside a cluster). Default: in-cluster config, else $KUBECONFIG or
    /// ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// With --kube: the kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// Divide every duration flag by this factor (> 0). Used by `lameduck rehearse` to run a
    /// drain faster than real time; leave at 1 in a pod.
    #[arg(long, hide = true, default_value = "1", env = "LAMEDUCK_TIME_SCALE")]
    pub time_scale: f64,

    /// Wrapper mode: the engine command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A size in bytes: a whole number, optionally with a unit (`B`, `KiB`, `MiB`, `GiB`, or the
/// decimal `kB`, `MB`, `GB`).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. `1048576`, `512KiB` or `1MiB`"))?;
    let k: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "kB" | "KB" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use B, KiB, MiB, GiB, kB, MB or GB"
            ));
        }
    };
    n.checked_mul(k)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A standalone parser around [`GateArgs`], for reading a gate's command line.
#[derive(Parser, Debug)]
#[command(name = "gate", no_binary_name = true)]
struct Standalone {
    #[command(flatten)]
    gate: GateArgs,
}

/// Why a gate's command line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the gate's flags are invalid: {0}")]
pub struct GateArgsError(pub String);

/// A gate's flags as they are written: the flags in order (long name, value) and the engine
/// command after `--`. Parsed and rendered with [`GateArgs`]' own clap definition, so that
/// what `inject` writes is exactly what `lameduck gate` reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GateFlags {
    flags: Vec<(String, Option<String>)>,
    /// The engine command after `--` (wrapper mode).
    pub command: Vec<String>,
}

fn command() -> clap::Command {
    // Environment variables are read from the container's env by `parse`, never from the
    // process that reads the manifest.
    Standalone::command()
        .args_override_self(true)
        .mut_args(|a| a.env(None::<&str>))
}

impl GateFlags {
    /// Reads the words after `gate` on a gate's command line (`--listen 0.0.0.0:8000 … -- cmd`)
    /// and the `LAMEDUCK_*` variables of its container's env (flags win over env, as for the
    /// gate itself).
    pub fn parse(
        words: &[String],
        env: &[(String, String)],
    ) -> Result<(GateFlags, GateArgs), GateArgsError> {
        let split = words.iter().position(|w| w == "--");
        let (own, engine) = match split {
            Some(i) => (&words[..i], words[i + 1..].to_vec()),
            None => (words, Vec::new()),
        };
        let cmd = Standalone::command();
        let mut flags = Vec::new();
        // Environment first: explicit flags override it.
        for arg in cmd.get_arguments() {
            if let (Some(var), Some(long)) = (arg.get_env(), arg.get_long())
                && let Some((_, v)) = env.iter().find(|(k, _)| k.as_str() == var)
            {
                if arg.get_action().takes_values() {
                    flags.push((long.to_owned(), Some(v.clone())));
                } else if !matches!(v.trim(), "" | "0" | "false" | "no" | "off") {
                    // A switch set from the environment (`LAMEDUCK_KUBE=true`).
                    flags.push((long.to_owned(), None));
                }
            }
        }
        let mut i = 0;
        while i < own.len() {
            let w = &own[i];
            let Some(name) = w.strip_prefix("--") else {
                return Err(GateArgsError(format!("unexpected argument `{w}`")));
            };
            let (long, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (name, None),
            };
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .ok_or_else(|| GateArgsError(format!("unknown flag `--{long}`")))?;
            let takes_value = arg.get_action().takes_values();
            let value = match (inline, takes_value) {
                (Some(v), _) => Some(v),
                (None, true) => {
                    i += 1;
                    Some(
                        own.get(i)
                            .cloned()
                            .ok_or_else(|| GateArgsError(format!("`--{long}` needs a value")))?,
                    )
                }
                (None, false) => None,
            };
            flags.push((long.to_owned(), value));
            i += 1;
        }
        let flags = GateFlags {
            flags,
            command: engine,
        };
        let args = flags.args()?;
        Ok((flags, args))
    }

    /// The typed arguments these flags give.
    pub fn args(&self) -> Result<GateArgs, GateArgsError> {
        let mut argv: Vec<String> = self
            .flags
            .iter()
            .flat_map(|(k, v)| std::iter::once(format!("--{k}")).chain(v.clone()))
            .collect();
        if !self.command.is_empty() {
            argv.push("--".into());
            argv.extend(self.command.iter().cloned());
        }
        let matches = command()
            .try_get_matches_from(argv)
            .map_err(|e| GateArgsError(e.render().to_string().trim().to_owned()))?;
        GateArgs::from_arg_matches(&matches).map_err(|e| GateArgsError(e.to_string()))
    }

    /// Sets `--long value` (replacing an earlier setting of the same flag). The flag must be
    /// one of the gate's.
    pub fn set(&mut self, long: &str, value: impl Into<String>) -> &mut Self {
        self.put(long, Some(value.into()))
    }

    /// Sets the switch `--long` (a flag without a value).
    pub fn switch(&mut self, long: &str) -> &mut Self {
        self.put(long, None)
    }

    /// Removes every setting of `--long`; whether there was one.
    pub fn remove(&mut self, long: &str) -> bool {
        let before = self.flags.len();
        self.flags.retain(|(k, _)| k != long);
        self.flags.len() != before
    }

    fn put(&mut self, long: &str, value: Option<String>) -> &mut Self {
        debug_assert!(
            Standalone::command()
                .get_arguments()
                .any(|a| a.get_long() == Some(long)),
            "no gate flag --{long}"
        );
        self.flags.retain(|(k, _)| k != long);
        self.flags.push((long.to_owned(), value));
        self
    }

    /// The value written for `--long`, if any (the last one wins).
    pub fn get(&self, long: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| k == long)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The words of the command line after `gate`.
    pub fn render(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .flags
            .iter()
            .flat_map(|(k, v)| std::iter::once(format!("--{k}")).chain(v.clone()))
            .collect();
        if !self.command.is_empty() {
            out.push("--".into());
            out.extend(self.command.iter().cloned());
        }
        out
    }
}

impl GateArgs {
    /// The arguments `lameduck gate` gets with no flags at all.
    pub fn defaults() -> GateArgs {
        // Parsing nothing cannot fail: every flag has a default or is optional.
        let matches = command().get_matches_from(Vec::<String>::new());
        match GateArgs::from_arg_matches(&matches) {
            Ok(a) => a,
            Err(e) => unreachable!("the gate's defaults do not parse: {e}"),
        }
    }

    /// The clap definition, for tests that walk every subcommand's flags.
    pub fn clap_command() -> clap::Command {
        GateArgs::augment_args(clap::Command::new("gate"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn defaults_are_the_models() {
        let d = GateArgs::defaults();
        assert_eq!(d.grace_period.0, DEFAULT_GRACE);
        assert_eq!(d.kill_margin.0, DEFAULT_KILL_MARGIN);
        assert_eq!(d.convergence_max.0, Convergence::DEFAULT.max);
        assert_eq!(d.admin.port(), DEFAULT_ADMIN_PORT);
        assert_eq!(d.listen.port(), DEFAULT_LISTEN_PORT);
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2000"), Ok(2000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert!(parse_size("1 parsec").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert_eq!(GateArgs::defaults().handoff_max_body, 1 << 20);
    }

    #[test]
    fn parse_and_render_round_trip() {
        let w = words(
            "--listen 0.0.0.0:8000 --grace-period=170 --upstream http://127.0.0.1:8001 -- vllm serve m --port 8001",
        );
        let (flags, args) = GateFlags::parse(&w, &[]).expect("parse");
        assert_eq!(args.grace_period.0.as_secs(), 170);
        assert_eq!(args.command, words("vllm serve m --port 8001"));
        assert_eq!(flags.get("upstream"), Some("http://127.0.0.1:8001"));
        let (again, args2) = GateFlags::parse(&flags.render(), &[]).expect("reparse");
        assert_eq!(again, flags);
        assert_eq!(args2, args);
    }

    #[test]
    fn env_is_the_containers_and_flags_win() {
        let env = vec![
            ("LAMEDUCK_GRACE_PERIOD".to_owned(), "60".to_owned()),
            ("LAMEDUCK_ADMIN".to_owned(), "0.0.0.0:9000".to_owned()),
        ];
        let (_, a) = GateFlags::parse(&words("--grace-period 90"), &env).expect("parse");
        assert_eq!(a.grace_period.0.as_secs(), 90);
        assert_eq!(a.admin.port(), 9000);
    }

    #[test]
    fn bad_flags_are_named() {
        let e = GateFlags::parse(&words("--grace-perod 9"), &[]).expect_err("typo");
        assert!(e.to_string().contains("--grace-perod"), "{e}");
        let e = GateFlags::parse(&words("--grace-period soon"), &[]).expect_err("bad value");
        assert!(e.to_string().contains("soon"), "{e}");
    }

    #[test]
    fn switches_from_flags_and_env() {
        let env = vec![
            ("LAMEDUCK_KUBE".to_owned(), "true".to_owned()),
            ("LAMEDUCK_POD_NAME".to_owned(), "vllm-0".to_owned()),
        ];
        let (flags, a) = GateFlags::parse(&words("--deletion-cost"), &env).expect("parse");
        assert!(a.kube && a.deletion_cost);
        assert_eq!(a.pod_name.as_deref(), Some("vllm-0"));
        assert_eq!(GateFlags::parse(&flags.render(), &[]).expect("again").1, a);
        let off = vec![("LAMEDUCK_KUBE".to_owned(), "false".to_owned())];
        assert!(!GateFlags::parse(&[], &off).expect("parse").1.kube);
        let e = GateFlags::parse(&words("--deletion-cost"), &[]).expect_err("needs --kube");
        assert!(e.to_string().contains("--kube"), "{e}");
        let mut f = GateFlags::default();
        f.switch("kube").switch("kube");
        assert_eq!(f.render(), words("--kube"));
    }

    #[test]
    fn set_replaces() {
        let mut f = GateFlags::default();
        f.set("grace-period", "30").set("grace-period", "60");
        assert_eq!(f.render(), words("--grace-period 60"));
        assert_eq!(f.args().expect("args").grace_period.0.as_secs(), 60);
    }
}
