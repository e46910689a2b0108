//! The traced syscalls: one table that drives the kernel capture map, the kernel functions the
//! probes attach to, and the decoder.
//!
//! Numbers are the x86_64 ones (what the kernel saves in `orig_ax`, see [`crate::regs`]).
//! A unit test on the user side checks each against `libc::SYS_*`.

#[cfg(not(any(target_arch = "x86_64", target_arch = "bpf")))]
compile_error!("the syscall table only carries x86_64 numbers so far");

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
    /// The x86_64 syscall number.
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
    Syscall { executes: true, ..sc("execve", 59, Process, &[a("filename", Path), a("argv", Argv), a("envp", Ptr)]) },
    Syscall {
        executes: true,
        ..sc("execveat", 322, Process, &[
            a("dfd", DirFd), a("filename", Path), a("argv", Argv), a("envp", Ptr), a("flags", AtFlags),
        ])
    },
    forker(sc("clone", 56, Process, &[
        a("flags", CloneFlags), a("newsp", Ptr), a("parent_tid", Ptr), a("child_tid", Ptr), a("tls", Hex),
    ])),
    forker(sc("clone3", 435, Process, &[a("uargs", CloneArgs), a("size", Size)])),
    forker(sc("fork", 57, Process, &[])),
    forker(sc("vfork", 58, Process, &[])),
    Syscall { returns: false, ends_process: true, ..sc("exit_group", 231, Process, &[a("error_code", Int)]) },
    sc("kill", 62, Process, &[a("pid", Pid), a("sig", Signal)]),
    sc("tkill", 200, Process, &[a("pid", Pid), a("sig", Signal)]),
    sc("tgkill", 234, Process, &[a("tgid", Pid), a("pid", Pid), a("sig", Signal)]),
    with(Effect::ChangesCwd, sc("chdir", 80, Process, &[a("filename", Path)])),
    with(Effect::ChangesCwd, sc("fchdir", 81, Process, &[a("fd", Fd)])),
    // Files.
    opener(sc("open", 2, File, &[a("filename", Path), a("flags", OpenFlags), a("mode", Mode)])),
    opener(sc("openat", 257, File, &[a("dfd", DirFd), a("filename", Path), a("flags", OpenFlags), a("mode", Mode)])),
    opener(sc("openat2", 437, File, &[a("dfd", DirFd), a("filename", Path), a("how", OpenHow), a("usize", Size)])),
    with(Effect::Opens, sc("creat", 85, File, &[a("pathname", Path), a("mode", Mode)])),
    // Descriptors: what a directory fd or /proc/self/fd/N names later.
    with(Effect::DupsFd, sc("dup", 32, File, &[a("fildes", Fd)])),
    with(Effect::DupsFdTo, sc("dup2", 33, File, &[a("oldfd", Fd), a("newfd", Fd)])),
    with(Effect::DupsFdTo, sc("dup3", 292, File, &[a("oldfd", Fd), a("newfd", Fd), a("flags", OpenFlags)])),
    Syscall {
        only_if: Some((1, ArgTest::OneOf([F_DUPFD, F_DUPFD_CLOEXEC]))),
        ..with(Effect::DupsFd, sc("fcntl", 72, File, &[a("fd", Fd), a("cmd", FcntlCmd), a("arg", UInt)]))
    },
    Syscall { result: false, ..with(Effect::ClosesFd, sc("close", 3, File, &[a("fd", Fd)])) },
    with(Effect::Removes, sc("unlink", 87, File, &[a("pathname", Path)])),
    with(Effect::Removes, sc("unlinkat", 263, File, &[a("dfd", DirFd), a("pathname", Path), a("flag", AtFlags)])),
    with(Effect::Renames, sc("rename", 82, File, &[a("oldname", Path), a("newname", Path)])),
    with(Effect::Renames, sc("renameat", 264, File, &[
        a("olddfd", DirFd), a("oldname", Path), a("newdfd", DirFd), a("newname", Path),
    ])),
    with(Effect::Renames, sc("renameat2", 316, File, &[
        a("olddfd", DirFd), a("oldname", Path), a("newdfd", DirFd), a("newname", Path), a("flags", Hex),
    ])),
    with(Effect::Renames, sc("link", 86, File, &[a("oldname", Path), a("newname", Path)])),
    with(Effect::Renames, sc("linkat", 265, File, &[
        a("olddfd", DirFd), a("oldname", Path), a("newdfd", DirFd), a("newname", Path), a("flags", AtFlags),
    ])),
    with(Effect::Symlinks, sc("symlink", 88, File, &[a("oldname", Path), a("newname", Path)])),
    with(Effect::Symlinks, sc("symlinkat", 266, File, &[a("oldname", Path), a("newdfd", DirFd), a("newname", Path)])),
    sc("chmod", 90, File, &[a("filename", Path), a("mode", Mode)]),
    sc("fchmod", 91, File, &[a("fd", Fd), a("mode", Mode)]),
    sc("fchmodat", 268, File, &[a("dfd", DirFd), a("filename", Path), a("mode", Mode)]),
    sc("fchmodat2", 452, File, &[a("dfd", DirFd), a("filename", Path), a("mode", Mode), a("flags", AtFlags)]),
    sc("chown", 92, File, &[a("filename", Path), a("user", Id), a("group", Id)]),
    sc("fchownat", 260, File, &[
        a("dfd", DirFd), a("filename", Path), a("user", Id), a("group", Id), a("flag", AtFlags),
    ]),
    sc("memfd_create", 319, Memory, &[a("uname", Str), a("flags", Hex)]),
    // Network.
    sc("socket", 41, Network, &[a("family", AddressFamily), a("type", SockType), a("protocol", Int)]),
    sc("connect", 42, Network, &[a("fd", Fd), a("uservaddr", SockAddr), a("addrlen", Size)]),
    sc("bind", 49, Network, &[a("fd", Fd), a("umyaddr", SockAddr), a("addrlen", Size)]),
    sc("listen", 50, Network, &[a("fd", Fd), a("backlog", Int)]),
    sc("accept", 43, Network, &[a("fd", Fd), a("upeer_sockaddr", Ptr), a("upeer_addrlen", Ptr)]),
    sc("accept4", 288, Network, &[
        a("fd", Fd), a("upeer_sockaddr", Ptr), a("upeer_addrlen", Ptr), a("flags", Hex),
    ]),
    sc("sendto", 44, Network, &[
        a("fd", Fd), a("buff", Ptr), a("len", Size), a("flags", Hex), a("addr", SockAddr), a("addr_len", Size),
    ]),
    sc("sendmsg", 46, Network, &[a("fd", Fd), a("msg", Ptr), a("flags", Hex)]),
    sc("sendmmsg", 307, Network, &[a("fd", Fd), a("mmsg", Ptr), a("vlen", UInt), a("flags", Hex)]),
    // Memory.
    Syscall {
        only_if: Some((2, ArgTest::AnyBit(PROT_EXEC))),
        result: false,
        ..sc("mmap", 9, Memory, &[
            a("addr", Ptr), a("len", Size), a("prot", ProtFlags), a("flags", MapFlags), a("fd", Fd), a("off", Hex),
        ])
    },
    Syscall {
        only_if: Some((2, ArgTest::AnyBit(PROT_EXEC))),
        result: false,
        ..sc("mprotect", 10, Memory, &[a("start", Ptr), a("len", Size), a("prot", ProtFlags)])
    },
    sc("process_vm_readv", 310, Memory, &[
        a("pid", Pid), a("lvec", Ptr), a("liovcnt", UInt), a("rvec", Ptr), a("riovcnt", UInt), a("flags", Hex),
    ]),
    sc("process_vm_writev", 311, Memory, &[
        a("pid", Pid), a("lvec", Ptr), a("liovcnt", UInt), a("rvec", Ptr), a("riovcnt", UInt), a("flags", Hex),
    ]),
    sc("ptrace", 101, Privilege, &[a("request", PtraceRequest), a("pid", Pid), a("addr", Ptr), a("data", Ptr)]),
    // Privilege.
    sc("setuid", 105, Privilege, &[a("uid", Id)]),
    sc("setgid", 106, Privilege, &[a("gid", Id)]),
    sc("setreuid", 113, Privilege, &[a("ruid", Id), a("euid", Id)]),
    sc("setregid", 114, Privilege, &[a("rgid", Id), a("egid", Id)]),
    sc("setresuid", 117, Privilege, &[a("ruid", Id), a("euid", Id), a("suid", Id)]),
    sc("setresgid", 119, Privilege, &[a("rgid", Id), a("egid", Id), a("sgid", Id)]),
    sc("capset", 126, Privilege, &[a("header", Ptr), a("data", Ptr)]),
    sc("unshare", 272, Privilege, &[a("unshare_flags", CloneFlags)]),
    sc("setns", 308, Privilege, &[a("fd", Fd), a("flags", CloneFlags)]),
    // Kernel interfaces.
    sc("mount", 165, Kernel, &[
        a("dev_name", Str), a("dir_name", Path), a("type", Str), a("flags", MountFlags), a("data", Ptr),
    ]),
    sc("umount", 166, Kernel, &[a("name", Path), a("flags", Hex)]),
    sc("init_module", 175, Kernel, &[a("umod", Ptr), a("len", Size), a("uargs", Str)]),
    sc("finit_module", 313, Kernel, &[a("fd", Fd), a("uargs", Str), a("flags", Hex)]),
    sc("delete_module", 176, Kernel, &[a("name_user", Str), a("flags", Hex)]),
    sc("bpf", 321, Kernel, &[a("cmd", BpfCmd), a("uattr", Ptr), a("size", Size)]),
    sc("io_uring_setup", 425, Kernel, &[a("entries", UInt), a("params", Ptr)]),
];

/// Prefix of the x86_64 syscall functions (`__x64_sys_openat`): with syscall wrappers each
/// takes a pointer to the user's saved registers.
pub const KERNEL_FUNCTION_PREFIX: &str = "__x64_sys_";

impl Syscall {
    /// The kernel function the probes attach to (`__x64_sys_openat`); `Display` it.
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

/// The syscall with this x86_64 number, if traced.
pub fn by_nr(nr: u32) -> Option<&'static Syscall> {
    SYSCALLS.iter().find(|s| s.nr == nr)
}

/// The syscall with this name, if traced.
pub fn by_name(name: &str) -> Option<&'static Syscall> {
    SYSCALLS.iter().find(|s| s.name == name)
}
