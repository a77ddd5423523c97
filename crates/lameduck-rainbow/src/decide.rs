//! What the controller does about one RainbowDeployment, decided from what it observed and
//! what it remembered, with `now` as an argument. No I/O: the reconciler reads the cluster
//! into an [`Input`], calls [`decide`], performs the [`Action`]s and writes the
//! [`Decision`]'s colours into the status (which is also the memory of the next call).
//!
//! The rules, in order:
//! 1. The desired colour (the hash of `spec.template`) gets a Deployment if it has none, and
//!    `spec.replicas` if it has other (a rollback to a colour being retired scales it back
//!    up and forgets its retirement).
//! 2. The Services move to the desired colour once enough of it is Ready; until then they stay
//!    where they are.
//! 3. Every other colour that the Services do not select is superseded (from the first time
//!    it is seen so). It is retired — scaled to zero — when its gates have all reported
//!    nothing in flight for the quiet period, or when `maxAge` has passed since it was
//!    superseded. Work that cannot be read counts as work.
//! 4. A retired colour is deleted once it has no pods left.

use std::time::Duration;

use crate::crd::Settings;

/// What is in flight on a colour's pods, from their gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// This much (more than zero).
    Busy(u64),
    /// Nothing, on every pod that could have any.
    Idle,
    /// Not known: a gate did not answer, or the template has no gate. Counts as work.
    Unknown(String),
}

impl Work {
    /// From a sum over the pods, and the first reason one could not be read.
    pub fn from_sum(sum: u64, unknown: Option<String>) -> Work {
        match unknown {
            Some(why) => Work::Unknown(why),
            None if sum > 0 => Work::Busy(sum),
            None => Work::Idle,
        }
    }

    /// The number, when known.
    pub fn count(&self) -> Option<u64> {
        match self {
            Work::Busy(n) => Some(*n),
            Work::Idle => Some(0),
            Work::Unknown(_) => None,
        }
    }
}

/// Why a colour was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Its gates reported nothing in flight for the quiet period.
    Quiet,
    /// `maxAge` passed since it was superseded.
    MaxAge,
}

impl Reason {
    /// As written in the status and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Quiet => "quiet",
            Reason::MaxAge => "maxAge",
        }
    }

    /// From the status.
    pub fn parse(s: &str) -> Option<Reason> {
        match s {
            "quiet" => Some(Reason::Quiet),
            "maxAge" => Some(Reason::MaxAge),
            _ => None,
        }
    }
}

/// One colour as observed, with what the last decision remembered about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Colour {
    /// The template hash.
    pub colour: String,
    /// The Deployment's `spec.replicas`.
    pub replicas: i32,
    /// Its Ready pods.
    pub ready: i32,
    /// Its pods that still exist, terminating ones included.
    pub pods: u32,
    /// What its gates report.
    pub work: Work,
    /// Remembered: when it lost the Services.
    pub superseded_at: Option<Duration>,
    /// Remembered: since when its work has been [`Work::Idle`].
    pub idle_since: Option<Duration>,
    /// Remembered: why it is being retired.
    pub retiring: Option<Reason>,
}

impl Colour {
    /// A colour as observed now (its Deployment's replicas, Ready pods, pods and work), with
    /// what the last decision remembered about it, if it was there.
    pub fn observed(
        colour: String,
        replicas: i32,
        ready: usize,
        pods: usize,
        work: Work,
        remembered: Option<&ColourState>,
    ) -> Colour {
        Colour {
            colour,
            replicas,
            ready: i32::try_from(ready).unwrap_or(i32::MAX),
            pods: u32::try_from(pods).unwrap_or(u32::MAX),
            work,
            superseded_at: remembered.and_then(|m| m.superseded_at),
            idle_since: remembered.and_then(|m| m.idle_since),
            retiring: remembered.and_then(|m| m.retiring),
        }
    }
}

/// Everything a decision needs. Times are durations since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Now.
    pub now: Duration,
    /// The spec's settings.
    pub settings: Settings,
    /// The colour of `spec.template`.
    pub desired: String,
    /// The colour the Services select, when they all select the same one.
    pub serving: Option<String>,
    /// Every colour that has a Deployment.
    pub colours: Vec<Colour>,
    /// Why the Services cannot be moved to the desired colour (a selector that its pods would
    /// not match, so that the move would leave the Services without endpoints); `None`: they
    /// can.
    pub unroutable: Option<String>,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the colour's Deployment with this many replicas.
    Create {
        /// The colour.
        colour: String,
        /// Its replicas.
        replicas: i32,
    },
    /// Set the colour's replicas (the desired colour: to the spec's; a retired one: to 0).
    Scale {
        /// The colour.
        colour: String,
        /// The replicas.
        replicas: i32,
    },
    /// Point the Services at the colour.
    Route {
        /// The colour.
        colour: String,
        /// The colour they selected before, if one.
        from: Option<String>,
    },
    /// Retire the colour: scale it to zero (its pods drain through their graceful path).
    Retire {
        /// The colour.
        colour: String,
        /// Why.
        reason: Reason,
        /// What was in flight, when known (more than zero only for `maxAge`).
        in_flight: Option<u64>,
    },
    /// Delete the retired colour's Deployment: it has no pods left.
    Delete {
        /// The colour.
        colour: String,
    },
}

/// A colour's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The desired colour, not yet serving.
    Starting,
    /// The Services select it (or select no colour yet).
    Serving,
    /// Superseded, with work in flight (or work that cannot be read).
    Draining,
    /// Superseded and idle, within the quiet period.
    Quiet,
    /// Scaled to zero, waiting for its pods to go.
    Retiring,
}

impl Phase {
    /// As written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "Starting",
            Phase::Serving => "Serving",
            Phase::Draining => "Draining",
            Phase::Quiet => "Quiet",
            Phase::Retiring => "Retiring",
        }
    }
}

/// A colour after the decision: what to remember and show.
#[derive(Debug, Clone, PartialEq)]
pub struct ColourState {
    /// The colour.
    pub colour: String,
    /// Its phase.
    pub phase: Phase,
    /// Why it is there, in words.
    pub message: String,
    /// When it lost the Services.
    pub superseded_at: Option<Duration>,
    /// Since when it has been idle.
    pub idle_since: Option<Duration>,
    /// Why it is being retired.
    pub retiring: Option<Reason>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// The colour the Services select once the actions are done.
    pub serving: Option<String>,
    /// Every colour, the desired one first, with what to remember.
    pub colours: Vec<ColourState>,
}

/// Ready pods needed before the Services move to a colour of `replicas`.
pub fn ready_needed(replicas: i32, fraction: f64) -> i32 {
    if replicas <= 0 {
        return 0;
    }
    // At least one pod, and the fraction rounded up: 0.5 of 3 is 2.
    let needed = (f64::from(replicas) * fraction).ceil();
    // Bounded by `replicas` (an i32) since the fraction is at most 1.
    (needed as i32).clamp(1, replicas)
}

/// `30s`, `11h 52m`: whole seconds, for people.
fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Decides what to do.
pub fn decide(input: &Input) -> Decision {
    let now = input.now;
    let s = &input.settings;
    let mut actions = Vec::new();
    let mut states = Vec::new();

    // 1. The desired colour.
    let desired = input.colours.iter().find(|c| c.colour == input.desired);
    let desired_ready = match desired {
        None => {
            actions.push(Action::Create {
                colour: input.desired.clone(),
                replicas: s.replicas,
            });
            false
        }
        Some(c) => {
            // A rollback to a retired colour: scaled back up, its retirement forgotten. With
            // an autoscaler, the replicas are otherwise its own.
            if (c.replicas != s.replicas && !s.autoscaled) || c.retiring.is_some() {
                actions.push(Action::Scale {
                    colour: c.colour.clone(),
                    replicas: s.replicas,
                });
                false
            } else {
                // Ready pods count against what the Deployment asks: the spec's replicas, or
                // the autoscaler's.
                c.ready >= ready_needed(c.replicas, s.ready_fraction)
            }
        }
    };

    // 2. The Services.
    let mut serving = input.serving.clone();
    if serving.as_deref() != Some(input.desired.as_str())
        && desired_ready
        && input.unroutable.is_none()
    {
        actions.push(Action::Route {
            colour: input.desired.clone(),
            from: serving.clone(),
        });
        serving = Some(input.desired.clone());
    }
    let desired_message = match (desired, serving.as_deref() == Some(input.desired.as_str())) {
        (_, true) => "serves new requests".to_owned(),
        (Some(_), false) if desired_ready && input.unroutable.is_some() => format!(
            "Ready, but the Services stay where they are: {}",
            input.unroutable.as_deref().unwrap_or_default()
        ),
        (None, false) => "created; waiting for its pods to be Ready".to_owned(),
        (Some(c), false) => format!(
            "waiting for {} of {} pods to be Ready ({} are)",
            ready_needed(c.replicas, s.ready_fraction),
            c.replicas,
            c.ready
        ),
    };
    states.push(ColourState {
        colour: input.desired.clone(),
        phase: if serving.as_deref() == Some(input.desired.as_str()) {
            Phase::Serving
        } else {
            Phase::Starting
        },
        message: desired_message,
        superseded_at: None,
        idle_since: None,
        retiring: None,
    });

    // 3 and 4. The others.
    for c in input.colours.iter().filter(|c| c.colour != input.desired) {
        let selected = match serving.as_deref() {
            Some(sv) => sv == c.colour,
            // Services that select no colour select every colour's pods.
            None => true,
        };
        if selected {
            states.push(ColourState {
                colour: c.colour.clone(),
                phase: Phase::Serving,
                message: match serving {
                    Some(_) => format!("serves new requests until {} is Ready", input.desired),
                    None => "the Services select no colour yet".to_owned(),
                },
                superseded_at: None,
                idle_since: None,
                retiring: None,
            });
            continue;
        }
        let superseded_at = c.superseded_at.map_or(now, |t| t.min(now));
        if let Some(reason) = c.retiring {
            if c.replicas > 0 {
                actions.push(Action::Scale {
                    colour: c.colour.clone(),
                    replicas: 0,
                });
            } else if c.pods == 0 {
                actions.push(Action::Delete {
                    colour: c.colour.clone(),
                });
            }
            states.push(ColourState {
                colour: c.colour.clone(),
                phase: Phase::Retiring,
                message: format!("retired ({}); {} pods left", reason.as_str(), c.pods),
                superseded_at: Some(superseded_at),
                idle_since: c.idle_since,
                retiring: Some(reason),
            });
            continue;
        }
        let idle_since = match c.work {
            Work::Idle => Some(c.idle_since.map_or(now, |t| t.min(now))),
            Work::Busy(_) | Work::Unknown(_) => None,
        };
        let quiet_for = idle_since.map(|t| now.saturating_sub(t));
        let age = now.saturating_sub(superseded_at);
        let reason = if quiet_for.is_some_and(|q| q >= s.quiet) {
            Some(Reason::Quiet)
        } else if s.max_age.is_some_and(|m| age >= m) {
            Some(Reason::MaxAge)
        } else {
            None
        };
        if let Some(reason) = reason {
            actions.push(Action::Retire {
                colour: c.colour.clone(),
                reason,
                in_flight: c.work.count(),
            });
            states.push(ColourState {
                colour: c.colour.clone(),
                phase: Phase::Retiring,
                message: match reason {
                    Reason::Quiet => format!("retired: nothing in flight for {}", secs(s.quiet)),
                    Reason::MaxAge => format!(
                        "retired: maxAge {} passed with {} in flight",
                        secs(s.max_age.unwrap_or_default()),
                        c.work
                            .count()
                            .map_or_else(|| "unknown work".to_owned(), |n| n.to_string())
                    ),
                },
                superseded_at: Some(superseded_at),
                idle_since,
                retiring: Some(reason),
            });
            continue;
        }
        let left = s
            .max_age
            .map(|m| format!("; maxAge in {}", secs(m.saturating_sub(age))))
            .unwrap_or_default();
        let (phase, message) = match &c.work {
            Work::Busy(n) => (Phase::Draining, format!("{n} in flight{left}")),
            Work::Unknown(why) => (
                Phase::Draining,
                format!("in-flight work unknown ({why}){left}"),
            ),
            Work::Idle => (
                Phase::Quiet,
                format!(
                    "nothing in flight for {} of {}{left}",
                    secs(quiet_for.unwrap_or_default()),
                    secs(s.quiet)
                ),
            ),
        };
        states.push(ColourState {
            colour: c.colour.clone(),
            phase,
            message,
            superseded_at: Some(superseded_at),
            idle_since,
            retiring: None,
        });
    }
    Decision {
        actions,
        serving,
        colours: states,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            replicas: 2,
            ready_fraction: 1.0,
            quiet: Duration::from_secs(30),
            max_age: Some(Duration::from_secs(3600)),
            autoscaled: false,
        }
    }

    fn colour(name: &str, replicas: i32, ready: i32, work: Work) -> Colour {
        Colour {
            colour: name.to_owned(),
            replicas,
            ready,
            pods: u32::try_from(replicas).unwrap_or(0),
            work,
            superseded_at: None,
            idle_since: None,
            retiring: None,
        }
    }

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_new_template_creates_its_colour_and_the_old_keeps_serving() {
        let d = decide(&Input {
            now: at(1000),
            settings: settings(),
            desired: "blue".into(),
            serving: Some("red".into()),
            colours: vec![colour("red", 2, 2, Work::Busy(3))],
            unroutable: None,
        });
        assert_eq!(
            d.actions,
            vec![Action::Create {
                colour: "blue".into(),
                replicas: 2
            }]
        );
        assert_eq!(d.serving.as_deref(), Some("red"));
        assert_eq!(d.colours[1].phase, Phase::Serving);
        assert_eq!(d.colours[1].superseded_at, None);
    }

    #[test]
    fn services_move_when_ready_and_the_old_colour_drains_then_goes() {
        let mut input = Input {
            now: at(1000),
            settings: settings(),
            desired: "blue".into(),
            serving: Some("red".into()),
            colours: vec![
                colour("blue", 2, 1, Work::Idle),
                colour("red", 2, 2, Work::Busy(3)),
            ],
            unroutable: None,
        };
        assert!(
            decide(&input).actions.is_empty(),
            "one of two is not enough"
        );
        input.colours[0].ready = 2;
        // Services whose selector the new pods would not match are not moved, and the colour
        // says why.
        input.unroutable = Some("Service llm selects app=other".into());
        let d = decide(&input);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(d.serving.as_deref(), Some("red"));
        assert_eq!(d.colours[0].phase, Phase::Starting);
        assert_eq!(
            d.colours[0].message,
            "Ready, but the Services stay where they are: Service llm selects app=other"
        );
        input.unroutable = None;
        let d = decide(&input);
        assert_eq!(
            d.actions,
            vec![Action::Route {
                colour: "blue".into(),
                from: Some("red".into())
            }]
        );
        assert_eq!(d.colours[1].phase, Phase::Draining);
        assert_eq!(d.colours[1].superseded_at, Some(at(1000)));
        // Still busy an hour minus a second later: kept.
        input.serving = Some("blue".into());
        input.colours[1].superseded_at = Some(at(1000));
        input.now = at(1000 + 3599);
        let d = decide(&input);
        assert!(d.actions.is_empty());
        assert_eq!(d.colours[1].message, "3 in flight; maxAge in 1s");
        input.now = at(1000 + 60);
        assert_eq!(
            decide(&input).colours[1].message,
            "3 in flight; maxAge in 59m"
        );
        input.now = at(1000 + 3599);
        // Idle: the quiet period starts, and ends.
        input.now = at(1100);
        input.colours[1].work = Work::Idle;
        let d = decide(&input);
        assert!(d.actions.is_empty());
        assert_eq!(d.colours[1].phase, Phase::Quiet);
        assert_eq!(d.colours[1].idle_since, Some(at(1100)));
        input.colours[1].idle_since = Some(at(1100));
        input.now = at(1130);
        let d = decide(&input);
        assert_eq!(
            d.actions,
            vec![Action::Retire {
                colour: "red".into(),
                reason: Reason::Quiet,
                in_flight: Some(0)
            }]
        );
        // Scaled to zero, pods draining, then gone.
        input.colours[1].retiring = Some(Reason::Quiet);
        input.colours[1].replicas = 0;
        assert!(decide(&input).actions.is_empty());
        input.colours[1].pods = 0;
        assert_eq!(
            decide(&input).actions,
            vec![Action::Delete {
                colour: "red".into()
            }]
        );
    }

    #[test]
    fn work_resets_the_quiet_period_and_unknown_work_counts_as_work() {
        let mut red = colour("red", 2, 2, Work::Busy(1));
        red.superseded_at = Some(at(0));
        red.idle_since = Some(at(10));
        let mut input = Input {
            now: at(100),
            settings: settings(),
            desired: "blue".into(),
            serving: Some("blue".into()),
            colours: vec![colour("blue", 2, 2, Work::Idle), red],
            unroutable: None,
        };
        let d = decide(&input);
        assert!(d.actions.is_empty());
        assert_eq!(d.colours[1].idle_since, None);
        input.colours[1].work = Work::Unknown("gate did not answer".into());
        let d = decide(&input);
        assert!(d.actions.is_empty());
        assert!(d.colours[1].message.contains("gate did not answer"));
    }

    #[test]
    fn max_age_retires_a_busy_colour() {
        let mut red = colour("red", 2, 2, Work::Busy(4));
        red.superseded_at = Some(at(0));
        let d = decide(&Input {
            now: at(3600),
            settings: settings(),
            desired: "blue".into(),
            serving: Some("blue".into()),
            colours: vec![colour("blue", 2, 2, Work::Idle), red],
            unroutable: None,
        });
        assert_eq!(
            d.actions,
            vec![Action::Retire {
                colour: "red".into(),
                reason: Reason::MaxAge,
                in_flight: Some(4)
            }]
        );
    }

    #[test]
    fn rollback_to_a_retiring_colour_scales_it_back_and_routes_when_ready() {
        let mut red = colour("red", 0, 0, Work::Idle);
        red.pods = 1;
        red.retiring = Some(Reason::Quiet);
        red.superseded_at = Some(at(0));
        let d = decide(&Input {
            now: at(50),
            settings: settings(),
            desired: "red".into(),
            serving: Some("blue".into()),
            colours: vec![colour("blue", 2, 2, Work::Busy(1)), red],
            unroutable: None,
        });
        assert_eq!(
            d.actions,
            vec![Action::Scale {
                colour: "red".into(),
                replicas: 2
            }]
        );
        assert_eq!(d.colours[0].retiring, None);
        assert_eq!(d.colours[0].phase, Phase::Starting);
        assert_eq!(d.colours[1].phase, Phase::Serving, "blue keeps serving");
    }

    #[test]
    fn ready_fraction_rounds_up_and_needs_one() {
        assert_eq!(ready_needed(3, 0.5), 2);
        assert_eq!(ready_needed(4, 0.5), 2);
        assert_eq!(ready_needed(10, 0.01), 1);
        assert_eq!(ready_needed(2, 1.0), 2);
        assert_eq!(ready_needed(0, 1.0), 0);
    }
}
