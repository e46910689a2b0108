//! `cargo xtask <task>`: everything a developer or CI does, from a fresh clone.

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "monitor's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (nightly rust-src, bpf-linker on the toolchain's own LLVM),
    /// mount tracefs, and build the release binaries. Idempotent; seconds when done before.
    Setup,
    /// Set up, then trace the bundled example: a pickle whose loading runs a command.
    Demo,
    /// Set up, then run every test (root: tests load real probes), rustfmt and clippy.
    Test,
    /// Set up, then measure (root). Prints a markdown table for docs/benchmarks.md.
    Bench {
        #[arg(value_enum)]
        target: BenchTarget,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchTarget {
    /// Cost of the probes to unwatched and watched processes (vs strace -f), and pipeline
    /// throughput.
    Probes,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::all(),
        Task::Demo => {
            setup::all()?;
            demo()
        }
        Task::Test => {
            setup::all()?;
            test()
        }
        Task::Bench {
            target: BenchTarget::Probes,
        } => {
            setup::all()?;
            if !setup::is_root() {
                bail!("the benchmark loads eBPF programs: run it as root");
            }
            bench::probes()
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Runs `cmd` from the workspace root; fails when it does.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn demo() -> Result<()> {
    let ctl = root().join("target/release/monitorctl");
    let python = real_python()?;
    println!("\n== monitorctl run: loading examples/malicious.pkl with pickle.load ==\n");
    let status = Command::new(ctl)
        .args(["run", "--print-trace", "--trace", "process,network", "--"])
        .arg(python)
        .args(["examples/load_pickle.py", "examples/malicious.pkl"])
        .current_dir(root())
        .status()
        .context("starting monitorctl")?;
    println!(
        "\nThe `sh -c id` above is the pickle's payload, run by pickle.load(). \
         Without --trace, every traced syscall is shown."
    );
    if !status.success() {
        bail!("the demo failed: {status}");
    }
    Ok(())
}

/// The interpreter itself, not a version manager's shim script in front of it (whose own
/// execs would crowd the demo's trace).
fn real_python() -> Result<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "python3 does not run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn test() -> Result<()> {
    if !setup::is_root() {
        bail!("the tests load eBPF programs into the kernel: run them as root");
    }
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // The kernel crate only builds for the BPF target: linted there, excluded from host runs.
    run(cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "monitor-ebpf",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"]))?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args([
            "--package",
            "monitor-ebpf",
            "--bins",
            "--",
            "-D",
            "warnings",
        ]))?;
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--release",
    ]))
}
