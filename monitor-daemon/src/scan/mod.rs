//! Scan jobs: `monitorctl scan model.pkl`.
//!
//! 1. [`format`]: what the artifact is, from its content (safetensors is checked right there:
//!    no code runs to load it); [`globals`]: what its pickles name, as evidence.
//! 2. [`job`]: a private copy in a fresh sandbox, the [`harness`] loading it with its
//!    framework under watch and saying which phase it is in, the rules judging each event.
//! 3. [`verdict`] and [`report`]: clean, suspicious, malicious or error, and the evidence;
//!    [`sarif`] and [`text`] render it.

pub mod format;
pub mod harness;
pub mod job;
pub mod report;
pub mod sarif;
pub mod static_analysis;
pub mod text;
pub mod verdict;

pub use job::{LazyProbes, Progress, ScanSpec, scan};
pub use report::ScanReport;
pub use verdict::Verdict;
