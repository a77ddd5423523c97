//! SARIF 2.1.0 output, as GitHub code scanning accepts it: every rule with its help text, every
//! finding with its physical location and a stable fingerprint, an empty `results` when clean.
//!
//! Typed by hand: the subset used is small and stable, and it keeps the output exactly what
//! code scanning documents.

use serde::Serialize;

use crate::rules::{ALL, Rule};
use crate::{Finding, Report, Severity};

#[derive(Serialize)]
struct Log<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: [Run<'a>; 1],
}

#[derive(Serialize)]
struct Run<'a> {
    tool: Tool,
    invocations: [Invocation; 1],
    results: Results<'a>,
}

/// The findings as SARIF results, each made as it is written (a large report's results are
/// never all in memory at once).
struct Results<'a>(&'a [Finding]);

impl Serialize for Results<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(result))
    }
}

/// The run itself: whether it could read every input, and what it could not.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Invocation {
    execution_successful: bool,
    tool_execution_notifications: Vec<Notification>,
}

#[derive(Serialize)]
struct Notification {
    level: &'static str,
    message: Text,
}

#[derive(Serialize)]
struct Tool {
    driver: Driver,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Driver {
    name: &'static str,
    version: &'static str,
    information_uri: &'static str,
    rules: Vec<RuleDescriptor>,
}

#[derive(Serialize)]
struct Text {
    text: String,
}

#[derive(Serialize)]
struct Help {
    text: String,
    markdown: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleDescriptor {
    id: &'static str,
    name: String,
    short_description: Text,
    full_description: Text,
    help: Help,
    default_configuration: Configuration,
}

#[derive(Serialize)]
struct Configuration {
    level: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: &'static str,
    rule_index: usize,
    level: &'static str,
    message: Text,
    locations: [Location; 1],
    partial_fingerprints: Fingerprints,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    physical_location: PhysicalLocation,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: ArtifactLocation,
    region: Region,
}

#[derive(Serialize)]
struct ArtifactLocation {
    uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    start_line: usize,
    start_column: usize,
}

#[derive(Serialize)]
struct Fingerprints {
    #[serde(rename = "lameduckFindingHash/v1")]
    finding: String,
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

fn camel(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase().collect::<String>() + c.as_str()
            })
        })
        .collect()
}

/// FNV-1a (64 bit): a fingerprint that stays the same across Rust releases, which std's hasher
/// does not promise.
fn fnv1a(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn descriptor(r: &Rule) -> RuleDescriptor {
    RuleDescriptor {
        id: r.id,
        name: camel(r.id),
        short_description: Text {
            text: r.title.to_owned(),
        },
        full_description: Text {
            text: r.title.to_owned() + ".",
        },
        help: Help {
            text: r.help.to_owned(),
            markdown: r.help.to_owned(),
        },
        default_configuration: Configuration {
            level: level(r.severity),
        },
    }
}

fn result(f: &Finding) -> SarifResult {
    let rule_index = ALL.iter().position(|r| r.id == f.rule).unwrap_or(0);
    let message = match &f.container {
        Some(c) => format!("{}, container {c}: {} Fix: {}.", f.object, f.message, f.fix),
        None => format!("{}: {} Fix: {}.", f.object, f.message, f.fix),
    };
    SarifResult {
        rule_id: f.rule,
        rule_index,
        level: level(f.severity),
        message: Text { text: message },
        locations: [Location {
            physical_location: PhysicalLocation {
                artifact_location: ArtifactLocation {
                    uri: f
                        .file
                        .replace('\\', "/")
                        .trim_start_matches("./")
                        .to_owned(),
                },
                region: Region {
                    start_line: f.line,
                    start_column: f.col,
                },
            },
        }],
        // Independent of the line, so a finding keeps its identity when lines move.
        partial_fingerprints: Fingerprints {
            finding: fnv1a(&[
                f.rule,
                &f.file,
                &f.object,
                f.container.as_deref().unwrap_or(""),
                &f.path,
            ]),
        },
    }
}

/// The report as a SARIF 2.1.0 log.
pub fn sarif(report: &Report) -> String {
    let mut out = Vec::new();
    let _ = write_sarif(report, &mut out);
    let mut s = String::from_utf8(out).unwrap_or_default();
    s.truncate(s.trim_end().len());
    s
}

/// [`sarif`], written as it is made, with a final newline.
pub fn write_sarif(report: &Report, out: impl std::io::Write) -> std::io::Result<()> {
    let log = Log {
        schema: "https://json.schemastore.org/sarif-2.1.0.json",
        version: "2.1.0",
        runs: [Run {
            tool: Tool {
                driver: Driver {
                    name: "lameduck",
                    version: env!("CARGO_PKG_VERSION"),
                    information_uri: "https://github.com/lameduck-dev/lameduck",
                    rules: ALL.iter().map(descriptor).collect(),
                },
            },
            invocations: [Invocation {
                execution_successful: report.input_errors.is_empty(),
                tool_execution_notifications: report
                    .input_errors
                    .iter()
                    .map(|e| Notification {
                        level: "error",
                        message: Text { text: e.clone() },
                    })
                    .chain(report.notes.iter().map(|n| Notification {
                        level: "note",
                        message: Text { text: n.clone() },
                    }))
                    .collect(),
            }],
            results: Results(&report.findings),
        }],
    };
    let mut out = std::io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, &log)?;
    std::io::Write::write_all(&mut out, b"\n")?;
    std::io::Write::flush(&mut out)
}
