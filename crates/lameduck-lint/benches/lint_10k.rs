//! Lints 10,000 generated workloads (plus a PodDisruptionBudget and a Service each): parsing
//! with positions, typing, and every rule.
//!
//! `cargo bench -p lameduck-lint --bench lint_10k`

use std::path::Path;

use divan::{Bencher, black_box};
use lameduck_lint::{Options, lint};
use lameduck_manifest::load_str;

fn main() {
    divan::main();
}

/// `n` Deployments of a realistic size, each with its budget and Service, in one stream.
fn manifests(n: usize) -> String {
    let mut s = String::with_capacity(n * 1600);
    for i in 0..n {
        let grace = [30, 180, 600][i % 3];
        s.push_str(&format!(
            "---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
  namespace: ns-{ns}
  labels: {{app: app-{i}}}
spec:
  replicas: {replicas}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  selector: {{matchLabels: {{app: app-{i}}}}}
  template:
    metadata: {{labels: {{app: app-{i}}}}}
    spec:
      terminationGracePeriodSeconds: {grace}
      containers:
        - name: server
          image: {image}
          ports: [{{containerPort: 8000}}]
          readinessProbe:
            httpGet: {{path: /health, port: 8000}}
            periodSeconds: {period}
          livenessProbe:
            httpGet: {{path: /health, port: 8000}}
          lifecycle:
            preStop:
              exec: {{command: [sh, -c, 'touch /tmp/draining && sleep 15']}}
          resources:
            limits: {{cpu: '4', memory: 16Gi}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: app-{i}, namespace: ns-{ns}}}
spec:
  maxUnavailable: {mu}
  selector: {{matchLabels: {{app: app-{i}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: app-{i}, namespace: ns-{ns}}}
spec:
  selector: {{app: app-{i}}}
  ports: [{{port: 80, targetPort: 8000}}]
",
            ns = i % 50,
            replicas = 2 + i % 8,
            image = if i % 4 == 0 {
                "vllm/vllm-openai:v0.32.0"
            } else {
                "example/web:1.0"
            },
            period = [2, 10][i % 2],
            mu = i % 2,
        ));
    }
    s
}

#[divan::bench(sample_count = 5)]
fn parse_10k_workloads(bencher: Bencher) {
    let text = manifests(10_000);
    bencher.bench(|| {
        black_box(load_str(Path::new("bench.yaml"), &text))
            .objects
            .len()
    });
}

#[divan::bench(sample_count = 5)]
fn lint_10k_workloads(bencher: Bencher) {
    let text = manifests(10_000);
    let loaded = load_str(Path::new("bench.yaml"), &text);
    assert_eq!(loaded.objects.len(), 30_000);
    let options = Options::default();
    bencher.bench(|| black_box(lint(&loaded, &options)).findings.len());
}
