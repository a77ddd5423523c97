//! The task that drives the drain machine on real time and performs its actions.

use std::sync::Arc;
use std::time::Duration;

use lameduck_timeline::Action;

use crate::state::Shared;

/// Drives the drain machine on real time until the process must exit: performs every action,
/// sleeps until the machine's next timeout or the next event.
pub async fn drive(shared: Arc<Shared>) {
    let mut actions = Vec::with_capacity(8);
    loop {
        let timeout = {
            let mut m = shared.machine();
            m.handle_timeout(shared.now());
            while let Some(a) = m.poll_action() {
                actions.push(a);
            }
            shared.metrics.set_phase(m.phase());
            if let Some(start) = m.drain_started() {
                let end = m.report().and_then(|r| r.total).map(|t| start + t);
                let elapsed = end.unwrap_or_else(|| shared.now()).saturating_sub(start);
                shared.metrics.drain_duration.set(elapsed.as_secs_f64());
            }
            m.poll_timeout()
        };
        for action in actions.drain(..) {
            perform(&shared, action);
        }
        if shared.exit.is_cancelled() {
            return;
        }
        // While draining, refresh the duration gauge at least once a second.
        let draining = shared.announce.is_cancelled();
        let until = match (timeout, draining) {
            (Some(t), true) => Some(t.min(shared.now() + Duration::from_secs(1))),
            (Some(t), false) => Some(t),
            (None, true) if shared.drained.borrow().is_none() => {
                Some(shared.now() + Duration::from_secs(1))
            }
            (None, _) => None,
        };
        match until {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(shared.origin() + t) => {}
                    _ = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

fn perform(shared: &Shared, action: Action) {
    match action {
        Action::GoUnready => {
            shared.metrics.ready.set(0);
            tracing::info!(phase = "announcing", "Unready: readiness now fails");
        }
        Action::Announce => {
            shared.announce.cancel();
            tracing::info!(
                "Announcing: closing idle connections, GOAWAY to HTTP/2 clients, Connection: close on HTTP/1.1 responses"
            );
        }
        Action::StartRefusing => {
            let in_flight = shared.machine().in_flight();
            tracing::info!(
                phase = "finishing",
                in_flight,
                "Finishing: new arrivals are refused"
            );
        }
        Action::EndStreams => {
            let in_flight = shared.machine().in_flight();
            tracing::warn!(
                phase = "deadline",
                in_flight,
                "Deadline: ending streams with a terminal event, aborting the rest"
            );
            shared.deadline.cancel();
        }
        Action::Drained => {
            let report = shared.report();
            if let Some(r) = &report {
                tracing::info!(
                    phase = "done",
                    total_s = r.total.map(|t| t.as_secs_f64()),
                    completed = r.completed,
                    truncated = r.truncated,
                    rejected = r.rejected,
                    "Drained"
                );
            }
            // Anything still around after the linger is cut now.
            shared.deadline.cancel();
            shared.drained.send_replace(report);
        }
        Action::EndRelays => {
            let relaying = shared.machine().relays();
            tracing::warn!(
                relaying,
                "Hard stop: ending handed-off streams still relaying with a terminal event"
            );
            shared.relays_end.cancel();
        }
        Action::SignalChild => crate::supervisor::signal_child(shared, false),
        Action::KillChild => crate::supervisor::signal_child(shared, true),
        Action::Exit => shared.exit.cancel(),
    }
}
