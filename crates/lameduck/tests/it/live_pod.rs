//! One pod model: a workload read from its manifest and the Pod its controller would create,
//! read as a fleet tool reads it from the API server, give the same facts — for every
//! template in the manifest corpus.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use lameduck_manifest::facts::{self, MaxRequestSource};
use lameduck_manifest::{Workload, load_str};
use lameduck_pod::facts::{Annotations, PodFacts};
use serde_json::json;

/// The Pod a controller creates from the workload's template, as the API server returns it.
fn live_pod(w: &Workload<'_>) -> Pod {
    let spec = serde_json::to_value(&w.spec).expect("spec serializes");
    let labels: BTreeMap<_, _> = w.pod_labels();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{}-7d9f8c-x2k4q", w.object.name),
            "namespace": "default",
            "uid": "6b1c1f0e-0000-4000-8000-000000000001",
            "resourceVersion": "41",
            "labels": labels,
            "annotations": w.pod_annotations(),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "owner",
                "uid": "6b1c1f0e-0000-4000-8000-000000000002", "controller": true
            }],
        },
        "spec": spec,
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    });
    // Through text, as a client receives it.
    serde_json::from_str(&pod.to_string()).expect("a Pod")
}

#[test]
fn a_manifest_and_its_live_pod_give_the_same_facts() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lameduck-lint/tests/corpus");
    let mut compared = 0;
    let (mut annotated, mut spot, mut gated, mut engines) = (0, 0, 0, 0);
    for entry in std::fs::read_dir(&dir).expect("corpus") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let loaded = load_str(&path, &text);
        for w in loaded.objects.iter().flat_map(Workload::all).flatten() {
            let from_manifest = facts::pod_facts(&w);
            let pod = live_pod(&w);
            let owner = w.object_annotations();
            let from_pod = PodFacts::read(
                Annotations {
                    pod: pod.metadata.annotations.as_ref(),
                    workload: Some(&owner),
                },
                pod.spec.as_ref().expect("spec"),
            );
            let what = format!("{} in {}", w.display_name(), path.display());
            assert_eq!(
                format!("{from_manifest:#?}"),
                format!("{from_pod:#?}"),
                "{what}"
            );
            // A pod read on its own (no owner looked up) agrees wherever the template
            // carries the annotations.
            if owner.is_empty() {
                assert_eq!(
                    format!("{from_manifest:#?}"),
                    format!("{:#?}", PodFacts::of_pod(&pod)),
                    "{what}"
                );
            }
            compared += 1;
            annotated += usize::from(matches!(
                from_pod.max_request,
                Some((_, MaxRequestSource::Annotation))
            ));
            spot += usize::from(from_pod.spot.is_some());
            gated += usize::from(from_pod.gated());
            engines += usize::from(from_pod.model.engine().is_some());
        }
    }
    // The corpus exercises each fact, so the comparison above is not vacuous.
    assert!(compared >= 30, "{compared} workloads");
    assert!(
        annotated >= 1 && spot >= 1 && gated >= 1 && engines >= 5,
        "annotated {annotated}, spot {spot}, gated {gated}, engines {engines}"
    );
}
