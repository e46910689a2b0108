//! The rule file format, as written by people. Unknown fields are errors, so a typo never
//! turns a rule into one that silently matches nothing.

use serde::{Deserialize, Serialize};

/// A rule file: named lists, rules, and exceptions added to rules defined before (in the
/// defaults, or an earlier file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub lists: Vec<ListSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub exceptions: Vec<AddedException>,
}

/// Items that conditions and exceptions name as `$name` (programs, directories, address
/// ranges, ports): written once, used by many rules. An item may itself be `$other`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    pub name: String,
    pub items: Vec<Scalar>,
}

/// An exception added to a rule defined elsewhere, by the rule's id.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AddedException {
    pub rule: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    pub fields: Vec<Field>,
    pub values: Vec<Vec<Value>>,
}

impl AddedException {
    pub fn exception(&self) -> ExceptionSpec {
        ExceptionSpec {
            name: self.name.clone(),
            phases: self.phases.clone(),
            fields: self.fields.clone(),
            values: self.values.clone(),
        }
    }
}

/// A case a rule must not fire for: the act matches one of `values`, each a tuple with one
/// value per field of `fields` (a value may be a list: any of its items).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    pub name: String,
    /// Only in these phases; default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    pub fields: Vec<Field>,
    pub values: Vec<Vec<Value>>,
}

/// What an exception's tuple compares, each in its one natural way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The process's program (a glob): after an exec, the program executed.
    Exe,
    /// The process's name, as the kernel keeps it (a glob).
    Comm,
    /// The program of the process that started it (a glob).
    ParentExe,
    /// The program of any process above it (a glob).
    AncestorExe,
    /// The user id (a number).
    Uid,
    /// A path the syscall names (a glob, on the path made absolute).
    Path,
    /// The network address of the syscall (a range: CIDR, `loopback`, `private`, ...).
    Addr,
    /// The port of the syscall's address (a number or `low-high`).
    Port,
    /// The syscall's name.
    Syscall,
}

impl Field {
    pub const fn name(self) -> &'static str {
        match self {
            Field::Exe => "exe",
            Field::Comm => "comm",
            Field::ParentExe => "parent_exe",
            Field::AncestorExe => "ancestor_exe",
            Field::Uid => "uid",
            Field::Path => "path",
            Field::Addr => "addr",
            Field::Port => "port",
            Field::Syscall => "syscall",
        }
    }
}

/// One value of an exception's tuple: a scalar, or a list of them (any matches).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Value {
    One(Scalar),
    Any(Vec<Scalar>),
}

impl Value {
    pub fn items(&self) -> &[Scalar] {
        match self {
            Value::One(s) => std::slice::from_ref(s),
            Value::Any(items) => items,
        }
    }
}

/// A number or a text, as YAML wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Number(u64),
    Text(String),
}

impl Scalar {
    /// The text, numbers written out.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Scalar::Number(n) => n.to_string().into(),
            Scalar::Text(t) => t.as_str().into(),
        }
    }
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Self {
        Scalar::Text(s.to_owned())
    }
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// Live watches (by name) the rule is for; default: every job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watches: Vec<String>,
    /// Whether a watch that learns its service's profile may take this rule's acts as the
    /// service's own. Default: yes below critical; a critical act (a module loaded, a
    /// persistence file written) is never learned, whatever the service did while learning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learnable: Option<bool>,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// Cases the rule must not fire for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<ExceptionSpec>,
}

impl RuleSpec {
    /// Whether a learning watch may learn this rule's acts (see [`RuleSpec::learnable`]).
    pub fn is_learnable(&self) -> bool {
        self.learnable.unwrap_or(self.severity < Severity::Critical)
    }
}

/// What an event must show for the rule to fire. Every condition given must hold; a list
/// condition holds when any of its items does, and a list item may name a list (`$name`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Syscall names from the syscall table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<String>,
    /// Classes of the syscall table (process, file, network, memory, privilege, kernel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(default, skip_serializing_if = "ResultCondition::is_any")]
    pub result: ResultCondition,
    /// Globs one of the syscall's path arguments must match (`*` stays within a directory,
    /// `**` crosses directories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    /// Globs none of the syscall's path arguments may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_not: Vec<String>,
    /// Flag names one of the syscall's flag arguments must contain (`O_CREAT`, `PROT_EXEC`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags_any: Vec<String>,
    /// Mode bits one of the syscall's mode arguments must have some of (`0o111`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_any: Option<u32>,
    /// Address families (`AF_INET`): the socket's family or that of the address given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub family: Vec<String>,
    /// Ports of the address given (connect, bind, sendto): numbers or ranges (`8000-8100`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port: Vec<Scalar>,
    /// Ports the address may not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_not: Vec<Scalar>,
    /// Address ranges the address given must be in: CIDR (`10.0.0.0/8`, `fd00::/8`), an
    /// address, or `loopback`, `private`, `link_local`, `public`, `unspecified`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addr: Vec<String>,
    /// Address ranges the address given may not be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addr_not: Vec<String>,
    /// `outbound` (connect, send) or `inbound` (bind, listen, accept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Globs the process's program must match (after an exec, the program executed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exe_not: Vec<String>,
    /// Globs the process's name (the kernel's `comm`, 15 bytes at most) must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comm: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comm_not: Vec<String>,
    /// Globs the program of the process's parent must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_exe: Vec<String>,
    /// Globs the program of some process above it must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestor_exe: Vec<String>,
    /// Globs no process above it may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestor_exe_not: Vec<String>,
    /// User ids the process must run as.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_not: Vec<u32>,
    /// Python audit events from the scan harness's hook (`pickle.find_class`, `os.system`,
    /// ...) instead of syscalls. Such a rule can only add findings: the hook lives inside the
    /// process under scan, which may silence it, so the kernel trace stays the ground truth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<String>,
    /// Globs the audit event's subject must match: `module.name` for `pickle.find_class`,
    /// the first text argument for the others (a command, a URL, a module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject: Vec<String>,
    /// Globs the audit event's subject may not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_not: Vec<String>,
}

/// Which way a network syscall goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// connect, sendto, sendmsg, sendmmsg: toward a peer.
    Outbound,
    /// bind, listen, accept, accept4: taking connections.
    Inbound,
}

impl Direction {
    /// The direction of syscall `name`, if it has one.
    pub fn of(name: &str) -> Option<Direction> {
        match name {
            "connect" | "sendto" | "sendmsg" | "sendmmsg" => Some(Direction::Outbound),
            "bind" | "listen" | "accept" | "accept4" => Some(Direction::Inbound),
            _ => None,
        }
    }
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

impl ResultCondition {
    pub fn is_any(&self) -> bool {
        *self == ResultCondition::Any
    }
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
