//! What a live watch selects and what it does about what it sees, as a user writes it (the
//! API's JSON, monitorctl's flags) and as it is stored.

use std::path::{Path, PathBuf};

use monitor_common::{
    event::{WATCH_FOLLOW_FORKS, Watch},
    syscall,
};
use serde::{Deserialize, Serialize};

use crate::rules::Severity;

/// Syscalls killed in the kernel when a watch kills at a severity and names none: executing a
/// program is what a model-borne payload does first, and the default rules call it high.
pub const DEFAULT_KILL_IN_KERNEL: &[&str] = &["execve", "execveat"];

/// How long after a watched process opens a model artifact its acts count as that model's
/// load phase, unless the watch says otherwise.
pub const DEFAULT_LOAD_WINDOW_MS: u64 = 10_000;

/// A watch, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// A name for people; the id is the daemon's.
    pub name: Option<String>,
    pub selector: Selector,
    pub policy: Policy,
    /// After a watched process opens a model artifact, its acts for this long are in the
    /// `load` phase (a phase of its own inside a long-running server); otherwise `run`.
    pub load_window_ms: u64,
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

/// What a watch does about findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Kill the offending process at the first finding of this severity or above (the whole
    /// cgroup for a cgroup watch); `None` reports only.
    pub kill_at: Option<Severity>,
    /// Syscalls killed in the kernel at their entry, before they return to user space,
    /// rather than once a finding reaches user space.
    pub kill_in_kernel: Vec<String>,
}

/// A watch as a request states it: every field optional but the selector, unknown fields
/// refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    pub name: Option<String>,
    /// A cgroup v2 directory (absolute, under the cgroup2 mount) or a path relative to the
    /// mount (`system.slice/torchserve.service`).
    pub cgroup: Option<PathBuf>,
    pub pid: Option<u32>,
    /// An executable's absolute path (`/usr/bin/python3.11`, `/opt/venv/bin/torchserve`).
    pub exe: Option<PathBuf>,
    pub kill_at: Option<Severity>,
    /// Syscall names; defaults to [`DEFAULT_KILL_IN_KERNEL`] when `kill_at` is set.
    pub kill_in_kernel: Option<Vec<String>>,
    pub load_window_ms: Option<u64>,
}

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
}

impl WatchRequest {
    /// Checks the request against this host (the cgroup exists, the process lives) and makes
    /// the spec. `cgroup_root` is the cgroup2 mount.
    pub fn validate(self, cgroup_root: &Path) -> Result<WatchSpec, SpecError> {
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
        let kill_in_kernel = match (self.kill_at, self.kill_in_kernel) {
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
            if syscall::by_name(name).is_none() {
                return Err(SpecError::UnknownSyscall(name.clone()));
            }
        }
        Ok(WatchSpec {
            name: self.name,
            selector,
            policy: Policy {
                kill_at: self.kill_at,
                kill_in_kernel,
            },
            load_window_ms: self.load_window_ms.unwrap_or(DEFAULT_LOAD_WINDOW_MS),
        })
    }
}

impl WatchSpec {
    /// The kernel's view of the policy (its id is the router's to choose).
    pub fn kernel_watch(&self) -> Watch {
        let mut watch = Watch::default();
        if matches!(
            self.selector,
            Selector::Pid { .. } | Selector::Executable(_) | Selector::Discovery { .. }
        ) {
            watch.flags |= WATCH_FOLLOW_FORKS;
        }
        for name in &self.policy.kill_in_kernel {
            if let Some(sc) = syscall::by_name(name) {
                watch.kill_at(sc.nr);
            }
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses: state is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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
        let root = crate::cgroup::cgroup2_mount().unwrap();
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
        let watch = spec.kernel_watch();
        assert!(watch.kills(59) && watch.kills(322) && !watch.kills(257));
        assert_ne!(watch.flags & WATCH_FOLLOW_FORKS, 0);

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
