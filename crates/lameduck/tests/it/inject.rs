//! `lameduck inject` as a user runs it: stdin to stdout piped into lint, in place, errors, and
//! the wrapper's `copy-binary`.

use std::process::Command;

use crate::support::{bin, run_with_stdin};

fn naive() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lameduck-lint/tests/fixtures/seed-naive.yaml"),
    )
    .expect("fixture")
}

#[test]
fn stdin_to_stdout_then_lint_is_clean() {
    let out = run_with_stdin(&["inject", "-"], Some(&naive()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container `vllm` behind the gate"),
        "{stderr}"
    );
    assert!(stderr.contains("unset (30) → 170"), "{stderr}");
    // The naive Deployment lints with errors; the injected one with none.
    let before = run_with_stdin(&["lint", "-"], Some(&naive()));
    assert_eq!(before.status.code(), Some(1));
    let after = run_with_stdin(&["lint", "-"], Some(&text));
    assert_eq!(
        after.status.code(),
        Some(0),
        "{}\n{text}",
        String::from_utf8_lossy(&after.stdout)
    );
}

#[test]
fn in_place_twice_and_errors() {
    let dir = tempfile_dir();
    let file = dir.join("d.yaml");
    std::fs::write(&file, naive()).expect("write");
    let path = file.to_str().expect("path");
    let run = |args: &[&str]| run_with_stdin(args, None);
    let first = run(&[
        "inject",
        "--mode",
        "wrapper",
        "--entrypoint",
        "vllm serve",
        "-i",
        path,
    ]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(first.stdout.is_empty(), "in place writes nothing to stdout");
    let once = std::fs::read_to_string(&file).expect("read");
    assert!(once.contains("/lameduck/bin/lameduck"), "{once}");
    let second = run(&["inject", "--mode", "wrapper", "-i", path]);
    assert_eq!(second.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already behind the gate"));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), once);
    // Without --entrypoint, a container with no command cannot be wrapped: exit 2, and the
    // message says what to do.
    std::fs::write(&file, naive()).expect("write");
    let bad = run(&["inject", "--mode", "wrapper", path]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("d.yaml:13:11") && err.contains("--entrypoint"),
        "{err}"
    );
    let missing = run(&["inject", "/nonexistent/x.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/x.yaml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn copy_binary_brings_a_working_executable() {
    let dir = tempfile_dir();
    let out = Command::new(bin())
        .args(["copy-binary", dir.join("bin").to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = dir.join("bin/lameduck");
    let version = Command::new(&copied)
        .arg("--version")
        .output()
        .expect("run copy");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("lameduck "));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lameduck-inject-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
