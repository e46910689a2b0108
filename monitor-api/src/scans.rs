//! Scans: `POST /v1/scans` (a path the daemon opens as the caller) and `POST
//! /v1/scans/upload` (the bytes in the body), and what both answer.

use monitor_rules::Severity;
use serde::{Deserialize, Serialize};

/// The body of `POST /v1/scans`. Unknown fields are refused (400).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// The artifact: an absolute path without `..`, opened with the caller's rights.
    pub path: String,
    /// Call the loaded model on dummy input (default: yes).
    #[serde(default = "yes")]
    pub exercise: bool,
    /// Add Python audit-hook evidence (default: yes).
    #[serde(default = "yes")]
    pub audit: bool,
    /// How long the loader lingers after the load, in milliseconds (default: the daemon's
    /// `scan_linger_ms`; at most 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// Severity at which a finding makes the exit code 1 (default high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on: Option<Severity>,
    /// Seconds; at most the daemon's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

impl ScanRequest {
    /// A request for `path` with every default.
    pub fn new(path: impl Into<String>) -> Self {
        ScanRequest {
            path: path.into(),
            exercise: true,
            audit: true,
            linger_ms: None,
            fail_on: None,
            timeout_secs: None,
        }
    }
}

/// The query of `POST /v1/scans/upload` (the artifact's bytes are the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The artifact's file name (kept for the report; the content decides the format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "yes")]
    pub exercise: bool,
    #[serde(default = "yes")]
    pub audit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Where a scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    Queued,
    Running,
    Done,
    /// The daemon stopped while it ran.
    Interrupted,
}

impl ScanStatus {
    pub fn name(self) -> &'static str {
        match self {
            ScanStatus::Queued => "queued",
            ScanStatus::Running => "running",
            ScanStatus::Done => "done",
            ScanStatus::Interrupted => "interrupted",
        }
    }
}

/// The reply (202) to a scan accepted into the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanAccepted {
    pub id: String,
    pub status: ScanStatus,
}
