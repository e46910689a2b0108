//! Faults around the real monitord: killed with SIGKILL at random points, a full state
//! directory, a broken loader environment, the kernel's tracefs or BTF out of sight. Root: the
//! daemon loads the probes.

mod support;

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{Daemon, pickle, root_required};

/// A pickle whose load runs `code` (Python; protocol 0's `V` takes raw-unicode-escape text
/// on one line).
fn pickle_exec(dir: &Path, name: &str, code: &str) -> PathBuf {
    let escaped = code.replace('\\', "\\u005c").replace('\n', "\\u000a");
    pickle(dir, name, &format!("cbuiltins\nexec\n(V{escaped}\ntR."))
}

/// The three kinds of scan the kill test runs: a threat, a clean load, and one whose trace
/// (thousands of events) makes the report's write long enough for a kill to land in it.
fn kill_test_artifacts(dir: &Path) -> Vec<PathBuf> {
    vec![
        pickle(dir, "evil.pkl", "cposix\nsystem\n(Vid\ntR."),
        pickle(dir, "clean.pkl", "cbuiltins\nlen\n(Vabc\ntR."),
        pickle_exec(
            dir,
            "busy.pkl",
            "[open('/dev/null').close() for i in range(3000)]",
        ),
    ]
}

/// A small deterministic generator: the seed is printed, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Asserts that done scan `id` is served whole: its report parses, its findings and stored
/// trace are all there and agree with it.
fn assert_whole(daemon: &Daemon, id: &str, record: &Value, findings: &[Value]) {
    let report = &record["report"];
    assert_eq!(report["schema"], "monitor.scan/v1", "{id}: {record}");
    assert_eq!(report["verdict"], record["verdict"], "{id}");
    // Every source's findings are stored: the kernel's, the audit hook's and the static ones.
    let reported: usize = ["findings", "audit_findings", "static_findings"]
        .iter()
        .map(|k| report[*k].as_array().map_or(0, Vec::len))
        .sum();
    let stored = findings.iter().filter(|f| f["scan_id"] == id).count();
    assert_eq!(reported, stored, "{id}: findings stored with the report");
    let (status, events) = daemon.json(
        "GET",
        &format!("/v1/scans/{id}/events?limit=20000"),
        &Value::Null,
    );
    assert_eq!(status, 200, "{events}");
    let traced = report["trace"]["events"].as_u64().expect("trace.events");
    assert_eq!(
        events["events"].as_array().unwrap().len() as u64,
        traced.min(20_000),
        "{id}: the stored trace is the report's"
    );
    let (status, text) = daemon.http("GET", &format!("/v1/scans/{id}/report?format=text"), b"");
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&text).contains("verdict"),
        "{id}: the text rendering is stored too"
    );
}

fn all_findings(daemon: &Daemon) -> Vec<Value> {
    let (_, reply) = daemon.json("GET", "/v1/findings?source=scan&limit=500", &Value::Null);
    reply["findings"].as_array().unwrap().clone()
}

#[test]
fn sigkill_at_random_points_loses_no_finished_scan_and_serves_no_half_written_one() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = kill_test_artifacts(dir.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    // What the API last said of each scan.
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let (mut interrupted, mut done) = (0, 0);
    for round in 0..10 {
        let daemon = Daemon::start(dir.path());
        // Whatever the API said before the kill holds after the restart.
        let findings = all_findings(&daemon);
        for (id, before) in &seen {
            let (_, now) = daemon.json("GET", &format!("/v1/scans/{id}"), &Value::Null);
            match before["status"].as_str().unwrap() {
                "done" => {
                    assert_eq!(now["status"], "done", "round {round}: {id} was done: {now}");
                    assert_eq!(now["verdict"], before["verdict"]);
                    assert_whole(&daemon, id, &now, &findings);
                }
                "running" => assert!(
                    now["status"] == "interrupted" || now["status"] == "done",
                    "round {round}: {id} was running: {now}"
                ),
                "interrupted" => assert_eq!(now["status"], "interrupted", "{id}"),
                // Queued ones come back queued, or have run since.
                _ => assert_ne!(now["status"], Value::Null, "{id} vanished"),
            }
            if now["status"] == "interrupted" {
                assert_eq!(now["verdict"], "error", "{now}");
                assert_eq!(now["exit_code"], 2, "{now}");
            }
        }
        for _ in 0..3 {
            let path = &artifacts[rng.below(artifacts.len() as u64) as usize];
            let id = daemon.submit(path);
            seen.insert(id, json!({ "status": "queued" }));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        for (id, record) in seen.iter_mut() {
            let (_, now) = daemon.json("GET", &format!("/v1/scans/{id}"), &Value::Null);
            *record = now;
        }
        kill_hard(daemon);
    }
    // The last restart: every scan ends, each whole or interrupted.
    let daemon = Daemon::start(dir.path());
    for id in seen.keys() {
        let record = daemon.wait(id);
        match record["status"].as_str().unwrap() {
            "done" => done += 1,
            _ => interrupted += 1,
        }
    }
    let findings = all_findings(&daemon);
    for id in seen.keys() {
        let (_, record) = daemon.json("GET", &format!("/v1/scans/{id}"), &Value::Null);
        if record["status"] == "done" {
            assert_whole(&daemon, id, &record, &findings);
        }
    }
    eprintln!("{done} done, {interrupted} interrupted of {}", seen.len());
    assert!(done > 0, "some scans finished between kills");
    daemon.stop();
    assert_integrity(&dir.path().join("state/monitor.db"));
}

/// SIGKILL: no chance to tidy up.
fn kill_hard(mut daemon: Daemon) {
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
}

fn assert_integrity(db: &Path) {
    let db = rusqlite::Connection::open(db).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// A tmpfs of `mib` MiB mounted at `path` for a test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, mib: u64) -> SmallDisk {
        SmallDisk::mount_with_mode(path, mib, 0o700)
    }

    fn mount_with_mode(path: &Path, mib: u64, mode: u32) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={mib}m,mode={mode:o}").as_str()),
        )
        .expect("mounting a tmpfs");
        SmallDisk(path.to_owned())
    }

    fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.0).unwrap();
        stat.blocks_available() * stat.fragment_size()
    }

    /// Writes a file until the disk is full; returns it.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 1 << 16];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A payload that writes far more than its caps into its home and its working directory.
/// Both were host directories (under the daemon's TMPDIR, /tmp/monitor-sandbox-*), where
/// RLIMIT_FSIZE bounds each file but not their number: it could fill the host's disk. Here
/// the daemon's TMPDIR is a small disk of its own, and its free space must hold while the
/// payload runs into the sandbox's own tmpfs limits (ENOSPC in both places).
#[test]
fn a_payload_filling_its_home_and_working_directory_leaves_the_host_disk_alone() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    // Traversable: the job's user must reach what bubblewrap binds from its sandbox dir.
    let disk = SmallDisk::mount_with_mode(&dir.path().join("host-tmp"), 512, 0o755);
    let daemon = Daemon::start_with_env(dir.path(), &[("TMPDIR", &disk.0)]);
    let marker = format!("fill-{}", std::process::id());
    // Up to 2 GiB into each, in files of 256 MiB (under RLIMIT_FSIZE). (exec's top-level names
    // are locals, which a function does not see: it imports its own.)
    let hostile = pickle_exec(
        dir.path(),
        "fill.pkl",
        &format!(
            "import os\n\
             def fill(d):\n\
             \x20   import os\n\
             \x20   chunk = b'x' * (16 << 20)\n\
             \x20   try:\n\
             \x20       for n in range(8):\n\
             \x20           with open(os.path.join(d, '{marker}-%d' % n), 'wb') as f:\n\
             \x20               for _ in range(16):\n\
             \x20                   f.write(chunk)\n\
             \x20   except OSError as e:\n\
             \x20       return e.errno\n\
             \x20   return 0\n\
             home, cwd = fill(os.environ['HOME']), fill(os.getcwd())\n\
             os._exit(28 if home == cwd == 28 else 1 if home != 28 else 2)\n"
        ),
    );
    let before = disk.free_bytes();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (record, lowest) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut lowest = before;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                lowest = lowest.min(disk.free_bytes());
                std::thread::sleep(Duration::from_millis(20));
            }
            lowest
        });
        let id = daemon.submit(&hostile);
        let record = daemon.wait(&id);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (record, sampler.join().unwrap())
    });
    let report = &record["report"];
    assert_eq!(
        report["loader"]["exit_code"], 28,
        "1: the home, 2: the working directory took more than its cap: {record}"
    );
    assert_ne!(record["verdict"], "clean", "{record}");
    assert!(
        !report["errors"].as_array().unwrap().is_empty(),
        "an error says why: {record}"
    );
    let used = before.saturating_sub(lowest);
    eprintln!(
        "the host disk lost {} KiB at most during the scan",
        used >> 10
    );
    assert!(
        used < 32 << 20,
        "the payload wrote {used} bytes to the host disk"
    );
    // Nothing left behind, and the daemon goes on serving.
    let left: Vec<_> = walk(&disk.0)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&marker))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk.free_bytes() != before {
        assert!(Instant::now() < deadline, "the sandbox's directory stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let evil = pickle(dir.path(), "evil.pkl", "cposix\nsystem\n(Vid\ntR.");
    let next = daemon.submit(&evil);
    assert_eq!(daemon.wait(&next)["verdict"], "malicious");
    daemon.stop();
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn a_full_state_directory_refuses_scans_clearly_and_recovers_uncorrupted() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let disk = SmallDisk::mount(&state, 32);
    std::fs::write(dir.path().join("extra-config.toml"), "min_free_mib = 4\n").unwrap();
    let evil = pickle(dir.path(), "evil.pkl", "cposix\nsystem\n(Vid\ntR.");
    let slow_busy = pickle_exec(
        dir.path(),
        "slow.pkl",
        "import time; time.sleep(3); [open('/dev/null').close() for i in range(3000)]",
    );
    let daemon = Daemon::start(dir.path());
    let first = daemon.submit(&evil);
    assert_eq!(daemon.wait(&first)["verdict"], "malicious");

    // Full while a scan runs: its report cannot be written, and it is never served as done.
    let lost = daemon.submit(&slow_busy);
    daemon.poll(&format!("/v1/scans/{lost}"), 60, |r| {
        r["status"] == "running"
    });
    let filler = disk.fill();
    let record = daemon.poll(&format!("/v1/scans/{lost}"), 60, |r| {
        r.get("phase").is_none()
    });
    assert_eq!(
        record["status"], "running",
        "not stored, not done: {record}"
    );

    // Full: a new scan is refused with a reason that names the place.
    let (status, reply) = daemon.json("POST", "/v1/scans", &json!({ "path": evil }));
    assert_eq!(status, 507, "{reply}");
    assert_eq!(reply["error"]["code"], "disk_full");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains(state.to_str().unwrap()), "{message}");
    let (status, reply) = daemon.http(
        "POST",
        "/v1/scans/upload?name=x.pkl",
        b"cposix\nsystem\n(Vid\ntR.",
    );
    assert_eq!(status, 507, "{}", String::from_utf8_lossy(&reply));
    // Still serving what it has.
    let (status, record) = daemon.json("GET", &format!("/v1/scans/{first}"), &Value::Null);
    assert_eq!(status, 200);
    assert_eq!(record["report"]["verdict"], "malicious");
    let (_, metrics) = daemon.http("GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("monitor_store_errors_total "))
        .expect("monitor_store_errors_total")
        .parse()
        .unwrap();
    assert!(refused >= 2, "{metrics}");

    // Space again: the lost scan ends as an error, new scans run, nothing is corrupt.
    std::fs::remove_file(filler).unwrap();
    let record = daemon.wait(&lost);
    assert_eq!(record["status"], "interrupted", "{record}");
    assert_eq!(record["verdict"], "error");
    let again = daemon.submit(&evil);
    let record = daemon.wait(&again);
    assert_eq!(record["verdict"], "malicious", "{record}");
    daemon.stop();
    assert_integrity(&state.join("monitor.db"));
    drop(disk);
}

#[test]
fn a_broken_loader_environment_makes_every_scan_an_error_that_says_how_to_fix_it() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    // An environment whose Python is cut short (a half-finished install).
    let env = dir.path().join("loader");
    std::fs::create_dir_all(env.join("bin")).unwrap();
    let python = std::fs::read("/usr/bin/python3").unwrap();
    let broken = env.join("bin/python");
    std::fs::write(&broken, &python[..4096]).unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("extra-config.toml"),
        format!("loader_env = {env:?}\n"),
    )
    .unwrap();
    // A pickle whose bytes name nothing the static rules call a threat (a threat seen would
    // win over the error): only its load could tell.
    let evil = pickle(dir.path(), "evil.pkl", "ctime\nsleep\n(I0\ntR.");
    let daemon = Daemon::start(dir.path());
    let record = daemon.wait(&daemon.submit(&evil));
    assert_eq!(record["verdict"], "error", "{record}");
    assert_eq!(record["exit_code"], 2);
    let errors = record["report"]["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["kind"] == "environment"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("cargo xtask loader-env")),
        "{errors:?}"
    );

    // Gone altogether: the status says so, and scans say how to install it.
    std::fs::remove_file(&broken).unwrap();
    let (_, status) = daemon.json("GET", "/v1/status", &Value::Null);
    assert_eq!(status["loader_env"]["present"], false, "{status}");
    let record = daemon.wait(&daemon.submit(&evil));
    assert_eq!(record["exit_code"], 2, "{record}");
    let message = record["report"]["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("cargo xtask loader-env"), "{message}");
    daemon.stop();
}

/// Runs monitord in a mount namespace of its own after `hide` (shell) has changed the view of
/// /sys there; returns its exit status and what it printed.
fn monitord_without(dir: &Path, hide: &str) -> (Option<i32>, String) {
    let config = dir.join("monitord.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nsocket = {:?}\n",
            dir.join("state"),
            dir.join("monitord.sock")
        ),
    )
    .unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{hide}\nexec \"$0\" --config \"$1\""))
        .arg(env!("CARGO_BIN_EXE_monitord"))
        .arg(&config)
        .env("MONITOR_TEST_SCRATCH", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("monitord kept running without what it needs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_btf_or_tracefs_monitord_stops_at_start_saying_what_is_missing() {
    root_required();
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = monitord_without(
        dir.path(),
        "mount -t tmpfs -o size=1m,ro none /sys/kernel/btf",
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("/sys/kernel/btf/vmlinux") && stderr.contains("CONFIG_DEBUG_INFO_BTF"),
        "{stderr}"
    );

    // /sys/kernel without tracing (and read-only, so it cannot be mounted), BTF kept.
    let (code, stderr) = monitord_without(
        dir.path(),
        "keep=\"$MONITOR_TEST_SCRATCH/btf\"; mkdir -p \"$keep\"\n\
         mount --bind /sys/kernel/btf \"$keep\"\n\
         mount -t tmpfs -o size=1m none /sys/kernel\n\
         mkdir /sys/kernel/btf\n\
         mount --move \"$keep\" /sys/kernel/btf\n\
         mount -o remount,ro /sys/kernel",
    );
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("tracefs") && stderr.contains("mount -t tracefs"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("monitord.sock").exists(),
        "it never served"
    );
}

#[test]
fn a_scan_cannot_trace_signal_or_call_the_daemon_and_is_found_trying() {
    root_required();
    // Under target/, which the sandbox sees (read-only), and traversable: only the socket's own
    // mode (0660, root) keeps the job out.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = Daemon::start(dir.path());
    let pid = daemon.child.id();
    let hostile = pickle_exec(
        dir.path(),
        "hostile.pkl",
        &format!(
            "import ctypes, os, socket\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             libc.ptrace(16, {pid}, 0, 0)\n\
             try:\n\
             \x20   os.kill({pid}, 9)\n\
             except OSError:\n\
             \x20   pass\n\
             s = socket.socket(socket.AF_UNIX)\n\
             try:\n\
             \x20   s.connect({socket:?})\n\
             \x20   s.sendall(b'POST /v1/rules/reload HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
             except OSError:\n\
             \x20   pass\n",
            socket = daemon.socket.display().to_string(),
        ),
    );
    let id = daemon.submit(&hostile);
    let record = daemon.wait(&id);
    assert!(
        daemon.child.try_wait().is_ok_and(|exit| exit.is_none()),
        "the daemon lives"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0"), "nobody traces it");
    assert_eq!(record["verdict"], "malicious", "{record}");
    let found: Vec<&str> = record["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for rule in [
        "priv.ptrace",
        "evasion.signal-outside",
        "evasion.monitor-socket",
    ] {
        assert!(found.contains(&rule), "{rule} not in {found:?}");
    }
    // Each attempt failed, as the kernel said.
    let (_, events) = daemon.json(
        "GET",
        &format!("/v1/scans/{id}/events?limit=20000"),
        &Value::Null,
    );
    for syscall in ["ptrace", "kill", "connect"] {
        let failed = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["syscall"] == syscall && e["ret"].as_i64().is_some_and(|r| r < 0));
        assert!(failed, "{syscall} failed");
    }
    daemon.stop();
}

/// The maps of process `pid` named `name`, as another root process on the host opens them.
fn maps_of(pid: u32, name: &str) -> Vec<aya::maps::MapData> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path()).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter(|&id| {
            aya::maps::MapInfo::from_id(id).is_ok_and(|info| info.name_as_str() == Some(name))
        })
        .map(|id| aya::maps::MapData::from_id(id).unwrap())
        .collect()
}

fn metric(daemon: &Daemon, name: &str) -> u64 {
    let (_, metrics) = daemon.http("GET", "/metrics", b"");
    String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn probes_changed_from_outside_are_found_restored_and_make_scans_not_clean() {
    root_required();
    use monitor_common::{event::CaptureSpec, syscall::by_name};
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let pid = daemon.child.id();
    let (_, status) = daemon.json("GET", "/v1/status", &Value::Null);
    assert_eq!(status["probes"]["tampering"], json!([]), "{status}");

    // Turn the capture of execve off, as `bpftool map update` would.
    let [capture] = <[_; 1]>::try_from(maps_of(pid, "CAPTURE")).expect("one CAPTURE map");
    let mut capture: aya::maps::Array<_, CaptureSpec> =
        aya::maps::Array::try_from(aya::maps::Map::from_map_data(capture).unwrap()).unwrap();
    let execve = by_name("execve").unwrap().nr;
    let original = capture.get(&execve, 0).unwrap();
    assert_ne!(original.enabled, 0);
    capture.set(execve, CaptureSpec::default(), 0).unwrap();
    let status = daemon.poll("/v1/status", 30, |s| {
        s["probes"]["checks_that_found_tampering"].as_u64() >= Some(1)
    });
    assert!(
        capture.get(&execve, 0).unwrap() == original,
        "restored: {status}"
    );
    assert!(metric(&daemon, "monitor_probes_tampering_found_total") >= 1);

    // Take a running scan's cgroup out of WATCHED: its trace has a hole, so it is not clean.
    let slow = pickle_exec(
        dir.path(),
        "slow.pkl",
        "import time, os; time.sleep(2); os.system('id')",
    );
    let id = daemon.submit(&slow);
    daemon.poll(&format!("/v1/scans/{id}"), 60, |r| r["phase"] == "load");
    let [watched] = <[_; 1]>::try_from(maps_of(pid, "WATCHED")).expect("one WATCHED map");
    let mut watched: aya::maps::HashMap<_, u64, monitor_common::event::Watch> =
        aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(watched).unwrap()).unwrap();
    let cgroups: Vec<u64> = watched.keys().map(Result::unwrap).collect();
    assert!(!cgroups.is_empty(), "the scan's cgroup is watched");
    for cgroup in &cgroups {
        watched.remove(cgroup).unwrap();
    }
    let record = daemon.wait(&id);
    assert_ne!(record["verdict"], "clean", "{record}");
    let errors = record["report"]["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["kind"] == "incomplete_trace"
            && e["message"].as_str().unwrap().contains("from outside")),
        "{errors:?}"
    );
    assert_eq!(record["report"]["trace"]["complete"], false);
    assert!(metric(&daemon, "monitor_probes_tampering_found_total") >= 2);
    daemon.stop();
}
