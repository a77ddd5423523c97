//! `lameduck lint`: static analysis of Kubernetes manifests for drain mistakes, with exact
//! `file:line:column` positions.
//!
//! All objects of a run are analysed together (a PodDisruptionBudget in another file counts),
//! as they are read: each workload is checked and dropped, keeping only what the checks against
//! the rest of the input need ([`rules::Linter`]). The budget arithmetic is
//! [`lameduck_timeline::Budget`]'s. Rules: [`rules::ALL`].

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
    /// `--convergence-max`: how long load balancers may still send requests after a drain
    /// starts.
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
            convergence: lameduck_timeline::DEFAULT_CONVERGENCE_WINDOW,
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
    /// The text of each file with a finding (by the finding's `file`), for source snippets.
    pub sources: std::collections::HashMap<String, std::sync::Arc<String>>,
}

impl Report {
    /// The most severe finding's severity.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

/// Lints everything loaded.
pub fn lint(loaded: &Loaded, options: &Options) -> Report {
    let mut linter = rules::Linter::new(options);
    for o in &loaded.objects {
        linter.visit(o);
    }
    for e in &loaded.errors {
        linter.input_error(e);
    }
    linter.finish()
}

/// Reads and lints files, directories and `-` (stdin), one object at a time (see
/// [`lameduck_manifest::read_paths`]).
pub fn lint_paths(paths: &[std::path::PathBuf], options: &Options) -> Report {
    let mut linter = rules::Linter::new(options);
    lameduck_manifest::read_paths(paths, &mut linter, &|| rules::Linter::new(options));
    linter.finish()
}
