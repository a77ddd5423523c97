//! What every provider's watcher shares: turning snapshots into `Update`s exactly once
//! (`Tracker`), sending them (`Reporter`), spacing retries (`Backoff`) and keeping failure
//! logs quiet (`Health`).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use crate::http::Failure;
use crate::{Notice, Update};

/// One place a provider reports notices from. A snapshot from one source only withdraws
/// notices that came from that same source, so a failing endpoint never cancels what another
/// endpoint reported, and a failed look at an endpoint cancels nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    AwsSpot,
    AwsRebalance,
    AwsScheduled,
    GcpPreempted,
    GcpMaintenance,
    AzureEvents,
}

/// The notices sent so far, by id.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    sent: BTreeMap<String, Source>,
}

impl Tracker {
    /// `current` is everything `source` lists right now. Returns the ids it no longer lists as
    /// `Cancelled` (sorted), then the notices not sent before, in the order given.
    pub(crate) fn reconcile(&mut self, source: Source, current: Vec<Notice>) -> Vec<Update> {
        let listed: HashSet<&str> = current.iter().map(|n| n.id.as_str()).collect();
        let gone: Vec<String> = self
            .sent
            .iter()
            .filter(|(id, from)| **from == source && !listed.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        let mut updates = Vec::new();
        for id in gone {
            self.sent.remove(&id);
            updates.push(Update::Cancelled { id });
        }
        for notice in current {
            if !self.sent.contains_key(&notice.id) {
                self.sent.insert(notice.id.clone(), source);
                updates.push(Update::Notice(notice));
            }
        }
        updates
    }
}

/// The receiver is gone: the watcher should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// A `Tracker` behind a lock (GCP watches two keys at once) and the channel to the caller.
pub(crate) struct Reporter {
    tracker: Mutex<Tracker>,
    tx: mpsc::Sender<Update>,
}

impl Reporter {
    pub(crate) fn new(tx: mpsc::Sender<Update>) -> Reporter {
        Reporter {
            tracker: Mutex::new(Tracker::default()),
            tx,
        }
    }

    pub(crate) async fn report(&self, source: Source, current: Vec<Notice>) -> Result<(), Closed> {
        // Holding the lock while sending keeps updates from two sources in the order they were
        // decided.
        let mut tracker = self.tracker.lock().await;
        for update in tracker.reconcile(source, current) {
            match &update {
                Update::Notice(n) => tracing::info!(
                    provider = n.provider.name(),
                    id = %n.id,
                    kind = ?n.kind,
                    detail = %n.detail,
                    "metadata service notice"
                ),
                Update::Cancelled { id } => {
                    tracing::info!(id = %id, "metadata service notice withdrawn")
                }
            }
            self.tx.send(update).await.map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// Exponential backoff between failed tries: starts near half the poll period, doubles, and
/// never waits more than `MAX_BACKOFF`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
}

pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Backoff {
    pub(crate) fn new(poll: Duration) -> Backoff {
        let first = (poll / 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
        Backoff { first, next: first }
    }

    /// How long to wait after this failure.
    pub(crate) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = self.first;
    }
}

/// Logs each kind of failure at `warn` once and repeats at `debug`. After `FORGET_AFTER` of
/// uninterrupted success it forgets what it warned about, so an outage next week is reported
/// again, while a flapping service does not flood the log.
#[derive(Debug)]
pub(crate) struct Health {
    what: &'static str,
    warned: HashSet<String>,
    healthy_since: Option<Instant>,
    told_failing: bool,
}

const FORGET_AFTER: Duration = Duration::from_secs(300);

impl Health {
    pub(crate) fn new(what: &'static str) -> Health {
        Health {
            what,
            warned: HashSet::new(),
            healthy_since: None,
            told_failing: false,
        }
    }

    /// Logs `failure`; returns whether it was logged at `warn`.
    pub(crate) fn failed(&mut self, failure: &Failure, retry_in: Duration) -> bool {
        self.healthy_since = None;
        if self.warned.insert(failure.kind()) {
            self.told_failing = true;
            tracing::warn!(
                watching = self.what,
                error = %failure,
                ?retry_in,
                "metadata service: no usable answer; retrying (further failures of this kind are logged at debug)"
            );
            true
        } else {
            tracing::debug!(watching = self.what, error = %failure, ?retry_in, "metadata service: no usable answer; retrying");
            false
        }
    }

    pub(crate) fn succeeded(&mut self) {
        let now = Instant::now();
        if self.told_failing {
            self.told_failing = false;
            tracing::info!(watching = self.what, "metadata service answering again");
        }
        match self.healthy_since {
            None => self.healthy_since = Some(now),
            Some(since) if now.duration_since(since) >= FORGET_AFTER => self.warned.clear(),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NoticeKind, Provider};
    use std::time::SystemTime;

    fn notice(id: &str) -> Notice {
        Notice {
            provider: Provider::Aws,
            kind: NoticeKind::Reclaim,
            id: id.to_owned(),
            not_before: None,
            seen_at: SystemTime::UNIX_EPOCH,
            detail: String::new(),
        }
    }

    fn ids(updates: &[Update]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u {
                Update::Notice(n) => format!("+{}", n.id),
                Update::Cancelled { id } => format!("-{id}"),
            })
            .collect()
    }

    #[test]
    fn new_notices_are_sent_once() {
        let mut t = Tracker::default();
        assert_eq!(
            ids(&t.reconcile(Source::AwsSpot, vec![notice("a")])),
            ["+a"]
        );
        assert!(t.reconcile(Source::AwsSpot, vec![notice("a")]).is_empty());
        assert_eq!(
            ids(&t.reconcile(Source::AwsSpot, vec![notice("a"), notice("b"), notice("b")])),
            ["+b"]
        );
    }

    #[test]
    fn a_notice_that_disappears_is_cancelled_once() {
        let mut t = Tracker::default();
        t.reconcile(Source::AzureEvents, vec![notice("a"), notice("b")]);
        assert_eq!(
            ids(&t.reconcile(Source::AzureEvents, vec![notice("b")])),
            ["-a"]
        );
        assert!(
            t.reconcile(Source::AzureEvents, vec![notice("b")])
                .is_empty()
        );
        assert_eq!(ids(&t.reconcile(Source::AzureEvents, vec![])), ["-b"]);
        assert!(t.reconcile(Source::AzureEvents, vec![]).is_empty());
    }

    #[test]
    fn a_notice_that_comes_back_is_sent_again() {
        let mut t = Tracker::default();
        t.reconcile(Source::GcpPreempted, vec![notice("preempted")]);
        t.reconcile(Source::GcpPreempted, vec![]);
        assert_eq!(
            ids(&t.reconcile(Source::GcpPreempted, vec![notice("preempted")])),
            ["+preempted"]
        );
    }

    #[test]
    fn sources_do_not_cancel_each_other() {
        let mut t = Tracker::default();
        t.reconcile(Source::AwsSpot, vec![notice("spot")]);
        t.reconcile(Source::AwsScheduled, vec![notice("ev-1")]);
        assert!(t.reconcile(Source::AwsRebalance, vec![]).is_empty());
        assert_eq!(ids(&t.reconcile(Source::AwsScheduled, vec![])), ["-ev-1"]);
        assert_eq!(ids(&t.reconcile(Source::AwsSpot, vec![])), ["-spot"]);
    }

    #[test]
    fn a_changed_value_cancels_the_old_and_sends_the_new() {
        let mut t = Tracker::default();
        t.reconcile(Source::GcpMaintenance, vec![notice("maintenance:MIGRATE")]);
        assert_eq!(
            ids(&t.reconcile(
                Source::GcpMaintenance,
                vec![notice("maintenance:TERMINATE")]
            )),
            ["-maintenance:MIGRATE", "+maintenance:TERMINATE"]
        );
    }

    #[test]
    fn first_seen_notice_is_kept() {
        let mut t = Tracker::default();
        let first = t.reconcile(Source::AwsSpot, vec![notice("a")]);
        let mut later = notice("a");
        later.seen_at = SystemTime::now();
        assert!(t.reconcile(Source::AwsSpot, vec![later]).is_empty());
        assert!(matches!(&first[0], Update::Notice(n) if n.seen_at == SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let waits: Vec<u64> = (0..6).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(500));
        let mut fast = Backoff::new(Duration::from_millis(10));
        assert_eq!(fast.failed(), Duration::from_millis(100));
        let mut slow = Backoff::new(Duration::from_secs(60));
        assert_eq!(slow.failed(), MAX_BACKOFF);
    }

    #[test]
    fn health_warns_once_per_kind() {
        let mut h = Health::new("test");
        let timeout = Failure::Fetch(crate::http::FetchError::Timeout {
            url: "http://x".into(),
            timeout: Duration::from_secs(1),
        });
        let garbage = Failure::garbage("http://x", "nope");
        let wait = Duration::from_secs(1);
        assert!(h.failed(&timeout, wait));
        assert!(!h.failed(&timeout, wait));
        assert!(h.failed(&garbage, wait));
        h.succeeded();
        assert!(
            !h.failed(&garbage, wait),
            "a short recovery does not re-arm the warning"
        );
    }
}
