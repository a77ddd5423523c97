//! Fake Azure Instance Metadata Service: Scheduled Events and the instance document.
//!
//! Faithful, with sources:
//! - Every request needs `Metadata: true` and an `api-version` query parameter, else 400 with a
//!   JSON `error` (and `newest-versions` for a bad version); requests carrying
//!   `X-Forwarded-For` are refused (400). Azure doc "Azure Instance Metadata Service"
//!   (<https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service>, sections
//!   "Security and authentication", "Versioning", "Errors and debugging").
//! - `GET /metadata/scheduledevents` answers `{"DocumentIncarnation":N,"Events":[…]}` with the
//!   documented event fields; `DocumentIncarnation` grows on every change; `POST` with
//!   `{"StartRequests":[{"EventId":"…"}]}` approves events, which move to `EventStatus: Started`
//!   (with an empty `NotBefore`) and then disappear, as finished events do — there is no
//!   "Completed" status. Azure doc "Scheduled Events for Linux VMs"
//!   (<https://learn.microsoft.com/azure/virtual-machines/linux/scheduled-events>; source
//!   MicrosoftDocs/azure-compute-docs `articles/virtual-machines/linux/scheduled-events.md`).
//! - Notice lengths used for defaults: Freeze 15 min, Preempt 30 s (same doc, "minimum notice").

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};

use crate::{Req, Resp, Shared, State, format, respond};

/// How long an approved (Started) event stays listed before it disappears.
const STARTED_LINGER: Duration = Duration::from_secs(1);
pub(crate) const VM_NAME: &str = "fake-vm-0";
const NEWEST_VERSIONS: [&str; 3] = ["2023-07-01", "2021-12-13", "2021-11-15"];
/// API versions Scheduled Events answers to (the doc's version table).
const EVENT_VERSIONS: [&str; 6] = [
    "2017-03-01",
    "2017-08-01",
    "2017-11-01",
    "2019-01-01",
    "2019-08-01",
    "2020-07-01",
];

pub(crate) struct AzureState {
    incarnation: u64,
    events: Vec<Event>,
    pub(crate) acknowledged: Vec<String>,
}

impl AzureState {
    pub(crate) fn new() -> AzureState {
        AzureState {
            incarnation: 1,
            events: Vec::new(),
            acknowledged: Vec::new(),
        }
    }
}

impl Default for AzureState {
    fn default() -> AzureState {
        AzureState::new()
    }
}

struct Event {
    id: String,
    event_type: &'static str,
    status: &'static str,
    not_before: String,
    description: &'static str,
    source: &'static str,
    duration_s: i64,
}

fn event_id(s: &mut State) -> String {
    let a = s.next_random();
    let b = s.next_random();
    format!(
        "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

fn add(
    s: &mut State,
    event_type: &'static str,
    at: SystemTime,
    description: &'static str,
    duration_s: i64,
) {
    let id = event_id(s);
    s.azure.events.push(Event {
        id,
        event_type,
        status: "Scheduled",
        not_before: format::rfc1123(at),
        description,
        source: "Platform",
        duration_s,
    });
    s.azure.incarnation += 1;
}

pub(crate) fn reclaim(s: &mut State, at: SystemTime) {
    add(s, "Preempt", at, "", -1);
}

pub(crate) fn maintenance(s: &mut State, at: SystemTime) {
    add(
        s,
        "Reboot",
        at,
        "Virtual machine is going to be restarted as requested by authorized user.",
        -1,
    );
}

pub(crate) fn advisory(s: &mut State) {
    let at = SystemTime::now() + Duration::from_secs(15 * 60);
    add(s, "Freeze", at, "Host server is undergoing maintenance.", 9);
}

pub(crate) fn clear(s: &mut State) {
    s.azure.events.clear();
    s.azure.incarnation += 1;
}

fn json(status: StatusCode, v: serde_json::Value) -> Resp {
    respond(status, "application/json; charset=utf-8", v.to_string())
}

fn bad_request(message: &str) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": format!("Bad request. {message}") }),
    )
}

fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

pub(crate) fn handle(shared: &Arc<Shared>, req: &Req) -> Resp {
    if req.header("x-forwarded-for").is_some() {
        return bad_request("Requests with an X-Forwarded-For header are not allowed.");
    }
    if !req
        .header("metadata")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return bad_request("Required metadata header not specified");
    }
    let known_path = matches!(
        req.path.as_str(),
        "/metadata/scheduledevents" | "/metadata/instance"
    );
    if !known_path {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "Not found" }),
        );
    }
    let version_ok = match req.query.get("api-version") {
        None => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
                    "newest-versions": NEWEST_VERSIONS,
                }),
            );
        }
        Some(v) if req.path == "/metadata/scheduledevents" => EVENT_VERSIONS.contains(&v.as_str()),
        Some(v) => is_date(v),
    };
    if !version_ok {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "error": "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds",
                "newest-versions": NEWEST_VERSIONS,
            }),
        );
    }
    match (req.path.as_str(), &req.method) {
        ("/metadata/scheduledevents", &Method::GET) => events_document(shared),
        ("/metadata/scheduledevents", &Method::POST) => start_requests(shared, req),
        ("/metadata/instance", &Method::GET) => json(
            StatusCode::OK,
            serde_json::json!({
                "compute": {
                    "azEnvironment": "AzurePublicCloud",
                    "location": "westeurope",
                    "name": VM_NAME,
                    "osType": "Linux",
                    "priority": "Spot",
                    "resourceGroupName": "fake-rg",
                    "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                    "vmSize": "Standard_NC24ads_A100_v4",
                    "zone": "1"
                },
                "network": { "interface": [] }
            }),
        ),
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({ "error": "Method not allowed" }),
        ),
    }
}

fn events_document(shared: &Shared) -> Resp {
    let state = shared.lock();
    let events: Vec<serde_json::Value> = state
        .azure
        .events
        .iter()
        .map(|e| {
            serde_json::json!({
                "EventId": e.id,
                "EventStatus": e.status,
                "EventType": e.event_type,
                "ResourceType": "VirtualMachine",
                "Resources": [VM_NAME],
                "NotBefore": e.not_before,
                "Description": e.description,
                "EventSource": e.source,
                "DurationInSeconds": e.duration_s,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "DocumentIncarnation": state.azure.incarnation,
            "Events": events,
        }),
    )
}

fn start_requests(shared: &Arc<Shared>, req: &Req) -> Resp {
    let parsed: Option<Vec<String>> = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| {
            v.get("StartRequests")?
                .as_array()?
                .iter()
                .map(|r| r.get("EventId")?.as_str().map(str::to_owned))
                .collect()
        });
    let Some(ids) = parsed else {
        return bad_request("Could not parse the StartRequests body.");
    };
    let started = shared.update(|s| {
        let mut started = Vec::new();
        for id in &ids {
            s.azure.acknowledged.push(id.clone());
            if let Some(e) = s
                .azure
                .events
                .iter_mut()
                .find(|e| &e.id == id && e.status == "Scheduled")
            {
                e.status = "Started";
                e.not_before = String::new();
                started.push(id.clone());
            }
        }
        if !started.is_empty() {
            s.azure.incarnation += 1;
        }
        started
    });
    if !started.is_empty() {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STARTED_LINGER).await;
            shared.update(|s| {
                let before = s.azure.events.len();
                s.azure
                    .events
                    .retain(|e| !(e.status == "Started" && started.contains(&e.id)));
                if s.azure.events.len() != before {
                    s.azure.incarnation += 1;
                }
            });
        });
    }
    respond(StatusCode::OK, "application/json; charset=utf-8", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_ids() {
        assert!(is_date("2020-07-01"));
        assert!(!is_date("2020-7-01"));
        assert!(!is_date("latest"));
        let mut s = State::default();
        let a = event_id(&mut s);
        let b = event_id(&mut s);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
