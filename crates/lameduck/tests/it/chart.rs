//! `charts/lameduck` rendered by Helm's own engine (PyPI `helm-python-sdk`, which
//! `scripts/test` installs) with several value sets: `helm lint` has no error, every object
//! validates against the Kubernetes schema, `lameduck lint` finds nothing, the agent's
//! arguments are ones `lameduck agent` accepts, and the default values meet the restricted
//! Pod Security Standard.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::{assert_schema_valid, bin, venv_bin};

/// Renders the chart with `values` into `out`; returns the script's JSON line.
fn render(values: &Value, out: &std::path::Path) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(venv_bin("python"))
        .arg(root.join("tests/clients/render_chart.py"))
        .arg(root.join("charts/lameduck"))
        .args(["ld", "lameduck-system", &values.to_string()])
        .arg(out)
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "render failed (install helm-python-sdk with scripts/test): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON line")
}

#[test]
fn the_chart_renders_lints_and_validates() {
    let dir = std::env::temp_dir().join(format!("lameduck-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sets = [
        ("defaults", json!({})),
        (
            "aws-host-network",
            json!({"agent": {"provider": "aws", "hostNetwork": true, "dryRun": true,
                             "gateTokenSecret": "gate-token", "extraArgs": ["--poll", "2"],
                             "podMonitor": {"enabled": true}}}),
        ),
        ("agent-off", json!({"agent": {"enabled": false}})),
        (
            "rainbow-one-namespace",
            json!({"rainbow": {"watchNamespace": "ai", "dryRun": true, "poll": "10s",
                               "autoscalers": {"kedaScaledObject": true},
                               "podMonitor": {"enabled": true}}}),
        ),
        ("rainbow-off", json!({"rainbow": {"enabled": false}})),
        (
            "observability",
            json!({"prometheusRule": {"enabled": true, "labels": {"release": "kube-prometheus-stack"}},
                   "grafanaDashboard": {"enabled": true, "namespace": "monitoring"},
                   "gatePodMonitor": {"enabled": true, "namespaces": ["ai"]}}),
        ),
    ];
    for (name, values) in sets {
        let out = dir.join(format!("{name}.yaml"));
        let result = render(&values, &out);
        assert_eq!(result["lint"]["errors"], json!([]), "{name}: {result}");
        let text = std::fs::read_to_string(&out).expect("rendered");
        let agent_on = values["agent"]["enabled"] != false;
        assert_eq!(text.contains("kind: DaemonSet"), agent_on, "{name}: {text}");
        rainbow_checks(name, &values, &text);
        if !agent_on {
            continue;
        }
        // The dashboard and the alerts, when asked for, carry the files the observability test
        // checks, unchanged.
        let observability = values["prometheusRule"]["enabled"] == true;
        assert_eq!(
            text.contains("kind: PrometheusRule")
                && text.contains("alert: LameduckAgentNoticeWithoutDrain")
                && text.contains("release: kube-prometheus-stack"),
            observability,
            "{name}"
        );
        assert_eq!(
            text.contains("grafana_dashboard: \"1\"")
                && text.contains("\"uid\": \"lameduck-drains\"")
                && text.contains("namespace: monitoring"),
            observability,
            "{name}"
        );
        if observability {
            let object = |kind: &str| {
                result["objects"]
                    .as_array()
                    .and_then(|o| o.iter().find(|o| o["kind"] == kind))
                    .unwrap_or_else(|| panic!("{name}: no {kind} in {result}"))
                    .clone()
            };
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let file =
                std::fs::read_to_string(root.join("charts/lameduck/files/grafana-dashboard.json"))
                    .expect("dashboard");
            let shipped: Value = serde_json::from_str(&file).expect("dashboard JSON");
            let in_map = object("ConfigMap")["data"]["lameduck-drains.json"].clone();
            let in_map: Value =
                serde_json::from_str(in_map.as_str().expect("data")).expect("JSON in the map");
            assert_eq!(
                in_map, shipped,
                "{name}: the dashboard changed on its way into the chart"
            );
            // The rendered rule's spec is a rule file (JSON is YAML): promtool accepts it.
            let spec = dir.join(format!("{name}-rules.json"));
            std::fs::write(&spec, object("PrometheusRule")["spec"].to_string()).expect("write");
            let check =
                crate::observability::promtool(&["check", "rules", &spec.display().to_string()]);
            assert!(check.contains("SUCCESS: 6 rules found"), "{name}: {check}");
        }
        // PodMonitor and PrometheusRule are CRDs the schema validator does not know: the rest
        // must validate.
        let core: Vec<&str> = text
            .split("\n---\n")
            .filter(|d| !d.contains("kind: PodMonitor") && !d.contains("kind: PrometheusRule"))
            .collect();
        assert_eq!(
            text.matches("kind: PodMonitor").count(),
            usize::from(values["agent"]["podMonitor"]["enabled"] == true)
                + usize::from(values["gatePodMonitor"]["enabled"] == true)
                + usize::from(values["rainbow"]["podMonitor"]["enabled"] == true),
            "{name}"
        );
        if values["gatePodMonitor"]["enabled"] == true {
            assert!(text.contains("- port: lameduck-admin"), "{name}");
        }
        let core_path = dir.join(format!("{name}-core.yaml"));
        std::fs::write(&core_path, core.join("\n---\n")).expect("write");
        assert_schema_valid(name, &[&core_path]);
        let lint = Command::new(bin())
            .args(["lint"])
            .arg(&out)
            .output()
            .expect("lint runs");
        let report = String::from_utf8_lossy(&lint.stdout);
        assert!(lint.status.success(), "{name}: {report}");
        assert!(report.contains(" 0 error(s)"), "{name}: {report}");
        // The agent's arguments, as rendered, are accepted by `lameduck agent`.
        let args: Vec<String> = text
            .lines()
            .skip_while(|l| l.trim() != "args:")
            .skip(1)
            .take_while(|l| l.trim_start().starts_with("- "))
            .map(|l| l.trim_start()[2..].trim_matches('"').to_owned())
            .collect();
        assert_eq!(
            args.first().map(String::as_str),
            Some("agent"),
            "{name}: {args:?}"
        );
        let help = Command::new(bin())
            .args(&args)
            .arg("--help")
            .env("LAMEDUCK_NODE_NAME", "n1")
            .output()
            .expect("agent --help runs");
        assert!(
            help.status.success(),
            "{name}: {args:?}: {}",
            String::from_utf8_lossy(&help.stderr)
        );
        // Restricted Pod Security Standard, unless the host network was asked for.
        if values["agent"]["hostNetwork"] != true {
            for needle in [
                "runAsNonRoot: true",
                "allowPrivilegeEscalation: false",
                "type: RuntimeDefault",
                "drop: [\"ALL\"]",
                "readOnlyRootFilesystem: true",
            ] {
                assert!(text.contains(needle), "{name}: {needle}");
            }
            assert!(!text.contains("hostNetwork"), "{name}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rainbow controller as rendered: present unless turned off, its arguments accepted by
/// `lameduck rainbow run`, a Role in the watched namespace instead of a ClusterRole, RBAC for
/// the autoscaler kinds asked for, and the chart's CRD exactly what `lameduck rainbow crd`
/// prints.
fn rainbow_checks(name: &str, values: &Value, text: &str) {
    let on = values["rainbow"]["enabled"] != false;
    assert_eq!(text.contains("name: ld-rainbow\n"), on, "{name}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let crd = Command::new(bin())
        .args(["rainbow", "crd"])
        .output()
        .expect("rainbow crd runs");
    assert_eq!(
        String::from_utf8_lossy(&crd.stdout),
        std::fs::read_to_string(
            root.join("charts/lameduck/crds/rainbowdeployments.lameduck.io.yaml")
        )
        .expect("the chart's CRD"),
        "charts/lameduck/crds/ is stale: lameduck rainbow crd > charts/lameduck/crds/rainbowdeployments.lameduck.io.yaml"
    );
    if !on {
        return;
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .windows(2)
        .position(|w| w[0].trim() == "args:" && w[1].trim() == "- rainbow")
        .unwrap_or_else(|| panic!("{name}: no rainbow args"));
    let args: Vec<String> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim_start().starts_with("- "))
        .map(|l| l.trim_start()[2..].trim_matches('"').to_owned())
        .collect();
    let help = Command::new(bin())
        .args(&args)
        .arg("--help")
        .output()
        .expect("rainbow run --help runs");
    assert!(
        help.status.success(),
        "{name}: {args:?}: {}",
        String::from_utf8_lossy(&help.stderr)
    );
    let watch = values["rainbow"]["watchNamespace"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        args.iter().any(|a| a == "--namespace"),
        !watch.is_empty(),
        "{name}: {args:?}"
    );
    assert_eq!(
        text.contains("kind: ClusterRole\nmetadata:\n  name: ld-rainbow\n"),
        watch.is_empty(),
        "{name}"
    );
    if !watch.is_empty() {
        assert!(
            text.contains(&format!(
                "kind: Role\nmetadata:\n  name: ld-rainbow\n  namespace: {watch}\n"
            )),
            "{name}"
        );
    }
    assert_eq!(
        text.contains("resources: [\"scaledobjects\"]"),
        values["rainbow"]["autoscalers"]["kedaScaledObject"] == true,
        "{name}"
    );
    assert!(
        text.contains("resources: [\"horizontalpodautoscalers\"]"),
        "{name}"
    );
}
