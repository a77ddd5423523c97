//! The terminal table and the JSON document of a rehearsal.

use std::fmt::Write as _;

use serde::Serialize;

use crate::noise::Timing;
use crate::run::{Plan, Scenario, SetupResult};

/// A whole rehearsal's results.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The speed-up the run used (figures are unscaled).
    pub time_scale: f64,
    /// The seed.
    pub seed: u64,
    /// Mean arrivals per second.
    pub rate: f64,
    /// The propagation lag (`1s-3s`).
    pub lag: String,
    /// The judged setup (the last).
    pub subject: String,
    /// Whether the judged setup lost nothing.
    pub passed: bool,
    /// Per setup, in order.
    pub setups: Vec<SetupResult>,
    /// How late the machine ran the rehearsal's timers, and whether the figures hold.
    pub timing: Timing,
}

impl RunReport {
    /// Collects the results; the last setup is the one judged.
    pub fn new(plan: &Plan, setups: Vec<SetupResult>, timing: Timing) -> Self {
        let subject = setups.last();
        RunReport {
            scenario: plan.scenario,
            time_scale: plan.time_scale,
            seed: plan.seed,
            rate: plan.load.rate,
            lag: plan.lag.to_string(),
            subject: subject.map(|s| s.setup.name.clone()).unwrap_or_default(),
            passed: subject.is_some_and(SetupResult::lost_nothing),
            setups,
            timing,
        }
    }

    /// The table and verdicts for a terminal.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let scenario = match self.scenario {
            Scenario::Drain => "drain (one pod deleted mid-load)",
            Scenario::Rollout => "rollout (every pod replaced)",
            Scenario::Spot => "spot (one node reclaimed after its notice)",
            Scenario::Rainbow => {
                "rainbow (a new colour beside the old one; the old one deleted once its gates are idle)"
            }
        };
        let _ = writeln!(
            out,
            "Scenario: {scenario}. Propagation lag {}, {} requests/s, seed {}. Times are unscaled seconds (run {}x faster); added latency is real time.\n",
            self.lag, self.rate, self.seed, self.time_scale
        );
        let width = self
            .setups
            .iter()
            .map(|s| s.setup.name.len())
            .max()
            .unwrap_or(8)
            .max(9);
        let _ = write!(out, "{:<22}", "");
        for s in &self.setups {
            let _ = write!(out, " {:>width$}", s.setup.name);
        }
        out.push('\n');
        for (label, cell) in ROWS {
            let _ = write!(out, "{label:<22}");
            for s in &self.setups {
                let _ = write!(out, " {:>width$}", cell(s));
            }
            out.push('\n');
        }
        out.push('\n');
        for s in &self.setups {
            let mark = if s.lost_nothing() { "✓" } else { "✗" };
            let _ = writeln!(out, "{mark} {:<width$}  {}", s.setup.name, s.verdict);
            let _ = writeln!(out, "  {:<width$}  {}", "", s.setup.description);
            for note in &s.setup.notes {
                let _ = writeln!(out, "  {:<width$}  note: {note}", "");
            }
        }
        if let Some(line) = self.gate_cost() {
            let _ = writeln!(out, "\n{line}");
        }
        let t = &self.timing;
        if t.trustworthy {
            let _ = writeln!(
                out,
                "\nTiming: timers ran {:.1} ms late at the 99th percentile (real), {:.2} s at {}x: the figures hold to about that.",
                t.timer_late_p99_ms, t.unscaled_error_s, self.time_scale
            );
        } else {
            let _ = writeln!(
                out,
                "\nWARNING: timing noise. Timers ran {:.1} ms late at the 99th percentile (worst {:.0} ms, real), which is {:.2} s at {}x: the durations and latencies above may be off by that much (the counts of lost requests are not). The machine is busy; rerun with a lower --time-scale, or when it is quieter.",
                t.timer_late_p99_ms, t.timer_late_max_ms, t.unscaled_error_s, self.time_scale
            );
        }
        out
    }

    /// What the gate itself added to the first token, against the naive setup of the same run:
    /// the difference of the medians of what each path added, in real milliseconds.
    pub fn gate_cost(&self) -> Option<String> {
        let naive = self.setups.iter().find(|s| s.setup.name == "naive")?;
        let gated = self
            .setups
            .iter()
            .rev()
            .find(|s| matches!(s.setup.server, crate::setup::Server::Gate { .. }))?;
        let (n50, g50) = (naive.summary.added_p50_ms?, gated.summary.added_p50_ms?);
        let (n99, g99) = (naive.summary.added_p99_ms?, gated.summary.added_p99_ms?);
        Some(format!(
            "The gate ({}) added {:.1} ms to the first token at the median and {:.1} ms at the 99th percentile, in real time, against naive in this run.",
            gated.setup.name,
            g50 - n50,
            g99 - n99
        ))
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// A row of the comparison table: its label and how to compute a setup's cell.
pub type Row = (&'static str, fn(&SetupResult) -> String);

/// The comparison table's rows, shared by the terminal and the HTML report.
pub const ROWS: [Row; 15] = [
    ("requests", |s| s.summary.requests.to_string()),
    ("ok", |s| s.summary.ok.to_string()),
    ("refused", |s| s.summary.refused.to_string()),
    ("reset", |s| s.summary.reset.to_string()),
    ("truncated", |s| s.summary.truncated.to_string()),
    ("  told the client", |s| {
        s.summary.truncated_clean.to_string()
    }),
    ("TTFT p50 (s)", |s| secs(s.summary.ttft_p50)),
    ("TTFT p99 (s)", |s| secs(s.summary.ttft_p99)),
    ("added p50 (ms, real)", |s| ms(s.summary.added_p50_ms)),
    ("added p99 (ms, real)", |s| ms(s.summary.added_p99_ms)),
    ("drain (s)", |s| secs(s.summary.drain_seconds)),
    ("propagation lag (s)", |s| secs(s.summary.propagation_lag)),
    ("routed after delete", |s| {
        s.summary.routed_after_delete.to_string()
    }),
    ("min ready endpoints", |s| {
        s.summary
            .min_ready
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    }),
    ("SIGKILLs", |s| s.summary.sigkills.to_string()),
];
