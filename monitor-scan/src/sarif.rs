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
                "properties": { "tags": r.tags, "severity": r.severity },
            })
        })
        .collect();
    let location = json!([{
        "physicalLocation": { "artifactLocation": { "uri": report.artifact.path } },
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
            json!({
                "ruleId": f.rule,
                "ruleIndex": rule_index[f.rule.as_str()],
                "level": level(f.severity),
                "message": {
                    "text": format!("{} while loading ({} phase): {}", f.description, f.phase,
                                    render::text(&f.event)),
                },
                "locations": location,
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
                "informationUri": "https://example.invalid/monitor",
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

/// SARIF has three levels: high and critical fail a build, medium warns, the rest inform.
fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}
