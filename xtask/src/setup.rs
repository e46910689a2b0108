//! Installs the parts of the eBPF toolchain a fresh machine lacks, mounts tracefs, and builds.
//!
//! bpf-linker must use an LLVM of rustc's own major version. Debian's is older, so it is built
//! against the shared LLVM that ships inside the nightly toolchain (see shared/notes).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything, in order.
pub fn all() -> Result<()> {
    bubblewrap()?;
    tracefs();
    build()?;
    crate::loader_env::ensure()
}

/// Only what building the release binaries needs (a build machine, dist/Dockerfile's build
/// stage): rust-src, bpf-linker, then the build.
pub fn build() -> Result<()> {
    ebpf_toolchain()?;
    run(cargo().args(["build", "--release", "--bins"]))
}

/// What building the kernel programs (monitor-engine's build.rs) takes: rust-src, bpf-linker.
pub fn ebpf_toolchain() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The pinned nightly toolchain's name for rustup (monitor-ebpf/rust-toolchain.toml), or an
/// error saying what to install.
pub fn nightly() -> Result<String> {
    crate::nightly::toolchain(&crate::root()).map_err(anyhow::Error::msg)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let toolchain = nightly()?;
    let out = Command::new("rustc")
        .arg(format!("+{toolchain}"))
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("running rustc +{toolchain}"))?;
    if !out.status.success() {
        bail!("rustc +{toolchain} --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// `-Z build-std=core` compiles core from source for the BPF target.
fn rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    let toolchain = nightly()?;
    println!("setup: installing the {toolchain} toolchain's rust-src");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain]))
}

/// bpf-linker built against the nightly toolchain's libLLVM.
fn bpf_linker() -> Result<()> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output()
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let (lib, major) = find_libllvm(&sysroot.join("lib"))?;
    // A stable directory: bpf-linker finds libLLVM through it at run time (its rpath).
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = home.join(format!("monitor-llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let soname = lib.file_name().context("libLLVM has no file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        lib.display()
    );
    run(cargo()
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")]))
}

/// The toolchain's `libLLVM.so.<major>.<minor>-rust-...` and its major version.
fn find_libllvm(dir: &Path) -> Result<(PathBuf, u32)> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(version) = name.strip_prefix("libLLVM.so.")
            && let Some(major) = version.split('.').next().and_then(|m| m.parse().ok())
        {
            return Ok((path, major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain lacks its shared LLVM",
        dir.display()
    )
}

/// The sandbox is built with bubblewrap, from the distribution's packages.
fn bubblewrap() -> Result<()> {
    debian_package("bubblewrap", "/usr/bin/bwrap")
}

/// The real clients the tests talk to: a Prometheus server and promtool (the `prometheus`
/// package) scrape and check /metrics.
pub fn test_clients() -> Result<()> {
    debian_package("prometheus", "/usr/bin/promtool")
}

/// Installs Debian's `package` unless `file` (which it provides) is there already.
pub fn debian_package(package: &str, file: &str) -> Result<()> {
    if Path::new(file).exists() {
        return Ok(());
    }
    if !is_root() {
        println!("setup: warning: {package} is missing and installing it needs root");
        return Ok(());
    }
    println!("setup: installing {package}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    // No service is started by the package's scripts: the tests start their own server.
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The probes mount tracefs themselves when they can; doing it here shows problems early.
fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir() || !is_root() {
        return;
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        println!("setup: warning: could not mount tracefs at /sys/kernel/tracing");
    }
}
