//! The numbers of the seed articles, reproduced by the fleet simulator.

use std::time::Duration;

use lameduck_plan::{
    FleetSpec, Inputs, Latency, OnSigterm, PodModel, Rate, Scenario, Shutdown, Sim, SimConfig,
    SimReport, plan,
};

const S: fn(u64) -> Duration = Duration::from_secs;

fn plain(replicas: u32, grace: u64, pre_stop: u64, on_sigterm: OnSigterm, ready: u64) -> FleetSpec {
    FleetSpec {
        name: "test".into(),
        replicas,
        pod: PodModel {
            grace: S(grace),
            shutdown: Shutdown::Plain {
                pre_stop: S(pre_stop),
                on_sigterm,
            },
            cold_start: S(ready),
            ready_after: S(ready),
            concurrency: 64,
        },
        // The Deployment defaults: 25% each.
        max_surge: replicas.div_ceil(4),
        max_unavailable: replicas / 4,
        pdb_min_available: None,
        pods_per_node: 1,
        propagation_lag: S(3),
    }
}

fn run(spec: &FleetSpec, lat: &Latency, rate: f64, scenario: Scenario, seed: u64) -> SimReport {
    Sim::new(
        spec,
        lat,
        Rate::Constant(rate),
        SimConfig {
            scenario,
            seed,
            start: S(200),
            every: None,
            horizon: None,
            sample_every: S(1),
            agent: false,
            surge: false,
            rainbow: None,
            handoff: false,
            gateway: false,
        },
    )
    .run()
}

fn fixed(secs: f64) -> Latency {
    Latency::from_samples(vec![secs]).expect("one sample")
}

/// "If you have 10 Pods and the Pod takes 2 seconds to be ready and 20 to shut down …
/// You have double the number of pods for a short time (10 Running, 10 Terminating)."
#[test]
fn rollout_of_10_fast_pods_with_20s_shutdown_doubles_the_fleet() {
    let spec = plain(10, 30, 20, OnSigterm::Drain { limit: None }, 2);
    let r = run(&spec, &fixed(1.0), 0.0, Scenario::Rollout, 1);
    assert_eq!(r.peak_terminating, 10, "{r:#?}");
    assert_eq!(r.peak_pods, 20, "10 running + 10 terminating: {r:#?}");
    // The rollout ends when the last old pod has exited: about 20 s after the last deletion.
    let took = r.disruptions[0].duration().expect("the rollout ends");
    assert!((20.0..40.0).contains(&took), "rollout took {took}s");
    assert_eq!(
        r.pod_drain.max, 20.0,
        "each old pod terminates in its 20 s preStop"
    );
}

/// "40 replicas … a longer termination of 120 seconds … you will have 80 replicas running for
/// 120 seconds: 40 Running and 40 Terminating."
#[test]
fn rollout_of_40_pods_with_120s_shutdown_holds_80_pods_for_about_two_minutes() {
    let spec = plain(40, 180, 120, OnSigterm::Drain { limit: None }, 2);
    let r = run(&spec, &fixed(1.0), 0.0, Scenario::Rollout, 1);
    assert_eq!(r.peak_pods, 80, "{r:#?}");
    assert_eq!(r.peak_terminating, 40);
    assert!(
        (100.0..=120.0).contains(&r.time_at_peak),
        "80 pods for {}s",
        r.time_at_peak
    );
    // A 5 s shutdown holds its (brief) peak for only a few seconds.
    let quick = plain(40, 30, 5, OnSigterm::Drain { limit: None }, 2);
    let q = run(&quick, &fixed(1.0), 0.0, Scenario::Rollout, 1);
    assert!(q.time_at_peak <= 5.0, "{}s at the peak", q.time_at_peak);
}

/// A 30 s grace period against 90 s requests loses the in-flight requests of every drained
/// pod; 180 s with a preStop that covers the propagation lag and an engine that drains loses
/// none.
#[test]
fn thirty_second_grace_loses_90s_requests_and_180s_with_prestop_loses_none() {
    let lat = fixed(90.0);
    for on_sigterm in [OnSigterm::Abort, OnSigterm::Drain { limit: None }] {
        let mut naive = plain(8, 30, 0, on_sigterm, 60);
        naive.pods_per_node = 2;
        let r = run(&naive, &lat, 2.0, Scenario::Drain, 7);
        assert_eq!(r.pods_deleted, 2, "{r:#?}");
        assert_eq!(
            r.pods_losing_work, r.pods_deleted,
            "every drained pod loses in-flight work ({on_sigterm:?}): {r:#?}"
        );
        assert!(r.requests.killed > 0, "{r:#?}");
        if on_sigterm == OnSigterm::Abort {
            // Arrivals during the propagation lag find the port closed.
            assert!(r.requests.refused > 0, "{r:#?}");
        }
    }
    let mut complete = plain(8, 180, 15, OnSigterm::Drain { limit: None }, 60);
    complete.pods_per_node = 2;
    let r = run(&complete, &lat, 2.0, Scenario::Drain, 7);
    assert_eq!(r.pods_deleted, 2);
    assert_eq!(r.requests.lost(), 0, "{r:#?}");
    assert!(r.requests.ok > 100);
    // The drained pods held work and finished it.
    assert!(
        r.pod_drain.max > 60.0 && r.pod_drain.max <= 15.0 + 90.0 + 1.0,
        "{r:#?}"
    );
}

/// The recommended spec (the gate, a grace from the latency data) loses nothing in any
/// scenario that leaves enough time; an engine that aborts on SIGTERM does not matter behind
/// the gate.
#[test]
fn the_recommended_spec_loses_nothing_where_the_current_one_does() {
    let lat = Latency::from_samples((1..=120).map(f64::from).collect()).expect("samples");
    let mut current = plain(8, 30, 0, OnSigterm::Abort, 60);
    current.pods_per_node = 2;
    let p = plan(
        &current,
        &Inputs {
            latency: &lat,
            percentile: 99.9,
            rate: 2.0,
            spot: None,
        },
    );
    // The default 15 s convergence window (no preStop) + the longest request + the margin.
    assert_eq!(p.fleet.pod.grace, S(15 + 120 + 5));
    for scenario in [Scenario::Drain, Scenario::Rollout, Scenario::ScaleDown] {
        let before = run(&current, &lat, 2.0, scenario, 3);
        let after = run(&p.fleet, &lat, 2.0, scenario, 3);
        assert!(before.requests.lost() > 0, "{scenario:?}: {before:#?}");
        assert_eq!(after.requests.lost(), 0, "{scenario:?}: {after:#?}");
    }
}

#[test]
fn spot_notices_cut_what_does_not_fit() {
    let lat = fixed(100.0);
    let mut gated = plain(6, 180, 0, OnSigterm::Drain { limit: None }, 30);
    gated.pod.shutdown = Shutdown::Gate {
        convergence: lameduck_timeline::Convergence::default(),
        margin: S(5),
    };
    gated.pods_per_node = 2;
    let aws = run(&gated, &lat, 1.0, Scenario::SpotAws, 5);
    let gcp = run(&gated, &lat, 1.0, Scenario::SpotGcp, 5);
    // 100 s requests (plus the few seconds of convergence) fit in AWS's 120 s notice; GCP's
    // node shutdown gives pods 15 s, which they do not fit in.
    assert_eq!(aws.requests.lost(), 0, "{aws:#?}");
    assert!(gcp.requests.killed > 0, "{gcp:#?}");
    assert!(gcp.pod_drain.max <= 15.0 + 1e-9, "{gcp:#?}");
    // 150 s requests do not fit in AWS's notice either: the node vanishes at 120 s.
    let long = run(&gated, &fixed(150.0), 1.0, Scenario::SpotAws, 5);
    assert!(long.requests.killed > 0, "{long:#?}");
    assert!(long.pod_drain.max <= 120.0 + 1e-9, "{long:#?}");
}

#[test]
fn a_pdb_that_allows_nothing_stalls_the_drain() {
    let mut spec = plain(4, 30, 5, OnSigterm::Drain { limit: None }, 5);
    spec.pdb_min_available = Some(4);
    let r = run(&spec, &fixed(1.0), 1.0, Scenario::Drain, 1);
    assert_eq!(r.disruptions.len(), 1);
    assert_eq!(r.disruptions[0].end, None, "{r:#?}");
    assert_eq!(r.pods_deleted, 0);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let lat = Latency::from_samples((1..=60).map(f64::from).collect()).expect("samples");
    let spec = plain(6, 30, 0, OnSigterm::Drain { limit: None }, 20);
    let a = run(&spec, &lat, 3.0, Scenario::Rollout, 42);
    let b = run(&spec, &lat, 3.0, Scenario::Rollout, 42);
    let c = run(&spec, &lat, 3.0, Scenario::Rollout, 43);
    assert_eq!(a, b);
    assert_ne!(a.requests, c.requests, "another seed draws other arrivals");
}
