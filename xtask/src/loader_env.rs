//! The loader environment: the Python that `monitorctl scan` loads artifacts with, and the
//! frameworks pinned in loader/requirements.txt (a full freeze, installed without resolving).
//!
//! It is built on the system's Python (Debian's /usr/bin/python3), not a version manager's
//! under /root: the sandbox hides /root and /home, and the interpreter must be visible inside.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{root, run};

/// Where monitorctl looks by default (monitor-daemon's scan::job::DEFAULT_LOADER_ENV).
const DEFAULT_DIR: &str = "/var/lib/monitor/loader";
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// A copy of the requirements the environment was built from.
const STAMP: &str = "monitor-requirements.txt";

pub fn dir() -> PathBuf {
    std::env::var_os("MONITOR_LOADER_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

pub fn python() -> PathBuf {
    dir().join("bin/python")
}

/// Creates or updates the environment; does nothing when it matches the requirements.
pub fn ensure() -> Result<()> {
    let requirements_path = root().join("loader/requirements.txt");
    let requirements = fs::read(&requirements_path)
        .with_context(|| format!("reading {}", requirements_path.display()))?;
    let env = dir();
    let stamp = env.join(STAMP);
    if python().is_file() && fs::read(&stamp).is_ok_and(|s| s == requirements) {
        return Ok(());
    }
    system_python()?;
    let started = Instant::now();
    // The sandbox's user (nobody) must read and run all of it: a root umask of 077 would leave
    // the directories pip and venv create private. Set here so nothing is created before it.
    // SAFETY: umask has no preconditions; xtask creates files from this thread only.
    unsafe { libc::umask(0o022) };
    let packages = String::from_utf8_lossy(&requirements)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    println!(
        "loader-env: installing {packages} pinned packages into {} (several GB, ~2-3 min)",
        env.display()
    );
    if env.exists() {
        fs::remove_dir_all(&env).with_context(|| format!("removing the old {}", env.display()))?;
    }
    fs::create_dir_all(env.parent().unwrap_or(Path::new("/")))
        .with_context(|| format!("creating the parent of {}", env.display()))?;
    run(Command::new(SYSTEM_PYTHON).arg("-m").arg("venv").arg(&env))?;
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(python());
        cmd.args(["-m", "pip", "--disable-pip-version-check", "--no-input"]);
        cmd.args(args);
        cmd
    };
    run(pip(&["install", "--quiet", "--no-deps", "--requirement"]).arg(&requirements_path))?;
    run(&mut pip(&["check"]))?;
    // Wheels carry their own file modes, which the umask does not widen.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&env))?;
    fs::write(&stamp, &requirements).with_context(|| format!("writing {}", stamp.display()))?;
    println!(
        "loader-env: ready in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        python().display()
    );
    Ok(())
}

/// Debian's Python with venv support, installed when missing.
fn system_python() -> Result<()> {
    fn has_venv() -> bool {
        Command::new(SYSTEM_PYTHON)
            .args(["-c", "import ensurepip, venv"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
    if has_venv() {
        return Ok(());
    }
    println!("loader-env: installing Debian's python3 and python3-venv");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get").args(["install", "-y", "-q", "python3", "python3-venv"]))?;
    if !has_venv() {
        bail!("{SYSTEM_PYTHON} still cannot create virtual environments");
    }
    Ok(())
}
