//! The binary's own command line: shell completions, and answering as the kubectl plugin
//! `kubectl-lameduck`.

use std::process::Command;

use crate::support::bin;

fn run(exe: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(exe).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn completion_scripts_for_each_shell() {
    let exe = std::path::Path::new(bin());
    for (shell, marker) in [
        ("bash", "_lameduck()"),
        ("zsh", "#compdef lameduck"),
        ("fish", "complete -c lameduck"),
    ] {
        let (code, script) = run(exe, &["completions", shell]);
        assert_eq!(code, 0, "{shell}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("drain") && script.contains("agent"),
            "{shell}: subcommands"
        );
    }
    // bash loads it and registers the completion.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <('{}' completions bash) && complete -p lameduck",
            bin()
        ))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("-F _lameduck lameduck"));
}

#[test]
fn answers_as_the_kubectl_plugin() {
    let dir = std::env::temp_dir().join(format!("lameduck-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let plugin = dir.join("kubectl-lameduck");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(bin(), &plugin).expect("symlink");
    let (code, help) = run(&plugin, &["--help"]);
    assert_eq!(code, 0);
    assert!(
        help.contains("Usage: kubectl lameduck [OPTIONS] <COMMAND>"),
        "{help}"
    );
    let (code, help) = run(&plugin, &["drain", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Usage: kubectl lameduck drain"), "{help}");
    // Under its own name nothing changes.
    let (_, help) = run(std::path::Path::new(bin()), &["--help"]);
    assert!(
        help.contains("Usage: lameduck [OPTIONS] <COMMAND>"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
