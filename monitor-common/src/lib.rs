//! Facts shared by monitor's kernel programs and its user space.
//!
//! Two things live here and nowhere else:
//! - [`syscall`]: the table of traced syscalls, with each argument's meaning. The kernel side
//!   never sees it directly: user space turns it into the `CAPTURE` map at load time, and the
//!   decoder reads it to name and format arguments.
//! - [`event`]: the `#[repr(C)]` records the kernel writes into the ring buffer.
//!
//! [`regs`] says where the kernel saves a syscall's number and arguments (`pt_regs`).
//!
//! Both depend on the architecture (x86_64 or aarch64): build.rs sets `cfg(syscall_abi)` from
//! the target, or for the kernel programs from the architecture they are built for.
//!
//! The crate is `no_std` and holds no logic beyond constant look-ups; the `user` feature adds
//! what only user space needs (`aya::Pod`, serde).
#![cfg_attr(not(test), no_std)]

pub mod event;
pub mod regs;
pub mod syscall;
