//! What `monitorctl scan PATH...` scans: each path named, and inside each directory that is
//! not itself a SavedModel every artifact found (a Hugging Face snapshot: weights, tokenizer,
//! configuration; only what is a model format is scanned). Walks never follow symlinks and are
//! bounded in depth and in entries.

use std::{
    fs,
    path::{Path, PathBuf},
};

use monitor_formats::{self as format, FormatError, Limits};

/// Directories below a named one walked at most this deep.
const MAX_DEPTH: usize = 16;
/// Entries looked at per walk.
const MAX_ENTRIES: usize = 100_000;

/// The artifacts to scan and what was passed over, with why.
#[derive(Debug, Default)]
pub struct Targets {
    pub artifacts: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, String)>,
}

impl Targets {
    /// Whether this is the plain one-artifact scan (one path named, a file or a SavedModel).
    pub fn is_single(&self, named: usize) -> bool {
        named == 1 && self.artifacts.len() == 1 && self.skipped.is_empty()
    }
}

/// Expands the paths named on the command line.
pub fn expand(paths: &[PathBuf], limits: &Limits) -> Targets {
    let mut targets = Targets::default();
    for path in paths {
        if path.is_dir() && !is_saved_model(path) {
            let mut budget = MAX_ENTRIES;
            walk(path, 0, limits, &mut budget, &mut targets);
            if budget == 0 {
                targets.skipped.push((
                    path.clone(),
                    format!("the walk stopped after {MAX_ENTRIES} entries"),
                ));
            }
        } else {
            // Named by the user: scanned whatever it is (a link is followed, an error is
            // the scan's to report).
            targets.artifacts.push(path.clone());
        }
    }
    targets
}

fn is_saved_model(dir: &Path) -> bool {
    dir.join("saved_model.pb").is_file() || dir.join("saved_model.pbtxt").is_file()
}

fn walk(dir: &Path, depth: usize, limits: &Limits, budget: &mut usize, out: &mut Targets) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.skipped
                .push((dir.to_path_buf(), format!("unreadable: {e}")));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            out.skipped
                .push((path, "a symlink (walks do not follow them)".into()));
        } else if kind.is_dir() {
            if is_saved_model(&path) {
                out.artifacts.push(path);
            } else if depth + 1 >= MAX_DEPTH {
                out.skipped
                    .push((path, format!("deeper than {MAX_DEPTH} directories")));
            } else {
                walk(&path, depth + 1, limits, budget, out);
            }
        } else if kind.is_file() {
            match format::detect(&path, limits) {
                Ok(_) => out.artifacts.push(path),
                // Text, configuration, images: no model format, nothing to scan.
                Err(e @ (FormatError::Unknown { .. } | FormatError::Empty { .. })) => {
                    let why = e.to_string();
                    let why = why
                        .rsplit_once(": ")
                        .map_or(why.clone(), |(_, w)| w.to_string());
                    out.skipped
                        .push((path, format!("not a model format ({why})")));
                }
                // Too large, malformed, a zip bomb: the scan says so, as an error.
                Err(_) => out.artifacts.push(path),
            }
        } else {
            out.skipped.push((path, "not a regular file".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_walked_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("config.json"), "{\"a\": 1}\n").unwrap();
        fs::write(root.join("model.pkl"), b"\x80\x04K\x01.").unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/w.pkl"), b"\x80\x04K\x02.").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let targets = expand(&[root.to_path_buf()], &Limits::default());
        let names: Vec<_> = targets
            .artifacts
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["model.pkl", "sub/w.pkl"]);
        let skipped: Vec<_> = targets
            .skipped
            .iter()
            .map(|(p, _)| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(skipped, ["config.json", "link"]);
        assert!(!targets.is_single(1));
    }
}
