//! `cargo xtask <task>`: everything a developer or CI does, from a fresh clone.

mod bench;
#[cfg(test)]
mod chart;
mod compare;
mod corpus;
mod crate_graph;
mod cross;
mod deb_root;
mod dist;
mod dist_check;
mod elf_check;
mod fuzz_api;
mod loader_env;
/// The pinned nightly toolchain, shared with monitor-engine/build.rs.
#[path = "../../monitor-engine/build/nightly.rs"]
mod nightly;
mod package;
mod setup;
mod stamp;
mod venv;

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
    /// mount tracefs, build the release binaries, and install the loader environment.
    /// Idempotent; seconds when done before.
    Setup,
    /// Only build the release binaries, with the toolchain parts that takes (nightly rust-src,
    /// bpf-linker): what dist/Dockerfile's build stage runs.
    Build,
    /// Install (or update) only the loader environment: the Python and pinned frameworks that
    /// `monitorctl scan` loads artifacts with, in /var/lib/monitor/loader
    /// ($MONITOR_LOADER_ENV).
    LoaderEnv,
    /// Set up, then scan the bundled example: a pickle whose loading runs a command.
    Demo,
    /// Redraw README.md's picture of the workspace's crates and their dependencies (from
    /// `cargo metadata`; a unit test checks it is current).
    CrateGraph,
    /// Set up, build the corpus, then run every test (root: tests load real probes and scan
    /// real artifacts), rustfmt, clippy, `cargo xtask dist`'s checks, and `deb-test` (the .deb
    /// installed into a clean Debian root, scanning there).
    Test,
    /// Set up, then fuzz monitord's HTTP API with schemathesis (from PyPI, into its own
    /// environment) against docs/api.yaml: no 5xx, replies as the spec says, no hang (root;
    /// about a minute). Part of `test`.
    FuzzApi,
    /// Build the test corpus: malicious and benign artifacts of every format, made with the
    /// real frameworks, and the manifest of what a scan must find in each.
    Corpus {
        /// Where to put it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Set up, then compare monitor with the static scanners (picklescan, modelscan, fickling,
    /// ModelAudit, installed from PyPI into their own environment) and a strace-based scan
    /// over the same corpora (root; about half an hour). Writes the table into
    /// docs/comparison.md.
    Compare {
        /// Only the files whose CORPUS:FILE contains this (results kept, page not rewritten).
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
    /// Build the release binaries for x86_64 and aarch64, then write one tarball per
    /// architecture, target/dist/monitor-<version>-<arch>-linux.tar.gz (binaries, systemd unit,
    /// default config, rules, loader requirements, docs, dashboard, Kubernetes manifests,
    /// Dockerfile, SHA256SUMS), check what is in each, and check the unit, Dockerfile and
    /// manifests.
    ///
    /// The binaries are linked by zig (cargo-zigbuild) against glibc 2.28's symbols, so they
    /// run on RHEL 8, Ubuntu 20.04, Debian 10 and newer; the check reads each binary's ELF
    /// symbol versions and refuses any newer. aarch64's are cross-built here and checked under
    /// qemu-user. zig (PyPI), cargo-zigbuild (crates.io), qemu-user-static and the arm64 cross
    /// glibc (Debian) are installed on first use, pinned.
    Dist {
        /// Only these architectures (repeat the option for several); both by default.
        #[arg(long = "arch", value_enum, value_name = "ARCH")]
        arches: Vec<cross::Arch>,
        /// Also make the `monitor` .deb and .rpm for this machine's architecture in
        /// target/dist/packages/ (binaries in /usr/bin, unit, /etc/monitor/monitord.toml,
        /// completions, manual pages, rules, dashboard, docs), with cargo-deb and
        /// cargo-generate-rpm (installed from crates.io the first time, a few minutes), and
        /// check what they hold.
        #[arg(long)]
        packages: bool,
    },
    /// Make the packages (as `dist --packages`) from the release binaries, then install the
    /// .deb into a clean Debian root (debootstrap, cached in target/debian-root/) and scan a
    /// malicious and a clean pickle with the installed monitorctl (root). Part of `test`.
    DebTest,
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
    /// Scan latency of a small pickle and a torch checkpoint, vs the bare load and a
    /// strace-based scan.
    Scan,
    /// monitord's throughput for scans submitted at once, and its memory.
    Daemon,
    /// Live watches: offending syscall to finding on the stream, in-kernel kills, and what
    /// discovery costs the rest of the host.
    Watch,
    /// 1,000 scans, four at a time, beside a watched flood of syscalls: verdicts, stored
    /// reports, drops, the daemon's memory.
    Soak,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::all(),
        Task::Build => setup::build(),
        Task::LoaderEnv => loader_env::ensure(),
        Task::CrateGraph => crate_graph::write(),
        Task::Corpus { out } => {
            loader_env::ensure()?;
            corpus::ensure(&out.unwrap_or_else(corpus::default_dir)).map(drop)
        }
        Task::Demo => {
            setup::all()?;
            demo()
        }
        Task::Test => {
            setup::all()?;
            setup::test_clients()?;
            corpus::ensure(&corpus::default_dir())?;
            test()?;
            fuzz_api::run_fuzz()
        }
        Task::FuzzApi => {
            setup::all()?;
            if !setup::is_root() {
                bail!("monitord loads eBPF programs: run the API fuzzing as root");
            }
            fuzz_api::run_fuzz()
        }
        Task::Compare { only } => {
            setup::all()?;
            compare::run_all(only.as_deref())
        }
        Task::Dist { arches, packages } => {
            dist::run(if arches.is_empty() {
                &cross::Arch::ALL
            } else {
                &arches
            })?;
            if packages {
                package::build(package::Formats::DebAndRpm)?;
            }
            Ok(())
        }
        Task::DebTest => {
            setup::build()?;
            if !setup::is_root() {
                bail!("installing the .deb into a Debian root needs root");
            }
            deb_root::install_and_scan(&package::build(package::Formats::Deb)?)
        }
        Task::Bench { target } => {
            setup::all()?;
            if !setup::is_root() {
                bail!("the benchmark loads eBPF programs: run it as root");
            }
            bench::run(match target {
                BenchTarget::Probes => "probes",
                BenchTarget::Scan => "scan",
                BenchTarget::Daemon => "daemon",
                BenchTarget::Watch => "watch",
                BenchTarget::Soak => "soak",
            })
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
    println!("\n== monitorctl scan examples/malicious.pkl ==\n");
    let status = Command::new(&ctl)
        .args(["scan", "examples/malicious.pkl"])
        .current_dir(root())
        .status()
        .context("starting monitorctl")?;
    // Exit code 1 is the verdict we expect: a threat.
    if status.code() != Some(1) {
        bail!("the demo scan did not find the payload: {status}");
    }
    println!(
        "\nThe pickle's payload ran `sh -c id` inside the sandbox, where the kernel probes saw \
         it; exit code 1 means a threat. --format json and --format sarif give the same report \
         for programs, --print-trace every syscall."
    );
    Ok(())
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
        .arg(format!("+{}", setup::nightly()?))
        .args([
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
    // What cannot be run here (the image, the DaemonSet, the unit under systemd) is checked
    // as far as it can be, and a tarball of this machine's build is made, unpacked and read.
    let host = dist::Binaries::Host;
    dist::verify(&dist::write(host)?, host)?;
    dist_check::run_checks(&root().join("target/release/monitord"))?;
    // The packages, and the .deb installed into a clean Debian root and scanning there.
    deb_root::install_and_scan(&package::build(package::Formats::Deb)?)?;
    // The release toolchain (zig, glibc 2.28, qemu-user) and the facts that differ per
    // architecture (the syscall table, the register layout), each checked against its own
    // architecture's libc; the release binaries themselves are `cargo xtask dist`'s.
    cross::test_crates(&cross::Arch::ALL, &cross::ARCH_SPECIFIC_CRATES)?;
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--release",
        // Every failing test binary is reported in one run, not only the first.
        "--no-fail-fast",
    ]))
}
