//! `cargo xtask corpus`: the malicious and benign artifacts the scan tests load, made with the
//! real frameworks by corpus/make_corpus.py in the loader environment, with manifest.json
//! saying what a scan must find in each.
//!
//! Rebuilt only when its stamp (next to the manifest) no longer matches the generator or the
//! pinned frameworks it ran with. A rebuild goes to a temporary directory beside the corpus and
//! is renamed into place, so an interrupted build never leaves a corpus that looks complete.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{loader_env, root, run, stamp};

const MANIFEST: &str = "manifest.json";
const STAMP: &str = "make_corpus.stamp";

pub fn default_dir() -> PathBuf {
    root().join("target/corpus")
}

/// Builds the corpus in `out` unless it is already built from the same inputs; returns its
/// (absolute) directory.
pub fn ensure(out: &Path) -> Result<PathBuf> {
    let out = std::path::absolute(out).with_context(|| format!("resolving {}", out.display()))?;
    let generator = root().join("corpus/make_corpus.py");
    // The frameworks' versions shape the files (Keras stores Python bytecode, for one).
    let wanted = stamp::of_files(&[
        &generator,
        &root().join("corpus/real-models.txt"),
        &root().join("loader/requirements.txt"),
    ])?;
    if out.join(MANIFEST).is_file() && stamp::matches(&out.join(STAMP), &wanted) {
        return Ok(out);
    }
    let python = loader_env::python();
    if !python.is_file() {
        bail!(
            "no loader environment at {}: run `cargo xtask loader-env` first",
            loader_env::dir().display()
        );
    }

    let started = Instant::now();
    println!(
        "corpus: building {} with the real frameworks",
        out.display()
    );
    let building = sibling(&out, "building")?;
    remove_if_there(&building)?;
    run(Command::new(&python).arg(&generator).arg(&building))?;
    if !building.join(MANIFEST).is_file() {
        bail!("{} wrote no {MANIFEST}", generator.display());
    }
    let stamp_path = building.join(STAMP);
    fs::write(&stamp_path, &wanted).with_context(|| format!("writing {}", stamp_path.display()))?;
    replace(&building, &out)?;
    println!(
        "corpus: ready in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        out.join(MANIFEST).display()
    );
    Ok(out)
}

/// `.<name>.<what>` in the same directory as `dir` (so a rename stays on one file system).
fn sibling(dir: &Path, what: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    Ok(parent.join(format!(".{}.{what}", name.to_string_lossy())))
}

/// Puts `new` where `old` is: the old corpus is moved aside first and removed last.
fn replace(new: &Path, old: &Path) -> Result<()> {
    let aside = sibling(old, "old")?;
    remove_if_there(&aside)?;
    if old.exists() {
        fs::rename(old, &aside).with_context(|| format!("moving {} aside", old.display()))?;
    }
    fs::rename(new, old)
        .with_context(|| format!("renaming {} to {}", new.display(), old.display()))?;
    remove_if_there(&aside)
}

fn remove_if_there(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}
