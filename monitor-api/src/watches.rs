//! Watches: `POST /v1/watches` (its body is monitor-watch's [`WatchRequest`], which validates
//! it), `POST /v1/watches/{id}/learn`, and a watch as the replies show it.

pub use monitor_watch::runner::Ended;
pub use monitor_watch::spec::Learning;
pub use monitor_watch::{Policy, Selector, WatchRequest, WatchSpec, WatchSummary};
use serde::{Deserialize, Serialize};

/// The body of `POST /v1/watches/{id}/learn`: learn again for this long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnRequest {
    pub seconds: u64,
}

/// Where a watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchState {
    Active,
    /// It ended by itself (its processes are gone).
    Ended,
    /// It could not run (see `error`).
    Failed,
}

impl WatchState {
    pub fn name(self) -> &'static str {
        match self {
            WatchState::Active => "active",
            WatchState::Ended => "ended",
            WatchState::Failed => "failed",
        }
    }
}

/// A watch: `GET /v1/watches/{id}`, the items of `GET /v1/watches`, and the replies to adding
/// one, setting its policy and starting a learning window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub id: String,
    /// What it selects and its policy, as validated.
    #[serde(flatten)]
    pub spec: WatchSpec,
    /// Unix time, milliseconds.
    pub created_at: i64,
    /// The uid of who added it (`None`: the configuration's).
    pub owner_uid: Option<u32>,
    /// Started by the configuration, not the API (cannot be removed through it).
    pub builtin: bool,
    pub state: WatchState,
    pub events: u64,
    pub findings: u64,
    pub kills: u64,
    /// Discovery's: processes found, let go of early, and watched again after a gap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub discovered: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub released: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gaps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its account, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<WatchSummary>,
    /// Its last kills, newest first (`GET /v1/watches/{id}` only): the kill documents of the
    /// findings stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_kills: Option<Vec<serde_json::Value>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /v1/watches`: the watches the caller may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchList {
    pub watches: Vec<Watch>,
}
