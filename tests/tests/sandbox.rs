//! A sandboxed job as the kernel sees it: unprivileged, cut off from the network and the host's
//! files, and reading decoys when it goes for credentials.

use std::net::TcpListener;

use monitor_engine::probes::ProbeConfig;
use monitor_jobs::sandbox::{SandboxOptions, user::is_job_uid};
use monitor_tests::{find_with_str, judge_bash};

#[tokio::test(flavor = "current_thread")]
async fn a_sandboxed_job_is_unprivileged_offline_and_fenced_from_the_host() {
    // Something on the host's loopback that the job must not reach.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // A file in root's home that the job must not see.
    let secret =
        std::path::PathBuf::from(format!("/root/monitor-sandbox-test-{}", std::process::id()));
    std::fs::write(&secret, "host secret").unwrap();

    let script = format!(
        "cat ~/.ssh/id_rsa >/dev/null; cat {secret} 2>/dev/null; touch /etc/monitor-sandbox-test 2>/dev/null; \
         {{ echo hi > /dev/tcp/127.0.0.1/{port}; }} 2>/dev/null; echo ok > /work/out; true",
        secret = secret.display(),
    );
    let (events, findings, summary) = judge_bash(
        &script,
        &ProbeConfig::default(),
        None,
        Some(SandboxOptions::default()),
    )
    .await;
    std::fs::remove_file(&secret).unwrap();
    assert_eq!(summary.exit_code, 0);

    // Unprivileged, as the kernel sees it (not a root mapped into a user namespace).
    let (cat, _) = find_with_str(&events, "openat", "filename", "/home/user/.ssh/id_rsa")
        .expect("the key read");
    assert!(is_job_uid(cat.uid), "a job user: {}", cat.uid);
    // The decoy key was there to be read, and reading it is the critical finding.
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "cred.read" && f.event.pid == cat.pid)
    );

    // Root's home is hidden.
    let (_, open) = find_with_str(&events, "openat", "filename", secret.to_str().unwrap())
        .expect("the secret open");
    assert_eq!(open.errno.as_deref(), Some("ENOENT"));
    // The host's files are read-only.
    let (_, open) = find_with_str(&events, "openat", "filename", "/etc/monitor-sandbox-test")
        .expect("the write");
    assert_eq!(open.errno.as_deref(), Some("EROFS"));
    // The scratch directory is writable.
    let (_, open) =
        find_with_str(&events, "openat", "filename", "/work/out").expect("the scratch write");
    assert!(open.ret.unwrap() >= 0);

    // The connect is reported, and never reached the host's listener.
    assert!(findings.iter().any(|f| f.rule == "net.connect"));
    assert!(
        listener.accept().is_err(),
        "the job reached the host's loopback"
    );
    assert!(!std::path::Path::new("/etc/monitor-sandbox-test").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn building_the_sandbox_is_not_a_finding() {
    let (events, findings, summary) = judge_bash(
        "true",
        &ProbeConfig::default(),
        None,
        Some(SandboxOptions::default()),
    )
    .await;
    assert_eq!(summary.exit_code, 0);
    assert!(findings.is_empty(), "{findings:#?}");
    // bubblewrap's own work was traced all the same.
    assert!(events.iter().any(|e| &*e.comm == "bwrap"));
}

#[tokio::test(flavor = "current_thread")]
async fn the_job_user_looks_like_the_account_its_environment_names() {
    // What a payload checking for a sandbox would compare: its name and home by uid against
    // USER and HOME.
    let (_, _, summary) = judge_bash(
        "[ \"$(id -un)\" = \"$USER\" ] || exit 3; \
         [ \"$(getent passwd \"$(id -u)\" | cut -d: -f6)\" = \"$HOME\" ] || exit 4; \
         [ \"$(id -gn)\" = \"$USER\" ] || exit 5",
        &ProbeConfig::default(),
        None,
        Some(SandboxOptions::default()),
    )
    .await;
    assert_eq!(summary.exit_code, 0, "3: name, 4: home, 5: group differ");
}
