//! `cargo xtask compare`: monitor side by side with the static scanners (picklescan, modelscan,
//! fickling, ModelAudit) and a strace-based dynamic scan, over the same corpora, measured in
//! one run; the table goes into docs/comparison.md.
//!
//! This prepares the inputs (the peers' environment, the generated corpus, the large benign
//! artifacts, the release build) and hands the measuring to compare/run_compare.py, which
//! runs every tool as its own process and writes the generated section of the page.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    corpus, loader_env, root, run,
    venv::{PinnedVenv, SYSTEM_PYTHON},
};

/// Where the peers are installed: their own environment, never the loader's (their pins
/// would fight the frameworks' and they must not change what monitor loads with).
const DEFAULT_ENV: &str = "/var/lib/monitor/compare-env";
/// The peer corpus: picklescan's own fixtures, kept outside the repository.
const PEER_CORPUS: &str = "../shared/corpus/picklescan";

fn env_dir() -> PathBuf {
    crate::venv::dir_from_env("MONITOR_COMPARE_ENV", DEFAULT_ENV)
}

pub fn run_all(only: Option<&str>) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("the comparison loads eBPF programs and sandboxes as root: run it as root");
    }
    let started = Instant::now();
    // The install can fail (no registry, a yanked pin): the runner then records every peer's
    // result as an error instead of stopping the comparison.
    if let Err(e) = ensure_env() {
        eprintln!("compare: warning: the peers' environment is not usable: {e:#}");
    }
    let corpus = corpus::ensure(&corpus::default_dir())?;
    let large = root().join("target/compare-large");
    run(Command::new(loader_env::python())
        .arg(root().join("compare/make_large.py"))
        .arg(&large))?;
    let results = root().join("target/compare-results.json");
    let mut runner = Command::new(SYSTEM_PYTHON);
    runner.arg(root().join("compare/run_compare.py"));
    if let Some(only) = only {
        runner.arg("--only").arg(only);
    }
    run(runner
        .arg("--tools-env")
        .arg(env_dir())
        .arg("--loader-python")
        .arg(loader_env::python())
        .arg("--monitorctl")
        .arg(root().join("target/release/monitorctl"))
        .arg("--monitord")
        .arg(root().join("target/release/monitord"))
        .arg("--corpus")
        .arg(&corpus)
        .arg("--peer-corpus")
        .arg(root().join(PEER_CORPUS))
        .arg("--large")
        .arg(&large)
        .arg("--doc")
        .arg(root().join("docs/comparison.md"))
        .arg("--results")
        .arg(&results))?;
    if only.is_some() {
        println!("compare: partial run, results in {}", results.display());
        return Ok(());
    }
    // The page from the raw results and its template (compare/comparison.md.in): the prose
    // about each miss lives there, and the renderer says when a miss has none.
    run(Command::new(SYSTEM_PYTHON)
        .arg(root().join("compare/render_doc.py"))
        .arg("--results")
        .arg(&results)
        .arg("--template")
        .arg(root().join("compare/comparison.md.in"))
        .arg("--doc")
        .arg(root().join("docs/comparison.md")))?;
    println!(
        "compare: done in {:.0} s: docs/comparison.md, raw results in {}",
        started.elapsed().as_secs_f64(),
        results.display()
    );
    Ok(())
}

/// Creates or updates the peers' environment from compare/requirements.txt; does nothing
/// when it matches.
fn ensure_env() -> Result<()> {
    let env = PinnedVenv {
        dir: env_dir(),
        requirements: root().join("compare/requirements.txt"),
        stamp: "compare-requirements.txt",
        label: "compare",
    };
    if env.is_current()? {
        return Ok(());
    }
    println!(
        "compare: installing the static scanners into {}",
        env.dir.display()
    );
    env.rebuild(|_| Ok(()))
}
