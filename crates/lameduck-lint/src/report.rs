//! Output formats: human (with source snippets) and JSON.

use std::fmt::Write;

use crate::Report;

/// Human-readable output: `severity[rule]: message`, the position, the source line, the fix.
pub fn human(report: &Report, source: impl Fn(&str) -> Option<std::sync::Arc<str>>) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let _ = writeln!(out, "{}[{}]: {}", f.severity.as_str(), f.rule, f.object);
        let _ = writeln!(out, "  --> {}:{}:{}", f.file, f.line, f.col);
        if let Some(text) = source(&f.file)
            && let Some(line) = text.lines().nth(f.line.saturating_sub(1))
        {
            let n = f.line.to_string();
            let pad = " ".repeat(n.len());
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{n} | {line}");
            let _ = writeln!(out, "{pad} | {}^", " ".repeat(f.col.saturating_sub(1)));
        }
        match &f.container {
            Some(c) => {
                let _ = writeln!(out, "  = container {c}: {}", f.message);
            }
            None => {
                let _ = writeln!(out, "  = {}", f.message);
            }
        }
        let _ = writeln!(out, "  = fix: {}", f.fix);
        out.push('\n');
    }
    for e in &report.input_errors {
        let _ = writeln!(out, "error: {e}");
    }
    for n in &report.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let count = |s| report.findings.iter().filter(|f| f.severity == s).count();
    let unread = if report.input_errors.is_empty() {
        String::new()
    } else {
        format!(
            "; {} input(s) could not be read, so the check is incomplete",
            report.input_errors.len()
        )
    };
    let _ = writeln!(
        out,
        "{} object(s): {} error(s), {} warning(s){unread}",
        report.objects,
        count(crate::Severity::Error),
        count(crate::Severity::Warning)
    );
    out
}

/// JSON output: `{"findings": [...], "input_errors": [...], "notes": [...], "objects": N}`.
pub fn json(report: &Report) -> String {
    serde_json::json!({
        "findings": report.findings,
        "input_errors": report.input_errors,
        "notes": report.notes,
        "objects": report.objects,
    })
    .to_string()
}
