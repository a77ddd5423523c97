//! The EndpointSlice controller: one slice per selecting Service, listing the matching pods
//! with their ready, serving and terminating conditions.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::meta::{self, at};
use crate::ops;
use crate::pods;
use crate::resources::{ENDPOINT_SLICE, NODE, POD, SERVICE};
use crate::selector::LabelSelector;
use crate::store::Store;

pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub(crate) const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

fn managed(slice: &Value) -> bool {
    meta::labels(slice)
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .and_then(Value::as_str)
        == Some(MANAGED_BY)
}

fn service_of(slice: &Value) -> &str {
    meta::labels(slice)
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The endpoints and ports a Service's slice should hold.
fn desired(st: &Store, svc: &Value, selector: &LabelSelector) -> (Vec<Value>, Vec<Value>) {
    let ns = meta::namespace(svc);
    let publish_not_ready =
        at(svc, &["spec", "publishNotReadyAddresses"]).and_then(Value::as_bool) == Some(true);
    let mut selected: Vec<&Value> = st
        .list(POD, Some(ns))
        .filter(|p| selector.matches_object(p))
        .filter(|p| pods::pod_ip(p).is_some() && !pods::is_finished(p))
        .collect();
    selected.sort_by(|a, b| meta::name(a).cmp(meta::name(b)));

    let mut endpoints = Vec::new();
    for pod in &selected {
        let ready = pods::is_ready(pod);
        let terminating = pods::is_terminating(pod);
        let mut ep = json!({
            "addresses": [pods::pod_ip(pod).unwrap_or("")],
            "conditions": {
                "ready": publish_not_ready || (ready && !terminating),
                "serving": publish_not_ready || ready,
                "terminating": terminating,
            },
        });
        if let Some(node) = pods::node_name(pod) {
            ep["nodeName"] = Value::from(node);
            let zone = st
                .get(NODE, "", node)
                .and_then(|n| meta::labels(n))
                .and_then(|l| l.get("topology.kubernetes.io/zone"))
                .and_then(Value::as_str);
            if let Some(zone) = zone {
                ep["zone"] = Value::from(zone);
            }
        }
        ep["targetRef"] = json!({
            "kind": "Pod",
            "namespace": ns,
            "name": meta::name(pod),
            "uid": meta::uid(pod),
        });
        endpoints.push(ep);
    }

    let mut ports = Vec::new();
    if let Some(svc_ports) = at(svc, &["spec", "ports"]).and_then(Value::as_array) {
        for p in svc_ports {
            let number = match p.get("targetPort") {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => match s.parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => selected.iter().find_map(|pod| pods::named_port(pod, s)),
                },
                _ => p.get("port").and_then(Value::as_i64),
            };
            let Some(number) = number else { continue };
            let mut ep = json!({
                "name": p.get("name").and_then(Value::as_str).unwrap_or(""),
                "port": number,
                "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
            });
            if let Some(ap) = p.get("appProtocol").and_then(Value::as_str) {
                ep["appProtocol"] = Value::from(ap);
            }
            ports.push(ep);
        }
    }
    (endpoints, ports)
}

pub(crate) fn sync(st: &mut Store) {
    let services: Vec<Value> = st.list_cloned(SERVICE, None);
    let mut served: HashSet<(String, String)> = HashSet::new();
    for svc in services {
        let Some(sel_map) = at(&svc, &["spec", "selector"]).and_then(Value::as_object) else {
            continue;
        };
        if sel_map.is_empty() {
            continue;
        }
        let selector = LabelSelector::from_map(sel_map);
        let ns = meta::namespace(&svc).to_owned();
        let name = meta::name(&svc).to_owned();
        served.insert((ns.clone(), name.clone()));
        let (endpoints, ports) = desired(st, &svc, &selector);
        let existing: Vec<Value> = st
            .list(ENDPOINT_SLICE, Some(&ns))
            .filter(|s| managed(s) && service_of(s) == name)
            .cloned()
            .collect();
        match existing.split_first() {
            None => {
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{name}-"),
                        "namespace": ns,
                        "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                        "ownerReferences": [{
                            "apiVersion": "v1",
                            "kind": "Service",
                            "name": name,
                            "uid": meta::uid(&svc),
                            "controller": true,
                            "blockOwnerDeletion": true,
                        }],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                });
                if let Err(e) = ops::create(st, ENDPOINT_SLICE, slice, Some(&ns), false) {
                    tracing::warn!(service = %name, error = %e, "could not create the EndpointSlice");
                }
            }
            Some((first, extra)) => {
                let same = first.get("endpoints") == Some(&Value::Array(endpoints.clone()))
                    && first.get("ports") == Some(&Value::Array(ports.clone()));
                if !same {
                    let mut new = first.clone();
                    if let Some(top) = new.as_object_mut() {
                        top.insert("endpoints".into(), Value::Array(endpoints));
                        top.insert("ports".into(), Value::Array(ports));
                    }
                    let generation = meta::i64_at(&new, &["metadata", "generation"]).unwrap_or(1);
                    meta::obj_mut(&mut new, &["metadata"])
                        .insert("generation".into(), Value::from(generation + 1));
                    st.update(ENDPOINT_SLICE, new);
                }
                for s in extra {
                    st.remove(ENDPOINT_SLICE, &ns, meta::name(s));
                }
            }
        }
    }
    let orphans: Vec<(String, String)> = st
        .list(ENDPOINT_SLICE, None)
        .filter(|s| managed(s))
        .filter(|s| !served.contains(&(meta::namespace(s).to_owned(), service_of(s).to_owned())))
        .map(|s| (meta::namespace(s).to_owned(), meta::name(s).to_owned()))
        .collect();
    for (ns, name) in orphans {
        st.remove(ENDPOINT_SLICE, &ns, &name);
    }
}
