//! When to wake the ring buffer's reader.
//!
//! By default the kernel wakes the reader for every record committed into a buffer the reader
//! has emptied, and a reader that keeps up has always emptied it: nearly one wake-up (an
//! irq_work and a reschedule of the reader's CPU) per record, the largest cost to a watched
//! process. Instead records are committed with `BPF_RB_NO_WAKEUP`, and a wake-up is forced
//! only for the first record after a quiet spell of `WAKEUP_INTERVAL_NS` (so a lone record,
//! say the exec a kill policy waits for, is seen at once) or for the record that takes the
//! pending data over `WAKEUP_BYTES` (so a burst cannot fill the buffer before the reader
//! looks). Only the one that crosses: a reader that has fallen behind is busy reading, and a
//! wake-up per record then would cost the producer an irq_work each for nothing. The reader
//! looks again `READER_RECHECK_NS` after every batch it finds, which collects what was
//! committed silently.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
};
use monitor_common::event::WAKEUP_INTERVAL_NS;

use crate::{EVENTS, LAST_WAKEUP, WAKEUP_BYTES};

/// The flags to commit a record of `len` bytes with (`submit`, `output`); to be called before
/// it is reserved or written.
#[inline(always)]
pub fn commit_flags(len: u64) -> u64 {
    commit_flags_at(len, unsafe { bpf_ktime_get_ns() })
}

/// [`commit_flags`] for a record whose time `now` (`bpf_ktime_get_ns`) was just read: one
/// helper call less per record.
#[inline(always)]
pub fn commit_flags_at(len: u64, now: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return 0; // Cannot happen (one-entry array); the kernel's default then.
    };
    // Volatile: the threshold is patched into .rodata at load time, after compilation.
    let threshold = unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) };
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    // Racing CPUs may both force a wake-up; one too many is harmless.
    if now.wrapping_sub(unsafe { *last }) >= WAKEUP_INTERVAL_NS
        || (pending < threshold && pending + len >= threshold)
    {
        unsafe { *last = now };
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}
