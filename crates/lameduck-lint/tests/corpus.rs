//! `lint` and `inject` over a corpus of inference manifests written the ways people write them
//! (`tests/corpus/`: vLLM, SGLang, Ollama, NIM, TGI, TEI, Triton, llama.cpp, LiteLLM,
//! LMDeploy, LocalAI, Xinference, LeaderWorkerSet, Argo Rollouts, Knative, KServe, llm-d-,
//! AIBrix-, KAITO- and production-stack-style pods, batch work, ordinary web apps; every YAML
//! layout: indented and indentless lists, flow style, comments between items, block scalars,
//! CRLF, JSON, multi-document streams).
//!
//! For every manifest: `lint` runs; `inject` either succeeds or fails with the expected,
//! actionable message; a successful output parses, changes nothing but the gate's fields of the
//! serving container and the pod spec, lints without an error, validates against the
//! Kubernetes schema, and a second run changes nothing. At least 90 % succeed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lameduck_lint::inject::{Options, inject};
use lameduck_lint::{Severity, lint};
use lameduck_manifest::{Workload, load_str};
use serde_json::Value;

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/corpus")
        .map(|e| e.expect("entry").path())
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

/// Manifests inject must refuse, with the words that tell the user what to do.
const EXPECTED_FAILURES: &[(&str, &str)] = &[
    ("vllm-config-file.yaml", "add `--port 8000` to its args"),
    (
        "web-unknown-requests.yaml",
        "set the `lameduck.io/max-request-seconds` annotation or pass --max-request",
    ),
];

/// Rules about settings inject leaves to the user unless told: disruption budgets (other
/// objects, often owned by another team; `--fix-budgets` loosens them), a Recreate strategy
/// (often chosen because no second GPU or volume attachment is available during a rollout),
/// budgets that share pods (which one to drop is the owner's call). Inject must name each one
/// it leaves in its warnings.
const LEFT_UNLESS_TOLD: &[&str] = &[
    "pdb-blocks-drains",
    "multiple-pdbs",
    "single-replica-outage",
];

/// Every leaf path whose value differs between `a` and `b` (added and removed ones too).
fn changed_paths(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let next = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => changed_paths(va, vb, next, out),
                    _ => out.push(next),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                changed_paths(va, vb, format!("{at}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(at),
    }
}

/// What inject may change in a workload it put behind the gate: the pod spec's grace period,
/// init containers and volumes, and the serving container.
fn allowed(w: &Workload<'_>, container: &str, path: &str) -> bool {
    let pod = w.pod_path();
    let serving = w
        .model
        .containers
        .iter()
        .find(|c| c.name == container)
        .map(|c| w.container_path(c.slot));
    [
        format!("{pod}.terminationGracePeriodSeconds"),
        format!("{pod}.initContainers"),
        format!("{pod}.volumes"),
        // Only ever `sysctls` (the unprivileged-port sysctl for ports below 1024).
        format!("{pod}.securityContext"),
    ]
    .iter()
    .chain(serving.iter())
    .any(|p| path == p || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}[")))
}

/// The `kubernetes-validate` script of the test venv (`scripts/test` installs it).
fn validator() -> PathBuf {
    let python = std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LAMEDUCK_TEST_PYTHON is not set: run the tests with scripts/test, which installs kubernetes-validate")
    });
    let bin = Path::new(&python)
        .parent()
        .expect("venv bin")
        .join("kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test, which installs it",
        bin.display()
    );
    bin
}

/// Validates `text` against the Kubernetes schema, strictly; every pod template of a custom
/// resource is validated too, as the pod spec of a Pod.
fn validate(name: &str, text: &str, dir: &Path) {
    let loaded = load_str(Path::new(name), text);
    let mut docs = Vec::new();
    for o in &loaded.objects {
        docs.push(serde_json::to_string(&o.value).expect("json"));
        if o.api_version.contains('.') {
            for w in Workload::all(o) {
                let w = w.expect("spec");
                let pod = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "template"},
                    "spec": serde_json::to_value(&w.spec).expect("pod spec"),
                });
                docs.push(pod.to_string());
            }
        }
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, docs.join("\n---\n")).expect("write");
    let out = std::process::Command::new(validator())
        .args(["--strict", "--no-warn", "--quiet"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "{name}: not valid against the Kubernetes schema:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn lint_and_inject_work_on_the_manifests_people_have() {
    let tmp = std::env::temp_dir().join(format!("lameduck-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let files = corpus();
    assert!(
        files.len() >= 30,
        "the corpus has {} manifests",
        files.len()
    );
    let mut summary = String::new();
    let mut ok = 0;
    for (name, text) in &files {
        let before = load_str(Path::new(name), text);
        assert!(before.errors.is_empty(), "{name}: {:?}", before.errors);
        let report = lint(&before, &lameduck_lint::Options::default());
        let result = inject(Path::new(name), text, &Options::default());
        let out = match result {
            Err(e) => {
                let msg = e.to_string();
                let expected = EXPECTED_FAILURES.iter().find(|(f, _)| f == name);
                match expected {
                    Some((_, words)) => {
                        assert!(msg.contains(words), "{name}: unexpected message: {msg}");
                    }
                    None => panic!("{name}: inject failed: {msg}"),
                }
                summary.push_str(&format!("{name}: refused: {msg}\n"));
                continue;
            }
            Ok(out) => out,
        };
        assert!(
            !EXPECTED_FAILURES.iter().any(|(f, _)| f == name),
            "{name}: expected to fail, but inject succeeded"
        );
        ok += 1;
        let after = load_str(Path::new(name), &out.text);
        assert!(
            after.errors.is_empty(),
            "{name}: {:?}\n{}",
            after.errors,
            out.text
        );
        assert_eq!(before.objects.len(), after.objects.len(), "{name}");
        // Only the intended changes.
        for (a, b) in before.objects.iter().zip(&after.objects) {
            let mut paths = Vec::new();
            changed_paths(&a.value, &b.value, String::new(), &mut paths);
            let changed: Vec<_> = out
                .changed
                .iter()
                .filter(|c| c.object.starts_with(&a.display_name()))
                .collect();
            let adjusted: Vec<&String> = out
                .adjusted
                .iter()
                .filter(|c| c.object.starts_with(&a.display_name()))
                .flat_map(|c| &c.paths)
                .collect();
            for p in &paths {
                let fine = Workload::all(a).into_iter().flatten().any(|w| {
                    changed
                        .iter()
                        .any(|c| c.object == w.display_name() && allowed(&w, &c.container, p))
                }) || adjusted.contains(&p);
                assert!(
                    fine,
                    "{name}: {} changed at `{p}`, which inject must not touch",
                    a.display_name()
                );
            }
        }
        // The output lints without an error, except what inject leaves unless told, and each
        // of those is named in its warnings; told to fix budgets, only what is never changed
        // is left. What it leaves is reported the same before and after.
        let errors = |r: &lameduck_lint::Report, left: bool| -> Vec<(String, String, String)> {
            r.findings
                .iter()
                .filter(|f| {
                    f.severity == Severity::Error && LEFT_UNLESS_TOLD.contains(&f.rule) == left
                })
                .map(|f| (f.rule.to_owned(), f.kind.clone(), f.name.clone()))
                .collect()
        };
        let after_report = lint(&after, &lameduck_lint::Options::default());
        let own = errors(&after_report, false);
        assert!(
            own.is_empty(),
            "{name}: after inject: {own:#?}\n{}",
            out.text
        );
        let left = errors(&after_report, true);
        for (rule, kind, obj) in &left {
            assert!(
                out.warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("{kind}/{obj}"))),
                "{name}: inject left {rule} on {kind}/{obj} without a word: {:#?}",
                out.warnings
            );
        }
        let told = Options {
            fix_budgets: true,
            ..Options::default()
        };
        let fixed = inject(Path::new(name), text, &told)
            .unwrap_or_else(|e| panic!("{name}: with --fix-budgets: {e}"));
        let fixed_report = lint(
            &load_str(Path::new(name), &fixed.text),
            &lameduck_lint::Options::default(),
        );
        let still: Vec<_> = errors(&fixed_report, true)
            .into_iter()
            .filter(|(rule, ..)| rule == "pdb-blocks-drains")
            .collect();
        assert!(
            still.is_empty(),
            "{name}: --fix-budgets left {still:?}\n{}",
            fixed.text
        );
        validate(&format!("fixed-{name}"), &fixed.text, &tmp);
        assert!(
            errors(&report, true).len() >= left.len(),
            "{name}: inject added errors it does not own: {left:?}"
        );
        let again = inject(Path::new(name), &out.text, &Options::default())
            .unwrap_or_else(|e| panic!("{name}: second run: {e}"));
        assert_eq!(again.text, out.text, "{name}: a second run changed it");
        validate(name, &out.text, &tmp);
        // The summary: what lint found before, and what inject did.
        let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &report.findings {
            *rules.entry(f.rule).or_default() += 1;
        }
        let found: Vec<String> = rules.iter().map(|(r, n)| format!("{r}×{n}")).collect();
        summary.push_str(&format!(
            "{name}: lint before: {}\n",
            if found.is_empty() {
                "clean".into()
            } else {
                found.join(", ")
            }
        ));
        for c in &out.changed {
            summary.push_str(&format!(
                "  gated {} (container {})\n",
                c.object, c.container
            ));
            for l in &c.lines {
                summary.push_str(&format!("    {l}\n"));
            }
        }
        for a in &out.adjusted {
            summary.push_str(&format!("  adjusted {}: {}\n", a.object, a.line));
        }
        for a in &fixed.adjusted {
            if a.paths.iter().any(|p| p.starts_with("spec.m"))
                && a.object.starts_with("PodDisruptionBudget")
            {
                summary.push_str(&format!("  with --fix-budgets, {}: {}\n", a.object, a.line));
            }
        }
        for s in &out.skipped {
            summary.push_str(&format!("  left alone: {s}\n"));
        }
        for w in &out.warnings {
            summary.push_str(&format!("  warning: {w}\n"));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let share = ok as f64 / files.len() as f64;
    assert!(
        share >= 0.9,
        "inject succeeded on {ok} of {} manifests",
        files.len()
    );
    insta::assert_snapshot!(summary);
}

/// `inject --kube` (with `--deletion-cost`) over the corpus: every output is valid against the
/// Kubernetes schema (the ServiceAccount, Role and RoleBinding too), lints without an error
/// (the readiness gate has its `--kube` gate), and a second run changes nothing.
#[test]
fn inject_kube_gives_valid_rbac_and_readiness_gates() {
    let tmp = std::env::temp_dir().join(format!("lameduck-corpus-kube-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let opts = Options {
        kube: true,
        deletion_cost: true,
        ..Options::default()
    };
    let mut all = String::new();
    let mut roles = 0;
    for (name, text) in &corpus() {
        let Ok(out) = inject(Path::new(name), text, &opts) else {
            continue;
        };
        if out.changed.is_empty() {
            continue;
        }
        let after = load_str(Path::new(name), &out.text);
        assert!(after.errors.is_empty(), "{name}: {:?}", after.errors);
        let report = lint(&after, &lameduck_lint::Options::default());
        let errors: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error && !LEFT_UNLESS_TOLD.contains(&f.rule))
            .map(|f| (f.rule, f.name.clone()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{}", out.text);
        let kinds: Vec<&str> = after.objects.iter().map(|o| o.kind.as_str()).collect();
        if name.ends_with(".json") {
            // JSON stays JSON: the RBAC comes as a warning to save beside it.
            assert!(
                out.warnings.iter().any(|w| w.contains("kind: Role")),
                "{name}"
            );
        } else {
            assert!(
                kinds.contains(&"Role") && kinds.contains(&"RoleBinding"),
                "{name}: {kinds:?}"
            );
        }
        roles += kinds.iter().filter(|k| **k == "Role").count();
        for w in after.objects.iter().flat_map(Workload::all).flatten() {
            if !w.model.gated() {
                continue;
            }
            let gates = w.spec.readiness_gates.clone().unwrap_or_default();
            assert!(
                gates
                    .iter()
                    .any(|g| g.condition_type == "lameduck.io/serving"),
                "{name}: {} has no readiness gate",
                w.display_name()
            );
            let gate = w.model.gate.as_ref().expect("gate");
            assert!(
                gate.args.kube && gate.args.deletion_cost,
                "{name}: {:?}",
                gate.args
            );
        }
        let again = inject(Path::new(name), &out.text, &opts).expect("second run");
        assert_eq!(again.text, out.text, "{name}: a second run changed it");
        all.push_str(&out.text);
        all.push_str("\n---\n");
    }
    assert!(roles >= 25, "only {roles} Roles written");
    validate("kube-all", &all, &tmp);
}
