//! `lameduck lint` as a user runs it: files, directories, stdin, formats, exit statuses.

use std::process::Command;

use crate::support::bin;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lameduck-lint/tests/fixtures")
}

fn lint(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let mut all = vec!["lint"];
    all.extend_from_slice(args);
    let out = crate::support::run_with_stdin(&all, stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn exit_status_follows_the_findings() {
    let complete = fixtures().join("seed-complete.yaml");
    let naive = fixtures().join("seed-naive.yaml");
    let (code, out) = lint(&[complete.to_str().expect("path")], None);
    assert_eq!(code, 0, "{out}");
    let (code, out) = lint(&[naive.to_str().expect("path")], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seed-naive.yaml:11:5"), "{out}");
    let (code, _) = lint(&["--fail-on", "never", naive.to_str().expect("path")], None);
    assert_eq!(code, 0);
    // A directory: both files.
    let (code, out) = lint(
        &["--format", "json", fixtures().to_str().expect("path")],
        None,
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["objects"], 2);
    let (code, out) = lint(
        &["--format", "sarif", complete.to_str().expect("path")],
        None,
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("sarif");
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["results"], serde_json::json!([]));
}

#[test]
fn stdin_and_unusable_input() {
    let naive = std::fs::read_to_string(fixtures().join("seed-naive.yaml")).expect("fixture");
    let (code, out) = lint(&["-"], Some(&naive));
    assert_eq!(code, 1);
    assert!(out.contains("-:11:5"), "{out}");
    // Malformed YAML is reported with its position; the other input is still checked.
    let complete = fixtures().join("seed-complete.yaml");
    let (code, out) = lint(&["-", complete.to_str().expect("path")], Some("kind: [\n"));
    assert_eq!(code, 2);
    assert!(out.contains("-:2:1: invalid YAML"), "{out}");
    assert!(out.contains("1 object(s)"), "{out}");
    let (code, out) = lint(&["/no/such/file.yaml"], None);
    assert_eq!(code, 2);
    assert!(out.contains("cannot read"), "{out}");
}

#[test]
fn config_file_turns_rules_off_changes_severities_and_sets_defaults() {
    let dir = std::env::temp_dir().join(format!("lameduck-lint-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("lameduck.yaml");
    let naive = fixtures().join("seed-naive.yaml");
    let naive = naive.to_str().expect("path");
    let cfg = config.to_str().expect("path");
    std::fs::write(&config, "rules:\n  no-prestop: off\n  grace-period-too-short: warning\n  liveness-same-as-readiness: warning\n").expect("write");
    // No error left: exit 0 with the default --fail-on error.
    let (code, out) = lint(&["--config", cfg, naive], None);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("[no-prestop]"), "{out}");
    assert!(out.contains("warning[grace-period-too-short]"), "{out}");
    // failOn from the file; a flag wins over it.
    std::fs::write(&config, "failOn: warning\nmaxRequest: 10s\n").expect("write");
    let (code, out) = lint(&["--config", cfg, naive], None);
    assert_eq!(code, 1, "{out}");
    // maxRequest 10 s: the default 30 s grace period now fits (15 s window + 10 + 5 s).
    assert!(!out.contains("[grace-period-too-short]"), "{out}");
    let (code, _) = lint(&["--config", cfg, "--fail-on", "never", naive], None);
    assert_eq!(code, 0);
    // An unknown rule is an error naming the file.
    std::fs::write(&config, "rules:\n  no-such-rule: off\n").expect("write");
    let out = Command::new(bin())
        .args(["lint", "--config", cfg, naive])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown rule `no-such-rule`") && err.contains("lameduck.yaml"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `--kube` example in docs/kube.md lints clean, and is exactly what `inject --kube
/// --deletion-cost` writes for the plain Deployment in its header (so the docs cannot drift).
#[test]
fn the_kube_example_lints_clean_and_is_injects_output() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/kube-vllm.yaml");
    let path = example.to_str().expect("utf-8 path");
    let (code, out) = lint(&[path], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");
    let text = std::fs::read_to_string(&example).expect("example");
    for needle in [
        "--kube",
        "--deletion-cost",
        "conditionType: lameduck.io/serving",
        "fieldPath: metadata.name",
        "kind: Role",
        "kind: RoleBinding",
    ] {
        assert!(text.contains(needle), "{needle} missing from the example");
    }
    // Injecting it again changes nothing: it is already behind the gate.
    let again = Command::new(bin())
        .args(["inject", "--kube", "--deletion-cost", "-q", path])
        .output()
        .expect("inject runs");
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), text);
}

/// The agent's DaemonSet in docs/agent.md and the handoff gateway in docs/handoff.md lint
/// clean (the gateway's long grace period is not long-lived GPU work), and validate against
/// the Kubernetes schema.
#[test]
fn the_agent_daemonset_and_the_handoff_gateway_lint_clean() {
    for name in ["agent-daemonset", "handoff-gateway"] {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../docs/examples/{name}.yaml"));
        let (code, out) = lint(&[example.to_str().expect("utf-8 path")], None);
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.contains("0 error(s), 0 warning(s)"), "{name}: {out}");
        assert!(!out.contains("long-lived-work"), "{name}: {out}");
        crate::support::assert_schema_valid(name, &[&example]);
    }
}

/// `examples/ENGINE/`: each server's Deployment as people write it, and what `inject --kube`
/// leaves of it. The injected file is exactly today's `inject` output (the examples cannot
/// drift), lints with no finding, and both validate against the Kubernetes schema.
#[test]
fn the_engine_examples_are_injects_output_lint_clean_and_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for engine in ["vllm", "sglang", "tgi", "triton", "ollama"] {
        let dir = root.join(engine);
        let plain = dir.join("deployment.yaml");
        let injected = dir.join("injected.yaml");
        let out = Command::new(bin())
            .args(["inject", "--kube", "-q"])
            .arg(&plain)
            .output()
            .expect("inject runs");
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = std::fs::read_to_string(&injected).expect("injected example");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{engine}: examples/{engine}/injected.yaml is not what inject writes today; regenerate it with `lameduck inject --kube examples/{engine}/deployment.yaml > examples/{engine}/injected.yaml`"
        );
        let (code, report) = lint(&[injected.to_str().expect("utf-8 path")], None);
        assert_eq!(code, 0, "{engine}: {report}");
        assert!(
            report.contains("0 error(s), 0 warning(s)"),
            "{engine}: {report}"
        );
        crate::support::assert_schema_valid(engine, &[&plain, &injected]);
    }
}
