//! Parsing of the durations users type on the command line and in annotations.

use std::time::Duration;

/// A duration that could not be parsed; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDurationError {
    input: String,
    reason: String,
}

impl std::fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {} (write seconds as a number, e.g. `30` or `1.5`, \
             or with a unit, e.g. `250ms`, `90s`, `2m`, `1h 30m`)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseDurationError {}

/// The longest duration accepted: a year. Anything longer is a typo, and capping it keeps
/// every sum of durations far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `30`, `1.5` (seconds, as Kubernetes writes them) or `250ms`, `90s`, `2m`, `1h 30m`;
/// at most [`MAX_DURATION`].
///
/// Bare numbers are seconds because that is how `terminationGracePeriodSeconds` and every
/// probe field are written; units go through `humantime`.
pub fn parse_duration(input: &str) -> Result<Duration, ParseDurationError> {
    let s = input.trim();
    let err = |reason: &str| ParseDurationError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    if s.is_empty() {
        return Err(err("empty"));
    }
    let d = if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = s.parse().map_err(|_| err("not a number"))?;
        Duration::try_from_secs_f64(secs).map_err(|_| err("out of range"))?
    } else {
        humantime::parse_duration(s).map_err(|e| err(&e.to_string()))?
    };
    if d > MAX_DURATION {
        return Err(err("longer than a year"));
    }
    Ok(d)
}

/// A duration as a command-line value: parsed with [`parse_duration`], displayed as plain
/// seconds (`30`, `1.5`) so that a default written with it reads as the flag's own syntax.
/// Lets flags take their defaults from the model's constants (`default_value_t = Dur(X)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&secs_plain(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = ParseDurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur)
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// Seconds as a person writes them: `30`, `1.5`, `0.25` (no trailing zeros, no unit).
pub fn secs_plain(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Formats a duration as seconds with millisecond precision, e.g. `12.345s`.
pub fn fmt_secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 0 "), Ok(Duration::ZERO));
    }

    #[test]
    fn plain_seconds_round_trip() {
        for (d, s) in [
            (30_000, "30"),
            (1_500, "1.5"),
            (250, "0.25"),
            (0, "0"),
            (100, "0.1"),
        ] {
            let d = Duration::from_millis(d);
            assert_eq!(secs_plain(d), s);
            assert_eq!(s.parse::<Dur>(), Ok(Dur(d)));
            assert_eq!(Dur(d).to_string(), s);
        }
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn errors_name_the_input_and_the_fix() {
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.contains("\"soon\""), "{e}");
        assert!(e.contains("250ms"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1.2.3").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("400days").is_err());
    }
}
