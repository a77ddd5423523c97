//! `--chart`: an SVG of each simulation — pods in the balancer, terminating pods and requests
//! in flight over time, with the disruptions shaded.
//!
//! Written by hand: three polylines and a few rectangles per run; a plotting crate would need
//! font files to lay out its labels, which a plain SVG `<text>` does not.

use std::fmt::Write as _;

use crate::report::{SimReport, secs};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL: f64 = 80.0;
const GAP: f64 = 18.0;
const TITLE: f64 = 28.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart for `runs` (label, report).
pub fn render(runs: &[(&str, &SimReport)]) -> String {
    let block = TITLE + 3.0 * (PANEL + GAP);
    let height = block * runs.len() as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="system-ui, sans-serif" font-size="11">
<rect width="100%" height="100%" fill="#fff"/>"##
    );
    for (i, (label, r)) in runs.iter().enumerate() {
        let top = 10.0 + block * i as f64;
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
            panel(&mut out, r, name, values, color, y0);
        }
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, r: &SimReport, name: &str, values: &[u32], color: &str, y0: f64) {
    let t = &r.series.t;
    let t_max = f64::from(t.last().copied().unwrap_or(1.0)).max(1.0);
    let v_max = f64::from(values.iter().copied().max().unwrap_or(0).max(1));
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |s: f64| LEFT + plot_w * s / t_max;
    let y = |v: f64| y0 + PANEL - PANEL * v / v_max;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL}" fill="#fafafa" stroke="#ddd"/>"##
    );
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
<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">0</text>
<text x="{}" y="{}" fill="#555">{name}</text><text x="{}" y="{}" text-anchor="end" fill="#777">{}s</text>"##,
        LEFT - 6.0,
        y0 + 10.0,
        v_max,
        LEFT - 6.0,
        y0 + PANEL,
        LEFT + 6.0,
        y0 + 12.0,
        WIDTH - RIGHT,
        y0 + PANEL + 12.0,
        secs(t_max)
    );
}
