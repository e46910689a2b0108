//! Every artifact of the corpus (corpus/make_corpus.py, built by `cargo xtask corpus`, which
//! `cargo xtask test` runs first) scanned on the real kernel with the real frameworks: each
//! malicious one is flagged with the rule classes its manifest expects, no benign one gets a
//! finding of high severity or above, and every format is detected as its maker wrote it.

use std::path::{Path, PathBuf};

use monitor_engine::probes::ProbeConfig;
use monitor_rules::Severity;
use monitor_scan::{LazyProbes, ScanReport, ScanSpec, scan, verdict::ExitCode};
use monitor_tests::{is_root, loader_python};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Entry {
    file: String,
    kind: String,
    format: String,
    expect: Vec<String>,
    description: String,
}

fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("MONITOR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/corpus"));
    assert!(
        dir.join("manifest.json").is_file(),
        "no corpus at {}: run `cargo xtask corpus` (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// What is wrong with the scan of `entry`, if anything.
fn judge(entry: &Entry, report: &ScanReport) -> Option<String> {
    let mut wrong = Vec::new();
    if report.artifact.format.as_deref() != Some(entry.format.as_str()) {
        wrong.push(format!(
            "detected as {:?}, made as {}",
            report.artifact.format, entry.format
        ));
    }
    let serious = |f: &&monitor_rules::Finding| f.severity >= Severity::High;
    if entry.kind == "malicious" {
        if report.exit_code != ExitCode::Threat {
            wrong.push(format!("exit code {:?}, not 1", report.exit_code));
        }
        for class in &entry.expect {
            let prefix = format!("{class}.");
            if !report
                .findings
                .iter()
                .filter(serious)
                .any(|f| f.rule.starts_with(&prefix))
            {
                wrong.push(format!("no high finding of class {class}"));
            }
        }
    } else {
        let high: Vec<&str> = report
            .findings
            .iter()
            .filter(serious)
            .map(|f| f.rule.as_str())
            .collect();
        if !high.is_empty() {
            wrong.push(format!("high findings on a benign artifact: {high:?}"));
        }
        if report.exit_code != ExitCode::Clean {
            wrong.push(format!("exit code {:?}, not 0", report.exit_code));
        }
    }
    if wrong.is_empty() {
        return None;
    }
    let rules: Vec<String> = report
        .findings
        .iter()
        .map(|f| format!("{}:{}", f.rule, f.severity))
        .collect();
    let errors: Vec<&str> = report.errors.iter().map(|e| e.message.as_str()).collect();
    Some(format!(
        "{} ({}): {}\n    findings: {rules:?}\n    errors: {errors:?}",
        entry.file,
        entry.description,
        wrong.join("; ")
    ))
}

#[tokio::test(flavor = "current_thread")]
async fn every_malicious_artifact_is_flagged_and_no_benign_one_is() {
    assert!(is_root(), "scans load eBPF programs: run the tests as root");
    let dir = corpus_dir();
    let manifest: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let count = |kind: &str| manifest.iter().filter(|e| e.kind == kind).count();
    assert!(count("malicious") >= 40, "at least 40 malicious artifacts");
    assert!(count("benign") >= 20, "at least 20 benign artifacts");

    // One set of probes for the whole corpus, as the daemon would.
    let mut probes = LazyProbes::new(ProbeConfig::default());
    let python = loader_python();
    let mut failures = Vec::new();
    for entry in &manifest {
        let mut spec = ScanSpec::new(dir.join(&entry.file));
        // The defaults, as a user scans: the model is exercised, the audit hook is on.
        spec.python = python.clone();
        let report = scan(&spec, &mut probes, |_| {}).await;
        eprintln!(
            "{:<45} {:<11} {:>6} ms",
            entry.file,
            report.verdict.name(),
            report.duration_ms
        );
        failures.extend(judge(entry, &report));
    }
    assert!(
        failures.is_empty(),
        "{} of {} scans went wrong:\n{}",
        failures.len(),
        manifest.len(),
        failures.join("\n")
    );
}

/// Discovery stops watching a process early only when no model-named file it opened could
/// load a model: read from the bytes of every artifact the real frameworks made, that must
/// never be said of a malicious one (a SavedModel is read at its saved_model.pb, the file a
/// loader opens).
#[test]
fn discovery_never_takes_a_malicious_artifact_for_no_model() {
    use monitor_watch::content::{self, Content};
    let dir = corpus_dir();
    let manifest: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut wrong = Vec::new();
    let mut no_model = Vec::new();
    for entry in &manifest {
        let mut path = dir.join(&entry.file);
        if path.is_dir() {
            path = path.join("saved_model.pb");
        }
        let content = content::of_path(&path);
        eprintln!("{:<45} {:<9} {content}", entry.file, entry.kind);
        match (&content, entry.kind.as_str()) {
            (Content::NoModel(_), "malicious") => wrong.push(format!("{}: {content}", entry.file)),
            (Content::NoModel(_), _) => no_model.push(entry.file.as_str()),
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "malicious taken for no model: {wrong:#?}");
    // The check is not vacuous: plain data and safetensors are no model.
    assert!(!no_model.is_empty(), "no benign artifact was told apart");
}
