//! `lameduck drain` against the test API server: blockers are found before anything changes;
//! an unblocked node is cordoned and its pods leave through the Eviction API.

use std::sync::Arc;

use lameduck_testapi::TestApi;
use serde_json::{Value, json};

use crate::cluster::kubeconfig;
use crate::support::bin;

fn nodes(api: &TestApi) {
    for n in ["n1", "n2"] {
        api.create(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}, "spec": {}}),
        );
    }
}

fn pod(api: &TestApi, name: &str, labels: Value, owner: Option<(&str, &str)>) {
    let mut meta = json!({"name": name, "namespace": "ml", "labels": labels});
    if let Some((kind, owner)) = owner {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": format!("{owner}-uid"), "controller": true}]);
    }
    api.create(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "127.0.0.60"}
    }));
}

async fn drain(api: &TestApi, tag: &str, args: &[&str]) -> (i32, String) {
    let config = kubeconfig(api, tag);
    let mut all = vec![
        "drain".to_owned(),
        "--kubeconfig".to_owned(),
        config.display().to_string(),
    ];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .args(&all)
            .output()
            .expect("drain runs")
    })
    .await
    .expect("join");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn writes(api: &TestApi) -> Vec<(String, String)> {
    api.requests()
        .into_iter()
        .filter(|(m, _)| m != "GET")
        .collect()
}

/// A budget that can never allow an eviction, a do-not-disrupt pod and a bare pod: all named
/// with the arithmetic and the fix, exit status 3, and not one write reaches the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blockers_are_named_before_anything_changes() {
    let api = TestApi::start().await;
    nodes(&api);
    pod(
        &api,
        "llm-a",
        json!({"app": "llm"}),
        Some(("ReplicaSet", "llm-rs")),
    );
    pod(
        &api,
        "llm-b",
        json!({"app": "llm"}),
        Some(("ReplicaSet", "llm-rs")),
    );
    api.create(
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "llm", "namespace": "ml"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "llm"}}}}),
    );
    pod(&api, "bare", json!({"app": "bare"}), None);
    let before = writes(&api).len();
    for args in [&["n1", "--dry-run"][..], &["n1"][..]] {
        let (code, out) = drain(&api, "blocked", args).await;
        assert_eq!(code, 3, "{out}");
        assert!(
            out.contains("PodDisruptionBudget/ml/llm") && out.contains("maxUnavailable: 0"),
            "{out}"
        );
        assert!(
            out.contains("no controller owns it") && out.contains("--force"),
            "{out}"
        );
        assert!(out.contains("Nothing was changed"), "{out}");
        eprintln!("{out}");
    }
    assert_eq!(writes(&api).len(), before, "{:?}", writes(&api));
    let node = api.get("v1", "Node", None, "n1").expect("node");
    assert!(node["spec"]["unschedulable"].is_null(), "{node}");
    // JSON: the plan as one object.
    let (code, out) = drain(
        &api,
        "blocked-json",
        &["n1", "--dry-run", "--format", "json"],
    )
    .await;
    assert_eq!(code, 3);
    let plan: Value =
        serde_json::from_str(out.lines().next().unwrap_or_default()).expect("json plan");
    assert_eq!(plan["node"], "n1");
    assert!(
        plan["blockers"].as_array().is_some_and(|b| b.len() >= 3),
        "{plan}"
    );
}

/// A node without blockers: cordoned, the ReplicaSet's and StatefulSet's pods evicted and gone,
/// the DaemonSet's left (with --ignore-daemonsets); exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unblocked_node_is_cordoned_and_emptied() {
    let api = TestApi::start().await;
    nodes(&api);
    pod(
        &api,
        "web-a",
        json!({"app": "web"}),
        Some(("ReplicaSet", "web-rs")),
    );
    pod(
        &api,
        "db-0",
        json!({"app": "db"}),
        Some(("StatefulSet", "db")),
    );
    pod(
        &api,
        "logs-x",
        json!({"app": "logs"}),
        Some(("DaemonSet", "logs")),
    );
    pod(&api, "scratch", json!({"app": "scratch"}), None);
    api.create(
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": "ml"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
    );
    let (code, out) = drain(
        &api,
        "ok",
        &["n1", "--ignore-daemonsets", "--force", "--timeout", "30s"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ml/web-a: evicted") && out.contains("ml/db-0: gone"),
        "{out}"
    );
    let node = api.get("v1", "Node", None, "n1").expect("node");
    assert_eq!(node["spec"]["unschedulable"], true);
    assert!(api.get("v1", "Pod", Some("ml"), "web-a").is_none());
    assert!(api.get("v1", "Pod", Some("ml"), "db-0").is_none());
    assert!(
        api.get("v1", "Pod", Some("ml"), "scratch").is_none(),
        "the bare pod, with --force"
    );
    assert!(api.get("v1", "Pod", Some("ml"), "logs-x").is_some());
    let evictions = api
        .requests()
        .iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/eviction"))
        .count();
    assert_eq!(evictions, 3);
}

/// Assigns the pods a controller creates to a node and an address, as a scheduler and a
/// kubelet would, each 300 ms after it appeared (a cold start): the first `first` to n1, the
/// rest to n2.
fn scheduler(api: &Arc<TestApi>, first: usize) -> tokio::task::JoinHandle<()> {
    let api = api.clone();
    tokio::spawn(async move {
        let mut placed = 0usize;
        let mut seen: std::collections::HashMap<String, std::time::Instant> = Default::default();
        loop {
            for p in api.list("v1", "Pod", Some("ml")) {
                if p["spec"]["nodeName"].is_string() {
                    continue;
                }
                let name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let since = *seen
                    .entry(name.clone())
                    .or_insert_with(std::time::Instant::now);
                if since.elapsed() < std::time::Duration::from_millis(300) {
                    continue;
                }
                let node = if placed < first { "n1" } else { "n2" };
                let ip = format!("127.0.0.{}", 70 + placed);
                placed += 1;
                api.modify("v1", "Pod", Some("ml"), &name, |p| {
                    p["spec"]["nodeName"] = json!(node);
                    p["status"]["phase"] = json!("Running");
                    p["status"]["podIP"] = json!(ip);
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
}

/// The Deployment is back at its own two replicas, with no surge recorded.
#[track_caller]
fn assert_restored(api: &TestApi) {
    let d = api
        .get("apps/v1", "Deployment", Some("ml"), "web")
        .expect("deployment");
    assert_eq!(d["spec"]["replicas"], 2, "{d}");
    assert!(
        d["metadata"]["annotations"]["lameduck.io/drain-surge"].is_null(),
        "{d}"
    );
}

fn ready_web(api: &TestApi) -> Vec<(String, String)> {
    api.list("v1", "Pod", Some("ml"))
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Surge first: the Deployment is scaled up, its replacements become Ready on n2, and only then
/// are n1's pods removed (by the ReplicaSet, through their graceful path). Ready capacity never
/// drops below the starting count, and the Deployment ends at its own replica count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_first_keeps_ready_capacity() {
    let least = capacity_through_a_drain(&[], false).await;
    assert!(least >= 2, "Ready capacity dipped to {least}");
}

/// When a HorizontalPodAutoscaler owns the Deployment's count, the surge raises its
/// minReplicas too (or it would scale the surge away), and puts its bounds back after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_owned_deployment_surges_through_its_min_replicas() {
    let least = capacity_through_a_drain(&[], true).await;
    assert!(least >= 2, "Ready capacity dipped to {least}");
}

/// The same node drained evict-first (`--no-surge`, what `kubectl drain` does): capacity dips
/// while the replacements start — the comparison the surge exists for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evict_first_dips_ready_capacity() {
    let least = capacity_through_a_drain(&["--no-surge"], false).await;
    assert!(least < 2, "evict-first kept {least} Ready");
}

/// Drains n1 of a two-replica Deployment (scaled by an HPA with `hpa`) with `extra` flags;
/// returns the least Ready capacity seen meanwhile, after checking the end state.
async fn capacity_through_a_drain(extra: &[&str], hpa: bool) -> usize {
    let surge = extra.is_empty();
    let api = Arc::new(TestApi::start().await);
    nodes(&api);
    let placer = scheduler(&api, 2);
    api.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ml"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "x"}]}}}
    }));
    let t0 = std::time::Instant::now();
    while ready_web(&api).len() < 2 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            api.list("v1", "Pod", Some("ml"))
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if hpa {
        api.create(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "ml"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 2, "maxReplicas": 3}
        }));
    }
    let before: Vec<String> = ready_web(&api).into_iter().map(|(n, _)| n).collect();
    // The least Ready capacity seen while the drain runs.
    let least = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let watcher = {
        let api = api.clone();
        let least = least.clone();
        tokio::spawn(async move {
            loop {
                least.fetch_min(ready_web(&api).len(), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    let mut args = vec!["n1", "--timeout", "60s", "--surge-timeout", "30s"];
    args.extend_from_slice(extra);
    let (code, out) = drain(&api, if surge { "surge" } else { "evict" }, &args).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.contains("surging 2 → 4 replicas"), surge, "{out}");
    let now = ready_web(&api);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.iter()
            .all(|(n, node)| node == "n2" && !before.contains(n)),
        "{now:?}"
    );
    assert_restored(&api);
    if hpa {
        assert!(out.contains("minReplicas raised to 4"), "{out}");
        let h = api
            .get(
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                Some("ml"),
                "web",
            )
            .expect("hpa");
        assert_eq!(
            (&h["spec"]["minReplicas"], &h["spec"]["maxReplicas"]),
            (&json!(2), &json!(3)),
            "{h}"
        );
        let patched = api
            .requests()
            .iter()
            .filter(|(m, p)| m == "PATCH" && p.contains("/horizontalpodautoscalers/web"))
            .count();
        assert!(patched >= 2, "raised, then put back: {patched}");
    }
    // Surging, the old pods leave through a graceful delete by the ReplicaSet, never an
    // eviction.
    let evicted = api
        .requests()
        .iter()
        .any(|(m, p)| m == "POST" && p.ends_with("/eviction"));
    assert_eq!(evicted, !surge);
    watcher.abort();
    placer.abort();
    let least = least.load(std::sync::atomic::Ordering::SeqCst);
    assert!(least != usize::MAX, "never sampled");
    least
}

/// A surge a crashed run left behind is undone by the next run, before anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_surge_is_undone_by_the_next_run() {
    let api = Arc::new(TestApi::start().await);
    nodes(&api);
    let placer = scheduler(&api, 0);
    api.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ml",
                     "annotations": {"lameduck.io/drain-surge": "{\"node\":\"n1\",\"replicas\":2,\"added\":1}"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "x"}]}}}
    }));
    let (code, out) = drain(&api, "recover", &["n1", "--timeout", "20s"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("an earlier run's surge undone: ml/web back to 2 replicas"),
        "{out}"
    );
    assert_restored(&api);
    placer.abort();
}

/// Ctrl-C while the surge waits for replacements: the Deployment goes back to its own count,
/// its record is removed, the exit status is 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_surge_is_restored() {
    // The replacements never start: the drain is still waiting when Ctrl-C comes.
    let (code, lines) = interrupted_at("surging 2 → 4", false).await;
    assert_eq!(code, Some(130), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("interrupted: ml/web restored to 2 replicas")),
        "{lines:#?}"
    );
}

/// Ctrl-C at the other steps — right after the cordon, once the replacements are Ready (while
/// this node's pods are marked and the count goes back), and while the pods leave — leaves the
/// Deployment at its own count with no record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_drain_restores_at_every_step() {
    for step in [
        "n1: cordoned",
        "Ready on other nodes after",
        "back to 2 replicas",
    ] {
        let (code, lines) = interrupted_at(step, true).await;
        eprintln!("Ctrl-C at {step:?}: exit {code:?}");
        // Late steps may finish before the signal lands; either way nothing stays changed.
        assert!(matches!(code, Some(130 | 0)), "{step}: {lines:#?}");
    }
}

/// Runs `lameduck drain n1` on a two-replica Deployment and sends SIGINT when a line contains
/// `trigger`; checks that the Deployment is restored; returns the exit status and the output.
/// `placing`: the scheduler keeps starting pods (else the replacements never start).
async fn interrupted_at(trigger: &'static str, placing: bool) -> (Option<i32>, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let api = Arc::new(TestApi::start().await);
    nodes(&api);
    let placer = scheduler(&api, 2);
    api.create(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ml"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}, "annotations": {}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "x"}]}}}
    }));
    let t0 = std::time::Instant::now();
    while ready_web(&api).len() < 2 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if !placing {
        placer.abort();
    }
    let config = kubeconfig(&api, "interrupt");
    let mut child = std::process::Command::new(bin())
        .args(["drain", "n1", "--kubeconfig"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("drain runs");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    let seen = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let hit = line.contains(trigger);
            lines.push(line);
            if hit {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
        }
        lines
    });
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    let lines = seen.await.expect("lines");
    placer.abort();
    assert!(
        lines.iter().any(|l| l.contains(trigger)),
        "{trigger} never came: {lines:#?}"
    );
    assert_restored(&api);
    (status.code(), lines)
}

/// `--wait-for-blockers`: nothing changes while a blocker stands; once it is gone the drain
/// goes on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_can_wait_for_its_blockers() {
    let api = Arc::new(TestApi::start().await);
    nodes(&api);
    pod(
        &api,
        "web-a",
        json!({"app": "web"}),
        Some(("ReplicaSet", "web-rs")),
    );
    api.modify("v1", "Pod", Some("ml"), "web-a", |p| {
        p["metadata"]["annotations"] = json!({"karpenter.sh/do-not-disrupt": "true"});
    });
    let run = {
        let api = api.clone();
        tokio::spawn(async move {
            drain(
                &api,
                "wait",
                &["n1", "--wait-for-blockers", "--timeout", "30s"],
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(writes(&api).is_empty(), "{:?}", writes(&api));
    assert!(!run.is_finished(), "it should still be waiting");
    api.modify("v1", "Pod", Some("ml"), "web-a", |p| {
        p["metadata"]["annotations"] = json!({});
    });
    let (code, out) = run.await.expect("join");
    assert_eq!(code, 0, "{out}");
    let blocked = out.find("BLOCKED ml/web-a").expect("the blocker was shown");
    let evicted = out.find("ml/web-a: evicted").expect("then evicted");
    assert!(blocked < evicted, "{out}");
    assert_eq!(
        out.matches("BLOCKED ml/web-a").count(),
        1,
        "shown once while waiting: {out}"
    );
}

/// A gated pod drained for real: while it terminates, the drain's line for it shows its
/// gate's phase and the requests in flight (read from the gate's `/status` through the API
/// server's pod proxy); the summary at the end counts its stream as ended at the deadline,
/// from the gate's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_the_gate_and_the_summary_its_report() {
    use crate::cluster::{KubePod, LONG_STREAMS, PodSetup};
    use crate::support::{StreamEnd, get};
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let api = Arc::new(TestApi::start().await);
    for n in ["node-a", "node-b"] {
        api.create(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}, "spec": {}
        }));
    }
    let config = kubeconfig(&api, "progress");
    let pod = KubePod::start(
        &api,
        &config,
        PodSetup {
            name: "llm-0",
            ip: "127.0.0.51",
            probe_period: 2,
            sim_args: LONG_STREAMS,
            ..PodSetup::default()
        },
    )
    .await;
    let stream = pod.open_stream(100_000);
    pod.wait_streams(1).await;

    let mut child = std::process::Command::new(bin())
        .args([
            "drain",
            "node-a",
            "--force",
            "--timeout",
            "60s",
            "--kubeconfig",
        ])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("drain runs");
    let stdout = child.stdout.take().expect("stdout");
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let seen = |what: &dyn Fn(&str) -> bool| lines.lock().expect("lines").iter().any(|l| what(l));
    let until = |what: &'static str, f: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: {:#?}",
                lines.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Evicted: terminating, and the line shows the gate with its stream.
    until("the pod terminating", &|| {
        api.get("v1", "Pod", Some("default"), "llm-0")
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
    });
    until("the gate's line", &|| {
        seen(&|l| l.starts_with("default/llm-0: terminating · gate") && l.contains("1 in flight"))
    });
    // The kubelet's preStop, with a short deadline: the stream ends with the terminal event.
    get(&pod.admin("/drain?deadline=2s&wait=false"))
        .await
        .expect("drain");
    let end = stream.await.expect("stream task");
    assert!(
        matches!(&end, StreamEnd::TerminalError { done: true, .. }),
        "{end:?}"
    );
    until("the gate's line with nothing in flight", &|| {
        seen(&|l| l.starts_with("default/llm-0: terminating · gate") && l.contains("0 in flight"))
    });
    // The container exits; the kubelet's final delete.
    pod.gate.signal(nix::sys::signal::Signal::SIGTERM);
    api.remove("v1", "Pod", Some("default"), "llm-0");
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    let all = lines.lock().expect("lines").clone();
    // The output, for docs/drain.md.
    eprintln!("{}", all.join("\n"));
    assert_eq!(status.code(), Some(0), "{all:#?}");
    assert!(
        all.iter()
            .any(|l| l.contains("default/llm-0: evicted, gone after")
                && l.contains("its gate: 0 completed, 1 ended at the deadline")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|l| l.contains("pods moved: 1")
                && l.contains("0 completed, 1 ended at the deadline")),
        "{all:#?}"
    );
}
