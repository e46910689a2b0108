//! Scan jobs: what an artifact is ([`format`]), then loading it with its framework inside the
//! sandbox under watch, phase by phase, and the verdict.

pub mod format;
