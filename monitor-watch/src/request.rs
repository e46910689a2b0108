//! The body of `POST /v1/watches` (monitor-api re-exports it; monitord and monitorctl build
//! against it). [`crate::Validate`] checks it against this host and makes the spec.

use std::path::PathBuf;

use monitor_rules::Severity;
use serde::{Deserialize, Serialize};

/// The body of `POST /v1/watches`: exactly one of `cgroup`, `pid`, `exe`, and the policy.
/// Unknown fields are refused (400). monitor-watch validates it against the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A cgroup v2 directory (absolute, under the cgroup2 mount) or a path relative to the
    /// mount (`system.slice/torchserve.service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// An executable's absolute path (`/usr/bin/python3.11`, `/opt/venv/bin/torchserve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_at: Option<Severity>,
    /// Syscall names killed in the kernel at entry; a default set when `kill_at` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_in_kernel: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_grace_ms: Option<u64>,
    /// A policy file (YAML): kill settings, and lists, rules and exceptions of this watch's
    /// own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Learn the service's profile for this many seconds, then enforce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learn_secs: Option<u64>,
}
