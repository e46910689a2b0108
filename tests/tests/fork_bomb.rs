//! A fork bomb in a scan: stopped by the sandbox's process limit (per job: each sandbox runs as
//! a user of its own) and the time limit, killed with its cgroup, never clean. A test binary
//! of its own, so that it counts no other test's sandbox processes.

use std::time::Duration;

use monitor_engine::trace::What;
use monitor_scan::{Verdict, report::ErrorKind};
use monitor_tests::{job_user_processes, scan_code, scan_path};

#[tokio::test(flavor = "current_thread")]
async fn a_fork_bomb_is_stopped_by_the_limits_and_never_clean_and_spares_the_scan_beside_it() {
    let bomb = scan_code(
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
    );
    // Started once the bomb has reached its limit: it runs as another user, with a process
    // limit of its own.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.pkl");
    // pickle.dumps({"a": 1}, protocol=4)
    std::fs::write(
        &plain,
        b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
    )
    .unwrap();
    let beside = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        scan_path(&plain, |_| {}).await
    };
    let (report, beside) = tokio::join!(bomb, beside);
    assert_eq!(beside.verdict, Verdict::Clean, "{beside:#?}");
    assert!(beside.errors.is_empty(), "{:?}", beside.errors);
    // Reaching the process limit is itself the finding: nothing a model load does.
    assert_eq!(report.verdict, Verdict::Malicious, "{:?}", report.errors);
    let storm = report
        .findings
        .iter()
        .find(|f| f.rule == "proc.fork-failed")
        .expect("the failed forks are a finding");
    let What::Syscall(sc) = &storm.event.what else {
        panic!("{storm:?}")
    };
    assert_eq!(sc.errno.as_deref(), Some("EAGAIN"));
    assert!(
        report.errors.iter().any(|e| e.kind == ErrorKind::Timeout),
        "it ran into the time limit: {:?}",
        report.errors
    );
    // Killed with its cgroup: nothing of it is left.
    // (Given a moment: the kernel reaps thousands of killed processes, slowly on a busy host.)
    let mut left = job_user_processes();
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = job_user_processes();
    }
    assert_eq!(left, 0, "the fork bomb left processes behind");
}
