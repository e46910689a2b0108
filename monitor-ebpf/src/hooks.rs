//! Where a syscall's number, arguments and return value come from, for each way of hooking it.
//!
//! - kprobe / kretprobe on the syscall's function (`__x64_sys_<name>`, `__arm64_sys_<name>`),
//!   preferred: only the traced syscalls pay. The function's one argument points to the user's
//!   saved registers (`monitor_common::regs`, the architecture's layout).
//! - `syscalls:sys_enter_<name>` / `sys_exit_<name>` tracepoints, where the kernel has no
//!   kprobes (CONFIG_KPROBES unset): while any of them is in use every syscall of every task
//!   takes the kernel's slow path, traced or not.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, generated},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use monitor_common::{
    event::{CAPTURE_ENTRIES, USUAL_SYSCALL_ARGS, USUAL_SYSCALL_NR},
    regs::{PtRegs, SYSCALL_NR_OFFSET, SYSCALL_REGS_OFFSET, SavedNr, SyscallRegs, saved_nr},
    syscall::MAX_ARGS,
};

use crate::context::offsets;

/// A syscall's number, checked to index the `CAPTURE` map.
#[inline(always)]
fn traced_nr(nr: u64) -> Result<u32, i64> {
    // -1 outside a syscall; x32 calls carry a high bit: neither is in the table.
    if nr >= u64::from(CAPTURE_ENTRIES) {
        return Err(0);
    }
    Ok(nr as u32)
}

/// At a syscall function's entry: its number and arguments.
#[inline(always)]
pub fn kprobe_entry(ctx: &ProbeContext) -> Result<(u32, [u64; MAX_ARGS]), i64> {
    // `__x64_sys_<name>(const struct pt_regs *regs)`: the user's registers, saved on entry.
    let regs: *const PtRegs = ctx.arg(0).ok_or(0)?;
    let window = unsafe { regs.cast::<u8>().add(SYSCALL_REGS_OFFSET) }.cast::<SyscallRegs>();
    let saved = unsafe { bpf_probe_read_kernel(window) }?;
    let nr = match saved.nr() {
        Some(nr) => nr,
        None => read_saved_nr(regs)?,
    };
    Ok((traced_nr(nr)?, saved.args()))
}

/// The syscall number saved in the user's registers.
#[inline(always)]
fn read_saved_nr(regs: *const PtRegs) -> Result<u64, i64> {
    let at = unsafe { regs.cast::<u8>().add(SYSCALL_NR_OFFSET) }.cast::<SavedNr>();
    Ok(saved_nr(unsafe { bpf_probe_read_kernel(at) }?))
}

/// At a syscall function's return: its number and return value.
#[inline(always)]
pub fn kretprobe_exit(ctx: &RetProbeContext) -> Result<(u32, i64), i64> {
    // The function's argument is gone by its return; the task's saved user registers still
    // hold the number (also after a successful execve, in the new image).
    let task = unsafe { generated::bpf_get_current_task_btf() };
    let regs = unsafe { generated::bpf_task_pt_regs(task) } as *const PtRegs;
    Ok((traced_nr(read_saved_nr(regs)?)?, ctx.ret()))
}

/// The record of a `syscalls:*` tracepoint has the usual layout (see
/// [`USUAL_SYSCALL_NR`]): its fields can be loaded directly. The verifier knows the offsets
/// (they are in the frozen `.rodata`), so it explores only the branch this kernel takes.
#[inline(always)]
fn usual(nr: u16, first: u16) -> bool {
    nr == USUAL_SYSCALL_NR && first == USUAL_SYSCALL_ARGS
}

/// The `T` at constant offset `OFF` of a usual-layout record.
///
/// The kernel refuses to attach a program to a tracepoint whose record is shorter than the
/// furthest offset the program loads directly: each caller keeps to the fields that every
/// tracepoint its program is attached to has.
#[inline(always)]
fn load<T: Copy, const OFF: usize>(ctx: &TracePointContext) -> T {
    unsafe { (ctx.as_ptr() as *const u8).add(OFF).cast::<T>().read() }
}

/// The syscall number at `syscalls:*` (entry or exit: every record has it).
#[inline(always)]
fn record_nr(ctx: &TracePointContext, nr_off: u16, first: u16) -> Result<u32, i64> {
    let nr: i32 = if usual(nr_off, first) {
        load::<i32, { USUAL_SYSCALL_NR as usize }>(ctx)
    } else {
        unsafe { ctx.read_at(nr_off as usize) }.map_err(i64::from)?
    };
    traced_nr(nr as i64 as u64)
}

/// At `syscalls:sys_enter_*`: the syscall's number and arguments, copied in one helper call
/// (not loaded: the program that calls this is attached to syscalls without arguments too,
/// and the kernel refuses direct loads past the shortest record's end). What BPF sees of the
/// record always has room for six arguments (the kernel's `syscall_tp_t`); those the syscall
/// does not have are whatever was there, as they were when read one by one.
#[inline(always)]
pub fn tracepoint_entry(ctx: &TracePointContext) -> Result<(u32, [u64; MAX_ARGS]), i64> {
    let off = offsets();
    let nr = record_nr(ctx, off.enter_nr, off.enter_args)?;
    let at = unsafe { (ctx.as_ptr() as *const u8).add(off.enter_args as usize) };
    let args = unsafe { bpf_probe_read_kernel(at.cast::<[u64; MAX_ARGS]>()) }?;
    Ok((nr, args))
}

/// At `syscalls:sys_enter_*`: the syscall's number alone.
#[inline(always)]
pub fn tracepoint_nr(ctx: &TracePointContext) -> Result<u32, i64> {
    let off = offsets();
    record_nr(ctx, off.enter_nr, off.enter_args)
}

/// At `syscalls:sys_enter_*` of a syscall with at least three arguments: argument `i`, 0 to 2
/// (where the opening syscalls have their path and flags).
#[inline(always)]
pub fn tracepoint_open_arg(ctx: &TracePointContext, i: usize) -> Result<u64, i64> {
    let off = offsets();
    if usual(off.enter_nr, off.enter_args) {
        const A: usize = USUAL_SYSCALL_ARGS as usize;
        return match i {
            0 => Ok(load::<u64, A>(ctx)),
            1 => Ok(load::<u64, { A + 8 }>(ctx)),
            2 => Ok(load::<u64, { A + 16 }>(ctx)),
            _ => Err(-1),
        };
    }
    if i > 2 {
        return Err(-1);
    }
    unsafe { ctx.read_at(off.enter_args as usize + 8 * i) }.map_err(i64::from)
}

/// At `syscalls:sys_exit_*`: the syscall's number and return value.
#[inline(always)]
pub fn tracepoint_exit(ctx: &TracePointContext) -> Result<(u32, i64), i64> {
    let off = offsets();
    let nr = record_nr(ctx, off.exit_nr, off.exit_ret)?;
    let ret: i64 = if usual(off.exit_nr, off.exit_ret) {
        load::<i64, { USUAL_SYSCALL_ARGS as usize }>(ctx)
    } else {
        unsafe { ctx.read_at(off.exit_ret as usize) }.map_err(i64::from)?
    };
    Ok((nr, ret))
}
