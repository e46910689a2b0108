//! One rule's `match:` block, compiled; and the facts of an event it is tested against.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use monitor_common::syscall::{ArgKind, Class, by_name};

use super::schema::{MatchSpec, ResultCondition};
use crate::{
    decode::{ArgValue, SockAddr, is_family_name, is_flag_name},
    trace::SyscallEvent,
};

#[derive(Debug)]
pub(super) struct Matcher {
    /// Syscall numbers; empty: any.
    syscalls: Vec<u32>,
    classes: Vec<Class>,
    result: ResultCondition,
    path: Option<GlobSet>,
    path_not: Option<GlobSet>,
    flags_any: Vec<String>,
    mode_any: Option<u32>,
    family: Vec<String>,
    port: Vec<u16>,
    /// Audit event names; not empty: the rule is about audit events, never syscalls.
    audit: Vec<String>,
    subject: Option<GlobSet>,
    subject_not: Option<GlobSet>,
}

impl Matcher {
    pub(super) fn compile(spec: &MatchSpec) -> Result<Self, String> {
        let syscalls = spec
            .syscalls
            .iter()
            .map(|n| {
                by_name(n)
                    .map(|s| s.nr)
                    .ok_or_else(|| format!("unknown syscall `{n}`"))
            })
            .collect::<Result<_, _>>()?;
        let classes = spec
            .classes
            .iter()
            .map(|n| {
                Class::ALL
                    .into_iter()
                    .find(|c| c.name() == n)
                    .ok_or_else(|| format!("unknown class `{n}`"))
            })
            .collect::<Result<_, _>>()?;
        if let Some(bad) = spec.flags_any.iter().find(|f| !is_flag_name(f)) {
            return Err(format!("unknown flag `{bad}`"));
        }
        if let Some(bad) = spec.family.iter().find(|f| !is_family_name(f)) {
            return Err(format!("unknown address family `{bad}`"));
        }
        let matcher = Matcher {
            syscalls,
            classes,
            result: spec.result,
            path: globs(&spec.path)?,
            path_not: globs(&spec.path_not)?,
            flags_any: spec.flags_any.clone(),
            mode_any: spec.mode_any,
            family: spec.family.clone(),
            port: spec.port.clone(),
            audit: spec.audit.clone(),
            subject: globs(&spec.subject)?,
            subject_not: globs(&spec.subject_not)?,
        };
        let about_syscalls = !matcher.syscalls.is_empty() || !matcher.classes.is_empty();
        if matcher.is_audit() {
            let syscall_only = about_syscalls
                || matcher.result != ResultCondition::Any
                || matcher.path.is_some()
                || matcher.path_not.is_some()
                || !matcher.flags_any.is_empty()
                || matcher.mode_any.is_some()
                || !matcher.family.is_empty()
                || !matcher.port.is_empty();
            if syscall_only {
                return Err("an `audit` rule cannot have syscall conditions: \
                            write one rule per kind of evidence"
                    .into());
            }
        } else if !about_syscalls {
            return Err(
                "give `syscalls`, `classes` or `audit`: a rule must say which events it is about"
                    .into(),
            );
        } else if matcher.subject.is_some() || matcher.subject_not.is_some() {
            return Err("`subject` is for `audit` rules".into());
        }
        Ok(matcher)
    }

    pub(super) fn is_audit(&self) -> bool {
        !self.audit.is_empty()
    }

    /// Whether an audit event named `event` about `subject` matches (never for a syscall
    /// rule). A rule with subject globs needs a subject.
    pub(super) fn matches_audit(&self, event: &str, subject: Option<&str>) -> bool {
        self.audit.iter().any(|a| a == event)
            && self
                .subject
                .as_ref()
                .is_none_or(|g| subject.is_some_and(|s| g.is_match(s)))
            && self
                .subject_not
                .as_ref()
                .is_none_or(|g| !subject.is_some_and(|s| g.is_match(s)))
    }

    pub(super) fn matches(&self, sc: &SyscallEvent, facts: &Facts) -> bool {
        !self.is_audit()
            && (self.syscalls.is_empty() || self.syscalls.contains(&sc.syscall.nr))
            && (self.classes.is_empty() || self.classes.contains(&sc.class))
            && match self.result {
                ResultCondition::Any => true,
                ResultCondition::Success => sc.ret.is_some_and(|r| r >= 0),
                ResultCondition::Failure => sc.ret.is_some_and(|r| r < 0),
            }
            && self
                .path
                .as_ref()
                .is_none_or(|g| facts.paths.iter().any(|p| g.is_match(p)))
            && self
                .path_not
                .as_ref()
                .is_none_or(|g| !facts.paths.iter().any(|p| g.is_match(p)))
            && (self.flags_any.is_empty()
                || self
                    .flags_any
                    .iter()
                    .any(|f| facts.flags.contains(&f.as_str())))
            && self
                .mode_any
                .is_none_or(|bits| facts.modes.iter().any(|m| m & bits != 0))
            && (self.family.is_empty()
                || facts
                    .families
                    .iter()
                    .any(|f| self.family.iter().any(|x| x == f)))
            && (self.port.is_empty() || facts.ports.iter().any(|p| self.port.contains(p)))
    }
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("bad glob `{p}`: {e}"))?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| e.to_string())
}

/// What rules look at in one syscall event, gathered once for all rules.
#[derive(Debug, Default)]
pub(crate) struct Facts<'a> {
    /// Path arguments and socket file addresses, made absolute (against the cwd) and
    /// normalised lexically.
    pub paths: Vec<String>,
    pub flags: Vec<&'a str>,
    pub modes: Vec<u32>,
    pub families: Vec<&'a str>,
    pub ports: Vec<u16>,
}

impl<'a> Facts<'a> {
    pub(crate) fn of(sc: &'a SyscallEvent, cwd: Option<&str>) -> Self {
        let mut facts = Facts::default();
        for (arg, (_, value)) in sc.syscall.args.iter().zip(&sc.args.0) {
            match (arg.kind, value) {
                (ArgKind::Path, ArgValue::Str(Some(p))) => facts.paths.push(absolute(p, cwd)),
                (ArgKind::AddressFamily, ArgValue::Flags { text, .. }) => facts.families.push(text),
                (_, ArgValue::Flags { text, .. }) => facts.flags.extend(text.split('|')),
                (_, ArgValue::Mode(m)) => facts.modes.push(*m),
                (_, ArgValue::SockAddr(Some(addr))) => match addr {
                    SockAddr::Inet { port, .. } => {
                        facts.families.push("AF_INET");
                        facts.ports.push(*port);
                    }
                    SockAddr::Inet6 { port, .. } => {
                        facts.families.push("AF_INET6");
                        facts.ports.push(*port);
                    }
                    SockAddr::Unix { path } => {
                        facts.families.push("AF_UNIX");
                        // A socket file is a path too (abstract names start with `@`).
                        if !path.starts_with('@') {
                            facts.paths.push(absolute(path, cwd));
                        }
                    }
                    SockAddr::Other { .. } => {}
                },
                _ => {}
            }
        }
        // What the paths reached, as the tracer resolved them (a directory fd, a symlink).
        facts.paths.extend(sc.resolved.iter().cloned());
        facts
    }
}

/// `path` made absolute against `cwd` (when relative and the cwd is known) with `.` and `..`
/// resolved lexically, so `../../etc/shadow` is seen as `/etc/shadow`.
fn absolute(path: &str, cwd: Option<&str>) -> String {
    let joined = match (path.starts_with('/'), cwd) {
        (true, _) | (false, None) => path.to_owned(),
        (false, Some(cwd)) => format!("{cwd}/{path}"),
    };
    if !joined.starts_with('/') {
        return joined;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn relative_and_dotted_paths_are_resolved() {
        assert_eq!(
            absolute("../../etc/shadow", Some("/home/u/x")),
            "/home/etc/shadow"
        );
        assert_eq!(
            absolute("../../../../etc/shadow", Some("/tmp")),
            "/etc/shadow"
        );
        assert_eq!(absolute("/tmp/./a/../../etc//passwd", None), "/etc/passwd");
        assert_eq!(absolute("x.pkl", None), "x.pkl");
    }
}
