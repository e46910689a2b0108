//! What a live watch selects and what it does about what it sees, as a user writes it (the
//! API's JSON, monitorctl's flags) and as it is stored.

use std::path::{Path, PathBuf};

use monitor_common::{
    event::{KillPolicy, WATCH_FOLLOW_FORKS, Watch},
    syscall,
};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyFile;
use crate::profile::Profile;
use monitor_rules::{RuleSet, Severity};

/// Syscalls killed in the kernel when a watch kills at a severity and names none: executing a
/// program is what a model-borne payload does first, and the default rules call it high.
pub const DEFAULT_KILL_IN_KERNEL: &[&str] = &["execve", "execveat"];

/// How long after a watched process opens a model artifact its acts count as that model's
/// load phase when the descriptor cannot be followed, unless the watch says otherwise.
pub const DEFAULT_LOAD_WINDOW_MS: u64 = 10_000;

/// How long a load phase lasts after the loader closed the model's descriptor (it may have
/// read the file whole and deserialize it after the close).
pub const DEFAULT_LOAD_GRACE_MS: u64 = 1_000;

/// The longest learning window: a day.
pub const MAX_LEARN_SECS: u64 = 86_400;

fn default_grace() -> u64 {
    DEFAULT_LOAD_GRACE_MS
}

/// A watch, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// A name for people; the id is the daemon's.
    pub name: Option<String>,
    pub selector: Selector,
    pub policy: Policy,
    /// After a watched thread opens a model artifact, its acts are in the `load` phase (a
    /// phase of its own inside a long-running server) until its descriptor is closed and
    /// `load_grace_ms` more have passed, or, where the descriptor cannot be followed, for
    /// `load_window_ms`; otherwise `run`.
    pub load_window_ms: u64,
    #[serde(default = "default_grace")]
    pub load_grace_ms: u64,
    /// Learning the service's profile, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning: Option<Learning>,
}

/// A learning window in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learning {
    /// Unix time, milliseconds.
    pub started_unix_ms: i64,
    pub until_unix_ms: i64,
    /// What was learned so far: kept in the store, so that a restart of monitord loses none
    /// of it.
    #[serde(default, skip_serializing)]
    pub so_far: Profile,
    /// monitord restarted during the window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Learning {
    /// A window of `seconds` from now.
    pub fn starting_now(seconds: u64) -> Self {
        let now = now_unix_ms();
        Learning {
            started_unix_ms: now,
            until_unix_ms: now
                .saturating_add(i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)),
            so_far: Profile::default(),
            interrupted: false,
        }
    }
}

/// The wall clock, Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a watch selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Every process in a cgroup v2 directory and in the cgroups below it, including those
    /// created later (a systemd service, a Kubernetes pod).
    Cgroup(PathBuf),
    /// One process, and every process it starts from then on. `started` (its start time in
    /// clock ticks after boot, from /proc) tells it from a later process given the same pid.
    Pid { pid: u32, started: u64 },
    /// Every process running this executable (an absolute path), now and later, and what
    /// each starts. A process is matched when it executes the path as given or the file it
    /// names (symlinks resolved), and, within a second, whatever path it used.
    Executable(PathBuf),
    /// Any process on the host that opens a file whose name ends in one of `suffixes`, and
    /// what it starts, from that open on for `window_secs`. One at a time (monitord's
    /// `[discovery]` settings).
    Discovery {
        suffixes: Vec<String>,
        window_secs: u64,
        /// Stop watching a discovered process at once when no open of a model-named file by
        /// it could load a model, as the files' magic bytes tell.
        #[serde(default = "yes")]
        release_without_model: bool,
    },
}

fn yes() -> bool {
    true
}

/// What a watch does about findings, and the rules of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Kill the offending process at the first finding of this severity or above (the whole
    /// cgroup for a cgroup watch); `None` reports only.
    pub kill_at: Option<Severity>,
    /// Syscalls killed in the kernel at their entry, before they return to user space,
    /// rather than once a finding reaches user space. An exec is killed once the kernel has
    /// the program, unless the watch's exceptions to the exec rules allow that program.
    pub kill_in_kernel: Vec<String>,
    /// The watch's policy file (YAML, with these kill settings written in): lists, rules and
    /// exceptions that add to monitord's rules for this watch only, a learned profile's
    /// included. `None`: monitord's rules alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

impl Policy {
    /// What the kernel kills: the syscalls of `kill_in_kernel`.
    pub fn kernel_kills(&self) -> KillPolicy {
        let mut kill = KillPolicy::default();
        for sc in self
            .kill_in_kernel
            .iter()
            .filter_map(|n| syscall::by_name(n))
        {
            kill.kill_at(sc.nr);
        }
        kill
    }

    /// The policy of document `text` (YAML) as a watch keeps it: validated against `rules`
    /// (monitord's), with the kill settings it names, and `kill_at` / `kill_in_kernel` given
    /// besides (a setting given both ways must agree).
    pub fn from_document(
        text: &str,
        kill_at: Option<Severity>,
        kill_in_kernel: Option<Vec<String>>,
        rules: &RuleSet,
    ) -> Result<Policy, SpecError> {
        let file = PolicyFile::parse(text).map_err(|e| SpecError::Policy(e.to_string()))?;
        file.rules_over(rules, text, true)
            .map_err(|e| SpecError::Policy(e.to_string()))?;
        let kill_at = match (kill_at, file.kill_at) {
            (Some(a), Some(b)) if a != b => {
                return Err(SpecError::Policy(format!(
                    "kill_at is {b} in the policy and {a} besides: give it once"
                )));
            }
            (a, b) => a.or(b),
        };
        let kill_in_kernel = match (kill_in_kernel, file.kill_in_kernel.clone()) {
            (Some(a), Some(b)) if a != b => {
                return Err(SpecError::Policy(
                    "kill_in_kernel is given in the policy and besides: give it once".into(),
                ));
            }
            (a, b) => a.or(b),
        };
        let mut policy = Policy::with_kill(kill_at, kill_in_kernel)?;
        policy.set_document(file);
        Ok(policy)
    }

    /// Report-only, or killing at `kill_at` (and in the kernel at `kill_in_kernel`, by
    /// default the exec syscalls).
    pub fn with_kill(
        kill_at: Option<Severity>,
        kill_in_kernel: Option<Vec<String>>,
    ) -> Result<Policy, SpecError> {
        let kill_in_kernel = match (kill_at, kill_in_kernel) {
            (None, Some(names)) if !names.is_empty() => {
                return Err(SpecError::KillWithoutSeverity);
            }
            (None, _) => Vec::new(),
            (Some(_), Some(names)) => names,
            (Some(_), None) => DEFAULT_KILL_IN_KERNEL
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        for name in &kill_in_kernel {
            // A syscall this architecture lacks is killed nowhere here (see `kernel_kills`).
            if !syscall::is_known(name) {
                return Err(SpecError::UnknownSyscall(name.clone()));
            }
        }
        Ok(Policy {
            kill_at,
            kill_in_kernel,
            document: None,
        })
    }

    /// Keeps `file` as the document, with this policy's kill settings written in.
    pub fn set_document(&mut self, mut file: PolicyFile) {
        file.kill_at = self.kill_at;
        file.kill_in_kernel =
            (!self.kill_in_kernel.is_empty()).then(|| self.kill_in_kernel.clone());
        self.document = Some(file.to_yaml(
            "A monitor watch policy: `monitorctl watch policy ID FILE` gives a watch this file.\n\
             Its rules, lists and exceptions add to monitord's rules for that watch only;\n\
             exceptions named learned-* were learned (`monitorctl watch learn`) and are\n\
             replaced when the watch learns again.",
        ));
    }

    /// The document, parsed (an empty one when there is none).
    pub fn file(&self) -> PolicyFile {
        self.document
            .as_deref()
            .and_then(|text| PolicyFile::parse(text).ok())
            .unwrap_or_default()
    }

    /// The document as `watch profile` prints it: with the kill settings, also when there is
    /// no document.
    pub fn to_yaml(&self) -> String {
        match &self.document {
            Some(text) => text.clone(),
            None => {
                let mut policy = self.clone();
                policy.set_document(PolicyFile::default());
                policy.document.unwrap_or_default()
            }
        }
    }
}

pub use crate::request::WatchRequest;

/// Why a watch request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "a watch selects a cgroup, a pid or an executable: give exactly one of `cgroup`, `pid`, `exe`"
    )]
    Selector,
    #[error("`{0}` is not a syscall monitor traces (see `monitorctl rules list` for names)")]
    UnknownSyscall(String),
    #[error("`kill_in_kernel` needs `kill_at`: a watch that only reports kills nothing")]
    KillWithoutSeverity,
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
    #[error("executable {path}: {reason}")]
    Executable { path: String, reason: String },
    #[error("pid {0}: no such process")]
    NoProcess(u32),
    #[error("pid 0 and pid 1 cannot be watched by pid (watch their cgroup instead)")]
    ReservedPid,
    #[error("name: at most 100 characters")]
    Name,
    #[error("{0}")]
    Policy(String),
    #[error("learn_secs: 1 to {MAX_LEARN_SECS} seconds")]
    LearnSecs,
}

/// A watch request made a spec.
pub trait Validate {
    /// Checks the request against this host (the cgroup exists, the process lives) and makes
    /// the spec, its policy checked against the default rules. `cgroup_root` is the cgroup2
    /// mount.
    fn validate(self, cgroup_root: &Path) -> Result<WatchSpec, SpecError>
    where
        Self: Sized,
    {
        self.validate_with(cgroup_root, &RuleSet::defaults())
    }

    /// [`Validate::validate`], the policy checked against `rules` (monitord's).
    fn validate_with(self, cgroup_root: &Path, rules: &RuleSet) -> Result<WatchSpec, SpecError>;
}

impl Validate for WatchRequest {
    fn validate_with(self, cgroup_root: &Path, rules: &RuleSet) -> Result<WatchSpec, SpecError> {
        if self.name.as_ref().is_some_and(|n| n.chars().count() > 100) {
            return Err(SpecError::Name);
        }
        let selector = match (self.cgroup, self.pid, self.exe) {
            (Some(path), None, None) => Selector::Cgroup(resolve_cgroup(&path, cgroup_root)?),
            (None, Some(pid), None) => {
                if pid <= 1 {
                    return Err(SpecError::ReservedPid);
                }
                let started = process_start(pid).ok_or(SpecError::NoProcess(pid))?;
                Selector::Pid { pid, started }
            }
            (None, None, Some(path)) => Selector::Executable(check_executable(&path)?),
            _ => return Err(SpecError::Selector),
        };
        let policy = match &self.policy {
            Some(text) => Policy::from_document(text, self.kill_at, self.kill_in_kernel, rules)?,
            None => Policy::with_kill(self.kill_at, self.kill_in_kernel)?,
        };
        let learning = match self.learn_secs {
            None => None,
            Some(secs) if (1..=MAX_LEARN_SECS).contains(&secs) => {
                Some(Learning::starting_now(secs))
            }
            Some(_) => return Err(SpecError::LearnSecs),
        };
        Ok(WatchSpec {
            name: self.name,
            selector,
            policy,
            load_window_ms: self.load_window_ms.unwrap_or(DEFAULT_LOAD_WINDOW_MS),
            load_grace_ms: self.load_grace_ms.unwrap_or(DEFAULT_LOAD_GRACE_MS),
            learning,
        })
    }
}

impl WatchSpec {
    /// The kernel's view of what the watch selects (its id is the router's to choose).
    pub fn kernel_watch(&self) -> Watch {
        let mut watch = Watch::default();
        if matches!(
            self.selector,
            Selector::Pid { .. } | Selector::Executable(_) | Selector::Discovery { .. }
        ) {
            watch.flags |= WATCH_FOLLOW_FORKS;
        }
        watch
    }
}

impl Selector {
    /// Whether what it selects is still there to watch: the same process (not another that
    /// got its pid), a cgroup directory. Asked again when the daemon restarts.
    pub fn still_there(&self) -> bool {
        match self {
            Selector::Pid { pid, started } => process_start(*pid) == Some(*started),
            Selector::Cgroup(path) => path.join("cgroup.procs").is_file(),
            // Even while the file is gone (a package being upgraded), it is what is watched.
            Selector::Executable(_) | Selector::Discovery { .. } => true,
        }
    }
}

/// When process `pid` started (field 22 of /proc/PID/stat, clock ticks after boot).
pub fn process_start(pid: u32) -> Option<u64> {
    monitor_engine::procfs::Stat::parse(&monitor_engine::procfs::stat_line(pid)?)?.start_ticks()
}

/// `path`, which must be absolute and name an executable file.
fn check_executable(path: &Path) -> Result<PathBuf, SpecError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |reason: String| SpecError::Executable {
        path: path.display().to_string(),
        reason,
    };
    if !path.is_absolute() {
        return Err(err(
            "give an absolute path (the path a process executes, e.g. /usr/bin/python3)".into(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not an executable file".into()));
    }
    Ok(path.to_owned())
}

/// `path` as an absolute directory under the cgroup2 mount, which must exist.
fn resolve_cgroup(path: &Path, root: &Path) -> Result<PathBuf, SpecError> {
    let shown = path.display().to_string();
    let err = |reason: String| SpecError::Cgroup {
        path: shown.clone(),
        reason,
    };
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    };
    let resolved = joined.canonicalize().map_err(|e| err(format!("{e}")))?;
    if !resolved.starts_with(root) {
        return Err(err(format!(
            "not under the cgroup2 mount {}",
            root.display()
        )));
    }
    if !resolved.join("cgroup.procs").is_file() {
        return Err(err("not a cgroup directory (no cgroup.procs)".into()));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<WatchRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn requests_are_checked_and_defaults_filled() {
        let root = monitor_engine::cgroup::cgroup2_mount().unwrap();
        let me = std::process::id();
        let spec = request(&format!(r#"{{"pid": {me}, "kill_at": "high"}}"#))
            .unwrap()
            .validate(&root)
            .unwrap();
        assert_eq!(
            spec.selector,
            Selector::Pid {
                pid: me,
                started: process_start(me).unwrap()
            }
        );
        assert!(spec.selector.still_there());
        let reused = Selector::Pid {
            pid: me,
            started: process_start(me).unwrap() + 1,
        };
        assert!(
            !reused.still_there(),
            "another process with our pid is not ours"
        );
        assert_eq!(spec.policy.kill_in_kernel, ["execve", "execveat"]);
        let kills = spec.policy.kernel_kills();
        assert!(kills.kills(59) && kills.kills(322) && !kills.kills(257));
        assert_ne!(spec.kernel_watch().flags & WATCH_FOLLOW_FORKS, 0);

        let spec = request(r#"{"cgroup": "."}"#)
            .unwrap()
            .validate(&root)
            .unwrap();
        assert_eq!(
            spec.selector,
            Selector::Cgroup(root.canonicalize().unwrap())
        );
        assert_eq!(spec.policy, Policy::default());
        assert_eq!(spec.kernel_watch().flags & WATCH_FOLLOW_FORKS, 0);

        let bad = |json: &str| request(json).unwrap().validate(&root).unwrap_err();
        assert_eq!(bad("{}"), SpecError::Selector);
        assert_eq!(
            bad(&format!(r#"{{"pid": {me}, "cgroup": "."}}"#)),
            SpecError::Selector
        );
        assert_eq!(
            bad(&format!(r#"{{"pid": {me}, "kill_in_kernel": ["execve"]}}"#)),
            SpecError::KillWithoutSeverity
        );
        assert!(matches!(
            bad(&format!(
                r#"{{"pid": {me}, "kill_at": "high", "kill_in_kernel": ["read"]}}"#
            )),
            SpecError::UnknownSyscall(_)
        ));
        assert!(matches!(
            bad(r#"{"cgroup": "../.."}"#),
            SpecError::Cgroup { .. }
        ));
        assert!(matches!(
            bad(r#"{"cgroup": "/etc"}"#),
            SpecError::Cgroup { .. }
        ));
        assert_eq!(bad(r#"{"pid": 1}"#), SpecError::ReservedPid);

        let spec = request(r#"{"exe": "/bin/sh"}"#)
            .unwrap()
            .validate(&root)
            .unwrap();
        assert_eq!(spec.selector, Selector::Executable("/bin/sh".into()));
        assert_ne!(spec.kernel_watch().flags & WATCH_FOLLOW_FORKS, 0);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("weights.bin");
        std::fs::write(&data, "not a program").unwrap();
        let data = format!("{:?}", data.display().to_string());
        for exe in [r#""sh""#, &data, r#""/nonexistent""#, r#""/tmp""#] {
            assert!(
                matches!(
                    bad(&format!(r#"{{"exe": {exe}}}"#)),
                    SpecError::Executable { .. }
                ),
                "{exe}"
            );
        }
        assert_eq!(
            bad(r#"{"exe": "/bin/sh", "cgroup": "."}"#),
            SpecError::Selector
        );
        assert!(
            request(r#"{"pid": 5, "kill": "high"}"#).is_err(),
            "unknown field"
        );
    }
}
