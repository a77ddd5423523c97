//! Output formats: human (with source snippets) and JSON.

use std::io::Write;

use crate::Report;

/// Human-readable output: `severity[rule]: message`, the position, the source line, the fix.
pub fn human(report: &Report, source: impl Fn(&str) -> Option<std::sync::Arc<String>>) -> String {
    let mut out = Vec::new();
    let _ = write_human(report, source, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// [`human`], written as it is made.
pub fn write_human(
    report: &Report,
    source: impl Fn(&str) -> Option<std::sync::Arc<String>>,
    out: impl Write,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    // Where each line of each file starts, computed once per file: findings are many and
    // files can be large.
    let mut lines: std::collections::HashMap<&str, (std::sync::Arc<String>, Vec<usize>)> =
        std::collections::HashMap::new();
    for f in &report.findings {
        writeln!(out, "{}[{}]: {}", f.severity.as_str(), f.rule, f.object)?;
        writeln!(out, "  --> {}:{}:{}", f.file, f.line, f.col)?;
        if !lines.contains_key(f.file.as_str())
            && let Some(text) = source(&f.file)
        {
            let starts = std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect();
            lines.insert(&f.file, (text, starts));
        }
        let line = lines.get(f.file.as_str()).and_then(|(text, starts)| {
            let start = *starts.get(f.line.checked_sub(1)?)?;
            let end = starts.get(f.line).map_or(text.len(), |e| e - 1);
            text.get(start..end).map(|l| l.trim_end_matches('\r'))
        });
        if let Some(line) = line {
            let n = f.line.to_string();
            let pad = " ".repeat(n.len());
            writeln!(out, "{pad} |")?;
            writeln!(out, "{n} | {line}")?;
            writeln!(out, "{pad} | {}^", " ".repeat(f.col.saturating_sub(1)))?;
        }
        match &f.container {
            Some(c) => {
                writeln!(out, "  = container {c}: {}", f.message)?;
            }
            None => {
                writeln!(out, "  = {}", f.message)?;
            }
        }
        writeln!(out, "  = fix: {}", f.fix)?;
        writeln!(out)?;
    }
    for e in &report.input_errors {
        writeln!(out, "error: {e}")?;
    }
    for n in &report.notes {
        writeln!(out, "note: {n}")?;
    }
    let count = |s| report.findings.iter().filter(|f| f.severity == s).count();
    let found = format!(
        "{} error(s), {} warning(s)",
        count(crate::Severity::Error),
        count(crate::Severity::Warning)
    );
    if report.input_errors.is_empty() {
        writeln!(out, "{} object(s): {found}", report.objects)?;
    } else {
        // Not a clean-looking summary: what could not be read comes first.
        writeln!(
            out,
            "INCOMPLETE: {} input(s) could not be read (above); in the {} object(s) that could: {found}",
            report.input_errors.len(),
            report.objects
        )?;
    }
    out.flush()
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    findings: &'a [crate::Finding],
    input_errors: &'a [String],
    notes: &'a [String],
    objects: usize,
}

impl<'a> From<&'a Report> for JsonReport<'a> {
    fn from(r: &'a Report) -> Self {
        JsonReport {
            findings: &r.findings,
            input_errors: &r.input_errors,
            notes: &r.notes,
            objects: r.objects,
        }
    }
}

/// JSON output: `{"findings": [...], "input_errors": [...], "notes": [...], "objects": N}`.
pub fn json(report: &Report) -> String {
    serde_json::to_string(&JsonReport::from(report)).unwrap_or_default()
}

/// [`json`], written as it is made (no copy of the whole output in memory).
pub fn write_json(report: &Report, out: impl std::io::Write) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    serde_json::to_writer(&mut out, &JsonReport::from(report))?;
    std::io::Write::write_all(&mut out, b"\n")?;
    std::io::Write::flush(&mut out)
}
