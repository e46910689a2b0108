//! The sandbox helper binary on its own: what it lets a job write, and the exit status it
//! passes on. (The scans' tests run it inside bubblewrap; this one needs neither root nor
//! the probes, only a kernel with Landlock.)

use std::process::Command;

const HELPER: &str = env!("CARGO_BIN_EXE_monitor-sandbox");

fn helper(writable: &std::path::Path, script: &str) -> std::process::Output {
    Command::new(HELPER)
        .arg("--write")
        .arg(writable)
        .args(["sh", "-c", script])
        .output()
        .expect("running monitor-sandbox")
}

#[test]
fn a_confined_job_writes_only_below_its_directories_and_its_status_is_passed_on() {
    let allowed = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let inside = allowed.path().join("inside");
    let outside = other.path().join("outside");
    let out = helper(
        allowed.path(),
        &format!(
            "echo ok > {}; echo no > {} 2>/dev/null; exit 7",
            inside.display(),
            outside.display()
        ),
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(inside.exists(), "the writable directory was writable");
    assert!(
        !outside.exists(),
        "a write outside the writable directory was let through"
    );
}

#[test]
fn a_command_that_cannot_run_is_126_as_env_says() {
    let allowed = tempfile::tempdir().unwrap();
    let out = Command::new(HELPER)
        .arg("--write")
        .arg(allowed.path())
        .arg("/no/such/program")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("monitor-sandbox:"));
}
