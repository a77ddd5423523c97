//! The Grafana dashboard and the alerts the chart ships (`charts/lameduck/files/`): promtool
//! (Debian's `prometheus` package, which `.ci/run` installs) checks the rule file and runs its
//! unit tests, every query of the dashboard parses as PromQL, and every metric either of them
//! names is one that a running gate, agent or rainbow controller exports on `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lameduck_cloud::Provider;
use lameduck_fakecloud::FakeMetadata;
use lameduck_testapi::TestApi;
use serde_json::Value;

use crate::agent::{agent, node_and_bystanders};
use crate::support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs promtool with `args` (in the repository's root); panics with its output unless it
/// succeeds.
pub(crate) fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}; install it (apt-get install prometheus; .ci/run does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The series names an OpenMetrics exposition offers to queries: a counter `x` is `x_total`, a
/// histogram `x` is `x_bucket`, `x_sum` and `x_count`.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            "info" => {
                names.insert(format!("{name}_info"));
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Every word of `text` that names a lameduck metric.
fn metric_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("lameduck_"))
        .map(str::to_owned)
        .collect()
}

/// Every PromQL expression of the dashboard: panel targets and annotations.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((format!("panel {} {}", p["id"], t["refId"]), expr.to_owned()));
        }
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_owned()));
        }
    }
    out
}

#[test]
fn the_alerts_pass_promtool_and_their_unit_tests() {
    let check = promtool(&[
        "check",
        "rules",
        "charts/lameduck/files/prometheus-rules.yaml",
    ]);
    assert!(check.contains("SUCCESS: 6 rules found"), "{check}");
    let test = promtool(&["test", "rules", "tests/observability/alerts_test.yaml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn the_dashboard_is_well_formed_and_every_query_parses() {
    let text = std::fs::read_to_string(root().join("charts/lameduck/files/grafana-dashboard.json"))
        .expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "lameduck-drains");
    let vars: BTreeSet<&str> = dash["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        ["datasource", "namespace", "pod"]
            .iter()
            .all(|v| vars.contains(v)),
        "{vars:?}"
    );
    // Panels: unique ids, on the 24-column grid, every query on the chosen data source.
    let mut ids = BTreeSet::new();
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {p}"
        );
        let (x, w) = (&p["gridPos"]["x"], &p["gridPos"]["w"]);
        let (x, w) = (x.as_u64().expect("x"), w.as_u64().expect("w"));
        assert!(x + w <= 24, "panel {} leaves the grid", p["title"]);
        if p["type"] != "row" {
            assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty());
        }
    }
    // Grafana's interval variables are not PromQL: give them values, then let promtool parse
    // every query as a recording rule.
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "{}", queries.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h");
        assert!(
            !expr.contains("$__"),
            "an unhandled Grafana variable in {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("json")
        ));
    }
    let file = std::env::temp_dir().join(format!("lameduck-dash-{}.yaml", std::process::id()));
    std::fs::write(&file, rules).expect("write");
    let check = promtool(&["check", "rules", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    assert!(
        check.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{check}"
    );
    // What the issue asks the dashboard to show is on it.
    let all: String = queries.iter().map(|(_, q)| q.as_str()).collect();
    for m in [
        "lameduck_gate_in_flight",
        "lameduck_gate_drain_phase",
        "lameduck_gate_drain_duration_seconds",
        "outcome=\"truncated\"",
        "lameduck_gate_propagation_lag_seconds",
        "lameduck_agent_notices_total",
        "lameduck_gate_handoffs_total",
        "lameduck_rainbow_in_flight",
        "lameduck_rainbow_retirements_total",
    ] {
        assert!(all.contains(m), "the dashboard does not show {m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    // A gate and an agent, as they run: their /metrics say what exists.
    // No engine behind it (it never gets ready; its metrics are all registered anyway), and
    // --kube against an API server that is down, so that its API-error counter has a series.
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let kubeconfig =
        std::env::temp_dir().join(format!("lameduck-obs-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n",
            free_port()
        ),
    )
    .expect("kubeconfig");
    let kc = kubeconfig.display().to_string();
    let gate = Gate::start(
        &[
            "--upstream",
            &upstream,
            "--kube",
            "--pod-name",
            "p",
            "--pod-namespace",
            "default",
            "--kubeconfig",
            &kc,
        ],
        None,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let gate_metrics = loop {
        let (_, m) = get(&gate.admin_url("/metrics"))
            .await
            .expect("gate /metrics");
        if m.contains("lameduck_gate_kube_errors_total{") {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no API error counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = std::fs::remove_file(&kubeconfig);
    let api = TestApi::start().await;
    node_and_bystanders(&api);
    let cloud = FakeMetadata::start(Provider::Aws).await;
    let agent = agent(&api, &cloud, Provider::Aws, &[]).await;
    let line = agent
        .wait_for_line("Agent watching for notices", Duration::from_secs(5))
        .await;
    let admin = line["admin"]
        .as_str()
        .expect("the agent logs its admin address");
    let (_, agent_metrics) = get(&format!("http://{admin}/metrics"))
        .await
        .expect("agent /metrics");
    // The rainbow controller against the same API server, with one RainbowDeployment (its
    // per-colour series exist once it has a colour).
    crate::cluster::service(&api);
    crate::rainbow::rainbow(&api, "1", "30s", "24h");
    let config = crate::cluster::kubeconfig(&api, "observability");
    let (_controller, port) = crate::rainbow::controller(&config, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rainbow_metrics = loop {
        if let Ok((_, m)) = get(&format!("http://127.0.0.1:{port}/metrics")).await
            && m.contains("lameduck_rainbow_in_flight{")
            && m.contains("lameduck_rainbow_colours{")
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rainbow controller's /metrics did not answer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut names = exported(&gate_metrics);
    names.extend(exported(&agent_metrics));
    names.extend(exported(&rainbow_metrics));
    assert!(names.contains("lameduck_gate_requests_total"), "{names:?}");
    assert!(names.contains("lameduck_agent_notices_total"), "{names:?}");
    assert!(names.contains("lameduck_rainbow_in_flight"), "{names:?}");

    for file in [
        "charts/lameduck/files/grafana-dashboard.json",
        "charts/lameduck/files/prometheus-rules.yaml",
        "tests/observability/alerts_test.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).expect("file");
        let named = metric_words(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = named.difference(&names).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics nothing exports: {unknown:?}\nexported: {names:?}"
        );
    }
}
