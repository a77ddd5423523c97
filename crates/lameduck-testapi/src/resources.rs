//! The resource types this server knows: where they live on the wire and what they offer.

/// Subresources a resource type may offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sub {
    Status,
    Scale,
    Eviction,
    Proxy,
}

/// One served resource type.
#[derive(Debug)]
pub(crate) struct Resource {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) plural: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
    pub(crate) subresources: &'static [Sub],
}

/// Index into [`RESOURCES`].
pub(crate) type ResId = usize;

pub(crate) const POD: ResId = 0;
pub(crate) const NODE: ResId = 1;
pub(crate) const SERVICE: ResId = 3;
pub(crate) const NAMESPACE: ResId = 4;
pub(crate) const ENDPOINT_SLICE: ResId = 5;
pub(crate) const DEPLOYMENT: ResId = 6;
pub(crate) const REPLICA_SET: ResId = 7;
pub(crate) const STATEFUL_SET: ResId = 8;
pub(crate) const PDB: ResId = 10;

pub(crate) const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &[Sub::Status, Sub::Eviction, Sub::Proxy],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        subresources: &[Sub::Status],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        subresources: &[Sub::Status],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &[Sub::Status],
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        subresources: &[Sub::Status, Sub::Scale],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        subresources: &[Sub::Status, Sub::Scale],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        short_names: &["sts"],
        subresources: &[Sub::Status, Sub::Scale],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        subresources: &[Sub::Status],
    },
    Resource {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind: "PodDisruptionBudget",
        namespaced: true,
        short_names: &["pdb"],
        subresources: &[Sub::Status],
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
    },
    Resource {
        group: "autoscaling",
        version: "v2",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        kind: "HorizontalPodAutoscaler",
        namespaced: true,
        short_names: &["hpa"],
        subresources: &[Sub::Status],
    },
    // Stored only: the CRDs a test installs are not read; the custom resources below are
    // served whether or not their CRD was created.
    Resource {
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        kind: "CustomResourceDefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        subresources: &[Sub::Status],
    },
    // lameduck's own custom resource (`lameduck rainbow crd`).
    Resource {
        group: "lameduck.io",
        version: "v1alpha1",
        plural: "rainbowdeployments",
        singular: "rainbowdeployment",
        kind: "RainbowDeployment",
        namespaced: true,
        short_names: &["rainbow"],
        subresources: &[Sub::Status],
    },
    // KEDA's ScaledObject: stored only (no controller scales anything by it).
    Resource {
        group: "keda.sh",
        version: "v1alpha1",
        plural: "scaledobjects",
        singular: "scaledobject",
        kind: "ScaledObject",
        namespaced: true,
        short_names: &["so"],
        subresources: &[Sub::Status],
    },
];

impl Resource {
    /// `v1` or `group/version`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub(crate) fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub(crate) fn has(&self, sub: Sub) -> bool {
        self.subresources.contains(&sub)
    }

    /// How the real apiserver names the resource in messages: `pods`, `deployments.apps`.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

pub(crate) fn res(id: ResId) -> &'static Resource {
    // Ids only come from this table or the constants above, checked by a test.
    &RESOURCES[id]
}

pub(crate) fn find_by_path(group: &str, version: &str, plural: &str) -> Option<ResId> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

pub(crate) fn find_by_kind(api_version: &str, kind: &str) -> Option<ResId> {
    let (group, version) = split_api_version(api_version);
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.kind == kind)
}

/// `apps/v1` → (`apps`, `v1`); `v1` → (``, `v1`).
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// The groups served under `/apis`, in a stable order, with their one version.
pub(crate) fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_point_at_their_kinds() {
        assert_eq!(res(POD).kind, "Pod");
        assert_eq!(res(NODE).kind, "Node");
        assert_eq!(res(SERVICE).kind, "Service");
        assert_eq!(res(NAMESPACE).kind, "Namespace");
        assert_eq!(res(ENDPOINT_SLICE).kind, "EndpointSlice");
        assert_eq!(res(DEPLOYMENT).kind, "Deployment");
        assert_eq!(res(REPLICA_SET).kind, "ReplicaSet");
        assert_eq!(res(STATEFUL_SET).kind, "StatefulSet");
        assert_eq!(res(PDB).kind, "PodDisruptionBudget");
    }

    #[test]
    fn lookups() {
        assert_eq!(find_by_kind("v1", "Pod"), Some(POD));
        assert_eq!(
            find_by_kind("discovery.k8s.io/v1", "EndpointSlice"),
            Some(ENDPOINT_SLICE)
        );
        assert_eq!(
            find_by_path("policy", "v1", "poddisruptionbudgets"),
            Some(PDB)
        );
        assert_eq!(find_by_kind("events.k8s.io/v1", "Event"), Some(12));
        assert_eq!(res(DEPLOYMENT).qualified(), "deployments.apps");
        assert_eq!(find_by_kind("v2", "Pod"), None);
    }
}
