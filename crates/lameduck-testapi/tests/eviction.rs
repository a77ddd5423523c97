//! The eviction subresource with PodDisruptionBudgets, through `Api::<Pod>::evict`.

mod common;

use common::{api_error, bounded, client, pod};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams};
use lameduck_testapi::TestApi;
use serde_json::{Value, json};

fn pdb(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
           "metadata": {"name": name}, "spec": spec})
}

/// Three Ready web pods and a budget of `minAvailable: 2`.
async fn setup() -> (TestApi, Api<Pod>, Api<PodDisruptionBudget>) {
    let api = TestApi::start().await;
    for (i, ip) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().enumerate() {
        api.create(pod(&format!("web-{i}"), json!({"app": "web"}), ip));
    }
    api.create(pdb(
        "web",
        json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}),
    ));
    let pods = Api::default_namespaced(client(&api));
    let pdbs = Api::default_namespaced(client(&api));
    (api, pods, pdbs)
}

fn status_numbers(p: &PodDisruptionBudget) -> (i32, i32, i32, i32) {
    let s = p.status.as_ref().expect("status");
    let n = |v: Option<i32>| v.expect("set by the disruption controller");
    (
        n(s.disruptions_allowed),
        n(s.current_healthy),
        n(s.desired_healthy),
        n(s.expected_pods),
    )
}

#[tokio::test]
async fn allowed_then_blocked_by_the_budget() {
    bounded(async {
        let (api, pods, pdbs) = setup().await;
        let budget = pdbs.get("web").await.expect("pdb");
        assert_eq!(status_numbers(&budget), (1, 3, 2, 3));
        assert_eq!(
            budget.status.as_ref().and_then(|s| s.observed_generation),
            Some(1)
        );

        let ok = pods
            .evict("web-0", &EvictParams::default())
            .await
            .expect("first eviction");
        assert!(ok.is_success());
        assert_eq!(ok.code, 201);
        let evicted = pods.get("web-0").await.expect("still terminating");
        assert!(evicted.metadata.deletion_timestamp.is_some());
        assert_eq!(evicted.metadata.deletion_grace_period_seconds, Some(30));
        let target = evicted
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "DisruptionTarget"))
            .expect("DisruptionTarget condition");
        assert_eq!(target.reason.as_deref(), Some("EvictionByEvictionAPI"));
        let budget = pdbs.get("web").await.expect("pdb");
        assert_eq!(status_numbers(&budget), (0, 2, 2, 3));

        let blocked = api_error(pods.evict("web-1", &EvictParams::default()).await);
        assert_eq!(
            (blocked.code, blocked.reason.as_str()),
            (429, "TooManyRequests")
        );
        assert_eq!(
            blocked.message,
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        let cause = &blocked.details.expect("details").causes[0];
        assert_eq!(cause.reason, "DisruptionBudget");
        assert_eq!(
            cause.message,
            "The disruption budget web needs 2 healthy pods and has 2 currently"
        );
        assert!(
            pods.get("web-1")
                .await
                .expect("untouched")
                .metadata
                .deletion_timestamp
                .is_none()
        );

        // A terminating pod may always be evicted.
        pods.evict("web-0", &EvictParams::default())
            .await
            .expect("terminating pod");
        // Once it is gone and a replacement is Ready, the budget allows one again.
        api.remove("v1", "Pod", None, "web-0");
        api.create(pod("web-3", json!({"app": "web"}), "127.0.0.5"));
        assert_eq!(
            status_numbers(&pdbs.get("web").await.expect("pdb")),
            (1, 3, 2, 3)
        );
        pods.evict("web-1", &EvictParams::default())
            .await
            .expect("allowed again");

        let missing = api_error(pods.evict("nope", &EvictParams::default()).await);
        assert_eq!(missing.code, 404);
    })
    .await;
}

#[tokio::test]
async fn two_budgets_are_an_internal_error() {
    bounded(async {
        let (api, pods, _) = setup().await;
        api.create(pdb("also-web", json!({"maxUnavailable": 1, "selector": {}})));
        let err = api_error(pods.evict("web-0", &EvictParams::default()).await);
        assert_eq!(err.code, 500);
        assert_eq!(
            err.message,
            "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
        );
        assert!(pods.get("web-0").await.expect("untouched").metadata.deletion_timestamp.is_none());
    })
    .await;
}

#[tokio::test]
async fn no_budget_pending_pods_and_unhealthy_pods() {
    bounded(async {
        let (api, pods, pdbs) = setup().await;
        // No budget selects it.
        api.create(pod("lonely", json!({"app": "other"}), "127.0.0.9"));
        pods.evict("lonely", &EvictParams::default())
            .await
            .expect("no budget");

        // An unready pod (its readiness gate has no condition) while the budget is met: allowed
        // without using up the budget's one disruption.
        let mut unready = pod("web-unready", json!({"app": "web"}), "127.0.0.6");
        unready["spec"]["readinessGates"] = json!([{"conditionType": "example.com/never"}]);
        api.create(unready);
        assert_eq!(
            status_numbers(&pdbs.get("web").await.expect("pdb")),
            (1, 3, 2, 4)
        );
        pods.evict("web-unready", &EvictParams::default())
            .await
            .expect("unhealthy, budget met");
        assert_eq!(status_numbers(&pdbs.get("web").await.expect("pdb")).0, 1);

        // Use up the budget; now an unready pod is protected too (IfHealthyBudget)…
        pods.evict("web-0", &EvictParams::default())
            .await
            .expect("one disruption");
        pods.evict("web-1", &EvictParams::default())
            .await
            .expect_err("budget used up");
        let mut unready = pod("web-unready-2", json!({"app": "web"}), "127.0.0.7");
        unready["spec"]["readinessGates"] = json!([{"conditionType": "example.com/never"}]);
        api.create(unready);
        api.modify("v1", "Pod", None, "web-2", |p| {
            p["spec"]["readinessGates"] = json!([{"conditionType": "example.com/never"}]);
        });
        assert_eq!(status_numbers(&pdbs.get("web").await.expect("pdb")).1, 1);
        let err = api_error(pods.evict("web-unready-2", &EvictParams::default()).await);
        assert_eq!(err.code, 429);
        // …unless the policy is AlwaysAllow.
        api.modify("policy/v1", "PodDisruptionBudget", None, "web", |b| {
            b["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        });
        pods.evict("web-unready-2", &EvictParams::default())
            .await
            .expect("AlwaysAllow");

        // Pending pods are not protected.
        let mut pending = pod("web-pending", json!({"app": "web"}), "127.0.0.8");
        pending["status"]["phase"] = json!("Pending");
        api.create(pending);
        pods.evict("web-pending", &EvictParams::default())
            .await
            .expect("pending");
    })
    .await;
}

#[tokio::test]
async fn delete_options_are_read_from_the_api_field_only() {
    bounded(async {
        let (api, pods, _) = setup().await;
        // kube's EvictParams serialise as `delete_options`, which the apiserver ignores: the
        // pod's own grace period applies.
        let params = EvictParams {
            delete_options: Some(DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        pods.evict("web-0", &params).await.expect("eviction");
        let p = pods.get("web-0").await.expect("still there");
        assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
        // The dropped field is reported in a Warning header, as the apiserver does.
        let body =
            json!({"metadata": {"name": "web-0"}, "delete_options": {"gracePeriodSeconds": 0}});
        let req = http::Request::post("/api/v1/namespaces/default/pods/web-0/eviction")
            .header("content-type", "application/json")
            .body(kube::client::Body::from(
                serde_json::to_vec(&body).expect("json"),
            ))
            .expect("request");
        let resp = client(&api).send(req).await.expect("eviction");
        assert_eq!(resp.status(), 201);
        let warning = resp
            .headers()
            .get("warning")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(warning, r#"299 - "unknown field \"delete_options\"""#);
        api.remove("v1", "Pod", None, "web-0");
        api.create(pod("web-3", json!({"app": "web"}), "127.0.0.5"));

        // The API's own `deleteOptions` field is honoured.
        let body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                          "metadata": {"name": "web-1", "namespace": "default"},
                          "deleteOptions": {"gracePeriodSeconds": 5}});
        let req = http::Request::post("/api/v1/namespaces/default/pods/web-1/eviction")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request");
        let text = client(&api).request_text(req).await.expect("eviction");
        assert!(text.contains("\"status\":\"Success\""), "{text}");
        let p = pods.get("web-1").await.expect("terminating");
        assert_eq!(p.metadata.deletion_grace_period_seconds, Some(5));

        // A dry run changes nothing.
        api.remove("v1", "Pod", None, "web-1");
        api.create(pod("web-4", json!({"app": "web"}), "127.0.0.6"));
        let body = json!({"metadata": {"name": "web-2"}});
        let req = http::Request::post("/api/v1/namespaces/default/pods/web-2/eviction?dryRun=All")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request");
        client(&api)
            .request_text(req)
            .await
            .expect("dry-run eviction");
        assert!(
            pods.get("web-2")
                .await
                .expect("there")
                .metadata
                .deletion_timestamp
                .is_none()
        );

        // A name that does not match the URL is a bad request.
        let body = json!({"metadata": {"name": "other"}});
        let req = http::Request::post("/api/v1/namespaces/default/pods/web-2/eviction")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request");
        let err = api_error(client(&api).request_text(req).await);
        assert_eq!(err.code, 400);
    })
    .await;
}

#[tokio::test]
async fn max_unavailable_counts_the_controllers_replicas() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-rs", "uid": "rs-uid-1"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}}));
        for (i, ip) in ["127.0.0.2", "127.0.0.3"].iter().enumerate() {
            let mut p = pod(&format!("web-{i}"), json!({"app": "web"}), ip);
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-rs", "uid": "rs-uid-1", "controller": true}]);
            api.create(p);
        }
        api.create(pdb("web", json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}})));
        let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client(&api));
        // Expected 3 (the ReplicaSet's replicas), 2 healthy, 2 desired: nothing may go.
        assert_eq!(status_numbers(&pdbs.get("web").await.expect("pdb")), (0, 2, 2, 3));
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        assert_eq!(api_error(pods.evict("web-0", &EvictParams::default()).await).code, 429);
    })
    .await;
}
