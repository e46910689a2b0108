//! Stamps: a short text that says which inputs a generated thing was made from, so a rerun can
//! tell "up to date" from "stale" by comparing one small file.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

/// One line per input: its name and a fingerprint of its bytes.
pub fn of_files(files: &[&Path]) -> Result<String> {
    let mut stamp = String::new();
    for path in files {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        stamp += &format!("{name} {:016x} {}\n", fnv1a(&bytes), bytes.len());
    }
    Ok(stamp)
}

/// Whether `path` holds exactly `stamp`.
pub fn matches(path: &Path, stamp: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|s| s == stamp)
}

/// 64-bit FNV-1a: stable across toolchains (std's DefaultHasher is not promised to be), and
/// plenty to notice an edited file; nothing here defends against a forged one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
