//! The sandbox admits only the machine's own syscall ABI: a seccomp filter, installed by the
//! helper after Landlock, that ends the job at its first syscall of another ABI.
//!
//! On x86_64 a 64-bit process can still make 32-bit syscalls (`int $0x80`, with
//! CONFIG_IA32_EMULATION, the default on every distribution), and x32 ones (numbers with bit
//! 30 set). The kernel's `syscalls:*` tracepoints skip compat calls, and a kprobe on
//! `__x64_sys_openat` does not see `__ia32_sys_openat`: an artifact making its calls that way
//! would act where the probes cannot look. No model loader makes such calls, so the job is
//! killed before the call runs (`SECCOMP_RET_KILL_PROCESS`: SIGSYS, which no handler can
//! catch), and the scan reports what stopped it ([`FOREIGN_ABI_EXIT`]). aarch64's 32-bit
//! compat calls come from AArch32 code, which a 64-bit loader cannot switch to; the filter
//! refuses any ABI but the native one there too.

use std::io;

/// The job's exit status when the filter killed it, as the helper reports a signal (128 +
/// SIGSYS). A job that exits with this status by itself is taken for one killed here: it
/// can only make itself reported, never hide.
pub const FOREIGN_ABI_EXIT: i32 = 128 + libc::SIGSYS;

/// `AUDIT_ARCH_*` of this machine's native ABI (linux/audit.h).
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xc000_003e; // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xc000_00b7; // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE

/// x32 syscalls are x86_64's arch with this bit set in the number (asm/unistd.h).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// An instruction that does not jump.
fn stmt(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

/// An instruction; a conditional jump skips `jt` instructions when true, `jf` when false.
fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The filter: the native arch and (on x86_64) no x32 number, else kill the process.
fn program() -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_KILL_PROCESS,
    };
    let kill = stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    let allow = stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    let mut filter = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH),
        // Native: skip the kill.
        jump(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
        kill,
    ];
    #[cfg(target_arch = "x86_64")]
    filter.extend([
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
        // Bit 30 set: x32, kill.
        jump(BPF_JMP | libc::BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1),
        kill,
    ]);
    filter.push(allow);
    filter
}

/// Installs the filter on the calling thread, for it and everything it starts. Needs
/// no_new_privs, which Landlock's restriction has set before.
pub fn restrict() -> io::Result<()> {
    let mut filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points to `filter`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &raw const prog,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_through_the_filter_ends_in_a_return() {
        let filter = program();
        let last = filter.last().unwrap();
        assert_eq!(u32::from(last.code), libc::BPF_RET | libc::BPF_K);
        assert_eq!(last.k, libc::SECCOMP_RET_ALLOW);
        for (i, insn) in filter.iter().enumerate() {
            if u32::from(insn.code) & 0x07 == libc::BPF_RET {
                continue;
            }
            // What runs next (the following instruction, or a jump's target) is inside.
            assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < filter.len());
        }
    }
}
