//! The scan report for people: the verdict first, then findings grouped by severity (most
//! severe first), each saying its source: the kernel trace (with its process, the syscall as
//! strace would show it, and its phase), the audit hook, or the static analysis (where in the
//! artifact, and whether the load showed it acting).
//!
//! Every string the artifact or the loader could choose (a type's name, an error, a global's
//! name, a process's name and path, the loader's output) goes through [`printable`]: no escape
//! sequence reaches the reader's terminal, and no line of the report can be faked from inside
//! one of its fields.

use std::io::{self, Write};

use crate::report::{AuditFinding, ScanReport};
use crate::static_analysis::StaticFinding;
use monitor_jobs::render::{self, printable};
use monitor_rules::{Finding, Phase, Severity, Source};

/// At most this many findings of one rule are shown in full; the rest are counted.
const SHOWN_PER_RULE: usize = 3;

pub fn write(out: &mut impl Write, report: &ScanReport) -> io::Result<()> {
    writeln!(out, "monitor scan: {}", printable(&report.artifact.path))?;
    if let Some(description) = &report.artifact.description {
        writeln!(out, "  format:  {}", printable(description))?;
    }
    writeln!(
        out,
        "  verdict: {} (exit code {})",
        report.verdict.name().to_uppercase(),
        u8::from(report.exit_code)
    )?;
    if let Some(loader) = &report.loader {
        let loaded = loader.loaded_type.as_deref().unwrap_or("nothing");
        writeln!(
            out,
            "  loaded:  {} (with {})",
            printable(loaded),
            printable(&loader.kind)
        )?;
    }
    if let Some(trace) = &report.trace {
        let completeness = if trace.complete {
            "complete".to_string()
        } else {
            format!(
                "INCOMPLETE, {} lost, {} unreadable",
                trace.dropped, trace.malformed
            )
        };
        writeln!(
            out,
            "  trace:   {} events from {} processes, {completeness}",
            trace.events, trace.processes
        )?;
    }
    writeln!(
        out,
        "  time:    {:.2} s",
        report.duration_ms as f64 / 1000.0
    )?;
    for note in &report.notes {
        writeln!(out, "  note:    {}", printable(note))?;
    }

    let start = report.phases.first().map_or(0, |p| p.start_ns);
    for severity in [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ] {
        let of: Vec<&Finding> = report
            .findings
            .iter()
            .filter(|f| f.severity == severity)
            .collect();
        let audited: Vec<&AuditFinding> = report
            .audit_findings
            .iter()
            .filter(|f| f.severity == severity)
            .collect();
        let statics: Vec<&StaticFinding> = report
            .static_findings
            .iter()
            .filter(|f| f.severity == severity)
            .collect();
        if of.is_empty() && audited.is_empty() && statics.is_empty() {
            continue;
        }
        writeln!(
            out,
            "\n{} ({})",
            title(severity),
            of.len() + audited.len() + statics.len()
        )?;
        let mut shown: Vec<(&str, usize)> = Vec::new();
        for finding in &of {
            if count_shown(&mut shown, &finding.rule) <= SHOWN_PER_RULE {
                write_finding(out, finding, start)?;
            }
        }
        for finding in &audited {
            if count_shown(&mut shown, &finding.rule) <= SHOWN_PER_RULE {
                write_audit_finding(out, finding, start)?;
            }
        }
        for finding in &statics {
            if count_shown(&mut shown, &finding.rule) <= SHOWN_PER_RULE {
                write_static_finding(out, finding)?;
            }
        }
        for (rule, n) in &shown {
            // Beyond those the report kept, the ones it only counted.
            let omitted = report.findings_omitted.get(*rule).copied().unwrap_or(0);
            let more = n.saturating_sub(SHOWN_PER_RULE) as u64 + omitted;
            if more == 0 {
                continue;
            }
            let kept = match omitted {
                0 => String::new(),
                _ => format!(
                    "; the report keeps the first {} of each rule",
                    crate::report::MAX_FINDINGS_PER_RULE
                ),
            };
            writeln!(
                out,
                "  ... and {more} more {} (see --format json{kept})",
                printable(rule)
            )?;
        }
    }

    write_audit(out, report, start)?;
    write_globals(out, report)?;

    if !report.errors.is_empty() {
        writeln!(out, "\nErrors ({})", report.errors.len())?;
        for e in &report.errors {
            writeln!(out, "  {}", printable(&e.message))?;
        }
        if let Some(loader) = &report.loader
            && !loader.output_tail.trim().is_empty()
        {
            writeln!(out, "  the loader's last output:")?;
            for line in last_lines(&loader.output_tail, 8) {
                writeln!(out, "    | {}", printable(line))?;
            }
        }
    }
    if report.findings.is_empty()
        && report.audit_findings.is_empty()
        && report.static_findings.is_empty()
        && report.errors.is_empty()
    {
        writeln!(out, "\nNo findings.")?;
    }
    Ok(())
}

/// Counts one more finding of `rule`; returns how many of it there are so far.
fn count_shown<'a>(shown: &mut Vec<(&'a str, usize)>, rule: &'a str) -> usize {
    match shown.iter_mut().find(|(r, _)| *r == rule) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            shown.push((rule, 1));
            1
        }
    }
}

/// Interpreter evidence worth a person's time: what the artifact made Python resolve and run.
/// Imports and compiles (there are hundreds) stay in the JSON report.
fn write_audit(out: &mut impl Write, report: &ScanReport, start_ns: u64) -> io::Result<()> {
    const SHOWN: usize = 20;
    let telling: Vec<_> = report
        .audit
        .iter()
        .filter(|a| {
            !matches!(
                a.event.as_str(),
                "import" | "compile" | "exec" | "marshal.loads"
            )
        })
        .collect();
    if telling.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nInterpreter evidence (--audit, {} events)",
        telling.len()
    )?;
    for a in telling.iter().take(SHOWN) {
        let at = a.time_ns.saturating_sub(start_ns) as f64 / 1e9;
        writeln!(
            out,
            "  +{at:.3} s [{} phase, sandbox pid {}] {} {}",
            a.phase,
            a.pid,
            printable(&a.event),
            printable(&a.args)
        )?;
    }
    if telling.len() > SHOWN {
        writeln!(out, "  ... {} more in --format json", telling.len() - SHOWN)?;
    }
    Ok(())
}

/// What the static analysis read, in one line: how many globals the pickles name (each one
/// a rule marks is a finding above).
fn write_globals(out: &mut impl Write, report: &ScanReport) -> io::Result<()> {
    let pickles = &report.artifact.globals;
    if pickles.is_empty() {
        return Ok(());
    }
    let named: usize = pickles.iter().map(|p| p.globals.len() + p.omitted).sum();
    let incomplete = pickles.iter().filter(|p| p.incomplete.is_some()).count();
    writeln!(
        out,
        "\nStatic analysis: {} pickle{} naming {named} global{}{} (all in --format json)",
        pickles.len(),
        if pickles.len() == 1 { "" } else { "s" },
        if named == 1 { "" } else { "s" },
        if incomplete > 0 {
            format!(", {incomplete} not read to the end")
        } else {
            String::new()
        }
    )
}

fn write_static_finding(out: &mut impl Write, f: &StaticFinding) -> io::Result<()> {
    writeln!(
        out,
        "  {}: {} [static, {}] {}",
        printable(&f.rule),
        printable(&f.description),
        f.observed.describe(),
        printable(&f.tags.join(","))
    )?;
    writeln!(
        out,
        "    {}: {}",
        printable(&f.location),
        printable(&f.evidence)
    )
}

/// A finding's first line: rule, description, phase, time since the first phase, tags.
fn write_headline(
    out: &mut impl Write,
    (source, rule, description, phase, tags): (Source, &str, &str, Phase, &[String]),
    time_ns: u64,
    start_ns: u64,
) -> io::Result<()> {
    let at = time_ns.saturating_sub(start_ns) as f64 / 1e9;
    writeln!(
        out,
        "  {}: {} [{source}, {phase} phase, +{at:.3} s] {}",
        printable(rule),
        printable(description),
        printable(&tags.join(","))
    )
}

fn write_audit_finding(out: &mut impl Write, f: &AuditFinding, start_ns: u64) -> io::Result<()> {
    let what = (
        f.source,
        f.rule.as_str(),
        f.description.as_str(),
        f.phase,
        &f.tags[..],
    );
    write_headline(out, what, f.audit.time_ns, start_ns)?;
    writeln!(
        out,
        "    [python audit, sandbox pid {}] {} {}",
        f.audit.pid,
        printable(&f.audit.event),
        printable(&f.audit.args)
    )
}

fn write_finding(out: &mut impl Write, f: &Finding, start_ns: u64) -> io::Result<()> {
    let what = (
        f.source,
        f.rule.as_str(),
        f.description.as_str(),
        f.phase,
        &f.tags[..],
    );
    write_headline(out, what, f.event.time_ns, start_ns)?;
    writeln!(out, "    {}", render::text(&f.event))?;
    if let Some(p) = &f.process {
        let argv = if p.argv.is_empty() {
            String::new()
        } else {
            format!(" {:?}", p.argv)
        };
        let chain: Vec<String> = p
            .parents
            .iter()
            .map(|a| format!("{} {}", a.pid, printable(a.exe.as_deref().unwrap_or("?"))))
            .collect();
        writeln!(
            out,
            "    process {} {}{argv}{}",
            p.pid,
            printable(p.exe.as_deref().unwrap_or(&f.event.comm)),
            if chain.is_empty() {
                String::new()
            } else {
                format!(" <- {}", chain.join(" <- "))
            }
        )?;
    }
    Ok(())
}

fn title(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "Critical",
        Severity::High => "High",
        Severity::Medium => "Medium",
        Severity::Low => "Low",
        Severity::Info => "Info",
    }
}

fn last_lines(text: &str, n: usize) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip)
}

#[cfg(test)]
mod escaping_tests {
    use super::*;
    use crate::report::{ErrorKind, Loader, ScanError};

    #[test]
    fn what_the_payload_chose_cannot_drive_the_terminal_or_fake_a_line() {
        let mut report = ScanReport::new(
            std::path::Path::new("/models/m.pkl\u{1b}]0;owned\u{7}"),
            Severity::High,
        );
        report.loader = Some(Loader {
            kind: "pickle".into(),
            loaded_type: Some("\u{1b}[2J\u{1b}[H\n  verdict: CLEAN (exit code 0)".into()),
            output_tail: "ok\n\u{1b}[31mfake\u{1b}[0m\r  verdict: CLEAN\n".into(),
            ..Loader::default()
        });
        report
            .errors
            .push(ScanError::new(ErrorKind::Loader, "boom\n  verdict: CLEAN"));
        report.conclude(std::time::Duration::ZERO);
        let mut out = Vec::new();
        write(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'));
        let verdicts: Vec<_> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("verdict:"))
            .collect();
        assert_eq!(verdicts, ["  verdict: ERROR (exit code 2)"], "{text}");
    }
}
