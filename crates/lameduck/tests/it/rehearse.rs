//! `lameduck rehearse` end to end: real engine-sim and gate processes, the kubelet emulator,
//! the lagging balancer and the load generator, at a time scale that keeps each run to a few
//! seconds. Each outcome class is produced by the situation that causes it in a cluster.
//!
//! These tests run alone (see .config/nextest.toml): their timing is scaled, so a busy
//! machine would stretch it.

use serde_json::Value;

use crate::support::bin;

/// Short streams (5–20 s), a quick cold start, a short load: about 60 unscaled seconds per
/// setup, 6 real seconds at ×10.
const FAST: &[&str] = &[
    "--time-scale",
    "10",
    "--cold-start",
    "2s",
    "--load-for",
    "40s",
    "--at",
    "15s",
    "--lengths",
    "uniform:50-200",
    "--tokens-per-second",
    "10",
    "--rate",
    "1",
    "--seed",
    "3",
];

struct Run {
    code: i32,
    json: Value,
    stderr: String,
}

fn rehearse(args: &[&str], stdin: Option<&str>) -> Run {
    let mut all = vec!["rehearse"];
    all.extend_from_slice(args);
    let out = crate::support::run_with_stdin(&all, stdin);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// FAST, less the flags `extra` sets, then `extra`.
fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = FAST
        .chunks(2)
        .filter(|pair| !extra.contains(&pair[0]))
        .flatten()
        .copied()
        .collect();
    v.push("--json");
    v.extend_from_slice(extra);
    v
}

fn setup<'a>(run: &'a Run, name: &str) -> &'a Value {
    run.json["setups"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["setup"]["name"] == name))
        .unwrap_or_else(|| panic!("no setup {name}: {}\n{}", run.json, run.stderr))
}

fn n(v: &Value, field: &str) -> u64 {
    v["summary"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no summary.{field}: {}", v["summary"]))
}

/// The first event of `pod` of this kind (`"deleted"`, `"sigterm"`, …), and its time.
fn event_time(s: &Value, pod: &str, kind: &str) -> Option<f64> {
    s["events"]
        .as_array()?
        .iter()
        .find(|e| e["pod"] == pod && e["kind"] == kind)
        .and_then(|e| e["t"].as_f64())
}

fn outcomes(s: &Value) -> Vec<(String, String)> {
    s["requests"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| {
                    (
                        r["outcome"].as_str().unwrap_or("").to_owned(),
                        r["detail"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn naive_truncates_streams_and_lameduck_loses_nothing() {
    let report = std::env::temp_dir().join(format!("rehearse-{}.html", std::process::id()));
    let report_arg = report.display().to_string();
    let run = rehearse(
        &args(&["--setups", "naive,lameduck", "--report", &report_arg]),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json["passed"], true);
    assert_eq!(run.json["subject"], "lameduck");

    let naive = setup(&run, "naive");
    let lameduck = setup(&run, "lameduck");
    // Both setups got the same requests.
    assert_eq!(n(naive, "requests"), n(lameduck, "requests"));
    assert!(n(naive, "requests") >= 20, "{}", naive["summary"]);
    // vLLM's default on SIGTERM: the deleted pod's streams end with finish_reason abort.
    assert!(n(naive, "truncated") >= 1, "{}", naive["summary"]);
    assert!(
        outcomes(naive)
            .iter()
            .any(|(o, d)| o == "truncated" && d.contains("abort")),
        "{:?}",
        outcomes(naive)
    );
    assert_eq!(n(lameduck, "lost"), 0, "{:?}", outcomes(lameduck));
    assert_eq!(n(lameduck, "ok"), n(lameduck, "requests"));
    // Latency is reported as a client would see it at real speed: the engine's own time to
    // first token (0.2 s unscaled) plus what the path added, counted in real time; the
    // rehearsal says how late its timers ran.
    for s in [naive, lameduck] {
        let added = s["summary"]["added_p50_ms"].as_f64().expect("added p50");
        let ttft = s["summary"]["ttft_p50"].as_f64().expect("ttft p50");
        assert!((0.0..1000.0).contains(&added), "{}", s["summary"]);
        assert!(
            (ttft - 0.2 - added / 1000.0).abs() < 1e-6,
            "{}",
            s["summary"]
        );
    }
    assert!(
        run.json["timing"]["samples"].as_u64().unwrap_or(0) > 100,
        "{}",
        run.json["timing"]
    );
    assert!(run.json["timing"]["trustworthy"].is_boolean());
    // The deleted pod's streams were served to the end, through the drain.
    let pod = lameduck["deleted"][0].as_str().expect("deleted pod");
    let served = lameduck["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r["pod"] == pod)
        .count();
    assert!(served >= 1);
    // Kubelet order: deletion, preStop (/drain, blocking until drained), then SIGTERM or
    // the gate's own exit; no SIGKILL.
    let deleted = event_time(lameduck, pod, "deleted").expect("deleted");
    let hook = event_time(lameduck, pod, "pre_stop_start").expect("preStop");
    let hook_end = event_time(lameduck, pod, "pre_stop_end").expect("preStop end");
    let removed = lameduck["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["pod"] == pod && e["state"] == "removed")
        .and_then(|e| e["t"].as_f64())
        .expect("removed");
    assert!(deleted <= hook && hook < hook_end);
    assert!(removed > deleted && removed < hook_end);
    assert_eq!(n(lameduck, "sigkills"), 0);
    // The gate's phases, from the report /drain answered, fall inside the hook.
    let phases: Vec<(&str, f64)> = lameduck["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["pod"] == pod && e["kind"] == "drain_phase")
        .map(|e| {
            (
                e["phase"].as_str().unwrap_or(""),
                e["t"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let names: Vec<&str> = phases.iter().map(|p| p.0).collect();
    assert_eq!(names, ["announcing", "finishing", "done"]);
    assert!(
        phases
            .iter()
            .all(|p| p.1 >= hook - 0.5 && p.1 <= hook_end + 0.5),
        "{phases:?}"
    );
    let lag = lameduck["summary"]["propagation_lag"]
        .as_f64()
        .expect("lag");
    assert!((0.99..10.0).contains(&lag), "{lag}");

    let html = std::fs::read_to_string(&report).expect("report written");
    assert!(html.starts_with("<!doctype html>"));
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(
        !html.contains("src=") && !html.contains("<link") && !html.contains("<script"),
        "self-contained"
    );
    assert!(html.contains(pod));
    // Rendered by a real browser, on screen and in print: no errors, every part there, the
    // tables visible when printed, no signal label over another.
    let shot = report.with_extension("png");
    let rendered = render_in_chromium(
        &report,
        &shot,
        &[
            "#summary",
            "#legend",
            "svg",
            "#events-naive",
            "#lost-naive",
            "#events-lameduck",
            "#lost-lameduck",
            "text.mark",
        ],
    );
    let _ = std::fs::remove_file(&report);
    let png = std::fs::read(&shot).expect("screenshot written");
    let _ = std::fs::remove_file(&shot);
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{rendered}"
    );
    for field in [
        "console_errors",
        "missing",
        "hidden_on_screen",
        "hidden_in_print",
        "overlapping_labels",
    ] {
        assert_eq!(
            rendered[field],
            serde_json::json!([]),
            "{field}: {rendered}"
        );
    }
    assert!(
        rendered["pdf_bytes"].as_u64().unwrap_or(0) > 10_000,
        "{rendered}"
    );
}

/// Renders `page` in headless Chromium (tests/clients/render_html.py) and returns what it
/// found.
fn render_in_chromium(page: &std::path::Path, shot: &std::path::Path, selectors: &[&str]) -> Value {
    let python = std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LAMEDUCK_TEST_PYTHON is not set: run the tests with scripts/test, which installs the Python clients")
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/render_html.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(page)
        .arg(shot)
        .args(selectors)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "render_html.py failed (is the `chromium` package installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from render_html.py")
}

#[test]
fn requests_sent_to_a_dead_pod_during_the_lag_are_refused() {
    // A long lag and many short requests: the balancer keeps routing to the deleted naive
    // pod, whose engine closed its port at SIGTERM.
    let run = rehearse(
        &args(&[
            "--setups",
            "naive",
            "--lag",
            "6s",
            "--rate",
            "8",
            "--lengths",
            "uniform:10-30",
        ]),
        None,
    );
    assert_eq!(
        run.code, 1,
        "the judged setup lost requests: {}",
        run.stderr
    );
    assert_eq!(run.json["passed"], false);
    let naive = setup(&run, "naive");
    assert!(n(naive, "refused") >= 1, "{}", naive["summary"]);
    assert!(n(naive, "routed_after_delete") >= 1);
    assert!(
        outcomes(naive)
            .iter()
            .any(|(o, d)| o == "refused" && d.contains("refused the connection")),
        "{:?}",
        outcomes(naive)
    );
}

#[test]
fn a_spot_reclaim_resets_streams_that_outlast_the_notice() {
    let run = rehearse(
        &args(&[
            "--setups",
            "lameduck",
            "--scenario",
            "spot",
            "--no-agent",
            "--notice",
            "3s",
            "--lengths",
            "uniform:150-250",
        ]),
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let s = setup(&run, "lameduck");
    assert!(n(s, "reset") >= 1, "{:?}", outcomes(s));
    let pod = s["deleted"][0].as_str().expect("deleted pod");
    let kill = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["pod"] == pod && e["kind"] == "sigkill")
        .expect("SIGKILL");
    assert!(
        kill["reason"].as_str().unwrap_or("").contains("node"),
        "{kill}"
    );
    let deleted = event_time(s, pod, "deleted").expect("deleted");
    assert!(kill["t"].as_f64().unwrap_or(0.0) - deleted >= 2.99);
}

/// With `lameduck agent` on the node (a fake AWS metadata service, the test API server and the
/// agent as a real process), the gate learns the notice as its deadline: streams that outlast
/// it end with the terminal event, none is reset (`--no-agent` resets them: the test above).
/// With stream handoff from the pod's gate alone the same holds: a relay through the reclaimed
/// pod cannot outlive it, so the gate ends the relays still running just before the node goes,
/// with the terminal event.
#[test]
fn a_spot_reclaim_with_the_agent_ends_every_stream_cleanly() {
    let run = rehearse(
        &args(&[
            "--setups",
            "lameduck,lameduck+pod-handoff",
            "--scenario",
            "spot",
            "--notice",
            "30s",
            "--lengths",
            "uniform:400-600",
        ]),
        None,
    );
    for name in ["lameduck", "lameduck+pod-handoff"] {
        let s = setup(&run, name);
        let notes = s["setup"]["notes"].to_string();
        assert!(
            notes.contains("the gate took the notice as its deadline"),
            "{name}: {notes}\n{}",
            run.stderr
        );
        assert_eq!(n(s, "reset"), 0, "{name}: {:?}", outcomes(s));
        assert!(n(s, "truncated") >= 1, "{name}: {:?}", outcomes(s));
        assert_eq!(
            n(s, "truncated_clean"),
            n(s, "truncated"),
            "{name}: every stream cut at the deadline got the terminal event: {:?}",
            outcomes(s)
        );
        // The pod finished before its node went: nothing was left for the node to kill.
        assert_eq!(n(s, "sigkills"), 0, "{name}: {}", s["events"]);
    }
}

/// Behind a `lameduck gate --gateway`, the client's connection outlives the reclaimed pod: a
/// 30 s notice against 90 s streams, and every stream completes on another pod, where the same
/// pods without the gateway end some with the terminal event.
#[test]
fn a_spot_reclaim_behind_a_gateway_completes_every_stream() {
    let run = rehearse(
        &args(&[
            "--setups",
            "lameduck,lameduck+handoff",
            "--scenario",
            "spot",
            "--notice",
            "30s",
            "--lengths",
            "900",
        ]),
        None,
    );
    let plain = setup(&run, "lameduck");
    assert!(
        n(plain, "truncated") >= 1,
        "the notice cut nothing, so this run proves nothing: {:?}\n{}",
        outcomes(plain),
        run.stderr
    );
    let s = setup(&run, "lameduck+handoff");
    assert_eq!(n(s, "requests"), n(plain, "requests"));
    assert_eq!(
        n(s, "lost"),
        0,
        "{:?}\n{}",
        outcomes(s),
        s["setup"]["notes"]
    );
    assert_eq!(n(s, "ok"), n(s, "requests"), "{:?}", outcomes(s));
    let notes = s["setup"]["notes"].to_string();
    assert!(
        notes.contains("the gate took the notice as its deadline"),
        "{notes}"
    );
    // The gateway counted the streams it carried past the pod's end.
    let carried = notes
        .split("gateway (lameduck gate --gateway) in front of the Service: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no gateway note: {notes}"));
    assert!(carried >= 1, "{notes}");
}

/// `--drain surge`: the replacement is Ready and in the balancer before the pod is deleted, so
/// the balancer never has fewer ready endpoints than the replicas.
#[test]
fn a_surge_first_drain_keeps_every_endpoint() {
    let run = rehearse(&args(&["--setups", "lameduck", "--drain", "surge"]), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = setup(&run, "lameduck");
    assert_eq!(n(s, "lost"), 0, "{:?}", outcomes(s));
    assert_eq!(n(s, "min_ready"), 3, "{}", s["summary"]);
    let notes = s["setup"]["notes"].to_string();
    assert!(notes.contains("surge first"), "{notes}");
    // The pod was deleted only after its replacement had joined the balancer.
    let pod = s["deleted"][0].as_str().expect("deleted pod");
    let deleted = event_time(s, pod, "deleted").expect("deleted");
    let joined = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["pod"] == "lameduck-3" && e["kind"] == "endpoint" && e["state"] == "ready")
        .filter_map(|e| e["t"].as_f64())
        .next()
        .expect("the replacement joined the balancer");
    assert!(joined <= deleted, "joined {joined}, deleted {deleted}");
}

#[test]
fn a_rollout_replaces_every_pod_without_loss() {
    let run = rehearse(
        &args(&[
            "--setups",
            "lameduck",
            "--scenario",
            "rollout",
            "--replicas",
            "2",
        ]),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = setup(&run, "lameduck");
    assert_eq!(s["deleted"].as_array().map(Vec::len), Some(2));
    assert_eq!(s["pods"].as_array().map(Vec::len), Some(4));
    assert_eq!(n(s, "lost"), 0, "{:?}", outcomes(s));
    // maxSurge 1 (25% of 2, rounded up), maxUnavailable 0: the first new pod is ready
    // before the first old one is deleted.
    let new_ready = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["pod"] == "lameduck-2" && e["kind"] == "ready" && e["ready"] == true)
        .and_then(|e| e["t"].as_f64())
        .expect("new pod ready");
    let first_delete = event_time(s, "lameduck-0", "deleted")
        .into_iter()
        .chain(event_time(s, "lameduck-1", "deleted"))
        .fold(f64::MAX, f64::min);
    assert!(new_ready <= first_delete, "{new_ready} {first_delete}");
    // Never more than replicas + maxSurge pods that are not being deleted.
    let events = s["events"].as_array().expect("events");
    for e in events.iter().filter(|e| e["kind"] == "created") {
        let t = e["t"].as_f64().unwrap_or(0.0);
        let alive = events
            .iter()
            .filter(|c| c["kind"] == "created" && c["t"].as_f64() <= Some(t))
            .filter(|c| {
                !events.iter().any(|d| {
                    d["kind"] == "deleted" && d["pod"] == c["pod"] && d["t"].as_f64() <= Some(t)
                })
            })
            .count();
        assert!(alive <= 3, "{alive} pods alive at {t}");
    }
}

/// A rainbow release with streams longer than the grace period: the old colour keeps serving
/// them after the Service has moved, and is deleted only once its gates have reported nothing
/// in flight for the quiet period. Without a gate the work cannot be read, so the old colour
/// stays until maxAge.
#[test]
fn a_rainbow_release_keeps_streams_longer_than_the_grace_period() {
    let run = rehearse(
        &args(&[
            "--setups",
            "naive,lameduck",
            "--scenario",
            "rainbow",
            "--replicas",
            "2",
            "--time-scale",
            "20",
            "--lengths",
            "uniform:1900-2100",
            "--rate",
            "0.3",
            "--load-for",
            "70s",
            "--quiet-period",
            "10s",
            "--max-age",
            "400s",
        ]),
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    for name in ["naive", "lameduck"] {
        let s = setup(&run, name);
        assert_eq!(n(s, "lost"), 0, "{name}: {:?}", outcomes(s));
        assert_eq!(n(s, "routed_after_delete"), 0, "{name}");
        assert_eq!(
            s["summary"]["min_ready"].as_u64(),
            Some(2),
            "{name}: the Service moves in one update, so it never has fewer endpoints"
        );
        let old = [format!("{name}-0"), format!("{name}-1")];
        assert_eq!(
            s["deleted"].as_array().map(|d| d.len()),
            Some(2),
            "{name}: the old colour's two pods"
        );
        let requests = s["requests"].as_array().expect("requests");
        let on_old: Vec<&Value> = requests
            .iter()
            .filter(|r| old.iter().any(|o| r["pod"] == o.as_str()))
            .collect();
        let on_new = requests.len() - on_old.len();
        assert!(
            !on_old.is_empty() && on_new > 0,
            "{name}: both colours served"
        );
        // Every stream on the old colour outlived the 180 s grace period, and ended before
        // its pod was deleted.
        let last_end = on_old
            .iter()
            .filter_map(|r| r["end"].as_f64())
            .fold(0.0, f64::max);
        for r in &on_old {
            let (start, end) = (
                r["start"].as_f64().unwrap_or(0.0),
                r["end"].as_f64().unwrap_or(0.0),
            );
            assert!(end - start > 180.0, "{name}: {r}");
        }
        let deleted = old
            .iter()
            .filter_map(|p| event_time(s, p, "deleted"))
            .fold(f64::MAX, f64::min);
        assert!(
            deleted >= last_end,
            "{name}: the old colour was deleted at {deleted}, its last stream ended at {last_end}"
        );
        let note = s["setup"]["notes"].to_string();
        if name == "lameduck" {
            assert!(
                note.contains("retired: nothing in flight for 10 s"),
                "{note}"
            );
            assert!(
                deleted < 400.0,
                "retired once idle, not at maxAge: {deleted}"
            );
        } else {
            assert!(note.contains("maxAge"), "{note}");
            assert!(deleted > 400.0, "kept until maxAge: {deleted}");
        }
    }
}

/// What `inject --kube` leaves (here a RainbowDeployment's template) is rehearsed without the
/// gate's Kubernetes side, which needs an API server, and the note says so.
#[test]
fn a_kube_gated_manifest_is_rehearsed_without_its_api_side() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/rainbow/injected.yaml")
        .display()
        .to_string();
    let run = rehearse(&args(&["-f", &file, "--setups", "naive"]), None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = setup(&run, "llama");
    assert_eq!(n(s, "lost"), 0, "{:?}", outcomes(s));
    let notes = s["setup"]["notes"].to_string();
    assert!(notes.contains("--kube is off"), "{notes}");
}

/// A Deployment with the gate in wrapper mode, probes on its admin port, a tcpSocket
/// liveness probe and /drain as preStop, next to the naive setup.
const GATED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: chat}
spec:
  replicas: 2
  template:
    spec:
      terminationGracePeriodSeconds: 90
      containers:
        - name: engine
          image: ghcr.io/example/lameduck
          command: ["lameduck", "gate", "--listen", "0.0.0.0:8080", "--grace-period", "90", "--", "vllm", "serve"]
          ports:
            - {name: http, containerPort: 8080}
            - {name: admin, containerPort: 9901}
          readinessProbe:
            httpGet: {path: /ready, port: admin}
            periodSeconds: 2
            failureThreshold: 1
          livenessProbe:
            tcpSocket: {port: http}
            periodSeconds: 5
          lifecycle:
            preStop:
              httpGet: {path: /drain, port: 9901}
"#;

/// A Deployment whose preStop only sleeps and whose readiness never notices the drain.
const SLEEPY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleepy}
spec:
  replicas: 2
  template:
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: engine
          image: vllm/vllm-openai
          ports: [{containerPort: 8000}]
          readinessProbe:
            tcpSocket: {port: 8000}
            periodSeconds: 2
          lifecycle:
            preStop:
              sleep: {seconds: 5}
"#;

#[test]
fn a_manifest_setup_is_read_and_rehearsed() {
    let run = rehearse(&args(&["-f", "-", "--setups", "naive"]), Some(GATED));
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.json);
    assert_eq!(run.json["subject"], "chat");
    let s = setup(&run, "chat");
    assert_eq!(s["setup"]["grace"], 90.0);
    assert_eq!(s["setup"]["server"]["type"], "gate");
    assert_eq!(s["setup"]["pre_stop"]["port"], "admin");
    assert_eq!(s["setup"]["liveness"]["handler"]["type"], "tcpSocket");
    // Two replicas from the manifest, plus the replacement.
    assert_eq!(s["pods"].as_array().map(Vec::len), Some(3));
    assert_eq!(n(s, "lost"), 0, "{:?}", outcomes(s));
    let liveness_ok = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "probe" && e["probe"] == "liveness" && e["ok"] == true)
        .count();
    assert!(liveness_ok >= 2);

    let run = rehearse(&args(&["-f", "-"]), Some(SLEEPY));
    assert_eq!(run.code, 1, "{}", run.stderr);
    let s = setup(&run, "sleepy");
    let pod = s["deleted"][0].as_str().expect("deleted");
    let hook = s["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["pod"] == pod && e["kind"] == "pre_stop_end")
        .expect("preStop end");
    assert_eq!(hook["detail"], "slept 5 s");
    let start = event_time(s, pod, "pre_stop_start").expect("start");
    assert!(hook["t"].as_f64().unwrap_or(0.0) - start >= 4.9);
    assert!(n(s, "truncated") >= 1, "{:?}", outcomes(s));
}

#[test]
fn a_users_own_server_runs_behind_the_gate() {
    let server = format!(
        "exec {} engine-sim --listen 127.0.0.1:$PORT --time-scale 10 --tokens-per-second 10 --output-tokens 1000000",
        bin()
    );
    let mut a = args(&["--setups", "lameduck", "--replicas", "2", "--"]);
    a.extend_from_slice(&["/bin/sh", "-c", &server]);
    let run = rehearse(&a, None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let s = setup(&run, "lameduck");
    assert_eq!(n(s, "lost"), 0, "{:?}", outcomes(s));
    assert!(n(s, "requests") >= 20);
}

#[test]
fn unusable_input_is_named() {
    let run = rehearse(&["--setups", "fancy"], None);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown setup \"fancy\""),
        "{}",
        run.stderr
    );
    let run = rehearse(&["--at", "200s"], None);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--at"), "{}", run.stderr);
    let run = rehearse(&["-f", "/nonexistent/deploy.yaml"], None);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/nonexistent/deploy.yaml"),
        "{}",
        run.stderr
    );
    let run = rehearse(
        &["-f", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"),
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no Deployment"), "{}", run.stderr);
}

/// A gated vLLM-style pod whose engine takes 30 s to load: a startup probe (every 5 s, up to
/// 24 failures) holds back a liveness probe that would restart it after 10 s.
const SLOW_START: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: slow}
spec:
  replicas: 2
  template:
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.10.1
          args: [--port, "8000"]
          ports: [{containerPort: 8000}]
          readinessProbe: {httpGet: {path: /health, port: 8000}, periodSeconds: 5}
          livenessProbe: {httpGet: {path: /health, port: 8000}, periodSeconds: 5, failureThreshold: 2}
          startupProbe: {httpGet: {path: /health, port: 8000}, periodSeconds: 5, failureThreshold: 24}
"#;

#[test]
fn startup_probes_are_rehearsed_and_unrehearsable_setups_stop() {
    let run = rehearse(
        &args(&["-f", "-", "--setups", "naive", "--cold-start", "30s"]),
        Some(SLOW_START),
    );
    let s = setup(&run, "slow");
    let events = s["events"].as_array().expect("events");
    let kills = events
        .iter()
        .filter(|e| e["kind"] == "liveness_kill" || e["kind"] == "startup_kill")
        .count();
    assert_eq!(
        kills, 0,
        "the startup probe held liveness back: {}",
        run.stderr
    );
    let startup_failures = events
        .iter()
        .filter(|e| e["kind"] == "probe" && e["probe"] == "startup" && e["ok"] == false)
        .count();
    assert!(startup_failures >= 2, "it waited through the cold start");
    assert!(n(s, "requests") >= 10, "{}", run.stderr);
    // Without the startup probe, the same liveness probe restarts the engine while it loads:
    // it never serves, and the run says why.
    let bare = SLOW_START
        .lines()
        .filter(|l| !l.contains("startupProbe"))
        .collect::<Vec<_>>()
        .join("\n");
    let run = rehearse(
        &args(&["-f", "-", "--setups", "naive", "--cold-start", "30s"]),
        Some(&bare),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("the liveness probe restarted them")
            && run.stderr.contains("add a startupProbe"),
        "{}",
        run.stderr
    );

    // What cannot be rehearsed faithfully stops the run, saying why.
    for (probe, words) in [
        (
            "readinessProbe: {grpc: {port: 8000}}",
            "a gRPC health check, which engine-sim does not answer",
        ),
        (
            "readinessProbe: {exec: {command: [/opt/health/check-ready, --strict]}}",
            "runs `/opt/health/check-ready`, which is not installed here",
        ),
        (
            "readinessProbe: {exec: {command: [sh, -c, 'nvidia-smi-probe && exit 0']}}",
            "runs `nvidia-smi-probe`",
        ),
    ] {
        let manifest = SLOW_START.replace(
            "readinessProbe: {httpGet: {path: /health, port: 8000}, periodSeconds: 5}",
            probe,
        );
        let run = rehearse(&args(&["-f", "-", "--setups", "naive"]), Some(&manifest));
        assert_eq!(run.code, 2, "{probe}: {}", run.stderr);
        assert!(
            run.stderr.contains("cannot be rehearsed faithfully") && run.stderr.contains(words),
            "{probe}: {}",
            run.stderr
        );
    }
}
