//! Watches the kernel extends by itself, at the moment it matters, so that nothing done in
//! between is missed (user space would see it a rescan later):
//! - a cgroup made under a watched cgroup (`cgroup:cgroup_mkdir`) is watched before `mkdir`
//!   returns, so no task can enter it unseen; it is forgotten at `cgroup_rmdir`;
//! - a process that executes a watched executable (`sched_process_exec`) is watched from the
//!   new program's first instruction.
//!
//! Both match paths, as [`PathKey`]s: cgroups by their path under the cgroup2 root (the
//! tracepoints give no parent id), executables by the path `execve` was given.

// Keys are passed by reference into their per-CPU scratch: by value, each 256-byte key would
// be copied onto the 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{EbpfContext, helpers::generated, programs::TracePointContext};
use monitor_common::event::{Counter, PATH_KEY_MAX, PathKey};

use crate::{
    FOLLOW_SCRATCH, WATCHED, WATCHED_CGROUP_PATHS, WATCHED_EXES, WATCHED_TASKS,
    context::{count, current_tgid, offsets},
};

/// At `cgroup_mkdir`: the new cgroup is watched as its parent is.
#[inline(always)]
pub fn on_cgroup_mkdir(ctx: &TracePointContext) -> Option<()> {
    let (id, key) = cgroup_event(ctx)?;
    let loc = offsets().cgroup_path_loc;
    let len = read_path(ctx, loc, key)?;
    // The parent's path is the first `cut` bytes: read again, only that far.
    let cut = unsafe { last_slash(key, len) };
    read_prefix(ctx, loc, key, cut)?;
    let watch = *unsafe { WATCHED_CGROUP_PATHS.get(&*key) }?;
    if WATCHED.insert(id, watch, 0).is_err() {
        count(Counter::CgroupsFull);
        return None;
    }
    // Its own children follow it in turn (read again: cheaper than a copy the verifier
    // accepts). Without room here they are still found by user space's rescan.
    read_path(ctx, loc, key)?;
    let _ = WATCHED_CGROUP_PATHS.insert(unsafe { &*key }, &watch, 0);
    count(Counter::Followed);
    Some(())
}

/// At `cgroup_rmdir`: a followed cgroup's entries go with it.
#[inline(always)]
pub fn on_cgroup_rmdir(ctx: &TracePointContext) -> Option<()> {
    let (id, key) = cgroup_event(ctx)?;
    read_path(ctx, offsets().cgroup_path_loc, key)?;
    let path = unsafe { &*key };
    unsafe { WATCHED_CGROUP_PATHS.get(path) }?;
    let _ = WATCHED.remove(&id);
    let _ = WATCHED_CGROUP_PATHS.remove(path);
    Some(())
}

/// At `sched_process_exec` of a task nobody watches: whether the program it executes is a
/// watched executable, in which case its process is now watched (the caller then finds the
/// watch as for any watched task).
#[inline(always)]
pub fn on_exec(ctx: &TracePointContext) -> bool {
    exec_matches(ctx).is_some()
}

#[inline(always)]
fn exec_matches(ctx: &TracePointContext) -> Option<()> {
    let key = FOLLOW_SCRATCH.get_ptr_mut(0)?;
    read_path(ctx, offsets().exec_filename_loc, key)?;
    let watch = *unsafe { WATCHED_EXES.get(&*key) }?;
    if WATCHED_TASKS.insert(current_tgid(), watch, 0).is_err() {
        count(Counter::TasksFull);
        return None;
    }
    count(Counter::Followed);
    Some(())
}

/// A cgroup2 event's cgroup id, and the scratch key.
#[inline(always)]
fn cgroup_event(ctx: &TracePointContext) -> Option<(u64, *mut PathKey)> {
    let off = offsets();
    // Cgroup v1 hierarchies (root > 0) have ids of their own that no watch uses.
    let root: i32 = unsafe { ctx.read_at(off.cgroup_root as usize) }.ok()?;
    if root != 0 {
        return None;
    }
    let id: u64 = unsafe { ctx.read_at(off.cgroup_id as usize) }.ok()?;
    Some((id, FOLLOW_SCRATCH.get_ptr_mut(0)?))
}

/// Reads the tracepoint string whose `__data_loc` word is at `loc_offset` into `key`, NUL
/// padded; its length, or `None` when it does not fit a key.
#[inline(always)]
pub fn read_path(ctx: &TracePointContext, loc_offset: u16, key: *mut PathKey) -> Option<usize> {
    let n = read_into(ctx, loc_offset, key, PATH_KEY_MAX as u32)?;
    // Cut at the bound: a longer path, which no key holds.
    if n >= PATH_KEY_MAX - 1 {
        return None;
    }
    Some(n)
}

/// Reads the first `len` (1 to `PATH_KEY_MAX - 1`) bytes of that string into `key`, NUL
/// padded.
#[inline(always)]
fn read_prefix(
    ctx: &TracePointContext,
    loc_offset: u16,
    key: *mut PathKey,
    len: usize,
) -> Option<()> {
    let size = (len & (PATH_KEY_MAX - 1)) as u32 + 1;
    read_into(ctx, loc_offset, key, size).map(drop)
}

/// Zeroes `key`, then copies at most `size - 1` bytes of the string and its NUL into it;
/// the bytes copied before the NUL.
#[inline(always)]
fn read_into(
    ctx: &TracePointContext,
    loc_offset: u16,
    key: *mut PathKey,
    size: u32,
) -> Option<usize> {
    let words = key.cast::<u64>();
    for i in 0..PATH_KEY_MAX / 8 {
        // Volatile: a plain loop would become a call to memset, which BPF does not have.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let loc: u32 = unsafe { ctx.read_at(loc_offset as usize) }.ok()?;
    // The low 16 bits of a `__data_loc` word are the string's offset in the record.
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    let n = unsafe { generated::bpf_probe_read_kernel_str(key.cast(), size, src.cast()) };
    if n <= 1 {
        return None;
    }
    Some(n as usize - 1)
}

/// Where the directory above the `len`-byte path in `key` ends: at its last `/`, or after
/// the `/` of the root.
#[inline(always)]
unsafe fn last_slash(key: *const PathKey, len: usize) -> usize {
    const MASK: usize = PATH_KEY_MAX - 1;
    let bytes = unsafe { &raw const (*key).bytes };
    // From the end, and one loop only: its exit is where the verifier's work multiplies.
    for k in 1..PATH_KEY_MAX {
        if k + 1 >= len {
            break;
        }
        let i = len - k;
        if unsafe { (*bytes)[i & MASK] } == b'/' {
            return i;
        }
    }
    1
}
