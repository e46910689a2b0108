//! monitor's engine, in the order data flows through it (see DESIGN.md):
//!
//! 1. [`probes`]: load the kernel programs, attach them, choose which cgroups are watched.
//! 2. [`reader`]: read raw records from the ring buffer, asynchronously; [`router`] hands
//!    each to the job watching its cgroup, so jobs run side by side on one set of probes.
//! 3. [`decode`]: bytes -> typed [`decode::Record`]s, arguments named and decoded.
//! 4. [`trace`]: pair syscall entries with their exits and keep the [`process`] table, giving
//!    [`trace::Event`]s.
//!
//! What the events mean is the rules' (monitor-rules); who they are shown to, the jobs'
//! (monitor-jobs). [`cgroup`] puts a job in a cgroup of its own; [`creds`] opens files as the
//! caller would; [`procfs`] and [`resolve`] read what the kernel keeps of a process.

/// The shared facts (syscall table, record layout), re-exported for the crates above.
pub use monitor_common;

pub mod cgroup;
pub mod creds;
pub mod decode;
pub mod probes;
pub mod process;
pub mod procfs;
pub mod reader;
pub mod resolve;
pub mod router;
pub mod trace;
