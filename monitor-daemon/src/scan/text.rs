//! The scan report for people: the verdict first, then findings grouped by severity (most
//! severe first), each saying its source: the kernel trace (with its process, the syscall as
//! strace would show it, and its phase), the audit hook, or the static analysis (where in the
//! artifact, and whether the load showed it acting).

use std::io::{self, Write};

use crate::{
    render,
    rules::{Finding, Phase, Severity, Source},
    scan::{
        report::{AuditFinding, ScanReport},
        static_analysis::StaticFinding,
    },
};

/// At most this many findings of one rule are shown in full; the rest are counted.
const SHOWN_PER_RULE: usize = 3;

pub fn write(out: &mut impl Write, report: &ScanReport) -> io::Result<()> {
    writeln!(out, "monitor scan: {}", report.artifact.path)?;
    if let Some(description) = &report.artifact.description {
        writeln!(out, "  format:  {description}")?;
    }
    writeln!(
        out,
        "  verdict: {} (exit code {})",
        report.verdict.name().to_uppercase(),
        u8::from(report.exit_code)
    )?;
    if let Some(loader) = &report.loader {
        let loaded = loader.loaded_type.as_deref().unwrap_or("nothing");
        writeln!(out, "  loaded:  {loaded} (with {})", loader.kind)?;
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
        writeln!(out, "  note:    {note}")?;
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
        for (rule, n) in shown.iter().filter(|(_, n)| *n > SHOWN_PER_RULE) {
            writeln!(
                out,
                "  ... and {} more {rule} (see --format json)",
                n - SHOWN_PER_RULE
            )?;
        }
    }

    write_audit(out, report, start)?;
    write_globals(out, report)?;

    if !report.errors.is_empty() {
        writeln!(out, "\nErrors ({})", report.errors.len())?;
        for e in &report.errors {
            writeln!(out, "  {}", e.message)?;
        }
        if let Some(loader) = &report.loader
            && !loader.output_tail.trim().is_empty()
        {
            writeln!(out, "  the loader's last output:")?;
            for line in last_lines(&loader.output_tail, 8) {
                writeln!(out, "    | {line}")?;
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
            a.phase, a.pid, a.event, a.args
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
        f.rule,
        f.description,
        f.observed.describe(),
        f.tags.join(",")
    )?;
    writeln!(out, "    {}: {}", f.location, f.evidence)
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
        "  {rule}: {description} [{source}, {phase} phase, +{at:.3} s] {}",
        tags.join(",")
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
        f.audit.pid, f.audit.event, f.audit.args
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
            .map(|a| format!("{} {}", a.pid, a.exe.as_deref().unwrap_or("?")))
            .collect();
        writeln!(
            out,
            "    process {} {}{argv}{}",
            p.pid,
            p.exe.as_deref().unwrap_or(&f.event.comm),
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
