//! Checks the shipping files that cannot be run here: dist/Dockerfile (no container engine),
//! dist/kubernetes/ (no cluster) and dist/monitord.service (systemd is not PID 1). The checks
//! are dist/check/check_dist.py's, in an environment of their own holding the Dockerfile
//! parser and the Kubernetes schemas (pinned in dist/check/requirements.txt).

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{loader_env, root, run, venv::PinnedVenv};

/// Never the loader's environment: what monitor loads with must not change for a checker.
const DEFAULT_ENV: &str = "/var/lib/monitor/dist-check-env";

/// The oldest Kubernetes still commonly run and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

fn venv() -> PinnedVenv<'static> {
    PinnedVenv {
        dir: crate::venv::dir_from_env("MONITOR_DIST_CHECK_ENV", DEFAULT_ENV),
        requirements: root().join("dist/check/requirements.txt"),
        stamp: "monitor-requirements.txt",
        label: "dist-check",
    }
}

/// Installs what the checks need (once), then runs them against `monitord`, the release
/// binary, which judges the ConfigMap's configuration itself.
pub fn run_checks(monitord: &Path) -> Result<()> {
    let env = venv();
    if !env.is_current()? {
        println!(
            "dist-check: installing the checkers into {}",
            env.dir.display()
        );
        env.rebuild(|_| Ok(()))?;
    }
    systemd_analyze()?;
    run(Command::new(env.python())
        .arg(root().join("dist/check/check_dist.py"))
        .arg("--root")
        .arg(root())
        .arg("--monitord")
        .arg(monitord)
        .args(["--version", crate::dist::VERSION])
        .arg("--loader-dir")
        .arg(loader_env::DEFAULT_DIR)
        .args(["--loader-stamp", loader_env::STAMP])
        .arg("--kubernetes-version")
        .args(KUBERNETES_VERSIONS))
}

/// `systemd-analyze verify` checks the unit; Debian's systemd package has it.
fn systemd_analyze() -> Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    println!("dist-check: installing systemd (for systemd-analyze)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args([
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "systemd",
    ]))
}
