//! monitor's engine, in the order data flows through it (see DESIGN.md):
//!
//! 1. [`probes`]: load the kernel programs, attach them, choose which cgroups are watched.
//! 2. [`reader`]: read raw records from the ring buffer, asynchronously; [`router`] hands
//!    each to the job watching its cgroup, so jobs run side by side on one set of probes.
//! 3. [`decode`]: bytes -> typed [`decode::Record`]s, arguments named and decoded.
//! 4. [`trace`]: pair syscall entries with their exits and keep the [`process`] table, giving
//!    [`trace::Event`]s.
//! 5. [`render`]: show events to people (strace-like lines) or programs (JSON lines).
//!
//! [`cgroup`] and [`run`] put a command under watch from its first instruction.

/// The shared facts (syscall table, record layout), re-exported for the crates above.
pub use monitor_common;

pub mod cgroup;
pub mod control;
pub mod creds;
pub mod daemon;
pub mod decode;
pub mod judge;
pub mod probes;
pub mod process;
pub mod procfs;
pub mod reader;
pub mod render;
pub mod resolve;
pub mod router;
pub mod rules;
pub mod run;
pub mod sandbox;
pub mod scan;
pub mod trace;
pub mod watch;
