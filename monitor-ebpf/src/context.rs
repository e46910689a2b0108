//! What every program does first: find the current task's watch, fill the record header, and
//! keep the counters.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
};
use monitor_common::event::{
    Counter, EventHeader, EventKind, TracepointOffsets, WATCH_FOLLOW_FORKS, Watch, WatchCounts,
};

use crate::{COUNTERS, TP_OFFSETS, WATCH_COUNTS, WATCHED, WATCHED_TASKS};

/// The current task is watched: its watch (in `WATCHED` or `WATCHED_TASKS`), this CPU's copy
/// of the watch's counters (per CPU, so they need no atomics), and the task's cgroup (read
/// once: every helper call counts on the path of a watched syscall).
#[derive(Clone, Copy)]
pub struct Watched {
    watch: *const Watch,
    counts: *mut WatchCounts,
    cgroup_id: u64,
}

impl Watched {
    /// The watch of the current task, if any: by its cgroup, else by its process. The one
    /// test every program starts with.
    #[inline(always)]
    pub fn current() -> Option<Self> {
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let watch = match WATCHED.get_ptr(cgroup_id) {
            Some(w) => w,
            None => WATCHED_TASKS.get_ptr(current_tgid())?,
        };
        // Its counters, which user space creates before the watch.
        let counts = WATCH_COUNTS.get_ptr_mut(unsafe { (*watch).id })?;
        Some(Watched {
            watch,
            counts,
            cgroup_id,
        })
    }

    #[inline(always)]
    pub fn id(&self) -> u64 {
        unsafe { (*self.watch).id }
    }

    /// The watch's policy killed the current task.
    #[inline(always)]
    pub fn killed(&self) {
        unsafe { (*self.counts).killed += 1 };
    }

    /// A new task of a watched one (`child_tid`, a process or a thread) is watched too when
    /// the watch follows forks.
    #[inline(always)]
    pub fn adopt(&self, child_tid: u32) {
        if unsafe { (*self.watch).flags } & WATCH_FOLLOW_FORKS == 0 {
            return;
        }
        // The key is a thread id; it is only ever looked up as a process id, which a thread's
        // id is when it leads its thread group. Threads' keys go at their exit.
        if WATCHED_TASKS
            .insert(child_tid, unsafe { *self.watch }, 0)
            .is_err()
        {
            count(Counter::TasksFull);
        }
    }

    /// The current task exits: forget the keys it had in `WATCHED_TASKS`.
    #[inline(always)]
    pub fn forget_task(&self, group_dead: bool) {
        if unsafe { (*self.watch).flags } & WATCH_FOLLOW_FORKS == 0 {
            return;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
        if tid != tgid {
            let _ = WATCHED_TASKS.remove(tid);
        }
        if group_dead {
            let _ = WATCHED_TASKS.remove(tgid);
        }
    }

    /// A record of this watch reached the ring buffer.
    #[inline(always)]
    pub fn emitted(&self) {
        count(Counter::Events);
        unsafe { (*self.counts).events += 1 };
    }

    /// A record of this watch was lost: the ring buffer was full.
    #[inline(always)]
    pub fn dropped(&self) {
        count(Counter::Dropped);
        unsafe { (*self.counts).dropped += 1 };
    }
}

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
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

/// Fills `header` for the current task, selected by `watch`; returns its time
/// (`bpf_ktime_get_ns`), for [`crate::ring::commit_flags_at`].
#[inline(always)]
pub unsafe fn fill_header(header: *mut EventHeader, kind: EventKind, watch: &Watched) -> u64 {
    unsafe { fill_header_for(header, kind, watch, bpf_get_current_pid_tgid()) }
}

/// [`fill_header`] for the current task, whose `bpf_get_current_pid_tgid` is `pid_tgid`
/// (read already: one helper call less).
#[inline(always)]
pub unsafe fn fill_header_for(
    header: *mut EventHeader,
    kind: EventKind,
    watch: &Watched,
    pid_tgid: u64,
) -> u64 {
    let uid_gid = bpf_get_current_uid_gid();
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        (*header).kind = kind as u16;
        (*header).flags = 0;
        (*header).cpu = bpf_get_smp_processor_id();
        (*header).ktime_ns = now;
        (*header).cgroup_id = watch.cgroup_id;
        (*header).watch_id = watch.id();
        (*header).pid = (pid_tgid >> 32) as u32;
        (*header).tid = pid_tgid as u32;
        (*header).uid = uid_gid as u32;
        (*header).gid = (uid_gid >> 32) as u32;
        (*header).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    now
}
