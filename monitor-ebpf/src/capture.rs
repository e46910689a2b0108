//! Syscall entry: copy the arguments and the user memory they point to into one record, which
//! waits for the exit, built in place in its thread's slot (see `pending`), or is written at
//! once.
//!
//! A record written at once is built in per-CPU scratch space, then only its used part is
//! copied to the ring buffer. Every copy starts below `ITEM_START_MAX` (checked, then masked so
//! the verifier can see it) and is at most `ITEM_START_MAX` long, so no copy can leave `data`
//! (the scratch space's or a slot's, the same size).

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated};
use monitor_common::{
    event::{
        ARG_MAX, ARGV_MAX, BLOB_MAX, CaptureSpec, Counter, DATA_MAX, EventKind, FLAG_KILLED,
        FLAG_READ_ERROR, FLAG_RECAPTURED, FLAG_TRUNCATED, ITEM_START_MAX, ONLY_IF_ANY_BIT,
        ONLY_IF_NONE, ONLY_IF_ONE_OF, STR_MAX, STR_SLOTS, SyscallEnter, SyscallReturn,
    },
    syscall::{Capture, MAX_ARGS},
};

use crate::{
    CAPTURE, ENTERED, EVENTS, RETRY, SCRATCH,
    context::{Watched, count, fill_header_for},
    pending,
    ring::commit_flags_at,
};

const _: () = assert!(ITEM_START_MAX.is_power_of_two());
const _: () = assert!(STR_MAX <= ITEM_START_MAX && ARG_MAX <= ITEM_START_MAX);
const _: () = assert!(BLOB_MAX.is_power_of_two() && BLOB_MAX <= ITEM_START_MAX);
const _: () = assert!(ITEM_START_MAX * 2 <= DATA_MAX);

/// Where the next item goes in `data`, and what went wrong so far.
struct Cursor {
    off: usize,
    flags: u16,
}

impl Cursor {
    /// A pointer into `data` with room for `ITEM_START_MAX` bytes, or `None` (and the record
    /// marked truncated) when `data` is past the point where items may start.
    #[inline(always)]
    fn slot(&mut self, ev: *mut SyscallEnter) -> Option<*mut u8> {
        if self.off >= ITEM_START_MAX {
            self.flags |= FLAG_TRUNCATED;
            return None;
        }
        let off = self.off & (ITEM_START_MAX - 1);
        Some(unsafe { (&raw mut (*ev).data).cast::<u8>().add(off) })
    }

    /// Copies a user string of at most `max` bytes (NUL included); returns its length.
    #[inline(always)]
    fn str(&mut self, ev: *mut SyscallEnter, src: u64, max: u32) -> u16 {
        let Some(dst) = self.slot(ev) else { return 0 };
        let n = unsafe { generated::bpf_probe_read_user_str(dst.cast(), max, src as *const _) };
        if n <= 0 {
            self.read_error();
            return 0;
        }
        let n = n as usize;
        if n >= max as usize {
            self.flags |= FLAG_TRUNCATED;
        }
        self.off += n;
        n as u16
    }

    /// Copies `len` bytes of user memory, at most `BLOB_MAX`; returns the length copied.
    #[inline(always)]
    fn blob(&mut self, ev: *mut SyscallEnter, src: u64, len: u64) -> u16 {
        if len > BLOB_MAX as u64 {
            self.flags |= FLAG_TRUNCATED;
        }
        let len = (len as usize).min(BLOB_MAX) & (BLOB_MAX * 2 - 1);
        if len == 0 || src == 0 {
            return 0;
        }
        let Some(dst) = self.slot(ev) else { return 0 };
        let rc = unsafe { generated::bpf_probe_read_user(dst.cast(), len as u32, src as *const _) };
        if rc != 0 {
            self.read_error();
            return 0;
        }
        self.off += len;
        len as u16
    }

    #[inline(always)]
    fn read_error(&mut self) {
        self.flags |= FLAG_READ_ERROR;
        count(Counter::ReadErrors);
    }
}

/// At a syscall's entry (however hooked): captures its record, if the table traces it.
#[inline(always)]
pub fn syscall_enter(watch: Watched, nr: u32, args: [u64; MAX_ARGS]) {
    let _ = try_syscall_enter(watch, nr, args);
}

#[inline(always)]
fn try_syscall_enter(watch: Watched, nr: u32, args: [u64; MAX_ARGS]) -> Result<(), i64> {
    let spec = CAPTURE.get(nr).ok_or(0)?;
    if spec.enabled == 0 {
        return Ok(());
    }
    // First, so that nothing below can delay it; the record then says what was stopped.
    let killed = if crate::kill::at_entry(&watch, nr, spec.executes != 0) {
        FLAG_KILLED
    } else {
        0
    };
    if spec.only_if != ONLY_IF_NONE && killed == 0 {
        let tested = args.get(spec.only_if_arg as usize).copied().unwrap_or(0);
        let [first, second] = spec.only_if_values;
        let passes = match spec.only_if {
            ONLY_IF_ANY_BIT => tested & first != 0,
            ONLY_IF_ONE_OF => tested == first || tested == second,
            _ => true,
        };
        if !passes {
            return Ok(());
        }
    }

    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // One record per call: the entry waits for the exit, built where it waits (the thread's
    // slot), unless a kill must be seen now or the memory is to be read again at exit.
    if spec.waits != 0 {
        if killed == 0
            && let Some(slot) = pending::take(&watch, tid)
        {
            let call = unsafe { &raw mut (*slot).call };
            // No argv (no syscall that waits has one): the verifier then explores the argv
            // loop on one path only, which keeps the programs under its limit.
            let flags = build::<false>(call, &watch, pid_tgid, nr, spec, args, 0);
            if flags & FLAG_READ_ERROR == 0 {
                return Ok(());
            }
            // Written now from the slot, its exit apart.
            write(&watch, call);
            pending::free(slot);
            after_written(spec, tid, nr, args, flags);
            return Ok(());
        }
        // Written now, its exit apart: nothing this thread left waiting may take that exit.
        pending::release(&watch, tid);
    }
    let ev = SCRATCH.get_ptr_mut(0).ok_or(0)?;
    let flags = build::<true>(ev, &watch, pid_tgid, nr, spec, args, killed);
    write(&watch, ev);
    after_written(spec, tid, nr, args, flags);
    Ok(())
}

/// After an entry record of thread `tid` was written at once (`flags`, its header's): what
/// its exit needs.
#[inline(always)]
fn after_written(spec: &CaptureSpec, tid: u32, nr: u32, args: [u64; MAX_ARGS], flags: u16) {
    // The exit of a filtered syscall is recorded only after an entry that was: see
    // `exit_wanted`.
    if spec.only_if != ONLY_IF_NONE && spec.exit != 0 {
        let _ = ENTERED.insert(tid, nr, 0);
    }
    // User memory that was not paged in cannot be read here; the kernel will have touched it
    // by the time the syscall returns, so try again then.
    if flags & FLAG_READ_ERROR != 0 && spec.exit != 0 {
        let _ = RETRY.insert(tid, Retry { nr, _pad: 0, args }, 0);
    }
}

/// Whether the exit of syscall `nr` is to be recorded: always, unless its entries are filtered
/// (fcntl, traced only when it duplicates a descriptor), when only the exit of an entry that
/// was recorded is.
#[inline(always)]
pub fn exit_wanted(spec: &CaptureSpec, nr: u32) -> bool {
    if spec.only_if == ONLY_IF_NONE {
        return true;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let entered = unsafe { ENTERED.get(tid) }.copied();
    if entered.is_none() {
        return false;
    }
    let _ = ENTERED.remove(tid);
    entered == Some(nr)
}

/// At a syscall's exit: captures the entry's arguments again if reading them failed at entry.
/// The new record carries `FLAG_RECAPTURED`; user space puts its data in place of the first.
#[inline(always)]
pub fn recapture(watch: Watched, nr: u32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(retry) = (unsafe { RETRY.get(tid) }).copied() else {
        return;
    };
    let _ = RETRY.remove(tid);
    if retry.nr != nr {
        return;
    }
    if let Some(spec) = CAPTURE.get(nr)
        && let Some(ev) = SCRATCH.get_ptr_mut(0)
    {
        let pid_tgid = bpf_get_current_pid_tgid();
        build::<true>(ev, &watch, pid_tgid, nr, spec, retry.args, FLAG_RECAPTURED);
        write(&watch, ev);
    }
}

/// Arguments of an entry whose user memory could not all be read.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Retry {
    nr: u32,
    _pad: u32,
    args: [u64; MAX_ARGS],
}

/// Builds the entry record of syscall `nr` of the thread `pid_tgid` in `ev` (scratch space or
/// a pending slot); returns its flags, which say what went wrong. `ARGV`: whether an argv is
/// captured (if not, a record that has one is marked truncated).
#[inline(always)]
fn build<const ARGV: bool>(
    ev: *mut SyscallEnter,
    watch: &Watched,
    pid_tgid: u64,
    nr: u32,
    spec: &CaptureSpec,
    args: [u64; MAX_ARGS],
    flags: u16,
) -> u16 {
    let mut cur = Cursor { off: 0, flags };
    unsafe {
        fill_header_for(
            &raw mut (*ev).header,
            EventKind::SyscallEnter,
            watch,
            pid_tgid,
        );
        (*ev).nr = nr;
        (*ev).args = args;
        (*ev).str_len = [0; STR_SLOTS];
        (*ev).blob_len = 0;
        (*ev).argv_len = 0;
        (*ev).argc = 0;
        (*ev)._pad = [0; 2];
        (*ev).exit = SyscallReturn::default();
    }

    // Strings first, then the blob, then argv: the order the decoder reads them back in.
    let mut slot = 0;
    for (&kind, &arg) in spec.args.iter().zip(&args) {
        if kind == Capture::Str as u8 && slot < STR_SLOTS {
            let n = cur.str(ev, arg, STR_MAX as u32);
            unsafe { (*ev).str_len[slot] = n };
            slot += 1;
        }
    }
    for i in 0..MAX_ARGS - 1 {
        if spec.args[i] == Capture::SizedBlob as u8 {
            let n = cur.blob(ev, args[i], args[i + 1]);
            unsafe { (*ev).blob_len = n };
            break;
        }
    }
    for (&kind, &arg) in spec.args.iter().zip(&args) {
        if kind == Capture::Argv as u8 {
            if ARGV {
                capture_argv(ev, &mut cur, arg);
            } else {
                cur.flags |= FLAG_TRUNCATED;
            }
            break;
        }
    }

    let data_len = cur.off.min(DATA_MAX);
    unsafe {
        (*ev).data_len = data_len as u32;
        (*ev).header.flags = cur.flags;
    }
    cur.flags
}

/// Copies the used part of the entry record `ev` (built by [`build`]) to the ring buffer.
#[inline(always)]
fn write(watch: &Watched, ev: *const SyscallEnter) {
    let data_len = (unsafe { (*ev).data_len } as usize).min(DATA_MAX);
    let len = (SyscallEnter::FIXED_LEN + data_len).min(core::mem::size_of::<SyscallEnter>());
    let bytes = unsafe { core::slice::from_raw_parts(ev.cast::<u8>(), len) };
    let now = unsafe { (*ev).header.ktime_ns };
    match EVENTS.output::<[u8]>(bytes, commit_flags_at(len as u64, now)) {
        Ok(()) => watch.emitted(),
        Err(_) => watch.dropped(),
    }
}

/// Copies up to `ARGV_MAX` entries of a NULL-terminated array of user string pointers.
#[inline(always)]
fn capture_argv(ev: *mut SyscallEnter, cur: &mut Cursor, argv: u64) {
    if argv == 0 {
        return;
    }
    let start = cur.off;
    let mut argc: u16 = 0;
    for i in 0..ARGV_MAX {
        let ptr = match unsafe { bpf_probe_read_user((argv as *const u64).add(i)) } {
            Ok(p) => p,
            Err(_) => {
                cur.read_error();
                break;
            }
        };
        if ptr == 0 {
            break;
        }
        if cur.str(ev, ptr, ARG_MAX as u32) == 0 {
            break;
        }
        argc += 1;
        if i == ARGV_MAX - 1 {
            // There may be more entries than we keep.
            cur.flags |= FLAG_TRUNCATED;
        }
    }
    unsafe {
        (*ev).argc = argc;
        (*ev).argv_len = (cur.off - start) as u16;
    }
}
