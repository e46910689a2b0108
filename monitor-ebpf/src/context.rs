//! What every program does first: find the current task's watch, fill the record header, and
//! keep the counters.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
};
use monitor_common::event::{Counter, EventHeader, EventKind, TracepointOffsets, Watch};

use crate::{COUNTERS, TP_OFFSETS, WATCHED};

/// The current task's cgroup is watched: its id and this CPU's copy of its `WATCHED` entry
/// (per CPU, so its counters need no atomics).
#[derive(Clone, Copy)]
pub struct Watched {
    pub cgroup_id: u64,
    entry: *mut Watch,
}

impl Watched {
    /// The watch of the current task's cgroup, if any. The one test every program starts with.
    #[inline(always)]
    pub fn current() -> Option<Self> {
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let entry = WATCHED.get_ptr_mut(cgroup_id)?;
        Some(Watched { cgroup_id, entry })
    }

    /// A record of this watch reached the ring buffer.
    #[inline(always)]
    pub fn emitted(&self) {
        count(Counter::Events);
        unsafe { (*self.entry).events += 1 };
    }

    /// A record of this watch was lost: the ring buffer was full.
    #[inline(always)]
    pub fn dropped(&self) {
        count(Counter::Dropped);
        unsafe { (*self.entry).dropped += 1 };
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn offsets() -> TracepointOffsets {
    // Volatile: the value is patched into .rodata at load time, after compilation.
    unsafe { core::ptr::read_volatile(&raw const TP_OFFSETS) }
}

/// Fills `header` for the current task.
#[inline(always)]
pub unsafe fn fill_header(header: *mut EventHeader, kind: EventKind, cgroup_id: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*header).kind = kind as u16;
        (*header).flags = 0;
        (*header).cpu = bpf_get_smp_processor_id();
        (*header).ktime_ns = bpf_ktime_get_ns();
        (*header).cgroup_id = cgroup_id;
        (*header).pid = (pid_tgid >> 32) as u32;
        (*header).tid = pid_tgid as u32;
        (*header).uid = uid_gid as u32;
        (*header).gid = (uid_gid >> 32) as u32;
        (*header).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}
