//! A watched job run by hand (not through `run::run`), so that the benchmark chooses how the
//! ring buffer is consumed: keep the raw records, or decode them against the clock.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result, bail};
use monitor_common::event::Watch;
use monitor_engine::cgroup::{self, JobCgroup};
use monitor_engine::probes::{Probes, Target, WatchCounters};

/// A cgroup watched by `probes`, removed from the watch and deleted when dropped.
pub struct WatchedJob<'p> {
    probes: &'p mut Probes,
    cgroup: JobCgroup,
}

impl<'p> WatchedJob<'p> {
    pub fn new(probes: &'p mut Probes) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = JobCgroup::create(&name).context("creating the benchmark's cgroup")?;
        // The cgroup's id doubles as the watch's: one watch per cgroup here.
        let watch = Watch {
            id: cgroup.id(),
            ..Watch::default()
        };
        probes
            .watch(&watch, &[Target::Cgroup(cgroup.id())])
            .context("watching the benchmark's cgroup")?;
        Ok(WatchedJob { probes, cgroup })
    }

    /// Starts `cmd` inside the cgroup (it moves itself there before exec, like `run::run`).
    pub fn spawn(&self, mut cmd: Command) -> Result<Child> {
        let procs = self
            .cgroup
            .procs_file()
            .context("opening the cgroup's cgroup.procs")?;
        // SAFETY: join_in_child only calls write(2), which is async-signal-safe.
        unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
        cmd.spawn().context("starting the workload")
    }

    /// Whether any task is left in the cgroup: once none is, all its records are committed.
    pub fn is_populated(&self) -> Result<bool> {
        self.cgroup
            .is_populated()
            .context("reading the cgroup's state")
    }

    pub fn counters(&self) -> Result<WatchCounters> {
        self.probes
            .watch_counters(self.cgroup.id())
            .context("reading the watch's counters")
    }
}

impl Drop for WatchedJob<'_> {
    fn drop(&mut self) {
        let _ = self.probes.unwatch(self.cgroup.id());
    }
}

/// Waits for `child` and fails unless it succeeded.
pub fn wait_success(child: &mut Child) -> Result<()> {
    let status = child.wait().context("waiting for the workload")?;
    if !status.success() {
        bail!("the workload failed: {status}");
    }
    Ok(())
}
