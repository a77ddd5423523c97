//! `--chart`: an SVG of each simulation — pods in the balancer, terminating pods and requests
//! in flight over time, with the disruptions shaded.
//!
//! Written by hand: three polylines and a few rectangles per run; a plotting crate would need
//! font files to lay out its labels, which a plain SVG `<text>` does not.

use std::fmt::Write as _;

use crate::report::SimReport;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL: f64 = 80.0;
const GAP: f64 = 18.0;
const TITLE: f64 = 34.0;
/// Room for the legend at the top.
const LEGEND: f64 = 30.0;
/// Room under the last panel of a run for the time axis's labels.
const AXIS: f64 = 16.0;
/// Space kept inside a panel's frame above the highest value and below zero, so that no line
/// runs along the frame.
const PAD: f64 = 5.0;

/// Tick spacing (seconds) for about eight ticks over `t_max`.
fn tick_step(t_max: f64) -> f64 {
    [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0,
    ]
    .into_iter()
    .find(|st| t_max / st <= 8.0)
    .unwrap_or(172_800.0)
}

/// A tick label: seconds, minutes or hours, whichever reads best at that spacing.
fn tick_label(t: f64, step: f64) -> String {
    if step >= 3600.0 {
        format!("{} h", crate::latency::trim(t / 3600.0))
    } else if step >= 60.0 {
        format!("{} min", crate::latency::trim(t / 60.0))
    } else {
        format!("{} s", crate::latency::trim(t))
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart for `runs` (label, report).
pub fn render(runs: &[(&str, &SimReport)]) -> String {
    let block = TITLE + 3.0 * (PANEL + GAP) + AXIS;
    let height = LEGEND + block * runs.len() as f64 + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="system-ui, sans-serif" font-size="11">
<rect width="100%" height="100%" fill="#fff"/>
<g id="legend"><rect x="{LEFT}" y="10" width="22" height="10" fill="#e53935" fill-opacity="0.12" stroke="#e53935" stroke-opacity="0.4"/><text x="{}" y="19">a disruption in progress (drain, rollout, scale-down, spot reclaim, rainbow release), until its last old pod is gone</text><line x1="{}" x2="{}" y1="9" y2="21" stroke="#e53935" stroke-dasharray="3,2"/><text x="{}" y="19">its start</text></g>"##,
        LEFT + 28.0,
        LEFT + 720.0,
        LEFT + 720.0,
        LEFT + 726.0
    );
    for (i, (label, r)) in runs.iter().enumerate() {
        let top = LEGEND + 10.0 + block * i as f64;
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{}" font-size="13" font-weight="600">{} — {}: {} ok, {} refused, {} killed, {} truncated</text>"##,
            top + 16.0,
            esc(r.scenario),
            esc(label),
            r.requests.ok,
            r.requests.refused,
            r.requests.killed,
            r.requests.truncated
        );
        let panels: [(&str, &[u32], &str); 3] = [
            ("pods in balancer", &r.series.ready, "#1e88e5"),
            ("terminating pods", &r.series.terminating, "#fb8c00"),
            ("requests in flight", &r.series.in_flight, "#43a047"),
        ];
        for (k, (name, values, color)) in panels.iter().enumerate() {
            let y0 = top + TITLE + k as f64 * (PANEL + GAP);
            panel(&mut out, r, name, values, color, y0, k == panels.len() - 1);
        }
    }
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    r: &SimReport,
    name: &str,
    values: &[u32],
    color: &str,
    y0: f64,
    labelled: bool,
) {
    let t = &r.series.t;
    let t_max = f64::from(t.last().copied().unwrap_or(1.0)).max(1.0);
    let v_max = f64::from(values.iter().copied().max().unwrap_or(0).max(1));
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |s: f64| LEFT + plot_w * s / t_max;
    let y = |v: f64| y0 + PANEL - PAD - (PANEL - 2.0 * PAD) * v / v_max;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL}" fill="#fafafa" stroke="#ddd"/>"##
    );
    // Time ticks under the panel, labelled under the run's last one.
    let step = tick_step(t_max);
    let mut tick = 0.0;
    while tick <= t_max + 1e-9 {
        let _ = write!(
            out,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#999"/>"##,
            x(tick),
            y0 + PANEL,
            y0 + PANEL + 4.0
        );
        if labelled {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
                x(tick),
                y0 + PANEL + 15.0,
                tick_label(tick, step)
            );
        }
        tick += step;
    }
    out.push('\n');
    for span in &r.disruptions {
        let end = span.end.unwrap_or(t_max);
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{y0}" width="{:.1}" height="{PANEL}" fill="#e53935" fill-opacity="0.08"/><line x1="{:.1}" x2="{:.1}" y1="{y0}" y2="{}" stroke="#e53935" stroke-dasharray="3,2"/>"##,
            x(span.start),
            (x(end) - x(span.start)).max(1.0),
            x(span.start),
            x(span.start),
            y0 + PANEL
        );
    }
    // At most one point per pixel column: the column's maximum keeps short spikes visible.
    let mut pts = String::new();
    let mut col = -1i64;
    let mut best = 0u32;
    let mut best_t = 0.0;
    for (ti, v) in t.iter().zip(values) {
        let c = x(f64::from(*ti)) as i64;
        if c != col {
            if col >= 0 {
                let _ = write!(pts, "{:.1},{:.1} ", x(best_t), y(f64::from(best)));
            }
            col = c;
            best = *v;
            best_t = f64::from(*ti);
        } else if *v > best {
            best = *v;
        }
    }
    if col >= 0 {
        let _ = write!(pts, "{:.1},{:.1}", x(best_t), y(f64::from(best)));
    }
    let _ = writeln!(
        out,
        r##"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>
<text x="{}" y="{:.1}" text-anchor="end">{}</text><text x="{}" y="{:.1}" text-anchor="end">0</text>
<text x="{}" y="{}" fill="#555">{name}</text>"##,
        LEFT - 6.0,
        y(v_max) + 4.0,
        v_max,
        LEFT - 6.0,
        y(0.0) + 4.0,
        LEFT + 6.0,
        y0 - 3.0,
    );
}
