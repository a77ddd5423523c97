//! Fake AWS EC2 instance metadata service, IMDSv2 only ("HttpTokens: required").
//!
//! Faithful, with sources:
//! - Tokens: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` between 1 and
//!   21600, else 400; the answer is the token, with the TTL header echoed; a PUT carrying
//!   `X-Forwarded-For` is refused (403). AWS doc "Use IMDSv2"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html>);
//!   amazon-ec2-metadata-mock `pkg/mock/imdsv2/tokengenerator.go` (maxTTL 21600, 0 or more is 400).
//! - Every GET needs a valid, unexpired token in `X-aws-ec2-metadata-token`, else 401 (same doc;
//!   AEMM `-I/--imdsv2` mode).
//! - `spot/instance-action`: 404 until an interruption, then
//!   `{"action":"terminate","time":"<RFC 3339>"}`; `spot/termination-time` the time as text.
//!   AWS doc "Spot Instance interruption notices"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>).
//! - `events/recommendations/rebalance`: 404, then `{"noticeTime":"<RFC 3339>"}`. AWS doc "EC2
//!   instance rebalance recommendations"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html>).
//! - `events/maintenance/scheduled`: a JSON list (empty when none) of `{NotBefore, Code,
//!   Description, EventId, NotAfter, State}` with dates like `21 Jan 2019 09:00:43 GMT`;
//!   canceled events stay listed with `State: canceled` and a `[Canceled]` description. AWS doc
//!   "Scheduled events for your instances"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instances-status-check_sched.html>);
//!   the example in aws-node-termination-handler `pkg/ec2metadata/ec2metadata.go`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};

use crate::{Req, Resp, Shared, State, format, respond, with_header};

const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL_S: u64 = 21_600;
const INSTANCE_ID: &str = "i-0fa4e5c6d7b8a9f01";

#[derive(Default)]
pub(crate) struct AwsState {
    /// token → expiry
    tokens: HashMap<String, Instant>,
    spot: Option<(String, SystemTime)>,
    rebalance: Option<SystemTime>,
    scheduled: Vec<ScheduledEvent>,
}

struct ScheduledEvent {
    id: String,
    code: &'static str,
    description: String,
    not_before: SystemTime,
    not_after: SystemTime,
    state: &'static str,
}

impl AwsState {
    pub(crate) fn revoke_tokens(&mut self) {
        self.tokens.clear();
    }
}

pub(crate) fn reclaim(s: &mut State, at: SystemTime) {
    s.aws.spot = Some(("terminate".to_owned(), at));
}

pub(crate) fn maintenance(s: &mut State, at: SystemTime) {
    let id = format!("instance-event-{:017x}", s.next_random() >> 4);
    s.aws.scheduled.push(ScheduledEvent {
        id,
        code: "system-reboot",
        description: "scheduled reboot".to_owned(),
        not_before: at,
        not_after: at + Duration::from_secs(2 * 3600),
        state: "active",
    });
}

pub(crate) fn advisory(s: &mut State) {
    s.aws.rebalance = Some(SystemTime::now());
}

pub(crate) fn clear(s: &mut State) {
    s.aws.spot = None;
    s.aws.rebalance = None;
    for e in &mut s.aws.scheduled {
        if e.state == "active" {
            e.state = "canceled";
            e.description = format!("[Canceled] {}", e.description);
        }
    }
}

/// IMDS's error pages are small HTML documents.
fn error_page(status: StatusCode) -> Resp {
    let title = format!(
        "{} - {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html>\n<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n"
    );
    respond(status, "text/html", body)
}

pub(crate) fn handle(shared: &Shared, req: &Req) -> Resp {
    if req.path == "/latest/api/token" {
        return token(shared, req);
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return error_page(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mut state = shared.lock();
    let now = Instant::now();
    state.aws.tokens.retain(|_, expiry| *expiry > now);
    let authorized = req
        .header(TOKEN_HEADER)
        .is_some_and(|t| state.aws.tokens.contains_key(t));
    if !authorized {
        return error_page(StatusCode::UNAUTHORIZED);
    }
    let json = |v: serde_json::Value| respond(StatusCode::OK, "text/plain", v.to_string());
    let text = |t: &str| respond(StatusCode::OK, "text/plain", t.to_owned());
    match req.path.as_str() {
        "/latest/meta-data/spot/instance-action" => match &state.aws.spot {
            Some((action, at)) => json(serde_json::json!({
                "action": action,
                "time": format::rfc3339(*at),
            })),
            None => error_page(StatusCode::NOT_FOUND),
        },
        "/latest/meta-data/spot/termination-time" => match &state.aws.spot {
            Some((_, at)) => text(&format::rfc3339(*at)),
            None => error_page(StatusCode::NOT_FOUND),
        },
        "/latest/meta-data/events/recommendations/rebalance" => match state.aws.rebalance {
            Some(at) => json(serde_json::json!({ "noticeTime": format::rfc3339(at) })),
            None => error_page(StatusCode::NOT_FOUND),
        },
        "/latest/meta-data/events/maintenance/scheduled" => {
            let events: Vec<serde_json::Value> = state
                .aws
                .scheduled
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "NotBefore": format::aws_event_date(e.not_before),
                        "Code": e.code,
                        "Description": e.description,
                        "EventId": e.id,
                        "NotAfter": format::aws_event_date(e.not_after),
                        "State": e.state,
                    })
                })
                .collect();
            json(serde_json::Value::Array(events))
        }
        "/latest/meta-data/instance-id" => text(INSTANCE_ID),
        "/latest/meta-data/instance-life-cycle" => text("spot"),
        "/latest/meta-data/" | "/latest/meta-data" => {
            text("events/\ninstance-id\ninstance-life-cycle\nspot/")
        }
        "/latest/meta-data/spot/" | "/latest/meta-data/spot" => {
            if state.aws.spot.is_some() {
                text("instance-action\ntermination-time")
            } else {
                error_page(StatusCode::NOT_FOUND)
            }
        }
        _ => error_page(StatusCode::NOT_FOUND),
    }
}

fn token(shared: &Shared, req: &Req) -> Resp {
    if req.method != Method::PUT {
        return error_page(StatusCode::METHOD_NOT_ALLOWED);
    }
    if req.header("x-forwarded-for").is_some() {
        return error_page(StatusCode::FORBIDDEN);
    }
    let ttl = req
        .header(TTL_HEADER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (1..=MAX_TTL_S).contains(s));
    let Some(ttl) = ttl else {
        return error_page(StatusCode::BAD_REQUEST);
    };
    let mut state = shared.lock();
    let value = format!(
        "AQAEA{:016x}{:016x}Fk==",
        state.next_random(),
        state.next_random()
    );
    state
        .aws
        .tokens
        .insert(value.clone(), Instant::now() + Duration::from_secs(ttl));
    with_header(
        respond(StatusCode::OK, "text/plain", value),
        TTL_HEADER,
        &ttl.to_string(),
    )
}
