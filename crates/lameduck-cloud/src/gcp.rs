//! GCP: the Compute Engine metadata server.
//!
//! Sources:
//! - Every request carries `Metadata-Flavor: Google`; the server answers with the same header
//!   (and refuses requests without it). GCE doc "View and query VM metadata"
//!   (<https://cloud.google.com/compute/docs/metadata/querying-metadata>).
//! - Change notification: `?wait_for_change=true&last_etag=<etag>&timeout_sec=<n>` holds the
//!   request until the value's ETag differs from `last_etag` (at once if it already does) or
//!   `timeout_sec` passes; the answer carries the current value and its `ETag` header. Same doc,
//!   section "Waiting for change"; GoogleCloudPlatform/python-docs-samples
//!   `compute/metadata/main.py` (hanging GET loop on `instance/maintenance-event`, retries 503
//!   during maintenance).
//! - `instance/preempted`: `TRUE` / `FALSE`. GCE doc "Spot VMs" / "Preemptible VM instances"
//!   (<https://cloud.google.com/compute/docs/instances/spot>): the preemption notice is an ACPI
//!   soft-off, hard off 30 s later — hence `not_before = seen_at + 30 s`.
//! - `instance/maintenance-event`: `NONE`, `MIGRATE_ON_HOST_MAINTENANCE`,
//!   `TERMINATE_ON_HOST_MAINTENANCE`; changes 60 s before the event (1 h for GPU VMs). GCE doc
//!   "Get live migration notices"
//!   (<https://cloud.google.com/compute/docs/instances/monitor-plan-host-maintenance-event>).
//!
//! Project notes: /work/shared/reference/orchestration-anchors.md §3.1.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::http::{Answer, Failure, Http};
use crate::tracker::{Backoff, Closed, Health, Reporter, Source};
use crate::{Notice, NoticeKind, Provider, WatchConfig};

const FLAVOR_HEADER: &str = "metadata-flavor";
const FLAVOR: &str = "Google";
const BASE_PATH: &str = "/computeMetadata/v1/";
/// A preempted VM is powered off 30 s after the notice.
const PREEMPTION_NOTICE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Preempted,
    MaintenanceEvent,
}

impl Key {
    fn path(self) -> &'static str {
        match self {
            Key::Preempted => "instance/preempted",
            Key::MaintenanceEvent => "instance/maintenance-event",
        }
    }

    fn source(self) -> Source {
        match self {
            Key::Preempted => Source::GcpPreempted,
            Key::MaintenanceEvent => Source::GcpMaintenance,
        }
    }

    fn health_name(self) -> &'static str {
        match self {
            Key::Preempted => "gcp instance/preempted",
            Key::MaintenanceEvent => "gcp instance/maintenance-event",
        }
    }

    /// Checks the value is one this key can have (anything else is garbage) and normalizes it.
    fn validate(self, raw: &str) -> Result<String, String> {
        let value = raw.trim();
        match self {
            Key::Preempted => {
                let upper = value.to_ascii_uppercase();
                if upper == "TRUE" || upper == "FALSE" {
                    Ok(upper)
                } else {
                    Err(format!("preempted is neither TRUE nor FALSE: {value:?}"))
                }
            }
            Key::MaintenanceEvent => {
                let token = !value.is_empty()
                    && value.len() <= 128
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if token {
                    Ok(value.to_owned())
                } else {
                    Err(format!("maintenance-event is not a value: {value:?}"))
                }
            }
        }
    }

    /// What a (validated) value means.
    fn notices(self, value: &str, now: SystemTime) -> Vec<Notice> {
        match (self, value) {
            (Key::Preempted, "TRUE") => vec![Notice {
                provider: Provider::Gcp,
                kind: NoticeKind::Reclaim,
                id: "preempted".to_owned(),
                not_before: now.checked_add(PREEMPTION_NOTICE),
                seen_at: now,
                detail: "instance/preempted=TRUE: preempted, powered off 30 s after the notice"
                    .to_owned(),
            }],
            (Key::Preempted, _) | (Key::MaintenanceEvent, "NONE") => Vec::new(),
            (Key::MaintenanceEvent, value) => {
                // TERMINATE_ON_HOST_MAINTENANCE stops the VM; MIGRATE_ON_HOST_MAINTENANCE live
                // migrates it. A value GCP adds later is taken as stopping the VM only if it says
                // TERMINATE.
                let kind = if value.contains("TERMINATE") {
                    NoticeKind::Maintenance
                } else {
                    NoticeKind::Advisory
                };
                vec![Notice {
                    provider: Provider::Gcp,
                    kind,
                    id: format!("maintenance:{value}"),
                    not_before: None,
                    seen_at: now,
                    detail: format!("instance/maintenance-event={value}"),
                }]
            }
        }
    }
}

/// How long each hanging GET may be held: 10 × poll, 1–60 s, whole seconds (`timeout_sec`).
fn hang_for(poll: Duration) -> Duration {
    let secs = poll
        .saturating_mul(10)
        .as_secs_f64()
        .ceil()
        .clamp(1.0, 60.0);
    Duration::from_secs(secs as u64)
}

pub(crate) async fn watch(cfg: &WatchConfig, reporter: &Reporter) -> Closed {
    let http = Http::new();
    // Both keys at once: a preemption must not wait behind a maintenance-event hang.
    tokio::select! {
        closed = watch_key(cfg, &http, Key::Preempted, reporter) => closed,
        closed = watch_key(cfg, &http, Key::MaintenanceEvent, reporter) => closed,
    }
}

async fn watch_key(cfg: &WatchConfig, http: &Http, key: Key, reporter: &Reporter) -> Closed {
    let hang = hang_for(cfg.poll_period());
    let mut health = Health::new(key.health_name());
    let mut backoff = Backoff::new(cfg.poll_period());
    // Without an ETag the next request is a plain GET that answers at once; with one it hangs.
    let mut etag: Option<String> = None;
    let mut last_value: Option<String> = None;
    loop {
        let (url, limit) = match &etag {
            None => (cfg.url(&format!("{BASE_PATH}{}", key.path())), cfg.timeout),
            Some(tag) => (
                cfg.url(&format!(
                    "{BASE_PATH}{}?wait_for_change=true&last_etag={}&timeout_sec={}",
                    key.path(),
                    query_escape(tag),
                    hang.as_secs()
                )),
                hang.saturating_add(cfg.timeout),
            ),
        };
        let started = Instant::now();
        let result = match http
            .send(
                Method::GET,
                &url,
                &[(FLAVOR_HEADER, FLAVOR)],
                Bytes::new(),
                limit,
            )
            .await
        {
            Ok(answer) => read(key, answer),
            Err(e) => Err(Failure::from(e)),
        };
        match result {
            Ok((value, new_etag)) => {
                health.succeeded();
                backoff.succeeded();
                if let Err(Closed) = reporter
                    .report(key.source(), key.notices(&value, SystemTime::now()))
                    .await
                {
                    return Closed;
                }
                let unchanged = last_value.as_deref() == Some(value.as_str()) && new_etag == etag;
                // A server that ignores wait_for_change (or sends no ETag) would turn this
                // loop into a busy poll: fall back to polling.
                let pace = new_etag.is_none() || (unchanged && started.elapsed() < hang / 2);
                etag = new_etag;
                last_value = Some(value);
                if pace {
                    tokio::time::sleep(cfg.poll_period()).await;
                }
            }
            Err(failure) => {
                etag = None;
                let wait = backoff.failed();
                health.failed(&failure, wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A 200 with a value this key can have, and its ETag.
fn read(key: Key, answer: Answer) -> Result<(String, Option<String>), Failure> {
    if answer.status != StatusCode::OK {
        return Err(Failure::Status {
            url: answer.url.clone(),
            status: answer.status,
            body: answer.snippet(),
        });
    }
    let text = answer
        .text()
        .ok_or_else(|| Failure::garbage(&answer.url, "body is not UTF-8"))?;
    let value = key
        .validate(text)
        .map_err(|reason| Failure::garbage(&answer.url, reason))?;
    let etag = answer
        .header("etag")
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    Ok((value, etag))
}

/// Percent-encodes everything but unreserved characters (ETags are hex in practice).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Detection: only the GCE metadata server answers `Metadata-Flavor: Google`.
pub(crate) async fn probe(
    http: &Http,
    base_url: &str,
    timeout: Duration,
) -> Result<(), (String, String)> {
    let url = format!("{}{BASE_PATH}", base_url.trim_end_matches('/'));
    let request = format!("GET {url} with Metadata-Flavor: Google");
    let answer = http
        .send(
            Method::GET,
            &url,
            &[(FLAVOR_HEADER, FLAVOR)],
            Bytes::new(),
            timeout,
        )
        .await
        .map_err(|e| (request.clone(), e.reason()))?;
    if answer.header(FLAVOR_HEADER) != Some(FLAVOR) {
        return Err((
            request,
            format!(
                "answered {} without a Metadata-Flavor: Google header",
                answer.status
            ),
        ));
    }
    answer
        .success()
        .map(|_| ())
        .map_err(|f| (request, f.reason()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn answer(status: u16, body: &'static [u8], etag: Option<&str>) -> Answer {
        let mut headers = http::HeaderMap::new();
        if let Some(tag) = etag {
            headers.insert("etag", tag.parse().expect("header"));
        }
        Answer {
            url: "http://x/computeMetadata/v1/instance/preempted".into(),
            status: StatusCode::from_u16(status).expect("status"),
            headers,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn values() {
        let now = UNIX_EPOCH + Duration::from_secs(100);
        let n = Key::Preempted.notices("TRUE", now);
        assert_eq!(n[0].kind, NoticeKind::Reclaim);
        assert_eq!(n[0].id, "preempted");
        assert_eq!(n[0].not_before, Some(now + Duration::from_secs(30)));
        assert!(Key::Preempted.notices("FALSE", now).is_empty());
        assert!(Key::MaintenanceEvent.notices("NONE", now).is_empty());
        let m = Key::MaintenanceEvent.notices("TERMINATE_ON_HOST_MAINTENANCE", now);
        assert_eq!(m[0].kind, NoticeKind::Maintenance);
        assert_eq!(m[0].id, "maintenance:TERMINATE_ON_HOST_MAINTENANCE");
        let a = Key::MaintenanceEvent.notices("MIGRATE_ON_HOST_MAINTENANCE", now);
        assert_eq!(a[0].kind, NoticeKind::Advisory);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(Key::Preempted.validate("TRUE\n"), Ok("TRUE".into()));
        assert_eq!(Key::Preempted.validate("false"), Ok("FALSE".into()));
        assert!(Key::Preempted.validate("maybe").is_err());
        assert!(Key::MaintenanceEvent.validate("").is_err());
        assert!(Key::MaintenanceEvent.validate("<html>").is_err());
        assert!(Key::MaintenanceEvent.validate("NONE").is_ok());
        assert!(read(Key::Preempted, answer(200, b"\xff\x00", None)).is_err());
        assert!(matches!(
            read(Key::Preempted, answer(503, b"", None)),
            Err(Failure::Status { .. })
        ));
        assert_eq!(
            read(Key::Preempted, answer(200, b"TRUE", Some("abc"))),
            Ok(("TRUE".into(), Some("abc".into())))
        );
    }

    #[test]
    fn hang_length() {
        assert_eq!(hang_for(Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(hang_for(Duration::from_millis(250)), Duration::from_secs(3));
        assert_eq!(hang_for(Duration::from_millis(10)), Duration::from_secs(1));
        assert_eq!(hang_for(Duration::from_secs(30)), Duration::from_secs(60));
        assert_eq!(hang_for(Duration::MAX), Duration::from_secs(60));
    }

    #[test]
    fn escaping() {
        assert_eq!(query_escape("5a1f0e9c2b"), "5a1f0e9c2b");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
    }
}
