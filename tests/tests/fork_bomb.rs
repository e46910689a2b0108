//! A fork bomb in a scan: stopped by the sandbox's process limit and the time limit, killed
//! with its cgroup, never clean. A test binary of its own: the process limit is per user and
//! every sandbox runs as the same one, so a bomb starves the scans running beside it (they
//! fail closed, as errors; see README, Known limits).

use std::time::Duration;

use monitor_daemon::scan::{Verdict, report::ErrorKind};
use monitor_tests::{nobody_processes, scan_code};

#[tokio::test(flavor = "current_thread")]
async fn a_fork_bomb_is_stopped_by_the_limits_and_never_clean() {
    let report = scan_code(
        "import os, time\n\
         n = 0\n\
         for _ in range(5000):\n\
         \x20   try:\n\
         \x20       if os.fork() == 0:\n\
         \x20           time.sleep(30)\n\
         \x20           os._exit(0)\n\
         \x20       n += 1\n\
         \x20   except OSError:\n\
         \x20       break\n\
         time.sleep(30)\n",
        Duration::from_secs(8),
    )
    .await;
    assert_ne!(report.verdict, Verdict::Clean, "{report:#?}");
    assert!(
        report.errors.iter().any(|e| e.kind == ErrorKind::Timeout),
        "it ran into the time limit: {:?}",
        report.errors
    );
    // Killed with its cgroup: nothing of it is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(nobody_processes(), 0, "the fork bomb left processes behind");
}
