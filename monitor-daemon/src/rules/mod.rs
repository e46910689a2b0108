//! Rules: events -> findings.
//!
//! Rules are YAML ([`schema`]); an embedded default set covers what loading a model must never
//! do, and users add files of their own. A rule file is validated as a whole when it is loaded
//! (unknown syscalls, classes, flags and bad globs are errors with a line number), so a rule
//! set that loaded is one that can run.

mod matcher;
pub mod schema;

use std::{collections::HashSet, path::Path, sync::Arc};

use serde::Serialize;

pub use schema::{Phase, ResultCondition, RuleSpec, Severity};

use crate::{process::ProcessContext, trace::Event};
use matcher::Matcher;

/// The rules shipped inside the binary.
pub const DEFAULT_RULES: &str = include_str!("default.yaml");

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
}

/// A rule that fired, with the event that made it fire.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub description: String,
    pub tags: Vec<String>,
    pub phase: Phase,
    pub event: Event,
    /// The process's program, arguments and parents, when the judge knows its process table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessContext>,
}

/// Why a rule file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct RuleError {
    pub source_name: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    pub message: String,
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
}

impl RuleSet {
    /// The embedded default rules.
    pub fn defaults() -> Self {
        RuleSet::parse(DEFAULT_RULES, "default.yaml")
            .expect("the embedded rules are valid (tested)")
    }

    /// Parses and validates a rule file's text. `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, RuleError> {
        let error = |line: usize, message: String| RuleError {
            source_name: source_name.into(),
            line,
            message,
        };
        let file: schema::RuleFile = serde_yaml_ng::from_str(text).map_err(|e| {
            let line = e
                .location()
                .map(|l| l.line())
                .or_else(|| line_of_second_document(text))
                .unwrap_or(1);
            error(line, e.to_string())
        })?;
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        // Rules come in file order: each id is looked for below the one before.
        let mut previous = 0;
        for (index, spec) in file.rules.into_iter().enumerate() {
            let line = line_of_id(text, &spec.id, previous)
                .unwrap_or_else(|| line_of_key(text, "rules").unwrap_or(1));
            previous = line;
            if spec.id.trim().is_empty() {
                return Err(error(
                    line,
                    format!("rule {} (counted from 1) has an empty id", index + 1),
                ));
            }
            if !seen.insert(spec.id.clone()) {
                return Err(error(line, format!("rule `{}` is defined twice", spec.id)));
            }
            let matcher = Matcher::compile(&spec.matcher)
                .map_err(|m| error(line, format!("rule `{}`: {m}", spec.id)))?;
            rules.push(Arc::new(Rule { spec, matcher }));
        }
        Ok(RuleSet { rules })
    }

    /// Reads and validates a rule file.
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RuleError {
            source_name: name.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        RuleSet::parse(&text, &name)
    }

    /// Adds `other`'s rules; a rule id present in both is an error (names must stay unique so
    /// that findings say which rule fired).
    pub fn extend(&mut self, other: RuleSet, source_name: &str) -> Result<(), RuleError> {
        for rule in other.rules {
            if self.rules.iter().any(|r| r.id() == rule.id()) {
                return Err(RuleError {
                    source_name: source_name.into(),
                    line: 0,
                    message: format!("rule `{}` is already defined", rule.id()),
                });
            }
            self.rules.push(rule);
        }
        Ok(())
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| &**r)
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
        let crate::trace::What::Syscall(sc) = &event.what else {
            return Vec::new();
        };
        let facts = matcher::Facts::of(sc, cwd);
        self.rules
            .iter()
            .filter(|r| r.applies_in(phase) && r.matcher.matches(sc, &facts))
            .map(|r| Finding {
                rule: r.spec.id.clone(),
                severity: r.spec.severity,
                description: r.spec.description.clone(),
                tags: r.spec.tags.clone(),
                phase,
                event: event.clone(),
                process: None,
            })
            .collect()
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

/// The line of `id: <id>` in `text` (1-based), or 0.
/// The 1-based line below line `after` that sets `id: <id>` (an id spelled over several lines,
/// or in a flow mapping with others before it, is not found).
fn line_of_id(text: &str, id: &str, after: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(after)
        .find(|(_, l)| {
            let l = l.trim_start().trim_start_matches("- ").trim();
            l.strip_prefix("id:")
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == id)
        })
        .map(|(i, _)| i + 1)
}

/// The 1-based line of a top-level `key:`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
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
    use crate::{
        decode::{ArgValue, SockAddr},
        trace::{Args, SyscallEvent, What},
    };

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
                args: Args(sc.args.iter().map(|a| a.name).zip(args).collect()),
                ret: Some(ret),
                errno: None,
                exit_time_ns: None,
                truncated: false,
                read_error: false,
                recaptured: false,
                killed: false,
                resolved: Vec::new(),
                syscall: sc,
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
        assert!(
            RuleSet::parse(bad_severity, "x")
                .unwrap_err()
                .to_string()
                .contains("urgent")
        );

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
        assert!(
            RuleSet::parse(bad_glob, "x")
                .unwrap_err()
                .to_string()
                .contains("bad glob")
        );

        let no_scope = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { path: [\"/a\"] }\n";
        assert!(
            RuleSet::parse(no_scope, "x")
                .unwrap_err()
                .to_string()
                .contains("which events")
        );

        let bad_flag = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [open], flags_any: [O_CREATE] }\n";
        assert!(
            RuleSet::parse(bad_flag, "x")
                .unwrap_err()
                .to_string()
                .contains("unknown flag `O_CREATE`")
        );
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
        assert!(
            RuleSet::parse(mixed, "x")
                .unwrap_err()
                .to_string()
                .contains("cannot have syscall conditions")
        );
        let subject_on_syscalls = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { syscalls: [execve], subject: [\"x\"] }\n";
        assert!(
            RuleSet::parse(subject_on_syscalls, "x")
                .unwrap_err()
                .to_string()
                .contains("for `audit` rules")
        );
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
