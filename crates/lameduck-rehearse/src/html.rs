//! The HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched)
//! with a timeline per setup. Each pod gets a block of labelled rows: the kubelet's state, the
//! balancer's view of its endpoint, the gate's drain phases, one row per probe, the signals
//! (each label in a free slot, so that marks at one instant stay readable), and one bar per
//! request it served, coloured by outcome. Everything a tooltip says is also in the tables
//! under each timeline (the events of each pod, and every request that did not end well), so
//! the page reads the same printed or as a screenshot.
//!
//! Written by hand: it is one page of SVG rectangles, and no templating or charting crate
//! would make it shorter.

use std::fmt::Write as _;

use crate::clock::{Event, EventKind, ProbeKind};
use crate::load::{Outcome, RequestRecord};
use crate::report::RunReport;
use crate::run::SetupResult;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 20.0;
const BAR: f64 = 5.0;
const GAP: f64 = 1.0;
/// Height of a labelled row (state, balancer, gate, a probe).
const ROW: f64 = 12.0;
/// Rough width of one character of the 11 px labels, to keep labels apart.
const CHAR: f64 = 7.0;
/// Height of one slot of signal labels.
const LABEL_ROW: f64 = 14.0;

/// One colour per meaning, far apart in hue and lightness (requests are saturated, states
/// light, gate phases dark), so that no two look alike on screen or in greyscale print.
mod colour {
    pub const OK: &str = "#2e7d32";
    pub const REFUSED: &str = "#6a1b9a";
    pub const RESET: &str = "#d50000";
    pub const TRUNCATED: &str = "#ff9800";
    pub const STARTING: &str = "#e0e0e0";
    pub const READY: &str = "#a5d6a7";
    pub const TERMINATING: &str = "#ffcc80";
    pub const PRESTOP: &str = "#fdd835";
    pub const SIGTERMED: &str = "#f48fb1";
    pub const ENDPOINT: &str = "#1565c0";
    pub const ANNOUNCING: &str = "#00838f";
    pub const FINISHING: &str = "#283593";
    pub const DEADLINE: &str = "#4e342e";
    pub const PROBE_OK: &str = "#43a047";
    pub const PROBE_FAILED: &str = "#d50000";
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn outcome_color(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => colour::OK,
        Outcome::Refused => colour::REFUSED,
        Outcome::Reset => colour::RESET,
        Outcome::Truncated => colour::TRUNCATED,
    }
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #212121; max-width: 1160px; }
h1 { font-size: 21px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 36px 0 4px; }
h3 { font-size: 14px; margin: 14px 0 4px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
td, th { padding: 2px 10px; text-align: right; border-bottom: 1px solid #e0e0e0; }
th:first-child, td:first-child { text-align: left; }
table.log td, table.log th { text-align: left; font-size: 12.5px; }
.pass { color: #1b5e20; font-weight: 600; } .fail { color: #b71c1c; font-weight: 600; }
.warn { background: #fff3e0; border-left: 4px solid #e65100; padding: 6px 10px; }
.note { color: #555; margin: 2px 0; }
.legend { display: grid; grid-template-columns: repeat(auto-fit, minmax(250px, 1fr)); gap: 4px 24px;
  border: 1px solid #e0e0e0; padding: 8px 12px; margin: 12px 0; }
.legend b { display: block; margin-top: 4px; }
.legend span { display: block; font-size: 13px; }
.legend i { display: inline-block; width: 22px; height: 10px; margin-right: 6px; vertical-align: -1px;
  border: 1px solid #9e9e9e; }
svg { width: 100%; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #212121; }
svg text.row { fill: #616161; }
@media print {
  body { margin: 0; max-width: none; font-size: 11px; }
  h2 { break-before: page; }
  .timeline, table { break-inside: avoid; }
}
"#;

/// The whole page.
pub fn render(report: &RunReport) -> String {
    let mut h = String::new();
    let scenario = format!("{:?}", report.scenario).to_lowercase();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lameduck rehearse: {scenario}</title>
<style>{STYLE}</style></head><body>
<h1>lameduck rehearse: {scenario}</h1>
<p>Propagation lag {lag}, {rate} requests/s, seed {seed}. Times are unscaled seconds (the run
went {scale}× faster); added latency is real time. Judged setup: <b>{subject}</b>, which
<span class="{cls}">{verdict}</span>.</p>
"#,
        lag = esc(&report.lag),
        rate = report.rate,
        seed = report.seed,
        scale = report.time_scale,
        subject = esc(&report.subject),
        cls = if report.passed { "pass" } else { "fail" },
        verdict = if report.passed {
            "lost nothing"
        } else {
            "lost requests"
        },
    );
    summary_table(&mut h, report);
    if let Some(line) = report.gate_cost() {
        let _ = write!(h, "<p>{}</p>", esc(&line));
    }
    timing(&mut h, report);
    legend(&mut h);
    for s in &report.setups {
        setup_section(&mut h, s);
    }
    h.push_str("</body></html>\n");
    h
}

fn summary_table(h: &mut String, report: &RunReport) {
    h.push_str(r#"<table id="summary"><tr><th></th>"#);
    for s in &report.setups {
        let _ = write!(h, "<th>{}</th>", esc(&s.setup.name));
    }
    h.push_str("</tr>");
    for (label, cell) in crate::report::ROWS {
        let _ = write!(h, "<tr><td>{}</td>", esc(label));
        for s in &report.setups {
            let _ = write!(h, "<td>{}</td>", esc(&cell(s)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>\n");
}

fn timing(h: &mut String, report: &RunReport) {
    let t = &report.timing;
    if t.trustworthy {
        let _ = write!(
            h,
            r#"<p class="note">Timing: timers ran {:.1} ms late at the 99th percentile (real), {:.2} s at {}×: the figures hold to about that.</p>"#,
            t.timer_late_p99_ms, t.unscaled_error_s, report.time_scale
        );
    } else {
        let _ = write!(
            h,
            r#"<p class="warn" id="noise"><b>Timing noise.</b> Timers ran {:.1} ms late at the 99th percentile (worst {:.0} ms, real), which is {:.2} s at {}×: durations and latencies may be off by that much (the counts of lost requests are not). Rerun with a lower --time-scale, or on a quieter machine.</p>"#,
            t.timer_late_p99_ms, t.timer_late_max_ms, t.unscaled_error_s, report.time_scale
        );
    }
}

fn legend(h: &mut String) {
    h.push_str(r#"<div class="legend" id="legend"><div><b>Requests (one bar each)</b>"#);
    for o in Outcome::ALL {
        let _ = write!(
            h,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            outcome_color(o),
            o.as_str()
        );
    }
    h.push_str("</div><div><b>Pod (kubelet row)</b>");
    for (c, what) in [
        (colour::STARTING, "starting, or not ready"),
        (colour::READY, "ready"),
        (colour::PRESTOP, "deleted: preStop running"),
        (colour::TERMINATING, "deleted: waiting"),
        (colour::SIGTERMED, "SIGTERM sent, still running"),
    ] {
        let _ = write!(h, r#"<span><i style="background:{c}"></i>{what}</span>"#);
    }
    h.push_str("</div><div><b>Balancer and gate rows</b>");
    for (c, what) in [
        (colour::ENDPOINT, "endpoint in the balancer"),
        (colour::ANNOUNCING, "gate announcing (serves, unready)"),
        (colour::FINISHING, "gate finishing in-flight work"),
        (colour::DEADLINE, "gate deadline: streams ended"),
    ] {
        let _ = write!(h, r#"<span><i style="background:{c}"></i>{what}</span>"#);
    }
    let _ = writeln!(
        h,
        r#"</div><div><b>Probe rows and signals</b><span><i style="background:{ok};height:5px"></i>probe passed (short)</span><span><i style="background:{bad}"></i>probe failed (tall)</span><span>delete, TERM, KILL, exit: vertical lines, labelled above the pod</span></div></div>"#,
        ok = colour::PROBE_OK,
        bad = colour::PROBE_FAILED
    );
}

/// Greedy lanes: each request goes in the first lane free at its start.
fn lanes(requests: &[&RequestRecord]) -> Vec<usize> {
    let mut ends: Vec<f64> = Vec::new();
    requests
        .iter()
        .map(|r| {
            if let Some(i) = ends.iter().position(|e| *e <= r.start) {
                ends[i] = r.end;
                i
            } else {
                ends.push(r.end);
                ends.len() - 1
            }
        })
        .collect()
}

/// A vertical mark across a pod's block: time, colour, short label, full description.
struct Mark {
    t: f64,
    color: &'static str,
    label: &'static str,
    title: String,
}

fn marks(events: &[&Event]) -> Vec<Mark> {
    events
        .iter()
        .filter_map(|e| {
            let (color, label, title) = match &e.kind {
                EventKind::Deleted => ("#37474f", "delete", "pod deleted".to_owned()),
                EventKind::Sigterm => ("#e65100", "TERM", "SIGTERM".to_owned()),
                EventKind::Sigkill { reason } => ("#b71c1c", "KILL", format!("SIGKILL: {reason}")),
                EventKind::Exited { status } => ("#616161", "exit", format!("exited: {status}")),
                EventKind::LivenessKill => ("#6a1b9a", "liveness", "liveness failed".to_owned()),
                EventKind::StartupKill => ("#6a1b9a", "startup", "startup probe failed".into()),
                _ => return None,
            };
            Some(Mark {
                t: e.t,
                color,
                label,
                title,
            })
        })
        .collect()
}

/// Each label in the first slot (row) where it does not touch the label before it there.
fn label_slots(xs: &[(f64, usize)]) -> Vec<usize> {
    let mut slot_end: Vec<f64> = Vec::new();
    xs.iter()
        .map(|&(x, chars)| {
            let width = chars as f64 * CHAR + 6.0;
            match slot_end.iter().position(|&end| end <= x) {
                Some(i) => {
                    slot_end[i] = x + width;
                    i
                }
                None => {
                    slot_end.push(x + width);
                    slot_end.len() - 1
                }
            }
        })
        .collect()
}

fn setup_section(h: &mut String, s: &SetupResult) {
    let id = esc(&s.setup.name);
    let _ = write!(
        h,
        r#"<h2 id="setup-{id}">{id}: <span class="{cls}">{verdict}</span></h2><p class="note">{desc}</p>"#,
        cls = if s.lost_nothing() { "pass" } else { "fail" },
        verdict = esc(&s.verdict),
        desc = esc(&s.setup.description),
    );
    for n in &s.setup.notes {
        let _ = write!(h, r#"<p class="note">note: {}</p>"#, esc(n));
    }
    let end = s.end.max(1.0);
    let x = |t: f64| LEFT + (t.clamp(0.0, end) / end) * (WIDTH - LEFT - RIGHT);
    let mut body = String::new();
    let mut y = 30.0;
    let mut groups: Vec<(Option<&str>, Vec<&RequestRecord>)> = s
        .pods
        .iter()
        .map(|p| {
            (
                Some(p.as_str()),
                s.requests
                    .iter()
                    .filter(|r| r.pod.as_deref() == Some(p.as_str()))
                    .collect(),
            )
        })
        .collect();
    let orphans: Vec<&RequestRecord> = s.requests.iter().filter(|r| r.pod.is_none()).collect();
    if !orphans.is_empty() {
        groups.push((None, orphans));
    }
    for (pod, reqs) in &groups {
        let top = y;
        let events: Vec<&Event> = pod
            .map(|p| s.events.iter().filter(|e| e.pod == p).collect())
            .unwrap_or_default();
        let _ = write!(
            body,
            r#"<text x="4" y="{:.1}" font-weight="600">{}</text>"#,
            y + 10.0,
            esc(pod.unwrap_or("no endpoint"))
        );
        // Signal labels above the pod's rows, each in a free slot.
        let pod_marks = marks(&events);
        let slots = label_slots(
            &pod_marks
                .iter()
                .map(|m| (x(m.t), m.label.len()))
                .collect::<Vec<_>>(),
        );
        let label_rows = slots.iter().max().map_or(0, |m| m + 1);
        y += 14.0 + label_rows as f64 * LABEL_ROW;
        let rows_top = y;
        if pod.is_some() {
            y = pod_rows(&mut body, s, &events, y, &x);
        }
        let lane = lanes(reqs);
        if !reqs.is_empty() {
            let _ = write!(
                body,
                r#"<text class="row" x="{:.1}" y="{:.1}">requests</text>"#,
                LEFT - 6.0 - 8.0 * CHAR,
                y + 6.0
            );
        }
        for (r, l) in reqs.iter().zip(&lane) {
            let ry = y + *l as f64 * (BAR + GAP);
            let (x0, x1) = (x(r.start), x(r.end).max(x(r.start) + 1.0));
            let ttft = r
                .ttft()
                .map_or_else(|| "no token".to_owned(), |t| format!("TTFT {t:.2} s"));
            let _ = write!(
                body,
                r#"<rect x="{x0:.1}" y="{ry:.1}" width="{:.1}" height="{BAR}" fill="{}"><title>#{} {} {:.1}–{:.1} s, {} of {} tokens, {ttft}: {}</title></rect>"#,
                x1 - x0,
                outcome_color(r.outcome),
                r.id,
                r.outcome.as_str(),
                r.start,
                r.end,
                r.tokens,
                r.expected,
                esc(&r.detail),
            );
        }
        let lanes_used = lane.iter().max().map_or(0, |m| m + 1);
        y += lanes_used as f64 * (BAR + GAP) + 12.0;
        for (m, slot) in pod_marks.iter().zip(&slots) {
            let _ = write!(
                body,
                r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="{3}" stroke-width="1.5"><title>{4} at {5:.2} s</title></line><text class="mark" x="{6:.1}" y="{7:.1}" fill="{3}" font-weight="600">{8}</text>"#,
                x(m.t),
                rows_top - 2.0,
                y - 8.0,
                m.color,
                esc(&m.title),
                m.t,
                x(m.t) + 2.0,
                top + 25.0 + *slot as f64 * LABEL_ROW,
                m.label
            );
        }
        let _ = write!(
            body,
            r##"<line x1="0" x2="{WIDTH}" y1="{0:.1}" y2="{0:.1}" stroke="#bdbdbd"/>"##,
            y - 4.0
        );
    }
    let height = y + 26.0;
    let _ = write!(
        h,
        r#"<div class="timeline"><svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="timeline of {id}" viewBox="0 0 {WIDTH} {height:.0}">"#
    );
    // Time axis: labelled ticks and faint grid lines.
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|st| end / st <= 14.0)
        .unwrap_or(1200.0);
    let mut t = 0.0;
    while t <= end {
        let _ = write!(
            h,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="16" y2="{1:.0}" stroke="#eeeeee"/><text x="{0:.1}" y="12" text-anchor="middle">{2} s</text>"##,
            x(t),
            height - 22.0,
            t
        );
        t += step;
    }
    for (t, what, anchor) in [
        (s.load_start, "load starts", "end"),
        (s.scenario_start, "scenario starts", "start"),
    ] {
        let _ = write!(
            h,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="16" y2="{1:.0}" stroke="#424242" stroke-dasharray="4 3"/><text x="{2:.1}" y="{3:.0}" text-anchor="{anchor}">{what} ({4:.1} s)</text>"##,
            x(t),
            height - 20.0,
            x(t) + if anchor == "end" { -3.0 } else { 3.0 },
            height - 6.0,
            t
        );
    }
    h.push_str(&body);
    h.push_str("</svg></div>\n");
    details(h, s);
}

/// The rows of a pod: kubelet state, balancer, gate phases (when gated), one row per probe
/// kind that ran. Returns the y below them.
fn pod_rows(
    body: &mut String,
    s: &SetupResult,
    events: &[&Event],
    mut y: f64,
    x: &impl Fn(f64) -> f64,
) -> f64 {
    let row_label = |body: &mut String, y: f64, what: &str| {
        let _ = write!(
            body,
            r#"<text class="row" x="{:.1}" y="{:.1}" text-anchor="end">{what}</text>"#,
            LEFT - 6.0,
            y + 9.0
        );
    };
    let band = |body: &mut String, from: f64, to: f64, y: f64, color: &str, title: &str| {
        if to > from {
            let _ = write!(
                body,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{}" fill="{color}"><title>{} {from:.1}–{to:.1} s</title></rect>"#,
                x(from),
                (x(to) - x(from)).max(0.5),
                ROW - 3.0,
                esc(title)
            );
        }
    };
    // Kubelet state. Once the pod is deleted, readiness no longer changes the colour: the
    // row shows the termination (preStop, then SIGTERM).
    row_label(body, y, "kubelet");
    let mut state: Option<(f64, &str, &str)> = None;
    let mut deleted = false;
    for e in events {
        let next = match &e.kind {
            EventKind::Deleted => {
                deleted = true;
                Some((colour::TERMINATING, "deleted"))
            }
            EventKind::Created | EventKind::Started { .. } if !deleted => {
                Some((colour::STARTING, "starting"))
            }
            EventKind::Ready { ready: true } if !deleted => Some((colour::READY, "ready")),
            EventKind::Ready { ready: false } if !deleted => Some((colour::STARTING, "not ready")),
            EventKind::PreStopStart => Some((colour::PRESTOP, "preStop running")),
            EventKind::PreStopEnd { .. } => Some((colour::TERMINATING, "preStop done")),
            EventKind::Sigterm => Some((colour::SIGTERMED, "SIGTERM sent")),
            EventKind::Exited { .. } | EventKind::Gone => Some(("none", "")),
            _ => None,
        };
        if let Some((color, what)) = next {
            if let Some((from, c, w)) = state {
                band(body, from, e.t, y, c, w);
            }
            state = Some((e.t, color, what));
        }
    }
    if let Some((from, c, w)) = state {
        band(body, from, s.end, y, c, w);
    }
    y += ROW;
    // The balancer's view.
    row_label(body, y, "balancer");
    let mut since: Option<f64> = None;
    for e in events {
        if let EventKind::Endpoint { state } = e.kind {
            match (state, since) {
                ("ready", None) => since = Some(e.t),
                ("unready" | "removed", Some(from)) => {
                    band(body, from, e.t, y, colour::ENDPOINT, "in the balancer");
                    since = None;
                }
                _ => {}
            }
        }
    }
    if let Some(from) = since {
        band(body, from, s.end, y, colour::ENDPOINT, "in the balancer");
    }
    y += ROW;
    // The gate's drain phases.
    let phases: Vec<(f64, &str)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DrainPhase { phase } => Some((e.t, phase.as_str())),
            _ => None,
        })
        .collect();
    if !phases.is_empty() {
        row_label(body, y, "gate");
        for (i, (from, phase)) in phases.iter().enumerate() {
            let to = phases.get(i + 1).map_or(s.end, |(t, _)| *t);
            let color = match *phase {
                "announcing" => colour::ANNOUNCING,
                "finishing" => colour::FINISHING,
                "deadline" => colour::DEADLINE,
                _ => continue,
            };
            band(body, *from, to, y, color, &format!("gate {phase}"));
        }
        y += ROW;
    }
    // One row per probe kind that ran: short ticks passed, tall red ticks failed.
    for (kind, what) in [
        (ProbeKind::Startup, "startup probe"),
        (ProbeKind::Readiness, "readiness"),
        (ProbeKind::Liveness, "liveness"),
    ] {
        let ticks: Vec<(f64, bool)> = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Probe { probe, ok } if probe == kind => Some((e.t, ok)),
                _ => None,
            })
            .collect();
        if ticks.is_empty() {
            continue;
        }
        row_label(body, y, what);
        for (t, ok) in ticks {
            let (h, c) = if ok {
                (4.0, colour::PROBE_OK)
            } else {
                (ROW - 3.0, colour::PROBE_FAILED)
            };
            let _ = write!(
                body,
                r#"<rect x="{:.1}" y="{:.1}" width="1.6" height="{h}" fill="{c}"/>"#,
                x(t) - 0.8,
                y + (ROW - 3.0) - h,
            );
        }
        y += ROW;
    }
    y + 4.0
}

/// What the tooltips say, as tables: each pod's events (probe results summarised), and every
/// request that did not end ok.
fn details(h: &mut String, s: &SetupResult) {
    let id = esc(&s.setup.name);
    let _ = write!(
        h,
        r#"<h3>Events</h3><table class="log" id="events-{id}"><tr><th>time (s)</th><th>pod</th><th>event</th></tr>"#
    );
    for e in &s.events {
        let what = match &e.kind {
            EventKind::Probe { .. } => continue,
            EventKind::Created => "created".to_owned(),
            EventKind::Started { pid } => format!("container started (pid {pid})"),
            EventKind::StartFailed { error } => format!("container did not start: {error}"),
            EventKind::Ready { ready } => {
                if *ready {
                    "ready".into()
                } else {
                    "not ready".into()
                }
            }
            EventKind::LivenessKill => "liveness probe failed: container restarted".into(),
            EventKind::StartupKill => "startup probe failed: container restarted".into(),
            EventKind::Deleted => "deleted".into(),
            EventKind::PreStopStart => "preStop started".into(),
            EventKind::PreStopEnd { ok, detail } => format!(
                "preStop {}: {detail}",
                if *ok { "returned" } else { "failed" }
            ),
            EventKind::Sigterm => "SIGTERM".into(),
            EventKind::Sigkill { reason } => format!("SIGKILL: {reason}"),
            EventKind::Exited { status } => format!("exited: {status}"),
            EventKind::Gone => "gone".into(),
            EventKind::DrainPhase { phase } => format!("gate drain phase: {phase}"),
            EventKind::Endpoint { state } => format!("balancer: endpoint {state}"),
        };
        let _ = write!(
            h,
            "<tr><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            e.t,
            esc(&e.pod),
            esc(&what)
        );
    }
    h.push_str("</table>\n");
    // Probe results per pod and kind: runs and failures.
    let mut probes: Vec<(&str, ProbeKind, usize, usize)> = Vec::new();
    for e in &s.events {
        if let EventKind::Probe { probe, ok } = e.kind {
            match probes
                .iter_mut()
                .find(|(p, k, _, _)| *p == e.pod && *k == probe)
            {
                Some(entry) => {
                    entry.2 += 1;
                    entry.3 += usize::from(!ok);
                }
                None => probes.push((&e.pod, probe, 1, usize::from(!ok))),
            }
        }
    }
    if !probes.is_empty() {
        h.push_str(r#"<h3>Probes</h3><table class="log"><tr><th>pod</th><th>probe</th><th>runs</th><th>failed</th></tr>"#);
        probes.sort_by(|a, b| (a.0, a.1 as u8).cmp(&(b.0, b.1 as u8)));
        for (pod, kind, runs, failed) in probes {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{runs}</td><td>{failed}</td></tr>",
                esc(pod),
                format!("{kind:?}").to_lowercase()
            );
        }
        h.push_str("</table>\n");
    }
    let lost: Vec<&RequestRecord> = s
        .requests
        .iter()
        .filter(|r| r.outcome != Outcome::Ok)
        .collect();
    if lost.is_empty() {
        let _ = write!(
            h,
            r#"<p class="note" id="lost-{id}">Every request ended ok.</p>"#
        );
        return;
    }
    let _ = write!(
        h,
        r#"<h3>Requests that did not end ok</h3><table class="log" id="lost-{id}"><tr><th>#</th><th>pod</th><th>outcome</th><th>start (s)</th><th>end (s)</th><th>tokens</th><th>what happened</th></tr>"#
    );
    for r in lost {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{} of {}</td><td>{}</td></tr>",
            r.id,
            esc(r.pod.as_deref().unwrap_or("none")),
            r.outcome.as_str(),
            r.start,
            r.end,
            r.tokens,
            r.expected,
            esc(&r.detail)
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_at_one_instant_get_their_own_slots() {
        // Three labels at nearly the same place, then one far away.
        let slots = label_slots(&[(100.0, 6), (101.0, 4), (102.0, 4), (500.0, 4)]);
        assert_eq!(slots, vec![0, 1, 2, 0]);
    }

    #[test]
    fn request_colours_are_distinct_from_each_other_and_from_the_bands() {
        let all = [
            colour::OK,
            colour::REFUSED,
            colour::RESET,
            colour::TRUNCATED,
            colour::STARTING,
            colour::READY,
            colour::TERMINATING,
            colour::PRESTOP,
            colour::SIGTERMED,
            colour::ENDPOINT,
            colour::ANNOUNCING,
            colour::FINISHING,
            colour::DEADLINE,
        ];
        let rgb = |c: &str| -> [f64; 3] {
            let v = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap_or(0);
            [
                f64::from((v >> 16) & 0xff),
                f64::from((v >> 8) & 0xff),
                f64::from(v & 0xff),
            ]
        };
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                let (p, q) = (rgb(a), rgb(b));
                let d =
                    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt();
                assert!(d > 60.0, "{a} and {b} look alike ({d:.0})");
            }
        }
    }
}
