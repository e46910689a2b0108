//! A job that starts while its probes are still loading waits at its gate: the probes watch it
//! before it goes on, and if they never do, it never goes on.

use std::time::Duration;

use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_engine::trace::What;
use monitor_jobs::control::Gate;
use monitor_jobs::run::{JobIo, JobProbes, Output, RunSpec, run_with};
use monitor_rules::RuleSet;
use monitor_tests::{find_with_str, is_root};

/// bash that waits for the gate's byte on `fd`, then runs `after`.
fn behind_gate(fd: i32, after: &str) -> RunSpec {
    RunSpec {
        program: "bash".into(),
        args: vec![
            "-c".into(),
            format!("IFS= read -r -n1 -u {fd} go; [ \"$go\" = 1 ] || exit 9; {after}").into(),
        ],
        cwd: None,
        rules: RuleSet::defaults(),
        terminate_at: None,
        sandbox: None,
        timeout: Some(Duration::from_secs(60)),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_started_before_its_probes_is_watched_from_its_gate_on() {
    assert!(is_root(), "loads eBPF programs: run as root");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token.txt");
    std::fs::write(&token, "secret").unwrap();
    let gate = Gate::new().unwrap();
    let spec = behind_gate(
        gate.job_fd(),
        &format!(
            "cat {} >/dev/null; cat /etc/passwd >/dev/null",
            token.display()
        ),
    );

    let router = tokio::sync::OnceCell::new();
    // Loaded only once the job runs: it is already waiting at its gate by then.
    let loading = Box::pin(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let router = router
            .get_or_init(|| async {
                Router::start(Probes::load(&ProbeConfig::default()).expect("loading the probes"))
                    .expect("starting the router")
            })
            .await;
        Ok(router)
    });
    let io = JobIo {
        gate: Some(gate),
        ..JobIo::default()
    };
    let (mut events, mut findings) = (Vec::new(), Vec::new());
    let summary = run_with(&spec, io, JobProbes::Loading(loading), |out| match out {
        Output::Event(e) => events.push(e.clone()),
        Output::Finding(f) => findings.push(f.clone()),
        Output::Control(_) => {}
    })
    .await
    .expect("run behind a gate");

    assert_eq!(summary.exit_code, 0, "the gate opened with its byte");
    assert!(summary.complete, "{summary:?}");
    // What the job did after the gate is in the trace...
    let (open, _) = find_with_str(&events, "openat", "filename", token.to_str().unwrap())
        .expect("the token's open, after the gate");
    // ...and so is who did it: cat, started by the bash that was running before the probes
    // were, which the trace knows from /proc.
    let bash = open.ppid.expect("cat's parent");
    assert!(
        !events
            .iter()
            .any(|e| e.pid == bash && matches!(&e.what, What::Exec { .. })),
        "bash's own exec came before the probes"
    );
    let finding = findings
        .iter()
        .find(|f| f.rule == "file.account-read")
        .expect("what comes after the gate is judged, though the command's exec was never seen");
    let process = finding.process.as_ref().expect("the finding's process");
    let parent = process.parents.first().expect("cat's parent in the chain");
    assert_eq!(parent.pid, bash);
    assert!(
        parent
            .exe
            .as_deref()
            .is_some_and(|exe| exe.ends_with("/bash")),
        "bash named from /proc: {parent:?}"
    );
    assert!(parent.argv.iter().any(|a| a.contains("read -r -n1")));
}

#[tokio::test(flavor = "current_thread")]
async fn a_job_whose_probes_fail_to_load_never_passes_its_gate() {
    assert!(is_root(), "creates cgroups: run as root");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("passed-the-gate");
    let gate = Gate::new().unwrap();
    let spec = behind_gate(gate.job_fd(), &format!("touch {}", marker.display()));
    let loading = Box::pin(async {
        // Long enough for bash to be waiting at the gate.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Err(anyhow::anyhow!("these probes are made to fail"))
    });
    let io = JobIo {
        gate: Some(gate),
        ..JobIo::default()
    };
    let result = run_with(&spec, io, JobProbes::Loading(loading), |_| {}).await;

    let error = result.expect_err("a job nobody watches has no summary");
    assert!(format!("{error:#}").contains("made to fail"), "{error:#}");
    // Killed, or told by the gate's end of file not to go on: either way, not through.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !marker.exists(),
        "the job went past a gate that never opened"
    );
}
