//! Command-line configuration: flags, the output-length distribution and the shutdown mode.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, LogNormal, Normal};

/// Longest output a distribution may produce; a sample above it is clamped.
pub const MAX_OUTPUT_TOKENS: u32 = 1_000_000;

/// Flags of `lameduck engine-sim`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on (HTTP/1.1 and cleartext HTTP/2 with prior knowledge), e.g.
    /// `0.0.0.0:8001`; port 0 picks a free port.
    #[arg(
        long,
        value_name = "ADDR",
        env = "LAMEDUCK_SIM_LISTEN",
        default_value = "127.0.0.1:8001"
    )]
    pub listen: SocketAddr,

    /// Model name listed by /v1/models and echoed in responses when a request names none.
    #[arg(
        long,
        value_name = "NAME",
        env = "LAMEDUCK_SIM_MODEL",
        default_value = "sim-llm"
    )]
    pub model: String,

    /// Time to first token (prefill), e.g. `200ms`, `1.5` (seconds), `2s`.
    #[arg(
        long,
        value_name = "DURATION",
        env = "LAMEDUCK_SIM_TTFT",
        default_value = "200ms",
        value_parser = parse_duration_arg
    )]
    pub ttft: Duration,

    /// Decode speed of one request, in tokens per second (> 0).
    #[arg(
        long,
        value_name = "RATE",
        env = "LAMEDUCK_SIM_TOKENS_PER_SECOND",
        default_value = "50",
        value_parser = parse_positive_f64
    )]
    pub tokens_per_second: f64,

    /// Output length of a request, before the request's own `max_tokens` /
    /// `max_completion_tokens` cap: `N` (fixed), `uniform:MIN-MAX`, `normal:MEAN,STDDEV` or
    /// `lognormal:MEDIAN,SIGMA`; samples are clamped to at least 1 token.
    #[arg(
        long,
        value_name = "DIST",
        env = "LAMEDUCK_SIM_OUTPUT_TOKENS",
        default_value = "256"
    )]
    pub output_tokens: OutputTokens,

    /// Cold start: /health and completions answer 503 until this has passed (the port listens
    /// at once), like an engine loading its weights.
    #[arg(
        long = "cold-start",
        alias = "startup-delay",
        value_name = "DURATION",
        env = "LAMEDUCK_SIM_COLD_START",
        default_value = "0",
        value_parser = parse_duration_arg
    )]
    pub cold_start: Duration,

    /// Seed for output lengths: the same seed and the same order of requests give the same
    /// lengths. Unset: random.
    #[arg(long, value_name = "SEED", env = "LAMEDUCK_SIM_SEED")]
    pub seed: Option<u64>,

    /// Speed-up factor (> 0): every duration (ttft, token interval, cold start, drain
    /// timeout) is divided by it; 10 runs ten times faster.
    #[arg(
        long,
        value_name = "FACTOR",
        env = "LAMEDUCK_SIM_TIME_SCALE",
        default_value = "1",
        value_parser = parse_positive_f64
    )]
    pub time_scale: f64,

    /// What SIGTERM/SIGINT does. A second signal during `abort` or `drain` exits 143 at once.
    #[arg(
        long,
        value_name = "MODE",
        env = "LAMEDUCK_SIM_ON_SIGTERM",
        default_value = "abort"
    )]
    pub on_sigterm: OnSigterm,

    /// Another path answered as /health is (repeat for several): the path a manifest's probe
    /// or a gate's --health-path asks.
    #[arg(long = "health-path", value_name = "PATH")]
    pub health_paths: Vec<String>,

    /// With `--on-sigterm drain`: abort whatever is still in flight after this long.
    /// Default: no limit.
    #[arg(
        long,
        value_name = "DURATION",
        env = "LAMEDUCK_SIM_DRAIN_TIMEOUT",
        value_parser = parse_duration_arg
    )]
    pub drain_timeout: Option<Duration>,
}

impl Default for Config {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            model: "sim-llm".to_owned(),
            ttft: DEFAULT_TTFT,
            tokens_per_second: 50.0,
            output_tokens: OutputTokens::Fixed(256),
            cold_start: Duration::ZERO,
            seed: None,
            time_scale: 1.0,
            on_sigterm: OnSigterm::Abort,
            health_paths: Vec::new(),
            drain_timeout: None,
        }
    }
}

impl Config {
    /// Parses flags as `lameduck engine-sim` would (`args` excludes the program name).
    /// Environment variables `LAMEDUCK_SIM_*` apply to flags not given.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        #[command(name = "engine-sim")]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let args = std::iter::once(std::ffi::OsString::from("engine-sim"))
            .chain(args.into_iter().map(Into::into));
        <Cli as clap::Parser>::try_parse_from(args).map(|cli| cli.config)
    }
}

/// `--ttft` unless told otherwise.
pub const DEFAULT_TTFT: Duration = Duration::from_millis(200);

/// What the simulator does on SIGTERM/SIGINT.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSigterm {
    /// Like vLLM's default: close the listener, end streams at once with finish_reason "abort"
    /// and [DONE] (a fake success), 500 pending non-streamed requests, exit 0.
    Abort,
    /// Keep listening and /health at 200, 503 new completions, finish in-flight work (up to
    /// --drain-timeout), exit 0.
    Drain,
    /// Exit 143 at once; connections drop.
    Exit,
    /// Keep serving as if nothing happened; only SIGKILL ends it.
    Ignore,
}

impl fmt::Display for OnSigterm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Abort => "abort",
            Self::Drain => "drain",
            Self::Exit => "exit",
            Self::Ignore => "ignore",
        })
    }
}

/// The distribution of output lengths (`--output-tokens`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputTokens {
    /// `N`: always N tokens.
    Fixed(u32),
    /// `uniform:MIN-MAX`: uniform over MIN..=MAX.
    Uniform { min: u32, max: u32 },
    /// `normal:MEAN,STDDEV`.
    Normal { mean: f64, stddev: f64 },
    /// `lognormal:MEDIAN,SIGMA`: ln(length) is normal with mean ln(MEDIAN) and std-dev SIGMA.
    LogNormal { median: f64, sigma: f64 },
}

const SPEC_FORMS: &str = "write `N` (fixed, e.g. `256`), `uniform:MIN-MAX` (e.g. `uniform:50-500`), \
     `normal:MEAN,STDDEV` (e.g. `normal:256,64`) or `lognormal:MEDIAN,SIGMA` (e.g. `lognormal:200,0.8`)";

impl FromStr for OutputTokens {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid output-tokens spec {input:?}: {why}; {SPEC_FORMS}");
        let s = input.trim();
        let count = |v: &str, what: &str| -> Result<u32, String> {
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| bad(&format!("{what} {v:?} is not a whole number")))?;
            if n == 0 || n > MAX_OUTPUT_TOKENS {
                return Err(bad(&format!(
                    "{what} must be between 1 and {MAX_OUTPUT_TOKENS}"
                )));
            }
            Ok(n)
        };
        let real = |v: &str, what: &str| -> Result<f64, String> {
            let x: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(&format!("{what} {v:?} is not a number")))?;
            if !x.is_finite() {
                return Err(bad(&format!("{what} must be finite")));
            }
            Ok(x)
        };
        let Some((kind, params)) = s.split_once(':') else {
            return count(s, "token count").map(Self::Fixed);
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "uniform" => {
                let (lo, hi) = params
                    .split_once('-')
                    .ok_or_else(|| bad("uniform needs MIN-MAX"))?;
                let (min, max) = (count(lo, "MIN")?, count(hi, "MAX")?);
                if min > max {
                    return Err(bad("MIN is larger than MAX"));
                }
                Ok(Self::Uniform { min, max })
            }
            "normal" => {
                let (m, sd) = params
                    .split_once(',')
                    .ok_or_else(|| bad("normal needs MEAN,STDDEV"))?;
                let (mean, stddev) = (real(m, "MEAN")?, real(sd, "STDDEV")?);
                if stddev < 0.0 {
                    return Err(bad("STDDEV must not be negative"));
                }
                Ok(Self::Normal { mean, stddev })
            }
            "lognormal" => {
                let (m, sg) = params
                    .split_once(',')
                    .ok_or_else(|| bad("lognormal needs MEDIAN,SIGMA"))?;
                let (median, sigma) = (real(m, "MEDIAN")?, real(sg, "SIGMA")?);
                if median <= 0.0 {
                    return Err(bad("MEDIAN must be positive"));
                }
                if sigma < 0.0 {
                    return Err(bad("SIGMA must not be negative"));
                }
                Ok(Self::LogNormal { median, sigma })
            }
            other => Err(bad(&format!("unknown distribution {other:?}"))),
        }
    }
}

impl fmt::Display for OutputTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Uniform { min, max } => write!(f, "uniform:{min}-{max}"),
            Self::Normal { mean, stddev } => write!(f, "normal:{mean},{stddev}"),
            Self::LogNormal { median, sigma } => write!(f, "lognormal:{median},{sigma}"),
        }
    }
}

impl OutputTokens {
    /// Draws one output length, clamped to `1..=MAX_OUTPUT_TOKENS`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let x = match *self {
            Self::Fixed(n) => return n.clamp(1, MAX_OUTPUT_TOKENS),
            Self::Uniform { min, max } => {
                return rng.random_range(min..=max).clamp(1, MAX_OUTPUT_TOKENS);
            }
            // Parameters were validated by `from_str`; a hand-built bad value yields the centre.
            Self::Normal { mean, stddev } => match Normal::new(mean, stddev) {
                Ok(d) => d.sample(rng),
                Err(_) => mean,
            },
            Self::LogNormal { median, sigma } => match LogNormal::new(median.ln(), sigma) {
                Ok(d) => d.sample(rng),
                Err(_) => median,
            },
        };
        // `as` saturates (NaN becomes 0), then the clamp applies the bounds.
        (x.round() as u32).clamp(1, MAX_OUTPUT_TOKENS)
    }

    /// The length of one request: a sample, capped by the request's `max_tokens`.
    /// Returns the length and whether the cap cut it short (finish_reason `length`).
    pub fn length_for<R: Rng + ?Sized>(&self, rng: &mut R, max_tokens: Option<u32>) -> (u32, bool) {
        let natural = self.sample(rng);
        match max_tokens {
            Some(cap) if cap < natural => (cap, true),
            _ => (natural, false),
        }
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    lameduck_timeline::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_positive_f64(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number; write e.g. `50` or `2.5`"))?;
    if !(x.is_finite() && x > 0.0) {
        return Err(format!("{s:?} must be a finite number greater than 0"));
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn spec_good_forms() {
        assert_eq!("256".parse::<OutputTokens>(), Ok(OutputTokens::Fixed(256)));
        assert_eq!(
            " uniform:10-20 ".parse::<OutputTokens>(),
            Ok(OutputTokens::Uniform { min: 10, max: 20 })
        );
        assert_eq!(
            "normal:256,64".parse::<OutputTokens>(),
            Ok(OutputTokens::Normal {
                mean: 256.0,
                stddev: 64.0
            })
        );
        assert_eq!(
            "LogNormal:200, 0.8".parse::<OutputTokens>(),
            Ok(OutputTokens::LogNormal {
                median: 200.0,
                sigma: 0.8
            })
        );
        // Display round-trips.
        for s in ["7", "uniform:1-9", "normal:5.5,1", "lognormal:100,0.5"] {
            let spec: OutputTokens = s.parse().unwrap();
            assert_eq!(spec.to_string().parse::<OutputTokens>(), Ok(spec));
        }
    }

    #[test]
    fn spec_bad_forms_name_the_input_and_the_accepted_forms() {
        for bad in [
            "",
            "0",
            "-5",
            "abc",
            "uniform:20-10",
            "uniform:10",
            "uniform:0-5",
            "normal:1",
            "normal:10,-1",
            "normal:x,1",
            "lognormal:0,1",
            "lognormal:10,-0.1",
            "lognormal:inf,1",
            "poisson:5",
            "2000000",
        ] {
            let e = bad.parse::<OutputTokens>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains("uniform:MIN-MAX"), "{e}");
            assert!(e.contains("lognormal:MEDIAN,SIGMA"), "{e}");
        }
    }

    #[test]
    fn bad_spec_is_a_clap_error() {
        let e = Config::try_from_args(["--output-tokens", "gauss:1"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("--output-tokens"), "{msg}");
        assert!(msg.contains("normal:MEAN,STDDEV"), "{msg}");
        assert!(Config::try_from_args(["--time-scale", "0"]).is_err());
        assert!(Config::try_from_args(["--time-scale", "-1"]).is_err());
        assert!(Config::try_from_args(["--tokens-per-second", "nan"]).is_err());
        assert!(Config::try_from_args(["--ttft", "soon"]).is_err());
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_from_args([
            "--listen",
            "0.0.0.0:9000",
            "--ttft",
            "1.5",
            "--startup-delay",
            "2m",
            "--drain-timeout",
            "250ms",
            "--on-sigterm",
            "drain",
            "--seed",
            "42",
            "--output-tokens",
            "uniform:1-3",
        ])
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.ttft, Duration::from_millis(1500));
        assert_eq!(
            c.cold_start,
            Duration::from_secs(120),
            "the old spelling still works"
        );
        assert_eq!(c.drain_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.on_sigterm, OnSigterm::Drain);
        assert_eq!(c.seed, Some(42));
        assert_eq!(c.output_tokens, OutputTokens::Uniform { min: 1, max: 3 });
    }

    #[test]
    fn help_shows_every_flag_with_its_default() {
        let help = Config::try_from_args(["--help"]).unwrap_err().to_string();
        for needle in [
            "--listen <ADDR>",
            "[default: 127.0.0.1:8001]",
            "[env: LAMEDUCK_SIM_LISTEN=",
            "--model <NAME>",
            "[default: sim-llm]",
            "--ttft <DURATION>",
            "[default: 200ms]",
            "--tokens-per-second <RATE>",
            "[default: 50]",
            "--output-tokens <DIST>",
            "[default: 256]",
            "--cold-start <DURATION>",
            "--seed <SEED>",
            "--time-scale <FACTOR>",
            "--on-sigterm <MODE>",
            "[default: abort]",
            "--drain-timeout <DURATION>",
        ] {
            assert!(help.contains(needle), "{needle:?} missing from\n{help}");
        }
    }

    #[test]
    fn default_matches_flag_defaults() {
        // Only meaningful when no LAMEDUCK_SIM_* variable is set in the test environment.
        if std::env::vars().any(|(k, _)| k.starts_with("LAMEDUCK_SIM_")) {
            return;
        }
        let parsed = Config::try_from_args(std::iter::empty::<&str>()).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn sampling_is_reproducible_under_a_seed() {
        for spec in [
            "uniform:1-1000",
            "normal:300,100",
            "lognormal:200,1.0",
            "normal:-50,1",
        ] {
            let spec: OutputTokens = spec.parse().unwrap();
            let draw = |seed| {
                let mut rng = StdRng::seed_from_u64(seed);
                (0..50).map(|_| spec.sample(&mut rng)).collect::<Vec<_>>()
            };
            let a = draw(7);
            assert_eq!(a, draw(7), "{spec}");
            assert!(a.iter().all(|&n| (1..=MAX_OUTPUT_TOKENS).contains(&n)));
            if !matches!(spec, OutputTokens::Normal { mean, .. } if mean < 0.0) {
                assert_ne!(a, draw(8), "{spec}: different seeds should differ");
            }
        }
    }

    #[test]
    fn samples_respect_bounds() {
        let mut rng = StdRng::seed_from_u64(1);
        let u = OutputTokens::Uniform { min: 5, max: 9 };
        for _ in 0..200 {
            assert!((5..=9).contains(&u.sample(&mut rng)));
        }
        // A normal centred far below zero is clamped to 1.
        let n = OutputTokens::Normal {
            mean: -100.0,
            stddev: 1.0,
        };
        assert_eq!(n.sample(&mut rng), 1);
        let n = OutputTokens::Normal {
            mean: 1e12,
            stddev: 1.0,
        };
        assert_eq!(n.sample(&mut rng), MAX_OUTPUT_TOKENS);
    }

    #[test]
    fn max_tokens_caps_the_length() {
        let mut rng = StdRng::seed_from_u64(3);
        let spec = OutputTokens::Fixed(100);
        assert_eq!(spec.length_for(&mut rng, Some(10)), (10, true));
        assert_eq!(spec.length_for(&mut rng, Some(100)), (100, false));
        assert_eq!(spec.length_for(&mut rng, Some(500)), (100, false));
        assert_eq!(spec.length_for(&mut rng, None), (100, false));
        let spec = OutputTokens::Uniform { min: 50, max: 500 };
        let mut capped_count = 0;
        for _ in 0..100 {
            let (n, capped) = spec.length_for(&mut rng, Some(60));
            assert!((50..=60).contains(&n), "{n}");
            if capped {
                assert_eq!(n, 60);
                capped_count += 1;
            }
        }
        assert!(capped_count > 50, "most samples of 50..=500 exceed 60");
    }
}
