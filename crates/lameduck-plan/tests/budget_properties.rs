//! Property tests of the budget arithmetic behind `plan`'s recommendations.

use std::time::Duration;

use lameduck_plan::{FleetSpec, Inputs, Latency, Overrides, plan};
use lameduck_timeline::{Budget, Convergence};
use proptest::prelude::*;

fn fleet(lag_ms: u64) -> FleetSpec {
    FleetSpec::from_flags(&Overrides {
        replicas: Some(8),
        propagation_lag: Some(Duration::from_millis(lag_ms)),
        ..Overrides::default()
    })
    .0
}

fn grace(lat: &Latency, percentile: f64, lag_ms: u64) -> Duration {
    let p = plan(
        &fleet(lag_ms),
        &Inputs {
            latency: lat,
            percentile,
            rate: 1.0,
            spot: None,
        },
    );
    p.fleet.pod.grace
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A higher percentile never asks for a shorter grace period.
    #[test]
    fn grace_is_monotone_in_the_percentile(
        samples in prop::collection::vec(0.0f64..600.0, 1..200),
        p1 in 1.0f64..100.0,
        p2 in 1.0f64..100.0,
        lag in 0u64..120_000,
    ) {
        let lat = Latency::from_samples(samples).expect("non-empty");
        let (lo, hi) = if p1 <= p2 { (p1, p2) } else { (p2, p1) };
        prop_assert!(grace(&lat, lo, lag) <= grace(&lat, hi, lag));
        // And it always covers that percentile of requests.
        prop_assert!(grace(&lat, hi, lag) >= lat.percentile(hi));
    }

    /// A longer propagation lag (so a longer convergence window) never shortens the grace
    /// period, and the window always covers the lag.
    #[test]
    fn grace_is_monotone_in_the_convergence_window(
        samples in prop::collection::vec(0.0f64..600.0, 1..50),
        lag1 in 0u64..300_000,
        lag2 in 0u64..300_000,
    ) {
        let lat = Latency::from_samples(samples).expect("non-empty");
        let (lo, hi) = if lag1 <= lag2 { (lag1, lag2) } else { (lag2, lag1) };
        prop_assert!(grace(&lat, 99.9, lo) <= grace(&lat, 99.9, hi));
        let c_lo = Convergence::covering(Duration::from_millis(lo));
        let c_hi = Convergence::covering(Duration::from_millis(hi));
        prop_assert!(c_lo.max <= c_hi.max && c_lo.min <= c_hi.min);
        prop_assert!(c_hi.min >= Duration::from_millis(hi) && c_hi.max >= c_hi.min);
    }

    /// The spot cap and the gated grace are inverse: the cap of the window a request needs is
    /// that request.
    #[test]
    fn request_cap_inverts_gated_grace(
        conv in 0u64..600_000,
        req in 0u64..3_600_000,
        margin in 0u64..30_000,
    ) {
        let (c, r, m) = (
            Duration::from_millis(conv),
            Duration::from_millis(req),
            Duration::from_millis(margin),
        );
        prop_assert_eq!(Budget::request_cap(Budget::gated_grace(c, r, m), c, m), r);
    }

    /// Histogram percentiles are monotone too.
    #[test]
    fn histogram_percentiles_are_monotone(
        counts in prop::collection::vec(0u32..1000, 1..12),
        p1 in 0.1f64..100.0,
        p2 in 0.1f64..100.0,
    ) {
        let mut text = String::new();
        let mut cum = 1u64;
        for (i, c) in counts.iter().enumerate() {
            cum += u64::from(*c);
            text.push_str(&format!("h_bucket{{le=\"{}\"}} {cum}\n", (i + 1) * 10));
        }
        text.push_str(&format!("h_bucket{{le=\"+Inf\"}} {cum}\n"));
        let lat = Latency::parse(&text, None, None).expect("parses");
        let (lo, hi) = if p1 <= p2 { (p1, p2) } else { (p2, p1) };
        prop_assert!(lat.percentile(lo) <= lat.percentile(hi));
    }
}
