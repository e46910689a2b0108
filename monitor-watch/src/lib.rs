//! Live watches: processes on the host (a cgroup's, a process tree, or whatever discovery
//! finds opening a model artifact) traced for as long as the watch stands, judged as they act,
//! and killed by policy.
//!
//! - [`request`]: a watch as the API's request states it.
//! - [`spec`]: what a watch selects and its policy, validated.
//! - [`policy`]: a watch's own policy document: kill settings, lists, rules, exceptions.
//! - [`runner`]: a watch running on the router's records, taking commands as it goes.
//! - [`judge`]: events -> findings -> kills, and what a learning watch keeps.
//! - [`load`]: which threads are loading a model, and until when (the load phase).
//! - [`profile`]: what a learning watch keeps of its service, and the exceptions it makes.
//! - [`artifact`]: what a model file's name looks like (discovery and the `load` phase).
//! - [`content`]: what a discovered process's open could load, from the file's magic bytes.
//! - [`discovery`]: the processes discovery found, confirmed, let go of, or watches again.

pub mod artifact;
pub mod content;
pub mod discovery;
pub mod judge;
pub mod load;
pub mod policy;
pub mod profile;
pub mod request;
pub mod runner;
pub mod spec;

pub use discovery::{Opened, Release};
pub use runner::{Command, Kill, WatchOutput, WatchSummary, run};
pub use spec::{Policy, Selector, Validate, WatchRequest, WatchSpec};
