//! Scans: `monitorctl scan model.pkl`, or a scan job of monitord.
//!
//! 1. [`monitor_formats`]: what the artifact is, from its content (safetensors, ONNX and GGUF
//!    are checked right there: no code runs to load them); [`static_analysis`]: what its bytes
//!    name, as evidence.
//! 2. [`job`]: a private copy in a fresh sandbox, the [`harness`] loading it with its
//!    framework under watch and saying which phase it is in, the rules judging each event.
//! 3. [`verdict`] and [`report`]: clean, suspicious, malicious or error, and the evidence;
//!    [`sarif`] and [`text`] render it.

pub mod harness;
pub mod input;
pub mod job;
pub mod report;
pub mod sarif;
pub mod static_analysis;
pub mod text;
pub mod verdict;

pub use job::{LazyProbes, Progress, ScanSpec, scan};
pub use report::ScanReport;
pub use verdict::Verdict;
