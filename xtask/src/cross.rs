//! How the release binaries are built so that they run on more than this machine: for each
//! architecture, linked by zig against glibc 2.28's symbols (RHEL 8, Ubuntu 20.04, Debian 10,
//! Amazon Linux 2023), with cargo-zigbuild as the driver; the foreign architecture's binaries
//! are run under qemu-user (with Debian's cross glibc as their root) to make and check what
//! the archive holds.
//!
//! Every tool is pinned and installed here, only when a release is asked for: zig from PyPI's
//! `ziglang` wheel (its own environment), cargo-zigbuild from crates.io, qemu-user-static and
//! the arm64 cross glibc from Debian.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, root, run, setup, venv::PinnedVenv};

/// The oldest glibc the binaries may need: every symbol version they reference is at most this.
pub const GLIBC: (u32, u32) = (2, 28);

const CARGO_ZIGBUILD_VERSION: &str = "0.24.1";

/// Where zig's environment lives (dist/build/requirements.txt pins the `ziglang` wheel).
const DEFAULT_ENV: &str = "/var/lib/monitor/dist-build-env";

/// Debian's cross glibc for arm64: qemu-user finds the dynamic loader and libc there.
const AARCH64_SYSROOT: &str = "/usr/aarch64-linux-gnu";
const QEMU_AARCH64: &str = "/usr/bin/qemu-aarch64-static";

/// An architecture a release is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name in the tarball's (`monitor-<version>-<name>-linux.tar.gz`), and uname -m's.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Rust's target triple.
    pub const fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// cargo-zigbuild's target: the triple with the glibc to link against.
    pub fn zig_target(self) -> String {
        format!("{}.{}.{}", self.triple(), GLIBC.0, GLIBC.1)
    }

    /// Where cargo leaves its release binaries.
    pub fn release_dir(self) -> PathBuf {
        root().join("target").join(self.triple()).join("release")
    }

    /// The ELF machine its binaries must carry (`e_machine`).
    pub const fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => object::elf::EM_X86_64,
            Arch::Aarch64 => object::elf::EM_AARCH64,
        }
    }

    fn is_host(self) -> bool {
        self.name() == std::env::consts::ARCH
    }

    /// This machine's architecture.
    pub fn host() -> Arch {
        Arch::ALL
            .into_iter()
            .find(|a| a.is_host())
            .expect("xtask runs on x86_64 or aarch64")
    }

    /// A command that runs `binary` (one of this architecture's) here: directly on its own
    /// machine, under qemu-user elsewhere.
    pub fn command(self, binary: &Path) -> Command {
        if self.is_host() {
            return Command::new(binary);
        }
        let mut cmd = Command::new(QEMU_AARCH64);
        cmd.arg("-L").arg(AARCH64_SYSROOT).arg(binary);
        cmd
    }
}

fn zig_env() -> PinnedVenv<'static> {
    PinnedVenv {
        dir: crate::venv::dir_from_env("MONITOR_DIST_BUILD_ENV", DEFAULT_ENV),
        requirements: root().join("dist/build/requirements.txt"),
        stamp: "monitor-requirements.txt",
        label: "dist-build",
    }
}

/// The zig binary the `ziglang` wheel installs (inside its package directory).
fn zig() -> Result<PathBuf> {
    let lib = zig_env().dir.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let zig = entry?.path().join("site-packages/ziglang/zig");
        if zig.is_file() {
            return Ok(zig);
        }
    }
    bail!("the ziglang wheel left no zig under {}", lib.display())
}

/// Installs what building and checking `arches` takes; each step does nothing when done before.
pub fn ensure_tools(arches: &[Arch]) -> Result<()> {
    let env = zig_env();
    if !env.is_current()? {
        println!("dist-build: installing zig into {}", env.dir.display());
        env.rebuild(|_| Ok(()))?;
    }
    cargo_zigbuild()?;
    for &arch in arches {
        rust_std(arch)?;
    }
    if arches.iter().any(|a| !a.is_host()) {
        setup::debian_package("qemu-user-static", QEMU_AARCH64)?;
        setup::debian_package(
            "libc6-arm64-cross",
            &format!("{AARCH64_SYSROOT}/lib/ld-linux-aarch64.so.1"),
        )?;
    }
    Ok(())
}

/// The standard library for `arch` in the toolchain that builds the workspace: rustup ships
/// only the host's with a toolchain, and cross-building needs the target's too.
fn rust_std(arch: Arch) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .context("running rustup target list")?;
    if !out.status.success() {
        bail!("rustup target list --installed failed: {}", out.status);
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|t| t.trim() == arch.triple())
    {
        return Ok(());
    }
    println!(
        "dist-build: installing the Rust standard library for {}",
        arch.triple()
    );
    run(Command::new("rustup")
        .args(["target", "add", arch.triple()])
        .current_dir(root()))
}

fn cargo_zigbuild() -> Result<()> {
    if let Ok(out) = Command::new("cargo-zigbuild").arg("--version").output()
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(CARGO_ZIGBUILD_VERSION)
    {
        return Ok(());
    }
    println!("dist-build: installing cargo-zigbuild {CARGO_ZIGBUILD_VERSION} (about a minute)");
    run(cargo().args([
        "install",
        "cargo-zigbuild",
        "--version",
        CARGO_ZIGBUILD_VERSION,
        "--locked",
    ]))
}

/// `cargo-zigbuild <args>` (`build`, `test`: cargo's, linked by zig) with the pinned zig.
fn zigbuild(args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new("cargo-zigbuild");
    cmd.args(args).env("CARGO_ZIGBUILD_ZIG_PATH", zig()?);
    Ok(cmd)
}

/// Builds the release binaries for `arch` into [`Arch::release_dir`]. The kernel programs
/// inside monitord are built for the same architecture (monitor-engine's build.rs passes it on).
pub fn build(arch: Arch) -> Result<()> {
    setup::ebpf_toolchain()?;
    let started = std::time::Instant::now();
    println!(
        "dist-build: building the release binaries for {}",
        arch.zig_target()
    );
    run(&mut zigbuild(&[
        "build",
        "--release",
        "--bins",
        "--target",
        &arch.zig_target(),
    ])?)?;
    println!(
        "dist-build: {} built in {:.0} s",
        arch.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The crates whose unit tests check per-architecture facts against the target's libc.
pub const ARCH_SPECIFIC_CRATES: [&str; 1] = ["monitor-common"];

/// What `cargo xtask test` checks of the release toolchain without building the workspace
/// for release twice (`cargo xtask dist` builds and checks the binaries themselves): for each
/// architecture, the unit tests of `crates` (the syscall table, the register layout) are
/// linked by the pinned zig against glibc 2.28, their executables checked like a release
/// binary (ELF machine, no glibc symbol newer than [`GLIBC`]), and run, under qemu-user for
/// the foreign one, so each table is checked against its own architecture's libc.
pub fn test_crates(arches: &[Arch], crates: &[&str]) -> Result<()> {
    ensure_tools(arches)?;
    for &arch in arches {
        let target = arch.zig_target();
        let mut cmd = zigbuild(&[
            "test",
            "--release",
            "--lib",
            "--no-run",
            "--target",
            &target,
        ])?;
        for name in crates {
            cmd.args(["--package", name]);
        }
        cmd.arg("--message-format=json-render-diagnostics")
            .current_dir(root())
            .stderr(std::process::Stdio::inherit());
        let out = cmd.output().context("running cargo-zigbuild test")?;
        if !out.status.success() {
            bail!(
                "building the {} tests for {target} failed: {}",
                crates.join(", "),
                out.status
            );
        }
        let executables = test_executables(&out.stdout)?;
        if executables.len() != crates.len() {
            bail!(
                "{} test executables for {} crates: {executables:?}",
                executables.len(),
                crates.len()
            );
        }
        for exe in executables {
            crate::elf_check::check(&exe, arch.elf_machine(), GLIBC)?;
            println!(
                "cross: {} ({}, glibc <= {}.{})",
                exe.display(),
                arch.name(),
                GLIBC.0,
                GLIBC.1
            );
            run(&mut arch.command(&exe))?;
        }
    }
    Ok(())
}

/// The test executables cargo's JSON messages name.
fn test_executables(messages: &[u8]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for line in messages.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let message: serde_json::Value = serde_json::from_slice(line)?;
        if message["reason"] == "compiler-artifact"
            && let Some(exe) = message["executable"].as_str()
        {
            out.push(PathBuf::from(exe));
        }
    }
    Ok(out)
}
