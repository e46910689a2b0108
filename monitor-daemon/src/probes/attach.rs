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
    programs::{KProbe, ProgramError, TracePoint, kprobe::KProbeLink, trace_point::TracePointLink},
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
    // Never read: held only to be dropped.
    #[allow(dead_code)]
    KProbe(KProbeLink),
    #[allow(dead_code)]
    TracePoint(TracePointLink),
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
/// programs to their tracepoints. Returns the links and the table entries this kernel lacks
/// (each logged).
pub fn attach_all(
    ebpf: &mut Ebpf,
    hooks: SyscallHooks,
    tracefs: &Tracefs,
) -> Result<(Vec<Link>, Vec<String>), ProbeError> {
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
    for name in SCHED_TRACEPOINTS {
        links.push(Link::TracePoint(attach_tracepoint(
            ebpf, name, "sched", name,
        )?));
    }
    for name in CGROUP_TRACEPOINTS {
        links.push(Link::TracePoint(attach_tracepoint(
            ebpf, name, "cgroup", name,
        )?));
    }
    Ok((links, missing))
}

/// `sys_enter` on `sc`'s function, `sys_exit` on its return when it has an exit record.
/// `false` when the kernel has no such function.
fn attach_syscall_kprobes(
    ebpf: &mut Ebpf,
    sc: &Syscall,
    links: &mut Vec<Link>,
) -> Result<bool, ProbeError> {
    let function = sc.kernel_function().to_string();
    let Some(link) = attach_kprobe(ebpf, "sys_enter", &function)? else {
        return Ok(false);
    };
    links.push(Link::KProbe(link));
    if capture_spec(sc).exit != 0 {
        let link = attach_kprobe(ebpf, "sys_exit", &function)?.ok_or_else(|| {
            // The entry probe found the function a moment ago.
            program_error(
                format!("sys_exit -> {function}"),
                ProgramError::InvalidName {
                    name: function.clone(),
                },
            )
        })?;
        links.push(Link::KProbe(link));
    }
    Ok(true)
}

/// `sys_enter_tp` (or `sys_enter_open_tp`) on `syscalls:sys_enter_<name>`, `sys_exit_tp` on
/// `sys_exit_<name>` when it has an exit record. `false` when the kernel has no such tracepoint.
fn attach_syscall_tracepoints(
    ebpf: &mut Ebpf,
    sc: &Syscall,
    tracefs: &Tracefs,
    links: &mut Vec<Link>,
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
    links.push(Link::TracePoint(attach_tracepoint(
        ebpf, program, "syscalls", &enter,
    )?));
    if capture_spec(sc).exit != 0 {
        let exit = format!("sys_exit_{}", sc.name);
        links.push(Link::TracePoint(attach_tracepoint(
            ebpf,
            "sys_exit_tp",
            "syscalls",
            &exit,
        )?));
    }
    Ok(true)
}

/// Attaches kprobe (or kretprobe) program `prog` to kernel function `function`; `None` when
/// the kernel has no such function.
fn attach_kprobe(
    ebpf: &mut Ebpf,
    prog: &str,
    function: &str,
) -> Result<Option<KProbeLink>, ProbeError> {
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
    Ok(Some(link))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    event: &str,
) -> Result<TracePointLink, ProbeError> {
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
    program
        .take_link(id)
        .map_err(|source| program_error(name(), source))
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
