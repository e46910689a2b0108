//! Events for people (one strace-like line each) and for programs (JSON lines).

use std::io::{self, Write};

use crate::{
    rules::Finding,
    trace::{Event, What},
};

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
            finding.rule,
            finding.description,
            text(&finding.event)
        ),
    }
}

/// `[pid 42 sh] openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = 3`
pub fn text(event: &Event) -> String {
    let who = if event.tid == event.pid {
        format!("[pid {} {}]", event.pid, event.comm)
    } else {
        format!("[pid {}/{} {}]", event.pid, event.tid, event.comm)
    };
    match &event.what {
        What::Syscall(sc) => {
            let args: Vec<String> = sc
                .args
                .0
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
            let mut line = format!("{who} {}({}) = {ret}", sc.name, args.join(", "));
            if !sc.resolved.is_empty() {
                // What the paths reached: a directory fd's file, a symlink's target.
                line.push_str(&format!(" <reached {}>", sc.resolved.join(" -> ")));
            }
            if sc.truncated {
                line.push_str(" <truncated>");
            }
            if sc.read_error {
                line.push_str(" <unreadable memory>");
            }
            if sc.recaptured {
                line.push_str(" <read at exit>");
            }
            if sc.killed {
                line.push_str(" <killed by the watch's policy>");
            }
            line
        }
        What::Fork { child_pid } => format!("{who} +++ new process {child_pid} +++"),
        What::Exec { filename, argv } => format!("{who} --- exec {filename:?} {argv:?} ---"),
        What::Exit {
            exit_code: Some(code),
        } => format!("{who} +++ exited with {code} +++"),
        What::Exit { exit_code: None } => format!("{who} +++ exited +++"),
    }
}

/// open and openat ignore their mode unless they may create a file; strace leaves it out then,
/// and so do we (JSON keeps every argument).
fn mode_is_unused(sc: &crate::trace::SyscallEvent) -> bool {
    matches!(sc.name, "open" | "openat")
        && sc.arg("flags").is_some_and(|f| {
            let text = f.to_string();
            !text.contains("O_CREAT") && !text.contains("O_TMPFILE")
        })
}
