//! The grace period a pod needs, from the pod model: the one computation `lint`, `inject` and
//! `plan` share ([`lameduck_timeline::GraceNeed`] holds the arithmetic and its explanation).

use std::time::Duration;

use lameduck_timeline::{CONVERGENCE_REASON, GraceNeed};

use crate::model::PodModel;

/// What a pod needs behind the gate: requests are admitted while the gate announces (at most
/// its `--convergence-max`), each may run `longest`, and the gate's `--kill-margin` is kept.
pub fn grace_need_gated(
    convergence_max: Duration,
    margin: Duration,
    longest: (Duration, String),
) -> GraceNeed {
    GraceNeed {
        admitted_until: convergence_max,
        admitted_because: CONVERGENCE_REASON.into(),
        longest: longest.0,
        longest_from: longest.1,
        margin,
    }
}

impl PodModel {
    /// The pod's convergence window: behind the gate, its `--convergence-max` (after
    /// `--pre-stop-spent`), since the gate stops admitting then; without it, the serving
    /// container's preStop sleep when that is longer than `default` (a shorter sleep does not
    /// make load balancers converge sooner), else `default`.
    pub fn convergence_window(&self, serving: Option<usize>, default: Duration) -> Duration {
        if let Some(g) = &self.gate {
            return g.args.pre_stop_spent.0 + g.args.convergence_max.0;
        }
        serving
            .and_then(|i| self.containers.get(i))
            .and_then(|c| c.termination.pre_stop.duration())
            .unwrap_or_default()
            .max(default)
    }

    /// What this pod needs, as it is set up: requests are admitted for its convergence window
    /// ([`PodModel::convergence_window`]; `default` when it states none), each may run
    /// `longest`, and the kill margin (the gate's, or the default) is kept. The same figure,
    /// in the same words, before and after `inject`.
    pub fn grace_need(
        &self,
        serving: Option<usize>,
        longest: (Duration, String),
        default: Duration,
    ) -> GraceNeed {
        let window = self.convergence_window(serving, default);
        let margin = self
            .gate
            .as_ref()
            .map_or(lameduck_timeline::DEFAULT_KILL_MARGIN, |g| {
                g.args.kill_margin.0
            });
        let mut need = grace_need_gated(window, margin, longest);
        if self
            .gate
            .as_ref()
            .is_some_and(|g| !g.args.pre_stop_spent.0.is_zero())
        {
            need.admitted_because = "a preStop before the gate's drain, --pre-stop-spent, then the gate's convergence window, --convergence-max".into();
        }
        need
    }
}
