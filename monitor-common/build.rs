//! Says which architecture's syscall ABI (numbers, kernel function names, saved registers) the
//! crate is built for: `cfg(syscall_abi = "...")`. For user space that is the target's
//! architecture; for the kernel programs (target `bpf`) it is the architecture of the kernel
//! they will run on, which aya-build passes as `bpf_target_arch` from the user-space build's
//! own target (monitor-engine/build.rs), else `AYA_BPF_TARGET_ARCH`, else this machine's.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(syscall_abi, values(\"x86_64\", \"aarch64\"))");
    for var in ["CARGO_CFG_BPF_TARGET_ARCH", "AYA_BPF_TARGET_ARCH", "HOST"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let target = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let abi = if target == "bpf" {
        env::var("CARGO_CFG_BPF_TARGET_ARCH")
            .or_else(|_| env::var("AYA_BPF_TARGET_ARCH"))
            .unwrap_or_else(|_| {
                let host = env::var("HOST").unwrap_or_default();
                host.split('-').next().unwrap_or_default().to_owned()
            })
    } else {
        target
    };
    // Another architecture gets no cfg, and the crate's compile_error! says why.
    if matches!(abi.as_str(), "x86_64" | "aarch64") {
        println!("cargo:rustc-cfg=syscall_abi=\"{abi}\"");
    }
}
