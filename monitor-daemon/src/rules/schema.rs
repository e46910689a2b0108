//! The rule file format, as written by people. Unknown fields are errors, so a typo never
//! turns a rule into one that silently matches nothing.

use serde::{Deserialize, Serialize};

/// A rule file: `rules: [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub rules: Vec<RuleSpec>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique, stable identifier (`exec.program`, `cred.read`, ...).
    pub id: String,
    pub description: String,
    pub severity: Severity,
    /// MITRE ATT&CK technique ids and free tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Phases of a scan the rule applies to; default: every phase but `setup`.
    #[serde(default)]
    pub phases: Vec<Phase>,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
}

/// What an event must show for the rule to fire. Every condition given must hold; a list
/// condition holds when any of its items does.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Syscall names from the syscall table.
    #[serde(default)]
    pub syscalls: Vec<String>,
    /// Classes of the syscall table (process, file, network, memory, privilege, kernel).
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub result: ResultCondition,
    /// Globs one of the syscall's path arguments must match (`*` stays within a directory,
    /// `**` crosses directories).
    #[serde(default)]
    pub path: Vec<String>,
    /// Globs none of the syscall's path arguments may match.
    #[serde(default)]
    pub path_not: Vec<String>,
    /// Flag names one of the syscall's flag arguments must contain (`O_CREAT`, `PROT_EXEC`).
    #[serde(default)]
    pub flags_any: Vec<String>,
    /// Mode bits one of the syscall's mode arguments must have some of (`0o111`).
    #[serde(default)]
    pub mode_any: Option<u32>,
    /// Address families (`AF_INET`): the socket's family or that of the address given.
    #[serde(default)]
    pub family: Vec<String>,
    /// Ports of the address given (connect, bind, sendto).
    #[serde(default)]
    pub port: Vec<u16>,
    /// Python audit events from the scan harness's hook (`pickle.find_class`, `os.system`,
    /// ...) instead of syscalls. Such a rule can only add findings: the hook lives inside the
    /// process under scan, which may silence it, so the kernel trace stays the ground truth.
    #[serde(default)]
    pub audit: Vec<String>,
    /// Globs the audit event's subject must match: `module.name` for `pickle.find_class`,
    /// the first text argument for the others (a command, a URL, a module).
    #[serde(default)]
    pub subject: Vec<String>,
    /// Globs the audit event's subject may not match.
    #[serde(default)]
    pub subject_not: Vec<String>,
}

/// Whether the syscall must have succeeded, failed, or either (default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultCondition {
    #[default]
    Any,
    Success,
    Failure,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a watched process is in its job. Scans move through setup, load, exercise, linger
/// (the loader stays up a while, as a server would) and teardown; `monitorctl run` has the
/// single phase `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Setup,
    Load,
    Exercise,
    Linger,
    Teardown,
    Run,
}

impl Phase {
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Load => "load",
            Phase::Exercise => "exercise",
            Phase::Linger => "linger",
            Phase::Teardown => "teardown",
            Phase::Run => "run",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
