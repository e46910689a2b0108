//! The scan report: what `monitorctl scan --format json` prints, schema [`SCHEMA`].
//!
//! Versioned: fields are only added within a version; renaming or removing one bumps it.
//! docs/scan-report.md describes every field.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::static_analysis::{PickleGlobals, StaticFinding};
use crate::verdict::{ExitCode, Verdict};
use monitor_rules::{Finding, Phase, Rule, Severity, Source};

pub const SCHEMA: &str = "monitor.scan/v1";

/// A report keeps at most this many findings of one rule (the first ones); the rest are
/// counted in `counts` and `findings_omitted`. A payload that trips one rule sixty thousand
/// times makes a report of the same size as one that trips it a hundred times.
pub const MAX_FINDINGS_PER_RULE: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub schema: &'static str,
    pub tool: Tool,
    /// When the scan started (RFC 3339, UTC) and on which host: what a report means once it
    /// has left the machine (the trace's own times are CLOCK_MONOTONIC).
    pub started_at: String,
    pub host: String,
    pub artifact: Artifact,
    pub verdict: Verdict,
    pub exit_code: ExitCode,
    /// The severity at which a finding fails the scan (exit code 1).
    pub fail_on: Severity,
    /// Findings of the kernel trace, in the order they were seen (`source: kernel`).
    pub findings: Vec<Finding>,
    /// Findings of the static analysis (`source: static`): what the artifact's bytes name,
    /// each saying whether the load showed it acting. Counted in `counts` and the verdict
    /// like the others: the verdict is the strongest of all evidence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub static_findings: Vec<StaticFinding>,
    /// Findings by severity, of every source, every one counted (kept or not).
    pub counts: BTreeMap<Severity, u64>,
    /// Kernel findings seen but not kept, by rule (beyond the first [`MAX_FINDINGS_PER_RULE`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub findings_omitted: BTreeMap<String, u64>,
    /// Kernel findings kept, by rule.
    #[serde(skip)]
    kept: BTreeMap<String, usize>,
    /// Why the scan is incomplete, if it is. Any error keeps the verdict from being clean.
    pub errors: Vec<ScanError>,
    /// The phases the loader went through, with their start times (CLOCK_MONOTONIC ns).
    pub phases: Vec<PhaseStart>,
    /// How the loader ran; absent when nothing had to be loaded (safetensors) or the scan
    /// stopped before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
    /// The kernel trace's completeness; absent when nothing was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceStats>,
    /// What the scan did not do, and why a verdict stands without it (a code-free format not
    /// loaded, `--static-only`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Interpreter-level evidence (`--audit`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<AuditRecord>,
    /// Findings of the audit rules on that evidence (`--audit`); counted in `counts` and the
    /// verdict like `findings`, kept apart because their evidence is no kernel event.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_findings: Vec<AuditFinding>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

impl Default for Tool {
    fn default() -> Self {
        Tool {
            name: "monitor",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Artifact {
    pub path: String,
    /// The format's id (`pickle`, `torch-zip`, ...), when it was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the bytes scanned (hex), for a file: what to look the artifact up by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The globals its pickles name, read without running anything, each marked with the
    /// static rule it fires (the findings are in `static_findings`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub globals: Vec<PickleGlobals>,
}

/// One reason the scan is incomplete.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is missing, unreadable, too large, or not a format we can scan.
    Input,
    /// The loader environment or a framework in it is missing.
    Environment,
    /// The probes or the sandbox could not be set up.
    Setup,
    /// The framework failed to load (or to run) the artifact.
    Loader,
    /// The time limit was reached.
    Timeout,
    /// Records were lost or unreadable: the trace is not the whole story.
    IncompleteTrace,
}

impl ScanError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ScanError {
            kind,
            message: message.into(),
            phase: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseStart {
    pub phase: Phase,
    pub start_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Loader {
    pub python: String,
    /// What the harness called (`pickle`, `torch`, ...).
    pub kind: String,
    /// The Python type the artifact loaded into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_type: Option<String>,
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The end of what the loader printed (frameworks log a lot; tracebacks end up here).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output_tail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceStats {
    pub events: u64,
    pub processes: usize,
    pub kernel_records: u64,
    pub dropped: u64,
    pub malformed: u64,
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub event: String,
    pub args: String,
    /// What the audit rules match on: `module.name` for `pickle.find_class`, else the first
    /// argument when it is text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub pid: u32,
    pub time_ns: u64,
    pub phase: Phase,
}

/// An audit rule that fired, with the audit record that made it fire.
#[derive(Debug, Clone, Serialize)]
pub struct AuditFinding {
    /// Always [`Source::Audit`].
    pub source: Source,
    pub rule: String,
    pub severity: Severity,
    pub description: String,
    pub tags: Vec<String>,
    pub phase: Phase,
    pub audit: AuditRecord,
}

impl AuditFinding {
    pub fn new(rule: &Rule, audit: AuditRecord) -> Self {
        AuditFinding {
            source: Source::Audit,
            rule: rule.id().to_string(),
            severity: rule.spec.severity,
            description: rule.spec.description.clone(),
            tags: rule.spec.tags.clone(),
            phase: audit.phase,
            audit,
        }
    }
}

/// Now, as RFC 3339 with milliseconds, in UTC (`2026-12-04T05:13:41.207Z`).
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// This host's name, as the kernel has it (empty if it cannot be read).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

impl ScanReport {
    pub fn new(path: &std::path::Path, fail_on: Severity) -> Self {
        ScanReport {
            schema: SCHEMA,
            tool: Tool::default(),
            started_at: now_rfc3339(),
            host: host_name(),
            artifact: Artifact {
                path: path.display().to_string(),
                ..Artifact::default()
            },
            verdict: Verdict::Error,
            exit_code: ExitCode::Error,
            fail_on,
            findings: Vec::new(),
            static_findings: Vec::new(),
            counts: BTreeMap::new(),
            findings_omitted: BTreeMap::new(),
            kept: BTreeMap::new(),
            errors: Vec::new(),
            phases: Vec::new(),
            loader: None,
            trace: None,
            notes: Vec::new(),
            audit: Vec::new(),
            audit_findings: Vec::new(),
            duration_ms: 0,
        }
    }

    /// Counts `finding`, and keeps it unless its rule has [`MAX_FINDINGS_PER_RULE`] already.
    pub fn add_finding(&mut self, finding: &Finding) {
        *self.counts.entry(finding.severity).or_default() += 1;
        if let Some(omitted) = self.findings_omitted.get_mut(&finding.rule) {
            *omitted += 1;
            return;
        }
        let kept = self.kept.entry(finding.rule.clone()).or_default();
        if *kept < MAX_FINDINGS_PER_RULE {
            *kept += 1;
            self.findings.push(finding.clone());
        } else {
            self.findings_omitted.insert(finding.rule.clone(), 1);
        }
    }

    pub fn add_audit_finding(&mut self, finding: AuditFinding) {
        *self.counts.entry(finding.severity).or_default() += 1;
        self.audit_findings.push(finding);
    }

    pub fn add_static_finding(&mut self, finding: StaticFinding) {
        *self.counts.entry(finding.severity).or_default() += 1;
        self.static_findings.push(finding);
    }

    pub fn worst(&self) -> Option<Severity> {
        self.counts.keys().next_back().copied()
    }

    /// Settles verdict and exit code from what was found and what went wrong.
    pub fn conclude(&mut self, elapsed: std::time::Duration) {
        let (verdict, code) =
            super::verdict::decide(self.worst(), !self.errors.is_empty(), self.fail_on);
        self.verdict = verdict;
        self.exit_code = code;
        self.duration_ms = elapsed.as_millis() as u64;
    }
}
