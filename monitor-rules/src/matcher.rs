//! One rule's `match:` block, compiled once (globs, ranges, list references resolved); and
//! the facts of an event it is tested against, gathered once per event without allocating
//! (but for a relative path, made absolute).

use std::{borrow::Cow, net::IpAddr, sync::OnceLock};

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use monitor_common::syscall::{ArgKind, Class, Syscall, by_name, is_known};
use smallvec::SmallVec;

use super::{
    Context,
    lists::Lists,
    net::{AddrRange, PortRange, canonical},
    schema::{Direction, MatchSpec, ResultCondition, Scalar},
};
use monitor_engine::decode::{ArgValue, SockAddr, is_family_name, is_flag_name};
use monitor_engine::resolve;
use monitor_engine::trace::{Event, SyscallEvent};

#[derive(Debug, Clone)]
pub(super) struct Matcher {
    syscalls: Syscalls,
    classes: Vec<Class>,
    result: ResultCondition,
    /// The globs of `path` and `path_not` one by one, for the judge's index to combine.
    path_globs: [Vec<Glob>; 2],
    /// The same globs, each matched on its own: built on first need only, where the index
    /// could not combine them (and by the test that checks the combined sets against them).
    path_matchers: OnceLock<[Vec<GlobMatcher>; 2]>,
    flags_any: Vec<String>,
    mode_any: Option<u32>,
    family: Vec<String>,
    port: Vec<PortRange>,
    port_not: Vec<PortRange>,
    addr: Vec<AddrRange>,
    addr_not: Vec<AddrRange>,
    direction: Option<Direction>,
    process: ProcessConditions,
    /// Audit event names; not empty: the rule is about audit events, never syscalls.
    audit: Vec<String>,
    subject: Option<GlobSet>,
    subject_not: Option<GlobSet>,
    /// Whether the rule asks nothing of an act but its syscall and paths (a policy's rule
    /// about a file, most often): then there is nothing else to test.
    paths_only: bool,
}

/// Which syscalls a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Syscalls {
    /// It names none: any.
    Any,
    /// The numbers of those it names that this architecture has. Empty when it names only
    /// syscalls of another architecture (`open` on aarch64): then it matches none.
    Only(Vec<u32>),
}

/// What a rule asks of the process that acted.
#[derive(Debug, Clone, Default)]
struct ProcessConditions {
    exe: Option<GlobSet>,
    exe_not: Option<GlobSet>,
    comm: Option<GlobSet>,
    comm_not: Option<GlobSet>,
    parent_exe: Option<GlobSet>,
    ancestor_exe: Option<GlobSet>,
    ancestor_exe_not: Option<GlobSet>,
    uid: Vec<u32>,
    uid_not: Vec<u32>,
}

impl ProcessConditions {
    fn is_empty(&self) -> bool {
        // Every field by name: a condition added here cannot be left out of this test.
        let ProcessConditions {
            exe,
            exe_not,
            comm,
            comm_not,
            parent_exe,
            ancestor_exe,
            ancestor_exe_not,
            uid,
            uid_not,
        } = self;
        exe.is_none()
            && exe_not.is_none()
            && comm.is_none()
            && comm_not.is_none()
            && parent_exe.is_none()
            && ancestor_exe.is_none()
            && ancestor_exe_not.is_none()
            && uid.is_empty()
            && uid_not.is_empty()
    }

    /// Whether the process of `event` meets every condition. A condition on something not
    /// known (a program the trace never saw) does not hold, and its negation does.
    fn hold(&self, event: &Event, ctx: &Context) -> bool {
        let view = ctx.process;
        let exe = view.and_then(|v| v.exe());
        let some = |g: &Option<GlobSet>, v: Option<&str>| {
            g.as_ref().is_none_or(|g| v.is_some_and(|v| g.is_match(v)))
        };
        let none = |g: &Option<GlobSet>, v: Option<&str>| {
            g.as_ref().is_none_or(|g| !v.is_some_and(|v| g.is_match(v)))
        };
        (self.uid.is_empty() || self.uid.contains(&event.uid))
            && !self.uid_not.contains(&event.uid)
            && some(&self.comm, Some(&event.comm))
            && none(&self.comm_not, Some(&event.comm))
            && some(&self.exe, exe)
            && none(&self.exe_not, exe)
            && some(&self.parent_exe, view.and_then(|v| v.parent_exe()))
            && self.ancestor_exe.as_ref().is_none_or(|g| {
                view.is_some_and(|v| v.ancestor_exes().flatten().any(|a| g.is_match(a)))
            })
            && self.ancestor_exe_not.as_ref().is_none_or(|g| {
                !view.is_some_and(|v| v.ancestor_exes().flatten().any(|a| g.is_match(a)))
            })
    }
}

impl Matcher {
    pub(super) fn compile(spec: &MatchSpec, lists: &Lists) -> Result<Self, String> {
        let syscalls = if spec.syscalls.is_empty() {
            Syscalls::Any
        } else {
            let mut here = Vec::new();
            for name in &spec.syscalls {
                match by_name(name) {
                    Some(sc) => here.push(sc.nr),
                    None if is_known(name) => {}
                    None => return Err(format!("unknown syscall `{name}`")),
                }
            }
            Syscalls::Only(here)
        };
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
        let texts = |items: &[String]| lists.expand_texts(items);
        let globs_of = |items: &[String]| globs(&texts(items)?);
        let glob_list = |items: &[String]| {
            texts(items)?
                .iter()
                .map(|p| glob(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let matcher = Matcher {
            syscalls,
            classes,
            result: spec.result,
            path_globs: [glob_list(&spec.path)?, glob_list(&spec.path_not)?],
            path_matchers: OnceLock::new(),
            flags_any: spec.flags_any.clone(),
            mode_any: spec.mode_any,
            family: spec.family.clone(),
            port: ports(&lists.expand(&spec.port)?)?,
            port_not: ports(&lists.expand(&spec.port_not)?)?,
            addr: addrs(&texts(&spec.addr)?)?,
            addr_not: addrs(&texts(&spec.addr_not)?)?,
            direction: spec.direction,
            process: ProcessConditions {
                exe: globs_of(&spec.exe)?,
                exe_not: globs_of(&spec.exe_not)?,
                comm: globs_of(&spec.comm)?,
                comm_not: globs_of(&spec.comm_not)?,
                parent_exe: globs_of(&spec.parent_exe)?,
                ancestor_exe: globs_of(&spec.ancestor_exe)?,
                ancestor_exe_not: globs_of(&spec.ancestor_exe_not)?,
                uid: spec.uid.clone(),
                uid_not: spec.uid_not.clone(),
            },
            audit: spec.audit.clone(),
            subject: globs_of(&spec.subject)?,
            subject_not: globs_of(&spec.subject_not)?,
            paths_only: false,
        };
        let mut matcher = matcher;
        matcher.paths_only = matcher.asks_only_paths();
        let about_syscalls = matcher.syscalls != Syscalls::Any
            || !matcher.classes.is_empty()
            || matcher.direction.is_some();
        if matcher.is_audit() {
            let syscall_only = about_syscalls
                || matcher.result != ResultCondition::Any
                || !matcher.path_globs().is_empty()
                || !matcher.path_not_globs().is_empty()
                || !matcher.flags_any.is_empty()
                || matcher.mode_any.is_some()
                || !matcher.family.is_empty()
                || !matcher.port.is_empty()
                || !matcher.port_not.is_empty()
                || !matcher.addr.is_empty()
                || !matcher.addr_not.is_empty()
                || !matcher.process.is_empty();
            if syscall_only {
                return Err(
                    "an `audit` rule cannot have syscall conditions (nor process \
                            ones): write one rule per kind of evidence"
                        .into(),
                );
            }
        } else if !about_syscalls {
            return Err(
                "give `syscalls`, `classes`, `direction` or `audit`: a rule must say which \
                 events it is about"
                    .into(),
            );
        } else if matcher.subject.is_some() || matcher.subject_not.is_some() {
            return Err("`subject` is for `audit` rules".into());
        }
        if let Some(direction) = matcher.direction
            && !monitor_common::syscall::SYSCALLS
                .iter()
                .any(|sc| matcher.is_about(sc) && Direction::of(sc.name) == Some(direction))
        {
            return Err(format!(
                "`direction: {}` leaves none of the rule's syscalls",
                serde_json::to_string(&direction).unwrap_or_default()
            ));
        }
        Ok(matcher)
    }

    /// Whether [`Matcher::matches_besides_paths`] holds for every act the rule is about.
    fn asks_only_paths(&self) -> bool {
        // Every field by name, so that a condition added to rules must be placed: tested by
        // `conditions_hold` (then listed below), or settled before (which syscalls, paths,
        // audit events).
        let Matcher {
            syscalls: _,
            classes: _,
            direction: _,
            path_globs: _,
            path_matchers: _,
            audit: _,
            subject: _,
            subject_not: _,
            paths_only: _,
            result,
            flags_any,
            mode_any,
            family,
            port,
            port_not,
            addr,
            addr_not,
            process,
        } = self;
        *result == ResultCondition::Any
            && flags_any.is_empty()
            && mode_any.is_none()
            && family.is_empty()
            && port.is_empty()
            && port_not.is_empty()
            && addr.is_empty()
            && addr_not.is_empty()
            && process.is_empty()
    }

    pub(super) fn is_audit(&self) -> bool {
        !self.audit.is_empty()
    }

    /// Whether the rule can fire on syscall `sc` at all (what the judge's index is built
    /// from).
    pub(super) fn is_about(&self, sc: &Syscall) -> bool {
        !self.is_audit()
            && match &self.syscalls {
                Syscalls::Any => true,
                Syscalls::Only(nrs) => nrs.contains(&sc.nr),
            }
            && (self.classes.is_empty() || self.classes.contains(&sc.class))
            && self
                .direction
                .is_none_or(|d| Direction::of(sc.name) == Some(d))
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

    /// Whether syscall `sc` of `event`, with `facts`, matches, but for its paths (see
    /// [`Matcher::paths_hold`]); the caller has checked [`Matcher::is_about`] (through the
    /// index). A syscall the kernel killed at its entry is judged as the act it attempted: as
    /// if it had succeeded.
    pub(super) fn matches_besides_paths(
        &self,
        sc: &SyscallEvent,
        facts: &Facts,
        event: &Event,
        ctx: &Context,
    ) -> bool {
        self.paths_only || self.conditions_hold(sc, facts, event, ctx)
    }

    /// The conditions [`Matcher::matches_besides_paths`] tests, each of them.
    fn conditions_hold(
        &self,
        sc: &SyscallEvent,
        facts: &Facts,
        event: &Event,
        ctx: &Context,
    ) -> bool {
        (match self.result {
            ResultCondition::Any => true,
            ResultCondition::Success => sc.flags.killed || sc.ret.is_some_and(|r| r >= 0),
            ResultCondition::Failure => !sc.flags.killed && sc.ret.is_some_and(|r| r < 0),
        }) && (self.flags_any.is_empty() || self.flags_any.iter().any(|f| facts.has_flag(f)))
            && self
                .mode_any
                .is_none_or(|bits| facts.modes.iter().any(|m| m & bits != 0))
            && (self.family.is_empty()
                || facts
                    .families
                    .iter()
                    .any(|f| self.family.iter().any(|x| x == f)))
            && (self.port.is_empty()
                || facts
                    .ports
                    .iter()
                    .any(|&p| self.port.iter().any(|r| r.contains(p))))
            && !facts
                .ports
                .iter()
                .any(|&p| self.port_not.iter().any(|r| r.contains(p)))
            && (self.addr.is_empty()
                || facts
                    .addrs
                    .iter()
                    .any(|&a| self.addr.iter().any(|r| r.contains(a))))
            && !facts
                .addrs
                .iter()
                .any(|&a| self.addr_not.iter().any(|r| r.contains(a)))
            && self.process.hold(event, ctx)
    }

    /// Whether the path conditions hold for `facts`, by this rule's own globs (the judge's
    /// index matches all candidates' globs at once instead, where it could combine them).
    pub(super) fn paths_hold(&self, facts: &Facts) -> bool {
        let [path, path_not] = self.path_matchers.get_or_init(|| {
            std::array::from_fn(|i| {
                self.path_globs[i]
                    .iter()
                    .map(Glob::compile_matcher)
                    .collect()
            })
        });
        let any = |matchers: &[GlobMatcher]| {
            facts
                .paths
                .iter()
                .any(|p| matchers.iter().any(|m| m.is_match(p.as_ref())))
        };
        (path.is_empty() || any(path)) && !any(path_not)
    }

    /// The globs of `path`, one by one.
    pub(super) fn path_globs(&self) -> &[Glob] {
        &self.path_globs[0]
    }

    /// The globs of `path_not`, one by one.
    pub(super) fn path_not_globs(&self) -> &[Glob] {
        &self.path_globs[1]
    }
}

/// Compiles globs: `*` stays within a directory, `**` crosses directories.
pub(super) fn globs(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(glob(p)?);
    }
    set.build().map(Some).map_err(|e| e.to_string())
}

/// Compiles one glob: `*` stays within a directory, `**` crosses directories.
fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad glob `{pattern}`: {e}"))
}

/// `text` as a glob that matches only itself (for values learned from what was seen).
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "*?[]{}\\".contains(c) {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `text` holds glob syntax (else a glob of it matches only itself).
pub fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

pub(super) fn ports(items: &[Scalar]) -> Result<Vec<PortRange>, String> {
    items
        .iter()
        .map(|item| match item {
            Scalar::Number(n) => u16::try_from(*n)
                .map(|p| PortRange { low: p, high: p })
                .map_err(|_| format!("`{n}` is not a port (0 to 65535)")),
            Scalar::Text(t) => PortRange::parse(t),
        })
        .collect()
}

pub(super) fn addrs(items: &[String]) -> Result<Vec<AddrRange>, String> {
    items.iter().map(|a| AddrRange::parse(a)).collect()
}

/// What rules look at in one syscall event, gathered once for all rules.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    /// Path arguments and socket file addresses, made absolute (against the cwd) and
    /// normalised lexically.
    pub paths: SmallVec<[Cow<'a, str>; 2]>,
    /// The text of each flags argument (`O_WRONLY|O_CREAT`).
    pub flags: SmallVec<[&'a str; 2]>,
    pub modes: SmallVec<[u32; 2]>,
    pub families: SmallVec<[&'a str; 2]>,
    pub ports: SmallVec<[u16; 2]>,
    pub addrs: SmallVec<[IpAddr; 2]>,
}

impl<'a> Facts<'a> {
    // Inlined: the facts (a few hundred bytes) are then built where the judge keeps them.
    #[inline(always)]
    pub fn of(sc: &'a SyscallEvent, cwd: Option<&str>) -> Self {
        let mut facts = Facts::default();
        for (i, (arg, value)) in sc.syscall.args.iter().zip(sc.args.values()).enumerate() {
            match (arg.kind, value) {
                // The tracer checked it is absolute and normal (most paths): as it is.
                (ArgKind::Path, ArgValue::Str(Some(p))) if sc.clean_paths & (1 << i) != 0 => {
                    facts.paths.push(Cow::Borrowed(p))
                }
                (ArgKind::Path, ArgValue::Str(Some(p))) => facts.paths.push(absolute(p, cwd)),
                (ArgKind::AddressFamily, ArgValue::Flags { text, .. }) => facts.families.push(text),
                (_, ArgValue::Flags { text, .. }) => facts.flags.push(text),
                (_, ArgValue::Mode(m)) => facts.modes.push(*m),
                (_, ArgValue::SockAddr(Some(addr))) => match addr {
                    SockAddr::Inet { addr, port } => {
                        facts.families.push("AF_INET");
                        facts.ports.push(*port);
                        facts.addrs.push(IpAddr::V4(*addr));
                    }
                    SockAddr::Inet6 { addr, port } => {
                        facts.families.push("AF_INET6");
                        facts.ports.push(*port);
                        facts.addrs.push(canonical(IpAddr::V6(*addr)));
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
        // What the paths reached, as the tracer resolved them (a directory fd, a symlink);
        // most events have none, and an extend costs even then.
        if !sc.resolved.is_empty() {
            facts.paths.extend(
                sc.resolved
                    .iter()
                    .map(|p| std::borrow::Cow::Borrowed(p.as_str())),
            );
        }
        facts
    }

    /// Whether a flags argument holds the flag `name`.
    pub fn has_flag(&self, name: &str) -> bool {
        self.flags.iter().any(|text| holds_flag(text, name))
    }
}

/// Whether `name` is one of the names of the flags text `text` (`O_WRONLY|O_CREAT`), as
/// `text.split('|').any(|n| n == name)` says. Most events are asked about one or two flags
/// (`O_CREAT`), and a text holds two or three short names: each is compared where it lies,
/// only if it has the length asked, and the `|` between them are found eight bytes at a time.
fn holds_flag(text: &str, name: &str) -> bool {
    let (text, name) = (text.as_bytes(), name.as_bytes());
    let len = text.len();
    if len < 8 {
        return text.split(|&b| b == b'|').any(|n| n == name);
    }
    let is_name = |start: usize, end: usize| end - start == name.len() && text[start..end] == *name;
    let mut start = 0;
    // Each step's eight bytes, the last overlapping the one before (its bytes seen already
    // skipped).
    let mut at = 0;
    while at < len {
        let (from, skip) = if at + 8 <= len {
            (at, 0)
        } else {
            (len - 8, at - (len - 8))
        };
        let word: [u8; 8] = text[from..from + 8].try_into().expect("8 bytes");
        let mut bars = resolve::bytes_equal(word, b'|') & (u64::MAX << (8 * skip));
        while bars != 0 {
            let bar = from + (bars.trailing_zeros() / 8) as usize;
            if is_name(start, bar) {
                return true;
            }
            start = bar + 1;
            bars &= bars - 1;
        }
        at += 8;
    }
    is_name(start, len)
}

/// `path` made absolute against `cwd` (when relative and the cwd is known) with `.` and `..`
/// resolved lexically, so `../../etc/shadow` is seen as `/etc/shadow`. A path that is
/// absolute and clean already is borrowed as it is.
pub fn absolute<'p>(path: &'p str, cwd: Option<&str>) -> Cow<'p, str> {
    if resolve::is_clean(path) {
        return Cow::Borrowed(path);
    }
    match resolve::absolute(path, cwd) {
        Some(resolved) => Cow::Owned(resolved),
        // Relative, and the working directory unknown: judged as it was given.
        None => Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event the real tracer makes of `openat(AT_FDCWD, path)` by a process in `/work`.
    fn traced_open(path: &str) -> SyscallEvent {
        use monitor_engine::decode::{Call, Enter, Flags, Header, Record};
        use monitor_engine::trace::{Tracer, What};
        let mut tracer = Tracer::default();
        let header = Header {
            time_ns: 1,
            cpu: 0,
            cgroup_id: 1,
            watch_id: 1,
            pid: 7,
            tid: 7,
            uid: 0,
            gid: 0,
            comm: "python3".into(),
            flags: Flags::default(),
        };
        let enter = Enter {
            header,
            syscall: by_name("openat").unwrap(),
            args: vec![
                ArgValue::Fd(libc::AT_FDCWD),
                ArgValue::Str(Some(path.into())),
                ArgValue::Flags {
                    raw: 0,
                    text: "O_RDONLY".into(),
                },
            ]
            .into(),
        };
        let record = Record::Call(Call {
            enter,
            exit_ns: 2,
            ret: 3,
            file: None,
        });
        match tracer
            .push_last(record, &mut |e| panic!("{e:?}"))
            .map(|e| e.what)
        {
            Some(What::Syscall(sc)) => sc,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_paths_the_tracer_marked_clean_are_the_facts_an_unmarked_event_gives() {
        // The oracle: the same event with no mark, each path checked by the rules.
        for path in [
            "/etc/passwd",
            "/",
            "/a/b.c/..d",
            "x.pkl",
            "../etc/shadow",
            "/etc//x/.",
        ] {
            let marked = traced_open(path);
            let mut unmarked = marked.clone();
            unmarked.clean_paths = 0;
            let paths = |sc: &SyscallEvent| -> Vec<String> {
                Facts::of(sc, Some("/work"))
                    .paths
                    .iter()
                    .map(|p| p.to_string())
                    .collect()
            };
            assert_eq!(paths(&marked), paths(&unmarked), "{path}");
            let clean = resolve::is_clean(path);
            assert_eq!(marked.clean_paths != 0, clean, "{path}");
        }
    }

    #[test]
    fn a_rule_that_asks_only_paths_holds_besides_them_for_any_act() {
        // The oracle: each condition tested, for rules with and without conditions besides
        // their paths, on opens that succeeded, failed, wrote and ran as other users.
        let rules = crate::RuleSet::parse(
            r#"
rules:
  - { id: t.paths, description: d, severity: low, match: { syscalls: [openat], path: ["/etc/**"] } }
  - { id: t.nothing, description: d, severity: low, match: { syscalls: [openat] } }
  - { id: t.result, description: d, severity: low, match: { syscalls: [openat], result: success } }
  - { id: t.flags, description: d, severity: low, match: { syscalls: [openat], flags_any: [O_WRONLY] } }
  - { id: t.uid, description: d, severity: low, match: { syscalls: [openat], uid: [0] } }
  - { id: t.comm, description: d, severity: low, match: { syscalls: [openat], comm: ["py*"] } }
"#,
            "test",
        )
        .unwrap();
        let mut only = Vec::new();
        for rule in rules.rules() {
            let m = &rule.matcher;
            if m.paths_only {
                only.push(rule.id().to_owned());
            }
            for (path, flags, ret, uid) in [
                ("/etc/passwd", "O_RDONLY", 3, 0),
                ("x.pkl", "O_WRONLY|O_CREAT", -2, 1000),
            ] {
                let mut sc = traced_open(path);
                sc.args = monitor_engine::trace::Args::new(
                    sc.syscall.args,
                    vec![
                        ArgValue::Fd(libc::AT_FDCWD),
                        ArgValue::Str(Some(path.into())),
                        ArgValue::Flags {
                            raw: 0,
                            text: flags.into(),
                        },
                    ],
                );
                sc.ret = Some(ret);
                let facts = Facts::of(&sc, Some("/work"));
                let event = Event {
                    time_ns: 1,
                    pid: 7,
                    tid: 7,
                    ppid: None,
                    uid,
                    comm: "sh".into(),
                    cgroup_id: 1,
                    what: monitor_engine::trace::What::Syscall(sc.clone()),
                };
                let ctx = Context::new(crate::Phase::Run);
                let full = m.conditions_hold(&sc, &facts, &event, &ctx);
                assert_eq!(m.matches_besides_paths(&sc, &facts, &event, &ctx), full);
                if m.paths_only {
                    assert!(full, "{} on {path}", rule.id());
                }
            }
        }
        assert_eq!(only, ["t.paths", "t.nothing"]);
        // Most of the default rules about opens ask more than their paths.
        assert!(
            crate::RuleSet::defaults()
                .rules()
                .any(|r| !r.matcher.paths_only)
        );
    }

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
        assert_eq!(absolute("/etc/passwd/", None), "/etc/passwd");
        assert!(matches!(absolute("/etc/passwd", None), Cow::Borrowed(_)));
        assert!(matches!(absolute("/", None), Cow::Borrowed("/")));
    }

    #[test]
    fn a_flag_is_held_where_it_is_a_whole_name_of_a_text() {
        let facts = Facts {
            flags: ["O_WRONLY|O_CREAT|0x40", "", "A||B|", "O_RDONLY"]
                .into_iter()
                .collect(),
            ..Facts::default()
        };
        for held in ["O_WRONLY", "O_CREAT", "0x40", "", "A", "B", "O_RDONLY"] {
            assert!(facts.has_flag(held), "{held}");
        }
        // Parts of names, names run together, and names of no text (a name never holds `|`:
        // rules name flags the decoder shows).
        for not in [
            "O_CREA",
            "CREAT",
            "O_CREAT0x40",
            "O_RD",
            "O_RDWR",
            "AB",
            "O_TRUNC",
        ] {
            assert!(!facts.has_flag(not), "{not}");
        }
        assert!(!Facts::default().has_flag("O_CREAT"));
        // The oracle: as splitting says, for every text and name over `A`, `B` and `|` of
        // up to 5 bytes.
        let mut all = vec![String::new()];
        let mut last = all.clone();
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|t| ["A", "B", "|"].map(|c| format!("{t}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        // Behind prefixes that put the `|` at every offset of an eight-byte step.
        for prefix in ["", "AB", "ABABAB|", "O_RDONLY|", "O_RDONLY|O_CLOEXEC|A"] {
            for text in &all {
                let text = format!("{prefix}{text}");
                for name in all.iter().filter(|n| !n.contains('|')) {
                    let split = text.split('|').any(|n| n == name);
                    assert_eq!(holds_flag(&text, name), split, "{text:?} {name:?}");
                }
            }
        }
    }

    #[test]
    fn escaped_globs_match_only_themselves() {
        let escaped = glob_escape("/srv/m[1]/*.pt");
        let set = globs(&[escaped]).unwrap().unwrap();
        assert!(set.is_match("/srv/m[1]/*.pt"));
        assert!(!set.is_match("/srv/m1/a.pt"));
        assert!(is_glob("/a/*") && !is_glob("/usr/bin/python3.11"));
    }
}
