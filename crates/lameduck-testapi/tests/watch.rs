//! Watches through kube's raw `Api::watch` and `kube::runtime::watcher`.

mod common;

use std::time::Duration;

use common::{bounded, client, pod};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use lameduck_testapi::TestApi;
use serde_json::json;

const STEP: Duration = Duration::from_secs(5);

async fn next<S, T>(s: &mut S) -> T
where
    S: futures_util::Stream<Item = T> + Unpin,
{
    tokio::time::timeout(STEP, s.next())
        .await
        .expect("an event within the step bound")
        .expect("the stream goes on")
}

fn name(p: &Pod) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

/// Runs the watcher through its initial listing, then a create and a delete.
async fn watcher_sequence(cfg: watcher::Config) {
    let api = TestApi::start().await;
    api.create(pod("a", json!({"app": "web"}), "127.0.0.2"));
    api.create(pod("b", json!({"app": "web"}), "127.0.0.3"));
    api.create(pod("other", json!({"app": "db"}), "127.0.0.4"));
    let pods: Api<Pod> = Api::default_namespaced(client(&api));
    let mut events = watcher::watcher(pods.clone(), cfg.labels("app=web")).boxed();

    assert!(matches!(next(&mut events).await.expect("ok"), Event::Init));
    let mut initial = Vec::new();
    loop {
        match next(&mut events).await.expect("ok") {
            Event::InitApply(p) => initial.push(name(&p).to_owned()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["a", "b"]);

    api.create(pod("c", json!({"app": "web"}), "127.0.0.5"));
    // The kubelet part makes it Ready right after: an Apply for the create, maybe one more.
    match next(&mut events).await.expect("ok") {
        Event::Apply(p) => assert_eq!(name(&p), "c"),
        other => panic!("unexpected {other:?}"),
    }
    api.remove("v1", "Pod", None, "a");
    loop {
        match next(&mut events).await.expect("ok") {
            Event::Apply(p) => assert_eq!(name(&p), "c"),
            Event::Delete(p) => {
                assert_eq!(name(&p), "a");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A label change out of the selection is a Delete for this watcher.
    api.modify("v1", "Pod", None, "b", |p| {
        p["metadata"]["labels"]["app"] = json!("db")
    });
    loop {
        match next(&mut events).await.expect("ok") {
            Event::Delete(p) => {
                assert_eq!(name(&p), "b");
                break;
            }
            Event::Apply(p) => assert_eq!(name(&p), "c"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn watcher_list_then_watch() {
    bounded(watcher_sequence(watcher::Config::default())).await;
}

#[tokio::test]
async fn watcher_streaming_lists() {
    bounded(async {
        watcher_sequence(watcher::Config::default().streaming_lists()).await;
    })
    .await;
}

#[tokio::test]
async fn streaming_list_request_shape() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(pod("a", json!({}), "127.0.0.2"));
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let wp = WatchParams::streaming_lists();
        let mut s = pods.watch(&wp, "0").await.expect("watch").boxed();
        match next(&mut s).await.expect("ok") {
            WatchEvent::Added(p) => assert_eq!(name(&p), "a"),
            other => panic!("unexpected {other:?}"),
        }
        match next(&mut s).await.expect("ok") {
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str),
                    Some("true")
                );
                assert_eq!(b.types.kind, "Pod");
            }
            other => panic!("unexpected {other:?}"),
        }
        // sendInitialEvents without resourceVersionMatch is refused, like the apiserver does.
        let req = http::Request::get(
            "/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
        )
        .body(Vec::new())
        .expect("request");
        let err = common::api_error(client(&api).request_text(req).await);
        assert_eq!(err.code, 422);
    })
    .await;
}

#[tokio::test]
async fn stale_resource_version_gets_410_and_the_watcher_relists() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(pod("a", json!({"app": "web"}), "127.0.0.2"));
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let mut events = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
        assert!(matches!(next(&mut events).await.expect("ok"), Event::Init));
        assert!(matches!(
            next(&mut events).await.expect("ok"),
            Event::InitApply(_)
        ));
        assert!(matches!(
            next(&mut events).await.expect("ok"),
            Event::InitDone
        ));
        // Push the first changes out of the 1000-change history.
        for i in 0..1100 {
            api.modify("v1", "Pod", None, "a", |p| {
                p["metadata"]["annotations"] = json!({"n": i.to_string()})
            });
        }
        let mut s = pods
            .watch(&WatchParams::default(), "1")
            .await
            .expect("watch")
            .boxed();
        match next(&mut s).await.expect("ok") {
            WatchEvent::Error(status) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                assert!(
                    status.message.starts_with("too old resource version: 1 ("),
                    "{}",
                    status.message
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            tokio::time::timeout(STEP, s.next())
                .await
                .expect("ends")
                .is_none()
        );

        // The watcher, which fell behind too, is told so and lists again.
        match next(&mut events).await {
            Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(next(&mut events).await.expect("ok"), Event::Init));
        match next(&mut events).await.expect("ok") {
            Event::InitApply(p) => {
                let ann = p.metadata.annotations.expect("annotations");
                assert_eq!(ann.get("n").map(String::as_str), Some("1099"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            next(&mut events).await.expect("ok"),
            Event::InitDone
        ));

        // A recent resourceVersion is fine.
        let current = api.get("v1", "Pod", None, "a").expect("a")["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_owned();
        let mut s = pods
            .watch(&WatchParams::default(), &current)
            .await
            .expect("watch")
            .boxed();
        api.modify("v1", "Pod", None, "a", |p| {
            p["metadata"]["labels"]["x"] = json!("1")
        });
        match next(&mut s).await.expect("ok") {
            WatchEvent::Modified(p) => assert_eq!(name(&p), "a"),
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn bookmarks_deletes_and_timeouts() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(pod("a", json!({}), "127.0.0.2"));
        let pods: Api<Pod> = Api::default_namespaced(client(&api));
        let list_rv = api.get("v1", "Pod", None, "a").expect("a")["metadata"]["resourceVersion"]
            .as_str()
            .expect("rv")
            .to_owned();
        let mut s = pods
            .watch(&WatchParams::default(), &list_rv)
            .await
            .expect("watch")
            .boxed();
        let mut saw_bookmark = false;
        for _ in 0..5 {
            if let WatchEvent::Bookmark(b) = next(&mut s).await.expect("ok") {
                assert!(
                    b.metadata.resource_version.parse::<u64>().expect("numeric")
                        >= list_rv.parse().expect("n")
                );
                saw_bookmark = true;
                break;
            }
        }
        assert!(saw_bookmark, "a bookmark within a few seconds");

        // A graceful delete is a MODIFIED, the removal a DELETED.
        pods.delete(
            "a",
            &DeleteParams {
                grace_period_seconds: Some(30),
                ..Default::default()
            },
        )
        .await
        .expect("delete");
        let mut saw = Vec::new();
        while saw.last().map(String::as_str) != Some("DELETED") {
            let ev = next(&mut s).await.expect("ok");
            match ev {
                WatchEvent::Modified(p) => {
                    if p.metadata.deletion_timestamp.is_some()
                        && !saw.contains(&"MODIFIED".to_owned())
                    {
                        saw.push("MODIFIED".to_owned());
                        api.remove("v1", "Pod", None, "a");
                    }
                }
                WatchEvent::Deleted(p) => {
                    assert_eq!(name(&p), "a");
                    saw.push("DELETED".to_owned());
                }
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(saw, ["MODIFIED", "DELETED"]);

        // timeoutSeconds ends the stream.
        let wp = WatchParams::default().timeout(1).disable_bookmarks();
        let started = std::time::Instant::now();
        let s = pods.watch(&wp, "0").await.expect("watch");
        let events: Vec<_> = tokio::time::timeout(STEP, s.try_collect::<Vec<_>>())
            .await
            .expect("the stream ends")
            .expect("no errors");
        assert!(events.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(900));
    })
    .await;
}

#[tokio::test]
async fn field_selected_watch_for_one_node() {
    bounded(async {
        let api = TestApi::start().await;
        api.create(pod("a", json!({}), "127.0.0.2"));
        let pods: Api<Pod> = Api::all(client(&api));
        let cfg = watcher::Config::default().fields("spec.nodeName=node-b");
        let mut applied = watcher::watcher(pods, cfg).applied_objects().boxed();
        let mut p = pod("b", json!({}), "127.0.0.3");
        p["spec"]["nodeName"] = json!("node-b");
        p["metadata"]["namespace"] = json!("kube-system");
        api.create(p);
        let got = next(&mut applied).await.expect("ok");
        assert_eq!(name(&got), "b");
        assert_eq!(got.metadata.namespace.as_deref(), Some("kube-system"));
    })
    .await;
}
