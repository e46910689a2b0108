//! CPU placement. The measured loop gets one CPU and whatever traces it (our ring-buffer
//! consumer, strace) the other, so both tracers are compared on the same footing and the
//! numbers do not depend on where the scheduler happens to put things.

use anyhow::{Context as _, Result, bail};
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};

/// Where the consumer (this process) runs.
pub const CONSUMER: usize = 0;
/// Where the measured loop runs.
pub const WORKLOAD: usize = 1;

/// Pins the calling process to `cpu`.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is out of range"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// CPUs the benchmark pins to: [`CONSUMER`] and [`WORKLOAD`].
const NEEDED: usize = 2;

/// The benchmark needs the two CPUs it pins to; returns how many there are.
pub fn check() -> Result<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < NEEDED {
        bail!("the benchmark needs at least 2 CPUs (loop and tracer each on one); found {n}");
    }
    Ok(n)
}
