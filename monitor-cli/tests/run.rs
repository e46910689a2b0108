//! `monitorctl run` as a user runs it: the real binary, real probes (root).

use std::process::{Command, Output};

use serde_json::Value;

fn monitorctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_monitorctl"))
        .args(args)
        .output()
        .expect("start monitorctl")
}

/// Runs `monitorctl run --json --print-trace --output FILE <options> -- sh -c <script>`;
/// returns its output and the JSON lines of FILE.
fn run_json(options: &[&str], script: &str) -> (Output, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let mut args = vec![
        "run",
        "--json",
        "--print-trace",
        "--output",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let out = monitorctl(&args);
    let lines = std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out, lines)
}

#[test]
fn json_trace_shows_the_open_with_its_result_and_the_exec() {
    let (out, lines) = run_json(&[], "cat /etc/hostname; exec /bin/true");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The command's own output is untouched.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string("/etc/hostname").unwrap()
    );

    let open = lines
        .iter()
        .find(|e| e["syscall"] == "openat" && e["args"]["filename"] == "/etc/hostname")
        .expect("openat of /etc/hostname");
    assert!(open["ret"].as_i64().unwrap() >= 0, "{open}");
    assert_eq!(open["comm"], "cat");
    assert_eq!(open["args"]["dfd"], "AT_FDCWD");

    let exec = lines
        .iter()
        .find(|e| e["syscall"] == "execve" && e["args"]["filename"] == "/bin/true")
        .expect("execve of /bin/true");
    assert_eq!(exec["ret"], 0);
    assert_eq!(exec["args"]["argv"], serde_json::json!(["/bin/true"]));

    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["complete"], true);
    let events = lines
        .iter()
        .filter(|l| l["type"] != "finding" && l["type"] != "summary")
        .count();
    assert_eq!(summary["events"].as_u64().unwrap() as usize, events);
}

#[test]
fn text_trace_goes_to_stderr_in_strace_style() {
    let out = monitorctl(&["run", "--print-trace", "--", "sh", "-c", "exec /bin/true"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"execve("/bin/true", ["/bin/true"]"#),
        "{err}"
    );
    assert!(err.contains("+++ exited with 0 +++"), "{err}");
    assert!(
        err.contains("monitor: "),
        "the summary closes the output: {err}"
    );
}

#[test]
fn exit_status_is_the_commands() {
    assert_eq!(
        monitorctl(&["run", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    // A signal ends it: 128 + SIGKILL, as shells report it.
    assert_eq!(
        monitorctl(&["run", "--", "sh", "-c", "kill -9 $$"])
            .status
            .code(),
        Some(137)
    );
}

#[test]
fn bad_input_gets_a_clear_message_and_a_distinct_status() {
    let out = monitorctl(&["run", "--", "/nonexistent/monitor-no-such-program"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run"));

    let out = monitorctl(&["run"]);
    assert_eq!(out.status.code(), Some(2), "usage error");

    let out = monitorctl(&["run", "--ring-buffer-kib", "3", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn without_root_it_says_so() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_monitorctl"))
        .args(["run", "--", "true"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn trace_classes_select_what_is_printed() {
    let (out, lines) = run_json(&["--trace", "process"], "cat /etc/hostname >/dev/null");
    assert!(out.status.success());
    let events = &lines[..lines.len() - 1];
    assert!(
        events.iter().any(|e| e["syscall"] == "execve"),
        "process events are kept"
    );
    assert!(
        events.iter().all(|e| e["syscall"] != "openat"),
        "file events are left out"
    );
    assert!(
        events
            .iter()
            .all(|e| e["class"].is_null() || e["class"] == "process")
    );
    // The summary still counts everything.
    assert!(lines.last().unwrap()["events"].as_u64().unwrap() as usize > events.len());

    let out = monitorctl(&["run", "--trace", "disk", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "unknown class is a usage error");
}

#[test]
fn findings_are_reported_and_bad_rule_files_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("mine.yaml");
    std::fs::write(
        &rules,
        "rules:\n  - id: mine.hostname\n    description: the hostname was read\n    severity: medium\n    match: { syscalls: [openat], path: [/etc/hostname] }\n",
    )
    .unwrap();
    let (out, lines) = run_json(
        &["--rules", rules.to_str().unwrap()],
        "cat /etc/hostname >/dev/null",
    );
    assert!(out.status.success());
    let finding = lines
        .iter()
        .find(|l| l["type"] == "finding" && l["rule"] == "mine.hostname")
        .expect("a finding of the user's rule");
    assert_eq!(finding["severity"], "medium");
    assert_eq!(finding["event"]["args"]["filename"], "/etc/hostname");
    assert_eq!(lines.last().unwrap()["findings"]["medium"], 1);

    std::fs::write(&rules, "rules:\n  - id: bad\n    description: d\n    severity: high\n    match: { syscalls: [opne] }\n").unwrap();
    let out = monitorctl(&["run", "--rules", rules.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mine.yaml:2: rule `bad`: unknown syscall `opne`"),
        "{err}"
    );
}

#[test]
fn text_trace_shows_the_mode_only_when_a_file_may_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let created = dir.path().join("created");
    let script = format!(
        "cat /etc/hostname >/dev/null; echo x > {}",
        created.display()
    );
    let out = monitorctl(&["run", "--print-trace", "--", "sh", "-c", &script]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"openat(AT_FDCWD, "/etc/hostname", O_RDONLY) = "#),
        "{err}"
    );
    let create = format!(
        r#"openat(AT_FDCWD, "{}", O_WRONLY|O_CREAT|O_TRUNC, 0o666) = "#,
        created.display()
    );
    assert!(err.contains(&create), "{err}");
}

#[test]
fn completions_and_the_manual_page_are_generated() {
    let bash = monitorctl(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("monitorctl") && script.contains("scan"),
        "{script}"
    );
    let man = monitorctl(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH monitorctl"),
        "{page}"
    );
}

/// `--realtime`: what the command did is in the output file while the command still runs.
#[test]
fn realtime_writes_each_event_while_the_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_monitorctl"))
        .args(["run", "--realtime", "--json", "--output"])
        .arg(&trace)
        .args([
            "--",
            "sh",
            "-c",
            "cat /etc/hostname >/dev/null; exec sleep 120",
        ])
        .spawn()
        .unwrap();
    // Generous: the probes load first, and the other tests of this binary load theirs at the
    // same time on a small machine. The command outlives the wait by far.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        if text.contains("\"/etc/hostname\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing written while the command ran: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the event was written before the command ended"
    );
    // The command (monitorctl's child) ends; monitorctl follows.
    let _ = Command::new("pkill")
        .args(["-TERM", "-P", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
