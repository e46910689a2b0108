//! `cargo xtask corpus`: the malicious and benign artifacts the scan tests load, made with the
//! real frameworks by corpus/make_corpus.py in the loader environment. Rebuilt only when the
//! generator changed (its text is kept next to the corpus as the stamp).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{loader_env, root, run};

const STAMP: &str = "make_corpus.py.stamp";

pub fn default_dir() -> PathBuf {
    root().join("target/corpus")
}

/// Builds the corpus in `out` unless it is already built from this generator.
pub fn ensure(out: &PathBuf) -> Result<()> {
    let generator = root().join("corpus/make_corpus.py");
    let source =
        fs::read(&generator).with_context(|| format!("reading {}", generator.display()))?;
    let stamp = out.join(STAMP);
    if out.join("manifest.json").is_file() && fs::read(&stamp).is_ok_and(|s| s == source) {
        return Ok(());
    }
    println!(
        "corpus: building {} with the real frameworks",
        out.display()
    );
    run(Command::new(loader_env::python()).arg(&generator).arg(out))?;
    fs::write(&stamp, &source).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
