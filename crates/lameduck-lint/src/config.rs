//! `.lameduck.yaml`: turn rules off or change their severity, and set defaults for the flags.
//!
//! ```yaml
//! rules:
//!   no-pdb: off
//!   liveness-same-as-readiness: error
//! maxRequest: 120s
//! convergenceMax: 20s
//! requirePdb: true
//! failOn: warning
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Severity;
use crate::rules::ALL;

/// A config file that cannot be used; the message names the file and what to fix.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    rules: HashMap<String, String>,
    max_request: Option<String>,
    convergence_max: Option<String>,
    /// The old name of `convergenceMax`.
    convergence: Option<String>,
    require_pdb: Option<bool>,
    fail_on: Option<String>,
}

/// The settings read from a config file.
#[derive(Debug, Default, Clone)]
pub struct Config {
    /// Where it was read from.
    pub path: Option<PathBuf>,
    /// Per rule: `None` turns it off, `Some` sets its severity.
    pub rules: HashMap<&'static str, Option<Severity>>,
    /// Default for `--max-request`.
    pub max_request: Option<Duration>,
    /// Default for `--convergence-max`.
    pub convergence_max: Option<Duration>,
    /// Default for `--require-pdb`.
    pub require_pdb: Option<bool>,
    /// Default for `--fail-on` (`error`, `warning`, `never`).
    pub fail_on: Option<String>,
}

impl Config {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bad = |what: String| ConfigError(format!("{}: {what}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let loaded = lameduck_manifest::load::parse_value(path, &text)
            .map_err(|e| ConfigError(e.to_string()))?;
        let raw: Raw = match loaded {
            None => Raw::default(),
            Some(v) => serde_json::from_value(v).map_err(|e| bad(e.to_string()))?,
        };
        let mut rules = HashMap::new();
        for (id, level) in raw.rules {
            let Some(rule) = ALL.iter().find(|r| r.id == id) else {
                let ids: Vec<&str> = ALL.iter().map(|r| r.id).collect();
                return Err(bad(format!(
                    "unknown rule `{id}` (rules: {})",
                    ids.join(", ")
                )));
            };
            let level = match level.as_str() {
                "off" | "false" => None,
                "error" => Some(Severity::Error),
                "warning" => Some(Severity::Warning),
                "note" => Some(Severity::Note),
                other => {
                    return Err(bad(format!(
                        "rule `{id}`: unknown setting `{other}` (write off, error, warning or note)"
                    )));
                }
            };
            rules.insert(rule.id, level);
        }
        let dur = |key: &str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.map(|s| lameduck_timeline::parse_duration(&s).map_err(|e| bad(format!("{key}: {e}"))))
                .transpose()
        };
        if let Some(f) = &raw.fail_on
            && !matches!(f.as_str(), "error" | "warning" | "never")
        {
            return Err(bad(format!(
                "failOn: `{f}` (write error, warning or never)"
            )));
        }
        Ok(Config {
            path: Some(path.to_path_buf()),
            rules,
            max_request: dur("maxRequest", raw.max_request)?,
            convergence_max: match raw.convergence_max {
                Some(v) => dur("convergenceMax", Some(v))?,
                None => dur("convergence", raw.convergence)?,
            },
            require_pdb: raw.require_pdb,
            fail_on: raw.fail_on,
        })
    }
}
