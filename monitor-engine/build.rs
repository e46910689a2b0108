//! Builds the kernel programs (monitor-ebpf) for the BPF target with the pinned nightly
//! toolchain ([`nightly`]) and bpf-linker, and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! The programs follow this build's target architecture: aya-build passes it on as
//! `--cfg bpf_target_arch="..."` (from CARGO_CFG_TARGET_ARCH), from which monitor-common's
//! build script picks the syscall ABI (numbers, `pt_regs`), and aya-ebpf the registers a
//! kprobe's arguments are in. A cross build for aarch64 thus embeds aarch64 programs.
//!
//! With AYA_BUILD_SKIP=1 (clippy, docs, machines without the BPF toolchain) an empty
//! placeholder is written instead; loading it fails at run time with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

#[path = "build/nightly.rs"]
mod nightly;

const EBPF_PACKAGE: &str = "monitor-ebpf";
const EBPF_BINARY: &str = "monitor";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let root_dir = manifest_dir.join("..").join(EBPF_PACKAGE);
    let root_dir = root_dir
        .to_str()
        .context("non-UTF-8 path to the kernel crate")?;

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join(EBPF_BINARY), b"").context("writing the placeholder object")?;
        return Ok(());
    }
    // aya-build reruns this when anything under the kernel crate changes, the pin included.
    let toolchain = nightly::toolchain(&manifest_dir.join("..")).map_err(anyhow::Error::msg)?;
    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the kernel programs (run `cargo xtask setup` first)")
}
