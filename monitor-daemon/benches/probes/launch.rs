//! The ways an unwatched workload is started: as is, or under strace. (Watched ones are
//! started by a [`crate::session::Session`].)

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::workload::Workload;

/// Runs `workload` as a plain child; returns its loop's duration.
pub fn plain(workload: &Workload) -> Result<Duration> {
    let status = workload
        .std_command()?
        .status()
        .context("starting the workload")?;
    if !status.success() {
        bail!("workload {workload:?} failed: {status}");
    }
    workload.elapsed()
}

/// Runs `workload` under `strace -f -o /dev/null`, the way the seeds traced.
pub fn strace(workload: &Workload) -> Result<Duration> {
    let (program, args) = workload.command()?;
    let status = Command::new("strace")
        .args(["-f", "-o", "/dev/null"])
        .arg(program)
        .args(args)
        .status()
        .context("starting strace (is it installed?)")?;
    if !status.success() {
        bail!("strace of workload {workload:?} failed: {status}");
    }
    workload.elapsed()
}
