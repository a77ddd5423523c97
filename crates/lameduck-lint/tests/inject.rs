//! `inject`: the output lints clean, a second run changes nothing, and nothing but the gate's
//! fields changes (comments included).

use std::path::Path;
use std::time::Duration;

use lameduck_lint::inject::{InjectError, Injected, Mode, Options, inject};
use lameduck_lint::{Severity, lint};
use lameduck_manifest::load_str;
use serde_json::{Value, json};

mod common;
use common::fixture;

fn sidecar() -> Options {
    Options::default()
}

fn wrapper(entrypoint: Option<&str>) -> Options {
    Options {
        mode: Mode::Wrapper,
        entrypoint: entrypoint.map(|e| e.split_whitespace().map(str::to_owned).collect()),
        ..Options::default()
    }
}

fn objects(text: &str) -> Vec<Value> {
    let l = load_str(Path::new("out.yaml"), text);
    assert!(l.errors.is_empty(), "{:?}\n{text}", l.errors);
    l.objects.into_iter().map(|o| o.value).collect()
}

/// Injects, then checks what every injected manifest must satisfy: lint finds no error, a
/// second run is byte-for-byte the same, and every comment line of the input is still there.
fn injected(name: &str, text: &str, opts: &Options) -> Injected {
    let out = inject(Path::new(name), text, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let report = lint(
        &load_str(Path::new(name), &out.text),
        &lameduck_lint::Options {
            max_request: opts.max_request,
            ..Default::default()
        },
    );
    let errors: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{}", out.text);
    let again = inject(Path::new(name), &out.text, opts).expect("second run");
    assert_eq!(again.text, out.text, "{name}: a second run changed it");
    assert!(again.changed.is_empty());
    for line in text.lines().filter(|l| l.trim_start().starts_with('#')) {
        assert!(out.text.contains(line), "{name}: lost the comment {line:?}");
    }
    out
}

/// The object with every field inject may touch removed from the serving container (index
/// `c`) and the pod spec, so that the rest can be compared.
fn untouched(mut v: Value, c: usize) -> Value {
    let spec = v
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
        .expect("pod spec");
    for k in ["terminationGracePeriodSeconds", "initContainers", "volumes"] {
        spec.remove(k);
    }
    let container = spec["containers"][c].as_object_mut().expect("container");
    for k in [
        "command",
        "args",
        "readinessProbe",
        "livenessProbe",
        "lifecycle",
        "volumeMounts",
    ] {
        container.remove(k);
    }
    // Wrapper mode declares the gate's admin port beside the container's own.
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        ports.retain(|p| p["name"] != "lameduck-admin");
    }
    v
}

#[test]
fn seed_examples_in_both_modes() {
    for name in ["seed-naive.yaml", "seed-complete.yaml"] {
        let text = fixture(name);
        for opts in [sidecar(), wrapper(Some("vllm serve"))] {
            let out = injected(name, &text, &opts);
            assert_eq!(out.changed.len(), 1, "{name}");
            let before = objects(&text).remove(0);
            let after = objects(&out.text).remove(0);
            assert_eq!(untouched(after.clone(), 0), untouched(before, 0), "{name}");
            let pod = &after["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let admin_declared = c["ports"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["name"] == "lameduck-admin" && p["containerPort"] == 9901)
            });
            assert_eq!(admin_declared, opts.mode == Mode::Wrapper, "{name}");
            // 15 s convergence + 150 s (assumed for vLLM) + 5 s margin; the complete
            // example's 180 s is already enough and stays.
            let grace = if name == "seed-naive.yaml" { 170 } else { 180 };
            assert_eq!(pod["terminationGracePeriodSeconds"], grace, "{name}");
            assert_eq!(
                c["readinessProbe"]["httpGet"],
                json!({"path": "/ready", "port": 9901})
            );
            assert_eq!(c["lifecycle"]["preStop"]["httpGet"]["path"], "/drain");
            let gate_cmd = match opts.mode {
                Mode::Sidecar => {
                    let gate = &pod["initContainers"][0];
                    assert_eq!(gate["restartPolicy"], "Always");
                    // The engine's own liveness check follows it to its new port.
                    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 8001);
                    assert_eq!(c["args"], json!(["--port", "8001"]));
                    gate["command"].clone()
                }
                Mode::Wrapper => {
                    assert_eq!(pod["initContainers"][0]["name"], "lameduck-install");
                    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
                    assert_eq!(c["volumeMounts"][0]["mountPath"], "/lameduck/bin");
                    let cmd = c["command"].as_array().expect("command").clone();
                    assert_eq!(
                        cmd[cmd.len() - 3..],
                        [json!("--"), json!("vllm"), json!("serve")]
                    );
                    c["command"].clone()
                }
            };
            let words: Vec<&str> = gate_cmd
                .as_array()
                .expect("array")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let flag = |f: &str| words.iter().position(|w| *w == f).map(|i| words[i + 1]);
            assert_eq!(flag("--listen"), Some("0.0.0.0:8000"));
            assert_eq!(flag("--upstream"), Some("http://127.0.0.1:8001"));
            assert_eq!(flag("--grace-period"), Some(grace.to_string().as_str()));
        }
    }
}

#[test]
fn the_naive_example_reads_as_expected() {
    let out = injected("seed-naive.yaml", &fixture("seed-naive.yaml"), &sidecar());
    insta::assert_snapshot!("naive_sidecar", out.text);
}

const KUBECTL_STYLE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
    targetPort: http
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  annotations:
    lameduck.io/max-request-seconds: \"60\"
spec:
  replicas: 2
  template:
    spec:
      terminationGracePeriodSeconds: 300 # long on purpose
      volumes:
      - name: data
        emptyDir: {}
      containers:
      - name: log-shipper
        image: fluent/fluent-bit
      - name: server
        image: example/sse-server:1.2
        command: [\"/bin/sh\", \"-c\", \"exec server --port 8080 --workers 4\"]
        ports:
        - name: http
          containerPort: 8080
        volumeMounts:
        - name: data
          mountPath: /data
        readinessProbe:
          tcpSocket:
            port: http
        lifecycle:
          postStart:
            exec:
              command: [\"true\"]
";

#[test]
fn kubectl_style_flow_values_and_other_objects() {
    for opts in [sidecar(), wrapper(None)] {
        let out = injected("web.yaml", KUBECTL_STYLE, &opts);
        let objs = objects(&out.text);
        assert_eq!(
            objs[0],
            objects(KUBECTL_STYLE)[0],
            "the Service is untouched"
        );
        let pod = &objs[1]["spec"]["template"]["spec"];
        // Only the serving container: the log shipper declares no port.
        assert_eq!(out.changed[0].container, "server");
        assert_eq!(
            pod["containers"][0],
            objects(KUBECTL_STYLE)[1]["spec"]["template"]["spec"]["containers"][0]
        );
        // The longer grace period the author chose is kept.
        assert_eq!(pod["terminationGracePeriodSeconds"], 300);
        assert!(
            out.text
                .contains("terminationGracePeriodSeconds: 300 # long on purpose")
        );
        let c = &pod["containers"][1];
        assert_eq!(
            c["lifecycle"]["postStart"]["exec"]["command"],
            json!(["true"])
        );
        assert_eq!(c["lifecycle"]["preStop"]["httpGet"]["port"], 9901);
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .expect("command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            cmd.last().copied(),
            Some("exec server --port 8081 --workers 4"),
            "the port inside the shell string moves"
        );
        if opts.mode == Mode::Sidecar {
            assert_eq!(pod["volumes"], json!([{"name": "data", "emptyDir": {}}]));
            // The flow-style command is edited in place, still in flow style.
            assert!(
                out.text.contains(
                    "command: [\"/bin/sh\", \"-c\", \"exec server --port 8081 --workers 4\"]"
                ),
                "{}",
                out.text
            );
        } else {
            assert_eq!(pod["volumes"][1]["name"], "lameduck-bin");
            assert_eq!(c["volumeMounts"][1]["name"], "lameduck-bin");
            assert_eq!(cmd[..2], ["/lameduck/bin/lameduck", "gate"]);
            // kubectl style: new list items with their dash under the key.
            assert!(
                out.text.contains("\n      - name: lameduck-bin\n"),
                "{}",
                out.text
            );
        }
        // 15 + 60 + 5 = 80 < 300: the gate is told the pod's real grace period.
        let gate = if opts.mode == Mode::Sidecar {
            pod["initContainers"][0]["command"].clone()
        } else {
            c["command"].clone()
        };
        assert!(
            gate.to_string().contains("\"--grace-period\",\"300\""),
            "{gate}"
        );
    }
}

#[test]
fn json_and_lists() {
    let json_text = serde_json::to_string_pretty(&json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "tgi"},
            "spec": {"template": {"spec": {"containers": [{
                "name": "tgi",
                "image": "ghcr.io/huggingface/text-generation-inference:3",
                "env": [{"name": "PORT", "value": "3000"}],
                "ports": [{"containerPort": 3000}],
                "resources": {"limits": {"nvidia.com/gpu": 1}}
            }]}}}
        }]
    }))
    .expect("json");
    let out = injected(
        "tgi.json",
        &json_text,
        &wrapper(Some("text-generation-launcher")),
    );
    let v: Value = serde_json::from_str(&out.text).expect("the output is still JSON");
    let c = &v["items"][0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["env"][0], json!({"name": "PORT", "value": "3001"}));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
}

#[test]
fn what_cannot_be_injected_is_explained() {
    let generic = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  template:
    spec:
      containers:
        - name: api
          image: example/api
          command: [\"api-server\"]
          ports:
            - containerPort: 8080
";
    let err = |text: &str, opts: &Options| -> String {
        match inject(Path::new("api.yaml"), text, opts) {
            Err(e) => e.to_string(),
            Ok(o) => panic!("injected:\n{}", o.text),
        }
    };
    let no_max = err(generic, &sidecar());
    assert!(no_max.starts_with("api.yaml:"), "{no_max}");
    assert!(no_max.contains("--max-request"), "{no_max}");
    let opts = Options {
        max_request: Some(Duration::from_secs(30)),
        ..sidecar()
    };
    let no_port_flag = err(generic, &opts);
    assert!(
        no_port_flag.contains("cannot move the server off port 8080"),
        "{no_port_flag}"
    );
    assert!(no_port_flag.contains("api.yaml:9:"), "{no_port_flag}");
    // Once the port is explicit, it works.
    let fixed = generic.replace("[\"api-server\"]", "[\"api-server\", \"--port\", \"8080\"]");
    let out = injected("api.yaml", &fixed, &opts);
    // 15 s convergence + 30 s + 5 s.
    assert_eq!(
        objects(&out.text)[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        50
    );
    let taken = Options {
        admin_port: 8080,
        ..opts.clone()
    };
    assert!(err(&fixed, &taken).contains("--admin-port"));
    let named = Options {
        container: Some("nope".into()),
        ..opts
    };
    assert!(err(&fixed, &named).contains("it has: api"));
    assert!(matches!(
        inject(Path::new("bad.yaml"), "kind: [", &sidecar()),
        Err(InjectError::Input(_))
    ));
}

/// A vLLM workload of `kind` with one replica and `strategy` (written under `spec`).
fn single(kind: &str, strategy: &str) -> String {
    let pod = "      terminationGracePeriodSeconds: 30\n      containers:\n        - name: vllm\n          image: vllm/vllm-openai:v0.9.2\n          args: [--port, '8000']\n          ports: [{containerPort: 8000}]\n          readinessProbe: {httpGet: {path: /health, port: 8000}}\n";
    if kind == "LeaderWorkerSet" {
        return format!(
            "apiVersion: leaderworkerset.x-k8s.io/v1\nkind: LeaderWorkerSet\nmetadata: {{name: d}}\nspec:\n  replicas: 1\n{strategy}  leaderWorkerTemplate:\n    size: 2\n    leaderTemplate:\n      spec:\n{pod}    workerTemplate:\n      spec:\n{pod}",
            pod = pod
                .replace("\n      ", "\n        ")
                .replacen("      ", "        ", 1)
        );
    }
    format!(
        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: d}}\nspec:\n  replicas: 1\n{strategy}  selector: {{matchLabels: {{app: d}}}}\n  template:\n    metadata: {{labels: {{app: d}}}}\n    spec:\n{pod}"
    )
}

/// A single replica whose rollout takes it down first gets a surge, wherever its strategy is
/// written (or not written); `keep_strategy` and Recreate leave it, with a word.
#[test]
fn single_replica_rollouts_get_a_surge() {
    let cases = [
        (
            "Deployment",
            "  strategy:\n    rollingUpdate:\n      maxUnavailable: 1\n      maxSurge: 0\n",
            "/spec/strategy/rollingUpdate",
        ),
        (
            "Deployment",
            "  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 100%}}\n",
            "/spec/strategy/rollingUpdate",
        ),
        // LeaderWorkerSet's default: one group unavailable, no surge.
        (
            "LeaderWorkerSet",
            "",
            "/spec/rolloutStrategy/rollingUpdateConfiguration",
        ),
        (
            "LeaderWorkerSet",
            "  rolloutStrategy:\n    type: RollingUpdate\n",
            "/spec/rolloutStrategy/rollingUpdateConfiguration",
        ),
    ];
    for (kind, strategy, at) in cases {
        let text = single(kind, strategy);
        let before = lameduck_lint::lint(
            &load_str(Path::new("s.yaml"), &text),
            &lameduck_lint::Options::default(),
        );
        assert!(
            before
                .findings
                .iter()
                .any(|f| f.rule == "single-replica-outage"),
            "{kind} {strategy:?}: the fixture must start with the outage"
        );
        let out = injected("s.yaml", &text, &sidecar());
        let v = &objects(&out.text)[0];
        let ru = v
            .pointer(at)
            .unwrap_or_else(|| panic!("{kind}: no {at}\n{}", out.text));
        assert_eq!(ru["maxSurge"], json!(1), "{}", out.text);
        assert_eq!(ru["maxUnavailable"], json!(0), "{}", out.text);
        assert_eq!(out.adjusted.len(), 1, "{:?}", out.adjusted);
        let kept = inject(
            Path::new("s.yaml"),
            &text,
            &Options {
                keep_strategy: true,
                ..Options::default()
            },
        )
        .expect("inject");
        assert!(kept.adjusted.is_empty());
        assert!(
            kept.warnings.iter().any(|w| w.contains("--keep-strategy")),
            "{:?}",
            kept.warnings
        );
    }
    // More than one replica, or a rollout that keeps the replica: nothing to do.
    let two = single(
        "Deployment",
        "  strategy: {rollingUpdate: {maxUnavailable: 1}}\n",
    )
    .replace("replicas: 1", "replicas: 2");
    assert!(injected("s.yaml", &two, &sidecar()).adjusted.is_empty());
    let default = single("Deployment", "");
    assert!(injected("s.yaml", &default, &sidecar()).adjusted.is_empty());
    // Recreate is a choice (no room for a second pod): reported, not changed.
    let recreate = single("Deployment", "  strategy: {type: Recreate}\n");
    let out = inject(Path::new("s.yaml"), &recreate, &sidecar()).expect("inject");
    assert!(out.adjusted.is_empty());
    assert!(
        out.warnings
            .iter()
            .any(|w| w.starts_with("Deployment/d: one replica with the Recreate strategy")),
        "{:?}",
        out.warnings
    );
}

/// Knative's revision timeout is raised to the longest request; one long enough is kept.
#[test]
fn knative_timeout_is_raised() {
    let ksvc = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\nspec:\n  template:\n    spec:\n      timeoutSeconds: 60\n      containers:\n        - image: vllm/vllm-openai:v0.9.2\n          args: [--port, '8080']\n";
    let out = injected("k.yaml", ksvc, &sidecar());
    assert_eq!(
        objects(&out.text)[0].pointer("/spec/template/spec/timeoutSeconds"),
        Some(&json!(150))
    );
    let long = injected(
        "k.yaml",
        &ksvc.replace("timeoutSeconds: 60", "timeoutSeconds: 900"),
        &sidecar(),
    );
    assert!(long.adjusted.is_empty());
    // Unwritten (Knative's default, 300 s) and requests of 20 minutes: written, with a word
    // about the cluster's ceiling.
    let unwritten = ksvc.replace("      timeoutSeconds: 60\n", "");
    let out = injected(
        "k.yaml",
        &unwritten,
        &Options {
            max_request: Some(Duration::from_secs(1200)),
            ..Options::default()
        },
    );
    assert_eq!(
        objects(&out.text)[0].pointer("/spec/template/spec/timeoutSeconds"),
        Some(&json!(1200))
    );
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("max-revision-timeout-seconds")),
        "{:?}",
        out.warnings
    );
}

/// Budgets that let no pod go are named, and loosened only when asked, in their own kind of
/// value; a budget shared by two workloads is left to people.
#[test]
fn blocking_budgets_are_named_and_loosened_when_asked() {
    let workload = single("Deployment", "").replace("replicas: 1", "replicas: 7");
    for (spec, field, want) in [
        ("minAvailable: 100%", "minAvailable", json!("85%")),
        ("minAvailable: 7", "minAvailable", json!(6)),
        ("maxUnavailable: 0", "maxUnavailable", json!(1)),
        ("maxUnavailable: 0%", "maxUnavailable", json!(1)),
    ] {
        let text = format!(
            "{workload}---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: p}}\nspec:\n  {spec}\n  selector: {{matchLabels: {{app: d}}}}\n"
        );
        let told = Options {
            fix_budgets: true,
            ..Options::default()
        };
        let out = injected("b.yaml", &text, &told);
        assert_eq!(objects(&out.text)[1]["spec"][field], want, "{spec}");
        let untold = inject(Path::new("b.yaml"), &text, &sidecar()).expect("inject");
        assert_eq!(objects(&untold.text)[1], objects(&text)[1], "{spec}");
        assert!(
            untold
                .warnings
                .iter()
                .any(|w| w.starts_with("PodDisruptionBudget/p:") && w.contains("--fix-budgets")),
            "{:?}",
            untold.warnings
        );
    }
    let shared = format!(
        "{workload}---\n{}---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: p}}\nspec:\n  maxUnavailable: 0\n  selector: {{matchLabels: {{app: d}}}}\n",
        workload.replace("name: d}", "name: e}")
    );
    let out = inject(
        Path::new("b.yaml"),
        &shared,
        &Options {
            fix_budgets: true,
            ..Options::default()
        },
    )
    .expect("inject");
    assert!(
        out.adjusted
            .iter()
            .all(|a| !a.object.starts_with("PodDisruptionBudget")),
        "{:?}",
        out.adjusted
    );
}
