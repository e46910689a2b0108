//! The host's processes, as /proc lists them at the moment of asking (not the trace's view:
//! see `process` for that).

use std::fs;

/// The ids of the processes alive now; empty when /proc cannot be read.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}
