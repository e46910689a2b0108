//! What a model artifact's file name looks like: the one list that discovery gives the kernel
//! and that a watch uses to tell when a server loads a model.

use monitor_common::event::{Discovery, SUFFIX_MAX, SUFFIXES, tail_bit};

/// File name endings of the formats that can run code when loaded (and of the weights files
/// that travel with them), lower case.
pub const DEFAULT_SUFFIXES: &[&str] = &[
    ".pkl", ".pickle", ".dill", ".joblib", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz", ".h5",
    ".keras", ".pb",
];

/// Whether `path` ends in one of the default suffixes, whatever the case of its letters.
pub fn looks_like_artifact(path: &str) -> bool {
    ends_in_any(path, DEFAULT_SUFFIXES)
}

/// Whether `path` ends in one of `suffixes`, whatever the case of their letters, as the kernel
/// matches them (asked of every open a watch judges: nothing is allocated).
pub fn ends_in_any(path: &str, suffixes: &[impl AsRef<str>]) -> bool {
    let path = path.as_bytes();
    suffixes.iter().any(|s| {
        let s = s.as_ref().as_bytes();
        path.len() >= s.len() && path[path.len() - s.len()..].eq_ignore_ascii_case(s)
    })
}

/// Why a suffix list cannot go to the kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuffixError {
    #[error("at most {SUFFIXES} suffixes, {0} given")]
    TooMany(usize),
    #[error("suffix {0:?}: 1 to {SUFFIX_MAX} ASCII bytes")]
    Bad(String),
}

/// The kernel's form of a suffix list: lower case, each at most `SUFFIX_MAX` bytes.
pub fn kernel_suffixes(suffixes: &[String], into: &mut Discovery) -> Result<(), SuffixError> {
    if suffixes.len() > SUFFIXES {
        return Err(SuffixError::TooMany(suffixes.len()));
    }
    into.tails = [0; 4];
    for (i, s) in suffixes.iter().enumerate() {
        if s.is_empty() || s.len() > SUFFIX_MAX || !s.is_ascii() {
            return Err(SuffixError::Bad(s.clone()));
        }
        let lower = s.to_ascii_lowercase();
        into.suffix[i] = [0; SUFFIX_MAX];
        into.suffix[i][..lower.len()].copy_from_slice(lower.as_bytes());
        into.len[i] = lower.len() as u8;
        // The kernel lowers the path's letters; an upper-case tail never matches.
        let b = lower.as_bytes();
        let n = b.len();
        match n {
            // Whatever comes before a short suffix.
            1 => into.tails = [u64::MAX; 4],
            2 => (0..=255).for_each(|a| set_tail(into, tail_bit(a, b[0], b[1]))),
            _ => set_tail(into, tail_bit(b[n - 3], b[n - 2], b[n - 1])),
        }
    }
    into.count = suffixes.len() as u32;
    Ok(())
}

fn set_tail(into: &mut Discovery, bit: usize) {
    into.tails[bit / 64] |= 1 << (bit % 64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_matched_without_case_and_checked_for_the_kernel() {
        assert!(looks_like_artifact("/srv/models/ResNet.PT"));
        assert!(!looks_like_artifact("/usr/lib/python3/os.py"));
        assert!(ends_in_any("/m/Model.PKL", &[".Pkl"]) && !ends_in_any("pkl", &[".pkl"]));
        let mut d = Discovery::default();
        let list: Vec<String> = DEFAULT_SUFFIXES.iter().map(|s| s.to_string()).collect();
        kernel_suffixes(&list, &mut d).unwrap();
        assert_eq!(d.count as usize, DEFAULT_SUFFIXES.len());
        assert_eq!(&d.suffix[0][..4], b".pkl");
        assert_eq!(d.len[0], 4);
        let ends = |t: &[u8; 3]| {
            let bit = tail_bit(t[0], t[1], t[2]);
            d.tails[bit / 64] & (1 << (bit % 64)) != 0
        };
        assert!(ends(b"pkl") && ends(b".h5") && ends(b".pt") && ends(b"kpt"));
        for common in [
            b".py", b"pyc", b".so", b"txt", b"son", b".js", b".db", b"xml",
        ] {
            assert!(!ends(common), "{}", String::from_utf8_lossy(common));
        }
        let long = vec!["x".repeat(SUFFIX_MAX + 1)];
        assert!(kernel_suffixes(&long, &mut d).is_err());
        let many: Vec<String> = (0..=SUFFIXES).map(|i| format!(".{i}")).collect();
        assert_eq!(
            kernel_suffixes(&many, &mut d),
            Err(SuffixError::TooMany(SUFFIXES + 1))
        );
    }
}
