//! Scans on the real kernel with the real loader environment: verdicts, phases, fail-closed
//! cases and bad input. The corpus (every format, every payload class) is in corpus.rs.

use std::{path::Path, time::Duration};

use monitor_engine::probes::ProbeConfig;
use monitor_rules::Phase;
use monitor_scan::{
    LazyProbes, ScanReport, ScanSpec, Verdict,
    report::ErrorKind,
    scan,
    static_analysis::{Observed, StaticRules},
    verdict::ExitCode,
};
use monitor_tests::{loader_python, scan_path};

/// A protocol-0 pickle whose load calls `module.name(arg)`; harmless callables only.
fn pickle_calling(module: &str, name: &str, arg: &str) -> Vec<u8> {
    pickle_calling_with(module, name, &format!("V{arg}"))
}

/// The same with the argument as a protocol-0 opcode line (`I30` for the integer 30).
fn pickle_calling_with(module: &str, name: &str, arg_opcode: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n({arg_opcode}\ntR.").into_bytes()
}

/// `pickle.dumps({"a": 1}, protocol=4)`.
const PLAIN_PICKLE: &[u8] = b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";

async fn scan_bytes(bytes: &[u8], adjust: impl FnOnce(&mut ScanSpec)) -> ScanReport {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.bin");
    std::fs::write(&path, bytes).unwrap();
    scan_path(&path, adjust).await
}

fn rules(report: &ScanReport) -> Vec<&str> {
    report.findings.iter().map(|f| f.rule.as_str()).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_pickle_that_runs_a_program_is_malicious_and_the_finding_is_in_the_load_phase() {
    let report = scan_bytes(&pickle_calling("posix", "system", "id"), |_| {}).await;
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert_eq!(report.exit_code, ExitCode::Threat);
    let exec = report
        .findings
        .iter()
        .find(|f| f.rule == "exec.program")
        .unwrap_or_else(|| panic!("no exec.program in {:?}", rules(&report)));
    assert_eq!(exec.phase, Phase::Load);
    let process = exec.process.as_ref().expect("process context");
    assert!(
        process
            .parents
            .iter()
            .any(|p| p.exe.as_deref().is_some_and(|e| e.contains("python"))),
        "the parent chain leads to the loader: {process:?}"
    );
    let phases: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [Phase::Setup, Phase::Load, Phase::Teardown]);
    assert!(report.trace.as_ref().unwrap().complete);
}

#[tokio::test(flavor = "current_thread")]
async fn a_plain_pickle_is_clean_and_the_framework_import_raises_nothing() {
    let report = scan_bytes(PLAIN_PICKLE, |_| {}).await;
    assert_eq!(report.verdict, Verdict::Clean, "{report:#?}");
    assert_eq!(report.exit_code, ExitCode::Clean);
    assert!(report.findings.is_empty(), "{:?}", rules(&report));
    assert_eq!(
        report.loader.as_ref().unwrap().loaded_type.as_deref(),
        Some("builtins.dict")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_that_outlives_the_time_limit_is_an_error_not_clean() {
    let report = scan_bytes(&pickle_calling_with("time", "sleep", "I30"), |spec| {
        spec.timeout = Duration::from_secs(3)
    })
    .await;
    assert_eq!(report.verdict, Verdict::Error, "{report:#?}");
    assert_eq!(report.exit_code, ExitCode::Error);
    assert!(report.errors.iter().any(|e| e.kind == ErrorKind::Timeout));
}

#[tokio::test(flavor = "current_thread")]
async fn a_corrupt_pickle_that_acted_first_is_still_a_threat() {
    // Runs `id`, then the stream ends without STOP: the loader fails after the payload.
    let mut bytes = pickle_calling("posix", "system", "id");
    bytes.truncate(bytes.len() - 1);
    bytes.extend_from_slice(b"0(");
    let report = scan_bytes(&bytes, |_| {}).await;
    assert_eq!(report.exit_code, ExitCode::Threat, "{report:#?}");
    assert!(rules(&report).contains(&"exec.program"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_missing_loader_environment_is_an_error_that_says_how_to_install_it() {
    let report = scan_bytes(&pickle_calling("posix", "system", "id"), |spec| {
        spec.python = "/nonexistent/bin/python".into();
        // (Its static evidence alone would make it a threat, which wins over the error.)
        spec.static_rules = StaticRules::none();
    })
    .await;
    assert_eq!(report.exit_code, ExitCode::Error);
    assert_eq!(report.errors[0].kind, ErrorKind::Environment);
    assert!(report.errors[0].message.contains("cargo xtask loader-env"));
}

#[tokio::test(flavor = "current_thread")]
async fn audit_evidence_names_the_pickle_global_that_ran() {
    let report = scan_bytes(&pickle_calling("posix", "system", "true"), |spec| {
        spec.audit = true
    })
    .await;
    let resolved = report
        .audit
        .iter()
        .find(|a| a.event == "pickle.find_class")
        .expect("find_class audited");
    assert!(resolved.args.contains("posix") && resolved.args.contains("system"));
    assert_eq!(resolved.phase, Phase::Load);
    assert!(report.audit.iter().any(|a| a.event == "os.system"));
}

#[tokio::test(flavor = "current_thread")]
async fn python_only_evidence_is_a_static_threat_and_an_audit_finding() {
    // eval of a constant: no syscall any rule can call dangerous; the bytes name it, and the
    // interpreter sees it resolved.
    let eval = pickle_calling("builtins", "eval", "6*7");
    let kernel_only = scan_bytes(&eval, |spec| spec.audit = false).await;
    assert_eq!(kernel_only.exit_code, ExitCode::Threat, "{kernel_only:#?}");
    assert!(kernel_only.findings.is_empty(), "{:?}", rules(&kernel_only));
    let named = &kernel_only.artifact.globals[0].globals[0];
    assert_eq!(
        (named.module.as_str(), named.name.as_str()),
        ("builtins", "eval")
    );
    assert_eq!(named.rule.as_deref(), Some("static.code"));
    let static_finding = kernel_only
        .static_findings
        .iter()
        .find(|f| f.evidence == "builtins.eval")
        .expect("a static finding");
    assert_eq!(static_finding.observed, Observed::NotReached);

    let audited = scan_bytes(&eval, |spec| spec.audit = true).await;
    assert_eq!(audited.exit_code, ExitCode::Threat, "{audited:#?}");
    let finding = audited
        .audit_findings
        .iter()
        .find(|f| f.rule == "py.global-code")
        .expect("py.global-code");
    assert_eq!(finding.phase, Phase::Load);
    assert_eq!(finding.audit.subject.as_deref(), Some("builtins.eval"));
    assert!(audited.findings.is_empty(), "{:?}", rules(&audited));
    let static_finding = audited
        .static_findings
        .iter()
        .find(|f| f.evidence == "builtins.eval")
        .expect("a static finding");
    assert_eq!(static_finding.observed, Observed::Resolved);

    // A benign pickle with the hook on stays clean: the loader's own imports and compiles
    // are evidence, not findings.
    let plain = scan_bytes(PLAIN_PICKLE, |spec| spec.audit = true).await;
    assert_eq!(plain.verdict, Verdict::Clean, "{plain:#?}");
    assert!(plain.audit_findings.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn bad_input_is_an_input_error_and_nothing_is_started() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pkl");
    std::fs::write(&empty, b"").unwrap();
    let elf = Path::new("/bin/true");
    let device_link = dir.path().join("model.pt");
    std::os::unix::fs::symlink("/dev/null", &device_link).unwrap();
    let not_saved_model = dir.path().join("dir");
    std::fs::create_dir(&not_saved_model).unwrap();
    let odd = dir.path().join("mo del\n'\"$(id).pkl");
    std::fs::write(&odd, b"not a model at all").unwrap();

    for path in [
        dir.path().join("missing.pkl").as_path(),
        &empty,
        elf,
        &device_link,
        &not_saved_model,
        &odd,
    ] {
        let mut probes = LazyProbes::new(ProbeConfig::default());
        let spec = ScanSpec::new(path);
        let report = scan(&spec, &mut probes, |_| {}).await;
        assert_eq!(report.exit_code, ExitCode::Error, "{path:?}: {report:#?}");
        assert_eq!(report.errors.len(), 1, "{path:?}");
        assert_eq!(report.errors[0].kind, ErrorKind::Input, "{path:?}");
        assert!(!probes.is_loaded(), "{path:?}: nothing to load, no probes");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_incomplete_trace_is_never_clean() {
    // A benign load that opens a thousand directories at once (glob), each by a 2 KiB path
    // ("/usr/./././..."), into a ring buffer that holds two such records.
    let pattern = format!("/usr{}/*/*/*/*", "/.".repeat(1000));
    let bytes = pickle_calling("glob", "glob", &pattern);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pkl");
    std::fs::write(&path, bytes).unwrap();
    let mut spec = ScanSpec::new(&path);
    spec.python = loader_python();
    // The trace's completeness is under test, not what the bytes name.
    spec.static_rules = StaticRules::none();
    // Whether the reader falls behind depends on how the two cores are shared at that moment
    // (beside other tests the loader may be the slower one): scan until records were lost,
    // which is the case under test, then judge that report.
    let mut report = None;
    for _ in 0..5 {
        let mut probes = LazyProbes::new(ProbeConfig {
            ring_buffer_bytes: 4096,
        });
        let scanned = scan(&spec, &mut probes, |_| {}).await;
        let dropped = scanned.trace.as_ref().expect("traced").dropped;
        report = Some(scanned);
        if dropped > 0 {
            break;
        }
    }
    let report = report.unwrap();
    let trace = report.trace.as_ref().expect("traced");
    assert!(
        trace.dropped > 0,
        "the tiny ring buffer overflowed: {report:#?}"
    );
    assert_eq!(report.verdict, Verdict::Error, "{report:#?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.kind == ErrorKind::IncompleteTrace)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_child_that_outlives_the_loader_is_traced_to_the_end_and_nothing_is_left_behind() {
    let jobs = monitor_engine::cgroup::cgroup2_mount()
        .unwrap()
        .join("monitor");
    // The payload starts a shell that acts after the loader has returned and exited.
    let report = scan_bytes(
        &pickle_calling("posix", "system", "(sleep 1; exec /bin/true) &"),
        |_| {},
    )
    .await;
    let late = report
        .findings
        .iter()
        .find(|f| {
            f.rule == "exec.program"
                && f.process
                    .as_ref()
                    .is_some_and(|p| p.exe.as_deref() == Some("/bin/true"))
        })
        .unwrap_or_else(|| panic!("the late exec is reported: {:?}", rules(&report)));
    let teardown = report
        .phases
        .iter()
        .find(|p| p.phase == Phase::Teardown)
        .expect("the loader finished");
    assert!(
        late.event.time_ns > teardown.start_ns,
        "it acted after the load"
    );
    assert_eq!(late.phase, Phase::Teardown);

    // The job's cgroup (its id is the directory's inode number) is gone.
    use std::os::unix::fs::MetadataExt as _;
    let left: Vec<_> = std::fs::read_dir(&jobs)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|d| d.metadata().is_ok_and(|m| m.ino() == late.event.cgroup_id)),
        "the job's cgroup is left behind"
    );
}
