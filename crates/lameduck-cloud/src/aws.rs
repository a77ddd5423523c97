//! AWS: the EC2 instance metadata service, IMDSv2 only.
//!
//! Sources:
//! - IMDSv2 session tokens: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   (1–21600), then `X-aws-ec2-metadata-token` on every GET; an expired or missing token gets
//!   401. AWS doc "Use IMDSv2"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html>);
//!   aws-node-termination-handler `pkg/ec2metadata/ec2metadata.go` (drops the token and retries
//!   once on 401; refreshes before expiry).
//! - `/latest/meta-data/spot/instance-action`: 404 until an interruption, then
//!   `{"action":"terminate|stop|hibernate","time":"<RFC 3339>"}`. AWS doc "Spot Instance
//!   interruption notices"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>).
//! - `/latest/meta-data/events/recommendations/rebalance`: 404 until a recommendation, then
//!   `{"noticeTime":"<RFC 3339>"}`. AWS doc "EC2 instance rebalance recommendations"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html>).
//! - `/latest/meta-data/events/maintenance/scheduled`: a JSON list of `{NotBefore, Code,
//!   Description, EventId, NotAfter, State}`, dates like `21 Jan 2019 09:00:43 GMT`. AWS doc
//!   "Scheduled events for your instances"
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instances-status-check_sched.html>);
//!   the example in aws-node-termination-handler `pkg/ec2metadata/ec2metadata.go`.
//!
//! Project notes: /work/shared/reference/orchestration-anchors.md §2.1–2.3.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;

use crate::dates;
use crate::http::{Answer, Failure, Http};
use crate::tracker::{Backoff, Closed, Health, Reporter, Source};
use crate::{Notice, NoticeKind, Provider, WatchConfig};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The longest TTL IMDS grants (21600 s = 6 h); longer asks get 400.
const TOKEN_TTL_S: u64 = 21_600;
/// Get a new token this long before the old one expires (NTH uses 15 s; a poll may take a few).
const REFRESH_BEFORE: Duration = Duration::from_secs(60);

const SPOT_PATH: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE_PATH: &str = "/latest/meta-data/events/recommendations/rebalance";
const SCHEDULED_PATH: &str = "/latest/meta-data/events/maintenance/scheduled";

struct Token {
    value: String,
    refresh_at: Instant,
}

struct Imds<'a> {
    cfg: &'a WatchConfig,
    http: Http,
    token: Option<Token>,
    /// Polls so far, for reading the slow paths every `slow_every` polls.
    polls: u64,
}

impl Imds<'_> {
    /// A cached token, or a new one.
    async fn token(&mut self) -> Result<String, Failure> {
        if let Some(t) = self
            .token
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
        {
            return Ok(t.value.clone());
        }
        self.token = None;
        let (value, ttl) = fetch_token(&self.http, &self.cfg.base_url, self.cfg.timeout).await?;
        let lead = REFRESH_BEFORE.min(ttl / 2);
        self.token = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + ttl.saturating_sub(lead),
        });
        Ok(value)
    }

    async fn get(&self, path: &str, token: &str) -> Result<Answer, Failure> {
        let url = self.cfg.url(path);
        Ok(self
            .http
            .send(
                Method::GET,
                &url,
                &[(TOKEN_HEADER, token)],
                Bytes::new(),
                self.cfg.timeout,
            )
            .await?)
    }

    /// The notice endpoints, concurrently: the spot path on every poll, the two slow ones on
    /// every `slow_every` polls (`None` when not read this time). A 401 means the token is no
    /// longer good (IMDS restarted, or it expired early): drop it, get a new one, and retry
    /// those paths once.
    async fn fetch_all(&mut self) -> Result<[Option<Result<Answer, Failure>>; 3], Failure> {
        const PATHS: [&str; 3] = [SPOT_PATH, REBALANCE_PATH, SCHEDULED_PATH];
        let slow = self.polls % u64::from(self.cfg.slow_every.max(1)) == 0;
        self.polls += 1;
        let token = self.token().await?;
        let read = |i: usize| {
            let token = token.clone();
            let this = &*self;
            async move {
                if i == 0 || slow {
                    Some(this.get(PATHS[i], &token).await)
                } else {
                    None
                }
            }
        };
        let (a, b, c) = futures_util::future::join3(read(0), read(1), read(2)).await;
        let mut results = [a, b, c];
        let unauthorized = |r: &Option<Result<Answer, Failure>>| matches!(r, Some(Ok(a)) if a.status == StatusCode::UNAUTHORIZED);
        if results.iter().any(unauthorized) {
            self.token = None;
            let token = self.token().await?;
            for (i, result) in results.iter_mut().enumerate() {
                if unauthorized(result) {
                    *result = Some(self.get(PATHS[i], &token).await);
                }
            }
        }
        Ok(results)
    }
}

/// `PUT /latest/api/token`: the token and how long it lives (the TTL IMDS echoes back, or what
/// we asked for).
async fn fetch_token(
    http: &Http,
    base_url: &str,
    timeout: Duration,
) -> Result<(String, Duration), Failure> {
    let url = format!("{}{TOKEN_PATH}", base_url.trim_end_matches('/'));
    let ttl_asked = TOKEN_TTL_S.to_string();
    let answer = http
        .send(
            Method::PUT,
            &url,
            &[(TTL_HEADER, &ttl_asked)],
            Bytes::new(),
            timeout,
        )
        .await?
        .success()?;
    let value = answer
        .text()
        .map(str::trim)
        .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
        .ok_or_else(|| {
            Failure::garbage(
                &url,
                format!("token is not a usable header value: {}", answer.snippet()),
            )
        })?
        .to_owned();
    let ttl = answer
        .header(TTL_HEADER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(TOKEN_TTL_S)
        .min(TOKEN_TTL_S);
    Ok((value, Duration::from_secs(ttl)))
}

pub(crate) async fn watch(cfg: &WatchConfig, reporter: &Reporter) -> Closed {
    let mut imds = Imds {
        cfg,
        http: Http::new(),
        token: None,
        polls: 0,
    };
    let mut health = Health::new("aws imds");
    let mut backoff = Backoff::new(cfg.poll_period());
    loop {
        let failure = match poll(&mut imds, reporter).await {
            Ok(None) => None,
            Ok(Some(f)) => Some(f),
            Err(Closed) => return Closed,
        };
        let wait = match failure {
            None => {
                health.succeeded();
                backoff.succeeded();
                cfg.poll_period()
            }
            Some(f) => {
                let wait = backoff.failed();
                health.failed(&f, wait);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One look at all three endpoints; reports what it could read and returns the first failure.
async fn poll(imds: &mut Imds<'_>, reporter: &Reporter) -> Result<Option<Failure>, Closed> {
    let results = match imds.fetch_all().await {
        Ok(r) => r,
        Err(f) => return Ok(Some(f)),
    };
    let now = SystemTime::now();
    let [spot, rebalance, scheduled] = results;
    let mut first_failure = None;
    let looks = [
        (
            Source::AwsSpot,
            spot.map(|r| r.and_then(|a| read(a, spot_notice, now))),
        ),
        (
            Source::AwsRebalance,
            rebalance.map(|r| r.and_then(|a| read(a, rebalance_notice, now))),
        ),
        (
            Source::AwsScheduled,
            scheduled.map(|r| r.and_then(|a| read(a, scheduled_notices, now))),
        ),
    ];
    // A path not read this time keeps what it last said.
    for (source, look) in looks.into_iter().filter_map(|(s, l)| l.map(|l| (s, l))) {
        match look {
            Ok(notices) => reporter.report(source, notices).await?,
            Err(f) => {
                first_failure.get_or_insert(f);
            }
        }
    }
    Ok(first_failure)
}

/// 404 is "nothing listed" (IMDS answers 404 for spot and rebalance until there is a notice);
/// 200 is parsed; anything else is a failure.
fn read(
    answer: Answer,
    parse: fn(&[u8], SystemTime) -> Result<Vec<Notice>, String>,
    now: SystemTime,
) -> Result<Vec<Notice>, Failure> {
    if answer.status == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    let answer = answer.success()?;
    parse(&answer.body, now).map_err(|reason| Failure::garbage(&answer.url, reason))
}

#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

fn spot_notice(body: &[u8], now: SystemTime) -> Result<Vec<Notice>, String> {
    let a: InstanceAction =
        serde_json::from_slice(body).map_err(|e| format!("spot instance-action: {e}"))?;
    let action = a.action.trim();
    if action.is_empty() {
        return Err("spot instance-action without an action".to_owned());
    }
    let time = a.time.trim();
    // A time we cannot read still means the instance is going: report it without a deadline.
    let not_before = dates::parse_any(time);
    Ok(vec![Notice {
        provider: Provider::Aws,
        kind: NoticeKind::Reclaim,
        id: format!("spot:{action}@{time}"),
        not_before,
        seen_at: now,
        detail: format!("spot instance-action: {action} at {time}"),
    }])
}

#[derive(Deserialize)]
struct Rebalance {
    #[serde(rename = "noticeTime")]
    notice_time: String,
}

fn rebalance_notice(body: &[u8], now: SystemTime) -> Result<Vec<Notice>, String> {
    let r: Rebalance =
        serde_json::from_slice(body).map_err(|e| format!("rebalance recommendation: {e}"))?;
    let at = r.notice_time.trim();
    Ok(vec![Notice {
        provider: Provider::Aws,
        kind: NoticeKind::Advisory,
        id: format!("rebalance@{at}"),
        not_before: None,
        seen_at: now,
        detail: format!("rebalance recommendation issued {at}"),
    }])
}

#[derive(Deserialize)]
struct ScheduledEvent {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Description", default)]
    description: String,
    #[serde(rename = "EventId", default)]
    event_id: String,
    #[serde(rename = "NotBefore", default)]
    not_before: String,
    #[serde(rename = "NotAfter", default)]
    not_after: String,
    #[serde(rename = "State", default)]
    state: String,
}

/// Every `active` event is maintenance that stops or reboots the instance; `completed` and
/// `canceled` events stay listed for a while but are over. A missing `State` counts as active.
fn scheduled_notices(body: &[u8], now: SystemTime) -> Result<Vec<Notice>, String> {
    let events: Vec<ScheduledEvent> =
        serde_json::from_slice(body).map_err(|e| format!("scheduled events: {e}"))?;
    Ok(events
        .into_iter()
        .filter(|e| e.state.is_empty() || e.state.eq_ignore_ascii_case("active"))
        .map(|e| {
            let id = if e.event_id.trim().is_empty() {
                format!("{}@{}", e.code.trim(), e.not_before.trim())
            } else {
                e.event_id.trim().to_owned()
            };
            let mut detail = e.code.trim().to_owned();
            if !e.description.trim().is_empty() {
                detail.push_str(": ");
                detail.push_str(e.description.trim());
            }
            if !e.not_before.trim().is_empty() {
                detail.push_str(&format!(
                    " (window {} – {})",
                    e.not_before.trim(),
                    e.not_after.trim()
                ));
            }
            Notice {
                provider: Provider::Aws,
                kind: NoticeKind::Maintenance,
                id,
                not_before: dates::parse_any(&e.not_before),
                seen_at: now,
                detail,
            }
        })
        .collect())
}

/// Detection: only IMDS hands out a token for `PUT /latest/api/token` with a TTL header.
pub(crate) async fn probe(
    http: &Http,
    base_url: &str,
    timeout: Duration,
) -> Result<(), (String, String)> {
    let request = format!("PUT {}{TOKEN_PATH}", base_url.trim_end_matches('/'));
    fetch_token(http, base_url, timeout)
        .await
        .map(|_| ())
        .map_err(|f| (request, f.reason()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn spot_action() {
        let body = br#"{"action":"terminate","time":"2020-04-24T17:11:44Z"}"#;
        let n = spot_notice(body, t(5)).expect("parses");
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::Reclaim);
        assert_eq!(n[0].id, "spot:terminate@2020-04-24T17:11:44Z");
        assert_eq!(n[0].not_before, Some(t(1_587_748_304)));
        assert_eq!(n[0].seen_at, t(5));
        assert!(n[0].detail.contains("terminate"));
        let stop = spot_notice(br#"{"action":"stop","time":"soon"}"#, t(5)).expect("parses");
        assert_eq!(stop[0].not_before, None);
        assert_eq!(stop[0].kind, NoticeKind::Reclaim);
        assert!(spot_notice(b"<html>404</html>", t(5)).is_err());
        assert!(spot_notice(br#"{"action":"","time":"x"}"#, t(5)).is_err());
        assert!(spot_notice(br#"{"time":"x"}"#, t(5)).is_err());
    }

    #[test]
    fn rebalance() {
        let n =
            rebalance_notice(br#"{"noticeTime":"2020-10-27T08:22:00Z"}"#, t(1)).expect("parses");
        assert_eq!(n[0].kind, NoticeKind::Advisory);
        assert_eq!(n[0].id, "rebalance@2020-10-27T08:22:00Z");
        assert!(rebalance_notice(b"{}", t(1)).is_err());
    }

    #[test]
    fn scheduled() {
        let body = br#"[
          {"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"scheduled reboot",
           "EventId":"instance-event-0d59937288b749b32","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"},
          {"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"instance-stop","Description":"[Canceled] scheduled stop",
           "EventId":"instance-event-1","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"canceled"},
          {"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"instance-retirement","Description":"[Completed] x",
           "EventId":"instance-event-2","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"completed"}
        ]"#;
        let n = scheduled_notices(body, t(1)).expect("parses");
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].id, "instance-event-0d59937288b749b32");
        assert_eq!(n[0].kind, NoticeKind::Maintenance);
        assert_eq!(n[0].not_before, Some(t(1_548_061_243)));
        assert!(n[0].detail.starts_with("system-reboot: scheduled reboot"));
        assert!(scheduled_notices(b"[]", t(1)).expect("parses").is_empty());
        assert!(scheduled_notices(b"{\"Code\":1}", t(1)).is_err());
        assert!(scheduled_notices(b"\x00\xff", t(1)).is_err());
    }

    #[test]
    fn not_found_means_nothing_listed() {
        let answer = Answer {
            url: "http://x/latest/meta-data/spot/instance-action".into(),
            status: StatusCode::NOT_FOUND,
            headers: Default::default(),
            body: Bytes::from_static(b"<html>404 - Not Found</html>"),
        };
        assert_eq!(read(answer, spot_notice, t(1)), Ok(vec![]));
        let answer = Answer {
            url: "http://x/y".into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            headers: Default::default(),
            body: Bytes::new(),
        };
        assert!(matches!(
            read(answer, spot_notice, t(1)),
            Err(Failure::Status { .. })
        ));
    }
}
