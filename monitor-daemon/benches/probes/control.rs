//! A control for the cost to unwatched processes: the kernel's own tracing (ftrace, no BPF,
//! no monitor) of one syscall nobody makes. While any syscall tracepoint is in use, the kernel
//! sends every syscall of every task through its slow path (it flags all tasks with
//! SYSCALL_WORK_SYSCALL_TRACEPOINT), so if this control costs an untraced loop what monitor's
//! probes cost it, the cost lies in that mechanism and not in monitor's programs.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use monitor_engine::probes::Tracefs;

/// `acct(2)`: process accounting, which nothing on these machines calls.
const EVENT: &str = "events/syscalls/sys_enter_acct/enable";

/// The event, enabled while this lives.
pub struct UnusedSyscallTraced {
    enable: PathBuf,
}

impl UnusedSyscallTraced {
    /// Enables the event; `None` when someone else has it enabled already (then it is theirs
    /// to turn off, and the control is left out).
    pub fn enable() -> Result<Option<Self>> {
        let tracefs = Tracefs::find_or_mount().context("finding tracefs")?;
        let enable = tracefs.root().join(EVENT);
        let now = std::fs::read_to_string(&enable)
            .with_context(|| format!("reading {}", enable.display()))?;
        if now.trim() != "0" {
            return Ok(None);
        }
        std::fs::write(&enable, "1").with_context(|| format!("writing {}", enable.display()))?;
        Ok(Some(UnusedSyscallTraced { enable }))
    }
}

impl Drop for UnusedSyscallTraced {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.enable, "0") {
            eprintln!(
                "bench: warning: could not turn {} off again: {e}",
                self.enable.display()
            );
        }
    }
}
