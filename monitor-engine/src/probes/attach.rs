//! Attaching the loaded programs: a kprobe and a kretprobe on each syscall function of the
//! table (or, without kprobes, its two tracepoints), and the process tracepoints.
//!
//! Syscalls are probed on their functions (`__x64_sys_openat`) where the kernel can: while any
//! `syscalls:*` tracepoint is in use the kernel flags every task for its slow syscall path, so
//! every process on the host pays on every syscall (1.3x on a read/write loop that monitor does
//! not even trace). A kprobe costs only the calls of the function it is on. Kernels built
//! without CONFIG_KPROBES (this project's VMs among them) get the tracepoints.
//!
//! aya 0.14 has no kprobe-multi links (one link over many functions, which would also detach in
//! one go), so each function gets a link of its own.
//!
//! The syscall hooks can be detached and attached again while the programs and maps stay
//! loaded ([`SyscallLinks`]): monitord keeps them attached only while something is watched,
//! since on a kernel without kprobes every syscall of every process pays for them. Attaching
//! again is only the attach (the programs were verified at load); detaching waits for an RCU
//! grace period per hook, so it runs on threads of its own, and stops where it is when the
//! hooks are wanted again (those not yet detached are kept, the others attached again).
//!
//! A kretprobe keeps one instance per call in flight, from a pool of max(10, 2 x CPUs) per
//! function (perf-created kprobes cannot ask for more): calls beyond that, for example many
//! threads blocked in accept at once, lose their exit record (the kernel counts them in the
//! probe's `nmissed`, which is not read yet); their entries are reported without a result.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use aya::programs::{
    KProbe, Program, ProgramError, TracePoint,
    kprobe::KProbeLink,
    links::{FdLink, LinkError},
    trace_point::TracePointLink,
};
use monitor_common::syscall::{SYSCALLS, Syscall};

use super::{
    Object, ProbeError, Tracefs, capture_spec,
    integrity::{self, Tracked},
};

/// How the syscalls of the table are hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyscallHooks {
    /// A kprobe and a kretprobe on each syscall's function: only traced syscalls pay.
    Kprobes,
    /// `syscalls:sys_enter_*` / `sys_exit_*`: every syscall of every task pays while attached.
    Tracepoints,
}

/// perf_event_open's kprobe PMU: present when the kernel can attach kprobes.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

impl SyscallHooks {
    /// Kprobes where the kernel has them, the syscall tracepoints otherwise.
    pub fn detect() -> Self {
        if Path::new(KPROBE_PMU).exists() {
            SyscallHooks::Kprobes
        } else {
            SyscallHooks::Tracepoints
        }
    }

    /// In a sentence's middle: "syscalls hooked with {}".
    pub fn describe(self) -> &'static str {
        match self {
            SyscallHooks::Kprobes => "kprobes on the syscall functions",
            SyscallHooks::Tracepoints => "syscall tracepoints (this kernel has no kprobes)",
        }
    }
}

/// One attachment; dropping it detaches it.
pub enum Link {
    /// A bpf link (kernels since 5.15 attach perf events through one): an fd of its own,
    /// which the integrity check follows.
    Fd(FdLink),
    // Never read: held only to be dropped.
    #[allow(dead_code)]
    KProbe(KProbeLink),
    #[allow(dead_code)]
    TracePoint(TracePointLink),
}

impl Link {
    /// The kernel's id of the bpf link, when it is one.
    pub fn link_id(&self) -> Option<u32> {
        match self {
            Link::Fd(link) => link.info().ok().map(|info| info.id()),
            _ => None,
        }
    }
}

/// An attachment and where it is.
pub type Attached = (Hook, Link);

/// Where a program is attached: enough to attach it there again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    KProbe {
        prog: &'static str,
        function: String,
    },
    TracePoint {
        prog: &'static str,
        category: &'static str,
        event: String,
    },
}

impl Hook {
    /// The program this hook runs.
    pub fn prog(&self) -> &'static str {
        match self {
            Hook::KProbe { prog, .. } | Hook::TracePoint { prog, .. } => prog,
        }
    }

    /// Attaches the hook's program at its place once more (after its link was closed).
    pub fn attach(&self, ebpf: &mut Object) -> Result<Link, ProbeError> {
        match self {
            Hook::KProbe { prog, function } => {
                attach_kprobe(ebpf, prog, function)?.ok_or_else(|| {
                    program_error(
                        format!("{prog} -> {function}"),
                        ProgramError::InvalidName {
                            name: function.clone(),
                        },
                    )
                })
            }
            Hook::TracePoint {
                prog,
                category,
                event,
            } => attach_tracepoint(ebpf, prog, category, event),
        }
    }
}

/// The tracepoint categories of the hooks: the syscalls', the process tree's, the cgroups'.
pub const CATEGORY_SYSCALLS: &str = "syscalls";
pub const CATEGORY_SCHED: &str = "sched";
pub const CATEGORY_CGROUP: &str = "cgroup";
pub const CATEGORIES: [&str; 3] = [CATEGORY_SYSCALLS, CATEGORY_SCHED, CATEGORY_CGROUP];

/// The process tracepoints, each with its program of the same name.
const SCHED_TRACEPOINTS: [&str; 3] = [
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
];

/// The cgroup tracepoints, each with its program of the same name.
const CGROUP_TRACEPOINTS: [&str; 2] = ["cgroup_mkdir", "cgroup_rmdir"];

/// What kind of program a hook runs, as aya opens it from a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    TracePoint,
    KProbe,
    KRetProbe,
}

/// Every program the hooks of `hooks` attach, with its kind: what a load verifies, and what a
/// pinned set must hold (the other kind's syscall programs are never loaded).
pub fn programs(hooks: SyscallHooks) -> Vec<(&'static str, ProgramKind)> {
    let syscalls: &[(&'static str, ProgramKind)] = match hooks {
        SyscallHooks::Kprobes => &[
            ("sys_enter", ProgramKind::KProbe),
            ("sys_exit", ProgramKind::KRetProbe),
        ],
        SyscallHooks::Tracepoints => &[
            ("sys_enter_tp", ProgramKind::TracePoint),
            ("sys_enter_open_tp", ProgramKind::TracePoint),
            ("sys_exit_tp", ProgramKind::TracePoint),
        ],
    };
    let process = SCHED_TRACEPOINTS.iter().chain(&CGROUP_TRACEPOINTS);
    (syscalls.iter().copied())
        .chain(process.map(|&name| (name, ProgramKind::TracePoint)))
        .collect()
}

/// Loads (verifies) every program of `hooks` now rather than at its first attach, so that
/// they can be pinned before anything is attached.
pub fn load_programs(object: &mut Object, hooks: SyscallHooks) -> Result<(), ProbeError> {
    for (name, _) in programs(hooks) {
        let loaded = match program_mut(object, name)? {
            Program::TracePoint(p) if p.fd().is_err() => p.load(),
            Program::KProbe(p) if p.fd().is_err() => p.load(),
            _ => Ok(()),
        };
        loaded.map_err(|source| program_error(name.into(), source))?;
    }
    Ok(())
}

/// What [`attach_all`] attached.
pub struct AttachedAll {
    /// The syscall hooks' links.
    pub syscalls: Vec<Attached>,
    /// The process and cgroup tracepoints' links.
    pub process: Vec<Attached>,
    /// The table entries this kernel lacks.
    pub missing: Vec<String>,
}

/// Links found still attached (handed over by the previous holder of a pinned set, see
/// `pins`), by hook: [`attach_all`] takes each from here rather than attaching it again.
#[derive(Default)]
pub struct Adopted(Vec<Attached>);

impl Adopted {
    pub fn new(links: Vec<Attached>) -> Self {
        Adopted(links)
    }

    /// The link at `hook`, if one was handed over.
    fn take(&mut self, hook: &Hook) -> Option<Link> {
        let i = self.0.iter().position(|(h, _)| h == hook)?;
        Some(self.0.swap_remove(i).1)
    }

    /// The link at `hook`, handed over or attached now.
    fn take_or_attach(&mut self, hook: &Hook, ebpf: &mut Object) -> Result<Link, ProbeError> {
        match self.take(hook) {
            Some(link) => Ok(link),
            None => hook.attach(ebpf),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What no hook of this load took (dropping them detaches them).
    pub fn into_links(self) -> Vec<Attached> {
        self.0
    }
}

/// Attaches the syscall programs to each table entry, as `hooks` says, and the sched
/// programs to their tracepoints, taking each link from `adopted` where it is there already.
/// Returns the links with their hooks and the table entries this kernel lacks (each logged).
pub fn attach_all(
    ebpf: &mut Object,
    hooks: SyscallHooks,
    tracefs: &Tracefs,
    adopted: &mut Adopted,
) -> Result<AttachedAll, ProbeError> {
    let mut links = Vec::new();
    let mut missing = Vec::new();
    for sc in SYSCALLS {
        let attached = match hooks {
            SyscallHooks::Kprobes => attach_syscall_kprobes(ebpf, sc, &mut links, adopted)?,
            SyscallHooks::Tracepoints => {
                attach_syscall_tracepoints(ebpf, sc, tracefs, &mut links, adopted)?
            }
        };
        if !attached {
            tracing::info!(
                syscall = sc.name,
                "this kernel has no such syscall; not traced"
            );
            missing.push(sc.name.to_owned());
        }
    }
    let mut process_links = Vec::new();
    let process = SCHED_TRACEPOINTS.map(|name| (CATEGORY_SCHED, name));
    for (category, name) in process
        .into_iter()
        .chain(CGROUP_TRACEPOINTS.map(|name| (CATEGORY_CGROUP, name)))
    {
        let hook = Hook::TracePoint {
            prog: name,
            category,
            event: name.into(),
        };
        process_links.push((hook.clone(), adopted.take_or_attach(&hook, ebpf)?));
    }
    Ok(AttachedAll {
        syscalls: links,
        process: process_links,
        missing,
    })
}

/// Whether the syscall hooks are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HooksState {
    Attached,
    /// Being detached in the background: some still record.
    Detaching,
    Detached,
}

/// The attachments of the syscall hooks (not the process tracepoints', which cost only
/// forks, execs and exits, and stay), which can be detached and attached again.
pub struct SyscallLinks {
    /// Every hook of the table on this kernel, as found at load, each entry before its exit.
    hooks: Vec<Hook>,
    state: LinkState,
}

enum LinkState {
    Attached(Vec<Tracked>),
    Detaching(Detaching),
    Detached,
}

impl SyscallLinks {
    /// The links `attach_all` made for the syscall hooks, attached.
    pub fn attached(links: Vec<Tracked>) -> Self {
        SyscallLinks {
            hooks: links.iter().map(|t| t.hook().clone()).collect(),
            state: LinkState::Attached(links),
        }
    }

    pub fn state(&mut self) -> HooksState {
        match &self.state {
            LinkState::Attached(_) => HooksState::Attached,
            LinkState::Detaching(detaching) if detaching.done() => {
                self.state = LinkState::Detached;
                HooksState::Detached
            }
            LinkState::Detaching(_) => HooksState::Detaching,
            LinkState::Detached => HooksState::Detached,
        }
    }

    /// How many hooks there are (attached or not).
    pub fn hooks(&self) -> usize {
        self.hooks.len()
    }

    /// The attachments, while attached (for the integrity check).
    pub fn links_mut(&mut self) -> Option<&mut Vec<Tracked>> {
        match &mut self.state {
            LinkState::Attached(links) => Some(links),
            _ => None,
        }
    }

    /// Attaches every hook, from the programs loaded already: those a detach in progress has
    /// not reached yet are kept as they are (it stops first), the others attached again.
    /// Returns when every hook records. On an error none stays attached.
    pub fn attach(&mut self, ebpf: &mut Object) -> Result<(), ProbeError> {
        let kept = match std::mem::replace(&mut self.state, LinkState::Detached) {
            LinkState::Attached(links) => {
                self.state = LinkState::Attached(links);
                return Ok(());
            }
            LinkState::Detaching(detaching) => detaching.stop(),
            LinkState::Detached => Vec::new(),
        };
        let mut fresh = Vec::new();
        for hook in &self.hooks {
            if kept.iter().any(|t| t.hook() == hook) {
                continue;
            }
            match hook.attach(ebpf) {
                Ok(link) => fresh.push((hook.clone(), link)),
                Err(e) => {
                    let none = std::collections::HashMap::new();
                    let partial = fresh
                        .into_iter()
                        .map(|(hook, link)| Tracked::new(hook, link, &none));
                    self.state = LinkState::Detaching(Detaching::start(
                        kept.into_iter().chain(partial).collect(),
                    ));
                    return Err(e);
                }
            }
        }
        let fds = integrity::link_fds();
        let mut links = kept;
        links.extend(
            fresh
                .into_iter()
                .map(|(hook, link)| Tracked::new(hook, link, &fds)),
        );
        // In the table's order, as at load.
        links.sort_by_key(|t| self.hooks.iter().position(|h| h == t.hook()));
        self.state = LinkState::Attached(links);
        Ok(())
    }

    /// Starts detaching every hook in the background; returns at once.
    pub fn detach(&mut self) {
        if let LinkState::Attached(links) = std::mem::replace(&mut self.state, LinkState::Detached)
        {
            self.state = LinkState::Detaching(Detaching::start(links));
        }
    }

    /// Every link still attached, a detach in progress stopped (to be dropped at the end).
    pub fn take_all(&mut self) -> Vec<Tracked> {
        match std::mem::replace(&mut self.state, LinkState::Detached) {
            LinkState::Attached(links) => links,
            LinkState::Detaching(detaching) => detaching.stop(),
            LinkState::Detached => Vec::new(),
        }
    }
}

/// Threads that detach the syscall hooks in the background: each detach waits for an RCU
/// grace period, and these waits overlap.
const BACKGROUND_DETACH_THREADS: usize = 16;

/// A detach in progress: threads take links from `left` one at a time and drop them, until
/// none is left or they are told to stop.
struct Detaching {
    left: Arc<Mutex<Vec<Tracked>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Detaching {
    fn start(links: Vec<Tracked>) -> Self {
        let n = links.len().min(BACKGROUND_DETACH_THREADS);
        let left = Arc::new(Mutex::new(links));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .filter_map(|_| {
                let (left, stop) = (left.clone(), stop.clone());
                let spawned = std::thread::Builder::new()
                    .name("monitor-detach".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Acquire) {
                            let Some(link) = lock(&left).pop() else {
                                return;
                            };
                            drop(link);
                        }
                    });
                spawned
                    .map_err(|e| tracing::warn!(error = %e, "starting a detaching thread"))
                    .ok()
            })
            .collect();
        Detaching {
            left,
            stop,
            threads,
        }
    }

    /// Every link is detached.
    fn done(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished) && lock(&self.left).is_empty()
    }

    /// Stops the detach: waits for the links being dropped now (a grace period at most),
    /// and returns those still attached.
    fn stop(self) -> Vec<Tracked> {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
        std::mem::take(&mut *lock(&self.left))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `sys_enter` on `sc`'s function, `sys_exit` on its return when it has an exit record.
/// `false` when the kernel has no such function.
fn attach_syscall_kprobes(
    ebpf: &mut Object,
    sc: &Syscall,
    links: &mut Vec<Attached>,
    adopted: &mut Adopted,
) -> Result<bool, ProbeError> {
    let function = sc.kernel_function().to_string();
    let hook = |prog| Hook::KProbe {
        prog,
        function: function.clone(),
    };
    let entry = match adopted.take(&hook("sys_enter")) {
        Some(link) => link,
        None => match attach_kprobe(ebpf, "sys_enter", &function)? {
            Some(link) => link,
            None => return Ok(false),
        },
    };
    links.push((hook("sys_enter"), entry));
    if capture_spec(sc).exit != 0 {
        // The entry probe found the function a moment ago: its absence now is an error.
        let exit = hook("sys_exit");
        links.push((exit.clone(), adopted.take_or_attach(&exit, ebpf)?));
    }
    Ok(true)
}

/// `sys_enter_tp` (or `sys_enter_open_tp`) on `syscalls:sys_enter_<name>`, `sys_exit_tp` on
/// `sys_exit_<name>` when it has an exit record. `false` when the kernel has no such tracepoint.
fn attach_syscall_tracepoints(
    ebpf: &mut Object,
    sc: &Syscall,
    tracefs: &Tracefs,
    links: &mut Vec<Attached>,
    adopted: &mut Adopted,
) -> Result<bool, ProbeError> {
    let enter = format!("sys_enter_{}", sc.name);
    if !tracefs.has_event(CATEGORY_SYSCALLS, &enter) {
        return Ok(false);
    }
    // Discovery looks only at syscalls that open a file: they get a program of their own, so
    // that the others' pays nothing for it.
    let program = if sc.discovery_arg().is_some() {
        "sys_enter_open_tp"
    } else {
        "sys_enter_tp"
    };
    let mut hooks = vec![(program, enter)];
    if capture_spec(sc).exit != 0 {
        hooks.push(("sys_exit_tp", format!("sys_exit_{}", sc.name)));
    }
    for (prog, event) in hooks {
        let hook = Hook::TracePoint {
            prog,
            category: CATEGORY_SYSCALLS,
            event,
        };
        links.push((hook.clone(), adopted.take_or_attach(&hook, ebpf)?));
    }
    Ok(true)
}

/// Attaches kprobe (or kretprobe) program `prog` to kernel function `function`; `None` when
/// the kernel has no such function.
fn attach_kprobe(
    ebpf: &mut Object,
    prog: &str,
    function: &str,
) -> Result<Option<Link>, ProbeError> {
    let program: &mut KProbe = program_mut(ebpf, prog)?
        .try_into()
        .map_err(|source| program_error(prog.into(), source))?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|source| program_error(prog.into(), source))?;
    }
    let name = || format!("{prog} -> {function}");
    let id = match program.attach(function, 0) {
        Ok(id) => id,
        // The kprobe PMU answers ENOENT for a symbol the kernel does not have.
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(None);
        }
        Err(source) => return Err(program_error(name(), source)),
    };
    let link = program
        .take_link(id)
        .map_err(|source| program_error(name(), source))?;
    Ok(Some(owned(link, Link::KProbe, name)?))
}

/// `link` as a bpf link of its own where the kernel made one (so that the integrity check can
/// follow its fd), as `other` elsewhere.
fn owned<L>(link: L, other: fn(L) -> Link, name: impl Fn() -> String) -> Result<Link, ProbeError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    if !aya::features().bpf_perf_link() {
        return Ok(other(link));
    }
    FdLink::try_from(link)
        .map(Link::Fd)
        .map_err(|source| ProbeError::Link {
            name: name(),
            source,
        })
}

fn attach_tracepoint(
    ebpf: &mut Object,
    prog: &str,
    category: &str,
    event: &str,
) -> Result<Link, ProbeError> {
    let program: &mut TracePoint = program_mut(ebpf, prog)?
        .try_into()
        .map_err(|source| program_error(prog.into(), source))?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|source| program_error(prog.into(), source))?;
    }
    let name = || format!("{prog} -> {category}:{event}");
    let id = program
        .attach(category, event)
        .map_err(|source| program_error(name(), source))?;
    let link = program
        .take_link(id)
        .map_err(|source| program_error(name(), source))?;
    owned(link, Link::TracePoint, name)
}

fn program_mut<'e>(
    ebpf: &'e mut Object,
    prog: &str,
) -> Result<&'e mut aya::programs::Program, ProbeError> {
    ebpf.program_mut(prog)
        .ok_or_else(|| program_error(prog.into(), ProgramError::InvalidName { name: prog.into() }))
}

fn program_error(name: String, source: ProgramError) -> ProbeError {
    ProbeError::Program { name, source }
}
