//! The object store: every object by resource, namespace and name; one resourceVersion counter;
//! a bounded history of changes that watches replay; and the state the controllers keep.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::meta::{self, Rng};
use crate::resources::{POD, ResId};

/// How many changes the history keeps; a watch from further back gets 410 Expired.
pub(crate) const HISTORY: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as watches replay it.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) res: ResId,
    pub(crate) kind: EventType,
    pub(crate) object: Value,
    /// The object before a modification, so a selector can tell entering from leaving.
    pub(crate) old: Option<Value>,
}

/// Probe tasks of one pod (by uid), for the pod IP they probe.
#[derive(Debug)]
pub(crate) struct Prober {
    pub(crate) ip: String,
    pub(crate) tasks: Vec<AbortHandle>,
}

type Key = (ResId, String, String);

#[derive(Debug)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out.
    pub(crate) rv: u64,
    history: VecDeque<Event>,
    /// Changes at or below this resourceVersion may have left the history.
    floor: u64,
    pub(crate) rng: Rng,
    pub(crate) requests: Vec<(String, String)>,
    pub(crate) fail: Option<u16>,
    pub(crate) delay: Duration,
    /// Readiness probe verdicts by (pod uid, container name).
    pub(crate) probe_results: HashMap<(String, String), bool>,
    /// Running probe tasks by pod uid.
    pub(crate) probers: HashMap<String, Prober>,
    /// When each terminating pod (by uid) is due to be removed.
    pub(crate) deadlines: HashMap<String, Instant>,
    /// Creation order by uid, to break ties between equal creation timestamps.
    created: HashMap<String, u64>,
}

impl Store {
    pub(crate) fn new() -> Store {
        Store {
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            floor: 0,
            rng: Rng::seeded(),
            requests: Vec::new(),
            fail: None,
            delay: Duration::ZERO,
            probe_results: HashMap::new(),
            probers: HashMap::new(),
            deadlines: HashMap::new(),
            created: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, id: ResId, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(id, ns.to_owned(), name.to_owned()))
    }

    /// Objects of one resource in key order (namespace, then name), in one namespace or all.
    pub(crate) fn list<'a>(
        &'a self,
        id: ResId,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let lo = (id, ns.unwrap_or("").to_owned(), String::new());
        let hi = (id + 1, String::new(), String::new());
        self.objects
            .range(lo..hi)
            .take_while(move |((_, n, _), _)| ns.is_none_or(|want| n == want))
            .map(|(_, v)| v)
    }

    pub(crate) fn list_cloned(&self, id: ResId, ns: Option<&str>) -> Vec<Value> {
        self.list(id, ns).cloned().collect()
    }

    fn key(id: ResId, obj: &Value) -> Key {
        (
            id,
            meta::namespace(obj).to_owned(),
            meta::name(obj).to_owned(),
        )
    }

    fn stamp(&mut self, obj: &mut Value) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        meta::obj_mut(obj, &["metadata"])
            .insert("resourceVersion".into(), Value::from(rv.to_string()));
        rv
    }

    /// Stores a new object (already prepared) under a fresh resourceVersion.
    pub(crate) fn insert(&mut self, id: ResId, mut obj: Value) -> Value {
        let rv = self.stamp(&mut obj);
        let uid = meta::uid(&obj).to_owned();
        self.created.insert(uid, rv);
        self.objects.insert(Self::key(id, &obj), obj.clone());
        self.record(Event {
            rv,
            res: id,
            kind: EventType::Added,
            object: obj.clone(),
            old: None,
        });
        obj
    }

    /// Replaces an existing object under a fresh resourceVersion.
    pub(crate) fn update(&mut self, id: ResId, mut obj: Value) -> Value {
        let rv = self.stamp(&mut obj);
        let old = self.objects.insert(Self::key(id, &obj), obj.clone());
        self.record(Event {
            rv,
            res: id,
            kind: if old.is_some() {
                EventType::Modified
            } else {
                EventType::Added
            },
            object: obj.clone(),
            old,
        });
        obj
    }

    /// Removes an object for good; the returned copy carries the deletion's resourceVersion.
    pub(crate) fn remove(&mut self, id: ResId, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self.objects.remove(&(id, ns.to_owned(), name.to_owned()))?;
        let rv = self.stamp(&mut obj);
        let uid = meta::uid(&obj).to_owned();
        if id == POD {
            self.deadlines.remove(&uid);
        }
        self.created.remove(&uid);
        self.record(Event {
            rv,
            res: id,
            kind: EventType::Deleted,
            object: obj.clone(),
            old: None,
        });
        Some(obj)
    }

    fn record(&mut self, ev: Event) {
        self.history.push_back(ev);
        while self.history.len() > HISTORY {
            if let Some(gone) = self.history.pop_front() {
                self.floor = gone.rv;
            }
        }
    }

    /// Changes at or below this resourceVersion may be missing from the history.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Recorded changes after `rv`, oldest first.
    pub(crate) fn events_after(&self, rv: u64) -> impl Iterator<Item = &Event> {
        let start = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(start..)
    }

    /// The creation order of an object, for tie-breaks (larger is newer).
    pub(crate) fn creation_seq(&self, uid: &str) -> u64 {
        self.created.get(uid).copied().unwrap_or(0)
    }
}

/// Resolves once the server shuts down (or its `Shared` is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        // The sender is gone: the server is gone too.
    }
}

/// Everything the server's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<Store>,
    /// The last resourceVersion, published after every mutation so watches wake up.
    pub(crate) changes: watch::Sender<u64>,
    /// Set to true when the `TestApi` is dropped.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) handle: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn new(handle: tokio::runtime::Handle) -> Shared {
        Shared {
            state: Mutex::new(Store::new()),
            changes: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            handle,
        }
    }

    /// The store, for reading. Never held across an await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a change, then the controllers, then wakes the watches.
    pub(crate) fn mutate<R>(self: &Arc<Self>, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut st = self.lock();
        let out = f(&mut st);
        crate::controllers::reconcile(&mut st, self);
        let rv = st.rv;
        drop(st);
        self.changes.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{NODE, SERVICE};
    use serde_json::json;

    #[test]
    fn history_is_bounded_and_ordered() {
        let mut st = Store::new();
        for i in 0..(HISTORY + 5) {
            st.insert(
                NODE,
                json!({"metadata": {"name": format!("n{i}"), "uid": format!("u{i}")}}),
            );
        }
        assert_eq!(st.floor(), 5);
        assert_eq!(st.events_after(5).count(), HISTORY);
        assert_eq!(st.events_after(st.rv).count(), 0);
        let first = st.events_after(10).next().map(|e| e.rv);
        assert_eq!(first, Some(11));
    }

    #[test]
    fn list_by_namespace() {
        let mut st = Store::new();
        for (ns, name) in [("a", "x"), ("b", "y"), ("a", "z")] {
            st.insert(
                SERVICE,
                json!({"metadata": {"name": name, "namespace": ns}}),
            );
        }
        st.insert(POD, json!({"metadata": {"name": "p", "namespace": "a"}}));
        let names: Vec<&str> = st.list(SERVICE, Some("a")).map(meta::name).collect();
        assert_eq!(names, ["x", "z"]);
        assert_eq!(st.list(SERVICE, None).count(), 3);
        assert_eq!(st.list(SERVICE, Some("c")).count(), 0);
        let removed = st.remove(SERVICE, "b", "y").expect("present");
        assert_eq!(meta::resource_version(&removed), "5");
    }
}
