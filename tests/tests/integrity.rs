//! The probes' own check that they are still as set up, on the real kernel. The daemon-level
//! tests (a map changed with another process's bpf() calls) are in monitor-daemon/tests/faults.rs;
//! closing the daemon's link fds from outside needs a debugger in it, so here the test closes
//! them itself, the way an injected `close` would.

use std::{
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_scan::{LazyProbes, ScanReport, ScanSpec, Verdict, report::ErrorKind};
use monitor_tests::{is_root, loader_python};

/// Makes each of `fds` /dev/null. dup2 closes each link and leaves /dev/null at its number,
/// which the probes' own close would take, so no fd of anything else is closed twice.
fn close_links(fds: &[i32]) {
    let null = std::fs::File::open("/dev/null").unwrap();
    for &fd in fds {
        // SAFETY: both fds are open; `fd` becomes /dev/null.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), fd) } >= 0);
    }
}

async fn scan_malicious(probes: &mut LazyProbes) -> ScanReport {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/malicious.pkl");
    let mut spec = ScanSpec::new(&example);
    spec.python = loader_python();
    spec.timeout = Duration::from_secs(60);
    monitor_scan::scan(&spec, probes, |_| {}).await
}

/// Checks until a check says it is done, each finding nothing or only closed links. A closed
/// link stays in the kernel until its deferred release runs, and is not attached again before.
fn settle(mut check: impl FnMut() -> (Vec<String>, bool)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (problems, done) = check();
        assert!(
            problems.iter().all(|p| p.contains("closed from outside")),
            "{problems:?}"
        );
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "not attached again in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rules(report: &ScanReport) -> Vec<&str> {
    report.findings.iter().map(|f| f.rule.as_str()).collect()
}

#[test]
fn attachments_closed_under_the_probes_are_found_and_attached_again() {
    assert!(is_root(), "loading probes needs root");
    let mut probes = Probes::load(&ProbeConfig::default()).expect("loading the probes");
    assert!(probes.check().is_empty(), "all is well after loading");
    let fds = probes.attachment_fds();
    assert_eq!(
        fds.len(),
        probes.attached(),
        "every attachment is a bpf link here"
    );
    close_links(&fds[..3]);
    let problems = probes.check();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!("3 of {} probe attachments", fds.len())),
        "{problems:?}"
    );
    settle(|| (probes.check(), probes.reattached() == 3));
    assert!(
        probes.check().is_empty(),
        "attached again: {:?}",
        probes.check()
    );
    let again = probes.attachment_fds();
    assert_eq!(again.len(), fds.len(), "as many attachments as before");
}

/// A scan whose trace window overlaps the gap is never clean; once the links are attached
/// again, a scan is judged as before (the payload's exec is seen again).
#[tokio::test(flavor = "current_thread")]
async fn a_scan_during_the_gap_is_not_clean_and_one_after_reattaching_is_judged_normally() {
    assert!(is_root(), "loading probes needs root");
    let router = Router::start(Probes::load(&ProbeConfig::default()).expect("loading the probes"))
        .expect("starting the router");
    let mut probes = LazyProbes::loaded(router.clone());
    let before = scan_malicious(&mut probes).await;
    assert_eq!(before.verdict, Verdict::Malicious, "{before:#?}");

    // Every link closed: nothing of the next scan can be recorded until the links are back.
    close_links(&router.attachment_fds());
    let during = scan_malicious(&mut probes).await;
    assert_ne!(during.verdict, Verdict::Clean, "{during:#?}");
    assert!(
        during
            .errors
            .iter()
            .any(|e| e.kind == ErrorKind::IncompleteTrace && e.message.contains("from outside")),
        "the report says why: {:?}",
        during.errors
    );
    assert!(
        !during.trace.as_ref().is_some_and(|t| t.complete),
        "{:?}",
        during.trace
    );

    // The scan's own check as it ended found them and attached again those the kernel had
    // freed by then; the daemon's checks (each second) attach the rest.
    let total = router.attachments().0 as u64;
    settle(|| {
        (
            router.check_probes(),
            router.tampering().reattached == total,
        )
    });
    assert!(router.check_probes().is_empty(), "nothing is lost any more");
    let found = router.tampering();
    assert!(found.checks >= 1 && found.now.is_empty());
    let (_, last) = found.last.expect("the last tampering is kept");
    assert!(last[0].contains("attached again"), "{last:?}");

    let after = scan_malicious(&mut probes).await;
    assert_eq!(after.verdict, Verdict::Malicious, "{after:#?}");
    assert!(
        rules(&after).contains(&"exec.program"),
        "{:?}",
        rules(&after)
    );
    assert!(after.errors.is_empty(), "{:?}", after.errors);
    assert!(after.trace.as_ref().is_some_and(|t| t.complete));
    drop(probes);
    router.stop().await;
}
