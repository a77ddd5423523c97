//! Watches: newline-delimited JSON events replayed from the history and then live, filtered
//! by namespace and selectors, with bookmarks, a timeout, and 410 Expired for a
//! resourceVersion older than the history.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::meta;
use crate::resources::{ResId, res};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType, Shared, Store};
use crate::{Body, BoxError};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Synthetic ADDED events for the current objects first.
    Initial,
    /// Changes after this resourceVersion.
    After(u64),
}

#[derive(Debug)]
pub(crate) struct WatchParams {
    pub(crate) id: ResId,
    pub(crate) ns: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
    pub(crate) start: Start,
    pub(crate) bookmarks: bool,
    /// Send the initial-events-end bookmark after the initial events (streaming lists).
    pub(crate) initial_end: bool,
    pub(crate) timeout: Option<Duration>,
}

impl WatchParams {
    fn selects(&self, obj: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| meta::namespace(obj) == ns)
            && self.labels.matches_object(obj)
            && self.fields.matches(self.id, obj)
    }

    /// The event this watch sees for a change, if any: an object entering the selection is
    /// ADDED, one leaving it DELETED.
    fn translate<'a>(&self, ev: &'a Event) -> Option<(&'static str, &'a Value)> {
        if ev.res != self.id {
            return None;
        }
        let now = self.selects(&ev.object);
        let kind = match ev.kind {
            EventType::Added => now.then_some("ADDED")?,
            EventType::Deleted => now.then_some("DELETED")?,
            EventType::Modified => {
                let before = ev.old.as_ref().is_some_and(|o| self.selects(o));
                match (before, now) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
        };
        Some((kind, &ev.object))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let r = res(self.id);
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({"kind": r.kind, "apiVersion": r.api_version(), "metadata": md}),
        )
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

fn expired(requested: u64, oldest: u64) -> Bytes {
    let status = ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {requested} ({oldest})"),
    )
    .status();
    line("ERROR", &status)
}

/// Collects what the watch has not seen yet; `None` when the history moved past it.
fn pending(st: &Store, p: &WatchParams, last: &mut u64) -> Option<Vec<Bytes>> {
    if *last < st.floor() {
        return None;
    }
    let out = st
        .events_after(*last)
        .filter_map(|ev| p.translate(ev))
        .map(|(kind, obj)| line(kind, obj))
        .collect();
    *last = st.rv;
    Some(out)
}

/// Starts a watch; its events arrive in the returned body.
pub(crate) fn start(shared: Arc<Shared>, p: WatchParams) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let task_shared = shared.clone();
    shared.handle.spawn(async move {
        run(task_shared, p, tx).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(chunk)), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

async fn run(shared: Arc<Shared>, p: WatchParams, tx: mpsc::Sender<Bytes>) {
    let mut changes = shared.changes.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let deadline = p.timeout.map(|t| Instant::now() + t);
    let (mut last, first) = {
        let st = shared.lock();
        changes.borrow_and_update();
        match p.start {
            Start::Initial => {
                let mut lines: Vec<Bytes> = st
                    .list(p.id, p.ns.as_deref())
                    .filter(|o| p.selects(o))
                    .map(|o| line("ADDED", o))
                    .collect();
                if p.initial_end {
                    lines.push(p.bookmark(st.rv, true));
                }
                (st.rv, Some(lines))
            }
            Start::After(rv) if rv < st.floor() => (rv, None),
            Start::After(rv) => (rv, Some(Vec::new())),
        }
    };
    let Some(first) = first else {
        let oldest = shared.lock().floor() + 1;
        let _ = tx.send(expired(last, oldest)).await;
        return;
    };
    for l in first {
        if tx.send(l).await.is_err() {
            return;
        }
    }
    let mut ticks = tokio::time::interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let requested = last;
        let batch = {
            let st = shared.lock();
            pending(&st, &p, &mut last).ok_or_else(|| st.floor() + 1)
        };
        match batch {
            Ok(lines) => {
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
            }
            Err(oldest) => {
                let _ = tx.send(expired(requested, oldest)).await;
                return;
            }
        }
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = ticks.tick(), if p.bookmarks => {
                // Everything up to `last` has been sent, so it is a safe point to resume from.
                if tx.send(p.bookmark(last, false)).await.is_err() {
                    return;
                }
            }
            () = timeout => return,
            () = crate::store::stopped(&mut shutdown) => return,
            () = tx.closed() => return,
        }
    }
}
