//! picklescan's own test fixtures (../shared/corpus/picklescan, one exploit per published
//! bypass, plus benign and damaged controls), scanned on the real kernel: no malicious one is
//! called clean unless it is known to do nothing observable here, no benign one gets a finding
//! of high severity, no damaged one is called clean. `cargo xtask compare` measures the same
//! files against the static scanners (docs/comparison.md).
//!
//! The corpus is not in the repository (it is another project's data): the test says so and
//! passes when the directory is absent. MONITOR_PEER_CORPUS points elsewhere.

use std::path::{Path, PathBuf};

use monitor_daemon::{
    probes::ProbeConfig,
    rules::Severity,
    scan::{LazyProbes, ScanSpec, Verdict, scan, verdict::ExitCode},
};
use monitor_tests::{is_root, loader_python};

/// The damaged or non-model files of the corpus (its README): an error, never clean.
const MALFORMED: &[&str] = &[
    "not_a_pickle.bin",
    "broken_model.pkl",
    "bad_pytorch.pt",
    "benign_password_protected.zip",
    "malicious-invalid-bytes.pkl",
];

/// Malicious by name, but loading them here makes no syscall any rule could call dangerous:
/// the call they make is harmless in itself, and only the names in the pickle say otherwise
/// (which is what a static scanner reads; docs/comparison.md). Each with what it does.
const INERT: &[(&str, &str)] = &[
    ("malicious1_v0.pkl", "eval(\"print('456')\"): prints"),
    ("malicious1_v3.pkl", "eval(\"print('456')\"): prints"),
    ("malicious1_v4.pkl", "eval(\"print('456')\"): prints"),
    (
        "malicious3.pkl",
        "httplib.HTTPSConnection('github.com'): builds, never connects",
    ),
    ("malicious13a.pkl", "pickle.loads of a pickle of 12345"),
    ("malicious13b.pkl", "_pickle.loads of a harmless pickle"),
    (
        "GHSA-4675-36f9-wf6r.pkl",
        "ctypes.CDLL(None): the process's own symbols, nothing called",
    ),
    (
        "GHSA-vvpj-8cmc-gx39.pkl",
        "pkgutil.resolve_name('os:system'): looked up, never called",
    ),
    (
        "io_FileIO.pkl",
        "io.FileIO('/etc/hosts'): opens a world-readable file",
    ),
    (
        "types_CodeType.pkl",
        "types.CodeType(...): builds a code object, never runs it",
    ),
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
async fn peer_corpus_no_malicious_file_is_clean_and_no_benign_one_is_high() {
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
        let report = scan(&spec, &mut probes, |_| {}).await;
        let high: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::High)
            .map(|f| f.rule.as_str())
            .collect();
        eprintln!("{name:<40} {:<11} {high:?}", report.verdict.name());
        let clean = report.verdict == Verdict::Clean;
        let wrong = if MALFORMED.contains(&name.as_str()) {
            clean.then_some("a damaged file called clean")
        } else if is_benign(&name) {
            (!high.is_empty() || report.exit_code != ExitCode::Clean)
                .then_some("a benign file not passed")
        } else if INERT.iter().any(|(n, _)| *n == name) {
            // Not a threat we can see; still never a high finding out of nothing.
            None
        } else {
            clean.then_some("a malicious file called clean")
        };
        if let Some(wrong) = wrong {
            let errors: Vec<&str> = report.errors.iter().map(|e| e.message.as_str()).collect();
            let rules: Vec<String> = report
                .findings
                .iter()
                .map(|f| format!("{}:{}", f.rule, f.severity))
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
