//! monitor's kernel programs.
//!
//! Every program starts with the same test: is the current task's cgroup in `WATCHED`, or its
//! process in `WATCHED_TASKS`? If not, it returns at once, so unwatched processes pay two hash
//! lookups on the traced syscalls and nothing on the others (plus, while discovery is on, a
//! read of the path of the files they open). Watched tasks' records go to the `EVENTS` ring
//! buffer, each marked with the id of the watch that selected it; a full buffer is counted
//! (per CPU and per watch), never silent. A watch's policy may kill a task at the entry of
//! the syscalls it names.
//!
//! Programs:
//! - `sys_enter` / `sys_exit`: a kprobe and a kretprobe on the kernel function of every
//!   syscall of `monitor_common::syscall::SYSCALLS` (`__x64_sys_<name>`, `__arm64_sys_<name>`:
//!   the architecture monitor-engine is built for, see its build.rs). Where the kernel
//!   has no kprobes, `sys_enter_tp` / `sys_exit_tp` on `syscalls:sys_enter_<name>` /
//!   `sys_exit_<name>` instead (see `hooks`), with `sys_enter_open_tp` in place of
//!   `sys_enter_tp` on the syscalls that open a named file, the only ones discovery looks at.
//!   All share the capture; what to copy is read from the `CAPTURE` map that user space
//!   fills from that table.
//! - `sched_process_fork`, `sched_process_exec`, `sched_process_exit`: the process tree
//!   (tracepoints, which flag no task); an exec of a watched executable starts its watch,
//!   and an exec a watch's policy kills is killed there (see `kill`).
//! - `cgroup_mkdir`, `cgroup_rmdir`: cgroups made under a watched one are watched (see
//!   `follow`).
#![no_std]
#![no_main]
// `atomic_cxchg`: the compare-and-swap that takes a pending slot (see `pending`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod capture;
mod context;
mod discover;
mod file;
mod follow;
mod hooks;
mod kill;
mod pending;
mod ring;
mod task;

use aya_ebpf::{
    EbpfContext,
    macros::{kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use monitor_common::event::{
    CAPTURE_ENTRIES, COUNTERS as COUNTER_SLOTS, CaptureSpec, Counter, Discovery, EventKind,
    ExecKey, FLAG_KILLED, FileOffsets, KillPolicy, PENDING_CALLS, PathKey, ProcessExec,
    ProcessExit, ProcessFork, SyscallEnter, SyscallExit, TracepointOffsets, Watch, WatchCounts,
    open_reads_nothing,
};

use crate::{
    context::{Watched, count, fill_header, offsets},
    ring::commit_flags,
};

/// Default ring buffer size; user space may change it before load.
const EVENTS_BYTES: u32 = monitor_common::event::RING_BUFFER_DEFAULT_BYTES;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Watches by cgroup id: every task of the cgroup is recorded.
#[map]
static WATCHED: HashMap<u64, Watch> = HashMap::with_max_entries(4096, 0);

/// Watches by process id: watched processes outside a watched cgroup (a pid watch, discovery)
/// and, for watches that follow forks, every process they start. Not an LRU: a watched process
/// must never be forgotten to make room.
#[map]
static WATCHED_TASKS: HashMap<u32, Watch> = HashMap::with_max_entries(65536, 0);

/// Cgroup watches that take in the cgroups made under them, by cgroup path (the
/// `cgroup_mkdir` tracepoint gives the new cgroup's path, not its parent's id).
#[map]
static WATCHED_CGROUP_PATHS: HashMap<PathKey, Watch> = HashMap::with_max_entries(4096, 0);

/// Executable watches, by the path a process executes: it is then watched as by pid.
#[map]
static WATCHED_EXES: HashMap<PathKey, Watch> = HashMap::with_max_entries(256, 0);

/// Per-CPU space for a path key (too large for the stack).
#[map]
static FOLLOW_SCRATCH: PerCpuArray<PathKey> = PerCpuArray::with_max_entries(1, 0);

/// Each watch's kill policy, by watch id (none: it kills nothing).
#[map]
static KILL_POLICIES: HashMap<u64, KillPolicy> = HashMap::with_max_entries(8192, 0);

/// Programs a watch lets its processes execute although its policy kills execs.
#[map]
static EXEC_ALLOWED: HashMap<ExecKey, u8> = HashMap::with_max_entries(16384, 0);

/// Execs to kill at `sched_process_exec` unless their program is allowed: the watch, by the
/// id of the thread that entered the exec.
#[map]
static PENDING_EXEC_KILLS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU space for an exec key (too large for the stack).
#[map]
static EXEC_KEY_SCRATCH: PerCpuArray<ExecKey> = PerCpuArray::with_max_entries(1, 0);

/// Each watch's counters, by watch id.
#[map]
static WATCH_COUNTS: PerCpuHashMap<u64, WatchCounts> = PerCpuHashMap::with_max_entries(8192, 0);

/// Discovery's settings (one entry).
#[map]
static DISCOVERY: Array<Discovery> = Array::with_max_entries(1, 0);

#[map]
static DISCOVERY_SCRATCH: PerCpuArray<discover::Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CAPTURE: Array<CaptureSpec> = Array::with_max_entries(CAPTURE_ENTRIES, 0);

/// Per-CPU space to build a variable-size entry record (too large for the 512-byte stack).
#[map]
static SCRATCH: PerCpuArray<SyscallEnter> = PerCpuArray::with_max_entries(1, 0);

/// Syscall entries waiting for their exit, each in its thread's slot (`tid % PENDING_CALLS`),
/// to be written with it as one record (see `pending`). A slot another thread holds makes
/// the entry be written at once (counted), never the other call forgotten; a task's slot is
/// freed at its exit. Each slot has room for a whole entry record (8.4 KB; 8.6 MB in all).
#[map]
static PENDING: Array<pending::PendingSlot> = Array::with_max_entries(PENDING_CALLS, 0);

/// Entries whose user memory could not be read, by thread id, to capture again at exit.
#[map]
static RETRY: LruHashMap<u32, capture::Retry> = LruHashMap::with_max_entries(16384, 0);

/// Threads inside a filtered syscall whose entry was recorded (thread id -> syscall number),
/// so that its exit is recorded too and no other (see `capture::exit_wanted`).
#[map]
static ENTERED: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// When the reader was last woken (`bpf_ktime_get_ns`), shared by all CPUs: see `ring`.
#[map]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Pending bytes above which a record wakes the reader at once, written by user space before
/// load (a fraction of the ring buffer's size).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 8;

/// Where the file behind a descriptor is found on the running kernel, written by user space
/// before load (all zero: not found).
#[unsafe(no_mangle)]
static FILE_OFFSETS: FileOffsets = FileOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
};

/// Where `task_struct` keeps `exit_code` on the running kernel, written by user space before
/// load (0: not found, and exits carry no code).
#[unsafe(no_mangle)]
static TASK_EXIT_CODE: u32 = 0;

/// Tracepoint field offsets of the running kernel, written by user space before load.
#[unsafe(no_mangle)]
static TP_OFFSETS: TracepointOffsets = TracepointOffsets {
    enter_nr: 0,
    enter_args: 0,
    exit_nr: 0,
    exit_ret: 0,
    fork_child_pid: 0,
    exec_filename_loc: 0,
    exec_old_pid: 0,
    exit_group_dead: u16::MAX,
    cgroup_root: 0,
    cgroup_id: 0,
    cgroup_path_loc: 0,
    _pad: 0,
};

#[kprobe]
pub fn sys_enter(ctx: ProbeContext) -> u32 {
    let watch = Watched::current();
    if watch.is_none() && discover::settings().is_none() {
        return 0;
    }
    if let Ok((nr, args)) = hooks::kprobe_entry(&ctx) {
        let discovered = || discovered(|settings| discover_at_enter(settings, nr, |i| Ok(args[i])));
        if let Some(watch) = watch.or_else(discovered) {
            capture::syscall_enter(watch, nr, args);
        }
    }
    0
}

#[kretprobe]
pub fn sys_exit(ctx: RetProbeContext) -> u32 {
    if let Some(watch) = Watched::current()
        && let Ok((nr, ret)) = hooks::kretprobe_exit(&ctx)
    {
        let _ = syscall_exit(watch, nr, ret);
    }
    0
}

#[tracepoint]
pub fn sys_enter_tp(ctx: TracePointContext) -> u32 {
    if let Some(watch) = Watched::current()
        && let Ok((nr, args)) = hooks::tracepoint_entry(&ctx)
    {
        capture::syscall_enter(watch, nr, args);
    }
    0
}

/// `sys_enter_tp` for the syscalls that open a named file (`Syscall::discovery_arg`), which
/// discovery looks at: the other syscalls' program has no discovery branch to pay for.
#[tracepoint]
pub fn sys_enter_open_tp(ctx: TracePointContext) -> u32 {
    // Discovery reads the syscall's number and its one path argument (loaded straight from the
    // record), nothing more, unless the path names a model.
    let discovered = || {
        discovered(|settings| {
            hooks::tracepoint_nr(&ctx).is_ok_and(|nr| {
                discover_at_enter(settings, nr, |i| hooks::tracepoint_open_arg(&ctx, i))
            })
        })
    };
    if let Some(watch) = Watched::current().or_else(discovered)
        && let Ok((nr, args)) = hooks::tracepoint_entry(&ctx)
    {
        capture::syscall_enter(watch, nr, args);
    }
    0
}

/// For an unwatched task, while discovery is on: the watch discovery has just started, if
/// `opens_a_model` finds the syscall opening a model artifact (the task's watch is then found
/// as any watched task's is, one shape of state for the verifier).
#[inline(always)]
fn discovered(opens_a_model: impl FnOnce(&Discovery) -> bool) -> Option<Watched> {
    let settings = discover::settings()?;
    if !opens_a_model(settings) {
        return None;
    }
    Watched::current()
}

/// Discovery's look at an unwatched task's syscall `nr`, whose argument `i` is `arg(i)`:
/// only for syscalls that open a file.
#[inline(always)]
fn discover_at_enter(
    settings: &Discovery,
    nr: u32,
    arg: impl Fn(usize) -> Result<u64, i64>,
) -> bool {
    let Some(spec) = CAPTURE.get(nr) else {
        return false;
    };
    // Constant indexes: the verifier refuses reads from the stack (or the tracepoint's
    // record) at a variable offset. The path is one of the first two arguments, the flags one
    // of the first three (checked in user space): every opening syscall's record has three.
    let flags = match spec.discover_flags_arg {
        2 => arg(1),
        3 => arg(2),
        _ => Ok(0),
    };
    // An open that reads nothing of a file loads no model: its path need not be read.
    if flags.is_ok_and(open_reads_nothing) {
        return false;
    }
    let path = match spec.discover_arg {
        1 => arg(0),
        2 => arg(1),
        _ => return false,
    };
    path.is_ok_and(|path| discover::on_open(settings, path))
}

#[tracepoint]
pub fn sys_exit_tp(ctx: TracePointContext) -> u32 {
    if let Some(watch) = Watched::current()
        && let Ok((nr, ret)) = hooks::tracepoint_exit(&ctx)
    {
        let _ = syscall_exit(watch, nr, ret);
    }
    0
}

/// At a syscall's return (however hooked): the call's one record if its entry waited, else the
/// exit record, and the entry's again if its user memory could not be read then.
#[inline(always)]
fn syscall_exit(watch: Watched, nr: u32, ret: i64) -> Result<(), i64> {
    let spec = CAPTURE.get(nr).ok_or(0)?;
    if spec.exit == 0 {
        return Ok(());
    }
    if spec.waits != 0 && pending::complete(&watch, spec, nr, ret) {
        return Ok(());
    }
    if !capture::exit_wanted(spec, nr) {
        return Ok(());
    }
    capture::recapture(watch, nr);
    // Read before the reservation: nothing between reserve and submit may fail.
    let (dev, ino) = match spec.exit_file != 0 && ret >= 0 {
        true => file::identity(ret as u32).unwrap_or((0, 0)),
        false => (0, 0),
    };
    let flags = commit_flags(size_of::<SyscallExit>() as u64);
    let Some(mut entry) = EVENTS.reserve::<SyscallExit>(0) else {
        watch.dropped();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_header(&raw mut (*ev).header, EventKind::SyscallExit, &watch);
        (*ev).nr = nr;
        (*ev).dev = dev;
        (*ev).ret = ret;
        (*ev).ino = ino;
    }
    entry.submit(flags);
    watch.emitted();
    Ok(())
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if let Some(watch) = Watched::current() {
        let child: i32 = match unsafe { ctx.read_at(offsets().fork_child_pid as usize) } {
            Ok(v) => v,
            Err(_) => return 0,
        };
        let flags = commit_flags(size_of::<ProcessFork>() as u64);
        let Some(mut entry) = EVENTS.reserve::<ProcessFork>(0) else {
            watch.dropped();
            // Even unrecorded, the child stays watched.
            watch.adopt(child as u32);
            return 0;
        };
        let ev = entry.as_mut_ptr();
        unsafe {
            fill_header(&raw mut (*ev).header, EventKind::ProcessFork, &watch);
            (*ev).child_tid = child as u32;
            (*ev)._pad = 0;
        }
        entry.submit(flags);
        watch.emitted();
        watch.adopt(child as u32);
    }
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let watch = match Watched::current() {
        Some(watch) => Some(watch),
        None if follow::on_exec(&ctx) => Watched::current(),
        None => None,
    };
    if let Some(watch) = watch {
        // First: the program must not get to run.
        let killed = kill::at_exec(&ctx, &watch);
        let off = offsets();
        let flags = commit_flags(size_of::<ProcessExec>() as u64);
        let Some(mut entry) = EVENTS.reserve::<ProcessExec>(0) else {
            watch.dropped();
            return 0;
        };
        let ev = entry.as_mut_ptr();
        unsafe {
            fill_header(&raw mut (*ev).header, EventKind::ProcessExec, &watch);
            if killed {
                (*ev).header.flags |= FLAG_KILLED;
            }
            (*ev).old_tid = ctx.read_at::<i32>(off.exec_old_pid as usize).unwrap_or(0) as u32;
            (*ev).filename_len = 0;
            // `__data_loc`: the low 16 bits are the string's offset in the record.
            let loc: u32 = ctx.read_at(off.exec_filename_loc as usize).unwrap_or(0);
            let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
            let dst = &mut (*ev).filename;
            match aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, dst) {
                Ok(s) => {
                    let n = s.len() + 1;
                    (*ev).filename_len = n as u32;
                    if n >= dst.len() {
                        (*ev).header.flags |= monitor_common::event::FLAG_TRUNCATED;
                    }
                }
                Err(_) => {
                    (*ev).header.flags |= monitor_common::event::FLAG_READ_ERROR;
                    count(Counter::ReadErrors);
                }
            }
        }
        entry.submit(flags);
        watch.emitted();
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let watch = Watched::current();
    pending::at_task_exit(watch.as_ref());
    if let Some(watch) = watch {
        let off = offsets();
        let group_dead = if off.exit_group_dead == u16::MAX {
            0
        } else {
            unsafe { ctx.read_at::<u8>(off.exit_group_dead as usize) }.unwrap_or(0)
        };
        let flags = commit_flags(size_of::<ProcessExit>() as u64);
        let Some(mut entry) = EVENTS.reserve::<ProcessExit>(0) else {
            watch.dropped();
            watch.forget_task(group_dead != 0);
            return 0;
        };
        let ev = entry.as_mut_ptr();
        unsafe {
            fill_header(&raw mut (*ev).header, EventKind::ProcessExit, &watch);
            (*ev).group_dead = group_dead;
            (*ev)._pad = [0; 3];
            (*ev).exit_code = task::exit_code();
        }
        entry.submit(flags);
        watch.emitted();
        watch.forget_task(group_dead != 0);
    }
    0
}

#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = follow::on_cgroup_mkdir(&ctx);
    0
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    let _ = follow::on_cgroup_rmdir(&ctx);
    0
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
