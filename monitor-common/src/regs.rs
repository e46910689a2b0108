//! Where a syscall's number and arguments sit when its kernel function is called.
//!
//! On x86_64 every syscall function `__x64_sys_<name>` takes one argument: a pointer to the
//! user's saved registers, a `struct pt_regs` (arch/x86/include/asm/ptrace.h). The kernel
//! program reads the number and the arguments from there. The layout is the x86_64 ABI's
//! `struct user_regs_struct` too (ptrace hands the same struct out), which is how a unit test
//! on the user side checks it against libc.

#[cfg(not(any(target_arch = "x86_64", target_arch = "bpf")))]
compile_error!("the register layout is the x86_64 one");

/// x86_64 `struct pt_regs`, as the syscall entry code saves it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PtRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    /// The syscall number (`ax` is overwritten by the return value).
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
}

/// The run of [`PtRegs`] from `r10` to `orig_ax`: every register a syscall's number and
/// arguments are passed in, so the kernel program reads them with one copy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallRegs {
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
}

/// Where [`SyscallRegs`] starts in [`PtRegs`].
pub const SYSCALL_REGS_OFFSET: usize = core::mem::offset_of!(PtRegs, r10);

// SyscallRegs must be an exact window of PtRegs.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(SyscallRegs, r9) + SYSCALL_REGS_OFFSET == offset_of!(PtRegs, r9));
    assert!(offset_of!(SyscallRegs, r8) + SYSCALL_REGS_OFFSET == offset_of!(PtRegs, r8));
    assert!(offset_of!(SyscallRegs, dx) + SYSCALL_REGS_OFFSET == offset_of!(PtRegs, dx));
    assert!(offset_of!(SyscallRegs, si) + SYSCALL_REGS_OFFSET == offset_of!(PtRegs, si));
    assert!(offset_of!(SyscallRegs, di) + SYSCALL_REGS_OFFSET == offset_of!(PtRegs, di));
    assert!(offset_of!(SyscallRegs, orig_ax) + SYSCALL_REGS_OFFSET == offset_of!(PtRegs, orig_ax));
};

impl SyscallRegs {
    /// The syscall's arguments in order: the x86_64 syscall convention (di, si, dx, r10, r8,
    /// r9; r10 stands in for the function-call convention's cx, which `syscall` clobbers).
    #[inline(always)]
    pub const fn args(&self) -> [u64; 6] {
        [self.di, self.si, self.dx, self.r10, self.r8, self.r9]
    }
}
