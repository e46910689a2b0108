//! A watch's kill policy (`KILL_POLICIES`, by watch id), applied in the kernel: a syscall is
//! killed at its entry, an exec once the kernel has the program (at `sched_process_exec`,
//! before the program's first instruction) unless the watch allows that program
//! (`EXEC_ALLOWED`). Killing an exec there rather than at its entry spares the attempts that
//! fail anyway (a `PATH` search), and lets a learned service run its own programs.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    programs::TracePointContext,
};
use monitor_common::event::ExecKey;

use crate::{
    EXEC_ALLOWED, EXEC_KEY_SCRATCH, KILL_POLICIES, PENDING_EXEC_KILLS,
    context::{Watched, offsets},
    follow::read_path,
};

const SIGKILL: u32 = 9;

/// At the entry of syscall `nr` (`executes`: it executes a program) of a task of `watch`:
/// kills the task now if the policy says so and returns whether it did; for an exec, notes
/// that the exec is to be killed unless its program is allowed.
#[inline(always)]
pub fn at_entry(watch: &Watched, nr: u32, executes: bool) -> bool {
    let id = watch.id();
    let kills = unsafe { KILL_POLICIES.get(id) }.is_some_and(|p| p.kills(nr));
    if executes {
        let tid = bpf_get_current_pid_tgid() as u32;
        // Inserted or removed at every exec, so that nothing stale outlives a policy change.
        let _ = if kills {
            PENDING_EXEC_KILLS.insert(tid, id, 0)
        } else {
            PENDING_EXEC_KILLS.remove(tid)
        };
        return false;
    }
    kills && kill(watch)
}

/// At `sched_process_exec` of a task of `watch`: kills it if its exec was noted at entry and
/// the program (the path the exec named) is not one the watch allows; returns whether it did.
#[inline(always)]
pub fn at_exec(ctx: &TracePointContext, watch: &Watched) -> bool {
    exec_killed(ctx, watch).unwrap_or(false)
}

#[inline(always)]
fn exec_killed(ctx: &TracePointContext, watch: &Watched) -> Option<bool> {
    let off = offsets();
    // The thread that called exec, by its id before the exec (a thread other than the leader
    // takes the leader's id).
    let old: i32 = unsafe { ctx.read_at(off.exec_old_pid as usize) }.ok()?;
    let old = old as u32;
    let watch_id = *unsafe { PENDING_EXEC_KILLS.get(old) }?;
    let _ = PENDING_EXEC_KILLS.remove(old);
    let key: *mut ExecKey = EXEC_KEY_SCRATCH.get_ptr_mut(0)?;
    unsafe { (*key).watch_id = watch_id };
    // A path too long for a key is no program the watch allows.
    let named = read_path(ctx, off.exec_filename_loc, unsafe { &raw mut (*key).path }).is_some();
    if named && unsafe { EXEC_ALLOWED.get(*key) }.is_some() {
        return Some(false);
    }
    Some(kill(watch))
}

/// Sends SIGKILL to the current process: delivered before it returns to user space.
#[inline(always)]
fn kill(watch: &Watched) -> bool {
    if unsafe { generated::bpf_send_signal(SIGKILL) } != 0 {
        return false;
    }
    watch.killed();
    true
}
