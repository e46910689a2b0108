//! The traced syscalls: one table that drives the kernel capture map, the kernel functions the
//! probes attach to, and the decoder.
//!
//! Each entry carries its number on x86_64 and on aarch64; the build keeps those of its
//! `syscall_abi` (the target's architecture, or for the kernel programs the architecture they
//! are built for, see build.rs). aarch64 uses the kernel's generic table, which lacks the
//! older calls that the `*at` family and `clone` cover (`open`, `fork`, `unlink`, ...): those
//! entries exist on x86_64 only, and their names stay known ([`LEGACY`]) so that rules and
//! policies naming them load everywhere. Unit tests check every number against the target's
//! libc and the kernel's table (the `syscalls` crate), on each architecture.

#[cfg(not(any(syscall_abi = "x86_64", syscall_abi = "aarch64")))]
compile_error!("the syscall table carries x86_64 and aarch64 numbers only");

/// How the kernel program captures one syscall argument at entry. Everything is also kept as
/// its raw 64-bit value; these say what to copy from user memory besides.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Only the raw register value.
    Value = 0,
    /// A NUL-terminated user string (path, name) into the next string slot.
    Str = 1,
    /// A user buffer whose length is the *next* argument (sockaddr, open_how, clone_args),
    /// into the blob slot, at most [`crate::event::BLOB_MAX`] bytes.
    SizedBlob = 2,
    /// A NULL-terminated array of user string pointers (argv).
    Argv = 3,
}

/// What an argument means, for decoding and display. Each kind implies its [`Capture`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
#[cfg_attr(feature = "user", serde(rename_all = "snake_case"))]
pub enum ArgKind {
    Int,
    UInt,
    Hex,
    Ptr,
    Size,
    Fd,
    /// A directory fd of the `*at` family (`AT_FDCWD` shown by name).
    DirFd,
    Path,
    /// A string that is not a path (module arguments, memfd name, fs type).
    Str,
    Argv,
    OpenFlags,
    OpenHow,
    AtFlags,
    Mode,
    AddressFamily,
    SockType,
    SockAddr,
    ProtFlags,
    MapFlags,
    CloneFlags,
    CloneArgs,
    MountFlags,
    Signal,
    Pid,
    Id,
    PtraceRequest,
    BpfCmd,
    /// fcntl's command (`F_DUPFD` shown by name).
    FcntlCmd,
}

impl ArgKind {
    pub const fn capture(self) -> Capture {
        match self {
            ArgKind::Path | ArgKind::Str => Capture::Str,
            ArgKind::SockAddr | ArgKind::OpenHow | ArgKind::CloneArgs => Capture::SizedBlob,
            ArgKind::Argv => Capture::Argv,
            _ => Capture::Value,
        }
    }
}

/// A coarse grouping that reports and rules use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
#[cfg_attr(feature = "user", serde(rename_all = "snake_case"))]
pub enum Class {
    Process,
    File,
    Network,
    Memory,
    Privilege,
    Kernel,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Process,
        Class::File,
        Class::Network,
        Class::Memory,
        Class::Privilege,
        Class::Kernel,
    ];

    /// The lower-case name reports and command lines use.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Process => "process",
            Class::File => "file",
            Class::Network => "network",
            Class::Memory => "memory",
            Class::Privilege => "privilege",
            Class::Kernel => "kernel",
        }
    }
}

/// What a syscall does to the state the tracer keeps of each process (its descriptor table and
/// working directory) and of the job's file names, so that the paths of later syscalls are
/// resolved as the kernel resolves them: relative to a directory fd, after `fchdir`, through
/// a symlink the job made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// On success, returns a descriptor of the file its path names (relative to the directory
    /// fd argument before the path, if it has one). Its exit record carries the file's device
    /// and inode, read in the kernel.
    Opens,
    /// On success, returns a descriptor of the file of its first fd argument (`dup`,
    /// `fcntl(F_DUPFD)`).
    DupsFd,
    /// On success, its second fd argument is a copy of its first (`dup2`, `dup3`).
    DupsFdTo,
    /// Closes its fd argument, whatever it returns.
    ClosesFd,
    /// On success, the working directory is its path (`chdir`) or its fd's file (`fchdir`).
    ChangesCwd,
    /// On success, its second path is a symlink whose content is its first (`symlink`).
    Symlinks,
    /// On success, its second path names the file its first named (`link`, `rename`).
    Renames,
    /// On success, its path names nothing any more (`unlink`).
    Removes,
}

/// A test on one argument at entry: a syscall with one is traced only when it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgTest {
    /// Some bit of the mask is set (mmap and mprotect with `PROT_EXEC`).
    AnyBit(u64),
    /// The argument is one of these values (fcntl's duplicating commands).
    OneOf([u64; 2]),
}

/// One argument of a syscall.
#[derive(Clone, Copy, Debug)]
pub struct Arg {
    pub name: &'static str,
    pub kind: ArgKind,
}

/// One traced syscall.
#[derive(Clone, Copy, Debug)]
pub struct Syscall {
    pub name: &'static str,
    /// The syscall number on the architecture built for.
    pub nr: u32,
    pub class: Class,
    pub args: &'static [Arg],
    /// Emit the entry event only when argument `i` passes the test (mmap and mprotect only
    /// with PROT_EXEC, fcntl only when it duplicates a descriptor). The exit of such a
    /// syscall, when it has one, is recorded only after an entry that was.
    pub only_if: Option<(u8, ArgTest)>,
    /// Whether the syscall can return to its caller (exit_group cannot; execve does only on
    /// failure, but its syscall function still returns, in the new image, on success).
    pub returns: bool,
    /// Whether its return value is worth an exit record (close's is not: the descriptor is
    /// gone either way; nor are mmap's and mprotect's).
    pub result: bool,
    /// Whether it opens the file its first `Path` argument names: discovery looks at those
    /// paths for model artifacts.
    pub opens: bool,
    /// What it does to descriptors, the working directory and file names (for the tracer).
    pub effect: Effect,
    /// Whether it executes a program (a kill policy kills it at the exec, see
    /// `event::KillPolicy`).
    pub executes: bool,
    /// Whether it makes a new task (a process or a thread): its child returns from it too,
    /// with 0, without an entry of its own.
    pub forks: bool,
    /// Whether it ends the whole process (its argument is the exit code).
    pub ends_process: bool,
}

impl Syscall {
    /// Whether the kernel records its return: an exit record follows the entry.
    pub const fn has_exit(&self) -> bool {
        self.returns && self.result
    }

    /// Whether its entry's record waits for its exit in the kernel, to be written with the
    /// result as one record: every syscall with an exit record, except those that execute a
    /// program (the exec happens inside the call: user space needs the entry, its argv, when
    /// the exec's own record arrives, before the exit).
    pub const fn entry_waits(&self) -> bool {
        self.has_exit() && !self.executes
    }

    /// Whether, on success, it changes the working directory.
    pub const fn changes_cwd(&self) -> bool {
        matches!(self.effect, Effect::ChangesCwd)
    }

    /// The index of the open flags argument of a syscall discovery looks at, when they are one
    /// (openat2's are behind a pointer).
    pub fn discovery_flags_arg(&self) -> Option<usize> {
        self.discovery_arg()?;
        self.args
            .iter()
            .position(|a| matches!(a.kind, ArgKind::OpenFlags))
    }

    /// The index of the argument discovery looks at, if it looks at this syscall.
    pub fn discovery_arg(&self) -> Option<usize> {
        if !self.opens {
            return None;
        }
        self.args
            .iter()
            .position(|a| matches!(a.kind, ArgKind::Path))
    }
}

/// A syscall's number on x86_64 and on aarch64: the one of the ABI built for.
const fn nr(x86_64: u32, aarch64: u32) -> u32 {
    if cfg!(syscall_abi = "aarch64") {
        aarch64
    } else {
        x86_64
    }
}

const fn a(name: &'static str, kind: ArgKind) -> Arg {
    Arg { name, kind }
}

const fn sc(name: &'static str, nr: u32, class: Class, args: &'static [Arg]) -> Syscall {
    Syscall {
        name,
        nr,
        class,
        args,
        only_if: None,
        returns: true,
        result: true,
        opens: false,
        effect: Effect::None,
        executes: false,
        forks: false,
        ends_process: false,
    }
}

/// A syscall that makes a new task.
const fn forker(syscall: Syscall) -> Syscall {
    Syscall {
        forks: true,
        ..syscall
    }
}

/// A syscall that opens the file its path names and returns a descriptor of it.
const fn opener(syscall: Syscall) -> Syscall {
    Syscall {
        opens: true,
        effect: Effect::Opens,
        ..syscall
    }
}

const fn with(effect: Effect, syscall: Syscall) -> Syscall {
    Syscall { effect, ..syscall }
}

use ArgKind::*;
use Class::*;

/// `PROT_EXEC`: mmap and mprotect are traced only when they ask for executable memory.
pub const PROT_EXEC: u64 = 0x4;

/// fcntl's commands that duplicate a descriptor (`F_DUPFD`, `F_DUPFD_CLOEXEC`): the only
/// ones traced.
pub const F_DUPFD: u64 = 0;
pub const F_DUPFD_CLOEXEC: u64 = 1030;

/// The most arguments a syscall has.
pub const MAX_ARGS: usize = 6;

/// Every traced syscall. Order is irrelevant; names are the kernel's `SYSCALL_DEFINE` names,
/// whose functions the probes attach to ([`Syscall::kernel_function`]).
#[rustfmt::skip]
pub static SYSCALLS: &[Syscall] = &[
    // Process creation and execution.
    Syscall { executes: true, ..sc("execve", nr(59, 221), Process, &[a("filename", Path), a("argv", Argv), a("envp", Ptr)]) },
    Syscall {
        executes: true,
        ..sc("execveat", nr(322, 281), Process, &[
            a("dfd", DirFd), a("filename", Path), a("argv", Argv), a("envp", Ptr), a("flags", AtFlags),
        ])
    },
    #[cfg(syscall_abi = "x86_64")]
    forker(sc("clone", 56, Process, &[
        a("flags", CloneFlags), a("newsp", Ptr), a("parent_tid", Ptr), a("child_tid", Ptr), a("tls", Hex),
    ])),
    // arm64 passes tls before child_tid (CONFIG_CLONE_BACKWARDS).
    #[cfg(syscall_abi = "aarch64")]
    forker(sc("clone", 220, Process, &[
        a("flags", CloneFlags), a("newsp", Ptr), a("parent_tid", Ptr), a("tls", Hex), a("child_tid", Ptr),
    ])),
    forker(sc("clone3", nr(435, 435), Process, &[a("uargs", CloneArgs), a("size", Size)])),
    #[cfg(syscall_abi = "x86_64")]
    forker(sc("fork", 57, Process, &[])),
    #[cfg(syscall_abi = "x86_64")]
    forker(sc("vfork", 58, Process, &[])),
    Syscall { returns: false, ends_process: true, ..sc("exit_group", nr(231, 94), Process, &[a("error_code", Int)]) },
    sc("kill", nr(62, 129), Process, &[a("pid", Pid), a("sig", Signal)]),
    sc("tkill", nr(200, 130), Process, &[a("pid", Pid), a("sig", Signal)]),
    sc("tgkill", nr(234, 131), Process, &[a("tgid", Pid), a("pid", Pid), a("sig", Signal)]),
    with(Effect::ChangesCwd, sc("chdir", nr(80, 49), Process, &[a("filename", Path)])),
    with(Effect::ChangesCwd, sc("fchdir", nr(81, 50), Process, &[a("fd", Fd)])),
    // Files.
    #[cfg(syscall_abi = "x86_64")]
    opener(sc("open", 2, File, &[a("filename", Path), a("flags", OpenFlags), a("mode", Mode)])),
    opener(sc("openat", nr(257, 56), File, &[a("dfd", DirFd), a("filename", Path), a("flags", OpenFlags), a("mode", Mode)])),
    opener(sc("openat2", nr(437, 437), File, &[a("dfd", DirFd), a("filename", Path), a("how", OpenHow), a("usize", Size)])),
    #[cfg(syscall_abi = "x86_64")]
    with(Effect::Opens, sc("creat", 85, File, &[a("pathname", Path), a("mode", Mode)])),
    // Descriptors: what a directory fd or /proc/self/fd/N names later.
    with(Effect::DupsFd, sc("dup", nr(32, 23), File, &[a("fildes", Fd)])),
    #[cfg(syscall_abi = "x86_64")]
    with(Effect::DupsFdTo, sc("dup2", 33, File, &[a("oldfd", Fd), a("newfd", Fd)])),
    with(Effect::DupsFdTo, sc("dup3", nr(292, 24), File, &[a("oldfd", Fd), a("newfd", Fd), a("flags", OpenFlags)])),
    Syscall {
        only_if: Some((1, ArgTest::OneOf([F_DUPFD, F_DUPFD_CLOEXEC]))),
        ..with(Effect::DupsFd, sc("fcntl", nr(72, 25), File, &[a("fd", Fd), a("cmd", FcntlCmd), a("arg", UInt)]))
    },
    Syscall { result: false, ..with(Effect::ClosesFd, sc("close", nr(3, 57), File, &[a("fd", Fd)])) },
    #[cfg(syscall_abi = "x86_64")]
    with(Effect::Removes, sc("unlink", 87, File, &[a("pathname", Path)])),
    with(Effect::Removes, sc("unlinkat", nr(263, 35), File, &[a("dfd", DirFd), a("pathname", Path), a("flag", AtFlags)])),
    #[cfg(syscall_abi = "x86_64")]
    with(Effect::Renames, sc("rename", 82, File, &[a("oldname", Path), a("newname", Path)])),
    with(Effect::Renames, sc("renameat", nr(264, 38), File, &[
        a("olddfd", DirFd), a("oldname", Path), a("newdfd", DirFd), a("newname", Path),
    ])),
    with(Effect::Renames, sc("renameat2", nr(316, 276), File, &[
        a("olddfd", DirFd), a("oldname", Path), a("newdfd", DirFd), a("newname", Path), a("flags", Hex),
    ])),
    #[cfg(syscall_abi = "x86_64")]
    with(Effect::Renames, sc("link", 86, File, &[a("oldname", Path), a("newname", Path)])),
    with(Effect::Renames, sc("linkat", nr(265, 37), File, &[
        a("olddfd", DirFd), a("oldname", Path), a("newdfd", DirFd), a("newname", Path), a("flags", AtFlags),
    ])),
    #[cfg(syscall_abi = "x86_64")]
    with(Effect::Symlinks, sc("symlink", 88, File, &[a("oldname", Path), a("newname", Path)])),
    with(Effect::Symlinks, sc("symlinkat", nr(266, 36), File, &[a("oldname", Path), a("newdfd", DirFd), a("newname", Path)])),
    #[cfg(syscall_abi = "x86_64")]
    sc("chmod", 90, File, &[a("filename", Path), a("mode", Mode)]),
    sc("fchmod", nr(91, 52), File, &[a("fd", Fd), a("mode", Mode)]),
    sc("fchmodat", nr(268, 53), File, &[a("dfd", DirFd), a("filename", Path), a("mode", Mode)]),
    sc("fchmodat2", nr(452, 452), File, &[a("dfd", DirFd), a("filename", Path), a("mode", Mode), a("flags", AtFlags)]),
    #[cfg(syscall_abi = "x86_64")]
    sc("chown", 92, File, &[a("filename", Path), a("user", Id), a("group", Id)]),
    sc("fchownat", nr(260, 54), File, &[
        a("dfd", DirFd), a("filename", Path), a("user", Id), a("group", Id), a("flag", AtFlags),
    ]),
    sc("memfd_create", nr(319, 279), Memory, &[a("uname", Str), a("flags", Hex)]),
    // Network.
    sc("socket", nr(41, 198), Network, &[a("family", AddressFamily), a("type", SockType), a("protocol", Int)]),
    sc("connect", nr(42, 203), Network, &[a("fd", Fd), a("uservaddr", SockAddr), a("addrlen", Size)]),
    sc("bind", nr(49, 200), Network, &[a("fd", Fd), a("umyaddr", SockAddr), a("addrlen", Size)]),
    sc("listen", nr(50, 201), Network, &[a("fd", Fd), a("backlog", Int)]),
    sc("accept", nr(43, 202), Network, &[a("fd", Fd), a("upeer_sockaddr", Ptr), a("upeer_addrlen", Ptr)]),
    sc("accept4", nr(288, 242), Network, &[
        a("fd", Fd), a("upeer_sockaddr", Ptr), a("upeer_addrlen", Ptr), a("flags", Hex),
    ]),
    sc("sendto", nr(44, 206), Network, &[
        a("fd", Fd), a("buff", Ptr), a("len", Size), a("flags", Hex), a("addr", SockAddr), a("addr_len", Size),
    ]),
    sc("sendmsg", nr(46, 211), Network, &[a("fd", Fd), a("msg", Ptr), a("flags", Hex)]),
    sc("sendmmsg", nr(307, 269), Network, &[a("fd", Fd), a("mmsg", Ptr), a("vlen", UInt), a("flags", Hex)]),
    // Memory.
    Syscall {
        only_if: Some((2, ArgTest::AnyBit(PROT_EXEC))),
        result: false,
        ..sc("mmap", nr(9, 222), Memory, &[
            a("addr", Ptr), a("len", Size), a("prot", ProtFlags), a("flags", MapFlags), a("fd", Fd), a("off", Hex),
        ])
    },
    Syscall {
        only_if: Some((2, ArgTest::AnyBit(PROT_EXEC))),
        result: false,
        ..sc("mprotect", nr(10, 226), Memory, &[a("start", Ptr), a("len", Size), a("prot", ProtFlags)])
    },
    sc("process_vm_readv", nr(310, 270), Memory, &[
        a("pid", Pid), a("lvec", Ptr), a("liovcnt", UInt), a("rvec", Ptr), a("riovcnt", UInt), a("flags", Hex),
    ]),
    sc("process_vm_writev", nr(311, 271), Memory, &[
        a("pid", Pid), a("lvec", Ptr), a("liovcnt", UInt), a("rvec", Ptr), a("riovcnt", UInt), a("flags", Hex),
    ]),
    sc("ptrace", nr(101, 117), Privilege, &[a("request", PtraceRequest), a("pid", Pid), a("addr", Ptr), a("data", Ptr)]),
    // Privilege.
    sc("setuid", nr(105, 146), Privilege, &[a("uid", Id)]),
    sc("setgid", nr(106, 144), Privilege, &[a("gid", Id)]),
    sc("setreuid", nr(113, 145), Privilege, &[a("ruid", Id), a("euid", Id)]),
    sc("setregid", nr(114, 143), Privilege, &[a("rgid", Id), a("egid", Id)]),
    sc("setresuid", nr(117, 147), Privilege, &[a("ruid", Id), a("euid", Id), a("suid", Id)]),
    sc("setresgid", nr(119, 149), Privilege, &[a("rgid", Id), a("egid", Id), a("sgid", Id)]),
    sc("capset", nr(126, 91), Privilege, &[a("header", Ptr), a("data", Ptr)]),
    sc("unshare", nr(272, 97), Privilege, &[a("unshare_flags", CloneFlags)]),
    sc("setns", nr(308, 268), Privilege, &[a("fd", Fd), a("flags", CloneFlags)]),
    // Kernel interfaces.
    sc("mount", nr(165, 40), Kernel, &[
        a("dev_name", Str), a("dir_name", Path), a("type", Str), a("flags", MountFlags), a("data", Ptr),
    ]),
    sc("umount", nr(166, 39), Kernel, &[a("name", Path), a("flags", Hex)]),
    sc("init_module", nr(175, 105), Kernel, &[a("umod", Ptr), a("len", Size), a("uargs", Str)]),
    sc("finit_module", nr(313, 273), Kernel, &[a("fd", Fd), a("uargs", Str), a("flags", Hex)]),
    sc("delete_module", nr(176, 106), Kernel, &[a("name_user", Str), a("flags", Hex)]),
    sc("bpf", nr(321, 280), Kernel, &[a("cmd", BpfCmd), a("uattr", Ptr), a("size", Size)]),
    sc("io_uring_setup", nr(425, 425), Kernel, &[a("entries", UInt), a("params", Ptr)]),
];

/// The syscalls of the table that only x86_64 has: the generic table aarch64 uses does the
/// same through `openat` (open, creat), `clone` (fork, vfork), `dup3`, `unlinkat`,
/// `renameat2`, `linkat`, `symlinkat`, `fchmodat` and `fchownat`, which the table traces there.
/// A rule or a kill policy may name them on any architecture: where they do not exist they
/// match nothing.
pub const LEGACY: &[&str] = &[
    "open", "creat", "fork", "vfork", "dup2", "unlink", "rename", "link", "symlink", "chmod",
    "chown",
];

/// Whether `name` is a syscall of the table on some architecture (traced here, or [`LEGACY`]).
pub fn is_known(name: &str) -> bool {
    by_name(name).is_some() || LEGACY.contains(&name)
}

/// Prefix of the syscall functions (`__x64_sys_openat`, `__arm64_sys_openat`): with syscall
/// wrappers each takes a pointer to the user's saved registers.
#[cfg(syscall_abi = "x86_64")]
pub const KERNEL_FUNCTION_PREFIX: &str = "__x64_sys_";
#[cfg(syscall_abi = "aarch64")]
pub const KERNEL_FUNCTION_PREFIX: &str = "__arm64_sys_";

impl Syscall {
    /// The kernel function the probes attach to (`__x64_sys_openat` on x86_64); `Display` it.
    pub const fn kernel_function(&self) -> KernelFunction {
        KernelFunction(self.name)
    }
}

/// A syscall's kernel function name, [`KERNEL_FUNCTION_PREFIX`] + the syscall's name.
#[derive(Clone, Copy, Debug)]
pub struct KernelFunction(&'static str);

impl core::fmt::Display for KernelFunction {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{KERNEL_FUNCTION_PREFIX}{}", self.0)
    }
}

/// The syscall with this number, if traced.
pub fn by_nr(nr: u32) -> Option<&'static Syscall> {
    SYSCALLS.iter().find(|s| s.nr == nr)
}

/// The syscall with this name, if traced.
pub fn by_name(name: &str) -> Option<&'static Syscall> {
    SYSCALLS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use core::str::FromStr as _;

    use super::*;

    /// The kernel's name of a syscall whose `SYSCALL_DEFINE` name differs from its
    /// `__NR_*` name (libc's `SYS_*`, the syscalls crate's).
    fn uapi_name(name: &str) -> &str {
        match name {
            "umount" => "umount2",
            other => other,
        }
    }

    /// The table's numbers are typed by hand; the C library of the architecture the tests are
    /// built for is the reference (run for aarch64 under qemu-user by `cargo xtask test`).
    #[test]
    fn numbers_match_the_target_libc() {
        let reference: &[(&str, i64)] = &[
            ("execve", libc::SYS_execve),
            ("execveat", libc::SYS_execveat),
            ("clone", libc::SYS_clone),
            ("clone3", libc::SYS_clone3),
            ("exit_group", libc::SYS_exit_group),
            ("kill", libc::SYS_kill),
            ("tkill", libc::SYS_tkill),
            ("tgkill", libc::SYS_tgkill),
            ("chdir", libc::SYS_chdir),
            ("fchdir", libc::SYS_fchdir),
            ("openat", libc::SYS_openat),
            ("openat2", libc::SYS_openat2),
            ("unlinkat", libc::SYS_unlinkat),
            ("renameat2", libc::SYS_renameat2),
            ("linkat", libc::SYS_linkat),
            ("symlinkat", libc::SYS_symlinkat),
            ("fchmod", libc::SYS_fchmod),
            ("fchmodat", libc::SYS_fchmodat),
            ("fchownat", libc::SYS_fchownat),
            ("memfd_create", libc::SYS_memfd_create),
            ("socket", libc::SYS_socket),
            ("connect", libc::SYS_connect),
            ("bind", libc::SYS_bind),
            ("listen", libc::SYS_listen),
            ("accept", libc::SYS_accept),
            ("accept4", libc::SYS_accept4),
            ("sendto", libc::SYS_sendto),
            ("sendmsg", libc::SYS_sendmsg),
            ("sendmmsg", libc::SYS_sendmmsg),
            ("mmap", libc::SYS_mmap),
            ("mprotect", libc::SYS_mprotect),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("ptrace", libc::SYS_ptrace),
            ("setuid", libc::SYS_setuid),
            ("setgid", libc::SYS_setgid),
            ("setreuid", libc::SYS_setreuid),
            ("setregid", libc::SYS_setregid),
            ("setresuid", libc::SYS_setresuid),
            ("setresgid", libc::SYS_setresgid),
            ("capset", libc::SYS_capset),
            ("unshare", libc::SYS_unshare),
            ("setns", libc::SYS_setns),
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("init_module", libc::SYS_init_module),
            ("finit_module", libc::SYS_finit_module),
            ("delete_module", libc::SYS_delete_module),
            ("bpf", libc::SYS_bpf),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("dup", libc::SYS_dup),
            ("dup3", libc::SYS_dup3),
            ("fcntl", libc::SYS_fcntl),
            ("close", libc::SYS_close),
            // glibc's aarch64 constants in libc lack these two: the kernel table's test below
            // checks them there.
            #[cfg(syscall_abi = "x86_64")]
            ("renameat", libc::SYS_renameat),
            #[cfg(syscall_abi = "x86_64")]
            ("fchmodat2", libc::SYS_fchmodat2),
            // Only x86_64 has these.
            #[cfg(syscall_abi = "x86_64")]
            ("open", libc::SYS_open),
            #[cfg(syscall_abi = "x86_64")]
            ("creat", libc::SYS_creat),
            #[cfg(syscall_abi = "x86_64")]
            ("fork", libc::SYS_fork),
            #[cfg(syscall_abi = "x86_64")]
            ("vfork", libc::SYS_vfork),
            #[cfg(syscall_abi = "x86_64")]
            ("dup2", libc::SYS_dup2),
            #[cfg(syscall_abi = "x86_64")]
            ("unlink", libc::SYS_unlink),
            #[cfg(syscall_abi = "x86_64")]
            ("rename", libc::SYS_rename),
            #[cfg(syscall_abi = "x86_64")]
            ("link", libc::SYS_link),
            #[cfg(syscall_abi = "x86_64")]
            ("symlink", libc::SYS_symlink),
            #[cfg(syscall_abi = "x86_64")]
            ("chmod", libc::SYS_chmod),
            #[cfg(syscall_abi = "x86_64")]
            ("chown", libc::SYS_chown),
        ];
        let mut checked = 0;
        for sc in SYSCALLS {
            let Some((_, nr)) = reference.iter().find(|(n, _)| *n == uapi_name(sc.name)) else {
                continue;
            };
            assert_eq!(i64::from(sc.nr), *nr, "{}", sc.name);
            checked += 1;
        }
        let unchecked = if cfg!(syscall_abi = "aarch64") { 2 } else { 0 };
        assert_eq!(
            checked + unchecked,
            SYSCALLS.len(),
            "every table entry is checked"
        );
        assert_eq!(reference.len(), checked, "every reference is in the table");
    }

    /// The kernel's own table (the syscalls crate's, for the architecture built for) has
    /// every entry under its number, and none of [`LEGACY`] that this table leaves out.
    #[test]
    fn numbers_match_the_kernel_table() {
        for sc in SYSCALLS {
            let sysno = syscalls::Sysno::from_str(uapi_name(sc.name))
                .unwrap_or_else(|_| panic!("{} is not a syscall here", sc.name));
            assert_eq!(sysno.id(), sc.nr as i32, "{}", sc.name);
            assert_eq!(
                by_nr(sc.nr).map(|s| s.name),
                Some(sc.name),
                "numbers are unique"
            );
        }
        for name in LEGACY {
            let exists = syscalls::Sysno::from_str(name).is_ok();
            assert_eq!(by_name(name).is_some(), exists, "{name}");
            assert!(is_known(name));
        }
        assert!(!is_known("no_such_call"));
    }

    /// [`LEGACY`] is exactly what aarch64's generic table lacks of the x86_64 table: checked
    /// where the whole table is built.
    #[cfg(syscall_abi = "x86_64")]
    #[test]
    fn legacy_is_what_aarch64_lacks() {
        let mut lacking: Vec<&str> = SYSCALLS
            .iter()
            .map(|sc| sc.name)
            .filter(|name| syscalls::aarch64::Sysno::from_str(uapi_name(name)).is_err())
            .collect();
        let mut legacy = LEGACY.to_vec();
        lacking.sort_unstable();
        legacy.sort_unstable();
        assert_eq!(lacking, legacy);
    }

    #[test]
    fn kernel_functions_derive_from_the_table() {
        let openat = by_name("openat").unwrap().kernel_function().to_string();
        if cfg!(syscall_abi = "aarch64") {
            assert_eq!(openat, "__arm64_sys_openat");
        } else {
            assert_eq!(openat, "__x64_sys_openat");
        }
    }
}
