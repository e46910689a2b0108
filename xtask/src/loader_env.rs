//! The loader environment: the Python that `monitorctl scan` loads artifacts with, and the
//! frameworks pinned in loader/requirements.txt (a full freeze, installed without resolving).
//!
//! It is built on the system's Python (Debian's /usr/bin/python3), not a version manager's
//! under /root: the sandbox hides /root and /home, and the interpreter must be visible inside.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::Result;

use crate::{root, run, venv::PinnedVenv};

/// Where monitorctl looks by default (monitor-scan's job::DEFAULT_LOADER_ENV).
pub const DEFAULT_DIR: &str = "/var/lib/monitor/loader";
/// The stamp's name in the environment (dist/Dockerfile writes it too).
pub const STAMP: &str = "monitor-requirements.txt";

pub fn dir() -> PathBuf {
    crate::venv::dir_from_env("MONITOR_LOADER_ENV", DEFAULT_DIR)
}

pub fn python() -> PathBuf {
    dir().join("bin/python")
}

fn venv() -> PinnedVenv<'static> {
    PinnedVenv {
        dir: dir(),
        requirements: root().join("loader/requirements.txt"),
        stamp: STAMP,
        label: "loader-env",
    }
}

/// Creates or updates the environment; does nothing when it matches the requirements.
pub fn ensure() -> Result<()> {
    let env = venv();
    if env.is_current()? {
        println!(
            "loader-env: {} is current ({})",
            env.dir.display(),
            gb(env.size())
        );
        return Ok(());
    }
    let started = Instant::now();
    // The sandbox's users (a uid per job) must read and run all of it: a root umask of 077 would leave
    // the directories pip and venv create private. Set here so nothing is created before it.
    // SAFETY: umask has no preconditions; xtask creates files from this thread only.
    unsafe { libc::umask(0o022) };
    println!(
        "loader-env: installing the pinned frameworks into {} (about 5.6 GiB, ~3 min)",
        env.dir.display()
    );
    env.rebuild(|dir| {
        // Wheels carry their own file modes, which the umask does not widen.
        run(Command::new("chmod").args(["-R", "a+rX"]).arg(dir))
    })?;
    println!(
        "loader-env: ready in {:.0} s ({}, {})",
        started.elapsed().as_secs_f64(),
        python().display(),
        gb(env.size())
    );
    Ok(())
}

/// Bytes as gibibytes, for people (as `du -sh` shows them).
fn gb(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}
