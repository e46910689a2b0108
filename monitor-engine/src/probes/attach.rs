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
//! A kretprobe keeps one instance per call in flight, from a pool of max(10, 2 x CPUs) per
//! function (perf-created kprobes cannot ask for more): calls beyond that, for example many
//! threads blocked in accept at once, lose their exit record (the kernel counts them in the
//! probe's `nmissed`, which is not read yet); their entries are reported without a result.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{
        KProbe, ProgramError, TracePoint,
        kprobe::KProbeLink,
        links::{FdLink, LinkError},
        trace_point::TracePointLink,
    },
};
use monitor_common::syscall::{SYSCALLS, Syscall};

use super::{ProbeError, Tracefs, capture_spec};

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
#[derive(Debug, Clone)]
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
    /// Attaches the hook's program at its place once more (after its link was closed).
    pub fn attach(&self, ebpf: &mut Ebpf) -> Result<Link, ProbeError> {
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

/// The process tracepoints, each with its program of the same name.
const SCHED_TRACEPOINTS: [&str; 3] = [
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
];

/// The cgroup tracepoints, each with its program of the same name.
const CGROUP_TRACEPOINTS: [&str; 2] = ["cgroup_mkdir", "cgroup_rmdir"];

/// Attaches the syscall programs to each table entry, as `hooks` says, and the sched
/// programs to their tracepoints. Returns the links with their hooks and the table entries
/// this kernel lacks (each logged).
pub fn attach_all(
    ebpf: &mut Ebpf,
    hooks: SyscallHooks,
    tracefs: &Tracefs,
) -> Result<(Vec<Attached>, Vec<String>), ProbeError> {
    let mut links = Vec::new();
    let mut missing = Vec::new();
    for sc in SYSCALLS {
        let attached = match hooks {
            SyscallHooks::Kprobes => attach_syscall_kprobes(ebpf, sc, &mut links)?,
            SyscallHooks::Tracepoints => attach_syscall_tracepoints(ebpf, sc, tracefs, &mut links)?,
        };
        if !attached {
            tracing::info!(
                syscall = sc.name,
                "this kernel has no such syscall; not traced"
            );
            missing.push(sc.name.to_owned());
        }
    }
    let process = SCHED_TRACEPOINTS.map(|name| ("sched", name));
    for (category, name) in process
        .into_iter()
        .chain(CGROUP_TRACEPOINTS.map(|name| ("cgroup", name)))
    {
        let hook = Hook::TracePoint {
            prog: name,
            category,
            event: name.into(),
        };
        links.push((hook.clone(), hook.attach(ebpf)?));
    }
    Ok((links, missing))
}

/// `sys_enter` on `sc`'s function, `sys_exit` on its return when it has an exit record.
/// `false` when the kernel has no such function.
fn attach_syscall_kprobes(
    ebpf: &mut Ebpf,
    sc: &Syscall,
    links: &mut Vec<Attached>,
) -> Result<bool, ProbeError> {
    let function = sc.kernel_function().to_string();
    let Some(link) = attach_kprobe(ebpf, "sys_enter", &function)? else {
        return Ok(false);
    };
    let hook = |prog| Hook::KProbe {
        prog,
        function: function.clone(),
    };
    links.push((hook("sys_enter"), link));
    if capture_spec(sc).exit != 0 {
        // The entry probe found the function a moment ago: its absence now is an error.
        let exit = hook("sys_exit");
        links.push((exit.clone(), exit.attach(ebpf)?));
    }
    Ok(true)
}

/// `sys_enter_tp` (or `sys_enter_open_tp`) on `syscalls:sys_enter_<name>`, `sys_exit_tp` on
/// `sys_exit_<name>` when it has an exit record. `false` when the kernel has no such tracepoint.
fn attach_syscall_tracepoints(
    ebpf: &mut Ebpf,
    sc: &Syscall,
    tracefs: &Tracefs,
    links: &mut Vec<Attached>,
) -> Result<bool, ProbeError> {
    let enter = format!("sys_enter_{}", sc.name);
    if !tracefs.has_event("syscalls", &enter) {
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
            category: "syscalls",
            event,
        };
        links.push((hook.clone(), hook.attach(ebpf)?));
    }
    Ok(true)
}

/// Attaches kprobe (or kretprobe) program `prog` to kernel function `function`; `None` when
/// the kernel has no such function.
fn attach_kprobe(ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<Option<Link>, ProbeError> {
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
    ebpf: &mut Ebpf,
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
    ebpf: &'e mut Ebpf,
    prog: &str,
) -> Result<&'e mut aya::programs::Program, ProbeError> {
    ebpf.program_mut(prog)
        .ok_or_else(|| program_error(prog.into(), ProgramError::InvalidName { name: prog.into() }))
}

fn program_error(name: String, source: ProgramError) -> ProbeError {
    ProbeError::Program { name, source }
}
