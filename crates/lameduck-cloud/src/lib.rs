//! Watches a cloud instance's metadata service for notices that the instance will be stopped:
//! AWS spot interruptions, rebalance recommendations and scheduled events (IMDSv2), GCP
//! preemption and host maintenance, Azure Scheduled Events.
//!
//! [`watch`] turns the provider's protocol into a stream of [`Update`]s: each notice once, and a
//! [`Update::Cancelled`] when a notice it sent is withdrawn. [`detect`] finds which provider
//! answers; [`acknowledge`] approves an Azure event early once the node is drained.
//!
//! Protocol sources are cited next to the code that relies on them (`aws.rs`, `gcp.rs`,
//! `azure.rs`).

mod aws;
mod azure;
mod dates;
mod gcp;
mod http;
mod tracker;

use std::fmt;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::tracker::{Closed, Reporter};

/// A cloud whose metadata service this crate speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
}

impl Provider {
    /// `"aws"`, `"gcp"` or `"azure"`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        }
    }

    /// Where the metadata service answers from inside an instance.
    ///
    /// AWS: `http://169.254.169.254` (AWS doc "Access instance metadata for an EC2 instance",
    /// <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html>).
    /// GCP: `http://metadata.google.internal` (GCE doc "View and query VM metadata",
    /// <https://cloud.google.com/compute/docs/metadata/querying-metadata>).
    /// Azure: `http://169.254.169.254` (Azure doc "Azure Instance Metadata Service",
    /// <https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service>).
    pub fn default_url(self) -> &'static str {
        match self {
            Provider::Aws | Provider::Azure => "http://169.254.169.254",
            Provider::Gcp => "http://metadata.google.internal",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a notice means for the node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum NoticeKind {
    /// The instance is taken back: AWS spot instance-action (terminate/stop), GCP
    /// preempted=TRUE, Azure Preempt or Terminate.
    Reclaim,
    /// Maintenance that stops or reboots the instance (AWS scheduled event
    /// system-reboot/instance-stop/…; GCP maintenance-event TERMINATE_ON_HOST_MAINTENANCE; Azure
    /// Reboot/Redeploy).
    Maintenance,
    /// Advisory only (AWS rebalance recommendation; GCP MIGRATE_ON_HOST_MAINTENANCE; Azure
    /// Freeze).
    Advisory,
}

/// One notice from the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    pub provider: Provider,
    pub kind: NoticeKind,
    /// Stable identity: the same notice seen again has the same id (AWS spot:
    /// `spot:<action>@<time>`; AWS rebalance: `rebalance@<noticeTime>`; AWS scheduled: EventId;
    /// GCP: `preempted` / `maintenance:<value>`; Azure: EventId).
    pub id: String,
    /// When the instance goes away, if the provider says (AWS `time`, Azure `NotBefore`; GCP:
    /// seen_at + 30 s for a preemption).
    pub not_before: Option<SystemTime>,
    /// When this process first saw it.
    pub seen_at: SystemTime,
    /// The provider's own words (event type, action, description) for logs and Events.
    pub detail: String,
}

/// What [`watch`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A notice not sent before.
    Notice(Notice),
    /// A notice sent before is no longer listed.
    Cancelled { id: String },
}

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub provider: Provider,
    /// Base URL of the metadata service, e.g. `http://127.0.0.1:PORT`; no trailing path.
    pub base_url: String,
    /// Polling period for AWS and Azure (default 1 s). GCP uses hanging GETs instead, each held
    /// open for up to 10 × `poll` (clamped to 1–60 s).
    pub poll: Duration,
    /// Per-request timeout (default 2 s); a GCP hanging GET gets this on top of its hang.
    pub timeout: Duration,
    /// AWS: the advisory and scheduled-event paths are read on every this many polls (default
    /// 10; at least 1), the spot instance-action on every poll. A spot notice gives two
    /// minutes and must be seen within a poll; a rebalance recommendation or a scheduled
    /// event comes days ahead. With the defaults: 1.2 requests per second.
    pub slow_every: u32,
}

impl WatchConfig {
    /// Defaults: the provider's own address unless `base_url` is given, poll 1 s, timeout 2 s.
    pub fn new(provider: Provider, base_url: Option<String>) -> WatchConfig {
        let base = base_url.unwrap_or_else(|| provider.default_url().to_owned());
        WatchConfig {
            provider,
            base_url: base.trim_end_matches('/').to_owned(),
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            slow_every: 10,
        }
    }

    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base_url.trim_end_matches('/'), path_and_query)
    }

    /// `poll`, but never so short that a loop spins.
    pub(crate) fn poll_period(&self) -> Duration {
        self.poll.max(Duration::from_millis(20))
    }
}

const CHANNEL_CAPACITY: usize = 64;

/// Runs until the receiver is dropped: sends every new notice once (by id), and `Cancelled` when
/// a notice it sent disappears (Azure: event no longer listed; GCP: maintenance-event back to
/// NONE; AWS: instance-action gone/404). Unreachable, slow or garbage answers are retried with
/// backoff (max 5 s between tries), logged with `tracing::warn!` once per kind of failure (later
/// ones at debug), never panic.
///
/// Must be called from within a tokio runtime (the watcher is a spawned task).
pub fn watch(cfg: WatchConfig) -> mpsc::Receiver<Update> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let closed = tx.clone();
        let reporter = Reporter::new(tx);
        tracing::debug!(provider = cfg.provider.name(), url = %cfg.base_url, "watching metadata service");
        tokio::select! {
            () = closed.closed() => {}
            Closed = run(&cfg, &reporter) => {}
        }
        tracing::debug!(provider = cfg.provider.name(), "metadata watch ended");
    });
    rx
}

async fn run(cfg: &WatchConfig, reporter: &Reporter) -> Closed {
    match cfg.provider {
        Provider::Aws => aws::watch(cfg, reporter).await,
        Provider::Gcp => gcp::watch(cfg, reporter).await,
        Provider::Azure => azure::watch(cfg, reporter).await,
    }
}

/// One provider's probe that did not answer like that provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectAttempt {
    pub provider: Provider,
    /// The probe, e.g. `PUT http://169.254.169.254/latest/api/token`.
    pub request: String,
    pub error: String,
}

/// No metadata service answered like any provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no cloud metadata service answered within {timeout:?}; tried {}", describe(.tried))]
pub struct DetectError {
    pub tried: Vec<DetectAttempt>,
    pub timeout: Duration,
}

fn describe(tried: &[DetectAttempt]) -> String {
    tried
        .iter()
        .map(|a| format!("{} ({}: {})", a.provider, a.request, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which provider answers at `base_url` (or at each provider's default address when None): tried
/// concurrently with a short timeout (GCP: `Metadata-Flavor: Google` response header; AWS:
/// IMDSv2 token PUT succeeds; Azure: `/metadata/instance?api-version=...` with `Metadata: true`
/// answers JSON). Error names what was tried.
pub async fn detect(base_url: Option<&str>, timeout: Duration) -> Result<Provider, DetectError> {
    let client = http::Http::new();
    let mut probes: FuturesUnordered<_> = [Provider::Aws, Provider::Gcp, Provider::Azure]
        .into_iter()
        .map(|provider| {
            let base = base_url
                .unwrap_or(provider.default_url())
                .trim_end_matches('/')
                .to_owned();
            let client = client.clone();
            async move {
                let result = match provider {
                    Provider::Aws => aws::probe(&client, &base, timeout).await,
                    Provider::Gcp => gcp::probe(&client, &base, timeout).await,
                    Provider::Azure => azure::probe(&client, &base, timeout).await,
                };
                (provider, result)
            }
        })
        .collect();
    let mut tried = Vec::new();
    while let Some((provider, result)) = probes.next().await {
        match result {
            Ok(()) => {
                tracing::debug!(provider = provider.name(), "metadata service detected");
                return Ok(provider);
            }
            Err((request, error)) => tried.push(DetectAttempt {
                provider,
                request,
                error,
            }),
        }
    }
    tried.sort_by_key(|a| a.provider.name());
    Err(DetectError { tried, timeout })
}

/// An Azure event could not be approved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("approving scheduled event {id}: {reason}")]
    Unreachable { id: String, reason: String },
    #[error("approving scheduled event {id}: {url} answered HTTP {status}: {body}")]
    Rejected {
        id: String,
        url: String,
        status: u16,
        body: String,
    },
}

/// Azure: approve a Scheduled Event early (POST scheduledevents with
/// `{"StartRequests":[{"EventId": id}]}`) once the node is drained. No-op Ok for other providers.
pub async fn acknowledge(cfg: &WatchConfig, id: &str) -> Result<(), AckError> {
    match cfg.provider {
        Provider::Azure => azure::acknowledge(cfg, id).await,
        Provider::Aws | Provider::Gcp => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_and_urls() {
        assert_eq!(Provider::Aws.name(), "aws");
        assert_eq!(Provider::Gcp.name(), "gcp");
        assert_eq!(Provider::Azure.name(), "azure");
        assert_eq!(Provider::Aws.default_url(), "http://169.254.169.254");
        assert_eq!(Provider::Azure.default_url(), "http://169.254.169.254");
        assert_eq!(
            Provider::Gcp.default_url(),
            "http://metadata.google.internal"
        );
        assert_eq!(
            serde_json::to_string(&Provider::Gcp).expect("serialize"),
            "\"gcp\""
        );
    }

    #[test]
    fn config_defaults() {
        let c = WatchConfig::new(Provider::Aws, None);
        assert_eq!(c.base_url, "http://169.254.169.254");
        assert_eq!(c.poll, Duration::from_secs(1));
        assert_eq!(c.timeout, Duration::from_secs(2));
        let c = WatchConfig::new(Provider::Gcp, Some("http://127.0.0.1:9/".into()));
        assert_eq!(
            c.url("/computeMetadata/v1/"),
            "http://127.0.0.1:9/computeMetadata/v1/"
        );
    }
}
