//! What a simulation measured, and how it is shown in the terminal.

use std::fmt::Write as _;

use serde::Serialize;

/// Requests by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Every request sent.
    pub total: u64,
    /// Completed normally.
    pub ok: u64,
    /// Never served: no endpoint, connection refused, or 503 from a draining pod.
    pub refused: u64,
    /// Cut dead mid-request (SIGKILL, an engine aborting on SIGTERM, a node vanishing).
    pub killed: u64,
    /// Ended early by the gate's deadline, with a clean terminal event.
    pub truncated: u64,
    /// Of the ok, those completed on a peer after a handoff at the deadline.
    pub handed_off: u64,
}

impl Counts {
    /// Requests that did not complete normally.
    pub fn lost(&self) -> u64 {
        self.refused + self.killed + self.truncated
    }
}

/// Percentiles in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// One disruption, from start to the moment it had nothing left to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSpan {
    /// Which scenario.
    pub scenario: &'static str,
    /// Seconds since the simulation's start.
    pub start: f64,
    /// When it ended; `None` if it never did (a PDB that allows no eviction).
    pub end: Option<f64>,
}

impl EventSpan {
    /// How long it took, if it ended.
    pub fn duration(&self) -> Option<f64> {
        self.end.map(|e| e - self.start)
    }
}

/// The fleet over time, sampled at a fixed step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Sample times (seconds).
    pub t: Vec<f32>,
    /// Pods the balancer routes to.
    pub ready: Vec<u32>,
    /// Pods terminating.
    pub terminating: Vec<u32>,
    /// Requests in flight or queued in pods.
    pub in_flight: Vec<u32>,
}

/// Everything one simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The seed that reproduces it.
    pub seed: u64,
    /// Requests by outcome.
    pub requests: Counts,
    /// Time requests waited in a pod's queue for a free slot (seconds).
    pub queue_delay: Percentiles,
    /// Fewest pods in the balancer from the first disruption on.
    pub min_ready: u32,
    /// Most pods at once, running and terminating.
    pub peak_pods: u32,
    /// Most pods terminating at once.
    pub peak_terminating: u32,
    /// Seconds spent at `peak_pods`.
    pub time_at_peak: f64,
    /// Pod-hours above the spec's replicas: surge pods, terminating pods, a rainbow's old
    /// colours. What the disruption cost in capacity.
    pub extra_pod_hours: f64,
    /// Pods deleted (drained, evicted, replaced, preempted).
    pub pods_deleted: u32,
    /// Deleted pods that held requests and lost some of them.
    pub pods_losing_work: u32,
    /// Seconds from a pod's deletion until it exited.
    pub pod_drain: Percentiles,
    /// Each disruption and how long it took.
    pub disruptions: Vec<EventSpan>,
    /// Virtual seconds simulated.
    pub simulated: f64,
    /// When requests stopped arriving (seconds).
    pub arrivals_until: f64,
    /// The time series (for the chart; not in JSON).
    #[serde(skip)]
    pub series: Series,
}

/// Durations in JSON are seconds.
pub(crate) fn ser_secs<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub(crate) fn ser_opt_secs<S: serde::Serializer>(
    d: &Option<std::time::Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Rounds seconds for display: `0`, `0.42`, `12.3`, `180`.
pub fn secs(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 1.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        let s = format!("{x:.1}");
        s.trim_end_matches(".0").to_owned()
    } else {
        format!("{x:.0}")
    }
}

/// A row label and its report.
pub type Row<'a> = (&'a str, &'a SimReport);

/// The comparison table: one row per simulation.
pub fn table(rows: &[Row<'_>]) -> String {
    let head = [
        "scenario",
        "spec",
        "requests",
        "ok",
        "refused",
        "killed silently",
        "ended cleanly",
        "handed off",
        "queue p99",
        "min ready",
        "peak pods",
        "extra pod-h",
        "pod drain max",
        "took",
    ];
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| (*s).to_owned()).collect()];
    for (label, r) in rows {
        let took = match r
            .disruptions
            .iter()
            .map(EventSpan::duration)
            .collect::<Vec<_>>()
        {
            d if d.is_empty() => "-".to_owned(),
            d if d.iter().any(Option::is_none) => "never ended".to_owned(),
            d => {
                let max = d.iter().flatten().fold(0.0_f64, |a, b| a.max(*b));
                format!("{}s", secs(max))
            }
        };
        cells.push(vec![
            r.scenario.to_owned(),
            (*label).to_owned(),
            r.requests.total.to_string(),
            r.requests.ok.to_string(),
            r.requests.refused.to_string(),
            r.requests.killed.to_string(),
            r.requests.truncated.to_string(),
            r.requests.handed_off.to_string(),
            format!("{}s", secs(r.queue_delay.p99)),
            r.min_ready.to_string(),
            format!("{} for {}s", r.peak_pods, secs(r.time_at_peak)),
            secs(r.extra_pod_hours),
            format!("{}s", secs(r.pod_drain.max)),
            took,
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let w = widths[c];
            if c < 2 {
                let _ = write!(out, "{cell:<w$}  ");
            } else {
                let _ = write!(out, "{cell:>w$}  ");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}
