//! Rule tests: each rule fires at the right line:column and stays quiet on the fixed form;
//! the seed article's examples; snapshots of the human and JSON output.

use std::path::Path;
use std::time::Duration;

use lameduck_lint::{Options, Report, lint, report};
use lameduck_manifest::load_str;

fn run(name: &str, text: &str) -> Report {
    let r = lint(&load_str(Path::new(name), text), &Options::default());
    // A fixture that does not parse would make every "stays quiet" test pass for nothing.
    assert!(
        !r.notes
            .iter()
            .any(|n| n.contains("not valid") || n.contains("invalid YAML")),
        "{:?}",
        r.notes
    );
    r
}

fn fired(r: &Report) -> Vec<(&'static str, usize, usize)> {
    r.findings.iter().map(|f| (f.rule, f.line, f.col)).collect()
}

mod common;
use common::fixture;

#[test]
fn seed_complete_deployment_is_clean() {
    let r = run("seed-complete.yaml", &fixture("seed-complete.yaml"));
    assert_eq!(fired(&r), [], "{:#?}", r.findings);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("assuming requests of up to 150 s")),
        "{:?}",
        r.notes
    );
}

#[test]
fn seed_naive_deployment_gets_every_relevant_finding() {
    let r = run("seed-naive.yaml", &fixture("seed-naive.yaml"));
    let mut rules: Vec<&str> = r.findings.iter().map(|f| f.rule).collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            "grace-period-too-short",
            "liveness-same-as-readiness",
            "no-prestop",
            "readiness-not-drain-aware",
            "readiness-slower-than-convergence",
        ]
    );
    let grace = r
        .findings
        .iter()
        .find(|f| f.rule == "grace-period-too-short")
        .expect("grace");
    // Points at the pod spec, where terminationGracePeriodSeconds must be added.
    assert_eq!((grace.line, grace.col), (11, 5));
    assert!(
        grace.message.contains("30 s (the default)"),
        "{}",
        grace.message
    );
    // No preStop and no gate: the default 15 s window + 150 s + 5 s, what inject writes.
    assert!(grace.fix.contains("170"), "{}", grace.fix);
}

#[test]
fn snapshots_of_human_and_json_output() {
    let text = fixture("seed-naive.yaml");
    let r = run("seed-naive.yaml", &text);
    let src = std::sync::Arc::new(text.clone());
    insta::assert_snapshot!("naive_human", report::human(&r, |_| Some(src.clone())));
    let json: serde_json::Value = serde_json::from_str(&report::json(&r)).expect("json");
    insta::assert_snapshot!(
        "naive_json",
        serde_json::to_string_pretty(&json).expect("json")
    );
    insta::assert_snapshot!("naive_sarif", lameduck_lint::sarif::sarif(&r));
}

#[test]
fn sarif_is_well_formed_and_empty_when_clean() {
    let r = run("seed-complete.yaml", &fixture("seed-complete.yaml"));
    let v: serde_json::Value =
        serde_json::from_str(&lameduck_lint::sarif::sarif(&r)).expect("sarif json");
    assert_eq!(v["version"], "2.1.0");
    let run0 = &v["runs"][0];
    assert_eq!(
        run0["results"],
        serde_json::json!([]),
        "an empty results array when clean"
    );
    let rules = run0["tool"]["driver"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), lameduck_lint::rules::ALL.len());
    assert!(rules.iter().all(|r| {
        r["help"]["markdown"]
            .as_str()
            .is_some_and(|m| m.contains("## Fix"))
    }));
    let naive = run("seed-naive.yaml", &fixture("seed-naive.yaml"));
    let naive: serde_json::Value =
        serde_json::from_str(&lameduck_lint::sarif::sarif(&naive)).expect("sarif json");
    let results = naive["runs"][0]["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    for res in results {
        let region = &res["locations"][0]["physicalLocation"]["region"];
        assert!(region["startLine"].as_u64() > Some(0) && region["startColumn"].as_u64() > Some(0));
        let idx = res["ruleIndex"].as_u64().expect("index") as usize;
        assert_eq!(rules[idx]["id"], res["ruleId"]);
        let fp = res["partialFingerprints"]["lameduckFindingHash/v1"].as_str();
        assert_eq!(fp.map(str::len), Some(16));
    }
}

const DEPLOY_HEAD: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\nspec:\n  replicas: 3\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n";

/// A deployment whose pod spec body (indented 6 spaces) is `body`.
fn deploy(body: &str) -> String {
    format!("{DEPLOY_HEAD}{body}")
}

const GOOD_CONTAINER: &str = r#"      containers:
        - name: app
          image: example/app
          ports: [{containerPort: 8000}]
          readinessProbe:
            exec: {command: [sh, -c, 'test ! -f /tmp/draining']}
            periodSeconds: 2
          livenessProbe:
            tcpSocket: {port: 8000}
          lifecycle:
            preStop:
              exec: {command: [sh, -c, 'touch /tmp/draining; sleep 10']}
"#;

#[test]
fn good_container_is_clean() {
    let r = run("g.yaml", &deploy(GOOD_CONTAINER));
    assert_eq!(fired(&r), []);
}

#[test]
fn prestop_beyond_grace() {
    let text = deploy(&format!(
        "      terminationGracePeriodSeconds: 10\n{GOOD_CONTAINER}"
    ));
    let r = run("p.yaml", &text);
    assert_eq!(fired(&r), [("prestop-beyond-grace", 20, 13)]);
}

#[test]
fn grace_too_short_with_max_request_annotation_and_flag() {
    let annotated = deploy(GOOD_CONTAINER).replace(
        "metadata: {name: d, namespace: n}",
        "metadata: {name: d, namespace: n, annotations: {lameduck.io/max-request-seconds: '120'}}",
    );
    let r = run("a.yaml", &annotated);
    assert_eq!(fired(&r), [("grace-period-too-short", 8, 5)]);
    assert!(
        r.findings[0]
            .message
            .contains("max-request-seconds` annotation"),
        "{}",
        r.findings[0].message
    );
    // Enough grace: the 15 s convergence window (the 10 s preStop sleep is shorter) + 120 + 5.
    let fixed = annotated.replace(
        "    spec:\n      containers",
        "    spec:\n      terminationGracePeriodSeconds: 140\n      containers",
    );
    assert_eq!(fired(&run("a.yaml", &fixed)), []);
    let short = fixed.replace(
        "terminationGracePeriodSeconds: 140",
        "terminationGracePeriodSeconds: 139",
    );
    assert_eq!(
        fired(&run("a.yaml", &short)),
        [("grace-period-too-short", 9, 7)]
    );
    // The flag applies where no annotation is set.
    let opts = Options {
        max_request: Some(Duration::from_secs(60)),
        ..Options::default()
    };
    let r = lint(
        &load_str(Path::new("f.yaml"), &deploy(GOOD_CONTAINER)),
        &opts,
    );
    assert_eq!(fired(&r), [("grace-period-too-short", 8, 5)]);
}

#[test]
fn no_readiness_probe() {
    let text = deploy(
        "      containers:\n        - name: app\n          image: x\n          ports: [{containerPort: 80}]\n          lifecycle: {preStop: {sleep: {seconds: 5}}}\n",
    );
    let r = run("r.yaml", &text);
    assert_eq!(fired(&r), [("no-readiness-probe", 10, 11)]);
}

#[test]
fn readiness_must_check_the_marker_the_prestop_sets() {
    let text = deploy(&GOOD_CONTAINER.replace("test ! -f /tmp/draining", "test ! -f /tmp/other"));
    let r = run("m.yaml", &text);
    assert_eq!(fired(&r), [("readiness-not-drain-aware", 13, 11)]);
    assert!(r.findings[0].message.contains("/tmp/draining"));
}

#[test]
fn gate_ready_is_drain_aware() {
    let text = deploy(
        r#"      terminationGracePeriodSeconds: 185
      containers:
        - name: app
          image: ghcr.io/example/lameduck
          args: [gate, --admin, '0.0.0.0:9901', --grace-period, '185', --, vllm, serve]
          ports: [{containerPort: 8000}]
          readinessProbe: {httpGet: {path: /ready, port: 9901}, periodSeconds: 2}
          livenessProbe: {httpGet: {path: /live, port: 9901}}
"#,
    );
    // The container is the gate itself (wrapper mode): nothing to report. Its grace period
    // is checked like any engine's: the default 30 s cannot hold vLLM's requests.
    assert_eq!(fired(&run("w.yaml", &text)), []);
    let short = text
        .replace("      terminationGracePeriodSeconds: 185\n", "")
        .replace("--grace-period, '185', ", "");
    let r = run("w.yaml", &short);
    assert_eq!(fired(&r), [("grace-period-too-short", 8, 5)]);
    assert!(
        r.findings[0]
            .message
            .contains("(the convergence window, while load balancers may still send requests)"),
        "{}",
        r.findings[0].message
    );
}

#[test]
fn liveness_same_as_readiness_and_slow_readiness() {
    let text = deploy(
        &GOOD_CONTAINER
            .replace(
                "tcpSocket: {port: 8000}",
                "exec: {command: [sh, -c, 'test ! -f /tmp/draining']}",
            )
            .replace("periodSeconds: 2", "periodSeconds: 10"),
    );
    let r = run("l.yaml", &text);
    assert_eq!(
        fired(&r),
        [
            ("readiness-slower-than-convergence", 13, 11),
            // Two mistakes in one probe: it checks the drain marker (a drain restarts the
            // container), and it is readiness's own check.
            ("liveness-kills-busy-engine", 16, 11),
            ("liveness-same-as-readiness", 16, 11)
        ]
    );
}

#[test]
fn spot_grace_beyond_the_notice() {
    let text = deploy(&format!(
        "      terminationGracePeriodSeconds: 60\n      nodeSelector: {{cloud.google.com/gke-spot: 'true'}}\n{GOOD_CONTAINER}"
    ));
    let r = run("s.yaml", &text);
    assert_eq!(fired(&r), [("spot-grace-exceeds-notice", 9, 7)]);
    assert!(r.findings[0].message.contains("GCP"));
    let karpenter = text
        .replace(
            "cloud.google.com/gke-spot: 'true'",
            "karpenter.sh/capacity-type: spot",
        )
        .replace(
            "terminationGracePeriodSeconds: 60",
            "terminationGracePeriodSeconds: 90",
        );
    assert_eq!(fired(&run("k.yaml", &karpenter)), [], "AWS gives 120 s");
}

#[test]
fn disruption_budgets() {
    let pdb = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: {name}, namespace: n}}\nspec:\n  selector: {{matchLabels: {{app: d}}}}\n  {spec}\n"
        )
    };
    let blocking = format!(
        "{}{}",
        deploy(GOOD_CONTAINER),
        pdb("p", "maxUnavailable: 0")
    );
    assert_eq!(
        fired(&run("b.yaml", &blocking)),
        [("pdb-blocks-drains", 27, 3)]
    );
    let min_all = format!("{}{}", deploy(GOOD_CONTAINER), pdb("p", "minAvailable: 3"));
    assert_eq!(
        fired(&run("b.yaml", &min_all)),
        [("pdb-blocks-drains", 27, 3)]
    );
    let fine = format!(
        "{}{}",
        deploy(GOOD_CONTAINER),
        pdb("p", "maxUnavailable: 1")
    );
    assert_eq!(fired(&run("b.yaml", &fine)), []);
    let two = format!(
        "{}{}{}",
        deploy(GOOD_CONTAINER),
        pdb("p", "maxUnavailable: 1"),
        pdb("q", "maxUnavailable: 1")
    );
    assert_eq!(fired(&run("b.yaml", &two)), [("multiple-pdbs", 33, 3)]);
    // Another namespace does not count.
    let other = two.replacen(
        "namespace: n}\nspec:\n  selector",
        "namespace: other}\nspec:\n  selector",
        2,
    );
    assert_eq!(fired(&run("b.yaml", &other)), []);
}

#[test]
fn every_rule_has_its_page() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/rules");
    for rule in lameduck_lint::rules::ALL {
        let page = std::fs::read_to_string(docs.join(format!("{}.md", rule.id)))
            .unwrap_or_else(|e| panic!("docs/rules/{}.md: {e}", rule.id));
        assert!(page.contains("## Fix"), "{}", rule.id);
        assert!(
            page.contains(rule.severity.as_str()),
            "{}: severity",
            rule.id
        );
    }
}

/// The README lists every rule, as `rules::markdown_table` writes it. Set `UPDATE_README=1` to
/// rewrite the table in place.
#[test]
fn readme_lists_every_rule() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let (start, end) = ("<!-- rules:start -->\n", "<!-- rules:end -->");
    let a = readme.find(start).expect("README has <!-- rules:start -->") + start.len();
    let header = "| rule | severity | what it catches |\n|---|---|---|\n";
    let b = readme[a..]
        .find(end)
        .expect("README has <!-- rules:end -->")
        + a;
    let want = format!("{header}{}", lameduck_lint::rules::markdown_table());
    if readme[a..b] != want && std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{want}{}", &readme[..a], &readme[b..]);
        std::fs::write(&path, updated).expect("write README.md");
        return;
    }
    assert_eq!(
        readme[a..b],
        want,
        "README's rule table is out of date: run with UPDATE_README=1"
    );
}

/// The gate as a native sidecar in front of vLLM, done right.
const SIDECAR_OK: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm, namespace: n}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: vllm}}
    spec:
      terminationGracePeriodSeconds: 180
      initContainers:
        - name: gate
          image: ghcr.io/example/lameduck:0.1
          restartPolicy: Always
          args: [gate, --upstream, "http://127.0.0.1:8001", --grace-period, "180", --convergence-max, "15", --listen, "0.0.0.0:8000"]
          ports: [{containerPort: 8000}]
          readinessProbe: {httpGet: {path: /ready, port: 9901}, periodSeconds: 2, failureThreshold: 1}
          livenessProbe: {httpGet: {path: /live, port: 9901}}
      containers:
        - name: vllm
          image: vllm/vllm-openai:latest
          args: [--port, "8001"]
          ports: [{containerPort: 8001}]
          readinessProbe: {httpGet: {path: /ready, port: 9901}, periodSeconds: 2, failureThreshold: 1}
          livenessProbe: {httpGet: {path: /health, port: 8001}, periodSeconds: 10, failureThreshold: 6}
          lifecycle:
            preStop:
              httpGet: {path: /drain, port: 9901}
"#;

#[test]
fn gate_sidecar_done_right_is_clean() {
    assert_eq!(fired(&run("s.yaml", SIDECAR_OK)), []);
}

#[test]
fn gate_setup_rules() {
    // The engine's preStop does not call /drain.
    let no_drain = SIDECAR_OK.replace(
        "          lifecycle:\n            preStop:\n              httpGet: {path: /drain, port: 9901}\n",
        "",
    );
    assert_eq!(
        fired(&run("s.yaml", &no_drain)),
        [("sidecar-prestop-not-draining", 19, 11)]
    );
    // The gate plans for another grace period (here its default, 30 s).
    let mismatch = SIDECAR_OK.replace(r#", --grace-period, "180""#, "");
    assert_eq!(
        fired(&run("s.yaml", &mismatch)),
        [("gate-grace-mismatch", 11, 11)]
    );
    let by_env = mismatch.replace(
        "          restartPolicy: Always\n",
        "          restartPolicy: Always\n          env: [{name: LAMEDUCK_GRACE_PERIOD, value: \"180\"}]\n",
    );
    assert_eq!(fired(&run("s.yaml", &by_env)), []);
    // An ordinary container instead of a native sidecar.
    let ordinary = SIDECAR_OK.replace("          restartPolicy: Always\n", "");
    let r = run("s.yaml", &ordinary);
    assert_eq!(fired(&r), [("gate-not-native-sidecar", 11, 11)]);
    // The serving readiness gate with nobody to set it; then the gate with --kube sets it.
    let waits = SIDECAR_OK.replace(
        "      terminationGracePeriodSeconds: 180\n",
        "      terminationGracePeriodSeconds: 180\n      readinessGates: [{conditionType: lameduck.io/serving}]\n",
    );
    assert_eq!(
        fired(&run("s.yaml", &waits)),
        [("serving-gate-without-kube", 10, 7)]
    );
    let kube = waits.replace("args: [gate, ", "args: [gate, --kube, ");
    assert_eq!(fired(&run("s.yaml", &kube)), []);
}

#[test]
fn liveness_that_kills_a_busy_engine() {
    let twitchy = SIDECAR_OK.replace(
        "livenessProbe: {httpGet: {path: /health, port: 8001}, periodSeconds: 10, failureThreshold: 6}",
        "livenessProbe: {httpGet: {path: /health, port: 8001}, periodSeconds: 5, failureThreshold: 2}",
    );
    let r = run("l.yaml", &twitchy);
    assert_eq!(fired(&r), [("liveness-kills-busy-engine", 24, 11)]);
    assert!(
        r.findings[0].message.contains("10 s"),
        "{}",
        r.findings[0].message
    );
}

#[test]
fn require_pdb() {
    let opts = Options {
        require_pdb: true,
        ..Options::default()
    };
    let r = lint(&load_str(Path::new("p.yaml"), SIDECAR_OK), &opts);
    assert_eq!(fired(&r), [("no-pdb", 3, 12)]);
    let with_pdb = format!(
        "{SIDECAR_OK}---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: p, namespace: n}}\nspec:\n  maxUnavailable: 1\n  unhealthyPodEvictionPolicy: AlwaysAllow\n  selector: {{matchLabels: {{app: vllm}}}}\n"
    );
    let r = lint(&load_str(Path::new("p.yaml"), &with_pdb), &opts);
    assert_eq!(fired(&r), []);
    // With the default policy, one unready engine spends the budget.
    let default_policy = with_pdb.replace("  unhealthyPodEvictionPolicy: AlwaysAllow\n", "");
    let r = lint(&load_str(Path::new("p.yaml"), &default_policy), &opts);
    assert_eq!(fired(&r), [("pdb-unhealthy-blocks", 33, 3)]);
    assert!(
        r.findings[0].message.contains("IfHealthyBudget"),
        "{}",
        r.findings[0].message
    );
}

#[test]
fn suppression_annotation() {
    let text = fixture("seed-naive.yaml").replace(
        "  namespace: inference\n",
        "  namespace: inference\n  annotations:\n    lameduck.io/ignore: liveness-same-as-readiness, no-prestop\n",
    );
    let r = run("i.yaml", &text);
    let rules: Vec<&str> = r.findings.iter().map(|f| f.rule).collect();
    assert!(
        !rules.contains(&"liveness-same-as-readiness") && !rules.contains(&"no-prestop"),
        "{rules:?}"
    );
    assert_eq!(rules.len(), 3);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("2 finding(s) suppressed")),
        "{:?}",
        r.notes
    );
}

#[test]
fn hpa_min_replicas_count_for_budgets() {
    let text = format!(
        "{}---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: p, namespace: n}}\nspec:\n  minAvailable: 2\n  selector: {{matchLabels: {{app: d}}}}\n---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: h, namespace: n}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: d}}\n  minReplicas: 2\n  maxReplicas: 10\n",
        deploy(GOOD_CONTAINER)
    );
    // 3 replicas allow one eviction, but the HPA may scale to 2, where minAvailable 2 blocks.
    let r = run("h.yaml", &text);
    assert_eq!(fired(&r), [("pdb-blocks-drains", 26, 3)]);
    assert!(
        r.findings[0].message.contains("minReplicas"),
        "{}",
        r.findings[0].message
    );
    let roomy = text.replace("minReplicas: 2", "minReplicas: 3");
    assert_eq!(fired(&run("h.yaml", &roomy)), []);
}

#[test]
fn rollout_rules() {
    let no_surge = SIDECAR_OK.replace(
        "  replicas: 2\n",
        "  replicas: 2\n  strategy:\n    rollingUpdate: {maxSurge: 0, maxUnavailable: 1}\n",
    );
    assert_eq!(
        fired(&run("r.yaml", &no_surge)),
        [("maxsurge-zero-slow-start", 7, 21)]
    );
    let surge = no_surge.replace(
        "maxSurge: 0, maxUnavailable: 1",
        "maxSurge: 1, maxUnavailable: 0",
    );
    assert_eq!(fired(&run("r.yaml", &surge)), []);
    let long = SIDECAR_OK.replace("180", "3600");
    let r = run("r.yaml", &long);
    assert_eq!(fired(&r), [("long-lived-work", 9, 7)]);
    assert_eq!(r.findings[0].severity, lameduck_lint::Severity::Note);
    // Unbounded streams, said by the annotation.
    let ws = deploy(GOOD_CONTAINER).replace(
        "metadata: {name: d, namespace: n}",
        "metadata: {name: d, namespace: n, annotations: {lameduck.io/max-request-seconds: unbounded}}",
    );
    let r = run("w.yaml", &ws);
    assert_eq!(fired(&r), [("long-lived-work", 3, 49)]);
    assert!(
        r.findings[0].message.contains("no end"),
        "{}",
        r.findings[0].message
    );
}

#[test]
fn terminating_surge() {
    // The seed's numbers: 10 replicas ready in 2 s, 20 s to shut down: all 10 old pods are
    // still terminating when the rollout ends; 40 replicas with 120 s reach 40 + 40.
    use lameduck_lint::rules::terminating_peak;
    let s = Duration::from_secs;
    assert_eq!(terminating_peak(10, 5, s(2), s(20)), 10);
    assert_eq!(terminating_peak(40, 20, s(2), s(120)), 40);
    // Slow readiness and quick drains overlap little.
    assert_eq!(terminating_peak(40, 2, s(60), s(30)), 2);
    let big = deploy(&format!("      terminationGracePeriodSeconds: 140\n{GOOD_CONTAINER}"))
        .replace("replicas: 3", "replicas: 40")
        .replace(
            "metadata: {name: d, namespace: n}",
            "metadata: {name: d, namespace: n, annotations: {lameduck.io/max-request-seconds: \"120\"}}",
        );
    let r = run("t.yaml", &big);
    assert_eq!(fired(&r), [("terminating-surge", 5, 3)]);
    assert!(
        r.findings[0]
            .message
            .contains("80 at once (40 running + 40 terminating)"),
        "{}",
        r.findings[0].message
    );
    // With a strategy, the finding points at it; a slow, narrow rollout stays quiet.
    let strategy = big.replace(
        "  replicas: 40\n",
        "  replicas: 40\n  strategy:\n    rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}\n",
    );
    assert_eq!(
        fired(&run("t.yaml", &strategy)),
        [("terminating-surge", 7, 5)]
    );
    let narrow = strategy
        .replace(
            "maxSurge: 25%, maxUnavailable: 25%",
            "maxSurge: 1, maxUnavailable: 0",
        )
        .replace(
            "periodSeconds: 2",
            "periodSeconds: 2\n            initialDelaySeconds: 30",
        );
    assert_eq!(fired(&run("t.yaml", &narrow)), []);
    assert_eq!(
        fired(&run("t.yaml", &big.replace("replicas: 40", "replicas: 3"))),
        []
    );
}

#[test]
fn maxunavailable_above_headroom() {
    let text = deploy(GOOD_CONTAINER)
        .replace(
            "  replicas: 3\n",
            "  replicas: 8\n  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 2\n",
        )
        .replace(
            "metadata: {name: d, namespace: n}",
            "metadata: {name: d, namespace: n, annotations: {lameduck.io/warm-headroom: \"1\"}}",
        );
    let r = run("h.yaml", &text);
    assert_eq!(fired(&r), [("maxunavailable-above-headroom", 9, 7)]);
    assert!(
        r.findings[0].message.contains("warm headroom is 1 (the"),
        "{}",
        r.findings[0].message
    );
    assert_eq!(
        fired(&run(
            "h.yaml",
            &text.replace("maxUnavailable: 2", "maxUnavailable: 1")
        )),
        []
    );
    assert_eq!(fired(&run("h.yaml", &text.replace("\"1\"", "\"25%\""))), []);
    // From an HPA's target: 90% on 10 replicas leaves 1 pod spare; the default 25% takes 2.
    let hpa = format!(
        "{}---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: h, namespace: n}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: d}}\n  minReplicas: 10\n  maxReplicas: 20\n  metrics:\n    - type: Resource\n      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 90}}}}\n",
        deploy(GOOD_CONTAINER).replace("replicas: 3", "replicas: 10")
    );
    let r = run("h.yaml", &hpa);
    assert_eq!(fired(&r), [("maxunavailable-above-headroom", 5, 3)]);
    assert!(
        r.findings[0].message.contains("(the default)"),
        "{}",
        r.findings[0].message
    );
    assert_eq!(
        fired(&run(
            "h.yaml",
            &hpa.replace("averageUtilization: 90", "averageUtilization: 70")
        )),
        []
    );
}

/// A Deployment of `replicas` vLLM pods labelled `app: d`, with `strategy` under `spec`.
fn vllm(replicas: u32, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: n}}\nspec:\n  replicas: {replicas}\n{strategy}  template:\n    metadata: {{labels: {{app: d}}}}\n    spec:\n      terminationGracePeriodSeconds: 170\n      containers:\n        - name: vllm\n          image: vllm/vllm-openai:v0.9.2\n          args: [--port, '8000']\n          ports: [{{containerPort: 8000}}]\n"
    )
}

fn pdb(api: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: {api}\nkind: PodDisruptionBudget\nmetadata: {{name: p, namespace: n}}\nspec:\n{spec}"
    )
}

fn rules_of(text: &str) -> Vec<&'static str> {
    run("x.yaml", text)
        .findings
        .iter()
        .map(|f| f.rule)
        .collect()
}

#[test]
fn pdb_percentages_versions_and_unhealthy_policy() {
    let blocks = |t: &str| rules_of(t).contains(&"pdb-blocks-drains");
    let sel = "  selector: {matchLabels: {app: d}}\n  unhealthyPodEvictionPolicy: AlwaysAllow\n";
    // minAvailable 67% of 3, rounded up, is 3: no eviction.
    let t = vllm(3, "") + &pdb("policy/v1", &format!("  minAvailable: 67%\n{sel}"));
    assert!(blocks(&t), "{:?}", rules_of(&t));
    let msg = run("x.yaml", &t)
        .findings
        .into_iter()
        .find(|f| f.rule == "pdb-blocks-drains")
        .expect("finding")
        .message;
    assert!(
        msg.contains("minAvailable 67% of 3 pods, rounded up, is 3"),
        "{msg}"
    );
    // 66% is 2 of 3: one eviction at a time.
    assert!(!blocks(
        &(vllm(3, "") + &pdb("policy/v1", &format!("  minAvailable: 66%\n{sel}")))
    ));
    // maxUnavailable rounds up too: 10% of 3 allows one.
    assert!(!blocks(
        &(vllm(3, "") + &pdb("policy/v1", &format!("  maxUnavailable: 10%\n{sel}")))
    ));
    assert!(blocks(
        &(vllm(3, "") + &pdb("policy/v1", &format!("  maxUnavailable: 0%\n{sel}")))
    ));
    // policy/v1beta1 budgets are read (clusters still hold them).
    let beta = vllm(3, "")
        + &pdb(
            "policy/v1beta1",
            "  maxUnavailable: 0\n  selector: {matchLabels: {app: d}}\n",
        );
    assert!(blocks(&beta), "{:?}", rules_of(&beta));
    // An empty selector selects every pod of the namespace in v1, none in v1beta1.
    let empty = "  maxUnavailable: 0\n  selector: {}\n";
    assert!(blocks(&(vllm(3, "") + &pdb("policy/v1", empty))));
    assert!(!blocks(&(vllm(3, "") + &pdb("policy/v1beta1", empty))));
    // No selector at all selects nothing.
    assert!(!blocks(
        &(vllm(3, "") + &pdb("policy/v1", "  maxUnavailable: 0\n"))
    ));
    // The unhealthy-pod policy: one disruption allowed under the default policy.
    let one = vllm(3, "")
        + &pdb(
            "policy/v1",
            "  maxUnavailable: 1\n  selector: {matchLabels: {app: d}}\n",
        );
    assert!(rules_of(&one).contains(&"pdb-unhealthy-blocks"));
    let explicit = one.replace(
        "  maxUnavailable: 1\n",
        "  maxUnavailable: 1\n  unhealthyPodEvictionPolicy: IfHealthyBudget\n",
    );
    assert!(rules_of(&explicit).contains(&"pdb-unhealthy-blocks"));
    // Two allowed: one unready pod leaves room.
    let two = one.replace("maxUnavailable: 1", "maxUnavailable: 2");
    assert!(!rules_of(&two).contains(&"pdb-unhealthy-blocks"));
}

#[test]
fn single_replica_rollouts() {
    let fires = |t: &str| rules_of(t).contains(&"single-replica-outage");
    assert!(fires(&vllm(
        1,
        "  strategy:\n    rollingUpdate: {maxUnavailable: 1, maxSurge: 0}\n"
    )));
    assert!(fires(&vllm(
        1,
        "  strategy:\n    rollingUpdate: {maxUnavailable: 100%, maxSurge: 1}\n"
    )));
    assert!(fires(&vllm(1, "  strategy: {type: Recreate}\n")));
    // The surge alternative, and the defaults (25% of one rounds down to 0 unavailable).
    assert!(!fires(&vllm(
        1,
        "  strategy:\n    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}\n"
    )));
    assert!(!fires(&vllm(1, "")));
    assert!(!fires(&vllm(
        2,
        "  strategy:\n    rollingUpdate: {maxUnavailable: 1, maxSurge: 0}\n"
    )));
    let r = run(
        "x.yaml",
        &vllm(
            1,
            "  strategy:\n    rollingUpdate: {maxUnavailable: 1, maxSurge: 0}\n",
        ),
    );
    let f = r
        .findings
        .iter()
        .find(|f| f.rule == "single-replica-outage")
        .expect("finding");
    assert!(f.fix.contains("maxSurge: 1"), "{}", f.fix);
    assert!(f.message.contains("model takes to load"), "{}", f.message);
    // A LeaderWorkerSet of one group rolls it with maxUnavailable 1 by default.
    let lws = "apiVersion: leaderworkerset.x-k8s.io/v1\nkind: LeaderWorkerSet\nmetadata: {name: l}\nspec:\n  replicas: 1\n  leaderWorkerTemplate:\n    size: 2\n    workerTemplate:\n      spec:\n        terminationGracePeriodSeconds: 170\n        containers: [{name: v, image: vllm/vllm-openai:latest, ports: [{containerPort: 8000}]}]\n";
    assert!(fires(lws), "{:?}", rules_of(lws));
}

#[test]
fn long_request_servers_are_known() {
    for (image, args) in [
        ("ghcr.io/berriai/litellm:main-stable", "[--port, '4000']"),
        ("ghcr.io/ggml-org/llama.cpp:server", "[--port, '8080']"),
        ("ollama/ollama:latest", "[serve]"),
        ("localai/localai:latest", "[]"),
    ] {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  template:\n    spec:\n      containers:\n        - name: s\n          image: {image}\n          args: {args}\n          ports: [{{containerPort: 8000}}]\n"
        );
        let r = run("x.yaml", &text);
        assert!(
            r.findings
                .iter()
                .any(|f| f.rule == "grace-period-too-short"),
            "{image}: a 30 s grace period passed"
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("assuming requests of up to 150 s")),
            "{image}: {:?}",
            r.notes
        );
    }
}

#[test]
fn machine_readable_output_names_the_object() {
    let r = run("x.yaml", &vllm(1, "  strategy: {type: Recreate}\n"));
    let v: serde_json::Value =
        serde_json::from_str(&lameduck_lint::report::json(&r)).expect("json");
    let f = &v["findings"][0];
    assert_eq!(f["apiVersion"], "apps/v1");
    assert_eq!(f["kind"], "Deployment");
    assert_eq!(f["namespace"], "n");
    assert_eq!(f["name"], "d");
    assert!(v["input_errors"].as_array().is_some_and(|e| e.is_empty()));
    // An input that cannot be read: an error of its own, in JSON and in SARIF.
    let mut loaded = load_str(Path::new("bad.yaml"), "a: [\n");
    loaded
        .objects
        .extend(load_str(Path::new("x.yaml"), &vllm(2, "")).objects);
    let r = lint(&loaded, &Options::default());
    assert_eq!(r.input_errors.len(), 1, "{:?}", r.input_errors);
    let v: serde_json::Value =
        serde_json::from_str(&lameduck_lint::report::json(&r)).expect("json");
    assert!(
        v["input_errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("bad.yaml"))
    );
    let s: serde_json::Value =
        serde_json::from_str(&lameduck_lint::sarif::sarif(&r)).expect("sarif");
    let inv = &s["runs"][0]["invocations"][0];
    assert_eq!(inv["executionSuccessful"], false);
    let n = &inv["toolExecutionNotifications"][0];
    assert_eq!(n["level"], "error");
    assert!(
        n["message"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("bad.yaml"))
    );
    // The human summary does not look clean when an input was not read.
    let human = lameduck_lint::report::human(&r, |_| None);
    assert!(human.contains("error: bad.yaml"), "{human}");
    assert!(human.contains("could not be read"), "{human}");
}

/// Budgets and autoscalers count wherever they are in the input: before or after their
/// workload, in another part of a large stream (read in parts on several threads), or in
/// another file. `lint_paths` checks each object as it is read and keeps only what these
/// checks need; the findings must be exactly those of each workload's own budget and HPA.
#[test]
fn cross_object_checks_hold_across_order_parts_and_files() {
    let dir = std::env::temp_dir().join(format!("lameduck-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (mut stream, mut budgets) = (String::new(), String::new());
    let (mut blocked, mut crowded) = (Vec::new(), Vec::new());
    for i in 0..3000 {
        let ns = format!("n{}", i % 7);
        let workload = vllm(10, "")
            .replace(
                "name: d, namespace: n",
                &format!("name: d{i}, namespace: {ns}"),
            )
            .replace("app: d", &format!("app: d{i}"));
        // Every third workload has a budget that blocks (minAvailable: 100%), every fifth an
        // HPA at 90 % whose one spare pod is fewer than the default maxUnavailable (3 of 10).
        let pdb = (i % 3 == 0).then(|| {
            blocked.push(format!("d{i}"));
            format!(
                "---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n  minAvailable: 100%\n  selector: {{matchLabels: {{app: d{i}}}}}\n"
            )
        });
        let hpa = (i % 5 == 0).then(|| {
            crowded.push(format!("d{i}"));
            format!(
                "---\napiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {{name: h{i}, namespace: {ns}}}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: d{i}}}\n  minReplicas: 10\n  maxReplicas: 20\n  metrics:\n    - type: Resource\n      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 90}}}}\n"
            )
        });
        // Budgets before, after, or in another file; HPAs before or after.
        let (pdb, hpa) = (pdb.unwrap_or_default(), hpa.unwrap_or_default());
        match i % 4 {
            0 => stream.push_str(&format!("{pdb}{hpa}---\n{workload}")),
            1 => stream.push_str(&format!("---\n{workload}{pdb}{hpa}")),
            2 => {
                stream.push_str(&format!("{hpa}---\n{workload}"));
                budgets.push_str(&pdb);
            }
            _ => stream.push_str(&format!("---\n{workload}{hpa}{pdb}")),
        }
    }
    assert!(stream.len() > 1 << 20, "the stream must be read in parts");
    let (a, b) = (dir.join("a.yaml"), dir.join("b.yaml"));
    std::fs::write(&a, &stream).expect("write");
    std::fs::write(&b, &budgets).expect("write");
    let r = lameduck_lint::lint_paths(&[a, b], &Options::default());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(r.input_errors.is_empty(), "{:?}", r.input_errors);
    let about = |rule: &str, f: &dyn Fn(&lameduck_lint::Finding) -> String| {
        let mut v: Vec<String> = r
            .findings
            .iter()
            .filter(|x| x.rule == rule)
            .map(f)
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    // Reported at the budget, naming the workload.
    let pdb_workload = |f: &lameduck_lint::Finding| {
        let w = f
            .message
            .split(" of Deployment/")
            .nth(1)
            .unwrap_or_default();
        w.split(' ').next().unwrap_or_default().to_owned()
    };
    assert_eq!(about("pdb-blocks-drains", &pdb_workload), sorted(blocked));
    assert_eq!(
        about("maxunavailable-above-headroom", &|f| f.name.clone()),
        sorted(crowded)
    );
    // Each workload's own rules ran once: the fixture has no preStop.
    let own: Vec<String> = (0..3000).map(|i| format!("d{i}")).collect();
    assert_eq!(about("no-prestop", &|f| f.name.clone()), sorted(own));
    assert_eq!(r.objects, 3000 + 1000 + 600);
}
