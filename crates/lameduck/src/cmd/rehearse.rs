//! `lameduck rehearse`.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lameduck_rehearse::report::RunReport;
use lameduck_rehearse::{RehearseArgs, Status, html, run};

/// Runs the rehearsal; exit status 0 when the judged setup lost nothing, 1 when it lost
/// requests, 130 when interrupted.
pub fn run(args: RehearseArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("cannot find the lameduck executable")?;
    let json = args.json || args.format == lameduck_rehearse::Format::Json;
    let report_path = args.report.clone();
    let keep = args.keep;
    let rehearsal = args.resolve(exe)?;
    let dir = rehearsal.plan.dir.clone();
    let terminal = std::io::stderr().is_terminal();
    // The runtime is dropped before returning: every pod's task goes with it, and with
    // them the last handle on each process group, which kills whatever still runs.
    let outcome = super::runtime()?.block_on(async {
        let noise = lameduck_rehearse::noise::Noise::start();
        let mut results = Vec::new();
        for setup in &rehearsal.setups {
            let status = Arc::new(Status::default());
            let bar = ProgressBar::new_spinner().with_prefix(setup.name.clone());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>10} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            let updater = {
                let (bar, status) = (bar.clone(), status.clone());
                tokio::spawn(async move {
                    loop {
                        bar.set_message(status.line());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            };
            let result = tokio::select! {
                r = run::run_setup(&rehearsal.plan, setup, rehearsal.arrivals.clone(), status) => r,
                _ = interrupted() => {
                    updater.abort();
                    bar.abandon_with_message("interrupted");
                    return Ok(None);
                }
            };
            updater.abort();
            match result {
                Ok(r) => {
                    bar.finish_with_message(r.verdict.clone());
                    if !terminal {
                        let _ = writeln!(std::io::stderr(), "{}: {}", r.setup.name, r.verdict);
                    }
                    results.push(r);
                }
                Err(e) => {
                    bar.abandon_with_message("failed");
                    return Err(anyhow::Error::from(e));
                }
            }
        }
        let timing = noise.finish(rehearsal.plan.time_scale);
        Ok(Some(RunReport::new(&rehearsal.plan, results, timing)))
    });
    if keep {
        let _ = writeln!(
            std::io::stderr(),
            "pods' logs and files kept in {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let Some(report) = outcome? else {
        return Ok(130);
    };
    if let Some(path) = &report_path {
        std::fs::write(path, html::render(&report))
            .with_context(|| format!("--report {}: cannot write it", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report).context("cannot write the JSON")?;
        writeln!(out)?;
    } else {
        write!(out, "\n{}", report.human())?;
        if let Some(path) = &report_path {
            writeln!(out, "\nReport: {}", path.display())?;
        }
    }
    Ok(if report.passed { 0 } else { 1 })
}

/// Ctrl-C, SIGTERM (a CI job's timeout) or SIGHUP (a closed terminal): every one of them must
/// end the run cleanly, so that the pods' process groups are killed.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let wait = |s: Option<tokio::signal::unix::Signal>| async move {
        match s {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = wait(term.take()) => {}
        _ = wait(hup.take()) => {}
    }
}
