//! The default rules judging real processes, and the kill policy.

use monitor_engine::probes::ProbeConfig;
use monitor_rules::Severity;
use monitor_tests::judge_bash;

#[tokio::test(flavor = "current_thread")]
async fn a_honeytoken_read_is_a_critical_finding_with_its_evidence() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    let key = home.path().join(".ssh/id_rsa");
    std::fs::write(&key, "not a real key").unwrap();
    // Relative to the working directory: the rule sees the absolute path.
    let script = format!("cd {} && cat .ssh/id_rsa >/dev/null", home.path().display());
    let (_, findings, summary) = judge_bash(&script, &ProbeConfig::default(), None, None).await;

    let cred = findings
        .iter()
        .find(|f| f.rule == "cred.read")
        .expect("cred.read fired");
    assert_eq!(cred.severity, Severity::Critical);
    assert_eq!(&*cred.event.comm, "cat");
    assert_eq!(summary.findings.get(&Severity::Critical), Some(&1));
    assert_eq!(summary.worst(), Some(Severity::Critical));
    assert!(summary.terminated_by.is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn the_launch_itself_is_not_a_finding() {
    // Whatever bash does on its own at start-up (without HOME it reads /etc/passwd, a low
    // finding) may be reported; the exec that starts the job never is, nor anything serious.
    let (_, findings, summary) = judge_bash("true", &ProbeConfig::default(), None, None).await;
    let serious: Vec<_> = findings
        .iter()
        .filter(|f| f.severity >= Severity::Medium || f.rule.starts_with("exec."))
        .collect();
    assert!(serious.is_empty(), "{serious:#?}");
    assert!(summary.worst().is_none_or(|worst| worst < Severity::Medium));
}

#[tokio::test(flavor = "current_thread")]
async fn terminate_on_high_risk_kills_the_job_at_the_first_high_finding() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("should-not-exist");
    // Executing sh is a high finding; what sh would do after a pause never happens.
    let script = format!("exec /bin/sh -c 'sleep 5; touch {}'", marker.display());
    let (_, findings, summary) =
        judge_bash(&script, &ProbeConfig::default(), Some(Severity::High), None).await;

    assert_eq!(
        summary.terminated_by.as_deref(),
        Some("exec.program"),
        "{summary:?}"
    );
    assert_eq!(summary.signal, Some(libc::SIGKILL));
    assert_eq!(summary.exit_code, 128 + libc::SIGKILL);
    assert!(!marker.exists(), "the killed job went on");
    assert!(findings.iter().any(|f| f.rule == "exec.program"));
}
