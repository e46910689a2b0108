//! monitord's HTTP API (docs/api.yaml) as types. monitord deserializes the requests and
//! serializes the replies with these; monitorctl does the reverse, so the two cannot disagree
//! on a field's name or meaning. A test checks docs/api.yaml against them.
//!
//! - [`status`]: what monitord is and does (`GET /v1/status`).
//! - [`scans`]: submitting a scan, by path or by upload; a scan, pages of scans and events.
//! - [`watches`]: adding a watch, the bodies of its commands, a watch and the list.
//! - [`stream`]: the items of the findings stream (Server-Sent Events) and of
//!   `GET /v1/findings`, one envelope for scans and watches.
//! - [`rules`]: the rules in force, and a reload's reply.
//! - [`error`]: the body of every error reply.
//! - [`client`]: a client of the Unix socket.

pub mod client;
pub mod error;
pub mod rules;
pub mod scans;
pub mod status;
pub mod stream;
pub mod watches;

pub use client::Client;
pub use error::ErrorReply;
pub use rules::{RuleList, RulesReloaded};
pub use scans::{
    EventPage, ScanAccepted, ScanPage, ScanRecord, ScanRequest, ScanStatus, UploadQuery,
};
pub use status::Status;
pub use stream::{FindingPage, StreamEvent, StreamItem};
pub use watches::{LearnRequest, Watch, WatchList, WatchRequest, WatchState};
