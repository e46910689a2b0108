//! One scan, start to verdict: detect the format, prepare the sandbox (a private copy of the
//! artifact, the harness), load the artifact under watch phase by phase, judge, report.
//!
//! Nothing here returns an error to the caller: whatever goes wrong becomes an entry of the
//! report's `errors`, which keeps the verdict from being clean (fail closed).

use std::{
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::harness;
use crate::input::{self, Input, OpenAs};
use crate::report::{
    AuditFinding, AuditRecord, ErrorKind, Loader, PhaseStart, ScanError, ScanReport, TraceStats,
};
use crate::static_analysis::{self, StaticRules};
use monitor_engine::probes::{ProbeConfig, ProbeError, Probes};
use monitor_engine::router::Router;
use monitor_engine::trace::{Event, What};
use monitor_formats::{self as format, Format, Limits};
use monitor_jobs::control::{ControlMessage, ControlPipe, Gate};
use monitor_jobs::run::{self, JobIo, JobProbes, Output, RunSpec, RunSummary};
use monitor_jobs::sandbox::{Sandbox, SandboxOptions, WORK_DIR};
use monitor_rules::{Phase, RuleSet, Severity};

/// Where `cargo xtask loader-env` installs the loader environment.
pub const DEFAULT_LOADER_ENV: &str = "/var/lib/monitor/loader";

/// How much of the loader's output a report keeps.
const OUTPUT_TAIL_BYTES: u64 = 4096;

/// The harness says what failed once per step, in a message it cuts to 2000 characters: a job
/// that says more is a payload writing on the control pipe. The report keeps this many of its
/// errors, each cut to [`MAX_ERROR_CHARS`], and counts the rest, so that a flood of errors makes
/// a report no larger than a few.
const MAX_LOADER_ERRORS: usize = 10;
const MAX_ERROR_CHARS: usize = 4000;

/// Messages out of the harness's order kept in the report (each a finding already: more say
/// nothing new), their text cut like an error's; and an audit record's arguments, which the
/// harness cuts to 300 characters, cut at this many.
const MAX_VIOLATIONS: usize = 10;
const MAX_AUDIT_ARGS_CHARS: usize = 1000;

/// How long the loader lingers after the load by default (see [`ScanSpec::linger`]).
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// The audit event a control message out of the harness's order is reported as: the
/// `harness.out-of-order` rule judges it like the interpreter's own evidence.
pub const OUT_OF_ORDER: &str = "harness.out-of-order";

/// The audit event a job killed by the sandbox at a syscall of a foreign ABI is reported as
/// (`monitor_jobs::sandbox::native_abi`): the `sandbox.foreign-abi` rule judges it.
pub const FOREIGN_ABI: &str = "sandbox.foreign-abi";

/// What to scan and how.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    pub artifact: PathBuf,
    /// The loader environment's Python.
    pub python: PathBuf,
    pub rules: RuleSet,
    /// The static rules the artifact's bytes are judged by.
    pub static_rules: StaticRules,
    /// Judge the artifact's bytes only: no sandbox, no probes, no loader (what a CI runner
    /// without privileges can do).
    pub static_only: bool,
    pub fail_on: Severity,
    /// Call the loaded model on dummy input, where its format runs code when called.
    pub exercise: bool,
    /// Add Python audit-hook evidence.
    pub audit: bool,
    /// How long the loader stays up after the load (and the exercise), as a server would, for
    /// what the artifact left running (a thread, a child, a timer) to act. Cut short when
    /// nothing is left running.
    pub linger: Duration,
    pub timeout: Duration,
    pub limits: Limits,
    pub sandbox: SandboxOptions,
    /// The loader's working directory inside the sandbox (default: the scratch directory).
    pub cwd: Option<PathBuf>,
    /// Whose rights open the artifact (see [`input`]).
    pub open_as: OpenAs,
}

impl ScanSpec {
    /// A scan of `artifact` with the defaults: the default rules, fail on high, two minutes.
    pub fn new(artifact: impl Into<PathBuf>) -> Self {
        ScanSpec {
            artifact: artifact.into(),
            python: default_python(),
            rules: RuleSet::defaults(),
            static_rules: StaticRules::defaults(),
            static_only: false,
            fail_on: Severity::High,
            exercise: true,
            audit: true,
            linger: DEFAULT_LINGER,
            timeout: Duration::from_secs(120),
            limits: Limits::default(),
            sandbox: SandboxOptions {
                env: loader_env(),
                ..SandboxOptions::default()
            },
            cwd: None,
            open_as: OpenAs::Myself,
        }
    }
}

/// The frameworks' environment variables: quiet, CPU only, no downloads.
fn loader_env() -> Vec<(String, String)> {
    [
        ("TF_CPP_MIN_LOG_LEVEL", "2"),
        // oneDNN's just-in-time kernels make memory writable and executable at once, which
        // is what shellcode does too: without them a model's own math never does.
        ("TF_ENABLE_ONEDNN_OPTS", "0"),
        ("KERAS_BACKEND", "tensorflow"),
        ("CUDA_VISIBLE_DEVICES", ""),
        ("HF_HUB_OFFLINE", "1"),
        ("LANG", "C.UTF-8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `$MONITOR_LOADER_ENV/bin/python`, by default under [`DEFAULT_LOADER_ENV`].
pub fn default_python() -> PathBuf {
    let env = std::env::var_os("MONITOR_LOADER_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOADER_ENV));
    env.join("bin/python")
}

/// Kernel probes loaded the first time a scan needs them (not for safetensors, not for bad
/// input), then reused by the scans that follow: loading and releasing them takes seconds.
/// They load on a thread of their own, so that the sandbox's set-up and the loader's start
/// happen meanwhile.
pub struct LazyProbes {
    config: ProbeConfig,
    /// Whether to use (and keep) the probes pinned in bpffs: an embedded scan's, with no
    /// daemon (see `monitor_engine::probes::pins`).
    embedded: bool,
    state: ProbeState,
}

enum ProbeState {
    Unloaded,
    Loading {
        loaded: tokio::sync::oneshot::Receiver<Result<Probes, ProbeError>>,
        thread: std::thread::JoinHandle<()>,
    },
    /// Loading failed; kept so that every later scan says why.
    Failed(String),
    Loaded(Router),
}

impl LazyProbes {
    pub fn new(config: ProbeConfig) -> Self {
        LazyProbes {
            config,
            embedded: false,
            state: ProbeState::Unloaded,
        }
    }

    /// Probes of an embedded scan (`monitorctl scan --local`): the pinned set when one fits,
    /// loaded fresh and pinned for the next scan otherwise ([`Probes::load_embedded`]).
    pub fn embedded(config: ProbeConfig) -> Self {
        LazyProbes {
            embedded: true,
            ..LazyProbes::new(config)
        }
    }

    /// Probes loaded already, shared with other scans (the daemon's).
    pub fn loaded(router: Router) -> Self {
        LazyProbes {
            config: ProbeConfig::default(),
            embedded: false,
            state: ProbeState::Loaded(router),
        }
    }

    pub fn is_loaded(&self) -> bool {
        matches!(self.state, ProbeState::Loaded(_))
    }

    /// Starts loading them in the background, unless that has started already.
    pub fn start_loading(&mut self) {
        if !matches!(self.state, ProbeState::Unloaded) {
            return;
        }
        let (tx, loaded) = tokio::sync::oneshot::channel();
        let (config, embedded) = (self.config.clone(), self.embedded);
        let spawned = std::thread::Builder::new()
            .name("probe-loader".into())
            .spawn(move || {
                let _ = tx.send(match embedded {
                    true => Probes::load_embedded(&config),
                    false => Probes::load(&config),
                });
            });
        self.state = match spawned {
            Ok(thread) => ProbeState::Loading { loaded, thread },
            Err(e) => ProbeState::Failed(format!("starting the probe loader's thread: {e}")),
        };
    }

    /// The probes, once loaded (loading them now if nobody asked before).
    pub async fn get(&mut self) -> anyhow::Result<&Router> {
        self.start_loading();
        if let ProbeState::Loading { loaded, .. } = &mut self.state {
            let result = loaded.await;
            let ProbeState::Loading { thread, .. } =
                std::mem::replace(&mut self.state, ProbeState::Unloaded)
            else {
                unreachable!("matched above");
            };
            // It has sent, so it is ending: joined, no thread outlives the load (a caller may
            // fork afterwards, see monitorctl's release_in_background).
            let _ = thread.join();
            self.state = match result {
                Ok(Ok(probes)) => match Router::start(probes) {
                    Ok(router) => ProbeState::Loaded(router),
                    Err(e) => ProbeState::Failed(format!("{:#}", anyhow::Error::new(e))),
                },
                Ok(Err(e)) => ProbeState::Failed(format!("{:#}", anyhow::Error::new(e))),
                Err(_) => ProbeState::Failed("the probe loader's thread died".into()),
            };
        }
        match &self.state {
            ProbeState::Loaded(router) => Ok(router),
            ProbeState::Failed(why) => Err(anyhow::anyhow!("{why}")),
            ProbeState::Unloaded | ProbeState::Loading { .. } => {
                unreachable!("started and awaited above")
            }
        }
    }

    /// The probes, if a scan loaded them (to release them where it costs nothing).
    pub async fn into_loaded(self) -> Option<Probes> {
        match self.state {
            ProbeState::Loaded(router) => router.stop().await,
            ProbeState::Loading { loaded, thread } => {
                let probes = loaded.await.ok()?.ok();
                let _ = thread.join();
                probes
            }
            ProbeState::Unloaded | ProbeState::Failed(_) => None,
        }
    }
}

/// What a scan tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The artifact was recognised.
    Detected(&'a Format),
    /// The kernel probes are being loaded (the first scan only).
    LoadingProbes,
    /// The loader entered a phase.
    Phase(Phase),
    /// A traced event or a finding (for --print-trace, --trace-file and live findings).
    Job(Output<'a>),
}

/// Scans as `spec` says, with `probes` loaded if and when the artifact has to be loaded.
pub async fn scan(
    spec: &ScanSpec,
    probes: &mut LazyProbes,
    mut progress: impl FnMut(Progress<'_>),
) -> ScanReport {
    let started = Instant::now();
    let mut report = ScanReport::new(&spec.artifact, spec.fail_on);
    // The artifact is opened once, as whoever asked, and copied where only root can read it;
    // its format, size and static analysis come from that copy. All file work: off the async
    // runtime, which other scans and the daemon's API share.
    let inspected = off_runtime({
        let (artifact, limits, static_rules, open_as) = (
            spec.artifact.clone(),
            spec.limits.clone(),
            spec.static_rules.clone(),
            spec.open_as.clone(),
        );
        move || inspect(&artifact, &open_as, &limits, &static_rules)
    })
    .await
    .unwrap_or_else(|e| Err(ScanError::new(ErrorKind::Setup, format!("{e:#}"))));
    let (input, format, analysis) = match inspected {
        Ok(Inspected {
            input,
            format,
            analysis,
        }) => {
            report.artifact.size = Some(input.size());
            report.artifact.sha256 = input.sha256().map(str::to_owned);
            (input, format, analysis)
        }
        Err(e) => {
            report.errors.push(e);
            report.conclude(started.elapsed());
            return report;
        }
    };
    report.artifact.format = Some(format.id().to_string());
    report.artifact.description = Some(format.describe());
    report.artifact.globals = analysis.pickles;
    progress(Progress::Detected(&format));
    if let Some(why) = format.not_loaded_because() {
        report.notes.push(format!("{}: {why}", format.id()));
    }
    if let Format::Archive { why, .. } = &format {
        // Nothing loads it: an input error unless what it holds is a threat.
        report.errors.push(ScanError::new(
            ErrorKind::Input,
            format!("{}: {why}", report.artifact.path),
        ));
    }

    if spec.static_only {
        report.notes.push(
            "--static-only: the artifact was not loaded (no sandbox, no kernel trace, no audit \
             hook); the verdict is the static analysis alone"
                .into(),
        );
    } else if let Some(loader) = format.loader() {
        // Without a loader environment nothing is loaded (the error says how to install it).
        if !probes.is_loaded() && spec.python.is_file() {
            progress(Progress::LoadingProbes);
            probes.start_loading();
        }
        let loaded = load_under_watch(spec, input, loader, probes, &mut report, &mut progress);
        if let Err(e) = loaded.await {
            report
                .errors
                .push(ScanError::new(ErrorKind::Setup, format!("{e:#}")));
        }
    }
    add_static_findings(&mut report, analysis.findings, &spec.static_rules);
    report.conclude(started.elapsed());
    report
}

/// Adds the static findings, each saying whether the load showed it acting.
fn add_static_findings(
    report: &mut ScanReport,
    mut findings: Vec<static_analysis::StaticFinding>,
    rules: &StaticRules,
) {
    let loaded = report.phases.iter().any(|p| p.phase == Phase::Load);
    let seen: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.phase != Phase::Setup && f.severity >= Severity::Medium)
        .map(|f| f.rule.as_str())
        .chain(
            report
                .audit_findings
                .iter()
                .filter(|f| f.phase != Phase::Setup)
                .map(|f| f.rule.as_str()),
        )
        .collect();
    let resolved: std::collections::HashSet<String> = report
        .audit
        .iter()
        .filter(|a| a.event == monitor_rules::FIND_CLASS && a.phase != Phase::Setup)
        .filter_map(|a| a.subject.clone())
        .collect();
    static_analysis::observe(&mut findings, rules, loaded, &seen, &resolved);
    for finding in findings {
        report.add_static_finding(finding);
    }
}

/// The artifact's private copy and what was read from it.
struct Inspected {
    input: Input,
    format: Format,
    analysis: static_analysis::Analysis,
}

/// Takes the artifact at `artifact` (opened as `open_as`), detects its format and analyses
/// its bytes.
fn inspect(
    artifact: &Path,
    open_as: &OpenAs,
    limits: &Limits,
    static_rules: &StaticRules,
) -> Result<Inspected, ScanError> {
    let input = input::take(artifact, open_as, limits.max_size).map_err(|e| {
        let kind = match e.is_setup() {
            true => ErrorKind::Setup,
            false => ErrorKind::Input,
        };
        ScanError::new(kind, e.to_string())
    })?;
    // Named as the user named it: the copy's path means nothing to them.
    let shown = artifact.display().to_string();
    let format = format::detect_as(input.path(), &shown, limits)
        .map_err(|e| ScanError::new(ErrorKind::Input, e.to_string()))?;
    // Every loader's view of the bytes, before any of them runs.
    let analysis = static_analysis::analyse(input.path(), &format, static_rules);
    Ok(Inspected {
        input,
        format,
        analysis,
    })
}

async fn load_under_watch(
    spec: &ScanSpec,
    input: Input,
    loader: &'static str,
    probes: &mut LazyProbes,
    report: &mut ScanReport,
    progress: &mut impl FnMut(Progress<'_>),
) -> anyhow::Result<()> {
    if !spec.python.is_file() {
        report.errors.push(ScanError::new(
            ErrorKind::Environment,
            format!(
                "no loader environment: {} does not exist; install it with `cargo xtask \
                 loader-env` (or point --python at a Python with the frameworks)",
                spec.python.display()
            ),
        ));
        return Ok(());
    }
    // Building the sandbox copies the artifact: file work, off the async runtime.
    let (sandbox, inside, output) = off_runtime({
        let options = spec.sandbox.clone();
        move || prepare_sandbox(options, input, loader)
    })
    .await??;

    let control = ControlPipe::new().context("creating the control pipe")?;
    let gate = Gate::new().context("creating the loader's gate")?;
    let run_spec = RunSpec {
        program: spec.python.clone().into(),
        args: harness::args(&harness::Invocation {
            control_fd: control.job_fd(),
            gate_fd: gate.job_fd(),
            loader,
            artifact: &inside,
            exercise: spec.exercise,
            audit: spec.audit,
            linger: spec.linger,
        }),
        cwd: spec.cwd.clone(),
        rules: spec.rules.clone(),
        terminate_at: None,
        sandbox: Some(spec.sandbox.clone()),
        timeout: Some(spec.timeout),
    };
    // Already loaded (the daemon's), or loading since the format was known: the loader starts
    // meanwhile and waits at its gate until they watch it.
    let job_probes = if probes.is_loaded() {
        JobProbes::Loaded(probes.get().await?)
    } else {
        JobProbes::Loading(Box::pin(async {
            probes.get().await.context("loading the kernel probes")
        }))
    };

    let io = JobIo {
        control: Some(control),
        output: Some(output.try_clone().context("duplicating the loader's log")?),
        sandbox: Some(sandbox),
        gate: Some(gate),
    };
    let mut loaded_type = None;
    let mut errors = Vec::new();
    let mut errors_cut = 0u64;
    let mut shown_phase = None;
    let mut audit = Vec::new();
    let mut findings = Vec::new();
    // Processes of the job the kernel saw killed by SIGSYS: the sandbox's seccomp filter.
    let mut killed_by_sigsys = Vec::new();
    let summary = run::run_with(&run_spec, io, job_probes, |out| {
        match out {
            Output::Control(ControlMessage::Phase { phase, .. }) => {
                // For the progress display only: the run's timeline decides what counts.
                if shown_phase.is_none_or(|shown| shown < *phase as u8) {
                    shown_phase = Some(*phase as u8);
                    progress(Progress::Phase(*phase));
                }
            }
            Output::Control(ControlMessage::Loaded { type_name, .. }) => {
                loaded_type = Some(type_name.clone())
            }
            // Exercising is best effort: a model that will not take the dummy input was still
            // scanned (the harness's log in the report says why).
            Output::Control(ControlMessage::Error {
                phase: Phase::Exercise,
                ..
            }) => {}
            Output::Control(ControlMessage::Error {
                phase,
                error,
                message,
                missing,
                ..
            }) if errors.len() < MAX_LOADER_ERRORS => errors.push(harness_error(
                loader,
                *phase,
                error,
                message,
                missing.as_deref(),
            )),
            Output::Control(ControlMessage::Error { .. }) => errors_cut += 1,
            Output::Control(ControlMessage::Audit {
                event,
                args,
                subject,
                pid,
                t,
            }) => audit.push((event.clone(), args.clone(), subject.clone(), *pid, *t)),
            Output::Control(ControlMessage::Note { .. } | ControlMessage::Ready { .. }) => {}
            Output::Finding(f) => findings.push(f.clone()),
            Output::Event(Event {
                what:
                    What::Exit {
                        killed_by: Some(signal),
                        ..
                    },
                pid,
                time_ns,
                comm,
                ..
            }) if i32::from(*signal) == libc::SIGSYS => {
                killed_by_sigsys.push((*pid, comm.to_string(), *time_ns))
            }
            Output::Event(_) => {}
        }
        progress(Progress::Job(out));
    })
    .await?;
    if errors_cut > 0 {
        errors.push(ScanError::new(
            ErrorKind::Loader,
            format!(
                "the job reported {errors_cut} more errors than the first {MAX_LOADER_ERRORS}: \
                 they are counted, not kept"
            ),
        ));
    }

    for finding in findings {
        report.add_finding(&finding);
    }
    // Past the first hundred of a rule, findings are counted, not listed.
    for (rule, (severity, count)) in &summary.findings_not_shown {
        *report.counts.entry(*severity).or_default() += count;
        *report.findings_omitted.entry(rule.clone()).or_default() += count;
    }
    let timeline: Vec<PhaseStart> = summary
        .phases
        .iter()
        .map(|&(phase, start_ns)| PhaseStart { phase, start_ns })
        .collect();
    let phase_at = |t: u64| {
        timeline
            .iter()
            .rev()
            .find(|p| p.start_ns <= t)
            .map_or(Phase::Setup, |p| p.phase)
    };
    report.audit = audit
        .into_iter()
        .map(|(event, args, subject, pid, t)| AuditRecord {
            event: clip_to(&event, MAX_AUDIT_ARGS_CHARS).into_owned(),
            args: clip_to(&args, MAX_AUDIT_ARGS_CHARS).into_owned(),
            subject: subject.map(|s| clip_to(&s, MAX_AUDIT_ARGS_CHARS).into_owned()),
            pid,
            time_ns: t,
            phase: phase_at(t),
        })
        .collect();
    // What the job wrote out of the harness's order: the artifact forged a marker, or kept
    // the harness from writing its own. Judged by the rules as audit evidence is.
    report.audit.extend(
        summary
            .control_violations
            .iter()
            .take(MAX_VIOLATIONS)
            .map(|v| AuditRecord {
                event: OUT_OF_ORDER.to_string(),
                args: clip(&v.message).into_owned(),
                subject: Some(v.what.clone()),
                pid: 0,
                time_ns: v.read_ns,
                phase: phase_at(v.read_ns),
            }),
    );
    // The sandbox killed a process of the job at a 32-bit (or x32) syscall, which the probes
    // cannot see: the call did not run, and the attempt is the evidence. The kernel says which
    // process (the loader or any child of it); the loader's own status says it where the
    // kernel's exit codes are not known.
    if spec.sandbox.landlock {
        if killed_by_sigsys.is_empty()
            && summary.exit_code == monitor_jobs::sandbox::native_abi::FOREIGN_ABI_EXIT
        {
            // Pid 0: the job as a whole, in the phase it was in.
            let last = timeline.last().map_or(0, |p| p.start_ns);
            killed_by_sigsys.push((0, "the loader".to_string(), last));
        }
        for (pid, who, time_ns) in killed_by_sigsys.into_iter().take(MAX_VIOLATIONS) {
            let who = match pid {
                0 => who,
                pid => format!("process {pid} ({who})"),
            };
            report.audit.push(AuditRecord {
                event: FOREIGN_ABI.to_string(),
                args: format!(
                    "{who} was killed by the sandbox's seccomp filter (SIGSYS) at a syscall of \
                     another ABI than the machine's (a 32-bit int $0x80 call, or x32)"
                ),
                subject: None,
                pid,
                time_ns,
                phase: phase_at(time_ns),
            });
        }
    }
    if let Some(cut) = summary.control_violations.len().checked_sub(MAX_VIOLATIONS)
        && cut > 0
    {
        report.notes.push(format!(
            "{cut} more messages out of the harness's order than the first {MAX_VIOLATIONS} \
             were counted, not kept"
        ));
    }
    // Audit rules can only add findings: a payload may silence the hook, never the kernel.
    let audit_findings: Vec<AuditFinding> = report
        .audit
        .iter()
        .flat_map(|record| {
            spec.rules
                .judge_audit(&record.event, record.subject.as_deref(), record.phase)
                .map(|rule| AuditFinding::new(rule, record.clone()))
        })
        .collect();
    for finding in audit_findings {
        report.add_audit_finding(finding);
    }
    report.errors.extend(errors);
    report.errors.extend(run_errors(&summary, &timeline, spec));
    report.phases = timeline;
    report.trace = Some(TraceStats {
        events: summary.events,
        processes: summary.processes,
        kernel_records: summary.kernel_records,
        dropped: summary.dropped,
        malformed: summary.malformed,
        complete: summary.complete,
    });
    report.loader = Some(Loader {
        python: spec.python.display().to_string(),
        kind: loader.to_string(),
        loaded_type,
        exit_code: summary.exit_code,
        signal: summary.signal,
        output_tail: tail(output, OUTPUT_TAIL_BYTES).unwrap_or_default(),
    });
    Ok(())
}

/// A sandbox for `loader` with the artifact's copy and the harness in it, and the loader's log.
fn prepare_sandbox(
    options: SandboxOptions,
    input: Input,
    loader: &str,
) -> anyhow::Result<(Sandbox, PathBuf, fs::File)> {
    let sandbox = Sandbox::create(options).context("building the sandbox")?;
    let inside = stage_artifact(input, loader, sandbox.work_dir(), sandbox.user())
        .context("moving the artifact's copy into the sandbox")?;
    harness::install(sandbox.tool_dir()).context("installing the harness")?;
    let output_path = sandbox.root().join("loader.log");
    let output = fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&output_path)
        .context("creating the loader's log")?;
    Ok((sandbox, inside, output))
}

/// Runs blocking `work` on a thread of its own and waits for it without holding the async
/// runtime. The thread is joined before this returns: no thread outlives the work (a caller
/// may fork afterwards, see monitorctl's release_in_background).
pub async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, done) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("monitor-file-work".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .context("starting a thread for file work")?;
    let result = done.await;
    let _ = thread.join();
    result.map_err(|_| anyhow::anyhow!("the file work's thread died"))
}

/// What the harness said went wrong, in words that say what to do.
fn harness_error(
    loader: &str,
    phase: Phase,
    error: &str,
    message: &str,
    missing: Option<&str>,
) -> ScanError {
    let (error, message) = (clip(error), clip(message));
    let (kind, message) = match missing {
        Some(module) => (
            ErrorKind::Environment,
            format!(
                "the loader environment cannot import `{module}`, needed to load {loader} \
                 artifacts ({error}: {message}); install it with `cargo xtask loader-env`"
            ),
        ),
        None => (
            ErrorKind::Loader,
            format!("{loader} failed in the {phase} phase: {error}: {message}"),
        ),
    };
    ScanError {
        kind,
        message,
        phase: Some(phase),
    }
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters, saying so.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    clip_to(text, MAX_ERROR_CHARS)
}

/// `text` cut to `max` characters, saying so.
fn clip_to(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((end, _)) => format!("{}... ({} bytes in all)", &text[..end], text.len()).into(),
    }
}

/// What the run's summary says is wrong: lost records, the time limit, a loader that died
/// without saying why.
fn run_errors(summary: &RunSummary, timeline: &[PhaseStart], spec: &ScanSpec) -> Vec<ScanError> {
    let timeout = spec.timeout;
    let mut errors = Vec::new();
    if summary.dropped > 0 || summary.malformed > 0 {
        errors.push(ScanError::new(
            ErrorKind::IncompleteTrace,
            format!(
                "the trace is incomplete: {} records lost to a full ring buffer, {} unreadable",
                summary.dropped, summary.malformed
            ),
        ));
    }
    if !summary.tampering.is_empty() {
        errors.push(ScanError::new(
            ErrorKind::IncompleteTrace,
            format!(
                "the kernel probes were changed from outside while the scan ran, so its trace \
                 may be missing records: {}",
                summary.tampering.join("; ")
            ),
        ));
    }
    if summary.control_dropped > 0 {
        errors.push(ScanError::new(
            ErrorKind::IncompleteTrace,
            format!(
                "the job sent more on its control pipe than a loader does ({} messages or {} \
                 MiB): {} more were dropped unread, so the report may miss what they said",
                monitor_jobs::control::MAX_MESSAGES,
                monitor_jobs::control::MAX_MESSAGE_BYTES >> 20,
                summary.control_dropped
            ),
        ));
    }
    if summary.timed_out {
        errors.push(ScanError::new(
            ErrorKind::Timeout,
            format!("the scan reached its time limit ({timeout:?}) and was stopped"),
        ));
    }
    let reached = |phase| timeline.iter().any(|p| p.phase == phase);
    if !summary.timed_out && summary.exit_code != 0 && !reached(Phase::Teardown) {
        let how = match summary.signal {
            Some(sig) => format!("was killed by signal {sig}"),
            None => format!("exited with status {}", summary.exit_code),
        };
        let last = timeline.last().map_or(Phase::Setup, |p| p.phase);
        errors.push(match timeline.is_empty() {
            // The harness reports its setup phase first thing: a Python that never got that far
            // is a broken environment, not a verdict on the artifact.
            true => ScanError {
                kind: ErrorKind::Environment,
                message: format!(
                    "the loader environment is broken: {} {how} before the harness started; \
                     reinstall it with `cargo xtask loader-env` (the loader's output is in \
                     the report)",
                    spec.python.display()
                ),
                phase: Some(last),
            },
            false => ScanError {
                kind: ErrorKind::Loader,
                message: format!("the loader {how} in the {last} phase"),
                phase: Some(last),
            },
        });
    } else if summary.exit_code == 0 && !reached(Phase::Load) {
        // A loader that "succeeded" without ever loading is not a clean scan.
        errors.push(ScanError::new(
            ErrorKind::Loader,
            "the loader exited without reporting a load phase",
        ));
    }
    errors
}

/// Moves the artifact's private copy into the sandbox's scratch directory under a name its
/// framework accepts (Keras insists on the extension), owned by the sandbox's user and
/// readable by it alone. Returns its path inside the sandbox. Bound read-only: the loader can
/// touch neither the original nor the copy, and what it writes beside it goes to the scratch
/// tmpfs.
fn stage_artifact(
    input: Input,
    loader: &str,
    work: &Path,
    owner: (u32, u32),
) -> io::Result<PathBuf> {
    let name = match loader {
        "keras" if is_hdf5(input.path()) => "artifact.h5",
        "keras" => "artifact.keras",
        "tensorflow" => "savedmodel",
        "numpy" => "artifact.npy",
        "torch" | "torchscript" => "artifact.pt",
        "joblib" => "artifact.joblib",
        _ => "artifact.pkl",
    };
    input.move_to(&work.join(name), owner)?;
    Ok(Path::new(WORK_DIR).join(name))
}

fn is_hdf5(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x89HDF\r\n\x1a\n"
}

/// The last `limit` bytes of `file`, as text.
fn tail(mut file: fs::File, limit: u64) -> io::Result<String> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(len.saturating_sub(limit)))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
