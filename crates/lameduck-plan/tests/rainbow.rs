//! The `rainbow` scenario: a release under `lameduck rainbow`, simulated with the controller's
//! own decision, against rolling updates of the same pods on the same arrivals.

use std::time::Duration;

use lameduck_plan::sim::rainbow_defaults;
use lameduck_plan::{
    FleetSpec, Latency, OnSigterm, PodModel, Rate, Scenario, Shutdown, Sim, SimConfig, SimReport,
};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Eight warm pods, 60 s of grace, requests of `secs` each; a gate when `gated`.
fn fleet(gated: bool) -> FleetSpec {
    FleetSpec {
        name: "test".into(),
        replicas: 8,
        pod: PodModel {
            grace: S(60),
            shutdown: if gated {
                Shutdown::Gate {
                    convergence: lameduck_timeline::Convergence::default(),
                    margin: S(5),
                }
            } else {
                Shutdown::Plain {
                    pre_stop: S(0),
                    on_sigterm: OnSigterm::Drain { limit: None },
                }
            },
            cold_start: S(30),
            ready_after: S(30),
            concurrency: 16,
        },
        max_surge: 2,
        max_unavailable: 2,
        pdb_min_available: None,
        pods_per_node: 1,
        propagation_lag: S(3),
    }
}

fn run(
    spec: &FleetSpec,
    secs: f64,
    scenario: Scenario,
    max_age: Option<Duration>,
    horizon: Option<Duration>,
) -> SimReport {
    let lat = Latency::from_samples(vec![secs]).expect("one sample");
    let mut settings = rainbow_defaults(spec.replicas);
    settings.max_age = max_age;
    Sim::new(
        spec,
        &lat,
        Rate::Constant(0.2),
        SimConfig {
            scenario,
            seed: 3,
            start: S(700),
            every: None,
            horizon,
            sample_every: S(1),
            agent: false,
            surge: false,
            rainbow: Some(settings),
            handoff: false,
            gateway: false,
        },
    )
    .run()
}

fn took(r: &SimReport) -> f64 {
    r.disruptions[0].duration().expect("the release ends")
}

/// Requests of 10 minutes against a 60 s grace period: the rolling update ends the old pods'
/// streams at their deadline; the rainbow keeps the old colour (all eight pods, still not
/// terminating) until its last stream has ended and the quiet period has passed, and loses
/// nothing. It holds more pods meanwhile, which the extra pod-hours show.
#[test]
fn a_release_keeps_the_old_colour_until_its_work_is_done() {
    let spec = fleet(true);
    let horizon = Some(S(3000));
    let rolling = run(&spec, 600.0, Scenario::Rollout, None, horizon);
    let rainbow = run(&spec, 600.0, Scenario::Rainbow, Some(S(24 * 3600)), horizon);
    assert_eq!(
        rolling.requests.total, rainbow.requests.total,
        "same arrivals"
    );
    assert!(
        rolling.requests.truncated > 0,
        "60 s of grace cannot hold 600 s streams: {rolling:#?}"
    );
    assert_eq!(rainbow.requests.lost(), 0, "{rainbow:#?}");
    assert_eq!(
        rainbow.peak_pods, 16,
        "a whole new colour beside the old one"
    );
    assert_eq!(
        rainbow.min_ready, 8,
        "the Services move only to a Ready colour"
    );
    assert_eq!(
        rainbow.peak_terminating, 8,
        "the old colour is retired at once"
    );
    // The last old stream started just before the Services moved (a cold start and a poll
    // after the release) and ran 600 s; then 30 s of quiet.
    let t = took(&rainbow);
    assert!((600.0..900.0).contains(&t), "the release took {t}s");
    assert!(
        rainbow.extra_pod_hours > 8.0 * 600.0 / 3600.0 * 0.9,
        "eight old pods for about ten minutes: {} pod-hours",
        rainbow.extra_pod_hours
    );
    assert!(rolling.extra_pod_hours < rainbow.extra_pod_hours);
}

/// maxAge bounds what a stuck colour costs: it is retired with its streams in flight, and the
/// gate ends them cleanly within the grace period.
#[test]
fn max_age_retires_a_colour_that_still_has_work() {
    let spec = fleet(true);
    let r = run(
        &spec,
        3000.0,
        Scenario::Rainbow,
        Some(S(300)),
        Some(S(1500)),
    );
    assert!(r.requests.truncated > 0, "{r:#?}");
    assert_eq!(r.requests.killed, 0, "{r:#?}");
    let t = took(&r);
    // Ready after the cold start (30 s), moved at the next poll, retired 300 s later, drained
    // within the 60 s grace period.
    assert!((330.0..500.0).contains(&t), "the release took {t}s");
}

/// Without a gate the controller cannot read the work, so it keeps the old colour until
/// maxAge even when its requests are long done.
#[test]
fn without_a_gate_only_max_age_retires() {
    let spec = fleet(false);
    let r = run(&spec, 60.0, Scenario::Rainbow, Some(S(1800)), Some(S(1000)));
    assert_eq!(r.requests.lost(), 0, "{r:#?}");
    let t = took(&r);
    assert!(
        (1800.0..1900.0).contains(&t),
        "kept until maxAge: the release took {t}s"
    );
    let gated = run(
        &fleet(true),
        60.0,
        Scenario::Rainbow,
        Some(S(1800)),
        Some(S(1000)),
    );
    assert!(
        took(&gated) < 300.0,
        "with a gate it goes once idle: {}s",
        took(&gated)
    );
}

/// The rolling update's extra pod-hours are its surge and terminating pods: a fleet that
/// drains in a few seconds costs almost nothing.
#[test]
fn extra_pod_hours_count_what_is_above_the_replicas() {
    let spec = fleet(true);
    let r = run(&spec, 1.0, Scenario::Rollout, None, None);
    assert!(r.extra_pod_hours > 0.0, "{r:#?}");
    assert!(r.extra_pod_hours < 0.5, "{r:#?}");
    let none = run(&spec, 1.0, Scenario::None, None, Some(S(800)));
    assert_eq!(none.extra_pod_hours, 0.0, "{none:#?}");
}
