//! The scan report as SARIF 2.1.0, for code-scanning dashboards: one run, a rule per rule id
//! that fired, a result per finding (kernel, audit or static, said in its `source` property)
//! located at the artifact, errors as tool notifications.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::report::ScanReport;
use monitor_jobs::render;
use monitor_rules::Severity;

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// What SARIF's rule table needs of a rule.
struct RuleInfo<'a> {
    description: &'a str,
    severity: Severity,
    tags: &'a [String],
}

pub fn to_value(report: &ScanReport) -> Value {
    let mut rules: BTreeMap<&str, RuleInfo<'_>> = BTreeMap::new();
    for f in &report.findings {
        rules.entry(&f.rule).or_insert(RuleInfo {
            description: &f.description,
            severity: f.severity,
            tags: &f.tags,
        });
    }
    for f in &report.audit_findings {
        rules.entry(&f.rule).or_insert(RuleInfo {
            description: &f.description,
            severity: f.severity,
            tags: &f.tags,
        });
    }
    for f in &report.static_findings {
        rules.entry(&f.rule).or_insert(RuleInfo {
            description: &f.description,
            severity: f.severity,
            tags: &f.tags,
        });
    }
    let rule_index: BTreeMap<&str, usize> =
        rules.keys().enumerate().map(|(i, id)| (*id, i)).collect();
    let rule_objects: Vec<Value> = rules
        .iter()
        .map(|(id, r)| {
            json!({
                "id": id,
                "shortDescription": { "text": r.description },
                "defaultConfiguration": { "level": level(r.severity) },
                "properties": {
                    "tags": r.tags,
                    "severity": r.severity,
                    // GitHub code scanning ranks alerts by this CVSS-like score.
                    "security-severity": security_severity(r.severity),
                },
            })
        })
        .collect();
    // A model file has no lines: the whole artifact, as line 1 (code scanning needs a region).
    let location = json!([{
        "physicalLocation": {
            "artifactLocation": { "uri": report.artifact.path },
            "region": { "startLine": 1 },
        },
    }]);
    let audit_results = report.audit_findings.iter().map(|f| {
        json!({
            "ruleId": f.rule,
            "ruleIndex": rule_index[f.rule.as_str()],
            "level": level(f.severity),
            "message": {
                "text": format!("{} while loading ({} phase): python audit event {} {}",
                                f.description, f.phase, f.audit.event, f.audit.args),
            },
            "locations": location,
            "partialFingerprints": fingerprint(report, &f.rule, &format!("{} {}", f.audit.event, f.audit.args)),
            "properties": {
                "source": f.source,
                "severity": f.severity,
                "phase": f.phase,
                "pid": f.audit.pid,
                "auditEvent": f.audit.event,
                "timeNs": f.audit.time_ns,
            },
        })
    });
    let static_results = report.static_findings.iter().map(|f| {
        json!({
            "ruleId": f.rule,
            "ruleIndex": rule_index[f.rule.as_str()],
            "level": level(f.severity),
            "message": {
                "text": format!("{}: {} names {} ({})", f.description, f.location, f.evidence,
                                f.observed.describe()),
            },
            "locations": location,
            "partialFingerprints": fingerprint(report, &f.rule, &format!("{} {}", f.location, f.evidence)),
            "properties": {
                "source": f.source,
                "severity": f.severity,
                "location": f.location,
                "evidence": f.evidence,
                "observed": f.observed,
            },
        })
    });
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            // The act without the process's ids: the same finding reads the same in every run.
            let act = render::act(&f.event);
            json!({
                "ruleId": f.rule,
                "ruleIndex": rule_index[f.rule.as_str()],
                "level": level(f.severity),
                "message": {
                    "text": format!("{} while loading ({} phase): {} by {}", f.description, f.phase,
                                    act, render::printable(&f.event.comm)),
                },
                "locations": location,
                "partialFingerprints": fingerprint(report, &f.rule, &act),
                "properties": {
                    "source": f.source,
                    "severity": f.severity,
                    "phase": f.phase,
                    "pid": f.event.pid,
                    "comm": f.event.comm,
                    "process": f.process,
                    "timeNs": f.event.time_ns,
                },
            })
        })
        .chain(audit_results)
        .chain(static_results)
        .collect();
    let notifications: Vec<Value> = report
        .errors
        .iter()
        .map(|e| json!({ "level": "error", "message": { "text": e.message } }))
        .collect();
    json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": report.tool.name,
                "version": report.tool.version,
                "rules": rule_objects,
            }},
            "artifacts": [{ "location": { "uri": report.artifact.path } }],
            "invocations": [{
                "executionSuccessful": report.errors.is_empty(),
                "exitCode": u8::from(report.exit_code),
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
            "properties": { "verdict": report.verdict, "format": report.artifact.format },
        }],
    })
}

/// GitHub's `security-severity`: critical 9.0 and up, high 7.0-8.9, medium 4.0-6.9, low
/// 0.1-3.9 (info is not a security alert).
fn security_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "0.0",
    }
}

/// `act` with its hex numbers of 6 digits or more (pointers: the environment's address, a
/// mapping's) as `0x_`: address-space randomisation moves them every run.
fn without_addresses(act: &str) -> String {
    let mut out = String::with_capacity(act.len());
    let mut rest = act;
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at + 2]);
        let digits = rest[at + 2..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len() - at - 2);
        if digits >= 6 {
            out.push('_');
        } else {
            out.push_str(&rest[at + 2..at + 2 + digits]);
        }
        rest = &rest[at + 2 + digits..];
    }
    out.push_str(rest);
    out
}

/// What code scanning matches a result across runs by: the artifact, the rule and the act,
/// hashed (never a pid or a time).
fn fingerprint(report: &ScanReport, rule: &str, act: &str) -> Value {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let act = without_addresses(act);
    for part in [report.artifact.path.as_str(), rule, act.as_str()] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({ "monitorFinding/v1": hex })
}

/// SARIF has three levels: high and critical fail a build, medium warns, the rest inform.
fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_leave_out_what_changes_from_run_to_run() {
        assert_eq!(
            without_addresses("execve(\"/usr/bin/id\", [\"id\"], 0x563feba29868) = 0x1f, 0x7"),
            "execve(\"/usr/bin/id\", [\"id\"], 0x_) = 0x1f, 0x7"
        );
        assert_eq!(without_addresses("ends 0xabcdef"), "ends 0x_");
    }
}
