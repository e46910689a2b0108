//! One record per syscall: an entry whose data can wait is built (user memory read then and
//! never again) in its thread's slot of `PENDING`, and the exit writes it with the result as
//! one record of kind `Syscall`. Half the records of a watched process, and half the ring
//! buffer's work.
//!
//! A thread's slot is `PENDING[tid % PENDING_CALLS]`, an array element: no hashing, no
//! allocation, no copy (the call is built where it waits, with room for as much data as any
//! entry record). Where it was a hash map by thread id, the update at entry (a 680-byte copy)
//! and the lookup and delete at exit cost about 300 ns a call (docs/benchmarks.md). Two
//! threads whose ids share a slot may enter at once on two CPUs, so a slot is taken with a
//! compare-and-swap of its owner (0: free), and given back by its owner alone.
//!
//! Nothing is lost to the slots: an entry whose slot another thread holds is written at once,
//! as an entry record whose exit follows apart (counted, `Counter::CallsApart`), which user
//! space pairs as it always did. A call whose exit was never seen (a kretprobe's pool
//! exhausted, hooks detached in between) is written as an entry record when its thread next
//! enters or leaves a waiting syscall, or exits: user space reports it as unfinished, as it
//! does an entry whose exit was lost. A task that exits leaves its slot free, watched or not.

use core::intrinsics::AtomicOrdering;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use monitor_common::event::{
    CaptureSpec, Counter, EventKind, PENDING_CALLS, PENDING_DATA_MAX, PendingCall, SyscallReturn,
};

use crate::{
    EVENTS, PENDING,
    context::{Watched, count},
    file,
    ring::commit_flags_at,
};

const _: () = assert!(PENDING_DATA_MAX.is_power_of_two());

/// One thread's place for a call waiting for its exit.
#[repr(C)]
pub struct PendingSlot {
    /// The thread whose call this is; 0 when the slot is free (no thread that makes syscalls
    /// has id 0). 64 bits: Rust's BPF target has no 32-bit atomics.
    owner: u64,
    pub call: PendingCall,
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The slot of thread `tid`, whoever holds it.
#[inline(always)]
fn slot_of(tid: u32) -> Option<*mut PendingSlot> {
    PENDING.get_ptr_mut(tid % PENDING_CALLS)
}

/// The slot of thread `tid` if the thread holds it.
#[inline(always)]
fn held_by(tid: u32) -> Option<*mut PendingSlot> {
    let slot = slot_of(tid)?;
    // Volatile: another CPU may take or free the slot meanwhile (never for `tid`, which only
    // `tid` itself does, on this CPU now).
    let owner = unsafe { core::ptr::read_volatile(&raw const (*slot).owner) };
    (tid != 0 && owner == u64::from(tid)).then_some(slot)
}

/// Gives the slot back. Only its owner does, after its last use of the call (every use is a
/// helper call, which the compiler does not move the store before; a BPF store of 8 aligned
/// bytes is single-copy atomic, and the target has no store-release).
#[inline(always)]
pub fn free(slot: *mut PendingSlot) {
    unsafe { core::ptr::write_volatile(&raw mut (*slot).owner, 0) };
}

/// At the entry of a waiting syscall of thread `tid`: its slot, taken, to build the call in
/// (a call of the thread's that waits there in vain, its exit never seen, is written first
/// as the entry it is, never overwritten unseen); `None` when another thread holds the slot
/// (counted: the entry is then written at once).
#[inline(always)]
pub fn take(watch: &Watched, tid: u32) -> Option<*mut PendingSlot> {
    let slot = slot_of(tid)?;
    if tid == 0 {
        return None;
    }
    // The BPF target's atomics have no compare-and-swap method; the instruction exists
    // (`BPF_CMPXCHG`), and the intrinsic emits it.
    let (held, _) = unsafe {
        core::intrinsics::atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*slot).owner,
            0,
            u64::from(tid),
        )
    };
    match held {
        0 => Some(slot),
        held if held == u64::from(tid) => {
            write_stale(watch, slot);
            Some(slot)
        }
        _ => {
            count(Counter::CallsApart);
            None
        }
    }
}

/// At the exit of syscall `nr`, which returned `ret`: writes the call waiting for it with its
/// result, as one record; returns whether there was one (if not, the exit is recorded apart).
#[inline(always)]
pub fn complete(watch: &Watched, spec: &CaptureSpec, nr: u32, ret: i64) -> bool {
    let Some(slot) = held_by(current_tid()) else {
        return false;
    };
    let call = unsafe { &raw mut (*slot).call };
    if unsafe { (*call).nr } != nr {
        // Left by a call whose exit was never seen: it cannot be this call's entry.
        write_stale(watch, slot);
        free(slot);
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
    free(slot);
    true
}

/// At an entry written at once (its exit apart): a call this thread left waiting goes first,
/// so that it cannot take that exit for its own.
#[inline(always)]
pub fn release(watch: &Watched, tid: u32) {
    if let Some(slot) = held_by(tid) {
        write_stale(watch, slot);
        free(slot);
    }
}

/// At the exit of a task: a call of it still waiting is written as its entry record (it did
/// not return), when the task is watched; its slot is freed either way.
#[inline(always)]
pub fn at_task_exit(watch: Option<&Watched>) {
    let Some(slot) = held_by(current_tid()) else {
        return;
    };
    if let Some(watch) = watch {
        write_stale(watch, slot);
    }
    free(slot);
}

/// Writes the call waiting in `slot` as the entry it is (its exit was not seen, or will not
/// be: the thread exits): user space reports it without a result, as it would an entry whose
/// exit was lost. The slot stays taken.
#[inline(always)]
fn write_stale(watch: &Watched, slot: *mut PendingSlot) {
    write(watch, unsafe { &raw mut (*slot).call }, unsafe {
        bpf_ktime_get_ns()
    });
}

/// Copies the used part of `call` to the ring buffer (its kind says whether it returned); `now`
/// is the time, just read.
#[inline(always)]
fn write(watch: &Watched, call: *mut PendingCall, now: u64) {
    // Bounded for the verifier: at most the slot's size.
    let data_len = (unsafe { (*call).data_len } as usize).min(PENDING_DATA_MAX);
    let len = PendingCall::FIXED_LEN + (data_len & (PENDING_DATA_MAX * 2 - 1));
    let len = len.min(size_of::<PendingCall>());
    let bytes = unsafe { core::slice::from_raw_parts(call.cast::<u8>(), len) };
    match EVENTS.output::<[u8]>(bytes, commit_flags_at(len as u64, now)) {
        Ok(()) => watch.emitted(),
        Err(_) => watch.dropped(),
    }
}
