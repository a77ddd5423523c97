//! Azure: Scheduled Events, part of the Instance Metadata Service (IMDS).
//!
//! Sources:
//! - `GET /metadata/scheduledevents?api-version=2020-07-01` with `Metadata: true` (a request
//!   without it gets 400); answer `{"DocumentIncarnation":N,"Events":[{EventId, EventType:
//!   Reboot|Redeploy|Freeze|Preempt|Terminate, ResourceType, Resources, EventStatus:
//!   Scheduled|Started, NotBefore: "Mon, 19 Sep 2016 18:29:47 GMT", Description, EventSource,
//!   DurationInSeconds}]}`; a finished event just disappears; poll about once a second;
//!   approve early with `POST` to the same URL and `{"StartRequests":[{"EventId":"…"}]}`.
//!   Azure doc "Azure Metadata Service: Scheduled Events for Linux VMs"
//!   (<https://learn.microsoft.com/azure/virtual-machines/linux/scheduled-events>; source
//!   MicrosoftDocs/azure-compute-docs `articles/virtual-machines/linux/scheduled-events.md`).
//!   The same doc: events reach every VM of an availability set, and `Resources` names the VMs
//!   an event affects — so events that name only other VMs are skipped.
//! - `GET /metadata/instance?api-version=2021-02-01` with `Metadata: true` answers the instance
//!   document (JSON; `compute.name` is this VM's name). Azure doc "Azure Instance Metadata
//!   Service" (<https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service>).
//!
//! Project notes: /work/shared/reference/orchestration-anchors.md §3.3.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Method;
use serde::Deserialize;

use crate::dates;
use crate::http::{Failure, Http};
use crate::tracker::{Backoff, Closed, Health, Reporter, Source};
use crate::{AckError, Notice, NoticeKind, Provider, WatchConfig};

const METADATA_HEADER: (&str, &str) = ("metadata", "true");
const EVENTS_PATH: &str = "/metadata/scheduledevents?api-version=2020-07-01";
const INSTANCE_PATH: &str = "/metadata/instance?api-version=2021-02-01";
/// After a failed look-up of this VM's name, wait this long before the next try.
const NAME_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(rename = "DocumentIncarnation", default)]
    incarnation: Option<u64>,
    #[serde(rename = "Events")]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "EventId", default)]
    event_id: String,
    #[serde(rename = "EventType", default)]
    event_type: String,
    #[serde(rename = "EventStatus", default)]
    event_status: String,
    #[serde(rename = "Resources", default)]
    resources: Vec<String>,
    #[serde(rename = "NotBefore", default)]
    not_before: String,
    #[serde(rename = "Description", default)]
    description: String,
    #[serde(rename = "EventSource", default)]
    event_source: String,
    #[serde(rename = "DurationInSeconds", default)]
    duration_s: Option<i64>,
}

fn kind_of(event_type: &str) -> Option<NoticeKind> {
    match event_type {
        "Preempt" | "Terminate" => Some(NoticeKind::Reclaim),
        "Reboot" | "Redeploy" => Some(NoticeKind::Maintenance),
        "Freeze" => Some(NoticeKind::Advisory),
        _ => None,
    }
}

/// The notices in a document that concern `vm_name` (all of them while the name is unknown),
/// and the ids of events skipped because they name only other VMs.
fn notices(doc: Document, vm_name: Option<&str>, now: SystemTime) -> (Vec<Notice>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for e in doc.events {
        let id = if e.event_id.trim().is_empty() {
            format!("{}@{}", e.event_type.trim(), e.not_before.trim())
        } else {
            e.event_id.trim().to_owned()
        };
        let ours = match vm_name {
            Some(name) if !e.resources.is_empty() => e
                .resources
                .iter()
                .any(|r| r.trim().eq_ignore_ascii_case(name)),
            _ => true,
        };
        if !ours {
            skipped.push(id);
            continue;
        }
        let event_type = e.event_type.trim();
        // An event type Azure adds later is reported, but as advisory only.
        let (kind, unknown) = match kind_of(event_type) {
            Some(kind) => (kind, ""),
            None => (NoticeKind::Advisory, " (unknown event type)"),
        };
        let mut detail = format!("{event_type}{unknown}");
        let status_source: Vec<&str> = [e.event_status.trim(), e.event_source.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        if !status_source.is_empty() {
            detail.push_str(&format!(" ({})", status_source.join(", ")));
        }
        if !e.description.trim().is_empty() {
            detail.push_str(&format!(": {}", e.description.trim()));
        }
        if !e.not_before.trim().is_empty() {
            detail.push_str(&format!("; not before {}", e.not_before.trim()));
        }
        if let Some(d) = e.duration_s.filter(|d| *d > 0) {
            detail.push_str(&format!("; lasts {d} s"));
        }
        if !e.resources.is_empty() {
            detail.push_str(&format!("; resources {}", e.resources.join(", ")));
        }
        out.push(Notice {
            provider: Provider::Azure,
            kind,
            id,
            // Empty once the event has started.
            not_before: dates::parse_any(&e.not_before),
            seen_at: now,
            detail,
        });
    }
    (out, skipped)
}

fn parse_document(body: &[u8]) -> Result<Document, String> {
    serde_json::from_slice(body).map_err(|e| format!("scheduled events document: {e}"))
}

pub(crate) async fn watch(cfg: &WatchConfig, reporter: &Reporter) -> Closed {
    let http = Http::new();
    let mut health = Health::new("azure scheduled events");
    let mut backoff = Backoff::new(cfg.poll_period());
    let mut vm_name: Option<String> = None;
    let mut next_name_try = Instant::now();
    let mut told_skipped: HashSet<String> = HashSet::new();
    let mut incarnation: Option<u64> = None;
    loop {
        if vm_name.is_none() && Instant::now() >= next_name_try {
            match instance_name(&http, &cfg.base_url, cfg.timeout).await {
                Ok(name) => {
                    tracing::debug!(vm = %name, "azure: this VM's name");
                    vm_name = Some(name);
                }
                Err(f) => {
                    tracing::debug!(error = %f, "azure: VM name unknown; taking every scheduled event as ours");
                    next_name_try = Instant::now() + NAME_RETRY;
                }
            }
        }
        let url = cfg.url(EVENTS_PATH);
        let look = async {
            let answer = http
                .send(
                    Method::GET,
                    &url,
                    &[METADATA_HEADER],
                    Bytes::new(),
                    cfg.timeout,
                )
                .await?
                .success()?;
            parse_document(&answer.body).map_err(|reason| Failure::garbage(&url, reason))
        };
        let wait = match look.await {
            Ok(doc) => {
                health.succeeded();
                backoff.succeeded();
                if doc.incarnation != incarnation {
                    tracing::debug!(incarnation = ?doc.incarnation, events = doc.events.len(), "azure: scheduled events document");
                    incarnation = doc.incarnation;
                }
                let (current, skipped) = notices(doc, vm_name.as_deref(), SystemTime::now());
                for id in skipped {
                    if told_skipped.insert(id.clone()) {
                        tracing::warn!(id = %id, vm = ?vm_name, "azure: scheduled event names only other VMs; ignoring it");
                    }
                }
                if let Err(Closed) = reporter.report(Source::AzureEvents, current).await {
                    return Closed;
                }
                cfg.poll_period()
            }
            Err(failure) => {
                let wait = backoff.failed();
                health.failed(&failure, wait);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[derive(Deserialize)]
struct InstanceDocument {
    compute: Compute,
}

#[derive(Deserialize)]
struct Compute {
    #[serde(default)]
    name: String,
}

/// `compute.name` from the instance document.
async fn instance_name(http: &Http, base_url: &str, timeout: Duration) -> Result<String, Failure> {
    let url = format!("{}{INSTANCE_PATH}", base_url.trim_end_matches('/'));
    let answer = http
        .send(Method::GET, &url, &[METADATA_HEADER], Bytes::new(), timeout)
        .await?
        .success()?;
    let doc: InstanceDocument = serde_json::from_slice(&answer.body)
        .map_err(|e| Failure::garbage(&url, format!("instance document: {e}")))?;
    let name = doc.compute.name.trim();
    if name.is_empty() {
        return Err(Failure::garbage(
            &url,
            "instance document without compute.name",
        ));
    }
    Ok(name.to_owned())
}

/// Detection: IMDS answers the instance document as JSON when asked with `Metadata: true`.
pub(crate) async fn probe(
    http: &Http,
    base_url: &str,
    timeout: Duration,
) -> Result<(), (String, String)> {
    let url = format!("{}{INSTANCE_PATH}", base_url.trim_end_matches('/'));
    let request = format!("GET {url} with Metadata: true");
    let answer = http
        .send(Method::GET, &url, &[METADATA_HEADER], Bytes::new(), timeout)
        .await
        .map_err(|e| (request.clone(), e.reason()))?
        .success()
        .map_err(|f| (request.clone(), f.reason()))?;
    match serde_json::from_slice::<serde_json::Value>(&answer.body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err((
            request,
            format!("answer is not a JSON object: {}", answer.snippet()),
        )),
    }
}

pub(crate) async fn acknowledge(cfg: &WatchConfig, id: &str) -> Result<(), AckError> {
    let url = cfg.url(EVENTS_PATH);
    let body = serde_json::json!({ "StartRequests": [ { "EventId": id } ] }).to_string();
    let answer = Http::new()
        .send(
            Method::POST,
            &url,
            &[METADATA_HEADER, ("content-type", "application/json")],
            Bytes::from(body),
            cfg.timeout,
        )
        .await
        .map_err(|e| AckError::Unreachable {
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
    if answer.status.is_success() {
        tracing::info!(id, "azure: scheduled event approved");
        Ok(())
    } else {
        Err(AckError::Rejected {
            id: id.to_owned(),
            url,
            status: answer.status.as_u16(),
            body: answer.snippet(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const DOC: &[u8] = br#"{
      "DocumentIncarnation": 3,
      "Events": [
        {"EventId":"A-1","EventStatus":"Scheduled","EventType":"Preempt","ResourceType":"VirtualMachine",
         "Resources":["vm-a"],"NotBefore":"Mon, 19 Sep 2016 18:29:47 GMT","Description":"",
         "EventSource":"Platform","DurationInSeconds":-1},
        {"EventId":"B-2","EventStatus":"Started","EventType":"Reboot","ResourceType":"VirtualMachine",
         "Resources":["vm-a","vm-b"],"NotBefore":"","Description":"Host update","EventSource":"Platform",
         "DurationInSeconds":-1},
        {"EventId":"C-3","EventStatus":"Scheduled","EventType":"Freeze","ResourceType":"VirtualMachine",
         "Resources":["vm-b"],"NotBefore":"Mon, 19 Sep 2016 18:45:00 GMT","Description":"",
         "EventSource":"Platform","DurationInSeconds":9},
        {"EventId":"D-4","EventStatus":"Scheduled","EventType":"Hibernate","ResourceType":"VirtualMachine",
         "Resources":[],"NotBefore":"","EventSource":"User"}
      ]
    }"#;

    #[test]
    fn classification() {
        let doc = parse_document(DOC).expect("parses");
        assert_eq!(doc.incarnation, Some(3));
        let (n, skipped) = notices(doc, None, UNIX_EPOCH);
        assert!(skipped.is_empty());
        let kinds: Vec<(&str, NoticeKind)> =
            n.iter().map(|n| (n.id.as_str(), n.kind.clone())).collect();
        assert_eq!(
            kinds,
            [
                ("A-1", NoticeKind::Reclaim),
                ("B-2", NoticeKind::Maintenance),
                ("C-3", NoticeKind::Advisory),
                ("D-4", NoticeKind::Advisory)
            ]
        );
        assert_eq!(
            n[0].not_before,
            Some(UNIX_EPOCH + Duration::from_secs(1_474_309_787))
        );
        assert_eq!(n[1].not_before, None, "started events have no NotBefore");
        assert!(n[1].detail.contains("Host update"));
        assert!(n[3].detail.contains("unknown event type"));
    }

    #[test]
    fn events_for_other_vms_are_skipped() {
        let doc = parse_document(DOC).expect("parses");
        let (n, skipped) = notices(doc, Some("VM-A"), UNIX_EPOCH);
        let ids: Vec<&str> = n.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["A-1", "B-2", "D-4"]);
        assert_eq!(skipped, ["C-3"]);
    }

    #[test]
    fn terminate_and_redeploy() {
        assert_eq!(kind_of("Terminate"), Some(NoticeKind::Reclaim));
        assert_eq!(kind_of("Redeploy"), Some(NoticeKind::Maintenance));
    }

    #[test]
    fn garbage_documents() {
        assert!(parse_document(b"").is_err());
        assert!(parse_document(b"\x00\xffgarbage").is_err());
        assert!(parse_document(br#"{"DocumentIncarnation":1}"#).is_err());
        assert!(parse_document(br#"{"Events":[]}"#).is_ok());
    }
}
