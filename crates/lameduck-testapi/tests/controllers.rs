//! The controllers: kubelet readiness (gates and probes), EndpointSlices, ReplicaSets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{bounded, client, eventually, pod};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use lameduck_testapi::TestApi;
use serde_json::{Value, json};

const GATE: &str = "lameduck.dev/serving";

fn service(api: &TestApi) {
    api.create(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
    );
}

/// The endpoint conditions (ready, serving, terminating) of one pod in the web slice.
fn conditions(slice: &EndpointSlice, pod: &str) -> Option<(bool, bool, bool)> {
    slice.endpoints.iter().flatten().find_map(|e| {
        let r = e.target_ref.as_ref()?;
        (r.name.as_deref() == Some(pod)).then(|| {
            let c = e.conditions.as_ref();
            let f = |v: Option<bool>| v.unwrap_or(false);
            (
                f(c.and_then(|c| c.ready)),
                f(c.and_then(|c| c.serving)),
                f(c.and_then(|c| c.terminating)),
            )
        })
    })
}

fn slice_conditions(api: &TestApi, pod: &str) -> Option<(bool, bool, bool)> {
    let slices = api.list("discovery.k8s.io/v1", "EndpointSlice", Some("default"));
    let slice: EndpointSlice =
        serde_json::from_value(slices.first()?.clone()).expect("an EndpointSlice");
    conditions(&slice, pod)
}

fn ready_condition(p: &Value) -> Option<&str> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

#[tokio::test]
async fn readiness_gate_false_reaches_the_endpoint_slice_within_a_second() {
    bounded(async {
        let api = TestApi::start().await;
        service(&api);
        let mut p = pod("web-0", json!({"app": "web"}), "127.0.0.2");
        p["spec"]["readinessGates"] = json!([{"conditionType": GATE}]);
        api.create(p);
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let slices: Api<EndpointSlice> = Api::default_namespaced(client(&api));

        // The slice exists and has the controller's shape.
        let list = slices.list(&Default::default()).await.expect("list slices");
        assert_eq!(list.items.len(), 1);
        let slice = &list.items[0];
        let name = slice.metadata.name.as_deref().expect("name");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        let labels = slice.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("kubernetes.io/service-name").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels
                .get("endpointslice.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("endpointslice-controller.k8s.io")
        );
        assert_eq!(slice.address_type, "IPv4");
        let port = &slice.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
        let ep = &slice.endpoints.as_ref().expect("endpoints")[0];
        assert_eq!(ep.addresses, ["127.0.0.2"]);
        assert_eq!(ep.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            ep.target_ref.as_ref().and_then(|r| r.kind.as_deref()),
            Some("Pod")
        );
        // The gate has no condition yet: not ready.
        assert_eq!(conditions(slice, "web-0"), Some((false, false, false)));

        let pp = PatchParams::default();
        let gate = |status: &str| {
            Patch::Strategic(json!({"status": {"conditions": [{"type": GATE, "status": status}]}}))
        };
        pods.patch_status("web-0", &pp, &gate("True"))
            .await
            .expect("gate True");
        assert_eq!(slice_conditions(&api, "web-0"), Some((true, true, false)));

        // Watch the slice like a load balancer would, then turn the gate False.
        let cfg = watcher::Config::default().labels("kubernetes.io/service-name=web");
        let mut seen = watcher::watcher(slices, cfg).applied_objects().boxed();
        loop {
            let s = tokio::time::timeout(Duration::from_secs(5), seen.next())
                .await
                .expect("initial slice")
                .expect("stream")
                .expect("ok");
            if conditions(&s, "web-0") == Some((true, true, false)) {
                break;
            }
        }
        let started = Instant::now();
        pods.patch_status("web-0", &pp, &gate("False"))
            .await
            .expect("gate False");
        loop {
            let s = tokio::time::timeout(Duration::from_secs(5), seen.next())
                .await
                .expect("the slice changes at once, with no probe period")
                .expect("stream")
                .expect("ok");
            if conditions(&s, "web-0").is_some_and(|(ready, _, _)| !ready) {
                break;
            }
        }
        // Typically a few milliseconds (no probe is involved); generous for a loaded machine.
        assert!(started.elapsed() < Duration::from_secs(3));
        let p = api.get("v1", "Pod", None, "web-0").expect("pod");
        assert_eq!(ready_condition(&p), Some("False"));
        let ready = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .expect("Ready");
        assert_eq!(ready["reason"], "ReadinessGatesNotReady");
    })
    .await;
}

#[tokio::test]
async fn a_failing_readiness_probe_takes_about_one_period() {
    bounded(async {
        let api = TestApi::start().await;
        service(&api);
        let healthy = Arc::new(AtomicBool::new(true));
        let port = common::health_server("127.0.0.2", healthy.clone()).await;
        api.create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [{
                "name": "app", "image": "example/app:1",
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                   "periodSeconds": 1, "failureThreshold": 1}}]},
            "status": {"phase": "Running", "podIP": "127.0.0.2",
                       "containerStatuses": [{"name": "app", "image": "example/app:1", "imageID": "",
                                              "ready": false, "restartCount": 0}]},
        }));
        // Not ready until the first probe passes.
        eventually("the first probe to pass", Duration::from_secs(5), || {
            slice_conditions(&api, "web-0") == Some((true, true, false))
        })
        .await;
        let p = api.get("v1", "Pod", None, "web-0").expect("pod");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["containerPort"], port);

        healthy.store(false, Ordering::SeqCst);
        let took = eventually("the probe to fail", Duration::from_secs(5), || {
            slice_conditions(&api, "web-0") == Some((false, false, false))
        })
        .await;
        assert!(took <= Duration::from_secs(5), "took {took:?} for a 1 s period");
        let p = api.get("v1", "Pod", None, "web-0").expect("pod");
        assert_eq!(ready_condition(&p), Some("False"));
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], false);

        healthy.store(true, Ordering::SeqCst);
        eventually("the probe to pass again", Duration::from_secs(5), || {
            slice_conditions(&api, "web-0") == Some((true, true, false))
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_test_can_play_the_kubelet_itself() {
    bounded(async {
        let api = TestApi::start().await;
        service(&api);
        let mut p = pod("web-0", json!({"app": "web"}), "127.0.0.2");
        p["metadata"]["annotations"] = json!({"testapi.lameduck.dev/kubelet": "off"});
        p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        api.create(p);
        assert_eq!(slice_conditions(&api, "web-0"), Some((false, false, false)));
        api.modify("v1", "Pod", None, "web-0", |p| {
            p["status"]["conditions"][0]["status"] = json!("True")
        });
        assert_eq!(slice_conditions(&api, "web-0"), Some((true, true, false)));
        let p = api.get("v1", "Pod", None, "web-0").expect("pod");
        assert_eq!(
            p["status"]["conditions"].as_array().map(Vec::len),
            Some(1),
            "left alone"
        );
    })
    .await;
}

#[tokio::test]
async fn terminating_pods_stay_serving_until_removed() {
    bounded(async {
        let api = TestApi::start().await;
        service(&api);
        api.create(pod("web-0", json!({"app": "web"}), "127.0.0.2"));
        api.create(pod("web-1", json!({"app": "web"}), "127.0.0.3"));
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        assert_eq!(slice_conditions(&api, "web-0"), Some((true, true, false)));
        pods.delete("web-0", &DeleteParams::default())
            .await
            .expect("graceful delete");
        assert_eq!(slice_conditions(&api, "web-0"), Some((false, true, true)));
        assert_eq!(slice_conditions(&api, "web-1"), Some((true, true, false)));
        api.remove("v1", "Pod", None, "web-0");
        assert_eq!(slice_conditions(&api, "web-0"), None);
        assert_eq!(slice_conditions(&api, "web-1"), Some((true, true, false)));
        // Deleting the Service removes its slice.
        api.remove("v1", "Service", None, "web");
        assert!(
            api.list("discovery.k8s.io/v1", "EndpointSlice", None)
                .is_empty()
        );
    })
    .await;
}

fn owned_pod(name: &str, ip: &str, cost: i64) -> Value {
    let mut p = pod(name, json!({"app": "web"}), ip);
    p["metadata"]["annotations"] =
        json!({"controller.kubernetes.io/pod-deletion-cost": cost.to_string()});
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "web-rs", "uid": "rs-uid-1", "controller": true}]);
    p
}

#[tokio::test]
async fn replicaset_scale_down_removes_the_cheapest_pod() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(owned_pod("web-a", "127.0.0.2", 100));
        api.create(owned_pod("web-b", "127.0.0.3", -5));
        api.create(owned_pod("web-c", "127.0.0.4", 10));
        api.create(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-rs", "uid": "rs-uid-1"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}}}));
        let sets: Api<ReplicaSet> = Api::default_namespaced(client(&api));
        let rs = sets.get("web-rs").await.expect("rs");
        let status = rs.status.expect("status");
        assert_eq!((status.replicas, status.ready_replicas), (3, Some(3)));
        assert_eq!(api.list("v1", "Pod", None).len(), 3, "no pods were added");

        sets.patch_scale("web-rs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
            .await
            .expect("scale down");
        let terminating: Vec<String> = api
            .list("v1", "Pod", None)
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(terminating, ["web-b"]);
        let status = sets.get("web-rs").await.expect("rs").status.expect("status");
        assert_eq!((status.replicas, status.ready_replicas), (2, Some(2)));

        // Not ready goes before cheap: make web-c unready, scale to 1.
        api.modify("v1", "Pod", None, "web-c", |p| {
            p["spec"]["readinessGates"] = json!([{"conditionType": "example.com/never"}]);
        });
        sets.patch_scale("web-rs", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}})))
            .await
            .expect("scale down");
        let c = api.get("v1", "Pod", None, "web-c").expect("web-c");
        assert!(!c["metadata"]["deletionTimestamp"].is_null());
        let a = api.get("v1", "Pod", None, "web-a").expect("web-a");
        assert!(a["metadata"]["deletionTimestamp"].is_null());
    })
    .await;
}

#[tokio::test]
async fn replicaset_scale_up_from_the_template() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-rs"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}}}));
        let pods = api.list("v1", "Pod", None);
        assert_eq!(pods.len(), 2);
        for p in &pods {
            assert!(p["metadata"]["name"].as_str().expect("name").starts_with("web-rs-"));
            assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
            assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(p["status"]["phase"], "Pending");
        }
        // Play scheduler and kubelet for one of them.
        let first = pods[0]["metadata"]["name"].as_str().expect("name").to_owned();
        api.modify("v1", "Pod", None, &first, |p| {
            p["spec"]["nodeName"] = json!("node-a");
            p["status"] = json!({"phase": "Running", "podIP": "127.0.0.2"});
        });
        let rs = api.get("apps/v1", "ReplicaSet", None, "web-rs").expect("rs");
        assert_eq!(rs["status"]["replicas"], 2);
        assert_eq!(rs["status"]["readyReplicas"], 1);
        // A deleted pod is replaced.
        api.remove("v1", "Pod", None, &first);
        assert_eq!(api.list("v1", "Pod", None).len(), 2);
        // A template the selector does not match creates nothing (the apiserver would refuse it).
        api.create(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "odd-rs"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "odd"}},
                     "template": {"metadata": {"labels": {"app": "other"}},
                                  "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}}}}));
        assert_eq!(api.list("v1", "Pod", None).len(), 2);
    })
    .await;
}
