//! Helpers for the integration tests. The tests themselves are in tests/tests/.
//!
//! They load the real probes into the running kernel, so they need root.

use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_engine::trace::{Event, SyscallEvent, What};
use monitor_jobs::run::{Output, RunSpec, RunSummary};
use monitor_jobs::sandbox::SandboxOptions;
use monitor_rules::{Finding, RuleSet, Severity};

/// Writes the Python program `source` to `path` and runs it under watch, as
/// [`trace_bash`] runs a script.
pub async fn trace_python(path: &std::path::Path, source: &str) -> (Vec<Event>, RunSummary) {
    std::fs::write(path, source).unwrap();
    trace_bash(
        &format!("python3 {}", path.display()),
        &ProbeConfig::default(),
    )
    .await
}

/// Runs `script` with bash under watch; returns every event and the summary.
pub async fn trace_bash(script: &str, config: &ProbeConfig) -> (Vec<Event>, RunSummary) {
    let (events, _, summary) = judge_bash(script, config, None, None).await;
    (events, summary)
}

/// Runs `script` with bash under watch and the default rules, killing the job at the first
/// finding of `terminate_at` or above, sandboxed with `sandbox` if given; returns the events,
/// the findings and the summary.
pub async fn judge_bash(
    script: &str,
    config: &ProbeConfig,
    terminate_at: Option<Severity>,
    sandbox: Option<SandboxOptions>,
) -> (Vec<Event>, Vec<Finding>, RunSummary) {
    assert!(
        is_root(),
        "integration tests load eBPF programs: run them as root"
    );
    let spec = RunSpec {
        program: "bash".into(),
        args: vec!["-c".into(), script.into()],
        cwd: None,
        rules: RuleSet::defaults(),
        terminate_at,
        sandbox,
        timeout: None,
    };
    let (mut events, mut findings) = (Vec::new(), Vec::new());
    let router = Router::start(Probes::load(config).expect("loading the probes"))
        .expect("starting the router");
    let summary = monitor_jobs::run::run(&spec, &router, |out| match out {
        Output::Event(e) => events.push(e.clone()),
        Output::Finding(f) => findings.push(f.clone()),
        Output::Control(_) => {}
    })
    .await
    .expect("run under watch");
    (events, findings, summary)
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The syscall events named `name`.
pub fn syscalls<'a>(
    events: &'a [Event],
    name: &'a str,
) -> impl Iterator<Item = (&'a Event, &'a SyscallEvent)> {
    events.iter().filter_map(move |e| match &e.what {
        What::Syscall(sc) if sc.name == name => Some((e, sc)),
        _ => None,
    })
}

/// The first `name` syscall whose argument `arg` is the string `value`.
pub fn find_with_str<'a>(
    events: &'a [Event],
    name: &'a str,
    arg: &str,
    value: &str,
) -> Option<(&'a Event, &'a SyscallEvent)> {
    syscalls(events, name).find(|(_, sc)| sc.arg(arg).and_then(|v| v.as_str()) == Some(value))
}

/// The loader environment's Python, which `cargo xtask test` installs first.
pub fn loader_python() -> std::path::PathBuf {
    let python = monitor_scan::job::default_python();
    assert!(
        python.is_file(),
        "no loader environment at {}: run `cargo xtask loader-env` (cargo xtask test does)",
        python.display()
    );
    python
}

/// A protocol-0 pickle whose load runs `code` (Python) with `builtins.exec`.
pub fn pickle_exec(code: &str) -> Vec<u8> {
    // Protocol 0's `V` takes raw-unicode-escape text on one line.
    let escaped = code.replace('\\', "\\u005c").replace('\n', "\\u000a");
    format!("cbuiltins\nexec\n(V{escaped}\ntR.").into_bytes()
}

/// Scans a pickle that runs `code` when loaded, in the sandbox, with time limit `timeout`,
/// judged by what loading it did (no static rules).
pub async fn scan_code(code: &str, timeout: std::time::Duration) -> monitor_scan::ScanReport {
    scan_code_with(code, timeout, ProbeConfig::default()).await
}

/// [`scan_code`] on probes loaded with `config`.
pub async fn scan_code_with(
    code: &str,
    timeout: std::time::Duration,
    config: ProbeConfig,
) -> monitor_scan::ScanReport {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pkl");
    std::fs::write(&path, pickle_exec(code)).unwrap();
    scan_path_with(&path, config, |spec| {
        spec.timeout = timeout;
        // What the kernel saw is under test: the static rules would call every one of these
        // `builtins.exec` pickles malicious before the load.
        spec.static_rules = monitor_scan::static_analysis::StaticRules::none();
    })
    .await
}

/// Scans `path` with the defaults, as `adjust` changes them.
pub async fn scan_path(
    path: &std::path::Path,
    adjust: impl FnOnce(&mut monitor_scan::ScanSpec),
) -> monitor_scan::ScanReport {
    scan_path_with(path, ProbeConfig::default(), adjust).await
}

/// [`scan_path`] on probes loaded with `config`.
pub async fn scan_path_with(
    path: &std::path::Path,
    config: ProbeConfig,
    adjust: impl FnOnce(&mut monitor_scan::ScanSpec),
) -> monitor_scan::ScanReport {
    assert!(is_root(), "scans load eBPF programs: run the tests as root");
    let mut spec = monitor_scan::ScanSpec::new(path);
    spec.python = loader_python();
    adjust(&mut spec);
    let mut probes = monitor_scan::LazyProbes::new(config);
    monitor_scan::scan(&spec, &mut probes, |_| {}).await
}

/// Processes of sandbox users (the job uid range) left on the host.
pub fn job_user_processes() -> usize {
    use std::os::unix::fs::MetadataExt as _;
    monitor_engine::procfs::pids()
        .into_iter()
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}"))
                .is_ok_and(|m| monitor_jobs::sandbox::user::is_job_uid(m.uid()))
        })
        .count()
}
