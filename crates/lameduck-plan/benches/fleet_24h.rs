//! 24 hours of a 40-replica fleet at 50 requests/s with a rolling update every hour
//! (`cargo bench -p lameduck-plan --bench fleet_24h`; figures in docs/benchmarks.md).

use std::time::Duration;

use lameduck_plan::{FleetSpec, Latency, Overrides, Rate, Scenario, Sim, SimConfig};

fn main() {
    divan::main();
}

fn fleet() -> FleetSpec {
    FleetSpec::from_flags(&Overrides {
        replicas: Some(40),
        concurrency: Some(128),
        cold_start: Some(Duration::from_secs(60)),
        grace: Some(Duration::from_secs(30)),
        ..Overrides::default()
    })
    .0
}

#[divan::bench(sample_count = 5)]
fn rollout_every_hour_for_24h(bencher: divan::Bencher) {
    let spec = fleet();
    let latency = Latency::from_max(Duration::from_secs(120));
    bencher.bench_local(|| {
        let r = Sim::new(
            &spec,
            &latency,
            Rate::Constant(50.0),
            SimConfig {
                scenario: Scenario::Rollout,
                seed: 1,
                start: Duration::from_secs(3600),
                every: Some(Duration::from_secs(3600)),
                horizon: Some(Duration::from_secs(24 * 3600)),
                sample_every: Duration::from_secs(1),
                agent: false,
                surge: false,
                rainbow: None,
                handoff: false,
                gateway: false,
            },
        )
        .run();
        assert!(r.requests.total > 4_000_000);
        r
    });
}
