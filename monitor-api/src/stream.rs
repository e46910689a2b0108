//! The findings stream (`GET /v1/findings/stream`, Server-Sent Events `event: finding`) and
//! the items of `GET /v1/findings`: one envelope, whether a scan or a watch saw it.

use serde::{Deserialize, Serialize};

/// One item: whose it is, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamItem {
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(flatten)]
    pub event: StreamEvent,
}

/// The job an item comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    Scan { scan_id: String },
    Watch { watch_id: String },
}

/// What happened. Findings and kills are the documents the reports hold (see the report's
/// schema); the others are small enough to be typed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// A rule matched.
    Finding(serde_json::Value),
    /// A process was killed by the watch's policy.
    Kill(serde_json::Value),
    /// Discovery found a process opening a model file, and now watches it.
    Discovered(Discovered),
    /// A process discovery had let go of opened a model: watched again, with a gap.
    Gap(Gap),
    /// A learning watch ended its window: the profile it now enforces.
    Learned(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovered {
    pub pid: u32,
    pub comm: String,
    pub time_ns: u64,
    /// The model-named file opened (none when the process was first seen otherwise).
    pub path: Option<String>,
    /// What the file's first bytes say it could be to a loader.
    pub opened: Opened,
}

/// What an opened file could be to a loader, and what it looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub content: Content,
    pub what: String,
}

/// Whether an opened file could be a model's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// A loader that runs code could be reading a model from it.
    Model,
    /// Nothing that runs code can come of this open.
    NoModel,
    /// It could not be told, so it counts as a model.
    Unknown,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Model => "model",
            Content::NoModel => "no_model",
            Content::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub pid: u32,
    pub comm: String,
    pub path: String,
}

impl StreamEvent {
    /// The event's key in the item (`finding`, `kill`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            StreamEvent::Finding(_) => "finding",
            StreamEvent::Kill(_) => "kill",
            StreamEvent::Discovered(_) => "discovered",
            StreamEvent::Gap(_) => "gap",
            StreamEvent::Learned(_) => "learned",
        }
    }
}

impl StreamItem {
    pub fn scan(scan_id: impl Into<String>, event: StreamEvent) -> Self {
        StreamItem {
            origin: Origin::Scan {
                scan_id: scan_id.into(),
            },
            event,
        }
    }

    pub fn watch(watch_id: impl Into<String>, event: StreamEvent) -> Self {
        StreamItem {
            origin: Origin::Watch {
                watch_id: watch_id.into(),
            },
            event,
        }
    }

    /// The id of the scan or watch the item comes from.
    pub fn job_id(&self) -> &str {
        match &self.origin {
            Origin::Scan { scan_id } => scan_id,
            Origin::Watch { watch_id } => watch_id,
        }
    }
}

/// `GET /v1/findings`: a page of findings of scans and watches, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingPage {
    pub findings: Vec<StreamItem>,
    pub limit: u32,
    pub offset: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_is_one_flat_object_that_reads_back_the_same() {
        let item = StreamItem::watch(
            "w1",
            StreamEvent::Gap(Gap {
                pid: 7,
                comm: "python".into(),
                path: "/m.pt".into(),
            }),
        );
        let value = serde_json::to_value(&item).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "source": "watch", "watch_id": "w1",
                "gap": { "pid": 7, "comm": "python", "path": "/m.pt" },
            })
        );
        assert_eq!(serde_json::from_value::<StreamItem>(value).unwrap(), item);
        let scan = serde_json::json!({
            "source": "scan", "scan_id": "s1", "finding": { "rule": "x" },
        });
        let read: StreamItem = serde_json::from_value(scan.clone()).unwrap();
        assert_eq!(read.job_id(), "s1");
        assert_eq!(serde_json::to_value(read).unwrap(), scan);
    }
}
