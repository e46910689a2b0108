//! What the programs read of the current task's kernel objects through BTF-typed pointers:
//! plain loads, no helper call, at offsets user space found in the kernel's BTF and patched
//! into the frozen `.rodata` before load (so the verifier knows them, and checks each load
//! against the object's type).

use aya_ebpf::helpers::generated;

use crate::TASK_EXIT_CODE;

/// The current task (`struct task_struct *`), BTF-typed.
#[inline(always)]
pub fn current() -> *const u8 {
    unsafe { generated::bpf_get_current_task_btf() as *const u8 }
}

/// The `T` at byte `off` of kernel object `base`, a BTF-typed pointer (or one loaded through
/// such); `None` for a null `base`.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    Some(unsafe { base.add(off as usize).cast::<T>().read_volatile() })
}

/// The current task's `exit_code` (set before `sched_process_exit` fires): how it ended, a
/// signal that killed it included, which no syscall record says (a seccomp kill, say). 0
/// where the offset was not found.
#[inline(always)]
pub fn exit_code() -> u32 {
    // Volatile: patched into .rodata at load time, after compilation.
    let off = unsafe { core::ptr::read_volatile(&raw const TASK_EXIT_CODE) };
    if off == 0 {
        return 0;
    }
    unsafe { load::<u32>(current(), off) }.unwrap_or(0)
}
