#!/usr/bin/env python3
"""Writes a large manifest stream for `lameduck lint`'s scale benchmark: 10,000 workloads
written as Helm charts render them (block style, labels and annotations, env, volumes, probes,
resources, affinity, tolerations), with their Services, PodDisruptionBudgets and HPAs: about
18,000 objects and 22 MB of YAML. Deterministic.

Usage: bench/lint_corpus.py OUT.yaml [WORKLOADS]
Then:  /usr/bin/time -v target/release/lameduck lint --format json OUT.yaml > /dev/null
"""
import sys

def workload(i):
    kind = "StatefulSet" if i % 10 == 0 else "Deployment"
    inference = i % 4 == 0
    image = ["vllm/vllm-openai:v0.9.2", "lmsysorg/sglang:v0.4.9", "ghcr.io/example/api:1.%d" % (i % 30), "nginx:1.27"][i % 4]
    grace = [30, 120, 180, 600][i % 4]
    ns = "team-%d" % (i % 60)
    env = "".join(
        "            - name: VAR_%d\n              value: \"value-%d-%d\"\n" % (k, i, k) for k in range(2)
    )
    args = ("          args:\n            - --model\n            - org/model-%d\n            - --port\n            - \"8000\"\n"
            "            - --max-model-len\n            - \"8192\"\n") if inference else ""
    gpu = "              nvidia.com/gpu: \"1\"\n" if inference else ""
    service_name = "\n  serviceName: app-%d" % i if kind == "StatefulSet" else ""
    return f"""---
# Source: app-{i}/templates/workload.yaml
apiVersion: apps/v1
kind: {kind}
metadata:
  name: app-{i}
  namespace: {ns}
  labels:
    app.kubernetes.io/name: app-{i}
    app.kubernetes.io/instance: release-{i}
    app.kubernetes.io/version: "1.{i % 30}.0"
    app.kubernetes.io/managed-by: Helm
    helm.sh/chart: app-0.{i % 9}.0
  annotations:
    meta.helm.sh/release-name: release-{i}
    meta.helm.sh/release-namespace: {ns}
spec:{service_name}
  replicas: {2 + i % 8}
  selector:
    matchLabels:
      app.kubernetes.io/name: app-{i}
      app.kubernetes.io/instance: release-{i}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: app-{i}
        app.kubernetes.io/instance: release-{i}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "8000"
    spec:
      serviceAccountName: app-{i}
      terminationGracePeriodSeconds: {grace}
      securityContext:
        runAsNonRoot: true
        fsGroup: 2000
      containers:
        - name: server
          image: {image}
          imagePullPolicy: IfNotPresent
{args}          env:
{env}          ports:
            - name: http
              containerPort: 8000
              protocol: TCP
          readinessProbe:
            httpGet:
              path: /health
              port: http
            periodSeconds: {[2, 10][i % 2]}
            failureThreshold: 3
          livenessProbe:
            httpGet:
              path: /health
              port: http
            periodSeconds: 20
          lifecycle:
            preStop:
              exec:
                command: ["/bin/sh", "-c", "touch /tmp/draining && sleep 15"]
          resources:
            requests:
              cpu: "{1 + i % 4}"
              memory: {4 + i % 12}Gi
            limits:
              memory: {8 + i % 24}Gi
{gpu}          volumeMounts:
            - name: cache
              mountPath: /cache
            - name: config
              mountPath: /etc/app
              readOnly: true
      volumes:
        - name: cache
          emptyDir:
            sizeLimit: 20Gi
        - name: config
          configMap:
            name: app-{i}-config
      nodeSelector:
        kubernetes.io/os: linux
      tolerations:
        - key: nvidia.com/gpu
          operator: Exists
          effect: NoSchedule
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    app.kubernetes.io/name: app-{i}
"""

def service(i):
    return f"""---
apiVersion: v1
kind: Service
metadata:
  name: app-{i}
  namespace: team-{i % 60}
  labels:
    app.kubernetes.io/name: app-{i}
spec:
  type: ClusterIP
  selector:
    app.kubernetes.io/name: app-{i}
    app.kubernetes.io/instance: release-{i}
  ports:
    - name: http
      port: 80
      targetPort: http
"""

def pdb(i):
    field = ["maxUnavailable: 1", "minAvailable: 50%", "maxUnavailable: 25%", "minAvailable: 1"][i % 4]
    return f"""---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: app-{i}
  namespace: team-{i % 60}
spec:
  {field}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      app.kubernetes.io/name: app-{i}
"""

def hpa(i):
    return f"""---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: app-{i}
  namespace: team-{i % 60}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: app-{i}
  minReplicas: 2
  maxReplicas: 20
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: 70
"""

def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    objects = 0
    with open(out, "w") as f:
        for i in range(n):
            f.write(workload(i)); objects += 1
            if i % 5 < 2:
                f.write(service(i)); objects += 1
            if i % 4 == 0:
                f.write(pdb(i)); objects += 1
            if i % 7 == 0:
                f.write(hpa(i)); objects += 1
    import os
    print(f"{out}: {objects} objects, {os.path.getsize(out) / 1e6:.1f} MB", file=sys.stderr)

main()
