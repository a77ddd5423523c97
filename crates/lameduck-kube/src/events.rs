//! Kubernetes Events (core/v1, which `kubectl describe` and `kubectl get events` show) about a
//! pod or a node, built one way for every lameduck component.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

/// What an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `v1`, or the group and version (`lameduck.io/v1alpha1`).
    pub api_version: &'static str,
    /// `Pod`, `Node`, `RainbowDeployment`.
    pub kind: &'static str,
    /// The object's name.
    pub name: String,
    /// Its namespace (`None` for a Node: its Events go to `default`, as the kubelet's do).
    pub namespace: Option<String>,
    /// Its uid, when known.
    pub uid: Option<String>,
}

impl Subject {
    /// A pod.
    pub fn pod(namespace: &str, name: &str, uid: Option<String>) -> Subject {
        Subject {
            api_version: "v1",
            kind: "Pod",
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            uid,
        }
    }

    /// A node.
    pub fn node(name: &str, uid: Option<String>) -> Subject {
        Subject {
            api_version: "v1",
            kind: "Node",
            name: name.to_owned(),
            namespace: None,
            uid,
        }
    }

    /// A namespaced object of any kind.
    pub fn object(
        api_version: &'static str,
        kind: &'static str,
        namespace: &str,
        name: &str,
        uid: Option<String>,
    ) -> Subject {
        Subject {
            api_version,
            kind,
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            uid,
        }
    }

    /// The namespace the Event is created in.
    pub fn event_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// An Event about `subject`: `reason` in CamelCase, `message` for people, `warning` for the
/// Warning type, `component` naming who reports (`lameduck-gate`, `lameduck-agent`).
pub fn event(
    subject: &Subject,
    reason: &str,
    message: String,
    warning: bool,
    component: &str,
    action: &str,
) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Event {
        metadata: ObjectMeta {
            // The kubelet's and kubectl's naming: the object's name and a unique suffix.
            name: Some(format!("{}.{nanos:x}", subject.name)),
            namespace: Some(subject.event_namespace().to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(subject.api_version.into()),
            kind: Some(subject.kind.into()),
            name: Some(subject.name.clone()),
            namespace: subject.namespace.clone(),
            uid: subject.uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        action: Some(action.into()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(format!("lameduck.io/{component}")),
        reporting_instance: Some(subject.name.clone()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Event::default()
    }
}
