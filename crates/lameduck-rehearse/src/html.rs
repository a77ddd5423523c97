//! The HTML report: one self-contained file (inline CSS and SVG, nothing fetched) with a
//! timeline per setup. Each pod gets a block: its kubelet state, the balancer's view of its
//! endpoint, its probe results, and one bar per request it served, coloured by outcome.
//!
//! Written by hand: it is one page of SVG rectangles, and no templating or charting crate
//! would make it shorter.

use std::fmt::Write as _;

use crate::clock::{EventKind, ProbeKind};
use crate::load::{Outcome, RequestRecord};
use crate::report::RunReport;
use crate::run::SetupResult;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
const BAR: f64 = 4.0;
const GAP: f64 = 1.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn outcome_color(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "#43a047",
        Outcome::Refused => "#8e24aa",
        Outcome::Reset => "#e53935",
        Outcome::Truncated => "#fb8c00",
    }
}

/// The whole page.
pub fn render(report: &RunReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>lameduck rehearse: {scenario:?}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 17px; margin-top: 32px; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
td, th {{ padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }}
th:first-child, td:first-child {{ text-align: left; }}
.pass {{ color: #2e7d32; font-weight: 600; }} .fail {{ color: #c62828; font-weight: 600; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
.legend i {{ display: inline-block; width: 12px; height: 8px; margin-right: 4px; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #333; }}
.note {{ color: #666; }}
</style></head><body>
<h1>lameduck rehearse — {scenario:?}</h1>
<p>Propagation lag {lag}, {rate} requests/s, seed {seed}. All times are unscaled seconds (the run went {scale}× faster).
Judged setup: <b>{subject}</b> — <span class="{cls}">{verdict}</span>.</p>
"#,
        scenario = report.scenario,
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
    legend(&mut h);
    for s in &report.setups {
        setup_section(&mut h, s);
    }
    h.push_str("</body></html>\n");
    h
}

fn summary_table(h: &mut String, report: &RunReport) {
    h.push_str("<table><tr><th></th>");
    for s in &report.setups {
        let _ = write!(h, "<th>{}</th>", esc(&s.setup.name));
    }
    h.push_str("</tr>");
    for (label, cell) in crate::report::ROWS {
        let _ = write!(h, "<tr><td>{label}</td>");
        for s in &report.setups {
            let _ = write!(h, "<td>{}</td>", cell(s));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>\n");
}

fn legend(h: &mut String) {
    h.push_str(r#"<p class="legend">"#);
    for o in Outcome::ALL {
        let _ = write!(
            h,
            r#"<span><i style="background:{}"></i>request {}</span>"#,
            outcome_color(o),
            o.as_str()
        );
    }
    for (c, what) in [
        ("#c8e6c9", "pod ready"),
        ("#eeeeee", "pod starting / unready"),
        ("#ffe082", "preStop running"),
        ("#ffab91", "SIGTERM sent"),
        ("#64b5f6", "endpoint in the balancer"),
        ("#4fc3f7", "gate announcing"),
        ("#ffb74d", "gate finishing"),
        ("#e57373", "gate deadline"),
    ] {
        let _ = write!(h, r#"<span><i style="background:{c}"></i>{what}</span>"#);
    }
    h.push_str(
        r#"<span>probe ticks: green ok, red failed (top readiness, bottom liveness)</span></p>"#,
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

fn setup_section(h: &mut String, s: &SetupResult) {
    let _ = write!(
        h,
        r#"<h2>{name} <span class="{cls}">{verdict}</span></h2><p class="note">{desc}</p>"#,
        name = esc(&s.setup.name),
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
    let mut y = 24.0;
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
        let label = pod.unwrap_or("no endpoint");
        let _ = write!(
            body,
            r#"<text x="4" y="{:.1}">{}</text>"#,
            y + 9.0,
            esc(label)
        );
        if let Some(pod) = pod {
            pod_bands(&mut body, s, pod, y, &x);
            y += 54.0;
        } else {
            y += 12.0;
        }
        let lane = lanes(reqs);
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
        y += lanes_used as f64 * (BAR + GAP) + 10.0;
        if let Some(pod) = pod {
            markers(&mut body, s, pod, top, y - 6.0, &x);
        }
        let _ = write!(
            body,
            r##"<line x1="0" x2="{WIDTH}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            y - 4.0,
            y - 4.0
        );
    }
    let height = y + 24.0;
    let _ = write!(
        h,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}">"#
    );
    // Time axis.
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|st| end / st <= 14.0)
        .unwrap_or(1200.0);
    let mut t = 0.0;
    while t <= end {
        let _ = write!(
            h,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="14" y2="{1:.0}" stroke="#f3f3f3"/><text x="{0:.1}" y="10" text-anchor="middle">{2}s</text>"##,
            x(t),
            height - 20.0,
            t
        );
        t += step;
    }
    for (t, what) in [
        (s.load_start, "load starts"),
        (s.scenario_start, "scenario starts"),
    ] {
        let _ = write!(
            h,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="14" y2="{1:.0}" stroke="#555" stroke-dasharray="4 3"/><text x="{0:.1}" y="{2:.0}" text-anchor="middle">{what}</text>"##,
            x(t),
            height - 18.0,
            height - 6.0
        );
    }
    h.push_str(&body);
    h.push_str("</svg>\n");
}

/// The pod's kubelet state band, the balancer's endpoint band and the probe ticks.
fn pod_bands(body: &mut String, s: &SetupResult, pod: &str, y: f64, x: &impl Fn(f64) -> f64) {
    let events: Vec<_> = s.events.iter().filter(|e| e.pod == pod).collect();
    // Kubelet state.
    let mut state: Option<(f64, &str)> = None;
    // Once the pod is deleted, readiness no longer changes the colour: the band shows the
    // termination (preStop, then SIGTERM).
    let mut deleted = false;
    let seg = |body: &mut String, from: f64, to: f64, color: &str| {
        if to > from {
            let _ = write!(
                body,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="8" fill="{color}"/>"#,
                x(from),
                (x(to) - x(from)).max(0.5)
            );
        }
    };
    for e in &events {
        let next = match &e.kind {
            EventKind::Deleted => {
                deleted = true;
                Some("#fff3e0")
            }
            EventKind::Created | EventKind::Started { .. } if !deleted => Some("#eeeeee"),
            EventKind::Ready { ready: true } if !deleted => Some("#c8e6c9"),
            EventKind::Ready { ready: false } if !deleted => Some("#eeeeee"),
            EventKind::PreStopStart => Some("#ffe082"),
            EventKind::PreStopEnd { .. } => Some("#fff3e0"),
            EventKind::Sigterm => Some("#ffab91"),
            EventKind::Exited { .. } | EventKind::Gone => Some("none"),
            _ => None,
        };
        if let Some(color) = next {
            if let Some((from, c)) = state {
                seg(body, from, e.t, c);
            }
            state = Some((e.t, color));
        }
    }
    if let Some((from, c)) = state {
        seg(body, from, s.end, c);
    }
    // The balancer's view.
    let mut since: Option<f64> = None;
    for e in &events {
        if let EventKind::Endpoint { state } = e.kind {
            match (state, since) {
                ("ready", None) => since = Some(e.t),
                ("unready" | "removed", Some(from)) => {
                    let _ = write!(
                        body,
                        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="4" fill="#64b5f6"><title>in the balancer {from:.1}–{:.1} s</title></rect>"##,
                        x(from),
                        y + 9.0,
                        (x(e.t) - x(from)).max(0.5),
                        e.t
                    );
                    since = None;
                }
                _ => {}
            }
        }
    }
    if let Some(from) = since {
        let _ = write!(
            body,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="4" fill="#64b5f6"/>"##,
            x(from),
            y + 9.0,
            (x(s.end) - x(from)).max(0.5)
        );
    }
    // The gate's drain phases, under the state band.
    let phases: Vec<(f64, &str)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DrainPhase { phase } => Some((e.t, phase.as_str())),
            _ => None,
        })
        .collect();
    for (i, (from, phase)) in phases.iter().enumerate() {
        let to = phases.get(i + 1).map_or(s.end, |(t, _)| *t);
        let color = match *phase {
            "announcing" => "#4fc3f7",
            "finishing" => "#ffb74d",
            "deadline" => "#e57373",
            _ => continue,
        };
        let _ = write!(
            body,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="3" fill="{color}"><title>gate {phase} {from:.1}–{to:.1} s</title></rect>"#,
            x(*from),
            y + 20.0,
            (x(to) - x(*from)).max(0.5)
        );
    }
    // Probe ticks.
    for e in &events {
        if let EventKind::Probe { probe, ok } = e.kind {
            let py = y
                + 14.0
                + if probe == ProbeKind::Readiness {
                    0.0
                } else {
                    3.0
                };
            let _ = write!(
                body,
                r#"<rect x="{:.1}" y="{py:.1}" width="1.2" height="3" fill="{}"/>"#,
                x(e.t),
                if ok { "#66bb6a" } else { "#e53935" }
            );
        }
    }
}

/// Vertical marks for deletion, SIGTERM, SIGKILL and exit across the pod's block.
fn markers(
    body: &mut String,
    s: &SetupResult,
    pod: &str,
    top: f64,
    bottom: f64,
    x: &impl Fn(f64) -> f64,
) {
    for e in s.events.iter().filter(|e| e.pod == pod) {
        // Each kind of mark has its own label row, so marks at one instant stay readable.
        let (color, label, title, row) = match &e.kind {
            EventKind::Deleted => ("#37474f", "delete", "pod deleted".to_owned(), 0.0),
            EventKind::Sigterm => ("#ef6c00", "TERM", "SIGTERM".to_owned(), 1.0),
            EventKind::Sigkill { reason } => ("#b71c1c", "KILL", format!("SIGKILL: {reason}"), 0.0),
            EventKind::Exited { status } => ("#757575", "exit", format!("exited: {status}"), 2.0),
            EventKind::LivenessKill => ("#6a1b9a", "liveness", "liveness failed".to_owned(), 0.0),
            EventKind::StartupKill => {
                ("#6a1b9a", "startup", "startup probe failed".to_owned(), 0.0)
            }
            _ => continue,
        };
        let _ = write!(
            body,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="{color}" stroke-width="1.5"><title>{1} at {2:.2} s</title></line><text x="{3:.1}" y="{4:.1}" fill="{color}">{label}</text>"#,
            x(e.t),
            esc(&title),
            e.t,
            x(e.t) + 2.0,
            top + 30.0 + row * 10.0,
        );
    }
}
