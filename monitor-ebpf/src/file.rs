//! Which file a descriptor of the current task refers to: its device and inode, read through
//! the kernel's own structures (`task->files->fdt->fd[n]->f_inode`), at the offsets user space
//! found in the kernel's BTF. This is what the kernel opened, however the path was spelled: a
//! directory fd, a symlink, another name of the same file.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use monitor_common::event::FileOffsets;

use crate::{
    FILE_OFFSETS,
    task::{self, load},
};

fn offsets() -> FileOffsets {
    // Volatile: patched into .rodata at load time, after compilation.
    unsafe { core::ptr::read_volatile(&raw const FILE_OFFSETS) }
}

/// Reads the `T` at byte `off` of kernel object `base`.
#[inline(always)]
unsafe fn field<T>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }.ok()
}

/// Bytes of a kernel object read at once for two of its 8-byte fields close together.
const WINDOW: usize = 32;

/// The 8-byte fields at bytes `a` and `b` of kernel object `base`: in one read when both lie
/// in a `WINDOW` (an fdtable's `max_fds` and `fd`, an inode's `i_sb` and `i_ino`), else in
/// two. Every read is a helper call, the largest cost of an open's exit. (`max_fds` is a
/// `u32` in the first half of its slot: the caller cuts it, on these little-endian targets.)
#[inline(always)]
unsafe fn two_fields(base: *const u8, a: u32, b: u32) -> Option<(u64, u64)> {
    if base.is_null() {
        return None;
    }
    let lo = a.min(b);
    let (da, db) = ((a - lo) as usize, (b - lo) as usize);
    let len = da.max(db) + 8;
    if da % 8 == 0 && db % 8 == 0 && len <= WINDOW {
        // Exactly from the first field to the end of the last: nothing past the object.
        let mut window = [0u64; WINDOW / 8];
        let rc = unsafe {
            generated::bpf_probe_read_kernel(
                window.as_mut_ptr().cast(),
                (len & (WINDOW * 2 - 1)).min(WINDOW) as u32,
                base.add(lo as usize).cast(),
            )
        };
        if rc != 0 {
            return None;
        }
        // Masked for the verifier (the offsets are known to it: frozen read-only data).
        return Some((window[(da / 8) & 3], window[(db / 8) & 3]));
    }
    unsafe { Some((field(base, a)?, field(base, b)?)) }
}

/// `(device, inode)` of the file behind descriptor `fd`, the device in the kernel's encoding;
/// `None` when the offsets are unknown or the descriptor is not open.
#[inline(always)]
pub fn identity(fd: u32) -> Option<(u32, u64)> {
    let off = offsets();
    if off.task_files == 0 {
        return None;
    }
    unsafe {
        // `task->files->fdt`, then its `max_fds` and `fd`: loads through BTF-typed pointers
        // (the verifier knows both the types and the offsets, which are in the frozen
        // `.rodata`), where each was a `bpf_probe_read_kernel` (three helper calls fewer).
        // `fd[n]` and what follows are read as before: an index the verifier cannot bound, and
        // a `struct file **` that BTF leaves untyped.
        let task = task::current();
        let files = load::<*const u8>(task, off.task_files)?;
        let fdt = load::<*const u8>(files, off.files_fdt)?;
        let max_fds = load::<u32>(fdt, off.fdt_max_fds)?;
        let fds = load::<*const *const u8>(fdt, off.fdt_fd)?;
        if fd >= max_fds || fds.is_null() {
            return None;
        }
        let file: *const u8 = bpf_probe_read_kernel(fds.add(fd as usize)).ok()?;
        let inode: *const u8 = field(file, off.file_inode)?;
        let (ino, sb) = two_fields(inode, off.inode_ino, off.inode_sb)?;
        let dev: u32 = field(sb as *const u8, off.sb_dev)?;
        Some((dev, ino))
    }
}
