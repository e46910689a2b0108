//! `cargo xtask bench probes|scan`. The measuring code needs the engine, which xtask must not
//! link (xtask has to build before the BPF toolchain exists), so each is a harness-less bench
//! target of monitor-daemon; this runs it, shows its report and keeps a copy to paste into
//! docs/benchmarks.md.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, root};

/// Where the last report of `bench` is kept.
fn report_path(bench: &str) -> PathBuf {
    root().join(format!("target/bench-{bench}.md"))
}

/// Runs monitor-daemon's bench target `bench`.
pub fn run(bench: &str) -> Result<()> {
    let start = Instant::now();
    let path = report_path(bench);
    let mut copy = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut child = cargo()
        .args(["bench", "--package", "monitor-daemon", "--bench", bench])
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo bench")?;
    let stdout = child.stdout.take().context("cargo bench has no stdout")?;
    // Progress goes to stderr as it happens; the report (stdout) is shown and kept.
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the benchmark's report")?;
        println!("{line}");
        writeln!(copy, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    let status = child.wait().context("waiting for cargo bench")?;
    if !status.success() {
        bail!("the benchmark failed: {status}");
    }
    eprintln!(
        "bench: done in {:.0} s; the report is also in {}",
        start.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}
