//! Request-duration data: what the budget is sized from and what the simulator draws from.
//!
//! Three inputs are accepted, detected from the text:
//! - one duration per line (`12.5`, `850ms`, `2m`), bare numbers in seconds;
//! - CSV (`,`, `;` or tab) with a header naming the column (`duration`, `latency`, `e2e`, …;
//!   `_ms` in the name means milliseconds), or a single column without a header;
//! - a Prometheus text exposition with a histogram's `_bucket` lines, e.g. vLLM's
//!   `vllm:e2e_request_latency_seconds` scraped from `/metrics`. Label sets (models, pods) are
//!   summed.

use std::collections::BTreeMap;
use std::time::Duration;

use lameduck_timeline::parse_duration;

/// Latency input that cannot be used; the message names the line and what to change.
#[derive(Debug, thiserror::Error)]
pub enum LatencyError {
    /// A line could not be read as a duration.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong and what to do.
        message: String,
    },
    /// The input as a whole is unusable.
    #[error("{0}")]
    Input(String),
}

/// A distribution of request durations, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    dist: Dist,
    /// Where the numbers came from, for the report (`1,204 samples`, `histogram …`).
    pub source: String,
    /// Share of histogram observations above the highest finite bucket (counted at that
    /// bound, so percentiles up there are a lower bound).
    pub overflow: f64,
    /// When only the longest request is known: where that figure comes from, in the words
    /// `lint` uses (`--max-request`, `assumed for vLLM`).
    pub longest_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Dist {
    /// Sorted samples.
    Samples(Vec<f64>),
    /// Bucket upper bounds (finite, ascending) with the cumulative share at each.
    Histogram { bounds: Vec<f64>, cum: Vec<f64> },
    /// Only the longest request is known.
    Uniform { lo: f64, hi: f64 },
}

/// With only `--max-request`, durations are assumed uniform between this share of it and it.
pub const ASSUMED_SHORTEST_SHARE: f64 = 0.2;

impl Latency {
    /// Parses latency data; `metric` picks a histogram, `column` a CSV column.
    pub fn parse(
        text: &str,
        metric: Option<&str>,
        column: Option<&str>,
    ) -> Result<Self, LatencyError> {
        let is_histogram = text.lines().any(|l| {
            let l = l.trim_start();
            !l.starts_with('#')
                && l.split(['{', ' '])
                    .next()
                    .is_some_and(|n| n.ends_with("_bucket"))
        });
        if is_histogram {
            parse_histogram(text, metric)
        } else {
            if metric.is_some() {
                return Err(LatencyError::Input(
                    "--metric was given, but the input has no histogram `_bucket` lines".into(),
                ));
            }
            parse_samples(text, column)
        }
    }

    /// Durations known only by their maximum: uniform between
    /// [`ASSUMED_SHORTEST_SHARE`]`× max` and `max`.
    pub fn from_max(max: Duration) -> Self {
        let hi = max.as_secs_f64();
        Latency {
            dist: Dist::Uniform {
                lo: hi * ASSUMED_SHORTEST_SHARE,
                hi,
            },
            source: format!(
                "--max-request {}s only (durations assumed uniform from {}s to {}s)",
                trim(hi),
                trim(hi * ASSUMED_SHORTEST_SHARE),
                trim(hi)
            ),
            overflow: 0.0,
            longest_from: Some("--max-request".into()),
        }
    }

    /// Samples that are already numbers of seconds (tests, benchmarks).
    pub fn from_samples(mut samples: Vec<f64>) -> Result<Self, LatencyError> {
        samples.retain(|s| s.is_finite() && *s >= 0.0);
        if samples.is_empty() {
            return Err(LatencyError::Input("no durations in the input".into()));
        }
        samples.sort_by(f64::total_cmp);
        Ok(Latency {
            source: format!("{} samples", samples.len()),
            dist: Dist::Samples(samples),
            overflow: 0.0,
            longest_from: None,
        })
    }

    /// The `p`-th percentile (0–100): nearest rank for samples, linear within a bucket for
    /// histograms.
    pub fn percentile(&self, p: f64) -> Duration {
        let p = p.clamp(0.0, 100.0);
        let secs = match &self.dist {
            Dist::Samples(s) => {
                let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
                s[rank.clamp(1, s.len()) - 1]
            }
            _ => self.quantile(p / 100.0),
        };
        secs_to_duration(secs)
    }

    /// When only the longest request is known (`--max-request`, the workload's annotation, the
    /// assumption for an inference server): that figure. Percentiles of the assumed spread are
    /// not data, so the grace period covers the longest request itself, as `lint` and `inject`
    /// size it.
    pub fn only_max(&self) -> Option<Duration> {
        matches!(self.dist, Dist::Uniform { .. }).then(|| self.max())
    }

    /// The longest duration the data allows.
    pub fn max(&self) -> Duration {
        secs_to_duration(match &self.dist {
            Dist::Samples(s) => s.last().copied().unwrap_or(0.0),
            Dist::Histogram { bounds, .. } => bounds.last().copied().unwrap_or(0.0),
            Dist::Uniform { hi, .. } => *hi,
        })
    }

    /// The mean duration.
    pub fn mean(&self) -> Duration {
        secs_to_duration(match &self.dist {
            Dist::Samples(s) => s.iter().sum::<f64>() / s.len() as f64,
            Dist::Histogram { bounds, cum } => {
                let mut prev_b = 0.0;
                let mut prev_c = 0.0;
                let mut m = 0.0;
                for (b, c) in bounds.iter().zip(cum) {
                    m += (c - prev_c) * (b + prev_b) / 2.0;
                    prev_b = *b;
                    prev_c = *c;
                }
                m
            }
            Dist::Uniform { lo, hi } => (lo + hi) / 2.0,
        })
    }

    /// The share of requests (0–1) that run longer than `d`.
    pub fn share_above(&self, d: Duration) -> f64 {
        let x = d.as_secs_f64();
        match &self.dist {
            Dist::Samples(s) => {
                let at_or_below = s.partition_point(|v| *v <= x);
                1.0 - at_or_below as f64 / s.len() as f64
            }
            _ => {
                // The quantile function is monotone: bisect for the share at `x`.
                let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
                for _ in 0..48 {
                    let mid = (lo + hi) / 2.0;
                    if self.quantile(mid) <= x {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                1.0 - lo
            }
        }
    }

    /// The duration at cumulative share `u` (0–1): how the simulator draws a duration.
    pub fn sample(&self, u: f64) -> Duration {
        secs_to_duration(self.quantile(u))
    }

    fn quantile(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        match &self.dist {
            Dist::Samples(s) => s[((u * s.len() as f64) as usize).min(s.len() - 1)],
            Dist::Uniform { lo, hi } => lo + (hi - lo) * u,
            Dist::Histogram { bounds, cum } => {
                let i = cum.partition_point(|c| *c < u).min(bounds.len() - 1);
                let (b0, c0) = if i == 0 {
                    (0.0, 0.0)
                } else {
                    (bounds[i - 1], cum[i - 1])
                };
                let width = cum[i] - c0;
                if width <= 0.0 {
                    bounds[i]
                } else {
                    b0 + (bounds[i] - b0) * ((u - c0) / width).clamp(0.0, 1.0)
                }
            }
        }
    }
}

fn secs_to_duration(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(lameduck_timeline::duration::MAX_DURATION)
}

/// `12`, `12.5`: a number without trailing zeros.
pub(crate) fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn parse_samples(text: &str, column: Option<&str>) -> Result<Latency, LatencyError> {
    let mut rows = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let Some(&(_, first)) = rows.peek() else {
        return Err(LatencyError::Input("the latency input is empty".into()));
    };
    let delim = [',', '\t', ';'].into_iter().find(|d| first.contains(*d));
    let split = |l: &str| -> Vec<String> {
        match delim {
            Some(d) => l
                .split(d)
                .map(|f| f.trim().trim_matches('"').to_owned())
                .collect(),
            None => vec![l.to_owned()],
        }
    };
    let header = split(first);
    let has_header = header.iter().any(|f| value(f, 1.0).is_none());
    let (col, scale) = if has_header {
        rows.next();
        pick_column(&header, column)?
    } else if let Some(c) = column {
        let n: usize = c.parse().map_err(|_| {
            LatencyError::Input(format!(
                "--column {c}: the input has no header row, so give the column's 1-based number"
            ))
        })?;
        (n.saturating_sub(1), 1.0)
    } else if header.len() > 1 {
        return Err(LatencyError::Input(format!(
            "the input has {} columns and no header: add a header row naming the duration column, or pass --column N",
            header.len()
        )));
    } else {
        (0, 1.0)
    };
    let mut samples = Vec::new();
    for (line, l) in rows {
        let fields = split(l);
        let field = fields.get(col).ok_or_else(|| LatencyError::Line {
            line,
            message: format!("has no column {}", col + 1),
        })?;
        let v = value(field, scale).ok_or_else(|| LatencyError::Line {
            line,
            message: format!(
                "`{field}` is not a duration: write seconds (`12.5`) or a number with a unit (`850ms`, `2m`)"
            ),
        })?;
        samples.push(v);
    }
    let mut lat = Latency::from_samples(samples)?;
    if has_header {
        lat.source = format!("{} (column `{}`)", lat.source, header[col]);
    }
    Ok(lat)
}

/// A field as seconds: a bare number times `scale`, or a duration with a unit.
fn value(field: &str, scale: f64) -> Option<f64> {
    if let Ok(x) = field.parse::<f64>() {
        return (x.is_finite() && x >= 0.0).then_some(x * scale);
    }
    if field.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        return parse_duration(field).ok().map(|d| d.as_secs_f64());
    }
    None
}

fn pick_column(header: &[String], column: Option<&str>) -> Result<(usize, f64), LatencyError> {
    let lower: Vec<String> = header.iter().map(|h| h.to_ascii_lowercase()).collect();
    let idx = match column {
        Some(c) => lower
            .iter()
            .position(|h| *h == c.to_ascii_lowercase())
            .or_else(|| c.parse::<usize>().ok().map(|n| n.saturating_sub(1)))
            .filter(|i| *i < header.len()),
        None => ["e2e", "duration", "latency", "elapsed", "seconds", "time"]
            .iter()
            .find_map(|k| lower.iter().position(|h| h.contains(k))),
    };
    let Some(i) = idx else {
        return Err(LatencyError::Input(format!(
            "none of the columns ({}) is a duration{}: pass --column NAME",
            header.join(", "),
            column.map(|c| format!(" named `{c}`")).unwrap_or_default()
        )));
    };
    let h = &lower[i];
    let scale = if h.contains("ms") || h.contains("milli") {
        1e-3
    } else if h.contains("_us") || h.contains("micro") {
        1e-6
    } else {
        1.0
    };
    Ok((i, scale))
}

/// One histogram's finite buckets (keyed by the bound's bits: bound, summed count) and its
/// `+Inf` count.
type Buckets = (BTreeMap<u64, (f64, f64)>, f64);

fn parse_histogram(text: &str, metric: Option<&str>) -> Result<Latency, LatencyError> {
    let mut hists: BTreeMap<String, Buckets> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let name_end = l.find(['{', ' ']).unwrap_or(l.len());
        let Some(base) = l[..name_end].strip_suffix("_bucket") else {
            continue;
        };
        let line = i + 1;
        let bad = |m: &str| LatencyError::Line {
            line,
            message: m.to_owned(),
        };
        let (labels, rest) = match l[name_end..].strip_prefix('{') {
            Some(r) => {
                let close = r.rfind('}').ok_or_else(|| bad("a `{` without its `}`"))?;
                (&r[..close], &r[close + 1..])
            }
            None => ("", &l[name_end..]),
        };
        let le =
            label(labels, "le").ok_or_else(|| bad("a `_bucket` sample without an `le` label"))?;
        let count: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| bad("the sample's value is not a count"))?;
        let entry = hists.entry(base.to_owned()).or_default();
        if le == "+Inf" || le == "Inf" || le == "+inf" {
            entry.1 += count;
        } else {
            let b: f64 = le
                .parse()
                .ok()
                .filter(|b: &f64| b.is_finite())
                .ok_or_else(|| bad(&format!("`le=\"{le}\"` is not a number")))?;
            let slot = entry.0.entry(b.to_bits()).or_insert((b, 0.0));
            slot.1 += count;
        }
    }
    let name = match metric {
        Some(m) => {
            let m = m.strip_suffix("_bucket").unwrap_or(m);
            if !hists.contains_key(m) {
                return Err(LatencyError::Input(format!(
                    "no histogram `{m}` in the input; it has: {}",
                    hists.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            m.to_owned()
        }
        None if hists.len() == 1 => hists.keys().next().cloned().unwrap_or_default(),
        None => ["e2e_request_latency", "request_duration", "request_latency"]
            .iter()
            .find_map(|k| hists.keys().find(|n| n.contains(k)).cloned())
            .ok_or_else(|| {
                LatencyError::Input(format!(
                    "the input has several histograms ({}): pick the end-to-end request duration with --metric NAME",
                    hists.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?,
    };
    let (buckets, inf) = hists.remove(&name).unwrap_or_default();
    let mut points: Vec<(f64, f64)> = buckets.into_values().collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let finite_total = points.last().map_or(0.0, |p| p.1);
    let total = inf.max(finite_total);
    if total <= 0.0 || points.is_empty() {
        return Err(LatencyError::Input(format!(
            "histogram `{name}` has no observations with a finite bucket: scrape it after the server has served traffic"
        )));
    }
    // Cumulative counts may only grow; a scrape that summed label sets with different bucket
    // layouts can break that, so keep the running maximum.
    let mut running: f64 = 0.0;
    let mut bounds = Vec::with_capacity(points.len());
    let mut cum = Vec::with_capacity(points.len());
    for (b, c) in points {
        running = running.max(c);
        bounds.push(b);
        cum.push(running / total);
    }
    let overflow = (1.0 - finite_total / total).max(0.0);
    // Observations above the last finite bucket are counted at that bound: a point mass there.
    if overflow > 0.0
        && let Some(&last) = bounds.last()
    {
        bounds.push(last);
        cum.push(1.0);
    }
    Ok(Latency {
        source: format!("histogram `{name}`, {} observations", total as u64),
        dist: Dist::Histogram { bounds, cum },
        overflow,
        longest_from: None,
    })
}

/// The value of label `key` in a Prometheus label set (`a="x",le="0.5"`).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let k = rest[..eq].trim().trim_start_matches(',').trim();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        // Values may contain escaped quotes.
        let mut end = None;
        let mut escaped = false;
        for (i, ch) in after.char_indices() {
            match ch {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        if k == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_units_and_nearest_rank_percentiles() {
        let l = Latency::parse(
            "# durations\n1\n2\n3\n4\n5s\n6000ms\n7\n8\n9\n1m40s\n",
            None,
            None,
        )
        .expect("parses");
        assert_eq!(l.percentile(50.0), Duration::from_secs(5));
        assert_eq!(l.percentile(90.0), Duration::from_secs(9));
        assert_eq!(l.percentile(99.9), Duration::from_secs(100));
        assert_eq!(l.max(), Duration::from_secs(100));
        assert_eq!(l.mean(), Duration::from_secs_f64(14.5));
    }

    #[test]
    fn csv_picks_the_duration_column_and_its_unit() {
        let csv = "ts,model,e2e_ms\n1,a,1500\n2,a,2500\n3,b,500\n";
        let l = Latency::parse(csv, None, None).expect("parses");
        assert_eq!(l.max(), Duration::from_millis(2500));
        assert!(l.source.contains("e2e_ms"), "{}", l.source);
        let named = Latency::parse("a;b\n1;10\n2;20\n", None, Some("b")).expect("parses");
        assert_eq!(named.max(), Duration::from_secs(20));
        let err = Latency::parse("1,2\n3,4\n", None, None).expect_err("ambiguous");
        assert!(err.to_string().contains("--column"), "{err}");
        let err = Latency::parse("1\n2\nfast\n", None, None).expect_err("bad value");
        assert!(err.to_string().starts_with("line 3:"), "{err}");
    }

    #[test]
    fn prometheus_histogram_sums_label_sets_and_interpolates() {
        let text = r#"
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="10.0",model_name="a"} 50.0
vllm:e2e_request_latency_seconds_bucket{le="60.0",model_name="a"} 90.0
vllm:e2e_request_latency_seconds_bucket{le="120.0",model_name="a"} 100.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="a"} 100.0
vllm:e2e_request_latency_seconds_bucket{model_name="b",le="10.0"} 50.0
vllm:e2e_request_latency_seconds_bucket{model_name="b",le="60.0"} 90.0
vllm:e2e_request_latency_seconds_bucket{model_name="b",le="120.0"} 100.0
vllm:e2e_request_latency_seconds_bucket{model_name="b",le="+Inf"} 100.0
vllm:e2e_request_latency_seconds_count{model_name="b"} 100.0
vllm:time_to_first_token_seconds_bucket{le="1.0"} 3
vllm:time_to_first_token_seconds_bucket{le="+Inf"} 3
"#;
        let l = Latency::parse(text, None, None).expect("parses");
        assert!(l.source.contains("200 observations"), "{}", l.source);
        // Half the observations are at or under 10 s.
        assert_eq!(l.percentile(50.0), Duration::from_secs(10));
        // 95% lies halfway through the 60–120 s bucket.
        assert_eq!(l.percentile(95.0), Duration::from_secs(90));
        assert_eq!(l.max(), Duration::from_secs(120));
        assert_eq!(l.overflow, 0.0);
        let ttft =
            Latency::parse(text, Some("vllm:time_to_first_token_seconds"), None).expect("picks");
        assert_eq!(ttft.max(), Duration::from_secs(1));
        let err = Latency::parse(text, Some("nope"), None).expect_err("missing");
        assert!(
            err.to_string().contains("vllm:e2e_request_latency_seconds"),
            "{err}"
        );
    }

    #[test]
    fn histogram_overflow_is_reported() {
        let text = "x_bucket{le=\"30\"} 90\nx_bucket{le=\"+Inf\"} 100\n";
        let l = Latency::parse(text, None, None).expect("parses");
        assert!((l.overflow - 0.1).abs() < 1e-9);
        assert_eq!(l.percentile(99.9), Duration::from_secs(30));
    }

    #[test]
    fn max_only_is_uniform_below_it() {
        let l = Latency::from_max(Duration::from_secs(100));
        assert_eq!(l.percentile(100.0), Duration::from_secs(100));
        assert_eq!(l.sample(0.0), Duration::from_secs(20));
        assert_eq!(l.mean(), Duration::from_secs(60));
    }
}
