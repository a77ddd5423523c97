//! `lameduck lint`: static analysis of Kubernetes manifests for drain mistakes, with exact
//! `file:line:column` positions.
//!
//! All objects of a run are analysed together (a PodDisruptionBudget in another file counts).
//! The budget arithmetic is [`lameduck_timeline::Budget`]'s. Rules: [`rules::ALL`].

pub mod config;
pub use lameduck_manifest::facts;
pub mod inject;
pub mod report;
pub mod rules;
pub mod sarif;

use std::time::Duration;

use lameduck_manifest::Loaded;
use serde::Serialize;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Note,
    /// Likely to cost requests in some drains.
    Warning,
    /// Costs requests in every drain.
    Error,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What the linter assumes where manifests are silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--max-request`: the longest request, for workloads without the annotation.
    pub max_request: Option<Duration>,
    /// `--convergence`: how long load balancers take to stop sending to an unready pod.
    pub convergence: Duration,
    /// `--require-pdb`: report workloads that no PodDisruptionBudget selects.
    pub require_pdb: bool,
    /// Per-rule settings from the config file: `None` turns a rule off.
    pub rules: std::collections::HashMap<&'static str, Option<Severity>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_request: None,
            convergence: Duration::from_secs(15),
            require_pdb: false,
            rules: Default::default(),
        }
    }
}

/// One problem at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule's id.
    pub rule: &'static str,
    /// Its severity.
    pub severity: Severity,
    /// The file.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
    /// `kind/name` of the object, as people read it (with its namespace, and the template's
    /// role where an object has several).
    pub object: String,
    /// The object's `apiVersion`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The object's `kind`.
    pub kind: String,
    /// The object's namespace, when written.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
    /// The container, when the finding is about one.
    pub container: Option<String>,
    /// The field's path in the document.
    pub path: String,
    /// What is wrong, with the numbers.
    pub message: String,
    /// What to do.
    pub fix: String,
}

/// The result of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Findings, by file, line and column.
    pub findings: Vec<Finding>,
    /// Inputs that could not be read or parsed (the run's exit status is then 2).
    pub input_errors: Vec<String>,
    /// Assumptions made, objects not checked, findings suppressed.
    pub notes: Vec<String>,
    /// Objects analysed.
    pub objects: usize,
}

impl Report {
    /// The most severe finding's severity.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// Lints everything loaded.
pub fn lint(loaded: &Loaded, options: &Options) -> Report {
    let (mut findings, mut notes, suppressed) = rules::check(&loaded.objects, options);
    if suppressed > 0 {
        notes.push(format!(
            "{suppressed} finding(s) suppressed by `{}` annotations",
            rules::IGNORE_ANNOTATION
        ));
    }
    findings
        .sort_by(|a, b| (&a.file, a.line, a.col, a.rule).cmp(&(&b.file, b.line, b.col, b.rule)));
    Report {
        findings,
        input_errors: loaded.errors.iter().map(ToString::to_string).collect(),
        notes,
        objects: loaded.objects.len(),
    }
}
