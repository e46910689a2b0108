//! Where a syscall's number and arguments sit when its kernel function is called.
//!
//! With syscall wrappers every syscall function (`__x64_sys_<name>`, `__arm64_sys_<name>`)
//! takes one argument: a pointer to the user's saved registers, the architecture's
//! `struct pt_regs`. The kernel program reads the arguments from a window of it
//! ([`SyscallRegs`], at [`SYSCALL_REGS_OFFSET`]) and the number from [`SYSCALL_NR_OFFSET`]
//! (a [`SavedNr`]) when the window does not hold it. Unit tests on the user side check the
//! layouts against libc's (ptrace hands the user-visible part of the same struct out).
//!
//! The syscall tracepoints, which run where the kernel has no kprobes, need none of this:
//! their records carry the number and arguments on every architecture.

#[cfg(syscall_abi = "x86_64")]
pub use x86_64::*;

#[cfg(syscall_abi = "aarch64")]
pub use aarch64::*;

#[cfg(syscall_abi = "x86_64")]
mod x86_64 {
    /// x86_64 `struct pt_regs`, as the syscall entry code saves it: the registers a syscall's
    /// number and arguments are passed in sit together, as [`SyscallRegs`].
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
        pub syscall: SyscallRegs,
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
        /// The syscall number (`ax` is overwritten by the return value).
        pub orig_ax: u64,
    }

    /// Where [`SyscallRegs`] starts in [`PtRegs`].
    pub const SYSCALL_REGS_OFFSET: usize = core::mem::offset_of!(PtRegs, syscall);

    /// Where the syscall number is saved in [`PtRegs`] (`orig_ax`; also inside the window).
    pub const SYSCALL_NR_OFFSET: usize = core::mem::offset_of!(PtRegs, syscall.orig_ax);

    /// How the syscall number is saved.
    pub type SavedNr = u64;

    impl SyscallRegs {
        /// The syscall's arguments in order: the x86_64 syscall convention (di, si, dx, r10, r8,
        /// r9; r10 stands in for the function-call convention's cx, which `syscall` clobbers).
        #[inline(always)]
        pub const fn args(&self) -> [u64; 6] {
            [self.di, self.si, self.dx, self.r10, self.r8, self.r9]
        }

        /// The syscall number, which this window holds: no second read.
        #[inline(always)]
        pub const fn nr(&self) -> Option<u64> {
            Some(self.orig_ax)
        }
    }
}

#[cfg(syscall_abi = "aarch64")]
mod aarch64 {
    /// arm64 `struct pt_regs` (arch/arm64/include/asm/ptrace.h), little-endian: the
    /// user-visible `user_pt_regs` first, then what the entry code saves besides.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct PtRegs {
        /// x0 to x30; x0 to x5 hold the arguments, x0 is overwritten by the return value.
        pub regs: [u64; 31],
        pub sp: u64,
        pub pc: u64,
        pub pstate: u64,
        /// x0 as it was at entry.
        pub orig_x0: u64,
        /// The syscall number (-1 outside a syscall).
        pub syscallno: i32,
        pub unused2: u32,
        pub sdei_ttbr1: u64,
        pub pmr: u64,
        pub stackframe: [u64; 2],
        pub lockdep_hardirqs: u64,
        pub exit_rcu: u64,
    }

    /// x0 to x5, the syscall's arguments in order (read at the function's entry, before x0
    /// holds the return value).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct SyscallRegs {
        pub x: [u64; 6],
    }

    /// Where [`SyscallRegs`] starts in [`PtRegs`].
    pub const SYSCALL_REGS_OFFSET: usize = core::mem::offset_of!(PtRegs, regs);

    /// Where the syscall number is saved in [`PtRegs`].
    pub const SYSCALL_NR_OFFSET: usize = core::mem::offset_of!(PtRegs, syscallno);

    /// How the syscall number is saved (a signed 32-bit `syscallno`).
    pub type SavedNr = i32;

    // The fields the kernel program reads, where the kernel has them.
    const _: () = {
        use core::mem::offset_of;
        assert!(offset_of!(PtRegs, orig_x0) == 272);
        assert!(offset_of!(PtRegs, syscallno) == 280);
    };

    impl SyscallRegs {
        /// The syscall's arguments in order: x0 to x5.
        #[inline(always)]
        pub const fn args(&self) -> [u64; 6] {
            self.x
        }

        /// The number is not in this window: it is read at [`SYSCALL_NR_OFFSET`].
        #[inline(always)]
        pub const fn nr(&self) -> Option<u64> {
            None
        }
    }
}

/// The saved syscall number as the table's index type's source: sign-extended, so that -1
/// (not in a syscall) stays out of every table.
#[inline(always)]
pub const fn saved_nr(saved: SavedNr) -> u64 {
    saved as i64 as u64
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    /// The kernel program reads syscall arguments at fixed offsets of `struct pt_regs`; the
    /// ptrace ABI's `user_regs_struct` has the same layout and libc spells it out.
    #[cfg(syscall_abi = "x86_64")]
    #[test]
    fn register_layout_matches_the_abi() {
        use libc::user_regs_struct as U;
        assert_eq!(offset_of!(PtRegs, syscall.di), offset_of!(U, rdi));
        assert_eq!(offset_of!(PtRegs, syscall.si), offset_of!(U, rsi));
        assert_eq!(offset_of!(PtRegs, syscall.dx), offset_of!(U, rdx));
        assert_eq!(offset_of!(PtRegs, syscall.r10), offset_of!(U, r10));
        assert_eq!(offset_of!(PtRegs, syscall.r8), offset_of!(U, r8));
        assert_eq!(offset_of!(PtRegs, syscall.r9), offset_of!(U, r9));
        assert_eq!(offset_of!(PtRegs, syscall.ax), offset_of!(U, rax));
        assert_eq!(offset_of!(PtRegs, syscall.orig_ax), offset_of!(U, orig_rax));
        assert_eq!(offset_of!(PtRegs, ss), offset_of!(U, ss));
        assert_eq!(SYSCALL_REGS_OFFSET, offset_of!(U, r10));
        assert_eq!(SYSCALL_NR_OFFSET, offset_of!(U, orig_rax));
        let regs = SyscallRegs {
            di: 1,
            si: 2,
            dx: 3,
            r10: 4,
            r8: 5,
            r9: 6,
            orig_ax: 257,
            ..SyscallRegs::default()
        };
        assert_eq!(regs.args(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(regs.nr(), Some(257));
    }

    /// arm64's `struct pt_regs` starts with `user_pt_regs`, which ptrace hands out as
    /// `user_regs_struct`; the number, kept after it, is read on its own.
    #[cfg(syscall_abi = "aarch64")]
    #[test]
    fn register_layout_matches_the_abi() {
        use libc::user_regs_struct as U;
        assert_eq!(offset_of!(PtRegs, regs), offset_of!(U, regs));
        assert_eq!(offset_of!(PtRegs, sp), offset_of!(U, sp));
        assert_eq!(offset_of!(PtRegs, pc), offset_of!(U, pc));
        assert_eq!(offset_of!(PtRegs, pstate), offset_of!(U, pstate));
        assert_eq!(offset_of!(PtRegs, orig_x0), core::mem::size_of::<U>());
        assert_eq!(SYSCALL_REGS_OFFSET, offset_of!(U, regs));
        assert_eq!(SYSCALL_NR_OFFSET, core::mem::size_of::<U>() + 8);
        let regs = SyscallRegs {
            x: [1, 2, 3, 4, 5, 6],
        };
        assert_eq!(regs.args(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(regs.nr(), None, "read at SYSCALL_NR_OFFSET");
    }

    #[test]
    fn outside_a_syscall_the_saved_number_is_out_of_every_table() {
        assert_eq!(saved_nr(-1i64 as SavedNr), u64::MAX);
        assert_eq!(saved_nr(56 as SavedNr), 56);
    }
}
