//! The scan report as SARIF 2.1.0, for code-scanning dashboards: one run, a rule per rule id
//! that fired, a result per finding located at the artifact, errors as tool notifications.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{
    render,
    rules::Severity,
    scan::{globals::NamedGlobal, report::ScanReport},
};

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// The rule id of the static evidence's results: a global the file names that a rule marks.
const STATIC_GLOBAL: &str = "static.global";

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
    let flagged: Vec<(&str, &NamedGlobal)> = report
        .artifact
        .globals
        .iter()
        .flat_map(|p| {
            p.globals
                .iter()
                .filter(|g| g.is_flagged())
                .map(move |g| (p.source.as_str(), g))
        })
        .collect();
    if !flagged.is_empty() {
        rules.insert(
            STATIC_GLOBAL,
            RuleInfo {
                description: "The file names a global a rule marks (static evidence, not the \
                              verdict)",
                severity: Severity::Info,
                tags: &[],
            },
        );
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
                "severity": f.severity,
                "phase": f.phase,
                "pid": f.audit.pid,
                "auditEvent": f.audit.event,
                "timeNs": f.audit.time_ns,
            },
        })
    });
    // Evidence, not verdict: "informational" results, whatever the marking rule's severity.
    let static_results = flagged.iter().map(|(source, g)| {
        json!({
            "ruleId": STATIC_GLOBAL,
            "ruleIndex": rule_index[STATIC_GLOBAL],
            "kind": "informational",
            "level": "none",
            "message": {
                "text": format!("{source} names {}.{}, which rule {} marks", g.module, g.name,
                                g.rule.as_deref().unwrap_or("?")),
            },
            "locations": location,
            "properties": {
                "pickle": source,
                "module": g.module,
                "name": g.name,
                "markedBy": g.rule,
                "markedSeverity": g.severity,
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
