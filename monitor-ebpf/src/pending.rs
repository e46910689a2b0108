//! One record per syscall: an entry whose data can wait keeps its record (built at entry, user
//! memory read then and never again) in `PENDING`, by thread id, and the exit writes it with
//! the result as one record of kind `Syscall`. Half the records of a watched process, and half
//! the ring buffer's work.
//!
//! Nothing is lost to the map: an entry it has no room for is written at once, as an entry
//! record whose exit follows apart (counted, `Counter::CallsApart`), which user space pairs as
//! it always did. A call whose exit was never seen (a kretprobe's pool exhausted, hooks
//! detached in between) is written as an entry record when its thread next enters or leaves a
//! waiting syscall, or exits: user space reports it as unfinished, as it does an entry whose
//! exit was lost. A task that exits leaves nothing behind in the map, watched or not.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use monitor_common::event::{
    CaptureSpec, Counter, EventKind, PENDING_DATA_MAX, PendingCall, SyscallEnter, SyscallReturn,
};

use crate::{
    EVENTS, PENDING,
    context::{Watched, count},
    file,
    ring::commit_flags_at,
};

const _: () = assert!(PENDING_DATA_MAX.is_power_of_two());

/// What inserting an existing key with `BPF_NOEXIST` fails with.
const EEXIST: i32 = -17;

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// At entry: keeps the record `ev` (built in scratch space) until the exit, if its data fits a
/// pending call and the map has room; returns whether it did. When it did not, the caller
/// writes the entry record now.
#[inline(always)]
pub fn hold(watch: &Watched, tid: u32, ev: *const SyscallEnter) -> bool {
    if unsafe { (*ev).data_len } as usize > PENDING_DATA_MAX {
        return false;
    }
    // The pending call is the scratch record's first bytes: same layout, `data` cut shorter.
    let call = unsafe { &*ev.cast::<PendingCall>() };
    match PENDING.insert(tid, call, BPF_NOEXIST.into()) {
        Ok(()) => true,
        // A call of this thread whose exit was never seen (a kretprobe that missed it): it is
        // written as the entry it is, never overwritten unseen.
        Err(EEXIST) => {
            write_stale(watch, tid);
            PENDING.insert(tid, call, 0).is_ok()
        }
        Err(_) => {
            count(Counter::CallsApart);
            false
        }
    }
}

/// At the exit of syscall `nr`, which returned `ret`: writes the call waiting for it with its
/// result, as one record; returns whether there was one (if not, the exit is recorded apart).
#[inline(always)]
pub fn complete(watch: &Watched, spec: &CaptureSpec, nr: u32, ret: i64) -> bool {
    let tid = current_tid();
    let Some(call) = PENDING.get_ptr_mut(tid) else {
        return false;
    };
    if unsafe { (*call).nr } != nr {
        // Left by a call whose exit was never seen: it cannot be this call's entry.
        write_stale(watch, tid);
        let _ = PENDING.remove(tid);
        return false;
    }
    let (dev, ino) = match spec.exit_file != 0 && ret >= 0 {
        true => file::identity(ret as u32).unwrap_or((0, 0)),
        false => (0, 0),
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        (*call).header.kind = EventKind::Syscall as u16;
        (*call).exit = SyscallReturn {
            ktime_ns: now,
            ret,
            ino,
            dev,
            _pad: 0,
        };
    }
    write(watch, call, now);
    let _ = PENDING.remove(tid);
    true
}

/// At an entry written at once (its exit apart): a call this thread left waiting goes first,
/// so that it cannot take that exit for its own.
#[inline(always)]
pub fn release(watch: &Watched, tid: u32) {
    if PENDING.get_ptr(tid).is_some() {
        write_stale(watch, tid);
        let _ = PENDING.remove(tid);
    }
}

/// Writes the call of thread `tid` that waits in vain (its exit was not seen) as an entry
/// record: user space reports it without a result, as it would an entry whose exit was lost.
#[inline(always)]
fn write_stale(watch: &Watched, tid: u32) {
    if let Some(call) = PENDING.get_ptr_mut(tid) {
        write(watch, call, unsafe { bpf_ktime_get_ns() });
    }
}

/// At the exit of a task: a call of it still waiting is written as its entry record (it did
/// not return), when the task is watched; its place in the map is freed either way.
#[inline(always)]
pub fn at_task_exit(watch: Option<&Watched>) {
    let tid = current_tid();
    if let Some(watch) = watch {
        write_stale(watch, tid);
    }
    let _ = PENDING.remove(tid);
}

/// Copies the used part of `call` to the ring buffer (its kind says whether it returned); `now`
/// is the time, just read.
#[inline(always)]
fn write(watch: &Watched, call: *mut PendingCall, now: u64) {
    // Bounded for the verifier: at most the map value's size.
    let data_len = (unsafe { (*call).data_len } as usize).min(PENDING_DATA_MAX);
    let len = PendingCall::FIXED_LEN + (data_len & (PENDING_DATA_MAX * 2 - 1));
    let len = len.min(size_of::<PendingCall>());
    let bytes = unsafe { core::slice::from_raw_parts(call.cast::<u8>(), len) };
    match EVENTS.output::<[u8]>(bytes, commit_flags_at(len as u64, now)) {
        Ok(()) => watch.emitted(),
        Err(_) => watch.dropped(),
    }
}
