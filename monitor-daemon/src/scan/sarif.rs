//! The scan report as SARIF 2.1.0, for code-scanning dashboards: one run, a rule per rule id
//! that fired, a result per finding located at the artifact, errors as tool notifications.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{
    render,
    rules::{Finding, Severity},
    scan::report::ScanReport,
};

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

pub fn to_value(report: &ScanReport) -> Value {
    let mut rules: BTreeMap<&str, &Finding> = BTreeMap::new();
    for f in &report.findings {
        rules.entry(&f.rule).or_insert(f);
    }
    let rule_index: BTreeMap<&str, usize> =
        rules.keys().enumerate().map(|(i, id)| (*id, i)).collect();
    let rule_objects: Vec<Value> = rules
        .values()
        .map(|f| {
            json!({
                "id": f.rule,
                "shortDescription": { "text": f.description },
                "defaultConfiguration": { "level": level(f.severity) },
                "properties": { "tags": f.tags, "severity": f.severity },
            })
        })
        .collect();
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
                "locations": [{
                    "physicalLocation": { "artifactLocation": { "uri": report.artifact.path } },
                }],
                "properties": {
                    "severity": f.severity,
                    "phase": f.phase,
                    "pid": f.event.pid,
                    "comm": f.event.comm,
                    "process": f.process,
                    "timeNs": f.event.time_ns,
                },
            })
        })
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
