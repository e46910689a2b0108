//! Hostile artifacts: payloads that attack the scanner rather than the victim. For each, the
//! host is unharmed, the verdict is malicious or an error with its reason, never clean.
//!
//! Every payload is a protocol-0 pickle calling `builtins.exec` on a few lines of Python,
//! inside the scan's sandbox. They are bounded so that a broken sandbox cannot take the test
//! machine down with them. The fork bomb is in fork_bomb.rs, a test binary of its own.

use std::{path::Path, time::Duration};

use monitor_engine::probes::ProbeConfig;
use monitor_scan::{ScanReport, Verdict, report::ErrorKind};
use monitor_tests::{scan_code, scan_code_with};

fn rules(report: &ScanReport) -> Vec<&str> {
    report.findings.iter().map(|f| f.rule.as_str()).collect()
}

fn error_kinds(report: &ScanReport) -> Vec<ErrorKind> {
    report.errors.iter().map(|e| e.kind).collect()
}

fn never_clean(report: &ScanReport) {
    assert_ne!(report.verdict, Verdict::Clean, "{report:#?}");
    if report.verdict == Verdict::Error {
        assert!(!report.errors.is_empty(), "an error says why: {report:#?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_memory_bomb_fails_inside_its_address_space_limit() {
    let report = scan_code(
        "blocks = []\n\
         while True:\n\
         \x20   blocks.append(bytearray(1 << 30))\n",
        Duration::from_secs(20),
    )
    .await;
    never_clean(&report);
}

#[tokio::test(flavor = "current_thread")]
async fn a_payload_that_ignores_sigterm_and_spins_is_killed_at_the_time_limit() {
    let report = scan_code(
        "import signal\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         while True:\n\
         \x20   pass\n",
        Duration::from_secs(4),
    )
    .await;
    never_clean(&report);
    assert!(
        error_kinds(&report).contains(&ErrorKind::Timeout),
        "{:?}",
        report.errors
    );
    assert!(
        report.duration_ms < 30_000,
        "stopped near its limit: {} ms",
        report.duration_ms
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_double_forked_setsid_child_is_still_traced_and_found() {
    // The grandchild leaves its session and outlives the loader, then acts.
    let report = scan_code(
        "import os, time\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   if os.fork() == 0:\n\
         \x20       time.sleep(1)\n\
         \x20       os.execv('/bin/true', ['true'])\n\
         \x20   os._exit(0)\n",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    assert!(
        rules(&report).contains(&"exec.program"),
        "{:?}",
        rules(&report)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_payload_that_waits_past_the_time_limit_is_reported_as_timed_out() {
    let report = scan_code(
        "import time, os\n\
         time.sleep(60)\n\
         os.system('true')\n",
        Duration::from_secs(3),
    )
    .await;
    // Never clean (the exec global the payload rides on is itself a finding of the audit
    // hook's), and the time limit is said.
    never_clean(&report);
    assert!(
        error_kinds(&report).contains(&ErrorKind::Timeout),
        "{:?}",
        report.errors
    );
}

#[tokio::test(flavor = "current_thread")]
async fn attempts_to_leave_the_sandbox_fail_and_are_found() {
    let marker = Path::new("/var/tmp/monitor-hostile-escape-marker");
    let _ = std::fs::remove_file(marker);
    let report = scan_code(
        &format!(
            "import os\n\
             for attempt in [\n\
             \x20   lambda: open('{marker}', 'w').write('escaped'),\n\
             \x20   lambda: os.kill(1, 9),\n\
             \x20   lambda: open('/proc/1/root/etc/shadow').read(),\n\
             \x20   lambda: open('/sys/fs/cgroup/cgroup.procs', 'w').write(str(os.getpid())),\n\
             \x20   lambda: os.system('mount -t tmpfs none /mnt'),\n\
             ]:\n\
             \x20   try:\n\
             \x20       attempt()\n\
             \x20   except Exception:\n\
             \x20       pass\n",
            marker = marker.display()
        ),
        Duration::from_secs(30),
    )
    .await;
    assert!(!marker.exists(), "the payload wrote to the host");
    assert_eq!(report.verdict, Verdict::Malicious, "{report:#?}");
    let found = rules(&report);
    assert!(found.contains(&"exec.program"), "{found:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn io_uring_use_is_found() {
    // io_uring_setup(2) through ctypes: submissions would bypass syscall tracing.
    let report = scan_code(
        "import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         params = ctypes.create_string_buffer(120)\n\
         fd = libc.syscall(425, 8, params)\n",
        Duration::from_secs(30),
    )
    .await;
    assert_ne!(report.verdict, Verdict::Clean, "{report:#?}");
    assert!(
        rules(&report).contains(&"kernel.io-uring"),
        "{:?}",
        rules(&report)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn gigabytes_written_to_tmp_stop_at_the_sandboxs_tmpfs_size() {
    // Files of 256 MiB (under RLIMIT_FSIZE), up to 4 GiB in all: the private /tmp, a tmpfs in
    // the host's memory, must fill first. Exit 28 (ENOSPC) says it did.
    let report = scan_code(
        "import os\n\
         chunk = b'x' * (16 << 20)\n\
         try:\n\
         \x20   for n in range(16):\n\
         \x20       with open('/tmp/fill-%d' % n, 'wb') as f:\n\
         \x20           for _ in range(16):\n\
         \x20               f.write(chunk)\n\
         except OSError as e:\n\
         \x20   os._exit(e.errno)\n",
        Duration::from_secs(60),
    )
    .await;
    never_clean(&report);
    let loader = report.loader.as_ref().expect("the loader ran");
    assert_eq!(
        loader.exit_code,
        libc::ENOSPC,
        "the payload ran out of space: {report:#?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_syscall_flood_that_overflows_the_ring_buffer_is_reported_and_never_clean() {
    // Two processes opening a long missing path as fast as Python can: each open is two
    // records with the path. A 1 MiB ring holds a normal load's trace, not this.
    let report = scan_code_with(
        "import os\n\
         os.fork()\n\
         path = '/nonexistent/' + 'a/' * 1000\n\
         for _ in range(200000):\n\
         \x20   try:\n\
         \x20       os.open(path, os.O_RDONLY)\n\
         \x20   except OSError:\n\
         \x20       pass\n",
        Duration::from_secs(60),
        ProbeConfig {
            ring_buffer_bytes: 1 << 20,
        },
    )
    .await;
    never_clean(&report);
    let trace = report.trace.as_ref().expect("a trace");
    eprintln!("flood: {trace:?}");
    assert!(trace.dropped > 0, "{trace:?}");
    assert!(!trace.complete, "{trace:?}");
    assert!(
        error_kinds(&report).contains(&ErrorKind::IncompleteTrace),
        "{:?}",
        report.errors
    );
}
