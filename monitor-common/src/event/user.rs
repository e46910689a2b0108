//! User-space additions to the event records: `aya::Pod`, so maps and the ring buffer can be
//! read as these types.

use super::*;

// SAFETY: each type is #[repr(C)], made only of integers and byte arrays, with every padding
// byte spelled out as a field, so any bit pattern is a valid value.
unsafe impl aya::Pod for EventHeader {}
unsafe impl aya::Pod for Watch {}
unsafe impl aya::Pod for KillPolicy {}
unsafe impl aya::Pod for ExecKey {}
unsafe impl aya::Pod for WatchCounts {}
unsafe impl aya::Pod for Discovery {}
unsafe impl aya::Pod for CaptureSpec {}
unsafe impl aya::Pod for TracepointOffsets {}
unsafe impl aya::Pod for FileOffsets {}
unsafe impl aya::Pod for PathKey {}
unsafe impl aya::Pod for SyscallExit {}
unsafe impl aya::Pod for SyscallReturn {}
unsafe impl aya::Pod for ProcessFork {}
unsafe impl aya::Pod for ProcessExec {}
unsafe impl aya::Pod for ProcessExit {}
