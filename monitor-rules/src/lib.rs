//! Rules: events -> findings.
//!
//! Rules are YAML ([`schema`]); an embedded default set covers what loading a model must never
//! do, and users add files of their own. A rule file is validated as a whole when it is loaded
//! (unknown syscalls, classes, flags, lists, fields and bad globs or ranges are errors with a
//! line number), so a rule set that loaded is one that can run.
//!
//! A rule says which syscalls it is about and what they must show (paths, flags, addresses,
//! ports, direction) and who must have made them (program, parent, ancestors, name, user);
//! named lists are written once and used as `$name`; a rule's exceptions (tuples of fields, as
//! Falco's) say the cases it must not fire for, and later files or a watch's policy may add
//! more. Rules are indexed by syscall (index.rs): an event is tested only against the rules
//! about its syscall, its facts are gathered once, only for events some rule is about, and its
//! paths are matched once against all those rules' globs together (a judge remembers what
//! each path matched, for the next event with it): the judge runs for every record a job
//! receives.

mod exception;
mod index;
pub mod judge;
mod lists;
pub mod load;
mod matcher;
pub mod net;
pub mod schema;

use std::{path::Path, sync::Arc};

use monitor_common::syscall::Syscall;
use serde::Serialize;

pub use exception::Exception;
pub use index::PathMemo;
pub use lists::Lists;
pub use matcher::{Facts, absolute, glob_escape, is_glob};
pub use schema::{
    AddedException, Direction, ExceptionSpec, Field, ListSpec, Phase, ResultCondition, RuleSpec,
    Scalar, Severity, Value,
};

use index::Index;
use load::LoadContext;
use matcher::Matcher;
use monitor_engine::process::{ProcessContext, ProcessView};
use monitor_engine::trace::{Event, What};

/// The rules shipped inside the binary.
pub const DEFAULT_RULES: &str = include_str!("default.yaml");

/// The static rules shipped inside the binary: what scans judge an artifact's bytes by
/// (monitor-scan's static analysis reads them; the schema is its own).
pub const STATIC_RULES: &str = include_str!("static.yaml");

/// A rule, validated and ready to match.
#[derive(Debug)]
pub struct Rule {
    pub spec: RuleSpec,
    matcher: Matcher,
}

impl Rule {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    fn applies_in(&self, phase: Phase) -> bool {
        if self.spec.phases.is_empty() {
            phase != Phase::Setup
        } else {
            self.spec.phases.contains(&phase)
        }
    }

    /// Whether the rule is for a job of watch `watch` (`None`: a scan or a run).
    pub fn applies_to(&self, watch: Option<&str>) -> bool {
        self.spec.watches.is_empty()
            || watch.is_some_and(|w| self.spec.watches.iter().any(|s| s == w))
    }

    /// Whether the rule can fire on syscall `sc`.
    pub fn is_about(&self, sc: &Syscall) -> bool {
        self.matcher.is_about(sc)
    }

    /// Whether the syscall must have succeeded, failed, or either.
    pub fn result(&self) -> ResultCondition {
        self.spec.matcher.result
    }
}

/// Which evidence a finding comes from: the kernel trace, the harness's Python audit hook, or
/// the artifact's bytes read without running them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    #[default]
    Kernel,
    Audit,
    Static,
}

impl Source {
    pub const fn name(self) -> &'static str {
        match self {
            Source::Kernel => "kernel",
            Source::Audit => "audit",
            Source::Static => "static",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule that fired, with the event that made it fire.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Always [`Source::Kernel`]: a syscall event made it fire.
    pub source: Source,
    pub rule: String,
    pub severity: Severity,
    pub description: String,
    pub tags: Vec<String>,
    pub phase: Phase,
    pub event: Event,
    /// The process's program, arguments and parents, when the judge knows its process table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessContext>,
    /// The kernel killed the syscall at its entry (a watch's policy): the act was attempted
    /// and stopped, and the finding is what it would have been.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    /// In a live watch's load phase: the model whose load the act came with, and what bounds
    /// that phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadContext>,
}

/// Why a rule file was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct RuleError {
    pub source_name: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    pub message: String,
}

/// Where and by whom an event happened: what rules look at besides the syscall itself.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub phase: Phase,
    /// The process's working directory, where known: relative paths are made absolute
    /// against it before globs see them.
    pub cwd: Option<&'a str>,
    /// The process and those above it, where the judge keeps a process table.
    pub process: Option<ProcessView<'a>>,
    /// The live watch the event is judged for (its name), for rules scoped to watches.
    pub watch: Option<&'a str>,
}

impl<'a> Context<'a> {
    pub fn new(phase: Phase) -> Self {
        Context {
            phase,
            cwd: None,
            process: None,
            watch: None,
        }
    }
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    /// Each rule's exceptions (same index as `rules`): its own, then those that later files
    /// and a watch's policy added.
    exceptions: Vec<Vec<Arc<Exception>>>,
    lists: Lists,
    /// For each syscall number, the rules that can fire on it.
    index: Arc<Index>,
}

impl RuleSet {
    /// The embedded default rules.
    pub fn defaults() -> Self {
        RuleSet::parse(DEFAULT_RULES, "default.yaml")
            .expect("the embedded rules are valid (tested)")
    }

    /// Parses and validates a rule file's text on its own. `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, RuleError> {
        let mut rules = RuleSet::default();
        rules.add(text, source_name)?;
        Ok(rules)
    }

    /// Reads and validates a rule file on its own.
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let mut rules = RuleSet::default();
        rules.add_file(path)?;
        Ok(rules)
    }

    /// Adds a rule file's lists, rules and exceptions: its lists may use the lists known
    /// already, its exceptions may add to rules defined already. All or nothing.
    pub fn add(&mut self, text: &str, source_name: &str) -> Result<(), RuleError> {
        // An empty file (a truncated copy, the wrong path) is a mistake, not "no rules".
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(RuleError {
                source_name: source_name.into(),
                line: 1,
                message: "the file is empty: it defines no rules, lists or exceptions".into(),
            });
        }
        let file: schema::RuleFile = parse_yaml(text, source_name)?;
        self.add_parts(&file.lists, file.rules, &file.exceptions, text, source_name)
    }

    /// [`RuleSet::add`] for the file at `path`.
    pub fn add_file(&mut self, path: &Path) -> Result<(), RuleError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RuleError {
            source_name: name.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        self.add(&text, &name)
    }

    /// Adds lists, rules and exceptions parsed from `text` (a rule file, or the rule part of
    /// a watch's policy), validated in the context of the rules known already.
    pub fn add_parts(
        &mut self,
        lists: &[ListSpec],
        rules: Vec<RuleSpec>,
        added: &[AddedException],
        text: &str,
        source_name: &str,
    ) -> Result<(), RuleError> {
        let error = |line: usize, message: String| RuleError {
            source_name: source_name.into(),
            line,
            message,
        };
        let mut next = self.clone();
        let mut after = line_of_key(text, "lists").unwrap_or(0);
        for list in lists {
            let line = line_of_entry(text, "name", &list.name, after).unwrap_or(after.max(1));
            after = line;
            next.lists.define(list).map_err(|m| error(line, m))?;
        }
        let base = next.rules.len();
        // Rules come in file order: each id is looked for below the one before.
        let mut previous = 0;
        for (index, spec) in rules.into_iter().enumerate() {
            let line = line_of_entry(text, "id", &spec.id, previous)
                .unwrap_or_else(|| line_of_key(text, "rules").unwrap_or(1));
            previous = line;
            if spec.id.trim().is_empty() {
                return Err(error(
                    line,
                    format!("rule {} (counted from 1) has an empty id", index + 1),
                ));
            }
            if let Some(at) = next.position(&spec.id) {
                let message = if at >= base {
                    format!("rule `{}` is defined twice", spec.id)
                } else {
                    format!("rule `{}` is already defined", spec.id)
                };
                return Err(error(line, message));
            }
            let matcher = Matcher::compile(&spec.matcher, &next.lists)
                .map_err(|m| error(line, format!("rule `{}`: {m}", spec.id)))?;
            let exceptions = spec
                .exceptions
                .iter()
                .map(|x| Exception::compile(x, &next.lists).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| error(line, format!("rule `{}`: {m}", spec.id)))?;
            if matcher.is_audit() && !exceptions.is_empty() {
                return Err(error(
                    line,
                    format!("rule `{}`: exceptions are for syscall rules", spec.id),
                ));
            }
            next.rules.push(Arc::new(Rule { spec, matcher }));
            next.exceptions.push(exceptions);
        }
        let mut after = line_of_key(text, "exceptions").unwrap_or(0);
        for x in added {
            let line = line_of_entry(text, "rule", &x.rule, after).unwrap_or(after.max(1));
            after = line;
            let at = next.position(&x.rule).ok_or_else(|| {
                error(
                    line,
                    format!("exception `{}`: no rule `{}` to add it to", x.name, x.rule),
                )
            })?;
            if next.rules[at].matcher.is_audit() {
                return Err(error(
                    line,
                    format!("rule `{}`: exceptions are for syscall rules", x.rule),
                ));
            }
            let exception = Exception::compile(&x.exception(), &next.lists)
                .map_err(|m| error(line, format!("rule `{}`: {m}", x.rule)))?;
            next.exceptions[at].push(Arc::new(exception));
        }
        next.reindex();
        *self = next;
        Ok(())
    }

    /// Adds `other`'s rules, lists and exceptions; a rule id present in both is an error
    /// (names must stay unique so that findings say which rule fired).
    pub fn extend(&mut self, other: RuleSet, source_name: &str) -> Result<(), RuleError> {
        let error = |message: String| RuleError {
            source_name: source_name.into(),
            line: 0,
            message,
        };
        if let Some(rule) = other.rules.iter().find(|r| self.position(r.id()).is_some()) {
            return Err(error(format!("rule `{}` is already defined", rule.id())));
        }
        self.lists.merge(&other.lists).map_err(error)?;
        self.rules.extend(other.rules);
        self.exceptions.extend(other.exceptions);
        self.reindex();
        Ok(())
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.id() == id)
    }

    fn reindex(&mut self) {
        self.index = Arc::new(Index::build(&self.rules));
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| &**r)
    }

    /// Each rule with its exceptions.
    pub fn rules_with_exceptions(&self) -> impl Iterator<Item = (&Rule, &[Arc<Exception>])> {
        self.rules
            .iter()
            .map(|r| &**r)
            .zip(self.exceptions.iter().map(Vec::as_slice))
    }

    /// The rule with id `id`.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.position(id).map(|i| &*self.rules[i])
    }

    /// The lists defined so far.
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The findings `event` raises in `phase`. `cwd` (the process's working directory, where
    /// known) turns relative paths into absolute ones before globs see them.
    pub fn judge(&self, event: &Event, phase: Phase, cwd: Option<&str>) -> Vec<Finding> {
        self.judge_in(
            event,
            &Context {
                cwd,
                ..Context::new(phase)
            },
        )
    }

    /// The findings `event` raises in `ctx`: the rules about its syscall that apply in the
    /// context's phase and watch, match it, and have no exception covering it.
    pub fn judge_in(&self, event: &Event, ctx: &Context) -> Vec<Finding> {
        self.judge_memo(event, ctx, &mut PathMemo::default())
    }

    /// As [`RuleSet::judge_in`], with what paths matched kept in `memo` for the next events
    /// (a judge of many events keeps one).
    pub fn judge_memo(&self, event: &Event, ctx: &Context, memo: &mut PathMemo) -> Vec<Finding> {
        let What::Syscall(sc) = &event.what else {
            return Vec::new();
        };
        let Some(candidates) = self.index.get(sc.syscall.nr) else {
            return Vec::new();
        };
        let facts = Facts::of(sc, ctx.cwd);
        let matched = index::Matched::new();
        let mut found = Vec::new();
        // Only the candidates whose paths can hold are tested (in the same order).
        let worth = candidates.worth_testing(&facts, &matched, memo);
        for slot in worth.slots() {
            let i = candidates.rules[slot];
            let (rule, exceptions) = (&self.rules[i as usize], &self.exceptions[i as usize]);
            // Paths first: the event's paths are matched once for all candidates (and
            // remembered across events), and they are what most rules about a syscall differ
            // by, so a candidate that fails fails here, at a glance at the matched globs.
            if rule.applies_in(ctx.phase)
                && rule.applies_to(ctx.watch)
                && candidates.paths_hold(slot, rule, &facts, &matched, memo)
                && rule.matcher.matches_besides_paths(sc, &facts, event, ctx)
                && !exceptions.iter().any(|x| x.covers(sc, &facts, event, ctx))
            {
                found.push(Finding {
                    source: Source::Kernel,
                    rule: rule.spec.id.clone(),
                    severity: rule.spec.severity,
                    description: rule.spec.description.clone(),
                    tags: rule.spec.tags.clone(),
                    phase: ctx.phase,
                    event: event.clone(),
                    process: None,
                    blocked: sc.flags.killed,
                    load: None,
                });
            }
        }
        found
    }
}

impl RuleSet {
    /// The rules a Python audit event (`event` about `subject`) fires in `phase`.
    pub fn judge_audit<'a>(
        &'a self,
        event: &'a str,
        subject: Option<&'a str>,
        phase: Phase,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules()
            .filter(move |r| r.applies_in(phase) && r.matcher.matches_audit(event, subject))
    }

    /// The most severe rule an unpickler resolving `module.name` would fire (the audit rules
    /// on `pickle.find_class`), whatever the phase: what a scan shows next to a global that a
    /// file names, as evidence. One list, the rules', for both the dynamic and static view.
    pub fn rule_for_global(&self, module: &str, name: &str) -> Option<&Rule> {
        let subject = format!("{module}.{name}");
        self.rules()
            .filter(|r| r.matcher.matches_audit(FIND_CLASS, Some(&subject)))
            .max_by_key(|r| r.spec.severity)
    }
}

/// The audit event an unpickler raises for every global it resolves.
pub const FIND_CLASS: &str = "pickle.find_class";

/// The 1-based line below line `after` that sets `id: <id>`.
pub fn line_of_id(text: &str, id: &str, after: usize) -> Option<usize> {
    line_of_entry(text, "id", id, after)
}

/// `text` as a `T`, or the error with the line serde_yaml gave (or one found).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    source_name: &str,
) -> Result<T, RuleError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e
            .location()
            .map(|l| l.line())
            .or_else(|| line_of_second_document(text))
            .unwrap_or(1);
        RuleError {
            source_name: source_name.into(),
            line,
            message: e.to_string(),
        }
    })
}

/// The 1-based line below line `after` that sets `key: <value>` (a value spelled over several
/// lines, or in a flow mapping with others before it, is not found).
pub(crate) fn line_of_entry(text: &str, key: &str, value: &str, after: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| {
            let l = l.trim_start().trim_start_matches("- ").trim();
            l.strip_prefix(key)
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == value)
        })
        .map(|(i, _)| i + 1)
}

/// The 1-based line of a top-level `key:`.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// Where a second YAML document starts (the loader takes one), for the error that says so
/// without a location.
fn line_of_second_document(text: &str) -> Option<usize> {
    let mut in_document = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line.starts_with("---");
        if marker && in_document {
            return Some(i + 1);
        }
        let content = line.trim_start_matches('-').trim();
        if !content.is_empty() && !line.starts_with('#') && !line.starts_with('%') {
            in_document = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use monitor_common::syscall::by_name;

    use super::*;

    /// `text` is refused, with an error that says `says`.
    #[track_caller]
    fn refused(text: &str, says: &str) {
        let error = RuleSet::parse(text, "x").unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
    }
    use monitor_engine::decode::{ArgValue, SockAddr};
    use monitor_engine::trace::{Args, SyscallEvent, What};

    fn syscall(name: &str, args: Vec<ArgValue>, ret: i64) -> Event {
        let sc = by_name(name).unwrap();
        Event {
            time_ns: 1,
            pid: 10,
            tid: 10,
            ppid: Some(1),
            uid: 0,
            comm: "python3".into(),
            cgroup_id: 7,
            what: What::Syscall(SyscallEvent {
                name: sc.name,
                class: sc.class,
                args: Args::new(sc.args, args),
                ret: Some(ret),
                errno: None,
                exit_time_ns: None,
                flags: monitor_engine::decode::Flags::default(),
                resolved: Vec::new(),
                syscall: sc,
                clean_paths: 0,
            }),
        }
    }

    fn flags(text: &str) -> ArgValue {
        ArgValue::Flags {
            raw: 0,
            text: text.into(),
        }
    }

    fn openat(path: &str, flag_text: &str) -> Event {
        let args = vec![
            ArgValue::Fd(libc::AT_FDCWD),
            ArgValue::Str(Some(path.into())),
            flags(flag_text),
            ArgValue::Mode(0o644),
        ];
        syscall("openat", args, 3)
    }

    fn fired(rules: &RuleSet, event: &Event, cwd: Option<&str>) -> Vec<String> {
        rules
            .judge(event, Phase::Load, cwd)
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn the_default_rules_are_valid() {
        let rules = RuleSet::defaults();
        assert!(rules.len() >= 25, "{}", rules.len());
    }

    /// A rule may name syscalls that only some architectures have (`open` is x86_64's; aarch64
    /// has `openat` alone): it loads everywhere, and where they do not exist it matches none
    /// of the others (run for aarch64 under qemu-user by `cargo xtask test`).
    #[test]
    fn rules_naming_another_architectures_syscalls_load_everywhere() {
        let rule = |names: &str| {
            format!(
                "rules:\n  - id: r\n    description: d\n    severity: high\n    match: {{ syscalls: [{names}] }}\n"
            )
        };
        let only_legacy = RuleSet::parse(&rule("open, creat"), "x").unwrap();
        assert!(fired(&only_legacy, &openat("/tmp/x", "O_RDONLY"), None).is_empty());
        let open_here = by_name("open").is_some();
        assert_eq!(open_here, cfg!(target_arch = "x86_64"));
        let both = RuleSet::parse(&rule("open, openat"), "x").unwrap();
        assert_eq!(fired(&both, &openat("/tmp/x", "O_RDONLY"), None), ["r"]);
        let e = RuleSet::parse(&rule("open, opne"), "x").unwrap_err();
        assert!(e.to_string().contains("unknown syscall `opne`"), "{e}");
    }

    #[test]
    fn credential_reads_fire_also_through_relative_paths() {
        let rules = RuleSet::defaults();
        assert_eq!(
            fired(&rules, &openat("/home/u/.ssh/id_rsa", "O_RDONLY"), None),
            ["cred.read"]
        );
        assert_eq!(
            fired(
                &rules,
                &openat("../.aws/credentials", "O_RDONLY"),
                Some("/home/u/models")
            ),
            ["cred.read"]
        );
        assert!(
            fired(
                &rules,
                &openat("/home/u/.ssh/known_hosts", "O_RDONLY"),
                None
            )
            .is_empty()
        );
        assert!(
            fired(
                &rules,
                &openat("/usr/lib/python3/os.py", "O_RDONLY|O_CLOEXEC"),
                None
            )
            .is_empty()
        );
    }

    #[test]
    fn writes_to_persistence_paths_fire_reads_do_not() {
        let rules = RuleSet::defaults();
        // Written during a load, it is also a write at load time (medium).
        assert_eq!(
            fired(&rules, &openat("/root/.bashrc", "O_WRONLY|O_APPEND"), None),
            ["persist.write", "file.write-on-load"]
        );
        assert!(fired(&rules, &openat("/root/.bashrc", "O_RDONLY"), None).is_empty());
    }

    #[test]
    fn network_rules_look_at_the_address() {
        let rules = RuleSet::defaults();
        let connect = |addr: SockAddr| {
            syscall(
                "connect",
                vec![
                    ArgValue::Fd(3),
                    ArgValue::SockAddr(Some(addr)),
                    ArgValue::UInt(16),
                ],
                -111,
            )
        };
        let dns = connect(SockAddr::Inet {
            addr: std::net::Ipv4Addr::new(127, 0, 0, 53),
            port: 53,
        });
        assert_eq!(fired(&rules, &dns, None), ["net.connect", "net.dns"]);
        let web = connect(SockAddr::Inet {
            addr: std::net::Ipv4Addr::LOCALHOST,
            port: 8080,
        });
        assert_eq!(fired(&rules, &web, None), ["net.connect"]);
        let local = connect(SockAddr::Unix {
            path: "/var/run/nscd/socket".into(),
        });
        assert!(fired(&rules, &local, None).is_empty());
    }

    #[test]
    fn setup_phase_is_exempt_unless_a_rule_says_otherwise() {
        let rules = RuleSet::defaults();
        let event = openat("/etc/shadow", "O_RDONLY");
        assert!(rules.judge(&event, Phase::Setup, None).is_empty());
        assert_eq!(rules.judge(&event, Phase::Run, None).len(), 1);
    }

    #[test]
    fn bad_rule_files_are_refused_with_the_line() {
        let unknown_syscall = "rules:\n  - id: a\n    description: d\n    severity: high\n    match: { syscalls: [connect] }\n  - id: b\n    description: d\n    severity: high\n    match: { syscalls: [conect] }\n";
        let e = RuleSet::parse(unknown_syscall, "mine.yaml").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(
            e.to_string()
                .starts_with("mine.yaml:6: rule `b`: unknown syscall `conect`"),
            "{e}"
        );
        // `read` is not traced either: rules can only name what the kernel side reports.
        let e = RuleSet::parse(&unknown_syscall.replace("conect", "read"), "x").unwrap_err();
        assert!(e.to_string().contains("unknown syscall `read`"), "{e}");

        let typo = "rules:\n  - id: a\n    description: d\n    severity: high\n    match: { syscals: [connect] }\n";
        let e = RuleSet::parse(typo, "x").unwrap_err();
        assert!(e.to_string().contains("unknown field `syscals`"), "{e}");
        assert_eq!(e.line, 5);

        let bad_severity = "rules:\n  - id: a\n    description: d\n    severity: urgent\n    match: { syscalls: [connect] }\n";
        refused(bad_severity, "urgent");

        let twice = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [connect] }\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [bind] }\n";
        let e = RuleSet::parse(twice, "x").unwrap_err();
        assert!(e.to_string().contains("defined twice"), "{e}");
        assert_eq!(e.line, 6, "the second definition: {e}");

        // Errors serde_yaml gives without a place still get one.
        let e = RuleSet::parse("rules: []\n---\nrules: []\n", "x").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = RuleSet::parse(
            "rules:\n  - id: \"\\n \"\n    description: d\n    severity: low\n    match: {}\n",
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("empty id"), "{e}");
        assert_eq!(e.line, 1, "the list it is in: {e}");

        let bad_glob = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [open], path: [\"/a/[\"] }\n";
        refused(bad_glob, "bad glob");

        let no_scope = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { path: [\"/a\"] }\n";
        refused(no_scope, "which events");

        let bad_flag = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [open], flags_any: [O_CREATE] }\n";
        refused(bad_flag, "unknown flag `O_CREATE`");
    }

    #[test]
    fn audit_rules_judge_audit_events_only_and_mark_globals() {
        let rules = RuleSet::defaults();
        let fired = |event: &str, subject: Option<&str>, phase| -> Vec<String> {
            rules
                .judge_audit(event, subject, phase)
                .map(|r| r.id().to_string())
                .collect()
        };
        assert_eq!(
            fired(FIND_CLASS, Some("builtins.eval"), Phase::Load),
            ["py.global-code"]
        );
        assert_eq!(
            fired(FIND_CLASS, Some("posix.system"), Phase::Load),
            ["py.global-system"]
        );
        // Ending the interpreter is high on its own; other sys globals stay indirect.
        assert_eq!(
            fired(FIND_CLASS, Some("sys.exit"), Phase::Load),
            ["py.global-exit", "py.global-indirect"]
        );
        assert_eq!(
            fired(FIND_CLASS, Some("sys.modules"), Phase::Load),
            ["py.global-indirect"]
        );
        // What benign models name, and what the harness imports while setting up.
        for benign in [
            "collections.OrderedDict",
            "torch._utils._rebuild_tensor_v2",
            "_codecs.encode",
            "builtins.set",
            "numpy.core.multiarray._reconstruct",
            "cloudpickle.cloudpickle._make_function",
            "dill._dill._create_code",
        ] {
            assert!(
                fired(FIND_CLASS, Some(benign), Phase::Load).is_empty(),
                "{benign}"
            );
        }
        assert!(fired(FIND_CLASS, Some("builtins.eval"), Phase::Setup).is_empty());
        assert_eq!(
            fired("os.system", Some("id"), Phase::Load),
            ["py.run-program"]
        );
        // ctypes.dlopen(None) is the process's own symbols (numpy does it); a named library
        // is a finding.
        assert!(fired("ctypes.dlopen", None, Phase::Load).is_empty());
        assert_eq!(
            fired("ctypes.dlopen", Some("libc.so.6"), Phase::Load),
            ["py.native-library"]
        );
        assert_eq!(
            rules.rule_for_global("builtins", "getattr").map(Rule::id),
            Some("py.global-indirect")
        );
        // No syscall event ever matches an audit rule.
        let event = openat("/etc/shadow", "O_RDONLY");
        assert!(
            rules
                .judge(&event, Phase::Load, None)
                .iter()
                .all(|f| !f.rule.starts_with("py."))
        );
    }

    #[test]
    fn an_audit_rule_cannot_mix_in_syscall_conditions() {
        let mixed = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { audit: [os.system], syscalls: [execve] }\n";
        refused(mixed, "cannot have syscall conditions");
        let subject_on_syscalls = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [execve], subject: [\"x\"] }\n";
        refused(subject_on_syscalls, "for `audit` rules");
    }

    /// A process table: `/usr/bin/python3` (pid 10) started by `/usr/lib/systemd/systemd`
    /// (outside the table), and its child `/bin/sh` (pid 11).
    fn table() -> monitor_engine::process::ProcessTable {
        let mut t = monitor_engine::process::ProcessTable::default();
        let mut server = monitor_engine::procfs::process(std::process::id()).unwrap();
        server.pid = 10;
        server.ppid = Some(1);
        server.exe = Some("/usr/bin/python3".into());
        server.outside_parent_exe = Some("/usr/lib/systemd/systemd".into());
        t.insert(server);
        t.forked(10, 11, 1);
        t.seen(11, 11, "sh", 2);
        t.executed(11, "/bin/sh", None);
        t
    }

    fn with_pid(mut event: Event, pid: u32, comm: &str, uid: u32) -> Event {
        event.pid = pid;
        event.tid = pid;
        event.comm = comm.into();
        event.uid = uid;
        event
    }

    fn fired_in(rules: &RuleSet, event: &Event, ctx: &Context) -> Vec<String> {
        rules
            .judge_in(event, ctx)
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    fn connect_to(addr: &str, port: u16) -> Event {
        let addr = match addr.parse().unwrap() {
            std::net::IpAddr::V4(addr) => SockAddr::Inet { addr, port },
            std::net::IpAddr::V6(addr) => SockAddr::Inet6 { addr, port },
        };
        syscall(
            "connect",
            vec![
                ArgValue::Fd(3),
                ArgValue::SockAddr(Some(addr)),
                ArgValue::UInt(16),
            ],
            0,
        )
    }

    #[test]
    fn rules_describe_a_service_by_process_network_and_lists() {
        let text = r#"
lists:
  - name: shells
    items: [/bin/sh, /bin/bash]
  - name: store
    items: [loopback, "10.1.0.0/16"]
rules:
  - id: t.shell-by-server
    description: d
    severity: high
    match: { syscalls: [openat], exe: [$shells], parent_exe: ["/usr/bin/python3*"], uid_not: [1000] }
  - id: t.under-systemd
    description: d
    severity: low
    match: { syscalls: [openat], ancestor_exe: ["**/systemd"], comm: ["py*"] }
  - id: t.outbound-not-store
    description: d
    severity: high
    match: { direction: outbound, addr_not: [$store], port: ["1-1023", 8080] }
  - id: t.public
    description: d
    severity: medium
    match: { classes: [network], direction: outbound, addr: [public] }
"#;
        let rules = RuleSet::parse(text, "t.yaml").unwrap();
        let table = table();
        let ctx = |pid| Context {
            process: Some(table.view(pid)),
            ..Context::new(Phase::Run)
        };
        let open = openat("/srv/x", "O_RDONLY");
        let by_shell = with_pid(open.clone(), 11, "sh", 0);
        assert_eq!(fired_in(&rules, &by_shell, &ctx(11)), ["t.shell-by-server"]);
        assert!(fired_in(&rules, &with_pid(open.clone(), 11, "sh", 1000), &ctx(11)).is_empty());
        // Without a process table, a process condition does not hold.
        assert!(fired_in(&rules, &by_shell, &Context::new(Phase::Run)).is_empty());
        let by_server = with_pid(open, 10, "python3", 0);
        assert_eq!(fired_in(&rules, &by_server, &ctx(10)), ["t.under-systemd"]);

        let connect = |a: &str, p| with_pid(connect_to(a, p), 10, "python3", 0);
        assert!(fired_in(&rules, &connect("127.0.0.1", 80), &ctx(10)).is_empty());
        assert!(fired_in(&rules, &connect("10.1.2.3", 8080), &ctx(10)).is_empty());
        assert_eq!(
            fired_in(&rules, &connect("10.2.0.1", 443), &ctx(10)),
            ["t.outbound-not-store"]
        );
        assert_eq!(
            fired_in(&rules, &connect("8.8.8.8", 8080), &ctx(10)),
            ["t.outbound-not-store", "t.public"]
        );
        assert_eq!(
            fired_in(&rules, &connect("::ffff:8.8.4.4", 9000), &ctx(10)),
            ["t.public"]
        );
        // bind is inbound: not this rule's.
        let bind = syscall(
            "bind",
            vec![
                ArgValue::Fd(3),
                ArgValue::SockAddr(Some(SockAddr::Inet {
                    addr: std::net::Ipv4Addr::new(8, 8, 8, 8),
                    port: 80,
                })),
                ArgValue::UInt(16),
            ],
            0,
        );
        assert!(fired_in(&rules, &bind, &ctx(10)).is_empty());

        for (bad, says) in [
            ("addr: [\"10.0.0.0/33\"]", "prefix length"),
            ("addr: [localnet]", "not an address"),
            ("port: [70000]", "not a port"),
            ("exe: [$nope]", "no list `nope`"),
            ("direction: sideways", "sideways"),
        ] {
            let text = format!(
                "rules:\n  - id: a\n    description: d\n    severity: low\n    match: {{ syscalls: [connect], {bad} }}\n"
            );
            let e = RuleSet::parse(&text, "x").unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let no_syscall_left = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [openat], direction: inbound }\n";
        refused(no_syscall_left, "leaves none");
    }

    #[test]
    fn exceptions_are_tuples_and_later_files_add_them() {
        let mut rules = RuleSet::defaults();
        let table = table();
        let ctx = |pid, phase| Context {
            process: Some(table.view(pid)),
            ..Context::new(phase)
        };
        let token = with_pid(
            openat("/srv/app/.aws/credentials", "O_RDONLY"),
            10,
            "python3",
            0,
        );
        assert_eq!(
            fired_in(&rules, &token, &ctx(10, Phase::Run)),
            ["cred.read"]
        );
        rules
            .add(
                r#"
lists:
  - name: servers
    items: ["/usr/bin/python3*"]
exceptions:
  - rule: cred.read
    name: sdk
    phases: [run]
    fields: [exe, path]
    values:
      - [$servers, [/srv/app/.aws/credentials, /srv/app/.aws/config]]
  - rule: net.connect
    name: store
    fields: [exe, addr, port]
    values:
      - [/usr/bin/python3, loopback, "9000-9001"]
"#,
                "mine.yaml",
            )
            .unwrap();
        assert!(fired_in(&rules, &token, &ctx(10, Phase::Run)).is_empty());
        // Not while a model loads, not by another program.
        assert_eq!(
            fired_in(&rules, &token, &ctx(10, Phase::Load)),
            ["cred.read"]
        );
        let by_shell = with_pid(token.clone(), 11, "sh", 0);
        assert_eq!(
            fired_in(&rules, &by_shell, &ctx(11, Phase::Run)),
            ["cred.read"]
        );
        let connect = |a: &str, p| with_pid(connect_to(a, p), 10, "python3", 0);
        assert!(fired_in(&rules, &connect("127.0.0.1", 9001), &ctx(10, Phase::Run)).is_empty());
        assert_eq!(
            fired_in(&rules, &connect("127.0.0.1", 9002), &ctx(10, Phase::Run)),
            ["net.connect"]
        );

        let bad = |text: &str| RuleSet::defaults().add(text, "b.yaml").unwrap_err();
        let e = bad(
            "exceptions:\n  - rule: cred.read\n    name: x\n    fields: [exe, path]\n    values: [[/bin/sh]]\n",
        );
        assert!(
            e.to_string().contains("tuple 1 has 1 values for 2 fields"),
            "{e}"
        );
        assert_eq!(e.line, 2, "{e}");
        let e = bad(
            "exceptions:\n  - rule: nope\n    name: x\n    fields: [exe]\n    values: [[/bin/sh]]\n",
        );
        assert!(e.to_string().contains("no rule `nope`"), "{e}");
        let e = bad(
            "exceptions:\n  - rule: cred.read\n    name: x\n    fields: [exe, colour]\n    values: []\n",
        );
        assert!(e.to_string().contains("colour"), "{e}");
        let e = bad(
            "exceptions:\n  - rule: net.connect\n    name: x\n    fields: [addr]\n    values: [[nowhere]]\n",
        );
        assert!(e.to_string().contains("nowhere"), "{e}");
        let e = bad(
            "exceptions:\n  - rule: py.input\n    name: x\n    fields: [exe]\n    values: [[a]]\n",
        );
        assert!(e.to_string().contains("for syscall rules"), "{e}");
    }

    #[test]
    fn rules_scoped_to_a_watch_fire_only_in_it() {
        let rules = RuleSet::parse(
            "rules:\n  - id: a\n    description: d\n    severity: low\n    watches: [inference]\n    match: { syscalls: [openat] }\n",
            "x",
        )
        .unwrap();
        let open = openat("/srv/x", "O_RDONLY");
        let in_watch = |watch| Context {
            watch,
            ..Context::new(Phase::Run)
        };
        assert_eq!(fired_in(&rules, &open, &in_watch(Some("inference"))), ["a"]);
        assert!(fired_in(&rules, &open, &in_watch(Some("other"))).is_empty());
        assert!(
            fired_in(&rules, &open, &in_watch(None)).is_empty(),
            "a scan"
        );
    }

    #[test]
    fn a_syscall_killed_in_the_kernel_is_judged_as_the_act_it_attempted() {
        let rules = RuleSet::defaults();
        let mut exec = syscall(
            "execve",
            vec![
                ArgValue::Str(Some("/bin/sh".into())),
                ArgValue::Argv(vec!["sh".into()]),
                ArgValue::Hex(0),
            ],
            -514,
        );
        assert_eq!(fired(&rules, &exec, None), ["exec.attempt"]);
        if let What::Syscall(sc) = &mut exec.what {
            sc.flags.killed = true;
        }
        let found = rules.judge(&exec, Phase::Load, None);
        assert_eq!(
            found
                .iter()
                .map(|f| (f.rule.as_str(), f.severity, f.blocked))
                .collect::<Vec<_>>(),
            [("exec.program", Severity::High, true)]
        );
    }

    #[test]
    fn learnable_by_default_below_critical_and_where_a_service_needs_it() {
        let rules = RuleSet::defaults();
        let learnable = |id: &str| rules.rule(id).unwrap().spec.is_learnable();
        assert!(learnable("exec.program") && learnable("net.connect"));
        assert!(learnable("cred.read") && learnable("net.listen"));
        for never in [
            "exec.fileless",
            "priv.ptrace",
            "kernel.module",
            "persist.write",
            "evasion.monitor-socket",
        ] {
            assert!(!learnable(never), "{never}");
        }
    }

    #[test]
    fn user_rules_extend_the_defaults_but_cannot_shadow_them() {
        let mut rules = RuleSet::defaults();
        let mine = RuleSet::parse(
            "rules:\n  - id: mine.models\n    description: a model file was opened\n    severity: info\n    match: { syscalls: [openat], path: [\"**/*.pkl\"] }\n",
            "mine.yaml",
        )
        .unwrap();
        rules.extend(mine, "mine.yaml").unwrap();
        assert_eq!(
            fired(&rules, &openat("/m/model.pkl", "O_RDONLY"), None),
            ["mine.models"]
        );
        let again = RuleSet::parse("rules:\n  - id: cred.read\n    description: x\n    severity: low\n    match: { syscalls: [open] }\n", "b").unwrap();
        assert!(rules.extend(again, "b").is_err());
    }
}
