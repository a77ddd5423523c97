//! How much the machine delays the rehearsal's timers. A rehearsal runs `--time-scale` times
//! faster than real time, so every real delay it suffers (a busy CPU, a slow fork) weighs that
//! many times more in its unscaled figures. A task sleeps 10 ms over and over while the setups
//! run and records how late each wake-up came; a run whose lateness, scaled, could move its
//! figures by more than [`NOISE_LIMIT`] is marked as not to be trusted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Unscaled timing error above which a run's figures are not to be trusted.
pub const NOISE_LIMIT: Duration = Duration::from_millis(500);

/// The sampling period.
const TICK: Duration = Duration::from_millis(10);
/// At most this many samples are kept (about 33 minutes of them).
const MAX_SAMPLES: usize = 200_000;

/// A running sampler; [`Noise::finish`] ends it.
pub struct Noise {
    late: Arc<Mutex<Vec<f32>>>,
    task: tokio::task::JoinHandle<()>,
}

/// How late timers ran during a rehearsal.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Wake-ups measured.
    pub samples: usize,
    /// Median lateness, real milliseconds.
    pub timer_late_p50_ms: f64,
    /// 99th percentile lateness, real milliseconds.
    pub timer_late_p99_ms: f64,
    /// The worst, real milliseconds.
    pub timer_late_max_ms: f64,
    /// The 99th percentile at the run's time scale: how far an unscaled figure may be off.
    pub unscaled_error_s: f64,
    /// Whether that stays under [`NOISE_LIMIT`].
    pub trustworthy: bool,
}

impl Noise {
    /// Starts sampling (on the current tokio runtime).
    pub fn start() -> Self {
        let late = Arc::new(Mutex::new(Vec::new()));
        let sink = late.clone();
        let task = tokio::spawn(async move {
            loop {
                let start = Instant::now();
                tokio::time::sleep(TICK).await;
                let over = start.elapsed().saturating_sub(TICK);
                let Ok(mut v) = sink.lock() else { return };
                if v.len() < MAX_SAMPLES {
                    v.push(over.as_secs_f32() * 1000.0);
                }
            }
        });
        Noise { late, task }
    }

    /// Stops sampling; the figures, judged at `scale`.
    pub fn finish(self, scale: f64) -> Timing {
        self.task.abort();
        let mut v: Vec<f64> = self
            .late
            .lock()
            .map(|v| v.iter().map(|&x| f64::from(x)).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() - 1) as f64 * p).round() as usize;
            v[i.min(v.len() - 1)]
        };
        let p99 = q(0.99);
        let unscaled = p99 / 1000.0 * scale;
        Timing {
            samples: v.len(),
            timer_late_p50_ms: q(0.5),
            timer_late_p99_ms: p99,
            timer_late_max_ms: v.last().copied().unwrap_or(0.0),
            unscaled_error_s: unscaled,
            trustworthy: unscaled < NOISE_LIMIT.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy runtime thread delays the sampler's wake-ups, and the figures show it.
    #[tokio::test(flavor = "current_thread")]
    async fn blocking_the_runtime_shows_as_lateness() {
        let quiet = Noise::start();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = quiet.finish(10.0);
        assert!(t.samples >= 5, "{t:?}");
        let noisy = Noise::start();
        tokio::time::sleep(Duration::from_millis(30)).await;
        for _ in 0..5 {
            // Blocks the only runtime thread: the sampler cannot wake up on time.
            std::thread::sleep(Duration::from_millis(200));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let t = noisy.finish(10.0);
        assert!(t.timer_late_max_ms >= 150.0, "{t:?}");
        assert!(!t.trustworthy, "200 ms late × 10 is 2 s unscaled: {t:?}");
    }
}
