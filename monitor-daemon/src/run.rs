//! One-time monitoring: run a command in a fresh, watched cgroup and report everything it and
//! its descendants do.
//!
//! The order matters for "nothing escapes": the cgroup is created and watched first; the child
//! moves itself into it between fork and exec, so the execve of the command is its first
//! traced act. The job ends when the cgroup is empty (children that outlive the command are
//! still traced), then the ring buffer is drained once more, since every record of an exited
//! task was committed before the task left the cgroup.

use std::{
    ffi::OsString,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::PathBuf,
    process::ExitStatus,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    cgroup::{self, JobCgroup},
    probes::{KernelCounters, Probes, WatchCounters},
    process::Process,
    reader::Reader,
    trace::{Event, Tracer},
};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The command's exit code; 128 + signal number when a signal ended it.
    pub exit_code: i32,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    /// Events reported.
    pub events: u64,
    pub processes: usize,
    /// Records of this job written by the kernel programs.
    pub kernel_records: u64,
    /// Records of this job lost to a full ring buffer. Non-zero means the trace is incomplete.
    pub dropped: u64,
    /// Records that could not be decoded.
    pub malformed: u64,
    /// True when no record was lost or unreadable: the trace is the whole story.
    pub complete: bool,
}

/// Why the command could not be started (as opposed to monitor failing).
#[derive(Debug, thiserror::Error)]
#[error("cannot run {program:?}: {source}")]
pub struct SpawnError {
    pub program: OsString,
    #[source]
    pub source: std::io::Error,
}

/// Runs `spec` under watch of `probes`, calling `sink` with each event as it is known.
///
/// Takes the probes' ring buffer: one run per loaded [`Probes`].
pub async fn run(
    spec: &RunSpec,
    probes: &mut Probes,
    mut sink: impl FnMut(&Event),
) -> Result<RunSummary> {
    let ring = probes
        .take_events()
        .context("the probes' ring buffer is already in use")?;
    let mut reader = Reader::new(ring).context("registering the ring buffer with tokio")?;

    let job = JobCgroup::create(&format!("run-{}-{}", std::process::id(), unique()))
        .context("creating the job's cgroup")?;
    probes
        .watch(job.id())
        .context("watching the job's cgroup")?;

    let mut tracer = Tracer::default();
    let mut events = 0u64;
    let mut emit = |e: Event| {
        events += 1;
        sink(&e);
    };

    let mut child = spawn(spec, &job)?;
    let pid = child.id().context("child has no pid")?;
    tracer.processes_mut().insert(Process {
        pid,
        ppid: Some(std::process::id()),
        exe: None,
        argv: std::iter::once(&spec.program)
            .chain(&spec.args)
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: spec
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .map(|p| p.display().to_string()),
        comm: String::new(),
        start_ns: 0,
        exit_ns: None,
        exit_code: None,
    });

    // Ctrl-C reaches the command through the terminal; we stay to report what it did.
    let mut interrupts = std::pin::pin!(tokio::signal::ctrl_c());
    let mut records = Vec::with_capacity(1024);
    let mut status: Option<ExitStatus> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            read = reader.read(&mut records) => {
                read.context("reading the ring buffer")?;
                for r in records.drain(..) {
                    tracer.push(r, &mut emit);
                }
            }
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.context("waiting for the command")?);
            }
            _ = tick.tick(), if status.is_some() => {
                if !job.is_populated().context("reading the job cgroup's state")? {
                    break;
                }
            }
            _ = &mut interrupts => {}
        }
    }

    // Everything the job's tasks wrote is committed by now; take the rest.
    reader.drain(&mut records);
    for r in records.drain(..) {
        tracer.push(r, &mut emit);
    }
    tracer.flush(&mut emit);
    let counts: WatchCounters = probes
        .unwatch(job.id())
        .context("reading the job's counters")?;
    let kernel: KernelCounters = probes.counters()?;
    tracing::debug!(?kernel, "kernel counters");
    drop(job);

    let status = status.expect("loop ends only after the command exited");
    let signal = status.signal();
    let exit_code = status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0));
    let malformed = reader.malformed();
    Ok(RunSummary {
        exit_code,
        signal,
        events,
        processes: tracer.processes().len(),
        kernel_records: counts.events,
        dropped: counts.dropped,
        malformed,
        complete: counts.dropped == 0 && malformed == 0,
    })
}

fn spawn(spec: &RunSpec, job: &JobCgroup) -> Result<tokio::process::Child> {
    let procs = job
        .procs_file()
        .context("opening the job cgroup's cgroup.procs")?;
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: join_in_child only calls write(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || cgroup::join_in_child(&procs));
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpawnError {
            program: spec.program.clone(),
            source,
        })?;
    Ok(child)
}

/// A per-process counter so concurrent runs in one process get distinct cgroups.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
