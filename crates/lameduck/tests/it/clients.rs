//! The official OpenAI client libraries (Python and Node) against a draining gate: a stream
//! cut at the deadline must surface as an error, never as a finished completion.
//!
//! `scripts/test` installs the libraries; run alone, set LAMEDUCK_TEST_PYTHON to a Python with
//! `openai` installed and run `npm ci --prefix tests/clients`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;

use crate::support::*;

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients")
}

fn python() -> String {
    std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Starts the client; its single output line is read when it exits.
fn client(kind: &str, base: &str, max_tokens: u32) -> tokio::task::JoinHandle<String> {
    let dir = clients_dir();
    let mut cmd = match kind {
        "python" => {
            let mut c = Command::new(python());
            c.arg(dir.join("openai_stream.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(dir.join("openai_stream.mjs"));
            c
        }
    };
    cmd.arg(base)
        .arg(max_tokens.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let kind = kind.to_owned();
    tokio::spawn(async move {
        let out = cmd
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run the {kind} client: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !stdout.is_empty(),
            "the {kind} OpenAI client failed to run (install it with scripts/test): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_clients_see_the_terminal_event_as_an_error() {
    let mut gate = Gate::wrapping_sim(
        &["--grace-period", "4", "--kill-margin", "1"],
        &[
            "--tokens-per-second",
            "20",
            "--output-tokens",
            "100000",
            "--ttft",
            "10ms",
        ],
    )
    .await;
    let base = gate.url("/v1");
    // Before the drain, an ordinary stream completes for both clients.
    for kind in ["python", "node"] {
        let line = client(kind, &base, 5).await.expect("join");
        assert_eq!(line, "completed 5 length", "{kind}");
    }
    let long: Vec<_> = ["python", "node"]
        .iter()
        .map(|k| (*k, client(k, &base, 100_000)))
        .collect();
    gate.wait_streams(2).await;
    gate.proc.signal(Signal::SIGTERM);
    for (kind, handle) in long {
        let line = handle.await.expect("join");
        assert!(line.starts_with("error server_shutdown "), "{kind}: {line}");
    }
    assert_eq!(gate.proc.wait_exit(Duration::from_secs(30)).await, 0);
    assert_eq!(gate.proc.report()["truncated"], 2);
}
