//! One vocabulary across the subcommands: a test that walks every subcommand's clap
//! definition and fails on a concept spelled two ways.

use std::collections::BTreeMap;

use clap::{Arg, Command, CommandFactory, Parser};

/// Concepts with one spelling: the flag every subcommand uses, and the spellings no visible
/// flag may use (they stay as hidden aliases for a release).
const CONCEPTS: &[(&str, &[&str])] = &[
    // A preStop hook's time.
    ("pre-stop", &["prestop"]),
    ("pre-stop-spent", &["prestop-spent"]),
    // How long load balancers take to act on an endpoint change.
    (
        "propagation-lag",
        &["lag", "endpoint-lag", "propagation-delay"],
    ),
    // How long an engine takes to serve after it starts.
    ("cold-start", &["startup-delay", "startup-time", "warmup"]),
    // The distribution of output lengths.
    ("output-tokens", &["lengths", "output-lengths"]),
    // What the engine does on SIGTERM.
    ("on-sigterm", &["engine-on-sigterm", "sigterm"]),
    // How long load balancers may still send requests after a drain starts.
    ("convergence-max", &["convergence"]),
    // A stream silent this long counts as stalled (not the gate's connection idle timeout).
    ("stall-timeout", &[]),
    // The longest request.
    ("max-request", &["max-request-seconds", "longest-request"]),
    // The output format of a subcommand's report.
    ("format", &["json", "output-format"]),
];

/// Every subcommand's visible arguments, by subcommand name.
fn arguments() -> Vec<(String, Command)> {
    let root = super::Cli::command();
    root.get_subcommands()
        .map(|c| (c.get_name().to_owned(), c.clone()))
        .collect()
}

fn visible(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
}

/// Whether an argument takes a duration: its parser accepts `1500ms` and refuses a word.
fn takes_duration(arg: &Arg) -> bool {
    if !arg.get_action().takes_values() || !arg.get_possible_values().is_empty() {
        return false;
    }
    // The argument's own parser, alone in a command (its relations to other flags left out).
    let parses = |value: &str| {
        Command::new("t")
            .arg(
                Arg::new("x")
                    .long("x")
                    .value_parser(arg.get_value_parser().clone()),
            )
            .try_get_matches_from(["t", "--x", value])
            .is_ok()
    };
    parses("1500ms") && !parses("surely-not-a-duration")
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .map(|v| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

fn possible_values(arg: &Arg) -> Vec<String> {
    let mut v: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn no_concept_is_spelled_two_ways() {
    let mut problems = Vec::new();
    for (sub, cmd) in arguments() {
        for arg in visible(&cmd) {
            let long = arg.get_long().unwrap_or_default();
            for (canonical, others) in CONCEPTS {
                if others.contains(&long) {
                    problems.push(format!(
                        "`lameduck {sub} --{long}`: this concept is spelled `--{canonical}` elsewhere"
                    ));
                }
            }
            if takes_duration(arg) && value_name(arg) != "DURATION" {
                problems.push(format!(
                    "`lameduck {sub} --{long} <{}>`: durations are shown as <DURATION>",
                    value_name(arg)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A flag that several subcommands take has one value name, and one meaning for each value:
/// its sets of values are equal, or one holds the other.
#[test]
fn a_flag_means_the_same_wherever_it_appears() {
    let mut seen: BTreeMap<String, Vec<(String, String, Vec<String>)>> = BTreeMap::new();
    for (sub, cmd) in arguments() {
        for arg in visible(&cmd) {
            if !arg.get_action().takes_values() {
                continue;
            }
            let long = arg.get_long().unwrap_or_default().to_owned();
            seen.entry(long).or_default().push((
                sub.clone(),
                value_name(arg),
                possible_values(arg),
            ));
        }
    }
    let mut problems = Vec::new();
    for (long, uses) in &seen {
        for pair in uses.windows(2) {
            let ((sa, na, va), (sb, nb, vb)) = (&pair[0], &pair[1]);
            if na != nb {
                problems.push(format!("--{long}: <{na}> in `{sa}` but <{nb}> in `{sb}`"));
            }
            let subset = |x: &[String], y: &[String]| x.iter().all(|v| y.contains(v));
            if !(subset(va, vb) || subset(vb, va)) {
                problems.push(format!(
                    "--{long}: values {va:?} in `{sa}` but {vb:?} in `{sb}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The checks above have something to compare.
    assert!(seen.get("on-sigterm").is_some_and(|u| u.len() >= 3));
    assert!(seen.get("max-request").is_some_and(|u| u.len() >= 3));
}

/// The old spellings still parse, hidden, for a release.
#[test]
fn old_spellings_still_work() {
    for args in [
        &["lameduck", "engine-sim", "--startup-delay", "1s"][..],
        &["lameduck", "gate", "--prestop-spent", "5", "--", "true"],
        &[
            "lameduck",
            "rehearse",
            "--lag",
            "1s-2s",
            "--lengths",
            "10",
            "--idle-timeout",
            "5s",
            "--json",
        ],
        &[
            "lameduck",
            "plan",
            "--replicas",
            "2",
            "--engine-on-sigterm",
            "drain",
            "--json",
        ],
        &["lameduck", "lint", "--convergence", "20s", "x.yaml"],
        &["lameduck", "inject", "--convergence", "20s", "x.yaml"],
    ] {
        if let Err(e) = super::Cli::try_parse_from(args) {
            panic!("{args:?}: {e}");
        }
    }
    // And they stay out of the help.
    let help = super::Cli::command()
        .find_subcommand_mut("engine-sim")
        .map(|c| c.render_long_help().to_string())
        .unwrap_or_default();
    assert!(
        help.contains("--cold-start") && !help.contains("--startup-delay"),
        "{help}"
    );
}
