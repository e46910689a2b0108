//! `GET /v1/status`: what monitord is, what its kernel programs are doing, and what it runs.

use std::{collections::BTreeMap, path::PathBuf};

use monitor_engine::probes::HooksState;
use monitor_rules::Phase;
use serde::{Deserialize, Serialize};

/// What a caller may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submit scans, see their own; watch (report only) what they own.
    Scan,
    /// See every scan, report, finding and watch.
    Read,
    /// Everything: any watch, kill policies, rule reloads.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Scan => "scan",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// The reply of `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// monitord's version.
    pub version: String,
    /// The kernel's release (`uname -r`).
    pub kernel: String,
    /// Who asked, and what they may do.
    pub caller: CallerInfo,
    pub probes: ProbesStatus,
    /// Scans accepted and not yet started.
    pub queue_depth: i64,
    pub max_concurrent_scans: usize,
    /// Scans running now (those the caller may see).
    pub running: Vec<RunningScan>,
    pub watches_active: usize,
    pub loader_env: LoaderEnv,
    /// Rules in force.
    pub rules: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerInfo {
    pub uid: u32,
    /// `None`: the socket let them in, but no role names them.
    pub role: Option<Role>,
}

/// The kernel programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbesStatus {
    /// Tracepoints attached now.
    pub attached: usize,
    pub syscall_hooks: SyscallHooks,
    /// Entries of the syscall table this kernel lacks.
    pub missing: Vec<String>,
    /// What the last integrity check found wrong (empty once repaired).
    pub tampering: Vec<String>,
    pub checks_that_found_tampering: u64,
    pub last_tampering: Option<TamperingSeen>,
    /// Attachments put back after they were found missing.
    pub reattached: u64,
    pub counters: KernelCounters,
    /// Ring-buffer records that could not be decoded, or belonged to no job.
    pub malformed_records: u64,
    pub unrouted_records: u64,
    /// Jobs and watches reading records now.
    pub subscriptions: usize,
}

/// Whether the syscall hooks are attached, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallHooks {
    pub state: HooksState,
    /// Scans, runs, watches and discovery holding them attached.
    pub held_by: usize,
    /// They are detached after this long with nobody holding them (`None`: never).
    pub detach_after_idle_ms: Option<u64>,
    /// The state and its reason, in words.
    pub why: String,
}

/// The last problems an integrity check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TamperingSeen {
    /// Unix time, seconds.
    pub at: u64,
    pub problems: Vec<String>,
}

/// The kernel programs' counters by name (`events`, `dropped`, `read_errors`, ...), or why
/// they could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KernelCounters {
    Read(BTreeMap<String, u64>),
    Unreadable { error: String },
}

impl KernelCounters {
    /// Counter `name`, when the counters could be read and have it.
    pub fn get(&self, name: &str) -> Option<u64> {
        match self {
            KernelCounters::Read(map) => map.get(name).copied(),
            KernelCounters::Unreadable { .. } => None,
        }
    }
}

/// A scan running now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningScan {
    pub id: String,
    /// The phase its loader last reported (`setup` until it reports one).
    pub phase: Phase,
}

/// The Python scans load artifacts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderEnv {
    pub python: PathBuf,
    pub present: bool,
}
