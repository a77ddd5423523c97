//! The terminal table and the JSON document of a rehearsal.

use std::fmt::Write as _;

use serde::Serialize;

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
}

impl RunReport {
    /// Collects the results; the last setup is the one judged.
    pub fn new(plan: &Plan, setups: Vec<SetupResult>) -> Self {
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
        }
    }

    /// The table and verdicts for a terminal.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let scenario = match self.scenario {
            Scenario::Drain => "drain (one pod deleted mid-load)",
            Scenario::Rollout => "rollout (every pod replaced)",
            Scenario::Spot => "spot (one node reclaimed after its notice)",
        };
        let _ = writeln!(
            out,
            "Scenario: {scenario}. Propagation lag {}, {} requests/s, seed {}. Times are unscaled seconds (run {}x faster).\n",
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
        out
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// A row of the comparison table: its label and how to compute a setup's cell.
pub type Row = (&'static str, fn(&SetupResult) -> String);

/// The comparison table's rows, shared by the terminal and the HTML report.
pub const ROWS: [Row; 11] = [
    ("requests", |s| s.summary.requests.to_string()),
    ("ok", |s| s.summary.ok.to_string()),
    ("refused", |s| s.summary.refused.to_string()),
    ("reset", |s| s.summary.reset.to_string()),
    ("truncated", |s| s.summary.truncated.to_string()),
    ("TTFT p50 (s)", |s| secs(s.summary.ttft_p50)),
    ("TTFT p99 (s)", |s| secs(s.summary.ttft_p99)),
    ("drain (s)", |s| secs(s.summary.drain_seconds)),
    ("propagation lag (s)", |s| secs(s.summary.propagation_lag)),
    ("routed after delete", |s| {
        s.summary.routed_after_delete.to_string()
    }),
    ("SIGKILLs", |s| s.summary.sigkills.to_string()),
];
