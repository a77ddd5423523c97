//! One workload, one grace period: `lint` (before and after `inject`), `inject` and `plan`
//! (before and after) size it alike and explain it in the same sentence, for every workload of
//! the manifest corpus that inject puts behind the gate.

use std::path::Path;

use lameduck_lint::inject::{Options as InjectOptions, inject};
use lameduck_lint::{Options, rules};
use lameduck_manifest::{Lifecycle, Object, Workload, load_str};
use lameduck_plan::run::{LatencySource, Request, recommend};

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lameduck-lint/tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read"))
        })
        .collect()
}

/// The object holding the workload named `display`, and that workload's first template.
fn find<'a>(objects: &'a [Object], display: &str) -> Option<Workload<'a>> {
    objects
        .iter()
        .flat_map(Workload::all)
        .flatten()
        .find(|w| w.display_name() == display)
}

/// What `plan` recommends for the workload `w` of `objects`, and how.
fn plan_need(objects: &[Object], w: &Workload<'_>) -> Option<String> {
    let req = Request {
        objects: objects.to_vec(),
        workload: Some(format!("{}/{}", w.object.kind, w.object.name)),
        latency: LatencySource::FromWorkload,
        metric: None,
        column: None,
        percentile: 99.9,
        rate: None,
        scenarios: Vec::new(),
        compare: false,
        seed: 1,
        every: None,
        duration: None,
        spot: None,
        overrides: Default::default(),
        quiet_period: None,
        max_age: None,
        handoff: false,
        gateway: false,
    };
    let (_, plan, _) = recommend(&req).ok()?;
    plan.recommendations
        .iter()
        .find(|r| r.setting == "terminationGracePeriodSeconds")
        .map(|r| r.arithmetic.clone())
}

#[test]
fn lint_inject_and_plan_agree_on_the_grace_period() {
    let mut compared = 0;
    let mut plan_compared = 0;
    for (name, text) in corpus() {
        let Ok(out) = inject(Path::new(&name), &text, &InjectOptions::default()) else {
            continue; // the corpus test covers the refusals
        };
        let before = load_str(Path::new(&name), &text);
        let after = load_str(Path::new(&name), &out.text);
        for change in &out.changed {
            let (Some(wb), Some(wa)) = (
                find(&before.objects, &change.object),
                find(&after.objects, &change.object),
            ) else {
                panic!("{name}: {} not found again", change.object);
            };
            assert_eq!(wb.kind.lifecycle(), Lifecycle::Served);
            let lint_before = rules::required_grace(&wb, &Options::default())
                .unwrap_or_else(|| panic!("{name}: lint sizes no grace for {}", change.object))
                .explain();
            let lint_after = rules::required_grace(&wa, &Options::default())
                .unwrap_or_else(|| panic!("{name}: lint sizes no grace after inject"))
                .explain();
            assert_eq!(lint_before, change.grace_need, "{name}: lint and inject");
            assert_eq!(lint_after, change.grace_need, "{name}: lint after inject");
            compared += 1;
            // plan reads Deployments, StatefulSets and the like; it says so for the rest.
            if let (Some(pb), Some(pa)) = (
                plan_need(&before.objects, &wb),
                plan_need(&after.objects, &wa),
            ) {
                assert_eq!(pb, change.grace_need, "{name}: plan and inject");
                assert_eq!(pa, change.grace_need, "{name}: plan after inject");
                plan_compared += 1;
            }
        }
    }
    eprintln!("{compared} workloads compared, plan on {plan_compared}");
    assert!(compared >= 30, "only {compared} workloads compared");
    assert!(plan_compared >= 20, "plan compared on only {plan_compared}");
}
