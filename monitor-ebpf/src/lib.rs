//! Nothing to link against: the kernel programs are this crate's binary, built for the BPF
//! target by monitor-daemon's build script. The library target exists so that monitor-daemon
//! can list this crate as a build-dependency (cargo rebuilds it when the programs change).
#![no_std]
