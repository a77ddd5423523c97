//! `lameduck drain` against the test API server: blockers are found before anything changes;
//! an unblocked node is cordoned and its pods leave through the Eviction API.

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
    api.create(
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": "ml"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
    );
    let (code, out) = drain(
        &api,
        "ok",
        &["n1", "--ignore-daemonsets", "--timeout", "30s"],
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
    assert!(api.get("v1", "Pod", Some("ml"), "logs-x").is_some());
    let evictions = api
        .requests()
        .iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/eviction"))
        .count();
    assert_eq!(evictions, 2);
}
