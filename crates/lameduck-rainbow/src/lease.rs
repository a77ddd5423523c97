//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does
//! it: one replica holds the Lease and renews it; the others take it only once it has not
//! changed for its whole duration *as they observed it* (their own clock, never the holder's
//! timestamps, so clock skew between nodes does not matter).
//!
//! Written here because kube-runtime 5 has no leader election, and the crates that offer one
//! follow older kube releases.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use lameduck_kube::{Context, KubeError, Op};

/// How the Lease is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Who we are (the pod's name, else host and process).
    pub identity: String,
    /// How long a Lease that is not renewed stays held.
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the holder renews: a third of the duration.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }
}

/// What the last read of the Lease showed, and when we saw it change.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    holder: Option<String>,
    renewed: Option<String>,
    since: Instant,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// A Lease being held or sought.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    seen: Option<Seen>,
}

impl Elector {
    /// An elector on `api` (namespaced to `cfg.namespace`).
    pub fn new(api: Api<Lease>, cfg: LeaseConfig) -> Elector {
        Elector {
            api,
            cfg,
            seen: None,
        }
    }

    fn op(&self, verb: &'static str) -> Op {
        Op::new(verb, "leases.coordination.k8s.io", &self.cfg.namespace).named(&self.cfg.name)
    }

    /// One try: `Ok(true)` when we hold the Lease afterwards (taken or renewed), `Ok(false)`
    /// when someone else holds it, an error when the API could not be asked.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let current = self.api.get_opt(&self.cfg.name).await.op(self.op("get"))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.held(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Someone else created it first.
                Err(e) => {
                    let e = KubeError::new(self.op("create"), e);
                    if e.code() == Some(409) {
                        Ok(false)
                    } else {
                        Err(e)
                    }
                }
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renewed = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let ours = holder.as_deref() == Some(self.cfg.identity.as_str());
        let observed = Seen {
            holder: holder.clone(),
            renewed,
            since: Instant::now(),
        };
        let changed = self
            .seen
            .as_ref()
            .is_none_or(|s| s.holder != observed.holder || s.renewed != observed.renewed);
        if changed {
            self.seen = Some(observed);
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.cfg.duration, Duration::from_secs);
        let expired = self
            .seen
            .as_ref()
            .is_some_and(|s| s.since.elapsed() >= duration);
        if !(ours || holder.is_none() || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.held(acquired, transitions));
        // The resourceVersion read above makes this a compare-and-swap: a replica that took
        // the Lease in between makes it fail with 409.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = KubeError::new(self.op("update"), e);
                if e.code() == Some(409) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    fn held(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = now_micro();
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(seconds(self.cfg.duration)),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up (on a clean exit), so that another replica takes over at once.
    pub async fn release(&mut self) -> Result<(), KubeError> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.op(self.op("get"))? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        lease.spec = Some(spec);
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
            .op(self.op("update"))?;
        Ok(())
    }

    /// Waits until we hold the Lease, trying every `retry`.
    pub async fn acquire(&mut self, retry: Duration, mut on_error: impl FnMut(&KubeError)) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => on_error(&e),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the Lease until it is lost: returns when another replica holds it, or when it
    /// could not be renewed for its whole duration (the others may have taken it by then).
    pub async fn hold(&mut self, mut on_error: impl FnMut(&KubeError)) -> &'static str {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_every()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => return "another replica holds the Lease",
                Err(e) => {
                    on_error(&e);
                    // Stop before the others may take it: a margin of one renewal period.
                    if last_renewed.elapsed() + self.cfg.renew_every() >= self.cfg.duration {
                        return "the Lease could not be renewed in time";
                    }
                }
            }
        }
    }
}
