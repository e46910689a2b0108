//! Which file a descriptor of the current task refers to: its device and inode, read through
//! the kernel's own structures (`task->files->fdt->fd[n]->f_inode`), at the offsets user space
//! found in the kernel's BTF. This is what the kernel opened, however the path was spelled: a
//! directory fd, a symlink, another name of the same file.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task};
use monitor_common::event::FileOffsets;

use crate::FILE_OFFSETS;

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

/// `(device, inode)` of the file behind descriptor `fd`, the device in the kernel's encoding;
/// `None` when the offsets are unknown or the descriptor is not open.
#[inline(always)]
pub fn identity(fd: u32) -> Option<(u32, u64)> {
    let off = offsets();
    if off.task_files == 0 {
        return None;
    }
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let files: *const u8 = field(task, off.task_files)?;
        let fdt: *const u8 = field(files, off.files_fdt)?;
        let max_fds: u32 = field(fdt, off.fdt_max_fds)?;
        if fd >= max_fds {
            return None;
        }
        let fds: *const *const u8 = field(fdt, off.fdt_fd)?;
        if fds.is_null() {
            return None;
        }
        let file: *const u8 = bpf_probe_read_kernel(fds.add(fd as usize)).ok()?;
        let inode: *const u8 = field(file, off.file_inode)?;
        let ino: u64 = field(inode, off.inode_ino)?;
        let sb: *const u8 = field(inode, off.inode_sb)?;
        let dev: u32 = field(sb, off.sb_dev)?;
        Some((dev, ino))
    }
}
