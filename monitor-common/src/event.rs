//! The records the kernel programs write into the `EVENTS` ring buffer.
//!
//! Every record starts with an [`EventHeader`] whose `kind` says which struct follows. All
//! structs are `#[repr(C)]`, 8-byte aligned, and free of padding the compiler could leave
//! uninitialised (explicit `_pad` fields), so user space can read them as plain bytes.
//!
//! [`SyscallRecord`] is the only variable-size record: the kernel builds it in per-CPU scratch
//! space and copies out only `SyscallRecord::FIXED_LEN + data_len` bytes.
//!
//! A syscall that returns is one record, written at its exit ([`EventKind::Syscall`]): its
//! entry's record (arguments and the user memory they point to, read at entry) waits in the
//! kernel's `PENDING` array, in its thread's slot, until the exit adds the result. Written at entry
//! instead, as an entry record followed by an exit record: a syscall that does not return
//! (exit_group; a successful execve, whose exit is in the new image), one whose entry a
//! kill policy killed, one whose user memory could not be read at entry, and any entry the
//! slot held by another thread (counted: [`Counter::CallsApart`]). User space pairs those as before.

#[cfg(feature = "user")]
mod user;

/// Which record follows the header.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A syscall's entry alone, a [`SyscallRecord`] (its exit, if any, comes apart).
    SyscallEnter = 1,
    /// A syscall's return alone, a [`SyscallExit`] (its entry came apart).
    SyscallExit = 2,
    ProcessFork = 3,
    ProcessExec = 4,
    ProcessExit = 5,
    /// A syscall that returned, entry and exit in one [`SyscallRecord`].
    Syscall = 6,
}

impl EventKind {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => EventKind::SyscallEnter,
            2 => EventKind::SyscallExit,
            3 => EventKind::ProcessFork,
            4 => EventKind::ProcessExec,
            5 => EventKind::ProcessExit,
            6 => EventKind::Syscall,
            _ => return None,
        })
    }
}

/// The `EVENTS` ring buffer's size when nobody says otherwise: 16 MiB.
pub const RING_BUFFER_DEFAULT_BYTES: u32 = 16 << 20;
/// The smallest ring buffer user space asks for: one 4 KiB page.
pub const RING_BUFFER_MIN_BYTES: u32 = 4 << 10;
/// The largest ring buffer user space asks for: 1 GiB.
pub const RING_BUFFER_MAX_BYTES: u32 = 1 << 30;
/// [`RING_BUFFER_DEFAULT_BYTES`] in KiB, the unit of settings and command lines.
pub const RING_BUFFER_DEFAULT_KIB: u32 = RING_BUFFER_DEFAULT_BYTES >> 10;

/// Whether a ring buffer of `bytes` can be asked for: a power of two between
/// [`RING_BUFFER_MIN_BYTES`] and [`RING_BUFFER_MAX_BYTES`] (the kernel wants a power-of-two
/// number of pages; with 4 KiB pages, that is this).
pub const fn ring_buffer_bytes_ok(bytes: u32) -> bool {
    bytes.is_power_of_two() && bytes >= RING_BUFFER_MIN_BYTES && bytes <= RING_BUFFER_MAX_BYTES
}

/// The ring buffer's size in bytes for a size in KiB (settings, command lines), when
/// [`ring_buffer_bytes_ok`].
pub const fn ring_buffer_kib(kib: u32) -> Option<u32> {
    match kib.checked_mul(1024) {
        Some(bytes) if ring_buffer_bytes_ok(bytes) => Some(bytes),
        _ => None,
    }
}

/// What [`ring_buffer_kib`] takes, said for an error message.
pub const RING_BUFFER_KIB_RULE: &str = "a power of two from 4 to 1048576 (KiB)";

/// Length of `comm` (the kernel's TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Common to every record: who did it, when, and in which cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// The CPU the record was written on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, in nanoseconds.
    pub ktime_ns: u64,
    /// The cgroup v2 id (inode number of the cgroup directory) of the task.
    pub cgroup_id: u64,
    /// The [`Watch::id`] that selected the task: which job the record belongs to.
    pub watch_id: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Header flag: some captured data was cut at its bound.
pub const FLAG_TRUNCATED: u16 = 1 << 0;
/// Header flag: a read of user or kernel memory failed (bad pointer, page not present).
pub const FLAG_READ_ERROR: u16 = 1 << 1;
/// Header flag (entry records): captured again at the syscall's exit because reading user
/// memory failed at entry. Its data is what the memory held at exit.
pub const FLAG_RECAPTURED: u16 = 1 << 2;
/// Header flag: the watch's policy killed the task in the kernel, at this syscall's entry
/// (entry records), or at the exec that this record reports, once the kernel had the program
/// and before its first instruction (exec records).
pub const FLAG_KILLED: u16 = 1 << 3;

/// Bytes of variable data a [`SyscallEnter`] can carry. Every item starts below
/// [`ITEM_START_MAX`] and is at most that long, so the sum stays in bounds.
pub const DATA_MAX: usize = 8192;
/// Items (strings, blob, argv entries) start below this offset in `data`.
pub const ITEM_START_MAX: usize = DATA_MAX / 2;
/// Longest string captured (PATH_MAX, including the NUL).
pub const STR_MAX: usize = 4096;
/// String arguments per syscall (mount has three).
pub const STR_SLOTS: usize = 3;
/// Longest sized buffer captured (a `sockaddr_storage`).
pub const BLOB_MAX: usize = 128;
/// Most argv entries captured.
pub const ARGV_MAX: usize = 32;
/// Longest single argv entry captured.
pub const ARG_MAX: usize = 1024;

/// A traced syscall: raw arguments plus the user memory they point to, read at its entry, and,
/// in a record of kind [`EventKind::Syscall`], what it returned ([`SyscallRecord::exit`]).
///
/// `data` holds, in this order and without gaps: each string slot that was filled (NUL
/// included), the blob, then the argv entries (each NUL-terminated). The lengths say where
/// each ends. `DATA` is `data`'s capacity: [`DATA_MAX`] in the ring buffer and the per-CPU
/// scratch space, and [`PENDING_DATA_MAX`] (as much) for a call waiting for its exit
/// ([`PendingCall`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallRecord<const DATA: usize = DATA_MAX> {
    pub header: EventHeader,
    /// The syscall number (of the architecture built for).
    pub nr: u32,
    /// Bytes used in `data`.
    pub data_len: u32,
    pub args: [u64; 6],
    /// Bytes of each string slot in `data`, NUL included; 0 when unused or unreadable.
    pub str_len: [u16; STR_SLOTS],
    pub blob_len: u16,
    /// Bytes of argv entries in `data`.
    pub argv_len: u16,
    /// Entries captured in argv.
    pub argc: u16,
    pub _pad: [u16; 2],
    /// Its return, in a record of kind [`EventKind::Syscall`]; zero in an entry record.
    pub exit: SyscallReturn,
    pub data: [u8; DATA],
}

impl<const DATA: usize> SyscallRecord<DATA> {
    /// Bytes before `data`: what every syscall record carries.
    pub const FIXED_LEN: usize = core::mem::offset_of!(Self, data);
}

/// A syscall's entry record as the ring buffer and the scratch space hold it.
pub type SyscallEnter = SyscallRecord<DATA_MAX>;

/// Bytes of `data` a call waiting for its exit has room for: as much as any entry record, so
/// that it is built where it waits, with the same bounds, never built again elsewhere.
pub const PENDING_DATA_MAX: usize = DATA_MAX;

/// A syscall's entry waiting for its exit, in its thread's slot of the kernel's `PENDING`
/// array, where it is built.
pub type PendingCall = SyscallRecord<PENDING_DATA_MAX>;

/// Slots of the `PENDING` array, one per thread id modulo this (threads of watched processes
/// inside a syscall whose entry waits for its exit). A thread whose slot another holds writes
/// its entry at once, its exit apart: nothing is lost, each such call costs two records
/// ([`Counter::CallsApart`]).
pub const PENDING_CALLS: u32 = 1024;

const _: () = assert!(PendingCall::FIXED_LEN == SyscallEnter::FIXED_LEN);
const _: () = assert!(PENDING_DATA_MAX.is_power_of_two() && PENDING_DATA_MAX <= DATA_MAX);

/// What a syscall returned, in the record that carries its entry too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallReturn {
    /// When it returned: `bpf_ktime_get_ns`, as [`EventHeader::ktime_ns`].
    pub ktime_ns: u64,
    pub ret: i64,
    /// The opened file's inode number and device, as in [`SyscallExit`].
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// A traced syscall's return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallExit {
    pub header: EventHeader,
    pub nr: u32,
    /// For a syscall that opened a file (`Effect::Opens`) and succeeded: the device of the
    /// file's super block, in the kernel's encoding (major << 20 | minor); else 0.
    pub dev: u32,
    pub ret: i64,
    /// The opened file's inode number, with `dev`; 0 when not read.
    pub ino: u64,
}

/// A task was created (`sched:sched_process_fork`); the header is the parent's.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessFork {
    pub header: EventHeader,
    /// The new task's thread id. A new thread or a new process: user space tells them apart
    /// by the tgid of the child's own records.
    pub child_tid: u32,
    pub _pad: u32,
}

/// Longest exec filename captured.
pub const EXEC_FILENAME_MAX: usize = 512;

/// A task executed a new program (`sched:sched_process_exec`); the header is already the new
/// program's (its comm).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessExec {
    pub header: EventHeader,
    /// The thread id before exec (differs when a non-leader thread executes).
    pub old_tid: u32,
    /// Bytes of `filename`, NUL included.
    pub filename_len: u32,
    pub filename: [u8; EXEC_FILENAME_MAX],
}

/// A task exited (`sched:sched_process_exit`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessExit {
    pub header: EventHeader,
    /// Whether this was the last task of its thread group.
    pub group_dead: u8,
    pub _pad: [u8; 3],
    /// The task's exit code as the kernel keeps it (`task->exit_code`): the status shifted
    /// left by 8 for an exit, or the signal that killed it in the low 7 bits (0x80 when it
    /// dumped core). 0 where the kernel's layout was not found.
    pub exit_code: u32,
}

impl ProcessExit {
    /// The signal that killed the task, from a kernel exit code.
    pub fn signal_of(exit_code: u32) -> Option<u8> {
        match (exit_code & 0x7f) as u8 {
            0 => None,
            signal => Some(signal),
        }
    }
}

/// Per-CPU counters of the kernel programs, indexes into the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records written to the ring buffer.
    Events = 0,
    /// Records lost because the ring buffer was full.
    Dropped = 1,
    /// Reads of user or kernel memory that failed.
    ReadErrors = 2,
    /// Processes that a watch following forks could not add to `WATCHED_TASKS` (full).
    TasksFull = 3,
    /// Processes that discovery started watching.
    Discovered = 4,
    /// Cgroups and processes the kernel added to a watch itself: a cgroup made under a
    /// watched one, a process that executed a watched executable.
    Followed = 5,
    /// Cgroups made under a watched one that `WATCHED` had no room for.
    CgroupsFull = 6,
    /// Syscalls written as two records (entry, then exit) because their thread's slot of
    /// `PENDING` was held by another thread (their ids collide modulo
    /// [`PENDING_CALLS`]): nothing lost, but a flood of blocked calls shows here.
    CallsApart = 7,
}

/// How many [`Counter`]s there are.
pub const COUNTERS: u32 = Counter::CallsApart as u32 + 1;

impl Counter {
    /// Every counter, in the order of their indexes.
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::Events,
        Counter::Dropped,
        Counter::ReadErrors,
        Counter::TasksFull,
        Counter::Discovered,
        Counter::Followed,
        Counter::CgroupsFull,
        Counter::CallsApart,
    ];

    /// Its name in status reports.
    pub const fn key(self) -> &'static str {
        match self {
            Counter::Events => "events",
            Counter::Dropped => "dropped",
            Counter::ReadErrors => "read_errors",
            Counter::TasksFull => "tasks_full",
            Counter::Discovered => "discovered",
            Counter::Followed => "followed",
            Counter::CgroupsFull => "cgroups_full",
            Counter::CallsApart => "calls_apart",
        }
    }

    /// Its metric's name (after the `monitor_` prefix), and what the metric says.
    pub const fn metric(self) -> (&'static str, &'static str) {
        match self {
            Counter::Events => (
                "kernel_records",
                "Records the kernel programs wrote to the ring buffer",
            ),
            Counter::Dropped => (
                "kernel_records_dropped",
                "Records the kernel programs lost to a full ring buffer (every job's)",
            ),
            Counter::ReadErrors => (
                "kernel_read_errors",
                "Failed reads of user or kernel memory in the probes (the record is flagged)",
            ),
            Counter::TasksFull => (
                "kernel_tasks_full",
                "Processes a watch could not follow because the tasks map was full",
            ),
            Counter::Discovered => (
                "kernel_discovered",
                "Processes discovery started watching, in the kernel",
            ),
            Counter::Followed => (
                "kernel_followed",
                "Cgroups and processes the kernel added to a watch itself",
            ),
            Counter::CgroupsFull => (
                "kernel_cgroups_full",
                "Cgroups under a watched one the kernel had no room to watch",
            ),
            Counter::CallsApart => (
                "kernel_calls_apart",
                "Syscalls written as entry and exit records because their thread's slot for \
                 calls waiting for their exit was held by another thread",
            ),
        }
    }
}

/// What selects a task for recording: the value of the `WATCHED` map (keyed by cgroup id) and
/// of the `WATCHED_TASKS` map (keyed by process id). What the kernel does to the task is the
/// watch's [`KillPolicy`], apart, so that it can change while the watch stands.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    /// Which watch this is: every record it selects carries this in
    /// [`EventHeader::watch_id`], its counters are `WATCH_COUNTS[id]` and its kill policy
    /// `KILL_POLICIES[id]`.
    pub id: u64,
    /// `WATCH_*` bits.
    pub flags: u64,
}

/// Watch flag: the processes a watched task starts are watched too, wherever they go (a
/// watch of a process rather than of a cgroup, whose children inherit the cgroup anyway).
pub const WATCH_FOLLOW_FORKS: u64 = 1 << 0;

/// What a watch kills in the kernel: the value of the `KILL_POLICIES` map, by watch id.
///
/// A syscall of `kill` is killed at its entry (`bpf_send_signal(SIGKILL)`), before it
/// returns to user space. An exec (a syscall the table marks `executes`) is killed later, at
/// `sched_process_exec`, once the kernel has the program and before its first instruction,
/// unless the watch allows that program (`EXEC_ALLOWED`): so a failed attempt (a `PATH`
/// search) kills nothing, and a learned service keeps running its own programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillPolicy {
    /// Syscall numbers, as a bitmap: bit `nr % 64` of word `nr / 64`.
    pub kill: [u64; KILL_WORDS],
}

/// Words of [`KillPolicy::kill`]: one bit for each syscall number below [`CAPTURE_ENTRIES`].
pub const KILL_WORDS: usize = CAPTURE_ENTRIES as usize / 64;

impl KillPolicy {
    /// Whether entering syscall `nr` kills the task.
    pub const fn kills(&self, nr: u32) -> bool {
        let word = (nr / 64) as usize;
        word < KILL_WORDS && self.kill[word] & (1 << (nr % 64)) != 0
    }

    /// Makes entering syscall `nr` kill the task.
    pub fn kill_at(&mut self, nr: u32) {
        let word = (nr / 64) as usize;
        if word < KILL_WORDS {
            self.kill[word] |= 1 << (nr % 64);
        }
    }

    /// Whether it kills nothing.
    pub fn is_empty(&self) -> bool {
        self.kill.iter().all(|w| *w == 0)
    }
}

/// A key of the `EXEC_ALLOWED` map: a program that watch `watch_id` lets its processes
/// execute although it kills execs in the kernel, by the path the exec names (as
/// `sched_process_exec` gives it).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub watch_id: u64,
    pub path: PathKey,
}

/// One watch's counters (per CPU, in `WATCH_COUNTS`), so a job knows whether its own trace is
/// complete.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchCounts {
    /// Records written for this watch.
    pub events: u64,
    /// Records of this watch lost to a full ring buffer.
    pub dropped: u64,
    /// Tasks killed in the kernel by this watch's policy.
    pub killed: u64,
}

/// Longest path suffix that discovery matches (".safetensors" fits).
pub const SUFFIX_MAX: usize = 16;
/// Most suffixes discovery matches.
pub const SUFFIXES: usize = 16;
/// Bytes of an opened path that discovery reads (the suffix must lie within them).
pub const DISCOVERY_PATH_MAX: usize = 256;

/// The bit of [`Discovery::tails`] that a path ending in bytes `a`, `b`, `c` (lower case)
/// tests. Chosen so that the default suffixes share no bit with the endings most opened on a
/// host (`.py`, `pyc`, `.so`, `txt`, `son`, `.js`, `.db`, `xml`, ...).
pub const fn tail_bit(a: u8, b: u8, c: u8) -> usize {
    (c ^ b.wrapping_mul(3) ^ a.wrapping_mul(3)) as usize
}

/// The only entry of the `DISCOVERY` map: any process on the host that opens a file whose name
/// ends in one of `suffixes` starts being watched with `watch`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Discovery {
    /// Non-zero when discovery is on.
    pub enabled: u32,
    /// Suffixes in use.
    pub count: u32,
    /// A process never discovered: the daemon's own (its format detection and its reads of
    /// what a discovered process opened open model-named files too).
    pub exempt_tgid: u32,
    pub _pad: u32,
    /// What a discovered process is watched with (`WATCH_FOLLOW_FORKS` is implied).
    pub watch: Watch,
    /// Which three-byte endings the suffixes have: bit [`tail_bit`] of the last three bytes
    /// (lower case) is set for each, so that most paths are ruled out by their end alone (a
    /// `.txt` by `txt`, where its last byte would pass for `.pt`'s, a `.py` where its last
    /// two would pass for `.npy`'s).
    pub tails: [u64; 4],
    /// Bytes of each suffix.
    pub len: [u8; SUFFIXES],
    /// Lower-case ASCII; a path matches whatever the case of its letters.
    pub suffix: [[u8; SUFFIX_MAX]; SUFFIXES],
}

/// Bytes of a [`PathKey`], its NUL padding included.
pub const PATH_KEY_MAX: usize = 256;

/// A path as the kernel's maps key it: the bytes, then NULs up to [`PATH_KEY_MAX`] (so equal
/// paths are equal keys). Keys of `WATCHED_CGROUP_PATHS` are cgroup paths under the cgroup2
/// root as the cgroup tracepoints write them (`/`, `/system.slice/x.service`); keys of
/// `WATCHED_EXES` are executables' paths as `execve` was given them after `PATH` lookup
/// (`/usr/bin/python3`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathKey {
    pub bytes: [u8; PATH_KEY_MAX],
}

impl PathKey {
    /// The key of `path`: `None` when it is too long for a key (at least
    /// [`PATH_KEY_MAX`] bytes) or holds a NUL.
    pub fn new(path: &[u8]) -> Option<Self> {
        if path.len() >= PATH_KEY_MAX || path.contains(&0) {
            return None;
        }
        let mut bytes = [0; PATH_KEY_MAX];
        bytes[..path.len()].copy_from_slice(path);
        Some(PathKey { bytes })
    }
}

/// Value of the `CAPTURE` map, indexed by syscall number: what to copy at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Non-zero when the syscall is traced.
    pub enabled: u8,
    /// Emit the exit record too.
    pub exit: u8,
    /// Index of the argument tested by `only_if_mask`, when that mask is non-zero.
    pub only_if_arg: u8,
    /// 1 + the index of the path argument that discovery looks at (the syscall opens a
    /// file); 0 when discovery ignores the syscall.
    pub discover_arg: u8,
    /// One [`crate::syscall::Capture`] per argument.
    pub args: [u8; 6],
    /// 1 + the index of the open flags argument, when discovery looks at the syscall and its
    /// flags are an argument (not behind a pointer, as openat2's are); else 0. An open that
    /// [`open_reads_nothing`] loads no model, so discovery does not read its path.
    pub discover_flags_arg: u8,
    /// Non-zero when a successful return is a descriptor of the file the syscall opened: the
    /// exit record carries that file's device and inode.
    pub exit_file: u8,
    /// How `only_if_values` test argument `only_if_arg`: one of the `ONLY_IF_*`.
    pub only_if: u8,
    /// Non-zero for a syscall that executes a program: a kill policy kills it at the exec,
    /// not at its entry (see [`KillPolicy`]).
    pub executes: u8,
    /// Non-zero when its entry's record waits for its exit in `PENDING`, to be written with
    /// the result as one record (see [`EventKind::Syscall`]).
    pub waits: u8,
    pub _pad: u8,
    /// [`ONLY_IF_ANY_BIT`]: the mask (the first value); [`ONLY_IF_ONE_OF`]: the values.
    pub only_if_values: [u64; 2],
}

/// [`CaptureSpec::only_if`]: every entry is traced.
pub const ONLY_IF_NONE: u8 = 0;
/// [`CaptureSpec::only_if`]: traced when the argument has a bit of `only_if_values[0]`.
pub const ONLY_IF_ANY_BIT: u8 = 1;
/// [`CaptureSpec::only_if`]: traced when the argument is one of `only_if_values`.
pub const ONLY_IF_ONE_OF: u8 = 2;

/// Where the kernel keeps what leads from the current task to the file behind one of its
/// descriptors (`task->files->fdt->fd[n]->f_inode`, then `i_ino` and `i_sb->s_dev`), on this
/// kernel: byte offsets read from its BTF by user space and written into the programs'
/// read-only data before load. All zero when they were not found: exit records then carry no
/// file identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
}

/// Whether an open with these flags reads nothing of a file: for writing only (`O_ACCMODE` is
/// `O_WRONLY`), of a directory (`O_DIRECTORY`) or of a path alone (`O_PATH`). Such an open
/// loads no model: the kernel's discovery does not read its path, the daemon not its file.
#[inline(always)]
pub const fn open_reads_nothing(flags: u64) -> bool {
    const O_ACCMODE: u64 = 0o3;
    const O_WRONLY: u64 = 0o1;
    const O_DIRECTORY: u64 = 0o200000;
    const O_PATH: u64 = 0o10000000;
    flags & O_ACCMODE == O_WRONLY || flags & (O_DIRECTORY | O_PATH) != 0
}

/// Highest syscall number + 1 that the `CAPTURE` map covers.
pub const CAPTURE_ENTRIES: u32 = 512;

/// Where the tracepoint fields sit on this kernel, read from tracefs `format` files by user
/// space and written into the programs' read-only data before load. (Syscall kprobes read
/// the registers instead, see [`crate::regs`]; the syscall fields serve the tracepoint
/// fallback.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracepointOffsets {
    /// `syscalls:sys_enter_*`: `__syscall_nr` and the first argument (each argument 8 bytes).
    pub enter_nr: u16,
    pub enter_args: u16,
    /// `syscalls:sys_exit_*`: `__syscall_nr` and `ret`.
    pub exit_nr: u16,
    pub exit_ret: u16,
    /// `sched:sched_process_fork`: `child_pid`.
    pub fork_child_pid: u16,
    /// `sched:sched_process_exec`: the `__data_loc` word of `filename`, and `old_pid`.
    pub exec_filename_loc: u16,
    pub exec_old_pid: u16,
    /// `sched:sched_process_exit`: `group_dead`, or `u16::MAX` where the kernel lacks it.
    pub exit_group_dead: u16,
    /// `cgroup:cgroup_mkdir` and `cgroup_rmdir` (one layout): `root` (the hierarchy; cgroup2's
    /// is 0), `id`, and the `__data_loc` word of `path`.
    pub cgroup_root: u16,
    pub cgroup_id: u16,
    pub cgroup_path_loc: u16,
    pub _pad: u16,
}

/// Where `syscalls:sys_enter_*` records hold `__syscall_nr` and the first argument, and
/// `sys_exit_*` records `__syscall_nr` and `ret`, on the kernels this was checked on (x86-64
/// up to 6.18: the 8-byte common header, the number, then 8-byte slots). When the offsets read
/// at load time are these, the kernel programs load the fields straight from the record: the
/// verifier allows that only at offsets fixed in the instruction, not at [`TracepointOffsets`]'
/// (known only at load time). Other layouts are copied field by field with a helper call,
/// which costs about 15 ns a field (see docs/benchmarks.md, discovery).
pub const USUAL_SYSCALL_NR: u16 = 8;
pub const USUAL_SYSCALL_ARGS: u16 = 16;

/// The kernel programs commit records without waking the reader, and wake it (forced) only
/// for the first record after this long a quiet spell, or when the ring buffer holds more than
/// its wake-up threshold. One wake-up per record was the largest cost to a watched process.
pub const WAKEUP_INTERVAL_NS: u64 = 1_000_000;

/// Records committed without a wake-up arrive at most [`WAKEUP_INTERVAL_NS`] after a forced
/// one, so a reader that looks again this long after finding records never leaves one behind
/// (the margin covers the time between a program's decision and its commit).
pub const READER_RECHECK_NS: u64 = 2 * WAKEUP_INTERVAL_NS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes_are_powers_of_two_within_the_bounds() {
        assert!(ring_buffer_bytes_ok(RING_BUFFER_DEFAULT_BYTES));
        assert_eq!(
            ring_buffer_kib(RING_BUFFER_DEFAULT_KIB),
            Some(RING_BUFFER_DEFAULT_BYTES)
        );
        assert_eq!(ring_buffer_kib(4), Some(4096));
        assert_eq!(ring_buffer_kib(1 << 20), Some(1 << 30));
        for bad in [0, 1, 2, 3, 6, 12, 1000, 2 << 20, u32::MAX, 1 << 22] {
            assert_eq!(ring_buffer_kib(bad), None, "{bad} KiB");
        }
    }

    #[test]
    fn every_counter_is_listed_once_at_its_index_with_its_own_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for other in &Counter::ALL[..i] {
                assert_ne!(c.key(), other.key());
                assert_ne!(c.metric().0, other.metric().0);
            }
            assert!(c.metric().0.starts_with("kernel_"));
        }
        assert_eq!(Counter::ALL.len(), COUNTERS as usize);
    }

    #[test]
    fn an_exit_code_names_the_signal_that_killed_and_no_signal_for_an_exit() {
        const SIGSYS: u32 = 31;
        assert_eq!(ProcessExit::signal_of(SIGSYS), Some(31));
        // Core dumped: the 0x80 bit.
        assert_eq!(ProcessExit::signal_of(0x80 | SIGSYS), Some(31));
        // exit(1), exit(0), and no code known.
        assert_eq!(ProcessExit::signal_of(1 << 8), None);
        assert_eq!(ProcessExit::signal_of(0), None);
    }
}
