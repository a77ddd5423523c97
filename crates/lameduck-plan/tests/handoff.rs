//! Handoff in the simulator: at the drain deadline a gate hands each stream in flight to a
//! peer and relays it through its own pod, which lives no longer than its grace period.

use std::time::Duration;

use lameduck_plan::{
    FleetSpec, Latency, PodModel, Rate, Scenario, Shutdown, Sim, SimConfig, SimReport,
};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Gated pods with 60 s of grace and a 30 s kill margin: the deadline comes 30 s before the
/// kubelet's SIGKILL, so a handed-off stream has those 30 s (less the peer's prefill) to end.
fn fleet(replicas: u32, cold_start: u64) -> FleetSpec {
    FleetSpec {
        name: "test".into(),
        replicas,
        pod: PodModel {
            grace: S(60),
            shutdown: Shutdown::Gate {
                convergence: lameduck_timeline::Convergence::default(),
                margin: S(30),
            },
            cold_start: S(cold_start),
            ready_after: S(cold_start),
            concurrency: 64,
        },
        max_surge: 1,
        max_unavailable: 0,
        pdb_min_available: None,
        pods_per_node: 1,
        propagation_lag: S(3),
    }
}

fn run(spec: &FleetSpec, scenario: Scenario, handoff: bool) -> SimReport {
    // Durations spread from 20 s to 100 s: at the deadline some streams are nearly done and
    // some have a minute to go.
    let lat = Latency::from_samples((20..=100).map(f64::from).collect()).expect("samples");
    Sim::new(
        spec,
        &lat,
        Rate::Constant(0.5),
        SimConfig {
            scenario,
            seed: 11,
            start: S(300),
            every: None,
            horizon: Some(S(900)),
            sample_every: S(1),
            agent: false,
            surge: false,
            rainbow: None,
            handoff,
        },
    )
    .run()
}

/// Every stream the deadline ends without handoff is, with it, either completed on a peer
/// (its rest fitted in the 30 s before the pod's end) or ended at the pod's hard stop; the
/// long ones still end.
#[test]
fn a_relay_completes_what_fits_before_the_pods_end() {
    for scenario in [Scenario::Drain, Scenario::Rollout] {
        let spec = fleet(4, 20);
        let plain = run(&spec, scenario, false);
        let with = run(&spec, scenario, true);
        assert_eq!(plain.requests.total, with.requests.total, "same arrivals");
        assert!(plain.requests.truncated > 0, "{scenario:?}: {plain:#?}");
        assert!(
            with.requests.handed_off > 0,
            "{scenario:?}: some fit in the margin: {with:#?}"
        );
        assert!(
            with.requests.truncated > 0,
            "{scenario:?}: a minute to go does not fit in 30 s: {with:#?}"
        );
        assert_eq!(
            with.requests.handed_off + with.requests.truncated,
            plain.requests.truncated,
            "{scenario:?}: each stream ended by the deadline is accounted for once"
        );
        assert_eq!(with.requests.killed, 0, "{scenario:?}: {with:#?}");
        assert_eq!(
            with.requests.ok,
            plain.requests.ok + with.requests.handed_off
        );
        // The relaying pod stays up until its last relay ends, never past its grace period.
        assert!(with.pod_drain.max >= plain.pod_drain.max);
        assert!(with.pod_drain.max <= 60.0, "{}", with.pod_drain.max);
    }
}

/// A single replica drained while its replacement still starts (a 2-minute cold start):
/// nothing can take the streams at the deadline, so they end there, as without handoff.
#[test]
fn without_a_peer_nothing_is_handed_off() {
    let spec = fleet(1, 120);
    let plain = run(&spec, Scenario::Drain, false);
    let with = run(&spec, Scenario::Drain, true);
    assert!(plain.requests.truncated > 0, "{plain:#?}");
    assert_eq!(with.requests.handed_off, 0, "{with:#?}");
    assert_eq!(with.requests.truncated, plain.requests.truncated);
}
