//! Scans: `POST /v1/scans` (a path the daemon opens as the caller) and `POST
//! /v1/scans/upload` (the bytes in the body), and what both answer.

use monitor_rules::{Phase, Severity};
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

/// A scan as the daemon keeps it: what the caller asked for (the API's request, the same JSON
/// fields), and what the daemon adds, which a caller cannot send (this type is never read from
/// a request body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    #[serde(flatten)]
    pub asked: ScanRequest,
    /// The artifact was uploaded: `path` is the daemon's own copy, removed after the scan.
    #[serde(default)]
    pub uploaded: bool,
    /// Who asked (the API caller's credentials): a path is opened with their rights, and the
    /// scan is theirs to see. `None` for requests stored before owners were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<monitor_engine::creds::Credentials>,
}

/// A scan: `GET /v1/scans/{id}` and the items of `GET /v1/scans`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanRecord {
    pub id: String,
    pub status: ScanStatus,
    pub request: StoredRequest,
    pub verdict: Option<String>,
    pub format: Option<String>,
    pub exit_code: Option<u8>,
    /// Unix time in milliseconds.
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The report (schema monitor.scan/v1) once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// The phase its loader last reported, while it runs (`GET /v1/scans/{id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
}

impl ScanRecord {
    /// The uid of who asked for it.
    pub fn owner_uid(&self) -> Option<u32> {
        self.request.owner.as_ref().map(|o| o.uid)
    }
}

/// `GET /v1/scans`: a page of scans, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanPage {
    pub scans: Vec<ScanRecord>,
    pub limit: u32,
    pub offset: u32,
}

/// `GET /v1/scans/{id}/events`: a page of a scan's events, in the order they happened (the
/// event documents of the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<serde_json::Value>,
    pub limit: u32,
    pub offset: u32,
}
