//! CRUD, errors, selectors, patches, deletes, fault injection and discovery through a real
//! `kube` client.

mod common;

use std::time::{Duration, Instant};

use common::{api_error, bounded, client, pod};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use lameduck_testapi::TestApi;
use serde_json::json;

#[tokio::test]
async fn create_get_replace_conflict_and_not_found() {
    bounded(async {
        let api = TestApi::start().await;
        let leases: Api<Lease> = Api::default_namespaced(client(&api));
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
        }))
        .expect("a lease");
        let created = leases
            .create(&PostParams::default(), &lease)
            .await
            .expect("create");
        let rv = created
            .metadata
            .resource_version
            .clone()
            .expect("a resourceVersion");
        assert!(created.metadata.uid.is_some());
        assert!(created.metadata.creation_timestamp.is_some());
        assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(created.metadata.generation, Some(1));

        let again = api_error(leases.create(&PostParams::default(), &lease).await);
        assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(
            again.message,
            "leases.coordination.k8s.io \"leader\" already exists"
        );

        let mut changed = created.clone();
        changed.spec.as_mut().expect("spec").holder_identity = Some("b".into());
        let replaced = leases
            .replace("leader", &PostParams::default(), &changed)
            .await
            .expect("replace");
        assert_ne!(
            replaced.metadata.resource_version.as_deref(),
            Some(rv.as_str())
        );
        assert_eq!(replaced.metadata.generation, Some(2));

        // `changed` still carries the old resourceVersion: a stale write.
        let stale = api_error(
            leases
                .replace("leader", &PostParams::default(), &changed)
                .await,
        );
        assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
        assert!(
            stale.message.contains("the object has been modified"),
            "{}",
            stale.message
        );

        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let missing = api_error(pods.get("nope").await);
        assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
        assert_eq!(missing.message, "pods \"nope\" not found");
        let details = missing.details.expect("details");
        assert_eq!(
            (details.name.as_str(), details.kind.as_str()),
            ("nope", "pods")
        );
        assert!(pods.get_opt("nope").await.expect("get_opt").is_none());
        let put_missing = api_error(
            leases
                .replace("ghost", &PostParams::default(), &{
                    let mut l = lease.clone();
                    l.metadata.name = Some("ghost".into());
                    l
                })
                .await,
        );
        assert_eq!(put_missing.code, 404);

        // generateName.
        let generated: Lease =
            serde_json::from_value(json!({"metadata": {"generateName": "lock-"}})).expect("lease");
        let made = leases
            .create(&PostParams::default(), &generated)
            .await
            .expect("create");
        let name = made.metadata.name.expect("a name");
        assert!(name.starts_with("lock-") && name.len() == 10, "{name}");

        // The helpers see what the API stored.
        let stored = api
            .get("coordination.k8s.io/v1", "Lease", Some("default"), "leader")
            .expect("stored");
        assert_eq!(stored["spec"]["holderIdentity"], "b");
        assert_eq!(api.list("coordination.k8s.io/v1", "Lease", None).len(), 2);
    })
    .await;
}

#[tokio::test]
async fn client_from_a_written_kubeconfig() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
        let dir = std::env::temp_dir().join(format!("lameduck-testapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kubeconfig");
        api.write_kubeconfig(&path).expect("write the kubeconfig");
        let kubeconfig = Kubeconfig::read_from(&path).expect("read the kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("a config");
        assert_eq!(config.default_namespace, "default");
        let client = kube::Client::try_from(config).expect("a client");
        let nodes: Api<Node> = Api::all(client.clone());
        let list = nodes
            .list(&ListParams::default())
            .await
            .expect("list nodes");
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].metadata.name.as_deref(), Some("node-a"));
        assert!(list.metadata.resource_version.is_some());
        let version = client.apiserver_version().await.expect("version");
        assert_eq!(version.major, "1");
        assert!(
            api.requests()
                .iter()
                .any(|(m, p)| m == "GET" && p.starts_with("/api/v1/nodes")),
            "{:?}",
            api.requests()
        );
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(pod(
            "web-0",
            json!({"app": "web", "tier": "front"}),
            "127.0.0.2",
        ));
        api.create(pod(
            "web-1",
            json!({"app": "web", "tier": "back"}),
            "127.0.0.3",
        ));
        let mut db = pod("db-0", json!({"app": "db"}), "127.0.0.4");
        db["spec"]["nodeName"] = json!("node-b");
        db["status"]["phase"] = json!("Pending");
        api.create(db);
        let mut other = pod("web-x", json!({"app": "web"}), "127.0.0.5");
        other["metadata"]["namespace"] = json!("other");
        api.create(other);

        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let names = |l: kube::core::ObjectList<Pod>| -> Vec<String> {
            l.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        };
        let cases = [
            ("app=web", vec!["web-0", "web-1"]),
            ("app==web,tier=front", vec!["web-0"]),
            ("app!=web", vec!["db-0"]),
            ("tier in (back, middle)", vec!["web-1"]),
            ("tier notin (back)", vec!["db-0", "web-0"]),
            ("tier", vec!["web-0", "web-1"]),
            ("!tier", vec!["db-0"]),
        ];
        for (sel, want) in cases {
            let got = names(
                pods.list(&ListParams::default().labels(sel))
                    .await
                    .expect(sel),
            );
            assert_eq!(got, want, "labelSelector {sel}");
        }
        let fields = [
            ("spec.nodeName=node-b", vec!["db-0"]),
            ("status.phase=Running", vec!["web-0", "web-1"]),
            ("metadata.name!=web-0,status.phase==Running", vec!["web-1"]),
        ];
        for (sel, want) in fields {
            let got = names(
                pods.list(&ListParams::default().fields(sel))
                    .await
                    .expect(sel),
            );
            assert_eq!(got, want, "fieldSelector {sel}");
        }
        let all: Api<Pod> = Api::all(client(&api));
        assert_eq!(
            all.list(&ListParams::default().labels("app=web"))
                .await
                .expect("all")
                .items
                .len(),
            3
        );

        let bad = api_error(
            pods.list(&ListParams::default().fields("spec.bogus=1"))
                .await,
        );
        assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
        assert_eq!(bad.message, "field label not supported: spec.bogus");
        let bad = api_error(
            pods.list(&ListParams::default().labels("app in (web"))
                .await,
        );
        assert_eq!(bad.code, 400);
        // Paging parameters are accepted (and everything comes in one page).
        let paged = pods
            .list(&ListParams::default().limit(1))
            .await
            .expect("limit");
        assert_eq!(paged.items.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn merge_json_strategic_and_apply_patches() {
    bounded(async {
        let api = TestApi::start().await;
        let mut p = pod("web-0", json!({"app": "web"}), "127.0.0.2");
        p["spec"]["readinessGates"] = json!([{"conditionType": "lameduck.dev/drained"}]);
        api.create(p);
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let pp = PatchParams::default();

        let merged = pods
            .patch("web-0", &pp, &Patch::Merge(json!({"metadata": {"labels": {"tier": "front", "app": null}}})))
            .await
            .expect("merge patch");
        let labels = merged.metadata.labels.expect("labels");
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert!(!labels.contains_key("app"));

        let jp: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/labels/tier", "value": "front"},
            {"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}}
        ]))
        .expect("json patch");
        let patched = pods.patch("web-0", &pp, &Patch::<()>::Json(jp)).await.expect("json patch");
        assert_eq!(patched.metadata.annotations.expect("annotations").get("a").map(String::as_str), Some("1"));
        let failing: json_patch::Patch =
            serde_json::from_value(json!([{"op": "test", "path": "/metadata/labels/tier", "value": "back"}]))
                .expect("json patch");
        let err = api_error(pods.patch("web-0", &pp, &Patch::<()>::Json(failing)).await);
        assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));

        // The kubelet part made the pod Ready=False (gate missing); a strategic status patch
        // adds the gate's condition and keeps the others.
        let before = pods.get_status("web-0").await.expect("status");
        let types = |p: &Pod| -> Vec<String> {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|cs| cs.iter().map(|c| c.type_.clone()).collect())
                .unwrap_or_default()
        };
        assert!(types(&before).contains(&"Ready".to_owned()));
        let after = pods
            .patch_status(
                "web-0",
                &pp,
                &Patch::Strategic(json!({"status": {"conditions": [
                    {"type": "lameduck.dev/drained", "status": "True"}]}})),
            )
            .await
            .expect("strategic status patch");
        let t = types(&after);
        assert!(t.contains(&"Ready".to_owned()) && t.contains(&"lameduck.dev/drained".to_owned()), "{t:?}");
        // The readiness controller saw the gate: Ready is now True.
        let now = pods.get("web-0").await.expect("get");
        let ready = now
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
            .expect("Ready");
        assert_eq!(ready.status, "True");

        // A status patch leaves the spec alone, a main-resource patch leaves the status alone.
        let ignored = pods
            .patch_status("web-0", &pp, &Patch::Merge(json!({"spec": {"nodeName": "elsewhere"}})))
            .await
            .expect("status patch");
        assert_eq!(ignored.spec.and_then(|s| s.node_name).as_deref(), Some("node-a"));
        let ignored = pods
            .patch("web-0", &pp, &Patch::Merge(json!({"status": {"podIP": "10.9.9.9"}})))
            .await
            .expect("patch");
        assert_eq!(ignored.status.and_then(|s| s.pod_ip).as_deref(), Some("127.0.0.2"));

        // A resourceVersion in the patch body is a precondition.
        let stale = api_error(
            pods.patch("web-0", &pp, &Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}})))
                .await,
        );
        assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

        // Server-side apply (simplified) creates, then merges.
        let services: Api<Service> = Api::default_namespaced(client(&api));
        let apply = PatchParams::apply("lameduck-test");
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        let made = services.patch("web", &apply, &Patch::Apply(&svc)).await.expect("apply creates");
        assert!(made.metadata.uid.is_some());
        let svc2 = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"l": "1"}}});
        let merged = services.patch("web", &apply, &Patch::Apply(&svc2)).await.expect("apply merges");
        assert_eq!(merged.spec.and_then(|s| s.ports).map(|p| p.len()), Some(1));
        assert!(merged.metadata.labels.is_some());
        let no_manager = api_error(services.patch("web", &pp, &Patch::Apply(&svc2)).await);
        assert_eq!(no_manager.code, 422);

        // Unknown patch types are refused.
        let req = http::Request::patch("/api/v1/namespaces/default/pods/web-0")
            .header("content-type", "text/plain")
            .body(b"{}".to_vec())
            .expect("request");
        let err = api_error(client(&api).request_text(req).await);
        assert_eq!((err.code, err.reason.as_str()), (415, "UnsupportedMediaType"));
    })
    .await;
}

#[tokio::test]
async fn graceful_pod_deletion() {
    bounded(async {
        let api = TestApi::start().await;
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let mut p = pod("web-0", json!({"app": "web"}), "127.0.0.2");
        p["spec"]["terminationGracePeriodSeconds"] = json!(45);
        api.create(p);
        api.create(pod("web-1", json!({"app": "web"}), "127.0.0.3"));
        api.create(pod("web-2", json!({"app": "web"}), "127.0.0.4"));

        // The pod's own grace period.
        let answer = pods.delete("web-0", &DeleteParams::default()).await.expect("delete");
        let terminating = answer.left().expect("a graceful delete answers with the pod");
        let md = &terminating.metadata;
        assert!(md.deletion_timestamp.is_some());
        assert_eq!(md.deletion_grace_period_seconds, Some(45));
        assert!(pods.get("web-0").await.is_ok(), "still there while terminating");
        // Deleting again without a shorter grace changes nothing.
        let again = pods.delete("web-0", &DeleteParams::default()).await.expect("delete again");
        assert_eq!(again.left().and_then(|p| p.metadata.deletion_grace_period_seconds), Some(45));
        // Grace 0 removes it.
        let gone = pods
            .delete("web-0", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .expect("force delete");
        assert!(gone.is_left());
        assert!(pods.get_opt("web-0").await.expect("get_opt").is_none());

        // An explicit grace period; the pod goes when it ends.
        let started = Instant::now();
        let answer = pods
            .delete("web-1", &DeleteParams { grace_period_seconds: Some(1), ..Default::default() })
            .await
            .expect("delete");
        assert_eq!(answer.left().and_then(|p| p.metadata.deletion_grace_period_seconds), Some(1));
        common::eventually("the grace period to end", Duration::from_secs(5), || {
            api.get("v1", "Pod", None, "web-1").is_none()
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(900));

        // Preconditions.
        let wrong = api_error(
            pods.delete(
                "web-2",
                &DeleteParams {
                    preconditions: Some(kube::api::Preconditions { uid: Some("nope".into()), resource_version: None }),
                    ..Default::default()
                },
            )
            .await,
        );
        assert_eq!(wrong.code, 409);

        // An unscheduled pod is deleted at once, like the apiserver does.
        let mut pending = pod("pending", json!({}), "127.0.0.5");
        pending["spec"]["nodeName"] = serde_json::Value::Null;
        api.create(pending);
        pods.delete("pending", &DeleteParams::default()).await.expect("delete");
        assert!(api.get("v1", "Pod", None, "pending").is_none());

        // Other kinds go at once, answering with a Success status.
        let leases: Api<Lease> = Api::default_namespaced(client(&api));
        api.create(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}}));
        let answer = leases.delete("l", &DeleteParams::default()).await.expect("delete lease");
        assert!(answer.right().is_some_and(|s| s.is_success()));
        assert!(api.remove("v1", "Pod", None, "web-2"));
        assert!(!api.remove("v1", "Pod", None, "web-2"));
    })
    .await;
}

#[tokio::test]
async fn injected_failures_and_delay() {
    bounded(async {
        let api = TestApi::start().await;
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        for (code, reason) in [
            (503, "ServiceUnavailable"),
            (403, "Forbidden"),
            (500, "InternalError"),
        ] {
            api.fail_with(Some(code));
            let err = api_error(pods.list(&ListParams::default()).await);
            assert_eq!((err.code, err.reason.as_str()), (code, reason));
        }
        api.fail_with(None);
        pods.list(&ListParams::default())
            .await
            .expect("works again");

        api.delay(Duration::from_millis(300));
        let started = Instant::now();
        pods.list(&ListParams::default()).await.expect("slow list");
        assert!(started.elapsed() >= Duration::from_millis(300));
        api.delay(Duration::ZERO);
        assert_eq!(api.requests().len(), 5);

        // kube's default client retries 503 on its own: a short outage is invisible to it.
        let retrying: Api<Pod> = Api::default_namespaced(common::default_client(&api));
        api.fail_with(Some(503));
        let lp = ListParams::default();
        let (listed, ()) = tokio::join!(retrying.list(&lp), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            api.fail_with(None);
        });
        listed.expect("the retry layer got through");
        let attempts = api.requests().len() - 5;
        assert!(attempts >= 2, "{attempts} attempts");
    })
    .await;
}

#[tokio::test]
async fn discovery_and_scale() {
    bounded(async {
        let api = TestApi::start().await;
        let discovery = kube::Discovery::new(client(&api)).run().await.expect("discovery");
        let (pods, caps) = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.kind == "Pod")
            .expect("pods are discovered");
        assert_eq!(pods.plural, "pods");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        assert!(caps.subresources.iter().any(|(r, _)| r.plural == "eviction"));
        assert!(discovery.has_group("policy"));
        assert!(discovery.has_group("discovery.k8s.io"));

        use k8s_openapi::api::apps::v1::Deployment;
        api.create(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}}));
        let deployments: Api<Deployment> = Api::default_namespaced(client(&api));
        let scale = deployments.get_scale("web").await.expect("scale");
        assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
        assert_eq!(scale.status.and_then(|s| s.selector).as_deref(), Some("app=web"));
        let scaled = deployments
            .patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}})))
            .await
            .expect("patch scale");
        assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
        let stored = api.get("apps/v1", "Deployment", None, "web").expect("stored");
        assert_eq!(stored["spec"]["replicas"], 5);
        assert_eq!(stored["metadata"]["generation"], 2);
    })
    .await;
}
