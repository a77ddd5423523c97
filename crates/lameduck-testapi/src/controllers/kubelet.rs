//! The kubelet's share of pod readiness: readiness probes, the `ContainersReady` and `Ready`
//! conditions with readiness gates, and `containerStatuses[].ready`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::meta::{self, at};
use crate::pods;
use crate::resources::POD;
use crate::store::{Prober, Shared, Store};

/// A pod annotation that takes the pod away from this controller (value `"off"`), for tests
/// that play the kubelet themselves through `TestApi::modify`. Not a Kubernetes annotation.
pub(crate) const KUBELET_OFF: &str = "testapi.lameduck.dev/kubelet";

fn managed(pod: &Value) -> bool {
    pods::pod_ip(pod).is_some() && meta::annotation(pod, KUBELET_OFF) != Some("off")
}

/// A readiness probe the server performs over the network.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    target: Target,
    period: Duration,
    timeout: Duration,
    initial_delay: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

#[derive(Debug, Clone)]
enum Target {
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// A port the kubelet could not resolve: the probe always fails.
    Unresolvable,
}

/// The container's readiness probe if it is one the server performs (httpGet, tcpSocket,
/// grpc); `None` for exec probes and containers without one, which count as ready.
fn network_probe(container: &Value, pod_ip: &str) -> Option<Probe> {
    let p = container.get("readinessProbe")?;
    let secs = |key: &str, default: u64, min: u64| -> Duration {
        let v = p
            .get(key)
            .and_then(Value::as_i64)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(default);
        Duration::from_secs(v.max(min))
    };
    let count = |key: &str, default: u32| -> u32 {
        p.get(key)
            .and_then(Value::as_i64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default)
            .max(1)
    };
    let host_of = |action: &Value| -> String {
        action
            .get("host")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or(pod_ip)
            .to_owned()
    };
    let target = if let Some(h) = p.get("httpGet") {
        match h
            .get("port")
            .and_then(|port| pods::resolve_port(port, container))
        {
            Some(port) => Target::Http {
                host: host_of(h),
                port,
                path: h
                    .get("path")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("/")
                    .to_owned(),
                headers: h
                    .get("httpHeaders")
                    .and_then(Value::as_array)
                    .map(|hs| {
                        hs.iter()
                            .filter_map(|x| {
                                Some((
                                    x.get("name")?.as_str()?.to_owned(),
                                    x.get("value")?.as_str().unwrap_or("").to_owned(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            None => Target::Unresolvable,
        }
    } else if let Some(t) = p.get("tcpSocket") {
        match t
            .get("port")
            .and_then(|port| pods::resolve_port(port, container))
        {
            Some(port) => Target::Tcp {
                host: host_of(t),
                port,
            },
            None => Target::Unresolvable,
        }
    } else if let Some(g) = p.get("grpc") {
        // gRPC health checks are approximated by a TCP connect.
        match g
            .get("port")
            .and_then(Value::as_i64)
            .and_then(|n| u16::try_from(n).ok())
        {
            Some(port) => Target::Tcp {
                host: pod_ip.to_owned(),
                port,
            },
            None => Target::Unresolvable,
        }
    } else {
        return None;
    };
    Some(Probe {
        target,
        period: secs("periodSeconds", 10, 1),
        timeout: secs("timeoutSeconds", 1, 1),
        initial_delay: secs("initialDelaySeconds", 0, 0),
        success_threshold: count("successThreshold", 1),
        failure_threshold: count("failureThreshold", 3),
    })
}

/// Starts probe tasks for pods that have an IP and network probes; stops those of pods that
/// are gone or changed IP.
pub(crate) fn sync_probers(st: &mut Store, shared: &Arc<Shared>) {
    let mut wanted: HashMap<String, (String, Vec<(String, Probe)>)> = HashMap::new();
    for pod in st.list(POD, None) {
        let Some(ip) = pods::pod_ip(pod) else {
            continue;
        };
        let uid = meta::uid(pod);
        if uid.is_empty() || pods::is_finished(pod) {
            continue;
        }
        let probes: Vec<(String, Probe)> = pods::serving_containers(pod)
            .into_iter()
            .filter_map(|c| {
                let name = c.get("name").and_then(Value::as_str)?.to_owned();
                Some((name, network_probe(c, ip)?))
            })
            .collect();
        if !probes.is_empty() {
            wanted.insert(uid.to_owned(), (ip.to_owned(), probes));
        }
    }
    let stale: Vec<String> = st
        .probers
        .iter()
        .filter(|(uid, p)| wanted.get(*uid).is_none_or(|(ip, _)| *ip != p.ip))
        .map(|(uid, _)| uid.clone())
        .collect();
    for uid in stale {
        if let Some(p) = st.probers.remove(&uid) {
            for t in p.tasks {
                t.abort();
            }
        }
        st.probe_results.retain(|(u, _), _| *u != uid);
    }
    for (uid, (ip, probes)) in wanted {
        if st.probers.contains_key(&uid) {
            continue;
        }
        let tasks = probes
            .into_iter()
            .map(|(container, probe)| {
                let weak = Arc::downgrade(shared);
                let shutdown = shared.shutdown.subscribe();
                shared
                    .handle
                    .spawn(run_probe(weak, shutdown, uid.clone(), container, probe))
                    .abort_handle()
            })
            .collect();
        st.probers.insert(uid, Prober { ip, tasks });
    }
}

/// Probes one container for as long as its pod is there, reporting changes of the verdict.
/// Like the kubelet, the verdict starts as failure and flips after `successThreshold`
/// consecutive successes or `failureThreshold` consecutive failures.
async fn run_probe(
    weak: Weak<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    uid: String,
    container: String,
    probe: Probe,
) {
    let sleep = |d: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>| {
        let mut shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = tokio::time::sleep(d) => true,
                () = crate::store::stopped(&mut shutdown) => false,
            }
        }
    };
    if !sleep(probe.initial_delay, &mut shutdown).await {
        return;
    }
    let (mut ready, mut successes, mut failures) = (false, 0u32, 0u32);
    loop {
        let ok = tokio::time::timeout(probe.timeout, probe_once(&probe.target))
            .await
            .unwrap_or(false);
        let was = ready;
        if ok {
            successes += 1;
            failures = 0;
            if successes >= probe.success_threshold {
                ready = true;
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= probe.failure_threshold {
                ready = false;
            }
        }
        if ready != was {
            let Some(shared) = weak.upgrade() else { return };
            tracing::debug!(%uid, %container, ready, "readiness probe verdict changed");
            shared.mutate(|st| {
                if st.probers.contains_key(&uid) {
                    st.probe_results
                        .insert((uid.clone(), container.clone()), ready);
                }
            });
        }
        if !sleep(probe.period, &mut shutdown).await {
            return;
        }
    }
}

async fn probe_once(target: &Target) -> bool {
    match target {
        Target::Unresolvable => false,
        Target::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
        Target::Http {
            host,
            port,
            path,
            headers,
        } => http_probe(host, *port, path, headers)
            .await
            .unwrap_or(false),
    }
}

async fn http_probe(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        req.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    Ok((200..400).contains(&code))
}

/// Recomputes `ContainersReady` and `Ready` for every pod with an IP and writes the pods whose
/// conditions changed.
pub(crate) fn sync_readiness(st: &mut Store) {
    let now = meta::now_rfc3339();
    let mut changed = Vec::new();
    for pod in st.list(POD, None) {
        if !managed(pod) {
            continue;
        }
        let mut new = pod.clone();
        if apply_readiness(&mut new, &st.probe_results, &now) {
            changed.push(new);
        }
    }
    for pod in changed {
        st.update(POD, pod);
    }
}

fn apply_readiness(pod: &mut Value, results: &HashMap<(String, String), bool>, now: &str) -> bool {
    let uid = meta::uid(pod).to_owned();
    let ip = pods::pod_ip(pod).unwrap_or("").to_owned();
    let finished = pods::is_finished(pod);
    let mut per_container: Vec<(String, bool)> = Vec::new();
    for c in pods::serving_containers(pod) {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let ready = if finished {
            false
        } else if network_probe(c, &ip).is_some() {
            results
                .get(&(uid.clone(), name.clone()))
                .copied()
                .unwrap_or(false)
        } else {
            true
        };
        per_container.push((name, ready));
    }
    let unready: Vec<&str> = per_container
        .iter()
        .filter(|(_, r)| !r)
        .map(|(n, _)| n.as_str())
        .collect();
    let containers_ready = unready.is_empty();
    let containers_msg = format!("containers with unready status: [{}]", unready.join(" "));

    let mut gate_problem: Option<String> = None;
    if let Some(gates) = at(pod, &["spec", "readinessGates"]).and_then(Value::as_array) {
        for g in gates {
            let Some(ct) = g.get("conditionType").and_then(Value::as_str) else {
                continue;
            };
            match pods::condition_status(pod, ct) {
                None => {
                    gate_problem = Some(format!(
                        "corresponding condition of pod readiness gate \"{ct}\" does not exist."
                    ));
                    break;
                }
                Some("True") => {}
                Some(other) => {
                    gate_problem = Some(format!(
                        "the status of pod readiness gate \"{ct}\" is not \"True\", but {other}"
                    ));
                    break;
                }
            }
        }
    }

    let mut changed = if containers_ready {
        set_condition(pod, "ContainersReady", "True", None, now)
    } else {
        set_condition(
            pod,
            "ContainersReady",
            "False",
            Some(("ContainersNotReady", containers_msg.as_str())),
            now,
        )
    };
    let ready_change = match (&gate_problem, containers_ready) {
        (_, false) => set_condition(
            pod,
            "Ready",
            "False",
            Some(("ContainersNotReady", containers_msg.as_str())),
            now,
        ),
        (Some(msg), true) => set_condition(
            pod,
            "Ready",
            "False",
            Some(("ReadinessGatesNotReady", msg)),
            now,
        ),
        (None, true) => set_condition(pod, "Ready", "True", None, now),
    };
    changed |= ready_change;

    if let Some(statuses) = pod
        .get_mut("status")
        .and_then(|s| s.get_mut("containerStatuses"))
        .and_then(Value::as_array_mut)
    {
        for s in statuses {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("");
            if let Some((_, ready)) = per_container.iter().find(|(n, _)| n == name)
                && s.get("ready").and_then(Value::as_bool) != Some(*ready)
                && let Some(m) = s.as_object_mut()
            {
                m.insert("ready".into(), Value::from(*ready));
                changed = true;
            }
        }
    }
    changed
}

/// Sets a pod condition; `lastTransitionTime` moves only when the status does. Returns whether
/// anything changed.
fn set_condition(
    pod: &mut Value,
    kind: &str,
    status: &str,
    why: Option<(&str, &str)>,
    now: &str,
) -> bool {
    let st = meta::obj_mut(pod, &["status"]);
    let conds = st.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    let Some(list) = conds.as_array_mut() else {
        return false;
    };
    let idx = list
        .iter()
        .position(|c| c.get("type").and_then(Value::as_str) == Some(kind));
    let (reason, message) = match why {
        Some((r, m)) => (Some(r), Some(m)),
        None => (None, None),
    };
    match idx {
        Some(i) => {
            let c = &mut list[i];
            let same = c.get("status").and_then(Value::as_str) == Some(status)
                && c.get("reason").and_then(Value::as_str) == reason
                && c.get("message").and_then(Value::as_str) == message;
            if same {
                return false;
            }
            let Some(m) = c.as_object_mut() else {
                return false;
            };
            if m.get("status").and_then(Value::as_str) != Some(status) {
                m.insert("lastTransitionTime".into(), Value::from(now));
            }
            m.insert("status".into(), Value::from(status));
            match reason {
                Some(r) => m.insert("reason".into(), Value::from(r)),
                None => m.remove("reason"),
            };
            match message {
                Some(msg) => m.insert("message".into(), Value::from(msg)),
                None => m.remove("message"),
            };
            true
        }
        None => {
            let mut c = json!({
                "type": kind,
                "status": status,
                "lastProbeTime": null,
                "lastTransitionTime": now,
            });
            if let (Some(r), Some(m)) = (reason, message) {
                c["reason"] = Value::from(r);
                c["message"] = Value::from(m);
            }
            list.push(c);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(gates: Value, probe: Value) -> Value {
        json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {
                "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": probe}],
                "readinessGates": gates,
            },
            "status": {"podIP": "127.0.0.9", "conditions": []}
        })
    }

    #[test]
    fn no_probe_and_no_gates_is_ready() {
        let mut p = pod(json!([]), Value::Null);
        assert!(apply_readiness(&mut p, &HashMap::new(), "t0"));
        assert!(pods::is_ready(&p));
        assert!(
            !apply_readiness(&mut p, &HashMap::new(), "t1"),
            "no change, no write"
        );
    }

    #[test]
    fn gates_and_probes() {
        let mut p = pod(
            json!([{"conditionType": "example.com/lb"}]),
            json!({"httpGet": {"path": "/ready", "port": "http"}}),
        );
        let mut results = HashMap::new();
        apply_readiness(&mut p, &results, "t0");
        assert_eq!(pods::condition_status(&p, "ContainersReady"), Some("False"));
        assert!(!pods::is_ready(&p));
        results.insert(("u1".to_owned(), "app".to_owned()), true);
        apply_readiness(&mut p, &results, "t1");
        assert_eq!(pods::condition_status(&p, "ContainersReady"), Some("True"));
        assert!(!pods::is_ready(&p), "the gate has no condition yet");
        p["status"]["conditions"]
            .as_array_mut()
            .expect("array")
            .push(json!({"type": "example.com/lb", "status": "True"}));
        assert!(apply_readiness(&mut p, &results, "t2"));
        assert!(pods::is_ready(&p));
    }

    #[test]
    fn named_ports_resolve() {
        let p = pod(
            json!([]),
            json!({"httpGet": {"path": "/ready", "port": "http"}}),
        );
        let c = &p["spec"]["containers"][0];
        let probe = network_probe(c, "127.0.0.9").expect("network probe");
        match probe.target {
            Target::Http { port, ref path, .. } => {
                assert_eq!(port, 8080);
                assert_eq!(path, "/ready");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(probe.period, Duration::from_secs(10));
        assert_eq!(probe.failure_threshold, 3);
        let exec = json!({"name": "x", "readinessProbe": {"exec": {"command": ["true"]}}});
        assert!(network_probe(&exec, "127.0.0.9").is_none());
    }
}
