//! One-time monitoring: run a command in a fresh, watched cgroup and report everything it and
//! its descendants do, judged by the rules.
//!
//! The order matters for "nothing escapes": the cgroup is created and watched first; the child
//! moves itself into it between fork and exec, so the execve of the command is its first
//! traced act. The job ends when the cgroup is empty (children that outlive the command are
//! still traced), then the ring buffer is drained once more, since every record of an exited
//! task was committed before the task left the cgroup.
//!
//! A job with a [`Gate`] (the scan harness) may start before the probes are loaded: it runs
//! only trusted code (the interpreter, the frameworks' imports) until the gate opens, and the
//! gate opens only once its cgroup is watched. Loading the probes (a second or so of BPF
//! verification and attaching) then overlaps the interpreter's start instead of preceding it.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    future::Future,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::PathBuf,
    pin::Pin,
    process::ExitStatus,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::control::{self, ControlMessage, ControlPipe, ControlReader, Gate, GateOpener};
use crate::sandbox::{Sandbox, SandboxOptions};
use monitor_engine::cgroup::{self, JobCgroup};
use monitor_engine::decode::{ArgValue, Record};
use monitor_engine::process::Process;
use monitor_engine::procfs;
use monitor_engine::router::{Router, TraceCounts};
use monitor_engine::trace::{Event, Tracer, What};
use monitor_rules::judge::Setting;
use monitor_rules::{Finding, Phase, RuleSet, Severity};

/// Findings of one rule passed on one by one in a job; the rest are counted
/// ([`RunSummary::findings_not_shown`]).
pub const FINDINGS_SHOWN_PER_RULE: u64 = 100;

/// What to run, and how to judge it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub rules: RuleSet,
    /// Kill every process of the job at the first finding of this severity or above.
    pub terminate_at: Option<Severity>,
    /// Run inside a sandbox built with these options (see [`crate::sandbox`]).
    pub sandbox: Option<SandboxOptions>,
    /// Kill the job when it runs longer than this.
    pub timeout: Option<Duration>,
}

/// What a job is connected to besides the trace.
#[derive(Debug, Default)]
pub struct JobIo {
    /// A control channel whose write end the command inherits (the scan harness's phases).
    /// Without one, every event is in [`Phase::Run`].
    pub control: Option<ControlPipe>,
    /// Where the command's stdout and stderr go, instead of ours.
    pub output: Option<std::fs::File>,
    /// A sandbox the caller prepared (put files in); otherwise one is built from
    /// [`RunSpec::sandbox`] if that is set.
    pub sandbox: Option<Sandbox>,
    /// A gate whose read end the command inherits and waits on before it does anything worth
    /// watching; it opens once the job's cgroup is watched.
    pub gate: Option<Gate>,
}

/// The probes that trace a job.
pub enum JobProbes<'a> {
    /// Loaded: the job is watched before it starts.
    Loaded(&'a Router),
    /// Still loading. A job with a [`JobIo::gate`] starts at once and waits at its gate until
    /// they watch it; one without waits for them before it starts.
    Loading(Pin<Box<dyn Future<Output = Result<&'a Router>> + Send + 'a>>),
}

/// What a run reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    Event(&'a Event),
    Finding(&'a Finding),
    Control(&'a ControlMessage),
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
    /// Findings by severity.
    pub findings: BTreeMap<Severity, u64>,
    /// Findings past the first [`FINDINGS_SHOWN_PER_RULE`] of their rule: counted in
    /// `findings`, not passed on one by one. By rule: the severity and how many.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub findings_not_shown: BTreeMap<String, (Severity, u64)>,
    /// The rule whose finding made monitor kill the job, if one did.
    pub terminated_by: Option<String>,
    /// Whether the job was killed for running past its time limit.
    pub timed_out: bool,
    /// Records of this job written by the kernel programs.
    pub kernel_records: u64,
    /// Records of this job lost to a full ring buffer, or to a full queue between the ring
    /// buffer's reader and this job. Non-zero means the trace is incomplete.
    pub dropped: u64,
    /// Records that could not be decoded while the job ran.
    pub malformed: u64,
    /// What was found changed in the kernel probes while the job ran: records may be missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tampering: Vec<String>,
    /// Control messages the job sent beyond its share, dropped unread (see
    /// [`control::MAX_MESSAGES`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub control_dropped: u64,
    /// The phases of a job that reports them (see [`JobIo::control`]), as they were judged:
    /// each with its start (CLOCK_MONOTONIC ns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(Phase, u64)>,
    /// What such a job wrote on its control pipe out of the protocol's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub control_violations: Vec<control::Violation>,
    /// True when no record was lost or unreadable: the trace is the whole story.
    pub complete: bool,
}

impl RunSummary {
    /// The most severe finding, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.keys().next_back().copied()
    }
}

/// Why the command could not be started (as opposed to monitor failing). The cause is its
/// source, not part of its message, so that a chain (`{:#}`) names it once.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {program:?}")]
pub struct SpawnError {
    pub program: OsString,
    #[source]
    pub source: std::io::Error,
}

/// Runs `spec` under watch of `router`'s probes, calling `sink` with each event and finding
/// as it is known. Runs on one router may overlap: each sees only its own cgroup's records.
pub async fn run(
    spec: &RunSpec,
    router: &Router,
    sink: impl FnMut(Output<'_>),
) -> Result<RunSummary> {
    run_with(spec, JobIo::default(), JobProbes::Loaded(router), sink).await
}

/// [`run`], with the job connected as `io` says.
pub async fn run_with(
    spec: &RunSpec,
    io: JobIo,
    probes: JobProbes<'_>,
    mut sink: impl FnMut(Output<'_>),
) -> Result<RunSummary> {
    let job = JobCgroup::create(&format!("run-{}-{}", std::process::id(), unique()))
        .context("creating the job's cgroup")?;
    // Without a gate nothing holds the command back: the probes must watch before it starts.
    let (router, loading) = match (probes, &io.gate) {
        (JobProbes::Loaded(router), _) => (Some(router), None),
        (JobProbes::Loading(loading), None) => (Some(loading.await?), None),
        (JobProbes::Loading(loading), Some(_)) => (None, Some(loading)),
    };
    let watch = |router: &Router| {
        router
            .watch_cgroup(job.id())
            .context("watching the job's cgroup")
    };
    let mut records_of_job = router.map(watch).transpose()?;

    let sandbox = match io.sandbox {
        Some(prepared) => Some(prepared),
        None => spec
            .sandbox
            .clone()
            .map(Sandbox::create)
            .transpose()
            .context("building the sandbox")?,
    };
    let (mut control, job_fd) = match io.control {
        Some(pipe) => {
            let (reader, write) = pipe.split().context("setting up the control pipe")?;
            (Some(reader), Some(write))
        }
        None => (None, None),
    };
    let (gate_fd, mut gate) = io.gate.map(Gate::split).unzip();
    // A job that reports on a control pipe says when it waits at its gate (`ready`), and the
    // gate opens then: what it did before is trusted, what it does after is the artifact's.
    let gated = gate.is_some() && control.is_some();
    let inherited: Vec<&OwnedFd> = job_fd.iter().chain(&gate_fd).collect();
    let mut child = spawn(spec, &job, sandbox.as_ref(), &inherited, io.output)?;
    // Only the child holds these ends now: the control pipe closes with the job, and the gate
    // reads end of file if we go away without opening it.
    drop((job_fd, gate_fd));
    let pid = child.id().context("child has no pid")?;
    let mut judge = Judge::new(spec, pid, control.is_some(), sandbox.is_some());
    judge.gated = gated;
    judge.core.tracer.processes_mut().insert(Process {
        pid,
        ppid: Some(std::process::id()),
        // What it executes first (the trace names it too, once that exec is seen).
        exe: Some(match &sandbox {
            Some(sandbox) => sandbox.launcher().display().to_string(),
            None => spec.program.to_string_lossy().into_owned(),
        }),
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
        killed_by: None,
        fds: Default::default(),
        outside_parent_exe: None,
        looked_up: true,
    });
    if let Some(loading) = loading {
        // The command is starting behind its gate meanwhile.
        let router = match loading.await {
            Ok(router) => router,
            Err(e) => {
                let _ = job.kill_all();
                return Err(e);
            }
        };
        records_of_job = Some(watch(router)?);
        judge
            .joined_late(&job)
            .context("listing the job's processes")?;
    }
    if !gated && let Some(gate) = gate.take() {
        gate.open().context("opening the job's gate")?;
    }
    let mut records_of_job = records_of_job.expect("watched before the gate opened");
    let mut at_gate = GateKeeper {
        gate,
        job: &job,
        sandbox: sandbox.as_ref(),
    };

    // Ctrl-C reaches the command through the terminal; we stay to report what it did.
    let mut interrupts = std::pin::pin!(tokio::signal::ctrl_c());
    let mut records = Vec::with_capacity(1024);
    let mut status: Option<ExitStatus> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = false;
    let mut messages = Vec::new();
    loop {
        tokio::select! {
            read = records_of_job.recv(&mut records) => {
                read.context("receiving the job's records")?;
                // Phase markers precede the records of their phase: read them first.
                read_control(control.as_mut(), &mut messages, &mut judge, &mut at_gate, &mut sink)?;
                if judge.feed(&mut records, &mut sink) {
                    job.kill_all().context("killing the job")?;
                }
            }
            ready = readable(control.as_ref()) => {
                ready.context("waiting on the control pipe")?;
                read_control(control.as_mut(), &mut messages, &mut judge, &mut at_gate, &mut sink)?;
            }
            _ = sleep_until(deadline), if !timed_out => {
                timed_out = true;
                job.kill_all().context("killing the job at its time limit")?;
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
    let counts: TraceCounts = records_of_job
        .finish(&mut records)
        .await
        .context("taking the job's last records")?;
    read_control(
        control.as_mut(),
        &mut messages,
        &mut judge,
        &mut at_gate,
        &mut sink,
    )?;
    judge.feed(&mut records, &mut sink);
    judge.finish(&mut sink);
    drop(at_gate);
    drop(job);

    let status = status.expect("loop ends only after the command exited");
    let signal = status.signal();
    Ok(RunSummary {
        exit_code: status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
        events: judge.core.events(),
        processes: judge.core.tracer.processes().len(),
        findings: judge.core.findings().clone(),
        findings_not_shown: judge.not_shown,
        terminated_by: judge.terminated_by,
        timed_out,
        kernel_records: counts.kernel.events,
        dropped: counts.kernel.dropped + counts.lost_in_queue,
        malformed: counts.malformed,
        complete: counts.complete(),
        tampering: counts.tampering,
        control_dropped: control.as_ref().map_or(0, ControlReader::dropped),
        phases: judge.timeline.starts().to_vec(),
        control_violations: judge.timeline.violations().to_vec(),
    })
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A gate that opens when its job says it waits there (see [`ControlMessage::Ready`]).
struct GateKeeper<'j> {
    /// Until it opens.
    gate: Option<GateOpener>,
    job: &'j JobCgroup,
    sandbox: Option<&'j Sandbox>,
}

impl GateKeeper<'_> {
    /// The job waits at its gate, and has run only trusted code: learn what its sandbox's
    /// honeytokens are by identity (from inside, where bubblewrap made them), then let it
    /// through. The load phase begins now, by our clock.
    fn job_ready(&mut self, judge: &mut Judge<'_>) -> Result<()> {
        let Some(gate) = self.gate.take() else {
            return Ok(());
        };
        if let Some(sandbox) = self.sandbox {
            let pids = self.job.pids().context("listing the job's processes")?;
            for (file, path) in sandbox.decoys_seen_by(&pids) {
                judge.core.tracer.names_mut().know(file, path);
            }
        }
        let opened = control::now_ns();
        gate.open().context("opening the job's gate")?;
        judge.timeline.gate_opened(opened);
        Ok(())
    }
}

/// Reads what the control pipe holds now and passes it on.
fn read_control(
    control: Option<&mut ControlReader>,
    messages: &mut Vec<ControlMessage>,
    judge: &mut Judge<'_>,
    at_gate: &mut GateKeeper<'_>,
    sink: &mut impl FnMut(Output<'_>),
) -> Result<()> {
    let Some(control) = control else {
        return Ok(());
    };
    control
        .drain_now(messages)
        .context("reading the control pipe")?;
    for msg in messages.drain(..) {
        if judge.gated {
            judge.timeline.message(&msg, control::now_ns());
            if matches!(msg, ControlMessage::Ready { .. }) {
                at_gate.job_ready(judge)?;
            }
        } else if let ControlMessage::Phase { phase, t } = msg {
            judge.timeline.enter(phase, t);
        }
        sink(Output::Control(&msg));
    }
    Ok(())
}

/// Resolves when the control pipe has data; never when there is none or it is closed.
async fn readable(control: Option<&ControlReader>) -> std::io::Result<()> {
    match control {
        Some(c) if !c.at_eof() => c.readable().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Records -> events -> findings, for one run: the shared judge ([`monitor_rules::judge`]) in a run's
/// scope.
struct Judge<'a> {
    spec: &'a RunSpec,
    core: monitor_rules::judge::Judge,
    /// The job's phases, when it reports them; otherwise everything is [`Phase::Run`].
    timeline: control::Timeline,
    phased: bool,
    /// Its phases are checked against the protocol of a job behind a gate.
    gated: bool,
    sandboxed: bool,
    root: u32,
    /// Whether the command's own exec has completed: what comes before (the launcher's PATH
    /// search, the sandbox's set-up, the exec itself) is reported but not judged.
    started: bool,
    /// Findings so far, by rule.
    per_rule: HashMap<String, u64>,
    not_shown: BTreeMap<String, (Severity, u64)>,
    terminated_by: Option<String>,
    /// A finding called for killing the job since the last batch.
    kill: bool,
}

impl<'a> Judge<'a> {
    fn new(spec: &'a RunSpec, root: u32, phased: bool, sandboxed: bool) -> Self {
        Judge {
            spec,
            core: monitor_rules::judge::Judge::default(),
            timeline: control::Timeline::default(),
            phased,
            gated: false,
            sandboxed,
            root,
            started: false,
            per_rule: HashMap::new(),
            not_shown: BTreeMap::new(),
            terminated_by: None,
            kill: false,
        }
    }

    /// The probes watch a job that started before them (behind its gate): its processes are
    /// taken from /proc, and its command's exec, never seen, is taken as done.
    fn joined_late(&mut self, job: &JobCgroup) -> std::io::Result<()> {
        let processes = self.core.tracer.processes_mut();
        for pid in job.pids()? {
            if let Some(mut process) = procfs::process(pid) {
                let known = processes.get(pid);
                // The root's parent is us, whatever /proc says after a sandbox's re-parenting.
                process.ppid = known.and_then(|p| p.ppid).or(process.ppid);
                processes.insert(process);
            }
        }
        self.started = true;
        Ok(())
    }

    /// Feeds `records` (drained); returns true when a finding calls for killing the job.
    fn feed(&mut self, records: &mut Vec<Record>, sink: &mut impl FnMut(Output<'_>)) -> bool {
        let spec = self.spec;
        let mut core = std::mem::take(&mut self.core);
        core.feed(records, &spec.rules, &mut RunScope { judge: self, sink });
        self.core = core;
        std::mem::take(&mut self.kill)
    }

    /// Emits the entries that never saw their exit.
    fn finish(&mut self, sink: &mut impl FnMut(Output<'_>)) {
        let spec = self.spec;
        let mut core = std::mem::take(&mut self.core);
        core.finish(&spec.rules, &mut RunScope { judge: self, sink });
        self.core = core;
    }

    /// The successful exec of the command itself: by the process started, or (sandboxed) by
    /// one of its descendants, with the command's program as argv[0].
    fn is_command_exec(&self, event: &Event) -> bool {
        let What::Syscall(sc) = &event.what else {
            return false;
        };
        if !sc.syscall.executes || sc.ret != Some(0) {
            return false;
        }
        if !self.sandboxed {
            return event.pid == self.root;
        }
        let program = self.spec.program.to_string_lossy();
        sc.args.values().iter().any(
            |v| matches!(v, ArgValue::Argv(argv) if argv.first().is_some_and(|a| *a == program)),
        )
    }
}

/// A run's part of judging: every event reported, those before the command's own exec not
/// judged, the phase from the job's timeline, findings past the first
/// [`FINDINGS_SHOWN_PER_RULE`] of a rule counted only, and the job killed at the first finding
/// at [`RunSpec::terminate_at`].
struct RunScope<'j, 'a, S> {
    judge: &'j mut Judge<'a>,
    sink: &'j mut S,
}

impl<S: FnMut(Output<'_>)> monitor_rules::judge::Scope for RunScope<'_, '_, S> {
    fn event(&mut self, event: &Event, _tracer: &mut Tracer) -> Option<Setting> {
        let judge = &mut *self.judge;
        (self.sink)(Output::Event(event));
        if !judge.started {
            judge.started = judge.is_command_exec(event);
            return None;
        }
        let phase = if judge.phased {
            judge.timeline.phase_at(event.time_ns)
        } else {
            Phase::Run
        };
        Some(Setting::in_phase(phase))
    }

    fn finding(&mut self, finding: &Finding) {
        // A loop that repeats one act (a fork bomb's failed forks) would make findings without
        // end: past the first few of a rule, they are counted only.
        let judge = &mut *self.judge;
        let seen = judge.per_rule.entry(finding.rule.clone()).or_default();
        *seen += 1;
        if *seen <= FINDINGS_SHOWN_PER_RULE {
            (self.sink)(Output::Finding(finding));
        } else {
            let (_, count) = judge
                .not_shown
                .entry(finding.rule.clone())
                .or_insert((finding.severity, 0));
            *count += 1;
        }
    }

    fn kill_at(&self) -> Option<Severity> {
        self.judge
            .spec
            .terminate_at
            .filter(|_| self.judge.terminated_by.is_none())
    }

    fn kill(&mut self, _event: &Event, worst: &Finding, _tracer: &Tracer) {
        self.judge.terminated_by = Some(worst.rule.clone());
        self.judge.kill = true;
    }
}

/// Starts the command in `job`, with the descriptors in `inherited` open across its exec.
fn spawn(
    spec: &RunSpec,
    job: &JobCgroup,
    sandbox: Option<&Sandbox>,
    inherited: &[&OwnedFd],
    output: Option<std::fs::File>,
) -> Result<tokio::process::Child> {
    let procs = job
        .procs_file()
        .context("opening the job cgroup's cgroup.procs")?;
    let mut cmd = match sandbox {
        Some(sandbox) => sandbox
            .command(&spec.program, &spec.args, spec.cwd.as_deref())
            .context("preparing the sandbox's command")?,
        None => {
            let mut cmd = std::process::Command::new(&spec.program);
            cmd.args(&spec.args);
            if let Some(cwd) = &spec.cwd {
                cmd.current_dir(cwd);
            }
            cmd
        }
    };
    if let Some(output) = output {
        let err = output.try_clone().context("duplicating the output file")?;
        cmd.stdout(output).stderr(err);
    }
    // SAFETY: join_in_child only calls write(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || cgroup::join_in_child(&procs));
    }
    for fd in inherited {
        let fd = fd.as_raw_fd();
        // SAFETY: inherit_in_child only calls fcntl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || control::inherit_in_child(fd));
        }
    }
    // Last: joining the cgroup needs root.
    if let Some(sandbox) = sandbox {
        sandbox.drop_privileges(&mut cmd);
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

#[cfg(test)]
mod tests {
    use monitor_common::syscall::by_name;

    use super::*;
    use monitor_engine::decode::{Enter, Exit, Flags, Header};

    const ROOT: u32 = 50;

    fn spec(terminate_at: Option<Severity>) -> RunSpec {
        RunSpec {
            program: "/usr/bin/python3".into(),
            args: Vec::new(),
            cwd: None,
            rules: RuleSet::defaults(),
            terminate_at,
            sandbox: None,
            timeout: None,
        }
    }

    fn header(pid: u32, time_ns: u64) -> Header {
        Header {
            time_ns,
            cpu: 0,
            cgroup_id: 1,
            watch_id: 1,
            pid,
            tid: pid,
            uid: 1000,
            gid: 1000,
            comm: "python3".into(),
            flags: Flags::default(),
        }
    }

    /// Syscall `name` by `pid` at `time_ns` with `args`, returning `ret`: its two records.
    fn call(pid: u32, time_ns: u64, name: &str, args: Vec<ArgValue>, ret: i64) -> [Record; 2] {
        let syscall = by_name(name).unwrap();
        [
            Record::Enter(Enter {
                header: header(pid, time_ns),
                syscall,
                args: args.into(),
            }),
            Record::Exit(Exit {
                header: header(pid, time_ns + 1),
                syscall,
                ret,
                file: None,
            }),
        ]
    }

    fn execve(pid: u32, time_ns: u64, argv0: &str) -> [Record; 2] {
        let args = vec![
            ArgValue::Str(Some(argv0.into())),
            ArgValue::Argv(vec![argv0.into()]),
        ];
        call(pid, time_ns, "execve", args, 0)
    }

    fn open(pid: u32, time_ns: u64, path: &str) -> [Record; 2] {
        let args = vec![
            ArgValue::Fd(libc::AT_FDCWD),
            ArgValue::Str(Some(path.into())),
            ArgValue::Flags {
                raw: 0,
                text: "".into(),
            },
        ];
        call(pid, time_ns, "openat", args, 3)
    }

    /// What `records` made the run report: events, and the rules of the findings shown.
    fn feed(judge: &mut Judge<'_>, records: Vec<Record>) -> (usize, Vec<String>, bool) {
        let (mut events, mut findings) = (0, Vec::new());
        let kill = judge.feed(&mut records.into_iter().collect(), &mut |out| match out {
            Output::Event(_) => events += 1,
            Output::Finding(f) => findings.push(f.rule.clone()),
            Output::Control(_) => {}
        });
        (events, findings, kill)
    }

    #[test]
    fn acts_before_the_commands_own_exec_are_reported_not_judged() {
        let spec = spec(None);
        let mut judge = Judge::new(&spec, ROOT, false, false);
        // The launcher reads the account database before the command runs: not the command's.
        let before: Vec<Record> = open(ROOT, 10, "/etc/passwd").into();
        assert_eq!(feed(&mut judge, before), (1, vec![], false));
        // A failed exec (a PATH search) is not the command's start either.
        let failed: Vec<Record> = call(
            ROOT,
            20,
            "execve",
            vec![ArgValue::Str(Some("/x".into()))],
            -2,
        )
        .into();
        assert_eq!(feed(&mut judge, failed).1, Vec::<String>::new());
        let exec: Vec<Record> = execve(ROOT, 30, "/usr/bin/python3").into();
        assert_eq!(feed(&mut judge, exec).1, Vec::<String>::new());
        assert!(judge.started);
        let after: Vec<Record> = open(ROOT, 40, "/etc/passwd").into();
        assert_eq!(feed(&mut judge, after).1, ["file.account-read"]);
        assert_eq!(judge.core.events(), 4);
    }

    #[test]
    fn sandboxed_the_command_starts_at_the_exec_of_its_program_by_any_process() {
        let spec = spec(None);
        let mut judge = Judge::new(&spec, ROOT, false, true);
        let launcher: Vec<Record> = execve(ROOT, 10, "/usr/bin/bwrap").into();
        feed(&mut judge, launcher);
        assert!(!judge.started, "the sandbox's launcher is not the command");
        let command: Vec<Record> = execve(ROOT + 1, 20, "/usr/bin/python3").into();
        feed(&mut judge, command);
        assert!(judge.started);
    }

    #[test]
    fn the_job_is_killed_once_at_the_first_finding_at_its_severity() {
        let spec = spec(Some(Severity::High));
        let mut judge = Judge::new(&spec, ROOT, false, false);
        judge.started = true;
        let low: Vec<Record> = open(ROOT, 10, "/etc/passwd").into();
        assert!(!feed(&mut judge, low).2, "low is below the bar");
        let key: Vec<Record> = open(ROOT, 20, "/home/u/.ssh/id_rsa").into();
        let (_, found, kill) = feed(&mut judge, key);
        assert_eq!(found, ["cred.read"]);
        assert!(kill);
        assert_eq!(judge.terminated_by.as_deref(), Some("cred.read"));
        // Killing is asked once; later findings are still reported and counted.
        let again: Vec<Record> = open(ROOT, 30, "/home/u/.aws/credentials").into();
        let (_, found, kill) = feed(&mut judge, again);
        assert_eq!((found.len(), kill), (1, false));
        assert_eq!(judge.terminated_by.as_deref(), Some("cred.read"));
        assert_eq!(judge.core.findings()[&Severity::Critical], 2);
    }

    #[test]
    fn past_the_first_findings_of_a_rule_they_are_counted_not_shown() {
        let spec = spec(None);
        let mut judge = Judge::new(&spec, ROOT, false, false);
        judge.started = true;
        let extra = 5;
        let records: Vec<Record> = (0..FINDINGS_SHOWN_PER_RULE + extra)
            .flat_map(|i| open(ROOT, 10 + 2 * i, "/etc/passwd"))
            .collect();
        let (_, shown, _) = feed(&mut judge, records);
        assert_eq!(shown.len() as u64, FINDINGS_SHOWN_PER_RULE);
        assert_eq!(
            judge.not_shown.get("file.account-read"),
            Some(&(Severity::Low, extra))
        );
        assert_eq!(
            judge.core.findings()[&Severity::Low],
            FINDINGS_SHOWN_PER_RULE + extra
        );
    }

    #[test]
    fn a_phased_job_is_judged_in_the_phase_of_each_act() {
        let spec = spec(None);
        let mut judge = Judge::new(&spec, ROOT, true, false);
        judge.started = true;
        judge.timeline.enter(Phase::Load, 100);
        judge.timeline.enter(Phase::Exercise, 200);
        let mut phases = Vec::new();
        let records: Vec<Record> = [
            open(ROOT, 150, "/home/u/.netrc"),
            open(ROOT, 250, "/home/u/.netrc"),
        ]
        .into_iter()
        .flatten()
        .collect();
        judge.feed(&mut records.into_iter().collect(), &mut |out| {
            if let Output::Finding(f) = out {
                phases.push(f.phase);
            }
        });
        assert_eq!(phases, [Phase::Load, Phase::Exercise]);
    }

    #[test]
    fn the_worst_finding_is_the_most_severe() {
        let summary = RunSummary {
            exit_code: 0,
            signal: None,
            events: 0,
            processes: 0,
            findings: BTreeMap::from([(Severity::Low, 3), (Severity::High, 1)]),
            findings_not_shown: BTreeMap::new(),
            terminated_by: None,
            timed_out: false,
            kernel_records: 0,
            dropped: 0,
            malformed: 0,
            tampering: Vec::new(),
            control_dropped: 0,
            phases: Vec::new(),
            control_violations: Vec::new(),
            complete: true,
        };
        assert_eq!(summary.worst(), Some(Severity::High));
        assert_eq!(
            RunSummary {
                findings: BTreeMap::new(),
                ..summary
            }
            .worst(),
            None
        );
    }
}
