//! `monitorctl scan` as a user runs it: the real binary, real probes (root), the real loader
//! environment (`cargo xtask loader-env`; MONITOR_LOADER_ENV points elsewhere).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn monitorctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_monitorctl"))
        .args(args)
        .output()
        .expect("start monitorctl")
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_bundled_malicious_pickle_is_a_threat_in_the_json_report() {
    let malicious = example("malicious.pkl");
    let out = monitorctl(&["scan", "--format", "json", malicious.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = stdout_json(&out);
    assert_eq!(report["schema"], "monitor.scan/v1");
    assert_eq!(report["verdict"], "malicious");
    assert_eq!(report["exit_code"], 1);
    assert_eq!(report["artifact"]["format"], "pickle");
    let findings = report["findings"].as_array().unwrap();
    let exec = findings
        .iter()
        .find(|f| f["rule"] == "exec.program")
        .expect("exec.program finding");
    assert_eq!(exec["phase"], "load");
    assert_eq!(exec["severity"], "high");
    assert!(exec["process"]["pid"].as_u64().is_some());
    assert!(exec["event"]["time_ns"].as_u64().is_some());
    assert_eq!(report["trace"]["complete"], true);
}

#[test]
fn sarif_goes_to_the_report_file_and_nothing_to_stdout_with_no_print_res() {
    let dir = tempfile::tempdir().unwrap();
    let sarif = dir.path().join("report.sarif");
    let trace = dir.path().join("trace.jsonl");
    let malicious = example("malicious.pkl");
    // A SARIF scan of the bundled malicious pickle into `sarif`, with `more` arguments.
    let sarif_scan = |more: &[&str]| {
        let mut args = vec![
            "scan",
            "--format",
            "sarif",
            "--no-print-res",
            "--report-file",
            sarif.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        args.push(malicious.to_str().unwrap());
        monitorctl(&args)
    };
    let out = sarif_scan(&["--trace-file", trace.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let log: Value = serde_json::from_slice(&std::fs::read(&sarif).unwrap()).unwrap();
    assert_eq!(log["version"], "2.1.0");
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "exec.program" && r["level"] == "error")
    );
    let rules = log["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap();
    for r in results {
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], r["ruleId"]);
    }
    let traced = std::fs::read_to_string(&trace).unwrap();
    assert!(
        traced
            .lines()
            .any(|l| l.contains("\"execve\"") && l.contains("/usr/bin/id")),
        "the trace file holds the payload's exec"
    );
    // What GitHub code scanning needs of a result: a score per rule, a region, and a
    // fingerprint that is the same in the next run (no pid or time in it, nor in the text).
    for rule in rules {
        let score: f64 = rule["properties"]["security-severity"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no security-severity: {rule}"));
        assert!((0.0..=10.0).contains(&score), "{rule}");
    }
    let fingerprints = |log: &Value| -> std::collections::BTreeSet<String> {
        log["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                assert!(
                    r["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64()
                        >= Some(1),
                    "{r}"
                );
                let text = r["message"]["text"].as_str().unwrap();
                assert!(!text.contains("[pid "), "{text}");
                r["partialFingerprints"]["monitorFinding/v1"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let first = fingerprints(&log);
    assert!(
        !log.to_string().contains("example.invalid"),
        "an informationUri that goes nowhere"
    );
    let again = sarif_scan(&[]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let second: Value = serde_json::from_slice(&std::fs::read(&sarif).unwrap()).unwrap();
    assert_eq!(
        fingerprints(&second),
        first,
        "the same findings, the same fingerprints"
    );
}

#[test]
fn a_json_report_says_when_where_and_which_bytes() {
    let malicious = example("malicious.pkl");
    let out = monitorctl(&["scan", "--format", "json", malicious.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = stdout_json(&out);
    let started = report["started_at"].as_str().unwrap();
    assert!(
        started.len() == 24 && started.ends_with('Z') && started.as_bytes()[10] == b'T',
        "{started}"
    );
    assert!(!report["host"].as_str().unwrap().is_empty());
    let sum = Command::new("sha256sum").arg(&malicious).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        report["artifact"]["sha256"].as_str(),
        sum.split_whitespace().next()
    );
}

#[test]
fn a_missing_file_exits_2_with_a_message_and_no_traceback() {
    let out = monitorctl(&["scan", "/nonexistent/model.pkl"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ERROR"), "{text}");
    assert!(text.contains("/nonexistent/model.pkl"), "{text}");
    assert!(!text.contains("Traceback"), "{text}");
}

#[test]
fn fail_on_low_turns_a_low_finding_into_exit_1() {
    // A global that is neither dangerous nor a framework's is a low static finding: exit 0 by
    // default (suspicious), a failure at --fail-on low. A protocol-0 pickle calling
    // colorsys.rgb_to_hsv(0, 0, 0).
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("unknown-global.pkl");
    std::fs::write(&model, b"ccolorsys\nrgb_to_hsv\n(I0\nI0\nI0\ntR.").unwrap();
    let model = model.to_str().unwrap();

    let default = monitorctl(&["scan", "--format", "json", model]);
    assert_eq!(default.status.code(), Some(0), "{default:?}");
    assert_eq!(stdout_json(&default)["verdict"], "suspicious");

    let strict = monitorctl(&["scan", "--format", "json", "--fail-on", "low", model]);
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");
}

#[test]
fn without_its_loader_environment_a_scan_exits_2_saying_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.pkl");
    std::fs::write(&plain, b"\x80\x04K\x01.").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_monitorctl"))
        .args(["scan", "--local", plain.to_str().unwrap()])
        .env("MONITOR_LOADER_ENV", dir.path().join("gone"))
        .output()
        .expect("start monitorctl");
    assert_eq!(
        out.status.code(),
        Some(2),
        "never clean, never a verdict: {out:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cargo xtask loader-env"), "{text}");
    // What the bytes say still counts: a threat wins over the missing environment.
    let malicious = example("malicious.pkl");
    let out = Command::new(env!("CARGO_BIN_EXE_monitorctl"))
        .args(["scan", "--local", malicious.to_str().unwrap()])
        .env("MONITOR_LOADER_ENV", dir.path().join("gone"))
        .output()
        .expect("start monitorctl");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
