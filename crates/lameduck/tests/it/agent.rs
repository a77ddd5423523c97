//! `lameduck agent` against fake metadata servers of the three clouds, the test API server and
//! real gates wrapping engine-sim on their own loopback addresses.

use std::time::{Duration, Instant, SystemTime};

use lameduck_cloud::Provider;
use lameduck_fakecloud::FakeMetadata;
use lameduck_testapi::TestApi;
use serde_json::{Value, json};

use crate::cluster::{KubePod, LONG_STREAMS, PodSetup, kubeconfig, service};
use crate::support::*;

const LONG: Duration = Duration::from_secs(30);

/// The node, a plain pod and a DaemonSet pod on it.
pub(crate) fn node_and_bystanders(api: &TestApi) {
    api.create(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}},
        "spec": {}
    }));
    api.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "terminationGracePeriodSeconds": 30,
                 "containers": [{"name": "web", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.99"}
    }));
    api.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "logs-abcde", "namespace": "default",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "logs", "uid": "ds-uid", "controller": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "fluent", "image": "fluent-bit"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.98"}
    }));
}

/// The `lameduck.io/notice` record an agent leaves on its node: AWS, the node cordoned by it,
/// the instance going `secs` from now.
fn notice_record(id: &str, kind: &str, secs: u64, tainted: bool) -> String {
    let goes_at = SystemTime::now() + Duration::from_secs(secs);
    let unix = goes_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    json!({"id": id, "provider": "aws", "kind": kind,
           "goesAt": unix, "cordoned": true, "tainted": tainted})
    .to_string()
}

/// Starts `lameduck agent` for node-a and waits until it watches.
pub(crate) async fn agent(
    api: &TestApi,
    cloud: &FakeMetadata,
    provider: Provider,
    extra: &[&str],
) -> Proc {
    let config = kubeconfig(api, &format!("agent-{}", provider.name()));
    let config = config.display().to_string();
    let url = cloud.url();
    let mut args = vec![
        "agent",
        "--node",
        "node-a",
        "--provider",
        provider.name(),
        "--metadata-url",
        &url,
        "--kubeconfig",
        &config,
        "--poll",
        "200ms",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let p = Proc::spawn(&args);
    p.wait_for_line("Agent watching for notices", Duration::from_secs(20))
        .await;
    p
}

fn node(api: &TestApi) -> Value {
    api.get("v1", "Node", None, "node-a").expect("node")
}

fn tainted(api: &TestApi) -> bool {
    node(api)["spec"]["taints"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["key"] == "lameduck.io/reclaimed"))
}

fn terminating(api: &TestApi, name: &str) -> bool {
    api.get("v1", "Pod", Some("default"), name)
        .is_none_or(|p| p["metadata"]["deletionTimestamp"].is_string())
}

async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// A reclaim notice mid-load: every gated pod is unready within a second or so, every stream
/// ends either completed or with the terminal event (none cut silently), the node is tainted
/// and cordoned, the pods are removed through the API (the DaemonSet's stays), Events say so.
async fn reclaim_mid_load(
    provider: Provider,
    ips: [&'static str; 2],
    margin: &str,
    notice_in: u64,
) {
    let api = TestApi::start().await;
    service(&api);
    node_and_bystanders(&api);
    let cloud = FakeMetadata::start(provider).await;
    let config = kubeconfig(&api, &format!("pods-{}", provider.name()));
    let mut pods = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let name = format!("llm-{i}");
        let name: &'static str = Box::leak(name.into_boxed_str());
        pods.push(
            KubePod::start(
                &api,
                &config,
                PodSetup {
                    name,
                    ip,
                    kube: false,
                    probe_period: 2,
                    sim_args: LONG_STREAMS,
                    ..PodSetup::default()
                },
            )
            .await,
        );
    }
    let mut agent = agent(&api, &cloud, provider, &["--margin", margin]).await;
    // The idle agent's cost, for docs/agent.md (not asserted: the machine is shared).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        });
    let before = cloud.requests().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_second = (cloud.requests().len() - before) as f64 / 2.0;
    eprintln!(
        "{}: idle agent {rss:?}, {per_second} metadata requests per second",
        provider.name()
    );
    let streams: Vec<_> = pods
        .iter()
        .flat_map(|p| [p.open_stream(100_000), p.open_stream(100_000)])
        .collect();
    for p in &pods {
        p.wait_streams(2).await;
    }
    let t0 = Instant::now();
    cloud.reclaim(SystemTime::now() + Duration::from_secs(notice_in));
    for p in &pods {
        let deadline = Instant::now() + LONG;
        while p.status().await["ready"] == true {
            assert!(
                Instant::now() < deadline,
                "{} never unready:\n{}",
                p.name,
                agent.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let unready = t0.elapsed();
    eprintln!(
        "{}: every gated pod unready {unready:?} after the notice appeared",
        provider.name()
    );
    assert!(unready < Duration::from_secs(3), "{unready:?}");
    for s in streams {
        let end = s.await.expect("stream task");
        assert!(
            matches!(
                &end,
                StreamEnd::Finished { .. } | StreamEnd::TerminalError { done: true, .. }
            ),
            "cut silently: {end:?}"
        );
    }
    let ended = t0.elapsed();
    assert!(
        ended < Duration::from_secs(notice_in + 5),
        "streams ended {ended:?} after the notice"
    );
    until("taint and cordon", LONG, || {
        tainted(&api) && node(&api)["spec"]["unschedulable"] == true
    })
    .await;
    until("gated pods removed", LONG, || {
        terminating(&api, "llm-0") && terminating(&api, "llm-1")
    })
    .await;
    until("plain pod evicted", LONG, || terminating(&api, "web-0")).await;
    assert!(
        !terminating(&api, "logs-abcde"),
        "the DaemonSet's pod must stay"
    );
    until("node Event", LONG, || {
        api.list("v1", "Event", Some("default"))
            .iter()
            .any(|e| e["reason"] == "NodeReclaimed" && e["involvedObject"]["kind"] == "Node")
    })
    .await;
    // The agent read each gate's report: both streams of each pod ended with the terminal
    // event before the instance went.
    until("the gates' reports", LONG, || {
        agent
            .lines()
            .iter()
            .filter(|l| l.contains("Gate's drain report"))
            .count()
            == 2
    })
    .await;
    for l in agent
        .lines()
        .iter()
        .filter(|l| l.contains("Gate's drain report"))
    {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|_| json!({"raw": l}));
        assert!(v["in_time"] == true && v["truncated"] == 2, "{l}");
    }
    if provider == Provider::Azure {
        until("acknowledged", LONG, || !cloud.acknowledged().is_empty()).await;
        // The approved event then starts and leaves the list: that is no withdrawal, the node
        // stays cordoned.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            tainted(&api) && node(&api)["spec"]["unschedulable"] == true,
            "{}",
            agent.lines().join("\n")
        );
    }
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_spot_notice_mid_load() {
    reclaim_mid_load(Provider::Aws, ["127.0.0.31", "127.0.0.32"], "2", 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_preemption_mid_load() {
    // GCP powers the instance off 30 s after the change, but GKE's node shutdown stops the
    // pods after 15 s: with a 10 s margin the gates get 5 s, so every stream has ended well
    // before 12 + 5 s (it would be 20 s if the agent took the whole 30 s).
    reclaim_mid_load(Provider::Gcp, ["127.0.0.33", "127.0.0.34"], "10", 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_preempt_mid_load() {
    reclaim_mid_load(Provider::Azure, ["127.0.0.35", "127.0.0.36"], "2", 8).await;
}

/// A maintenance an hour away only cordons; withdrawn, it uncordons; the gates never drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_maintenance_cordons_and_its_withdrawal_uncordons() {
    let api = TestApi::start().await;
    service(&api);
    node_and_bystanders(&api);
    let cloud = FakeMetadata::start(Provider::Aws).await;
    let config = kubeconfig(&api, "maint");
    let pod = KubePod::start(
        &api,
        &config,
        PodSetup {
            name: "llm-0",
            ip: "127.0.0.37",
            kube: false,
            ..PodSetup::default()
        },
    )
    .await;
    let mut agent = agent(&api, &cloud, Provider::Aws, &[]).await;
    cloud.maintenance(SystemTime::now() + Duration::from_secs(3600));
    until("cordon", LONG, || {
        node(&api)["spec"]["unschedulable"] == true
    })
    .await;
    assert!(!tainted(&api), "a far maintenance does not taint");
    assert_eq!(pod.status().await["phase"], "serving");
    cloud.clear();
    until("uncordon", LONG, || {
        node(&api)["spec"]["unschedulable"] != true
    })
    .await;
    assert!(node(&api)["metadata"]["annotations"]["lameduck.io/notice"].is_null());
    assert_eq!(pod.status().await["phase"], "serving");
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(LONG).await;
}

/// `--dry-run`: a reclaim changes nothing — no write reaches the API server, no gate drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let api = TestApi::start().await;
    service(&api);
    node_and_bystanders(&api);
    let cloud = FakeMetadata::start(Provider::Aws).await;
    let config = kubeconfig(&api, "dry");
    let pod = KubePod::start(
        &api,
        &config,
        PodSetup {
            name: "llm-0",
            ip: "127.0.0.38",
            kube: false,
            ..PodSetup::default()
        },
    )
    .await;
    let before = api.requests().len();
    let mut agent = agent(&api, &cloud, Provider::Aws, &["--dry-run"]).await;
    cloud.reclaim(SystemTime::now() + Duration::from_secs(20));
    agent.wait_for_line("Dry run: nothing changed", LONG).await;
    let writes: Vec<_> = api.requests()[before..]
        .iter()
        .filter(|(m, _)| m != "GET")
        .cloned()
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(pod.status().await["phase"], "serving");
    assert!(!terminating(&api, "llm-0") && !tainted(&api));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(LONG).await;
}

/// An agent that died mid-notice: the notice recorded on the node is finished by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_finishes_the_recorded_notice() {
    let api = TestApi::start().await;
    service(&api);
    node_and_bystanders(&api);
    let record = notice_record("spot:terminate", "reclaim", 10, true);
    api.modify("v1", "Node", None, "node-a", |n| {
        n["metadata"]["annotations"] = json!({"lameduck.io/notice": record});
        n["spec"] = json!({"unschedulable": true, "taints": [{"key": "lameduck.io/reclaimed", "value": "aws", "effect": "NoSchedule"}]});
    });
    let cloud = FakeMetadata::start(Provider::Aws).await;
    let config = kubeconfig(&api, "restart");
    let pod = KubePod::start(
        &api,
        &config,
        PodSetup {
            name: "llm-0",
            ip: "127.0.0.39",
            kube: false,
            ..PodSetup::default()
        },
    )
    .await;
    let mut agent = agent(&api, &cloud, Provider::Aws, &["--margin", "2"]).await;
    let deadline = Instant::now() + LONG;
    while pod.status().await["phase"] == "serving" {
        assert!(Instant::now() < deadline, "{}", agent.lines().join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until("pod removed", LONG, || terminating(&api, "llm-0")).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(LONG).await;
}

/// Faults during a notice: the API server answers 503 to everything, and one "gated" pod's
/// admin port accepts connections but never answers. The real gate still gets its `/drain` at
/// once (the agent knows it from its warm watch), its streams end cleanly, and the agent
/// counts what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gate_and_a_down_api_server_do_not_stop_the_drain() {
    let api = TestApi::start().await;
    service(&api);
    node_and_bystanders(&api);
    // A pod whose gate hangs: its admin address accepts and never reads.
    let silent = tokio::net::TcpListener::bind("127.0.0.40:9901")
        .await
        .expect("bind the silent gate");
    let mut spec = crate::cluster::pod_spec(&PodSetup {
        kube: false,
        ..PodSetup::default()
    });
    spec["nodeName"] = json!("node-a");
    api.create(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "llm-silent", "namespace": "default",
                     "annotations": {"testapi.lameduck.dev/kubelet": "off"}},
        "spec": spec,
        "status": {"phase": "Running", "podIP": "127.0.0.40"}
    }));
    let cloud = FakeMetadata::start(Provider::Aws).await;
    let config = kubeconfig(&api, "faults");
    let pod = KubePod::start(
        &api,
        &config,
        PodSetup {
            name: "llm-0",
            ip: "127.0.0.41",
            kube: false,
            sim_args: LONG_STREAMS,
            ..PodSetup::default()
        },
    )
    .await;
    let mut agent = agent(&api, &cloud, Provider::Aws, &["--margin", "2"]).await;
    let stream = pod.open_stream(100_000);
    pod.wait_streams(1).await;
    // The watch has listed the node's pods; now the API server fails everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.fail_with(Some(503));
    let t0 = Instant::now();
    cloud.reclaim(SystemTime::now() + Duration::from_secs(8));
    let deadline = Instant::now() + LONG;
    while pod.status().await["ready"] == true {
        assert!(Instant::now() < deadline, "{}", agent.lines().join("\n"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unready = t0.elapsed();
    assert!(
        unready < Duration::from_secs(3),
        "the silent gate delayed the other: {unready:?}"
    );
    let end = stream.await.expect("stream task");
    assert!(
        matches!(&end, StreamEnd::TerminalError { done: true, .. }),
        "{end:?}"
    );
    agent
        .wait_for_line(
            "A gate did not accept /drain; its pod is still deleted with the time left",
            LONG,
        )
        .await;
    let lines = agent.json_lines();
    let warned: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Kubernetes API call failed"))
        })
        .collect();
    assert!(!warned.is_empty(), "{}", agent.lines().join("\n"));
    drop(silent);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(LONG).await;
}

/// A restarted agent re-arms a maintenance it had only cordoned for: the drain still starts
/// the lead time before it, not at once and not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_rearms_a_recorded_maintenance() {
    let api = TestApi::start().await;
    service(&api);
    node_and_bystanders(&api);
    let record = notice_record("instance-event-1", "maintenance", 20, false);
    api.modify("v1", "Node", None, "node-a", |n| {
        n["metadata"]["annotations"] = json!({"lameduck.io/notice": record});
        n["spec"] = json!({"unschedulable": true});
    });
    let cloud = FakeMetadata::start(Provider::Aws).await;
    let config = kubeconfig(&api, "rearm");
    let pod = KubePod::start(
        &api,
        &config,
        PodSetup {
            name: "llm-0",
            ip: "127.0.0.42",
            kube: false,
            ..PodSetup::default()
        },
    )
    .await;
    let t0 = Instant::now();
    let mut agent = agent(
        &api,
        &cloud,
        Provider::Aws,
        &["--margin", "2", "--maintenance-lead", "14s"],
    )
    .await;
    // Not at once: the drain is due about 6 s from now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pod.status().await["phase"], "serving");
    let deadline = Instant::now() + LONG;
    while pod.status().await["phase"] == "serving" {
        assert!(Instant::now() < deadline, "{}", agent.lines().join("\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_secs(4),
        "drained after {at:?}, before the lead time"
    );
    until("pod removed", LONG, || terminating(&api, "llm-0")).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit(LONG).await;
}
