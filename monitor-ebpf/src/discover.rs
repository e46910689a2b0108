//! Discovery: a process nobody watches opens a file whose name looks like a model artifact
//! (`.pkl`, `.pt`, ...), and from that open on it is watched, with everything it starts.
//!
//! Only syscalls that open a named file get here, and only while discovery is on; the path is
//! read once, at most `DISCOVERY_PATH_MAX` bytes, and matched against the configured suffixes
//! from its end.

use aya_ebpf::helpers::generated;
use monitor_common::event::{
    Counter, DISCOVERY_PATH_MAX, Discovery, SUFFIX_MAX, SUFFIXES, WATCH_FOLLOW_FORKS, Watch,
    tail_bit,
};

use crate::{
    DISCOVERY, DISCOVERY_SCRATCH, WATCHED_TASKS,
    context::{count, current_tgid},
};

const _: () = assert!(DISCOVERY_PATH_MAX.is_power_of_two());

/// Per-CPU space for discovery: the path read, and the watch a discovered process gets.
#[repr(C)]
pub struct Scratch {
    path: [u8; DISCOVERY_PATH_MAX],
    watch: Watch,
}

/// For an unwatched task entering an opening syscall whose path argument is at user address
/// `path`: starts watching the task's process if the path names a model artifact, and says
/// whether it did. (The caller then finds the watch as for any watched task: one shape of
/// state for the verifier, which otherwise explores every path twice.)
#[inline(always)]
pub fn on_open(config: &Discovery, path: u64) -> bool {
    matches(config, path).is_some()
}

/// Discovery's settings, while it is on: looked up once per syscall, before anything of the
/// syscall is read.
#[inline(always)]
pub fn settings() -> Option<&'static Discovery> {
    DISCOVERY.get(0).filter(|d| d.enabled != 0)
}

#[inline(always)]
fn matches(config: &Discovery, path: u64) -> Option<()> {
    if path == 0 {
        return None;
    }
    let scratch = DISCOVERY_SCRATCH.get_ptr_mut(0)?;
    let buf = unsafe { &raw mut (*scratch).path };
    let n = unsafe {
        generated::bpf_probe_read_user_str(buf.cast(), DISCOVERY_PATH_MAX as u32, path as *const _)
    };
    // n counts the NUL; a path cut at the bound has no suffix we can see.
    if n <= 1 || n as usize >= DISCOVERY_PATH_MAX {
        return None;
    }
    let len = n as usize - 1;
    // (A path shorter than this names no model file a suffix is meant for.)
    if len < 3 {
        return None;
    }
    // Most paths end in three bytes no suffix ends in: one test instead of the loop.
    let at = |i: usize| {
        let c = unsafe { (*buf)[i & (DISCOVERY_PATH_MAX - 1)] };
        if c.is_ascii_uppercase() { c | 0x20 } else { c }
    };
    let bit = tail_bit(at(len - 3), at(len - 2), at(len - 1));
    if config.tails[(bit >> 6) & 3] & (1 << (bit & 63)) == 0 {
        return None;
    }
    if !matches_any(config, unsafe { &*buf }, len) {
        return None;
    }
    let tgid = current_tgid();
    if tgid == config.exempt_tgid {
        return None;
    }
    unsafe {
        (*scratch).watch = config.watch;
        (*scratch).watch.flags |= WATCH_FOLLOW_FORKS;
    }
    if WATCHED_TASKS
        .insert(tgid, unsafe { (*scratch).watch }, 0)
        .is_err()
    {
        count(Counter::TasksFull);
        return None;
    }
    count(Counter::Discovered);
    Some(())
}

/// Whether the `len` bytes of `path` end in one of the configured suffixes, ASCII letters
/// compared without case.
#[inline(always)]
fn matches_any(config: &Discovery, path: &[u8; DISCOVERY_PATH_MAX], len: usize) -> bool {
    let count = (config.count as usize).min(SUFFIXES);
    for i in 0..SUFFIXES {
        if i >= count {
            break;
        }
        let n = config.len[i] as usize;
        if n == 0 || n > SUFFIX_MAX || n > len {
            continue;
        }
        let start = len - n;
        let mut same = true;
        for j in 0..SUFFIX_MAX {
            if j >= n {
                break;
            }
            let c = path[(start + j) & (DISCOVERY_PATH_MAX - 1)];
            let c = if c.is_ascii_uppercase() { c | 0x20 } else { c };
            if c != config.suffix[i][j] {
                same = false;
                break;
            }
        }
        if same {
            return true;
        }
    }
    false
}
