//! `lameduck plan` as a user runs it: a manifest and a vLLM histogram in, recommendations,
//! the simulated comparison as JSON, the chart, determinism, errors.

use serde_json::Value;

use crate::support::run_with_stdin;

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lameduck-lint/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A vLLM end-to-end latency histogram as `/metrics` exposes it: 1,000 requests, the longest
/// bucket at 120 s.
const HISTOGRAM: &str = r#"# HELP vllm:e2e_request_latency_seconds Histogram of end to end request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="llama"} 10.0
vllm:e2e_request_latency_seconds_bucket{le="10.0",model_name="llama"} 200.0
vllm:e2e_request_latency_seconds_bucket{le="30.0",model_name="llama"} 600.0
vllm:e2e_request_latency_seconds_bucket{le="60.0",model_name="llama"} 900.0
vllm:e2e_request_latency_seconds_bucket{le="120.0",model_name="llama"} 1000.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="llama"} 1000.0
vllm:e2e_request_latency_seconds_sum{model_name="llama"} 31000.0
vllm:e2e_request_latency_seconds_count{model_name="llama"} 1000.0
vllm:num_requests_running{model_name="llama"} 3.0
"#;

fn plan_json(extra: &[&str]) -> Value {
    let naive = fixture("seed-naive.yaml");
    let mut args = vec![
        "plan",
        "-f",
        &naive,
        "--latency",
        "-",
        "--json",
        "--compare",
    ];
    args.extend_from_slice(extra);
    let out = run_with_stdin(&args, Some(HISTOGRAM));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn histogram_in_recommendations_and_comparison_out() {
    let v = plan_json(&["--scenario", "drain,rollout"]);
    // p99.9 of the histogram: 99.9% lies 99% of the way through the 60–120 s bucket.
    let p999 = v["latency"]["p999"].as_f64().expect("p999");
    assert!((p999 - 119.4).abs() < 1e-6, "{p999}");
    let grace = v["plan"]["recommendations"]
        .as_array()
        .expect("recommendations")
        .iter()
        .find(|r| r["setting"] == "terminationGracePeriodSeconds")
        .expect("grace recommended");
    // The pod's 15 s convergence window (it has no preStop) + 119.4 s + 5 s margin, rounded
    // up.
    assert_eq!(grace["value"], "140", "{grace}");
    assert_eq!(grace["current"], "30");
    assert!(
        grace["arithmetic"]
            .as_str()
            .is_some_and(|a| a.contains("may run 119.4 s (p99.9 of histogram")),
        "{grace}"
    );
    // Drain also has its surge-first rows (tested below); here the specs as they are.
    let runs: Vec<Value> = v["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| !r["spec"].as_str().unwrap_or("").contains('+'))
        .cloned()
        .collect();
    assert_eq!(runs.len(), 4);
    for pair in runs.chunks(2) {
        let (cur, rec) = (&pair[0], &pair[1]);
        assert_eq!(cur["spec"], "current");
        assert_eq!(rec["spec"], "recommended");
        assert_eq!(cur["scenario"], rec["scenario"]);
        // Same seed, same arrivals for both.
        assert_eq!(cur["requests"]["total"], rec["requests"]["total"]);
        let lost = |r: &Value| {
            ["refused", "killed", "truncated"]
                .iter()
                .map(|k| r["requests"][k].as_u64().expect("count"))
                .sum::<u64>()
        };
        assert!(lost(cur) > 0, "the naive spec loses requests: {cur}");
        assert_eq!(lost(rec), 0, "the recommended one does not: {rec}");
    }
}

#[test]
fn same_seed_same_numbers() {
    let a = plan_json(&["--scenario", "rollout", "--seed", "9"]);
    let b = plan_json(&["--scenario", "rollout", "--seed", "9"]);
    assert_eq!(a["runs"], b["runs"]);
}

#[test]
fn table_and_chart() {
    let complete = fixture("seed-complete.yaml");
    let dir = std::env::temp_dir().join(format!("lameduck-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let chart = dir.join("plan.svg");
    let out = run_with_stdin(
        &[
            "plan",
            "-f",
            &complete,
            "--max-request",
            "150s",
            "--scenario",
            "spot-aws",
            "--chart",
            chart.to_str().expect("utf-8 path"),
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("terminationGracePeriodSeconds: 170   (now: 180)"),
        "{text}"
    );
    assert!(
        text.contains(
            "engine on SIGTERM: aborts in-flight requests (vLLM without --shutdown-timeout"
        ),
        "{text}"
    );
    assert!(text.contains("spot-aws"), "{text}");
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "three panels for one run"
    );
    // A legend for the shading and the dashed line, labelled time ticks, and no line drawn
    // on a panel's frame: every point lies strictly inside one of the frames.
    assert!(svg.contains(r#"<g id="legend">"#) && svg.contains("its start"));
    assert!(svg.matches(" min</text>").count() + svg.matches(" s</text>").count() >= 4);
    let attr = |tag: &str, name: &str| -> f64 {
        let at = tag.find(&format!(" {name}=\"")).expect(name) + name.len() + 3;
        tag[at..]
            .split('"')
            .next()
            .and_then(|v| v.parse().ok())
            .expect(name)
    };
    let frames: Vec<(f64, f64)> = svg
        .split("<rect ")
        .skip(1)
        .filter(|r| r.contains(r##"fill="#fafafa""##))
        .map(|r| (attr(r, "y"), attr(r, "y") + attr(r, "height")))
        .collect();
    assert_eq!(frames.len(), 3);
    for line in svg.split("<polyline points=\"").skip(1) {
        let points = line.split('"').next().unwrap_or_default();
        for p in points.split_whitespace() {
            let y: f64 = p.split(',').nth(1).and_then(|v| v.parse().ok()).expect("y");
            assert!(
                frames
                    .iter()
                    .any(|(top, bottom)| y > top + 1.0 && y < bottom - 1.0),
                "a point at y {y} is on or outside a frame {frames:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_name_what_to_fix() {
    let out = run_with_stdin(&["plan"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-f deployment.yaml, or --replicas N"));
    let naive = fixture("seed-naive.yaml");
    let out = run_with_stdin(
        &["plan", "-f", &naive, "--latency", "-"],
        Some("12\n15\nslow\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stdin: line 3: `slow` is not a duration"),
        "{err}"
    );
    let out = run_with_stdin(
        &[
            "plan",
            "--replicas",
            "4",
            "--latency",
            "-",
            "--metric",
            "nope",
        ],
        Some(HISTOGRAM),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vllm:e2e_request_latency_seconds"), "{err}");
}

/// `lameduck plan ARGS --json`, which must succeed; its runs.
fn plan_runs(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run_with_stdin(&all, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["runs"].as_array().expect("runs").clone()
}

/// The run of `spec` (`current`, `current + agent`, …).
fn run_of<'a>(runs: &'a [Value], spec: &str) -> &'a Value {
    runs.iter()
        .find(|r| r["spec"] == spec)
        .unwrap_or_else(|| panic!("no `{spec}` row in {runs:?}"))
}

/// On spot, a gated fleet is simulated with and without `lameduck agent`: without it the
/// node's end (or GKE's 15 s SIGKILL) cuts long streams silently; with it every one that
/// cannot finish ends cleanly at the notice's deadline.
#[test]
fn spot_with_and_without_the_agent() {
    let gated = kube_vllm();
    for scenario in ["spot-gcp", "spot-azure"] {
        let runs = plan_runs(&["-f", &gated, "--max-request", "90s", "--scenario", scenario]);
        let row = |spec: &str| run_of(&runs, spec);
        let (without, with) = (row("current"), row("current + agent"));
        let n = |r: &Value, k: &str| r["requests"][k].as_u64().expect("count");
        assert_eq!(n(without, "total"), n(with, "total"), "same arrivals");
        assert!(
            n(without, "killed") > 0,
            "{scenario}: without the agent long streams are cut silently: {without}"
        );
        assert_eq!(n(without, "truncated"), 0, "{scenario}: {without}");
        assert_eq!(
            n(with, "killed"),
            0,
            "{scenario}: with the agent nothing is cut silently: {with}"
        );
        assert!(
            n(with, "truncated") > 0,
            "{scenario}: what cannot finish ends cleanly: {with}"
        );
    }
}

/// A node drain is simulated as `kubectl drain` does it (evict, then replacements cold-start)
/// and as `lameduck drain` does it (surge first): the surge never has fewer pods in the balancer
/// than the Deployment's count, and its requests wait no longer.
#[test]
fn drain_evict_first_against_surge_first() {
    let naive = fixture("seed-naive.yaml");
    let runs = plan_runs(&[
        "-f",
        &naive,
        "--max-request",
        "90s",
        "--replicas",
        "8",
        "--pods-per-node",
        "4",
        "--scenario",
        "drain",
    ]);
    let row = |spec: &str| run_of(&runs, spec);
    let (evict, surge) = (row("current"), row("current + surge"));
    assert_eq!(evict["requests"]["total"], surge["requests"]["total"]);
    assert_eq!(surge["min_ready"], 8, "{surge}");
    assert!(
        evict["min_ready"].as_u64().expect("min_ready") <= 4,
        "kubectl drain takes the node's 4 pods out before replacements are up: {evict}"
    );
    let p99 = |r: &Value| r["queue_delay"]["p99"].as_f64().expect("p99");
    assert!(p99(surge) <= p99(evict), "{surge}\n{evict}");
    assert!(p99(evict) > 0.0, "the dip makes requests queue: {evict}");
}

/// `--scenario rainbow` compares a rolling update of the same pods (with their grace period,
/// and with one covering the longest request) against a rainbow release, on the same
/// arrivals. A RainbowDeployment's own retirement settings are used, and `--max-age` wins.
#[test]
fn rainbow_against_rolling_updates() {
    let rd = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/rainbow/injected.yaml")
        .display()
        .to_string();
    let runs = plan_runs(&["-f", &rd, "--max-request", "20m", "--scenario", "rainbow"]);
    let specs: Vec<&str> = runs.iter().filter_map(|r| r["spec"].as_str()).collect();
    assert_eq!(specs.len(), 3, "{specs:?}");
    let long = specs[1];
    assert!(long.starts_with("current + grace "), "{specs:?}");
    let n = |r: &Value, k: &str| r["requests"][k].as_u64().expect("count");
    let (rolling, grace, rainbow) = (
        run_of(&runs, "current"),
        run_of(&runs, long),
        run_of(&runs, "current + rainbow"),
    );
    assert_eq!(rolling["scenario"], "rollout");
    assert_eq!(rainbow["scenario"], "rainbow");
    assert_eq!(n(rolling, "total"), n(rainbow, "total"), "same arrivals");
    assert!(
        n(rolling, "truncated") > 0,
        "its 180 s grace cannot hold 20 min streams: {rolling}"
    );
    for r in [grace, rainbow] {
        assert_eq!(
            n(r, "ok"),
            n(r, "total"),
            "nothing lost with the long grace or the rainbow: {r}"
        );
    }
    let pod_h = |r: &Value| r["extra_pod_hours"].as_f64().expect("extra_pod_hours");
    assert!(pod_h(rainbow) > pod_h(rolling), "{rainbow}\n{rolling}");

    // maxAge 5 minutes retires the old colour with its streams in flight.
    let runs = plan_runs(&[
        "-f",
        &rd,
        "--max-request",
        "20m",
        "--scenario",
        "rainbow",
        "--max-age",
        "5m",
    ]);
    let rainbow = run_of(&runs, "current + rainbow");
    assert!(n(rainbow, "truncated") > 0, "{rainbow}");

    // A RainbowDeployment's template is planned for with every scenario, the rainbow included.
    let all = plan_runs(&["-f", &rd, "--max-request", "90s"]);
    assert!(all.iter().any(|r| r["scenario"] == "rainbow"), "{all:?}");
}

/// docs/examples/kube-vllm.yaml: a gated vLLM Deployment.
fn kube_vllm() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples/kube-vllm.yaml")
        .display()
        .to_string()
}

/// `--handoff` adds rows where the gates hand streams that cannot finish to a peer: each
/// stream the deadline ends is then either completed on the peer or still ended, and the
/// notes say why the grace period does not shrink. `--gateway` adds rows where clients reach
/// the pods through `lameduck gate --gateway`: those streams continue on peers past the
/// reclaimed pod's end, where the gates' own handoff cannot carry them.
#[test]
fn handoff_and_gateway_rows_account_for_every_stream_the_deadline_ends() {
    let gated = kube_vllm();
    let args = [
        "-f",
        &gated,
        "--max-request",
        "200s",
        "--scenario",
        "spot-aws",
        "--handoff",
        "--gateway",
    ];
    let runs = plan_runs(&args);
    let n = |r: &Value, k: &str| r["requests"][k].as_u64().expect("count");
    let (agent, handoff, gateway) = (
        run_of(&runs, "current + agent"),
        run_of(&runs, "current + agent + handoff"),
        run_of(&runs, "current + agent + gateway"),
    );
    assert_eq!(n(agent, "total"), n(gateway, "total"));
    assert!(
        n(handoff, "truncated") > 0,
        "the relays through the pod end with it: {handoff}"
    );
    assert_eq!(
        n(gateway, "truncated") + n(gateway, "killed"),
        0,
        "{gateway}"
    );
    assert_eq!(n(gateway, "handed_off"), n(agent, "truncated"), "{gateway}");
    assert_eq!(n(agent, "total"), n(handoff, "total"));
    assert!(n(agent, "truncated") > 0, "{agent}");
    assert_eq!(
        n(handoff, "handed_off") + n(handoff, "truncated"),
        n(agent, "truncated"),
        "{handoff}"
    );
    assert_eq!(n(handoff, "killed"), 0, "{handoff}");
    let mut all = vec!["plan"];
    all.extend_from_slice(&args);
    let out = run_with_stdin(&all, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the grace period still has to cover the longest request"),
        "{text}"
    );
    assert!(text.contains("handed off"), "{text}");
}
