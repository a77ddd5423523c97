//! Live progress while pods leave: one line per pod (its phase, and for a gated pod the
//! requests in flight and the time to its deadline, read from the gate's `/status` through the
//! API server's pod proxy), as indicatif spinners on a terminal and as plain lines (printed
//! when they change) otherwise; and the summary at the end, from the gates' last reports.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use lameduck_gate_api::GateStatus;

/// What one pod's departure looked like.
#[derive(Debug, Clone, Default)]
struct Departure {
    how: &'static str,
    gone_after: Option<Duration>,
    completed: Option<u64>,
    truncated: Option<u64>,
    last_line: String,
}

/// The progress display for one drain.
pub struct Progress {
    json: bool,
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    pods: Mutex<BTreeMap<String, Departure>>,
}

/// The gate's admin port of a pod, when a gate serves it.
pub fn admin_port(pod: &Pod) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    let model = lameduck_pod::PodModel::new(spec);
    let gate = model.gate.as_ref()?;
    gate.flags.is_ok().then(|| gate.admin_port())
}

impl Progress {
    /// Spinners when stdout is a terminal and the output is not JSON; plain lines otherwise.
    pub fn new(json: bool) -> Progress {
        let multi = (!json && std::io::stdout().is_terminal()).then(MultiProgress::new);
        Progress {
            json,
            multi,
            bars: Mutex::new(BTreeMap::new()),
            pods: Mutex::new(BTreeMap::new()),
        }
    }

    /// A line that is not about one pod (cordon, surge steps).
    pub fn say(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// A line about one pod, or its JSON form.
    pub fn event(&self, line: &str, fields: serde_json::Value) {
        if self.json {
            println!("{fields}");
        } else {
            self.say(line);
        }
    }

    /// How the pod leaves (`surged`, `evicted`).
    pub fn leaving(&self, pod: &str, how: &'static str) {
        let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.entry(pod.to_owned()).or_default().how = how;
    }

    /// Updates the pod's line: `phase`, and what its gate says.
    pub fn update(&self, pod: &str, phase: &str, gate: Option<&GateStatus>) {
        let mut line = format!("{pod}: {phase}");
        if let Some(st) = gate {
            line.push_str(&format!(" · gate {:?}", st.phase).to_lowercase());
            line.push_str(&format!(" · {} in flight", st.in_flight_total()));
            if let Some(r) = &st.drain {
                if let Some(start) = r.started_at_unix {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    let left = start + r.report.deadline.as_secs_f64() - now;
                    if left > 0.0 {
                        line.push_str(&format!(" · deadline in {left:.0} s"));
                    }
                }
                let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
                let d = pods.entry(pod.to_owned()).or_default();
                // Handed-off streams count by how their relay ended.
                d.completed = Some(r.report.delivered());
                d.truncated = Some(r.report.cut_short());
            }
        }
        match &self.multi {
            Some(m) => {
                let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
                let bar = bars.entry(pod.to_owned()).or_insert_with(|| {
                    let b = m.add(ProgressBar::new_spinner());
                    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    {
                        b.set_style(style);
                    }
                    b.enable_steady_tick(Duration::from_millis(200));
                    b
                });
                bar.set_message(line);
            }
            None if !self.json => {
                // Plain output: a line when something other than the countdown changed.
                let key = line
                    .split(" · deadline in")
                    .next()
                    .unwrap_or(&line)
                    .to_owned();
                let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
                let d = pods.entry(pod.to_owned()).or_default();
                if d.last_line != key {
                    d.last_line = key;
                    println!("{line}");
                }
            }
            None => {}
        }
    }

    /// The pod is gone.
    pub fn gone(&self, pod: &str, after: Duration) {
        {
            let mut pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
            pods.entry(pod.to_owned()).or_default().gone_after = Some(after);
        }
        let line = format!("{pod}: gone after {:.1} s", after.as_secs_f64());
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod)
        {
            bar.finish_and_clear();
        }
        if self.json {
            println!(
                "{}",
                serde_json::json!({"pod": pod, "result": "gone", "at_s": after.as_secs_f64()})
            );
        } else {
            self.say(&line);
        }
    }

    /// The summary: every pod, how it left, how long it took, and how its streams ended.
    pub fn summary(&self) -> String {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from("Summary\n");
        let (mut done, mut cut) = (0u64, 0u64);
        for (pod, d) in pods.iter() {
            let took = d.gone_after.map_or("still there".to_owned(), |t| {
                format!("gone after {:.1} s", t.as_secs_f64())
            });
            let streams = match (d.completed, d.truncated) {
                (Some(c), Some(t)) => {
                    done += c;
                    cut += t;
                    format!("; its gate: {c} completed, {t} ended at the deadline")
                }
                _ => String::new(),
            };
            let how = if d.how.is_empty() { "left" } else { d.how };
            out.push_str(&format!("  {pod}: {how}, {took}{streams}\n"));
        }
        out.push_str(&format!(
            "  pods moved: {}; requests in flight on gated pods: {done} completed, {cut} ended at the deadline (from the gates' last reports)\n",
            pods.values().filter(|d| d.gone_after.is_some()).count()
        ));
        out
    }

    /// The summary as JSON.
    pub fn summary_json(&self) -> serde_json::Value {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({"summary": pods.iter().map(|(pod, d)| serde_json::json!({
            "pod": pod,
            "how": d.how,
            "gone_after_s": d.gone_after.map(|t| t.as_secs_f64()),
            "completed": d.completed,
            "truncated": d.truncated,
        })).collect::<Vec<_>>()})
    }
}

/// Reads the gate's `/status` through the pod proxy; `None` when it does not answer (it may be
/// exiting, or the proxy not allowed).
pub async fn gate_status(client: &Client, pod: &str, port: u16) -> Option<GateStatus> {
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    tokio::time::timeout(
        Duration::from_secs(2),
        lameduck_kube::gate::status(client, ns, name, port),
    )
    .await
    .ok()?
    .ok()
}
