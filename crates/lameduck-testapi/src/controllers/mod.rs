//! The controllers that run inside the server. They run synchronously after every change,
//! under the store's lock, until nothing more changes: a client sees their effects in the
//! very next event after its own.

use std::sync::Arc;

use crate::store::{Shared, Store};

pub(crate) mod deployment;
pub(crate) mod disruption;
pub(crate) mod endpointslice;
pub(crate) mod kubelet;
pub(crate) mod replicaset;

/// Upper bound on passes; each pass only writes what differs, so a handful settles anything.
const MAX_PASSES: usize = 8;

pub(crate) fn reconcile(st: &mut Store, shared: &Arc<Shared>) {
    for _ in 0..MAX_PASSES {
        let before = st.rv;
        kubelet::sync_probers(st, shared);
        kubelet::sync_readiness(st);
        deployment::sync(st);
        replicaset::sync(st, shared);
        endpointslice::sync(st);
        disruption::sync(st);
        if st.rv == before {
            return;
        }
    }
    tracing::warn!("controllers did not settle after {MAX_PASSES} passes");
}
