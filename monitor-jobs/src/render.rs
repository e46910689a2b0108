//! Events for people (one strace-like line each) and for programs (JSON lines).
//!
//! What a traced program controls (its name, the paths and strings it passes) is shown
//! through [`printable`]: a payload cannot write escape sequences or fake lines on the
//! terminal of whoever reads its trace or its report.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
};

use monitor_common::syscall::ArgKind;

use monitor_engine::trace::{Event, What};
use monitor_rules::Finding;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Text,
    Json,
}

/// Writes one event in `style`, followed by a newline.
pub fn write_event(out: &mut impl Write, style: Style, event: &Event) -> io::Result<()> {
    match style {
        Style::Json => {
            serde_json::to_writer(&mut *out, event)?;
            out.write_all(b"\n")
        }
        Style::Text => writeln!(out, "{}", text(event)),
    }
}

/// Writes one finding in `style`: two lines of text (what, then the evidence), or a JSON
/// object with `"type":"finding"`.
pub fn write_finding(out: &mut impl Write, style: Style, finding: &Finding) -> io::Result<()> {
    match style {
        Style::Json => {
            let mut value = serde_json::to_value(finding)?;
            value["type"] = "finding".into();
            serde_json::to_writer(&mut *out, &value)?;
            out.write_all(b"\n")
        }
        Style::Text => writeln!(
            out,
            "monitor: {} {}: {}\n    {}",
            finding.severity.name().to_uppercase(),
            printable(&finding.rule),
            printable(&finding.description),
            text(&finding.event)
        ),
    }
}

/// `text` as it may be shown on a terminal: control characters (C0 with newlines and tabs,
/// DEL, C1) and the Unicode marks that reorder or hide text (bidirectional overrides and
/// isolates, zero-width characters) are written as escapes (`\n`, `\u{1b}`), so that a
/// string a payload chose can neither drive the terminal nor fake a line of a report.
pub fn printable(text: &str) -> Cow<'_, str> {
    printable_keeping(text, &[])
}

/// [`printable`] for text of several lines (a loader's output, a report rendered by the
/// daemon): newlines stay.
pub fn printable_lines(text: &str) -> Cow<'_, str> {
    printable_keeping(text, &['\n'])
}

fn printable_keeping<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    let unsafe_char = |c: char| !keep.contains(&c) && is_unsafe(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `[pid 42 sh] openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3`
pub fn text(event: &Event) -> String {
    let comm = printable(&event.comm);
    let who = if event.tid == event.pid {
        format!("[pid {} {comm}]", event.pid)
    } else {
        format!("[pid {}/{} {comm}]", event.pid, event.tid)
    };
    format!("{who} {}", act(event))
}

/// What the event did, without who did it: `openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3`
/// (the same in every run, where pids are not).
pub fn act(event: &Event) -> String {
    match &event.what {
        What::Syscall(sc) => {
            let args: Vec<String> = sc
                .args
                .iter()
                .filter(|(name, _)| !(*name == "mode" && mode_is_unused(sc)))
                .map(|(_, v)| v.to_string())
                .collect();
            let ret = match (sc.ret, &sc.errno) {
                (Some(_), Some(errno)) => format!("-1 {errno}"),
                (Some(r), None) if r > 0xffff => format!("{r:#x}"),
                (Some(r), None) => r.to_string(),
                (None, _) => "?".into(),
            };
            let mut line = format!("{}({}) = {ret}", sc.name, args.join(", "));
            if !sc.resolved.is_empty() {
                // What the paths reached: a directory fd's file, a symlink's target.
                line.push_str(&format!(" <reached {}>", sc.resolved.join(" -> ")));
            }
            if sc.flags.truncated {
                line.push_str(" <truncated>");
            }
            if sc.flags.read_error {
                line.push_str(" <unreadable memory>");
            }
            if sc.flags.recaptured {
                line.push_str(" <read at exit>");
            }
            if sc.flags.killed {
                line.push_str(" <killed by the watch's policy>");
            }
            line
        }
        What::Fork { child_pid } => format!("+++ new process {child_pid} +++"),
        What::Exec { filename, argv } => format!("--- exec {filename:?} {argv:?} ---"),
        What::Exit {
            killed_by: Some(signal),
            ..
        } => format!("+++ killed by {} +++", signal_name(*signal)),
        What::Exit {
            exit_code: Some(code),
            ..
        } => format!("+++ exited with {code} +++"),
        What::Exit { .. } => "+++ exited +++".to_string(),
    }
}

/// `SIGSYS`, or the number where it names no signal.
pub fn signal_name(signal: u8) -> String {
    nix::sys::signal::Signal::try_from(i32::from(signal))
        .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string())
}

/// An open with open flags (open, openat) ignores its mode unless it may create a file;
/// strace leaves it out then, and so do we (JSON keeps every argument).
fn mode_is_unused(sc: &monitor_engine::trace::SyscallEvent) -> bool {
    let flagged = sc.syscall.args.iter().any(|a| a.kind == ArgKind::OpenFlags);
    sc.syscall.opens
        && flagged
        && sc.arg("flags").is_some_and(|f| {
            let text = f.to_string();
            !text.contains("O_CREAT") && !text.contains("O_TMPFILE")
        })
}

#[cfg(test)]
mod printable_tests {
    use super::*;

    #[test]
    fn control_characters_and_hiding_marks_are_escaped_and_plain_text_is_not_copied() {
        assert!(matches!(printable("torch.nn.Linear"), Cow::Borrowed(_)));
        assert_eq!(
            printable("\u{1b}[2J\n  verdict: CLEAN\r\t\u{7f}\u{9b}"),
            "\\u{1b}[2J\\n  verdict: CLEAN\\r\\t\\u{7f}\\u{9b}"
        );
        assert_eq!(printable("evil\u{202e}lmth.exe"), "evil\\u{202e}lmth.exe");
        assert_eq!(
            printable("h\u{e9}llo \u{6a21}\u{578b}"),
            "h\u{e9}llo \u{6a21}\u{578b}"
        );
        assert_eq!(printable_lines("a\nb\u{1b}c\n"), "a\nb\\u{1b}c\n");
    }
}
