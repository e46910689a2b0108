//! The probes' own check that they are still as set up, on the real kernel. The daemon-level
//! tests (a map changed with another process's bpf() calls) are in monitor-daemon/tests/faults.rs;
//! closing the daemon's link fds from outside needs a debugger in it, so here the test closes
//! them itself, the way an injected `close` would.

use std::os::fd::AsRawFd as _;

use monitor_daemon::probes::{ProbeConfig, Probes};
use monitor_tests::is_root;

#[test]
fn attachments_closed_under_the_probes_are_found() {
    assert!(is_root(), "loading probes needs root");
    let mut probes = Probes::load(&ProbeConfig::default()).expect("loading the probes");
    assert!(probes.check().is_empty(), "all is well after loading");
    let fds = probes.attachment_fds();
    assert_eq!(
        fds.len(),
        probes.attached(),
        "every attachment is a bpf link here"
    );
    // dup2 closes each link and leaves /dev/null at its number, which the probes' own close
    // then takes, so no fd of anything else is closed twice.
    let null = std::fs::File::open("/dev/null").unwrap();
    for &fd in &fds[..3] {
        // SAFETY: both fds are open; `fd` becomes /dev/null.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } >= 0);
    }
    let problems = probes.check();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!("3 of {} probe attachments", fds.len())),
        "{problems:?}"
    );
    assert!(!probes.check().is_empty(), "a lost link stays lost");
}
