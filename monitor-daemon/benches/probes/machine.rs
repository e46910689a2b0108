//! The machine the numbers come from.

use anyhow::{Context as _, Result};
use monitor_engine::probes::SyscallHooks;

pub struct Machine {
    pub kernel: String,
    /// How the probes hook syscalls on this kernel (kprobes, or tracepoints without them).
    pub syscall_hooks: SyscallHooks,
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn describe() -> Result<Self> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading the kernel release")?
            .trim()
            .to_owned();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned());
        Ok(Machine {
            kernel,
            syscall_hooks: SyscallHooks::detect(),
            cpus: crate::cpu::check()?,
            cpu_model,
        })
    }
}
