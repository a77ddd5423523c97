//! Kubernetes client glue shared by every lameduck command that talks to a cluster.
//!
//! - [`Target`] / [`ClusterArgs`]: which cluster (`--kubeconfig`, `--context`, else the
//!   standard inference: `$KUBECONFIG` or `~/.kube/config`, then the in-cluster service
//!   account).
//! - [`connect`]: two clients on one configuration. [`Clients::api`] retries with backoff on
//!   429, 5xx and transport errors; [`Clients::direct`] never retries, for calls whose refusal
//!   is an answer (an eviction's 429 is the PodDisruptionBudget's verdict, never to be
//!   retried blindly).
//! - [`KubeError`]: an API failure with the operation that failed, worded for a person: a 403
//!   names the RBAC verb and resource to grant.
//! - [`retry_conflicts`]: read-modify-write with a retry on 409 Conflict.
//! - [`events`]: Events about a pod or a node, built one way.
//! - [`gate`]: a pod's gate through the API server's pod proxy.
//!
//! The Kubernetes API version is chosen by the binary (k8s-openapi's feature), not here.

pub mod admin;
pub mod events;
pub mod gate;
mod retry;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use retry::Backoff;

/// Which cluster to talk to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// A kubeconfig file; `None`: `$KUBECONFIG`, `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; `None`: its current context.
    pub context: Option<String>,
}

/// The flags of a command that talks to a cluster.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterArgs {
    /// The kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config, else the pod's
    /// service account (in a cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl From<&ClusterArgs> for Target {
    fn from(a: &ClusterArgs) -> Target {
        Target {
            kubeconfig: a.kubeconfig.clone(),
            context: a.context.clone(),
        }
    }
}

/// Clients on one cluster configuration.
#[derive(Clone)]
pub struct Clients {
    /// Retries 429, 5xx and transport failures with backoff (idempotent requests only for
    /// transport failures): for reads, watches, patches, status updates, Events.
    pub api: Client,
    /// Never retries: for evictions, whose 429 is a verdict.
    pub direct: Client,
    /// The namespace the configuration defaults to.
    pub namespace: String,
    /// Where the configuration came from, for messages (never holds credentials).
    pub source: String,
    /// The API server's URL.
    pub server: String,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("namespace", &self.namespace)
            .field("source", &self.source)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file named by `--kubeconfig` could not be read.
    #[error(
        "cannot read the kubeconfig {path}: {reason}; check --kubeconfig names a readable kubeconfig file"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kubeconfig does not give a usable configuration (unknown context, bad user).
    #[error("cannot use {source_desc}: {reason}")]
    Kubeconfig {
        /// Which file and context.
        source_desc: String,
        /// Why.
        reason: String,
    },
    /// Neither a kubeconfig nor an in-cluster service account was found.
    #[error(
        "no cluster configuration: {reason}; pass --kubeconfig, set $KUBECONFIG, or run in a pod with a service account"
    )]
    Infer {
        /// Why.
        reason: String,
    },
    /// The client could not be built from the configuration (TLS, proxy).
    #[error("cannot build a client for {server}: {reason}")]
    Build {
        /// The API server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// Chain a kube error's causes into one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// Loads the configuration for `target`.
pub async fn config(target: &Target) -> Result<(Config, String), ConnectError> {
    let options = KubeConfigOptions {
        context: target.context.clone(),
        ..KubeConfigOptions::default()
    };
    let context = target
        .context
        .as_deref()
        .map(|c| format!(" (context {c})"))
        .unwrap_or_default();
    match &target.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| ConnectError::Read {
                path: path.clone(),
                reason: chain(&e),
            })?;
            let source = format!("kubeconfig {}{context}", path.display());
            let config = Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| ConnectError::Kubeconfig {
                    source_desc: source.clone(),
                    reason: chain(&e),
                })?;
            Ok((config, source))
        }
        None if target.context.is_some() => {
            let source = format!("the default kubeconfig{context}");
            let config =
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| ConnectError::Kubeconfig {
                        source_desc: source.clone(),
                        reason: chain(&e),
                    })?;
            Ok((config, source))
        }
        None => {
            let config = Config::infer()
                .await
                .map_err(|e| ConnectError::Infer { reason: chain(&e) })?;
            let source = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                && std::env::var_os("KUBECONFIG").is_none()
            {
                "the in-cluster service account".to_owned()
            } else {
                "the default kubeconfig".to_owned()
            };
            Ok((config, source))
        }
    }
}

/// Clients for `target`, with the default backoff on [`Clients::api`].
pub async fn connect(target: &Target) -> Result<Clients, ConnectError> {
    let (config, source) = config(target).await?;
    clients(config, source, Backoff::default())
}

/// Clients on a configuration already loaded.
pub fn clients(
    mut config: Config,
    source: String,
    backoff: Backoff,
) -> Result<Clients, ConnectError> {
    // kube's own retry layer (on by default) retries 429, 503 and 504 up to 15 times with
    // pauses of up to 1000 s: an eviction's 429 would never reach us, and a gate's call would
    // hang for minutes. Retries are ours: bounded, on `api` only.
    config.default_retry = false;
    let server = config.cluster_url.to_string();
    let namespace = config.default_namespace.clone();
    let build = |e: kube::Error| ConnectError::Build {
        server: server.clone(),
        reason: chain(&e),
    };
    let direct = Client::try_from(config.clone()).map_err(build)?;
    let api = retry::client(config, backoff).map_err(build)?;
    Ok(Clients {
        api,
        direct,
        namespace,
        source,
        server,
    })
}

/// What a request was doing, for messages and RBAC hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The RBAC verb (`get`, `list`, `watch`, `patch`, `create`, …).
    pub verb: &'static str,
    /// The resource as RBAC names it (`pods/status`, `events`, `endpointslices.discovery.k8s.io`).
    pub resource: &'static str,
    /// The namespace, if namespaced.
    pub namespace: Option<String>,
    /// The object, if one.
    pub name: Option<String>,
}

impl Op {
    /// An operation on a namespaced resource.
    pub fn new(verb: &'static str, resource: &'static str, namespace: &str) -> Op {
        Op {
            verb,
            resource,
            namespace: Some(namespace.to_owned()),
            name: None,
        }
    }

    /// The same operation on a named object.
    pub fn named(mut self, name: &str) -> Op {
        self.name = Some(name.to_owned());
        self
    }

    fn what(&self) -> String {
        let mut s = format!("{} {}", self.verb, self.resource);
        if let Some(n) = &self.name {
            s.push_str(&format!(" {n}"));
        }
        if let Some(ns) = &self.namespace {
            s.push_str(&format!(" in namespace {ns}"));
        }
        s
    }
}

/// A failed API call, worded for a person.
#[derive(Debug, thiserror::Error)]
pub struct KubeError {
    /// What was being done.
    pub op: Op,
    /// The client's error (boxed: kube's error is large, and this travels in `Result`s).
    #[source]
    pub source: Box<kube::Error>,
}

impl KubeError {
    /// Wraps a client error with its operation.
    pub fn new(op: Op, source: kube::Error) -> KubeError {
        KubeError {
            op,
            source: Box::new(source),
        }
    }

    /// The HTTP status of an API refusal, if it was one.
    pub fn code(&self) -> Option<u16> {
        match &*self.source {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        }
    }

    /// 403: RBAC refused it.
    pub fn is_forbidden(&self) -> bool {
        self.code() == Some(403)
    }

    /// 409: a stale resourceVersion (or the object exists).
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    /// A short label for metrics: `forbidden`, `not_found`, `conflict`, `throttled`,
    /// `server_error`, `refused`, `unreachable`.
    pub fn kind(&self) -> &'static str {
        match self.code() {
            Some(403) => "forbidden",
            Some(401) => "unauthorized",
            Some(404) => "not_found",
            Some(409) => "conflict",
            Some(429) => "throttled",
            Some(c) if c >= 500 => "server_error",
            Some(_) => "refused",
            None => "unreachable",
        }
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.op.what();
        match &*self.source {
            kube::Error::Api(s) => {
                let message = if s.message.is_empty() {
                    s.reason.clone()
                } else {
                    s.message.clone()
                };
                match s.code {
                    403 => write!(
                        f,
                        "the API server refused to {what} (403 Forbidden: {message}); grant the \
                         identity the verb `{}` on `{}` in a Role bound to it (docs/kube.md lists \
                         what lameduck needs)",
                        self.op.verb, self.op.resource
                    ),
                    401 => write!(
                        f,
                        "the API server did not accept the credentials to {what} (401): check \
                         the kubeconfig's user or the pod's service account token"
                    ),
                    code => write!(f, "cannot {what}: {message} ({code} {})", s.reason),
                }
            }
            other => write!(
                f,
                "cannot {what}: the API server did not answer: {}; check that it is up and \
                 that --kubeconfig/--context point at it",
                chain(other)
            ),
        }
    }
}

/// Extension: attach the operation to a client result.
pub trait Context<T> {
    /// Wraps the error with `op`.
    fn op(self, op: Op) -> Result<T, KubeError>;
}

impl<T> Context<T> for Result<T, kube::Error> {
    fn op(self, op: Op) -> Result<T, KubeError> {
        self.map_err(|e| KubeError::new(op, e))
    }
}

/// Remembers which operations have failed before, so that each is logged at `warn` once and
/// at `debug` afterwards: a dependency that is down must not flood the log.
#[derive(Debug, Default)]
pub struct LogOnce(std::sync::Mutex<std::collections::HashSet<&'static str>>);

impl LogOnce {
    /// Whether this is the first failure of `operation`.
    pub fn first(&self, operation: &'static str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation)
    }
}

/// Read-modify-write: runs `attempt` again (it should re-read the object) while it fails with
/// 409 Conflict, up to `tries` times in all, with a short pause between.
pub async fn retry_conflicts<T, F, Fut>(tries: u32, mut attempt: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Err(e) if e.is_conflict() && n < tries.max(1) => {
                tracing::debug!(error = %e, attempt = n, "Conflict; reading again");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(n))).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    #[test]
    fn forbidden_names_the_verb_and_resource() {
        let e = KubeError::new(
            Op::new("patch", "pods/status", "inference").named("vllm-0"),
            api(
                403,
                "Forbidden",
                "pods \"vllm-0\" is forbidden: User \"system:serviceaccount:inference:default\" cannot patch resource \"pods/status\"",
            ),
        );
        let s = e.to_string();
        assert!(s.contains("`patch` on `pods/status`"), "{s}");
        assert!(s.contains("namespace inference"), "{s}");
        assert_eq!(e.kind(), "forbidden");
    }

    #[test]
    fn other_refusals_keep_the_servers_words() {
        let e = KubeError::new(
            Op::new("get", "pods", "default").named("x"),
            api(404, "NotFound", "pods \"x\" not found"),
        );
        assert!(e.is_not_found());
        assert!(e.to_string().contains("pods \"x\" not found"), "{e}");
    }

    #[tokio::test]
    async fn conflicts_are_retried_then_given_up() {
        let mut calls = 0;
        let r: Result<(), KubeError> = retry_conflicts(3, || {
            calls += 1;
            async {
                Err(KubeError::new(
                    Op::new("update", "leases", "default"),
                    api(409, "Conflict", "the object has been modified"),
                ))
            }
        })
        .await;
        assert!(r.is_err_and(|e| e.is_conflict()));
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r = retry_conflicts(3, || {
            calls += 1;
            let n = calls;
            async move {
                if n == 1 {
                    Err(KubeError::new(
                        Op::new("update", "leases", "default"),
                        api(409, "Conflict", "modified"),
                    ))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(2));
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_named() {
        let e = connect(&Target {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            context: None,
        })
        .await
        .expect_err("no file");
        let s = e.to_string();
        assert!(
            s.contains("/nonexistent/kubeconfig") && s.contains("--kubeconfig"),
            "{s}"
        );
    }
}
