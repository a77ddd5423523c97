//! A small Kubernetes API server for tests, in-process, on `127.0.0.1`.
//!
//! [`TestApi::start`] serves a faithful subset of the real HTTP API — the same paths, JSON
//! shapes, `Status` errors, watch streams and subresources — so unmodified `kube` clients
//! work against it, and it runs the controllers a drain depends on. Objects are plain
//! [`serde_json::Value`]s; this crate does not depend on `kube`.
//!
//! ```no_run
//! # async fn demo() {
//! use lameduck_testapi::TestApi;
//! use serde_json::json;
//!
//! let api = TestApi::start().await;
//! api.create(json!({
//!     "apiVersion": "v1", "kind": "Pod",
//!     "metadata": {"name": "web-0", "labels": {"app": "web"}},
//!     "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "x"}]},
//!     "status": {"phase": "Running", "podIP": "127.0.0.2"},
//! }));
//! // kube::Config::new(api.url().parse()?) → kube::Client → Api::<Pod>::default_namespaced(..)
//! # }
//! ```
//!
//! # What it reproduces, and where it simplifies
//!
//! **Resources.** Core `v1` pods (`status`, `eviction`, `proxy`), nodes, events, services,
//! namespaces; `discovery.k8s.io/v1` endpointslices; `apps/v1` deployments, replicasets,
//! statefulsets (these three with `scale`), daemonsets; `policy/v1` poddisruptionbudgets;
//! `coordination.k8s.io/v1` leases; `events.k8s.io/v1` events (stored apart from core
//! events). Discovery (`/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`)
//! and `/version` answer in the legacy (non-aggregated) format only. No validation beyond
//! names, kinds and namespaces, no admission, no authentication or RBAC, no `managedFields`,
//! no finalizers or garbage collection (except EndpointSlices of deleted Services), no
//! namespace lifecycle (objects may be created in namespaces that do not exist).
//!
//! **Reads.** `get`; `list` with `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists,
//! `!key`, `>`/`<`) and `fieldSelector` (`metadata.name`, `metadata.namespace` for all kinds;
//! for pods also `spec.nodeName`, `status.phase`, `status.podIP` and a few more; an unknown
//! field is a 400 `field label not supported: …`). Lists are `PodList` etc. with
//! `metadata.resourceVersion`; items carry no `apiVersion`/`kind`, as the apiserver sends them.
//! `limit` is ignored (everything comes in one page, with no `continue`), as is the list's
//! `resourceVersion` (lists are always current).
//!
//! **Watches.** `?watch=1|true`, newline-delimited `{"type": …, "object": …}` events. An
//! absent, empty or `"0"` `resourceVersion` starts with ADDED for the current objects; a
//! number replays the changes after it from a history of the last 1000 changes (one global
//! counter across all kinds), and one older than that history gets an ERROR event with a 410
//! `Expired` Status and the stream ends (a watch that falls that far behind does too).
//! `sendInitialEvents=true` (which needs `resourceVersionMatch=NotOlderThan` and
//! `allowWatchBookmarks=true`, else 422) sends the ADDED events then a BOOKMARK annotated
//! `k8s.io/initial-events-end: "true"`. `allowWatchBookmarks=true` adds a BOOKMARK every
//! second (the apiserver sends them about once a minute). Selectors apply: an object leaving
//! the selection arrives as DELETED, one entering it as ADDED. `timeoutSeconds` ends the
//! stream; without it, it lasts until the client goes or the server is dropped.
//!
//! **Writes.** POST (201; 409 `AlreadyExists`; `generateName`; through the API, kinds with a
//! status subresource start with an empty status — pods `Pending` — as the apiserver resets
//! it; [`TestApi::create`] keeps the status given). PUT (409 `Conflict` on a stale
//! `metadata.resourceVersion`; 404 when absent). PATCH by Content-Type: merge (RFC 7386), JSON
//! patch (RFC 6902 with `test`; a failed operation is a 422), strategic merge (lists merge by
//! the built-in merge keys: `conditions`→`type`, containers/env/volumes→`name`, container
//! `ports`→`containerPort` and Service `ports`→`port`, `volumeMounts`→`mountPath`,
//! `ownerReferences`→`uid`, `readinessGates`→`conditionType`, `finalizers` as a set; other
//! lists are replaced; `$patch: delete|replace` and `$deleteFromPrimitiveList` honoured,
//! `$setElementOrder` and `$retainKeys` ignored), and server-side apply *simplified*: the
//! body must be JSON, `fieldManager` is required but ownership is not tracked, the body is
//! applied as a strategic merge patch and creates the object when absent. Other types get 415.
//! A patch whose body sets `metadata.resourceVersion` is conditional (409 when stale). Writes
//! to the main resource keep `.status` of kinds with a status subresource; writes to `/status`
//! change only `.status`. A write that changes nothing keeps the resourceVersion. `dryRun=All`
//! is honoured for create, update, patch, delete and eviction.
//!
//! **Deletes.** Like the apiserver's pod strategy: a pod with no `spec.nodeName`, or one that
//! has Succeeded or Failed, goes at once; otherwise the grace period is DeleteOptions'
//! `gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds` (defaulted to 30 on
//! create), and a positive one sets `deletionTimestamp` (now + grace) and
//! `deletionGracePeriodSeconds` and answers 200 with the pod (a MODIFIED event). The pod is
//! removed when the grace period ends (standing in for the kubelet), when a delete with a
//! shorter grace ends sooner, with grace 0 at once, or through [`TestApi::remove`].
//! `preconditions` (uid, resourceVersion) give 409. Other kinds go at once; pods, services
//! and namespaces answer with the object, the rest with a `Success` Status.
//!
//! **Errors** are `Status` objects with the apiserver's messages, reasons and details
//! (`pods "x" not found`, `details: {name, kind: "pods"}`, code).
//!
//! **Eviction** (`POST …/pods/{name}/eviction`) follows the apiserver's `EvictionREST`: a
//! finished, Pending or terminating pod is deleted without consulting budgets; budgets are the
//! namespace's PDBs whose selector matches the pod's labels (a null selector matches nothing,
//! `{}` everything, a pod without labels has none); two or more → 500 with the apiserver's bare
//! Status (message `This pod has more than one PodDisruptionBudget, which the eviction
//! subresource does not support.`, no reason); an unready pod may go when the policy is
//! `AlwaysAllow` or (`IfHealthyBudget`, the default) when `currentHealthy >= desiredHealthy >
//! 0`, without using up a disruption; otherwise `disruptionsAllowed == 0` → 429
//! `TooManyRequests` `Cannot evict pod as it would violate the pod's disruption budget.` with
//! cause `{"reason": "DisruptionBudget", "message": "The disruption budget <pdb> needs <d>
//! healthy pods and has <c> currently"}`; else the budget is decremented (the pod is recorded in
//! `disruptedPods`), the pod gets the `DisruptionTarget` condition and is deleted gracefully
//! with the Eviction's `deleteOptions`, and the answer is 201 with a `Success` Status. Only the
//! `deleteOptions` field is read: `kube`'s `Api::evict` sends `delete_options`, which the
//! apiserver drops as an unknown field, and so does this server (with a `Warning` header), so
//! such an eviction uses the pod's own grace period — as against a real cluster.
//!
//! **Proxy** (`…/pods/{name}[:{port}]/proxy/{path}`, also `http:{name}:{port}`) forwards
//! method, path, query, headers (less hop-by-hop ones and `Authorization`) and body over
//! HTTP/1.1 to `status.podIP` and the port (a number or a container port name; by default the
//! first port of the first container that has one, else 80), streaming the answer back; 503
//! `ServiceUnavailable` when the pod has no IP or the connection fails. No https targets, no
//! upgrades (WebSocket), no `services/proxy`.
//!
//! # Controllers
//!
//! They run inside the server after every change (synchronously, under the store's lock,
//! until nothing changes) and write objects only when something differs.
//!
//! * **Kubelet readiness** for pods with `status.podIP`: each container (and native sidecar,
//!   an init container with `restartPolicy: Always`) with an `httpGet`, `tcpSocket` or `grpc`
//!   readiness probe is probed from a background task every `periodSeconds` (default 10) with
//!   `timeoutSeconds` (1), `initialDelaySeconds`, `successThreshold` (1) and
//!   `failureThreshold` (3), starting as not ready like the kubelet, and also while the pod
//!   terminates. `httpGet` passes on 200–399 (named ports resolve from the container's
//!   ports); `https` and `grpc` probes are approximated by a TCP connect; `exec` probes and
//!   containers without a probe count as ready. `ContainersReady` is True when all those
//!   containers are ready; `Ready` when, in addition, every `spec.readinessGates` condition is
//!   True — recomputed on every change, so a gate condition patched to False turns `Ready`
//!   False at once. `lastTransitionTime` moves only on a status change;
//!   `containerStatuses[].ready` is kept for entries that exist. Pods without an IP are left
//!   alone; a pod's Ready condition set by a client on a pod with an IP is overwritten, as the
//!   kubelet would — unless the pod is annotated `testapi.lameduck.dev/kubelet: "off"` (this
//!   server's extension, for tests that play the kubelet with [`TestApi::modify`]).
//! * **EndpointSlices**: one slice `{service}-{5 chars}` per Service with a non-empty
//!   selector (labels `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
//!   endpointslice-controller.k8s.io`, owner reference to the Service, `addressType: IPv4`),
//!   listing matching pods that have an IP and are not finished, sorted by name, with `ready`
//!   (Ready and not terminating), `serving` (Ready), `terminating`, `targetRef`, `nodeName`
//!   and `zone` from the node's label; `publishNotReadyAddresses` makes them ready and
//!   serving. Ports come from the Service, `targetPort` resolved to a number (a named port from
//!   the first matching pod that has it). Real controllers split slices at 100 endpoints and
//!   by port mapping; this one keeps one slice.
//! * **ReplicaSets**: surplus active pods (owned through a controller reference and matching
//!   the selector) are deleted gracefully in the real controller's order — unscheduled first,
//!   then Pending before Unknown before Running, not ready before ready, lower
//!   `controller.kubernetes.io/pod-deletion-cost` first, more replicas on the same node first,
//!   ready for less time first, more restarts first, newer first (without the logarithmic
//!   age buckets). Missing pods are created from `spec.template` (`generateName: {rs}-`,
//!   controller reference, no node, no IP: nothing schedules them). `status.replicas`,
//!   `readyReplicas`, `availableReplicas` (minReadySeconds ignored), `fullyLabeledReplicas`,
//!   `observedGeneration` are kept. Orphans are not adopted.
//! * **Disruption budgets**: `status.expectedPods`, `currentHealthy` (Ready, not terminating,
//!   not in `disruptedPods`), `desiredHealthy`, `disruptionsAllowed`, `observedGeneration` and
//!   the `DisruptionAllowed` condition, like the disruption controller: an integer
//!   `minAvailable` expects the number of matching pods; `maxUnavailable` or a percentage
//!   expects the replicas of the pods' controllers (ReplicaSet, or its Deployment;
//!   StatefulSet), percentages rounding up. Pods without a known controller count one each
//!   (the real controller fails the sync instead).
//!
//! Deployments, StatefulSets and DaemonSets have no controller.
//!
//! # With kube clients
//!
//! kube 5's `Config` enables a retry layer by default (`default_retry: true`) that retries 429,
//! 503 and 504 answers up to 15 times with exponential backoff; a test that must see an
//! eviction's 429 or an injected 503 builds its client with `config.default_retry = false`.
//!
//! # Test helpers
//!
//! [`TestApi::create`], [`TestApi::get`], [`TestApi::list`], [`TestApi::modify`] and
//! [`TestApi::remove`] act on the store directly (emitting watch events and running the
//! controllers); [`TestApi::requests`] records every request; [`TestApi::fail_with`] and
//! [`TestApi::delay`] inject failures and latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

mod controllers;
mod error;
mod eviction;
mod meta;
mod ops;
mod patch;
mod pods;
mod proxy;
mod resources;
mod selector;
mod server;
mod store;
mod watch;

use crate::resources::{ResId, res};
use crate::store::Shared;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A running test API server. Dropping it stops the server, its watches and its controllers.
#[derive(Debug)]
pub struct TestApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl TestApi {
    /// Binds `127.0.0.1:0` and serves in background tokio tasks (controllers too).
    ///
    /// # Panics
    ///
    /// When no port can be bound on 127.0.0.1 or when called outside a tokio runtime.
    pub async fn start() -> TestApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("lameduck-testapi: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("lameduck-testapi: the listener has no local address");
        let shared = Arc::new(Shared::new(tokio::runtime::Handle::current()));
        tokio::spawn(server::accept_loop(shared.clone(), listener));
        tracing::debug!(%addr, "test API server listening");
        TestApi { shared, addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose one cluster's server is [`url`](Self::url), with no
    /// credentials, context `lameduck-test` and namespace `default`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: lameduck-test\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: lameduck-test\n  user: {{}}\n\
             contexts:\n\
             - name: lameduck-test\n  context:\n    cluster: lameduck-test\n    user: lameduck-test\n    namespace: default\n\
             current-context: lameduck-test\n\
             preferences: {{}}\n",
            url = self.url()
        );
        std::fs::write(path, text)
    }

    /// Stores an object as a create would: fills `metadata.uid` (unless given),
    /// `resourceVersion`, `creationTimestamp`, `generation`, the name from `generateName`,
    /// and namespace `default` when absent for namespaced kinds. Unlike a create through the
    /// API, the given `status` is kept. `apiVersion` and `kind` say where it goes. Emits watch
    /// events and runs the controllers. Returns the stored object.
    ///
    /// # Panics
    ///
    /// On an unknown `apiVersion`/`kind`, a missing name, or an object that already exists.
    pub fn create(&self, obj: Value) -> Value {
        let api_version = meta::str_at(&obj, &["apiVersion"]).unwrap_or("").to_owned();
        let kind = meta::str_at(&obj, &["kind"]).unwrap_or("").to_owned();
        let id = kind_id(&api_version, &kind);
        self.shared
            .mutate(|st| ops::create(st, id, obj, None, false))
            .unwrap_or_else(|e| panic!("TestApi::create({api_version} {kind}): {e}"))
    }

    /// One object; `api_version` like `v1` or `discovery.k8s.io/v1`, `kind` like `Pod`. The
    /// namespace of a namespaced kind defaults to `default`; it is ignored for cluster-scoped
    /// kinds.
    ///
    /// # Panics
    ///
    /// On an unknown `api_version`/`kind`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let id = kind_id(api_version, kind);
        self.shared
            .lock()
            .get(id, ns_for(id, namespace), name)
            .cloned()
    }

    /// All objects of a kind in a namespace, or in all namespaces when `None`, ordered by
    /// namespace and name.
    ///
    /// # Panics
    ///
    /// On an unknown `api_version`/`kind`.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let id = kind_id(api_version, kind);
        let ns = if res(id).namespaced { namespace } else { None };
        self.shared.lock().list_cloned(id, ns)
    }

    /// Changes a stored object in place (to play the kubelet, say), bumping its
    /// resourceVersion and notifying watches and controllers. Its name and namespace cannot
    /// change. Returns false when the object does not exist.
    ///
    /// # Panics
    ///
    /// On an unknown `api_version`/`kind`.
    pub fn modify(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> bool {
        let id = kind_id(api_version, kind);
        let ns = ns_for(id, namespace).to_owned();
        self.shared.mutate(|st| {
            let Some(old) = st.get(id, &ns, name).cloned() else {
                return false;
            };
            let mut new = old.clone();
            f(&mut new);
            if !new.is_object() {
                new = old.clone();
            }
            let md = meta::obj_mut(&mut new, &["metadata"]);
            md.insert("name".into(), Value::from(name));
            if res(id).namespaced {
                md.insert("namespace".into(), Value::from(ns.as_str()));
            } else {
                md.remove("namespace");
            }
            st.update(id, new);
            true
        })
    }

    /// Removes an object at once, whatever its grace period (as the kubelet's final delete, or
    /// `gracePeriodSeconds: 0`, would). Returns false when it does not exist.
    ///
    /// # Panics
    ///
    /// On an unknown `api_version`/`kind`.
    pub fn remove(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let id = kind_id(api_version, kind);
        let ns = ns_for(id, namespace).to_owned();
        self.shared.mutate(|st| st.remove(id, &ns, name).is_some())
    }

    /// Every request received so far, in order: (method, path with query).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.lock().requests.clone()
    }

    /// While set, every request is answered with this HTTP status and a matching `Status`
    /// body (503 `ServiceUnavailable`, 403 `Forbidden`, 500 `InternalError`, …). `None` clears it.
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.lock().fail = status;
    }

    /// Waits this long before answering every request; `Duration::ZERO` clears it.
    pub fn delay(&self, d: Duration) {
        self.shared.lock().delay = d;
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        let mut st = self.shared.lock();
        for (_, prober) in st.probers.drain() {
            for t in prober.tasks {
                t.abort();
            }
        }
    }
}

fn kind_id(api_version: &str, kind: &str) -> ResId {
    resources::find_by_kind(api_version, kind).unwrap_or_else(|| {
        let known: Vec<String> = resources::RESOURCES
            .iter()
            .map(|r| format!("{} {}", r.api_version(), r.kind))
            .collect();
        panic!(
            "lameduck-testapi does not serve {api_version:?} {kind:?}; it serves: {}",
            known.join(", ")
        )
    })
}

fn ns_for(id: ResId, namespace: Option<&str>) -> &str {
    if res(id).namespaced {
        namespace.unwrap_or("default")
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_api_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::TestApi>();
    }
}
