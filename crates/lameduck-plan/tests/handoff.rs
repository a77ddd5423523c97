//! Handoff in the simulator: at the drain deadline a gate hands each stream in flight to a
//! peer and relays it through its own pod, which lives no longer than its grace period; behind
//! a gateway, the stream continues on the peer whatever ends its pod.

use std::time::Duration;

use lameduck_plan::{
    FleetSpec, Latency, OnSigterm, PodModel, Rate, Scenario, Shutdown, Sim, SimConfig, SimReport,
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
    run_with(spec, scenario, handoff, false)
}

fn run_with(spec: &FleetSpec, scenario: Scenario, handoff: bool, gateway: bool) -> SimReport {
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
            gateway,
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

/// Behind a gateway the client's connection does not end on the pod: every stream the
/// deadline ends continues on a peer and completes there, the long ones too, and the pods
/// exit as soon as their deadline passed, relaying nothing.
#[test]
fn behind_a_gateway_every_stream_the_deadline_ends_completes_on_a_peer() {
    for scenario in [Scenario::Drain, Scenario::Rollout] {
        let spec = fleet(4, 20);
        let plain = run(&spec, scenario, false);
        let relayed = run(&spec, scenario, true);
        let gateway = run_with(&spec, scenario, false, true);
        assert_eq!(
            plain.requests.total, gateway.requests.total,
            "same arrivals"
        );
        assert!(plain.requests.truncated > 0, "{scenario:?}: {plain:#?}");
        // Each stream the deadline ends is accounted for once: continued, or ended when no
        // attempt found a peer with a free slot (rare: the peers have 64 slots).
        assert_eq!(
            gateway.requests.handed_off + gateway.requests.truncated,
            plain.requests.truncated,
            "{scenario:?}: {gateway:#?}"
        );
        assert_eq!(gateway.requests.killed, 0, "{scenario:?}: {gateway:#?}");
        assert!(
            gateway.requests.truncated * 4 <= plain.requests.truncated,
            "{scenario:?}: {gateway:#?}"
        );
        assert!(gateway.requests.handed_off > relayed.requests.handed_off);
        assert_eq!(
            gateway.requests.ok,
            plain.requests.ok + gateway.requests.handed_off
        );
        // No pod waits for a relay.
        assert!(
            gateway.pod_drain.max <= plain.pod_drain.max + 0.001,
            "{scenario:?}: {} > {}",
            gateway.pod_drain.max,
            plain.pod_drain.max
        );
    }
}

/// A pod without a gate whose engine aborts its streams on SIGTERM (vLLM's default) loses
/// them; behind a gateway they continue on a peer.
#[test]
fn behind_a_gateway_streams_an_ungated_pod_aborts_continue() {
    let mut spec = fleet(4, 20);
    spec.pod.shutdown = Shutdown::Plain {
        pre_stop: S(0),
        on_sigterm: OnSigterm::Abort,
    };
    let plain = run(&spec, Scenario::Rollout, false);
    let gateway = run_with(&spec, Scenario::Rollout, false, true);
    let lost = |r: &SimReport| r.requests.killed + r.requests.truncated;
    assert!(lost(&plain) > 0, "{plain:#?}");
    // Continuations change the pods' loads, so the balancer's later choices differ a little
    // from the run without a gateway: what is lost is compared, not matched stream by stream.
    assert!(gateway.requests.handed_off > 0, "{gateway:#?}");
    assert!(lost(&gateway) * 4 <= lost(&plain), "{gateway:#?}");
    assert_eq!(
        gateway.requests.ok + lost(&gateway) + gateway.requests.refused,
        gateway.requests.total,
        "{gateway:#?}"
    );
}
