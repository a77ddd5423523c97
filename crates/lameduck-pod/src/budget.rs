//! The grace period a pod needs, from the pod model: the one computation `lint`, `inject` and
//! `plan` share ([`lameduck_timeline::GraceNeed`] holds the arithmetic and its explanation).

use std::time::Duration;

use lameduck_timeline::GraceNeed;

use crate::model::PodModel;

/// What a pod needs behind the gate: requests are admitted while the gate announces (at most
/// its `--convergence-max`, after `--prestop-spent` of a preStop sleep when there is one), each
/// may run `longest`, and the gate's `--kill-margin` is kept.
pub fn grace_need_gated(
    convergence_max: Duration,
    margin: Duration,
    longest: (Duration, String),
) -> GraceNeed {
    GraceNeed {
        admitted_until: convergence_max,
        admitted_because:
            "the gate keeps admitting while it announces, at most its --convergence-max".into(),
        longest: longest.0,
        longest_from: longest.1,
        margin,
    }
}

impl PodModel {
    /// What this pod needs, as it is set up: behind the gate, the gate's own settings; without
    /// it, requests are admitted until the serving container's preStop ends (SIGTERM stops a
    /// server from taking new ones), and the default kill margin is kept.
    pub fn grace_need(&self, serving: Option<usize>, longest: (Duration, String)) -> GraceNeed {
        if let Some(g) = &self.gate {
            let spent = g.args.prestop_spent.0;
            let mut need =
                grace_need_gated(g.args.convergence_max.0, g.args.kill_margin.0, longest);
            if !spent.is_zero() {
                need.admitted_until += spent;
                need.admitted_because = "the preStop before the gate's drain (--prestop-spent), then the gate's announcing window (--convergence-max)".into();
            }
            return need;
        }
        let hook = serving
            .and_then(|i| self.containers.get(i))
            .map(|c| c.termination.pre_stop.duration());
        let (admitted_until, because) = match hook {
            Some(Some(d)) if !d.is_zero() => (
                d,
                "the preStop hook runs first, and the pod can still get requests until it ends"
                    .to_owned(),
            ),
            Some(None) => (
                Duration::ZERO,
                "its preStop's run time cannot be read, counted as 0".to_owned(),
            ),
            _ => (
                Duration::ZERO,
                "no preStop: SIGTERM comes at once".to_owned(),
            ),
        };
        GraceNeed {
            admitted_until,
            admitted_because: because,
            longest: longest.0,
            longest_from: longest.1,
            margin: lameduck_timeline::DEFAULT_KILL_MARGIN,
        }
    }
}
