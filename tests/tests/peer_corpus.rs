//! picklescan's own test fixtures (../shared/corpus/picklescan, one exploit per published
//! bypass, plus benign and damaged controls), scanned on the real kernel with `--audit`: every
//! malicious one is detected (exit 1) unless it is known to do nothing or to be unable to run
//! here, no benign one gets a finding of high severity or a non-zero exit, no damaged one is
//! called clean. Most of these are samples a static peer misses (docs/comparison.md). `cargo xtask compare` measures the same
//! files against the static scanners (docs/comparison.md).
//!
//! The corpus is not in the repository (it is another project's data): the test says so and
//! passes when the directory is absent. MONITOR_PEER_CORPUS points elsewhere.

use std::path::{Path, PathBuf};

use monitor_engine::probes::ProbeConfig;
use monitor_rules::Severity;
use monitor_scan::{LazyProbes, ScanSpec, Verdict, scan, verdict::ExitCode};
use monitor_tests::{is_root, loader_python};

/// The damaged or non-model files of the corpus (its README): an error, never clean.
const MALFORMED: &[&str] = &[
    "not_a_pickle.bin",
    "broken_model.pkl",
    "bad_pytorch.pt",
    "benign_password_protected.zip",
    "malicious-invalid-bytes.pkl",
];

/// Malicious by name, but loading them does nothing at all beyond what any load does: no
/// syscall, and no global or call the interpreter is asked for that a rule could call
/// dangerous. Each with what it holds. Clean is the right answer for these.
const INERT: &[(&str, &str)] = &[
    ("object_array.npy", "an object array of plain values"),
    ("object_arrays.npz", "object arrays of plain values"),
    (
        "object_arrays_compressed.npz",
        "object arrays of plain values",
    ),
];

fn is_benign(name: &str) -> bool {
    name.starts_with("benign")
        || (name.starts_with("int_array") && (name.ends_with(".npy") || name.ends_with(".npz")))
        || name == "pytorch_model.bin"
        || name == "new_pytorch_model.bin"
}

fn corpus_dir() -> PathBuf {
    std::env::var_os("MONITOR_PEER_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/picklescan")
        })
}

#[tokio::test(flavor = "current_thread")]
async fn peer_corpus_every_runnable_exploit_is_detected_and_no_benign_file_is_flagged() {
    let dir = corpus_dir();
    if !dir.join("data").is_dir() {
        eprintln!(
            "SKIPPED: no peer corpus at {} (picklescan's fixtures, kept outside the repository; \
             set MONITOR_PEER_CORPUS)",
            dir.display()
        );
        return;
    }
    assert!(is_root(), "scans load eBPF programs: run the tests as root");
    let mut files = Vec::new();
    for sub in ["data", "data2"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert!(files.len() >= 100, "the corpus has over 100 files");

    let mut probes = LazyProbes::new(ProbeConfig::default());
    let python = loader_python();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut spec = ScanSpec::new(path);
        spec.python = python.clone();
        spec.audit = true;
        let report = scan(&spec, &mut probes, |_| {}).await;
        let high: Vec<&str> = report
            .findings
            .iter()
            .map(|f| (f.rule.as_str(), f.severity))
            .chain(
                report
                    .audit_findings
                    .iter()
                    .map(|f| (f.rule.as_str(), f.severity)),
            )
            .filter(|(_, severity)| *severity >= Severity::High)
            .map(|(rule, _)| rule)
            .collect();
        eprintln!("{name:<40} {:<11} {high:?}", report.verdict.name());
        let clean = report.verdict == Verdict::Clean;
        let wrong = if MALFORMED.contains(&name.as_str()) {
            clean.then_some("a damaged file called clean")
        } else if is_benign(&name) {
            (!high.is_empty() || report.exit_code != ExitCode::Clean)
                .then_some("a benign file not passed")
        } else if INERT.iter().any(|(n, _)| *n == name) {
            (!high.is_empty()).then_some("a high finding out of nothing")
        } else {
            // Also those whose payload cannot run here (another Python, an archive torch
            // refuses, a 7z): the static analysis reads what they hold, and a threat wins.
            (report.exit_code != ExitCode::Threat).then_some("a malicious file not detected")
        };
        if let Some(wrong) = wrong {
            let errors: Vec<&str> = report.errors.iter().map(|e| e.message.as_str()).collect();
            let rules: Vec<String> = report
                .findings
                .iter()
                .map(|f| format!("{}:{}", f.rule, f.severity))
                .chain(
                    report
                        .audit_findings
                        .iter()
                        .map(|f| format!("{}:{}", f.rule, f.severity)),
                )
                .collect();
            failures.push(format!(
                "{name}: {wrong} ({})\n    findings: {rules:?}\n    errors: {errors:?}",
                report.verdict.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scans went wrong:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
