//! `watch`, `detect` and `acknowledge` against the fake metadata servers of
//! `lameduck-fakecloud`. Each test runs the three providers concurrently (each with its own
//! fake), so the suite's wall time is that of its slowest scenario rather than the sum.

use std::time::{Duration, Instant, SystemTime};

use lameduck_cloud::{
    Notice, NoticeKind, Provider, Update, WatchConfig, acknowledge, detect, watch,
};
use lameduck_fakecloud::{FakeMetadata, Fault};
use tokio::sync::mpsc::Receiver;

const ALL: [Provider; 3] = [Provider::Aws, Provider::Gcp, Provider::Azure];

/// Runs `scenario` for every provider at once.
async fn for_each_provider<F, Fut>(scenario: F)
where
    F: Fn(Provider) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let [a, b, c] = ALL.map(&scenario);
    tokio::join!(a, b, c);
}

async fn next(rx: &mut Receiver<Update>, within: Duration, p: Provider, what: &str) -> Update {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(u)) => u,
        Ok(None) => panic!("{p}: watch channel closed while waiting for {what}"),
        Err(_) => panic!("{p}: no update within {within:?} while waiting for {what}"),
    }
}

async fn next_notice(
    rx: &mut Receiver<Update>,
    within: Duration,
    p: Provider,
    what: &str,
) -> Notice {
    match next(rx, within, p, what).await {
        Update::Notice(n) => n,
        other => panic!("{p}: expected a notice ({what}), got {other:?}"),
    }
}

async fn next_cancel(
    rx: &mut Receiver<Update>,
    within: Duration,
    p: Provider,
    what: &str,
) -> String {
    match next(rx, within, p, what).await {
        Update::Cancelled { id } => id,
        other => panic!("{p}: expected a cancellation ({what}), got {other:?}"),
    }
}

async fn quiet(rx: &mut Receiver<Update>, period: Duration, p: Provider, why: &str) {
    if let Ok(Some(u)) = tokio::time::timeout(period, rx.recv()).await {
        panic!("{p}: expected no update ({why}), got {u:?}");
    }
}

fn close_to(a: SystemTime, b: SystemTime, slack: Duration) -> bool {
    match a.duration_since(b) {
        Ok(d) => d <= slack,
        Err(e) => e.duration() <= slack,
    }
}

/// The default config (poll 1 s, timeout 2 s) against a fake.
/// Every path on every poll, so that a notice of any kind is seen within a poll.
fn config(p: Provider, fake: &FakeMetadata) -> WatchConfig {
    let mut c = WatchConfig::new(p, Some(fake.url()));
    c.slow_every = 1;
    c
}

/// With the defaults, an idle AWS watcher reads the spot path once a second and the two slow
/// paths once every ten polls: about 1.2 requests a second (plus a token now and then).
#[tokio::test]
async fn aws_idle_cost_stays_near_one_request_a_second() {
    let fake = FakeMetadata::start(Provider::Aws).await;
    let rx = watch(WatchConfig::new(Provider::Aws, Some(fake.url())));
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let reqs = fake.requests();
    let count = |path: &str| reqs.iter().filter(|r| r.1.starts_with(path)).count();
    let spot = count("/latest/meta-data/spot/instance-action");
    let rebalance = count("/latest/meta-data/events/recommendations/rebalance");
    let scheduled = count("/latest/meta-data/events/maintenance/scheduled");
    assert!((8..=12).contains(&spot), "spot read {spot} times in 10.5 s");
    assert!(
        (1..=2).contains(&rebalance),
        "rebalance read {rebalance} times"
    );
    assert!(
        (1..=2).contains(&scheduled),
        "scheduled read {scheduled} times"
    );
    drop(rx);
}

#[tokio::test]
async fn reclaim_is_reported_fast_once_and_cancelled() {
    for_each_provider(|p| async move {
        let fake = FakeMetadata::start(p).await;
        let mut rx = watch(config(p, &fake));
        quiet(
            &mut rx,
            Duration::from_millis(1200),
            p,
            "nothing announced yet",
        )
        .await;

        let at = SystemTime::now() + Duration::from_secs(120);
        let started = Instant::now();
        fake.reclaim(at);
        let n = next_notice(&mut rx, Duration::from_secs(10), p, "the reclaim").await;
        let took = started.elapsed();
        assert!(took <= Duration::from_secs(6), "{p}: reclaim took {took:?}");
        assert_eq!(n.provider, p);
        assert_eq!(n.kind, NoticeKind::Reclaim, "{p}: {n:?}");
        assert!(!n.detail.is_empty(), "{p}: {n:?}");
        let not_before = n.not_before.expect("a reclaim says when");
        match p {
            // GCP gives no time: 30 s after the notice was first seen.
            Provider::Gcp => {
                assert_eq!(n.id, "preempted");
                assert_eq!(not_before, n.seen_at + Duration::from_secs(30));
            }
            _ => assert!(
                close_to(not_before, at, Duration::from_secs(1)),
                "{p}: {n:?}"
            ),
        }
        assert!(close_to(
            n.seen_at,
            SystemTime::now(),
            Duration::from_secs(6)
        ));

        quiet(
            &mut rx,
            Duration::from_millis(2500),
            p,
            "the same notice is not repeated",
        )
        .await;

        fake.clear();
        let id = next_cancel(&mut rx, Duration::from_secs(10), p, "the withdrawal").await;
        assert_eq!(id, n.id, "{p}");
        quiet(
            &mut rx,
            Duration::from_millis(1200),
            p,
            "one cancellation only",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn maintenance_and_advisory_are_classified() {
    for_each_provider(|p| async move {
        let fake = FakeMetadata::start(p).await;
        let mut rx = watch(config(p, &fake));

        let at = SystemTime::now() + Duration::from_secs(900);
        fake.maintenance(at);
        let m = next_notice(&mut rx, Duration::from_secs(10), p, "the maintenance").await;
        assert_eq!(m.kind, NoticeKind::Maintenance, "{p}: {m:?}");
        match p {
            Provider::Aws => {
                assert!(m.id.starts_with("instance-event-"), "{m:?}");
                assert!(m.detail.contains("system-reboot"), "{m:?}");
                assert!(close_to(
                    m.not_before.expect("NotBefore"),
                    at,
                    Duration::from_secs(1)
                ));
            }
            Provider::Gcp => {
                assert_eq!(m.id, "maintenance:TERMINATE_ON_HOST_MAINTENANCE");
                assert_eq!(m.not_before, None);
            }
            Provider::Azure => {
                assert!(m.detail.starts_with("Reboot"), "{m:?}");
                assert!(close_to(
                    m.not_before.expect("NotBefore"),
                    at,
                    Duration::from_secs(1)
                ));
            }
        }

        fake.advisory();
        let mut advisory = None;
        let mut cancelled = Vec::new();
        // GCP has one maintenance-event key: the advisory replaces the maintenance.
        let expected_updates = if p == Provider::Gcp { 2 } else { 1 };
        for _ in 0..expected_updates {
            match next(&mut rx, Duration::from_secs(10), p, "the advisory").await {
                Update::Notice(n) => advisory = Some(n),
                Update::Cancelled { id } => cancelled.push(id),
            }
        }
        let a = advisory.expect("an advisory notice");
        assert_eq!(a.kind, NoticeKind::Advisory, "{p}: {a:?}");
        match p {
            Provider::Aws => assert!(a.id.starts_with("rebalance@"), "{a:?}"),
            Provider::Gcp => {
                assert_eq!(a.id, "maintenance:MIGRATE_ON_HOST_MAINTENANCE");
                assert_eq!(cancelled, std::slice::from_ref(&m.id));
            }
            Provider::Azure => assert!(a.detail.starts_with("Freeze"), "{a:?}"),
        }

        fake.clear();
        let mut gone = Vec::new();
        let still_listed = if p == Provider::Gcp { 1 } else { 2 };
        for _ in 0..still_listed {
            gone.push(next_cancel(&mut rx, Duration::from_secs(10), p, "the withdrawal").await);
        }
        gone.sort();
        let mut want = if p == Provider::Gcp {
            vec![a.id.clone()]
        } else {
            vec![a.id.clone(), m.id.clone()]
        };
        want.sort();
        assert_eq!(gone, want, "{p}");
    })
    .await;
}

#[tokio::test]
async fn faults_are_survived_and_the_watch_recovers() {
    for_each_provider(|p| async move {
        let fake = FakeMetadata::start(p).await;
        let mut cfg = config(p, &fake);
        // Short poll and timeout keep the test fast; GCP's hanging GETs last 1 s at this poll.
        cfg.poll = Duration::from_millis(100);
        cfg.timeout = Duration::from_millis(400);
        let mut rx = watch(cfg);
        tokio::time::sleep(Duration::from_millis(300)).await;

        for fault in [Fault::Garbage, Fault::Error500, Fault::Hang] {
            fake.fault(Some(fault));
            let seen_before = fake.requests().len();
            quiet(
                &mut rx,
                Duration::from_millis(1800),
                p,
                "a faulty service announces nothing",
            )
            .await;
            assert!(
                fake.requests().len() > seen_before,
                "{p}: the watcher kept asking during {fault:?}"
            );
            fake.fault(None);

            fake.reclaim(SystemTime::now() + Duration::from_secs(60));
            let what = format!("the reclaim after {fault:?}");
            let n = next_notice(&mut rx, Duration::from_secs(8), p, &what).await;
            assert_eq!(n.kind, NoticeKind::Reclaim, "{p}");
            fake.clear();
            let what = format!("the withdrawal after {fault:?}");
            assert_eq!(
                next_cancel(&mut rx, Duration::from_secs(8), p, &what).await,
                n.id
            );
        }
    })
    .await;
}

#[tokio::test]
async fn requests_follow_each_protocol() {
    for_each_provider(|p| async move {
        let fake = FakeMetadata::start(p).await;
        let mut rx = watch(config(p, &fake));
        quiet(&mut rx, Duration::from_millis(1200), p, "nothing yet").await;
        fake.reclaim(SystemTime::now() + Duration::from_secs(60));
        next_notice(&mut rx, Duration::from_secs(10), p, "the reclaim").await;
        let requests = fake.requests();
        assert!(!requests.is_empty());
        let has = |headers: &[String], h: &str| headers.iter().any(|x| x == h);
        match p {
            Provider::Aws => {
                let puts: Vec<_> = requests.iter().filter(|r| r.0 == "PUT").collect();
                assert_eq!(puts.len(), 1, "one token, cached: {requests:?}");
                assert_eq!(puts[0].1, "/latest/api/token");
                assert!(has(
                    &puts[0].2,
                    "x-aws-ec2-metadata-token-ttl-seconds: 21600"
                ));
                for (method, path, headers) in requests.iter().filter(|r| r.0 == "GET") {
                    assert!(
                        headers
                            .iter()
                            .any(|h| h.starts_with("x-aws-ec2-metadata-token: ")),
                        "{method} {path} without a token"
                    );
                }
            }
            Provider::Gcp => {
                assert!(
                    requests
                        .iter()
                        .all(|r| has(&r.2, "metadata-flavor: Google"))
                );
                assert!(
                    requests
                        .iter()
                        .any(|r| r.1.contains("wait_for_change=true&last_etag=")),
                    "hanging GETs: {requests:?}"
                );
            }
            Provider::Azure => {
                assert!(requests.iter().all(|r| has(&r.2, "metadata: true")));
                assert!(
                    requests
                        .iter()
                        .any(|r| r.1 == "/metadata/scheduledevents?api-version=2020-07-01")
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn aws_gets_a_new_token_after_401() {
    let p = Provider::Aws;
    let fake = FakeMetadata::start(p).await;
    let mut rx = watch(config(p, &fake));
    quiet(&mut rx, Duration::from_millis(1200), p, "nothing yet").await;
    fake.revoke_tokens();
    fake.reclaim(SystemTime::now() + Duration::from_secs(60));
    let n = next_notice(
        &mut rx,
        Duration::from_secs(10),
        p,
        "the reclaim with a fresh token",
    )
    .await;
    assert_eq!(n.kind, NoticeKind::Reclaim);
    let puts = fake.requests().iter().filter(|r| r.0 == "PUT").count();
    assert_eq!(puts, 2, "one token before the revocation, one after");
}

#[tokio::test]
async fn azure_acknowledge_starts_the_event() {
    let p = Provider::Azure;
    let fake = FakeMetadata::start(p).await;
    let cfg = config(p, &fake);
    let mut rx = watch(cfg.clone());
    fake.reclaim(SystemTime::now() + Duration::from_secs(30));
    let n = next_notice(&mut rx, Duration::from_secs(10), p, "the preemption").await;

    acknowledge(&cfg, &n.id).await.expect("approval accepted");
    assert_eq!(fake.acknowledged(), std::slice::from_ref(&n.id));
    let post = fake
        .requests()
        .into_iter()
        .find(|r| r.0 == "POST")
        .expect("a POST");
    assert_eq!(post.1, "/metadata/scheduledevents?api-version=2020-07-01");
    assert!(post.2.iter().any(|h| h == "metadata: true"), "{post:?}");

    // A started event is over: it leaves the document, and the watch says so.
    let id = next_cancel(
        &mut rx,
        Duration::from_secs(5),
        p,
        "the started event leaving",
    )
    .await;
    assert_eq!(id, n.id);
}

#[tokio::test]
async fn acknowledge_is_a_no_op_elsewhere_and_reports_errors_on_azure() {
    let closed = closed_port_url().await;
    for p in [Provider::Aws, Provider::Gcp] {
        let cfg = WatchConfig::new(p, Some(closed.clone()));
        acknowledge(&cfg, "x").await.expect("no-op");
    }
    let mut cfg = WatchConfig::new(Provider::Azure, Some(closed.clone()));
    cfg.timeout = Duration::from_millis(500);
    let err = acknowledge(&cfg, "E-1").await.expect_err("nothing listens");
    assert!(err.to_string().contains("E-1"), "{err}");

    // Azure answers 200 to a StartRequests for any well-formed id.
    let fake = FakeMetadata::start(Provider::Azure).await;
    let cfg = WatchConfig::new(Provider::Azure, Some(fake.url()));
    acknowledge(&cfg, "unknown-event")
        .await
        .expect("200 for any id");
    assert_eq!(fake.acknowledged(), ["unknown-event"]);
}

#[tokio::test]
async fn watch_stops_when_the_receiver_is_dropped() {
    let fake = FakeMetadata::start(Provider::Azure).await;
    let mut cfg = config(Provider::Azure, &fake);
    cfg.poll = Duration::from_millis(100);
    let rx = watch(cfg);
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(rx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = fake.requests().len();
    assert!(count > 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        fake.requests().len(),
        count,
        "no requests after the receiver is gone"
    );
}

#[tokio::test]
async fn detect_finds_each_fake() {
    let [aws, gcp, azure] = [
        FakeMetadata::start(Provider::Aws).await,
        FakeMetadata::start(Provider::Gcp).await,
        FakeMetadata::start(Provider::Azure).await,
    ];
    for fake in [&aws, &gcp, &azure] {
        let found = detect(Some(&fake.url()), Duration::from_secs(2))
            .await
            .expect("detected");
        assert_eq!(found, fake.provider());
    }
}

async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn detect_fails_clearly_on_a_closed_port() {
    let url = closed_port_url().await;
    let started = Instant::now();
    let err = detect(Some(&url), Duration::from_millis(800))
        .await
        .expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.tried.len(), 3);
    let text = err.to_string();
    eprintln!("{text}");
    for needle in [
        "aws",
        "gcp",
        "azure",
        "/latest/api/token",
        "/computeMetadata/v1/",
        "/metadata/instance",
        &url,
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
}
