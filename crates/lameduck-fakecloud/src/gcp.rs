//! Fake GCE metadata server.
//!
//! Faithful, with sources:
//! - Requests need `Metadata-Flavor: Google`, else 403; requests carrying `X-Forwarded-For` are
//!   refused (403); every answer carries `Metadata-Flavor: Google`. GCE doc "View and query VM
//!   metadata" (<https://cloud.google.com/compute/docs/metadata/querying-metadata>); GCE doc
//!   "Troubleshooting metadata server access issues" (403 for requests failing security checks).
//! - `?wait_for_change=true`: with a `last_etag` that differs from the current ETag the answer
//!   is immediate; otherwise the request is held until the value changes or `timeout_sec`
//!   passes, and answers the current value with its `ETag`. Same doc, "Waiting for change";
//!   GoogleCloudPlatform/python-docs-samples `compute/metadata/main.py` starts with
//!   `last_etag=0` and expects an immediate answer.
//! - `instance/preempted` is `TRUE` / `FALSE` (GCE doc "Spot VMs",
//!   <https://cloud.google.com/compute/docs/instances/spot>); `instance/maintenance-event` is
//!   `NONE`, `MIGRATE_ON_HOST_MAINTENANCE` or `TERMINATE_ON_HOST_MAINTENANCE` (GCE doc "Get live
//!   migration notices",
//!   <https://cloud.google.com/compute/docs/instances/monitor-plan-host-maintenance-event>).
//! - ETags are content hashes: the same value has the same ETag.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::{Req, Resp, Shared, State, respond, with_header};

const FLAVOR: &str = "Google";

pub(crate) struct GcpState {
    preempted: bool,
    maintenance: &'static str,
}

impl Default for GcpState {
    fn default() -> GcpState {
        GcpState {
            preempted: false,
            maintenance: "NONE",
        }
    }
}

pub(crate) fn reclaim(s: &mut State) {
    s.gcp.preempted = true;
}

pub(crate) fn maintenance(s: &mut State) {
    s.gcp.maintenance = "TERMINATE_ON_HOST_MAINTENANCE";
}

pub(crate) fn advisory(s: &mut State) {
    s.gcp.maintenance = "MIGRATE_ON_HOST_MAINTENANCE";
}

pub(crate) fn clear(s: &mut State) {
    s.gcp.preempted = false;
    s.gcp.maintenance = "NONE";
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Resp {
    let resp = with_header(
        respond(status, content_type, body),
        "metadata-flavor",
        FLAVOR,
    );
    with_header(resp, "server", "Metadata Server for VM")
}

fn etag_of(key: &str, value: &str) -> String {
    // FNV-1a: stable, and different for different values.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0]).chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The current value of a watchable key.
fn value_of(shared: &Shared, path: &str) -> Option<String> {
    let state = shared.lock();
    match path {
        "/computeMetadata/v1/instance/preempted" => {
            Some(if state.gcp.preempted { "TRUE" } else { "FALSE" }.to_owned())
        }
        "/computeMetadata/v1/instance/maintenance-event" => Some(state.gcp.maintenance.to_owned()),
        _ => None,
    }
}

fn static_value(path: &str) -> Option<&'static str> {
    match path {
        "/computeMetadata/v1/" | "/computeMetadata/v1" => Some("instance/\noauth/\nproject/\n"),
        "/computeMetadata/v1/instance/" => Some(
            "hostname\nid\nmachine-type\nmaintenance-event\nname\npreempted\nscheduling/\nzone\n",
        ),
        "/computeMetadata/v1/instance/id" => Some("4520031799277581759"),
        "/computeMetadata/v1/instance/name" => Some("fake-vm"),
        "/computeMetadata/v1/instance/zone" => Some("projects/123456789012/zones/us-central1-a"),
        "/computeMetadata/v1/instance/hostname" => {
            Some("fake-vm.us-central1-a.c.fake-project.internal")
        }
        "/computeMetadata/v1/project/project-id" => Some("fake-project"),
        _ => None,
    }
}

pub(crate) async fn handle(shared: &Shared, req: &Req) -> Resp {
    if req.header("x-forwarded-for").is_some() {
        return answer(
            StatusCode::FORBIDDEN,
            "text/html; charset=UTF-8",
            "Request rejected: X-Forwarded-For header present.\n".to_owned(),
        );
    }
    if req.header("metadata-flavor") != Some(FLAVOR) {
        return answer(
            StatusCode::FORBIDDEN,
            "text/html; charset=UTF-8",
            format!(
                "Your client does not have permission to get URL {} from this server. Missing Metadata-Flavor:Google header.\n",
                req.path
            ),
        );
    }
    if req.method != Method::GET {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/html; charset=UTF-8",
            "Method not allowed.\n".to_owned(),
        );
    }
    let Some(mut value) = value_of(shared, &req.path) else {
        return match static_value(&req.path) {
            Some(v) => {
                let resp = answer(StatusCode::OK, "application/text", v.to_owned());
                with_header(resp, "etag", &etag_of(&req.path, v))
            }
            None => answer(
                StatusCode::NOT_FOUND,
                "text/html; charset=UTF-8",
                "Not Found\n".to_owned(),
            ),
        };
    };

    if req.query.get("wait_for_change").map(String::as_str) == Some("true") {
        let timeout = match req.query.get("timeout_sec") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(s) => Some(Duration::from_secs(s)),
                Err(_) => {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        "text/html; charset=UTF-8",
                        "Invalid timeout_sec.\n".to_owned(),
                    );
                }
            },
        };
        // Subscribe before comparing, so a change between the two is not missed.
        let mut changes = shared.changed.subscribe();
        let baseline = req
            .query
            .get("last_etag")
            .cloned()
            .unwrap_or_else(|| etag_of(&req.path, &value));
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            if etag_of(&req.path, &value) != baseline {
                break;
            }
            let changed = changes.changed();
            let keep_waiting = match deadline {
                Some(at) => tokio::select! {
                    r = changed => r.is_ok(),
                    () = tokio::time::sleep_until(at) => false,
                },
                None => changed.await.is_ok(),
            };
            if !keep_waiting {
                break;
            }
            value = value_of(shared, &req.path).unwrap_or(value);
        }
        value = value_of(shared, &req.path).unwrap_or(value);
    }
    let etag = etag_of(&req.path, &value);
    with_header(
        answer(StatusCode::OK, "application/text", value),
        "etag",
        &etag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_follow_content() {
        let p = "/computeMetadata/v1/instance/preempted";
        assert_eq!(etag_of(p, "FALSE"), etag_of(p, "FALSE"));
        assert_ne!(etag_of(p, "FALSE"), etag_of(p, "TRUE"));
        assert_ne!(etag_of(p, "NONE"), etag_of("/other", "NONE"));
    }
}
