//! monitord's HTTP API (docs/api.yaml) as types. monitord deserializes the requests and
//! serializes the replies with these; monitorctl does the reverse, so the two cannot disagree
//! on a field's name or meaning. A test checks docs/api.yaml against them.
//!
//! - [`scans`]: submitting a scan, by path or by upload, and the reply.
//! - [`watches`]: adding a watch, and the bodies of its commands.
//! - [`stream`]: the items of the findings stream (Server-Sent Events), one envelope for
//!   scans and watches.
//! - [`error`]: the body of every error reply.
//! - [`client`]: a client of the Unix socket.

pub mod client;
pub mod error;
pub mod scans;
pub mod stream;
pub mod watches;

pub use client::Client;
pub use error::ErrorReply;
pub use scans::{ScanAccepted, ScanRequest, ScanStatus, UploadQuery};
pub use stream::{StreamEvent, StreamItem};
pub use watches::{LearnRequest, WatchRequest};
