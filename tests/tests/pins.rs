//! Cold embedded scans (`monitorctl scan --local`, `monitorctl run`) on probes kept pinned in
//! bpffs: reused by the next scan, never shared by two at once, reset between holders, and
//! refused when the pins are not this binary's or not root's alone, and their hooks handed
//! over attached from one scan to the next. Each test pins under its own root
//! (`MONITOR_PROBE_PINS`) and removes it at the end; they run the release `monitorctl`
//! (`cargo build --release --bins` first). Scans detach their hooks at once
//! (`MONITOR_PROBE_LINGER=0`) unless the test is about the hand-over.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use monitor_common::event::KillPolicy;
use monitor_engine::probes::pins;

const MONITORCTL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/monitorctl");
const MALICIOUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/malicious.pkl");
/// `pickle.dumps({"a": 1}, protocol=4)`.
const PLAIN_PICKLE: &[u8] = b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";

const REUSED: &str = "probes: reused pinned programs";
const PINNED: &str = "probes: loaded and pinned for the next scan";
const FRESH: &str = "probes: loaded ";

/// A pin root of the test's own, removed at the end.
struct Pins {
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Pins {
    fn new(name: &str) -> Self {
        assert!(
            Path::new(MONITORCTL).is_file(),
            "{MONITORCTL} is missing: cargo build --release --bins"
        );
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/monitor-test-{name}-{}",
            std::process::id()
        ));
        let _ = pins::unpin(&root);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain.pkl"), PLAIN_PICKLE).unwrap();
        Pins { root, dir }
    }

    fn benign(&self) -> PathBuf {
        self.dir.path().join("plain.pkl")
    }

    fn monitorctl(&self) -> Command {
        let mut cmd = Command::new(MONITORCTL);
        cmd.env(pins::ROOT_ENV, &self.root)
            .env(pins::LINGER_ENV, "0")
            .env("RUST_LOG", "monitor_engine=info")
            .stdin(Stdio::null());
        cmd
    }

    /// A cold `monitorctl scan --local` of `path`: exit code, report, log.
    fn scan(&self, path: &Path) -> Scan {
        self.scan_lingering(path, 0)
    }

    /// The same, its hooks kept attached `linger` seconds after it for the next scan.
    fn scan_lingering(&self, path: &Path, linger: u32) -> Scan {
        let out = self
            .monitorctl()
            .env(pins::LINGER_ENV, linger.to_string())
            .args(["scan", "--local", "--format", "json"])
            .arg(path)
            .output()
            .unwrap();
        Scan::from(out)
    }

    /// Waits until no scan holds a slot and no link attaches a pinned program (a scan's probes
    /// are released by a background child after it ended, which takes seconds).
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let slots = pins::list(&self.root).unwrap();
            if slots.iter().all(|s| !s.in_use && s.attached == 0) {
                return;
            }
            assert!(Instant::now() < deadline, "pins still in use: {slots:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The directory of `slot` of the one key pinned.
    fn slot(&self, slot: usize) -> PathBuf {
        let keys: Vec<_> = std::fs::read_dir(&self.root)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(keys.len(), 1, "one key: {keys:?}");
        keys[0].join(slot.to_string())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = pins::unpin(&self.root);
    }
}

struct Scan {
    code: i32,
    report: serde_json::Value,
    log: String,
}

impl From<Output> for Scan {
    fn from(out: Output) -> Self {
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON report ({e}); log:\n{log}"));
        Scan {
            code: out.status.code().unwrap_or(-1),
            report,
            log,
        }
    }
}

impl Scan {
    fn rules(&self) -> Vec<&str> {
        self.report["findings"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["rule"].as_str()).collect())
            .unwrap_or_default()
    }

    fn assert_malicious(&self) {
        assert_eq!(self.code, 1, "{:#}\n{}", self.report, self.log);
        assert!(
            self.rules().contains(&"exec.program"),
            "{:?}\n{}",
            self.rules(),
            self.log
        );
    }

    fn assert_clean(&self) {
        assert_eq!(
            (self.code, self.rules()),
            (0, vec![]),
            "{:#}\n{}",
            self.report,
            self.log
        );
    }
}

#[test]
fn a_second_cold_scan_reuses_the_pinned_probes_and_still_sees_the_payload() {
    let pins = Pins::new("reuse");
    // Another binary's set, left from before: removed once this one's is pinned.
    let old = pins.root.join("0123456789abcdef0123456789abcdef");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(old.join("0"))
        .unwrap();
    let first = pins.scan(&pins.benign());
    first.assert_clean();
    assert!(first.log.contains(PINNED), "{}", first.log);
    assert!(!old.exists(), "{}", first.log);
    pins.wait_idle();

    let second = pins.scan(Path::new(MALICIOUS));
    assert!(second.log.contains(REUSED), "{}", second.log);
    second.assert_malicious();
    // Pinned programs, not links: nothing stays attached once the scan's probes are released.
    pins.wait_idle();
    let slots = pins::list(&pins.root).unwrap();
    assert!(slots.iter().all(|s| s.attached == 0), "{slots:?}");
}

/// Back to back: the first scan's hooks stay attached after it, pinned in its slot, and the
/// next scan takes those very links over (and sees the payload through them) instead of
/// attaching its own, which would wait seconds for the first one's detach.
#[test]
fn a_scan_right_after_another_takes_over_its_attached_hooks() {
    let pins = Pins::new("handover");
    let first = pins.scan_lingering(&pins.benign(), 30);
    first.assert_clean();
    assert!(first.log.contains(PINNED), "{}", first.log);
    // Its probes are released by a background child: it pins the links and lets the slot go.
    let deadline = Instant::now() + Duration::from_secs(20);
    let attached = loop {
        let slots = pins::list(&pins.root).unwrap();
        if let Some(s) = slots
            .iter()
            .find(|s| s.slot == "0" && !s.in_use && s.attached > 0)
        {
            break s.attached;
        }
        assert!(
            Instant::now() < deadline,
            "the first scan's hooks were not kept attached for the next: {slots:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    let second = pins.scan_lingering(Path::new(MALICIOUS), 30);
    second.assert_malicious();
    let reused = second
        .log
        .lines()
        .find(|l| l.contains(REUSED))
        .unwrap_or_else(|| panic!("not reused: {}", second.log));
    // The first scan's slot, and every link attaching its programs taken over.
    assert!(
        reused.contains(&format!("/0 adopted={attached}")),
        "not the {attached} links of slot 0: {reused}"
    );
    // Nothing attached anew: the slot's programs are still attached by as many links.
    let slots = pins::list(&pins.root).unwrap();
    let slot0 = slots.iter().find(|s| s.slot == "0").unwrap();
    assert_eq!(slot0.attached, attached, "{slots:?}");
}

#[test]
fn two_cold_scans_at_once_never_share_a_pinned_set() {
    let pins = Pins::new("pair");
    for round in 0..2 {
        let spawn = |path: &Path| {
            pins.monitorctl()
                .args(["scan", "--local", "--format", "json"])
                .arg(path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (bad, good) = (spawn(Path::new(MALICIOUS)), spawn(&pins.benign()));
        let bad = Scan::from(bad.wait_with_output().unwrap());
        let good = Scan::from(good.wait_with_output().unwrap());
        bad.assert_malicious();
        good.assert_clean();
        let dir = |s: &Scan| {
            s.log
                .lines()
                .find(|l| l.contains(REUSED) || l.contains(PINNED))
                .and_then(|l| l.split("dir=").nth(1))
                .map(str::to_owned)
        };
        if let (Some(a), Some(b)) = (dir(&bad), dir(&good)) {
            assert_ne!(a, b, "round {round}: one set for two scans");
        }
        pins.wait_idle();
    }
}

/// What a killed holder leaves behind: its watched cgroup (a process in it still running), the
/// records the ring got after its reader died, a kill policy of a watch. On a reuse that did
/// not reset them, the next job (watch 1 again) would get the old process's events and have
/// its own command killed by the old policy.
#[test]
fn a_killed_holders_state_never_reaches_the_next_job() {
    let pins = Pins::new("stale");
    let first = pins.scan(&pins.benign());
    first.assert_clean();
    pins.wait_idle();

    // A run that execs a program in a loop, killed while its probes watch it: the loop goes
    // on in the watched cgroup, recorded into the ring until the kernel detaches the links.
    let pidfile = pins.dir.path().join("loop.pid");
    let mut holder = pins
        .monitorctl()
        .args(["run", "--", "sh", "-c"])
        .arg(format!(
            "echo $$ > {}; while :; do /bin/true; done",
            pidfile.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pidfile.exists() {
        assert!(
            Instant::now() < deadline,
            "the looping command never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let orphan: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _cleanup = KillOnDrop(orphan);
    // A watch's kill policy, as a killed daemon-less watch would leave it: execs of watch 1
    // are killed in the kernel.
    let mut policy = KillPolicy::default();
    for name in ["execve", "execveat"] {
        policy.kill_at(monitor_common::syscall::by_name(name).unwrap().nr);
    }
    let map = aya::maps::MapData::from_pin(pins.slot(0).join("map_KILL_POLICIES")).unwrap();
    let mut kill: aya::maps::HashMap<_, u64, KillPolicy> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).unwrap();
    kill.insert(1, policy, 0).unwrap();
    pins.wait_idle();
    assert!(
        unsafe { libc::kill(orphan, 0) } == 0,
        "the looping command still runs"
    );

    let out = pins
        .monitorctl()
        .args(["run", "--json", "--print-trace", "--", "/bin/true"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(REUSED), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {log}"));
    assert_eq!(summary["exit_code"], 0, "the command was not killed: {log}");
    let foreign: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["pid"].as_i64() == Some(orphan.into()) || l["ppid"].as_i64() == Some(orphan.into())
        })
        .collect();
    assert!(foreign.is_empty(), "the old job's events: {foreign:?}");
    assert_eq!(summary["processes"], 1, "{summary}");
    assert_eq!(out.status.code(), Some(0), "{log}");

    // And a scan after it: clean although the loop still execs.
    pins.wait_idle();
    let scan = pins.scan(&pins.benign());
    assert!(scan.log.contains(REUSED), "{}", scan.log);
    scan.assert_clean();
    pins.wait_idle();
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", self.0)).ok();
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        // The killed run's job cgroup, empty once the loop is gone.
        if let Some(path) = cgroup.as_deref().and_then(|c| c.trim().strip_prefix("0::")) {
            let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn pins_that_are_not_this_binarys_or_not_roots_alone_are_refused() {
    let pins = Pins::new("tamper");
    let first = pins.scan(&pins.benign());
    assert!(first.log.contains(PINNED), "{}", first.log);
    pins.wait_idle();
    let slot = pins.slot(0);

    // A program missing: refused, loaded fresh, and pinned again for the next scan.
    std::fs::remove_file(slot.join("prog_sched_process_exit")).unwrap();
    let missing = pins.scan(Path::new(MALICIOUS));
    assert!(
        missing
            .log
            .contains("program sched_process_exit is not pinned"),
        "{}",
        missing.log
    );
    assert!(missing.log.contains(PINNED), "{}", missing.log);
    missing.assert_malicious();
    pins.wait_idle();

    // Two maps' pins swapped: the watches would go where the programs do not look.
    let (a, b, tmp) = (
        slot.join("map_WATCHED"),
        slot.join("map_WATCHED_TASKS"),
        slot.join("map_SWAP"),
    );
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let swapped = pins.scan(Path::new(MALICIOUS));
    assert!(
        swapped.log.contains("the pin of map WATCHED holds map"),
        "{}",
        swapped.log
    );
    swapped.assert_malicious();
    pins.wait_idle();

    // A slot others may write: refused, loaded fresh, left alone.
    std::fs::set_permissions(&slot, std::fs::Permissions::from_mode(0o777)).unwrap();
    let open = pins.scan(Path::new(MALICIOUS));
    assert!(open.log.contains("open to others"), "{}", open.log);
    assert!(
        open.log.contains(FRESH) && !open.log.contains(REUSED),
        "{}",
        open.log
    );
    open.assert_malicious();
    std::fs::set_permissions(&slot, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A key directory of another user's.
    let key = slot.parent().unwrap().to_owned();
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let foreign = pins.scan(&pins.benign());
    assert!(
        foreign.log.contains("owned by uid 65534"),
        "{}",
        foreign.log
    );
    assert!(!foreign.log.contains(REUSED), "{}", foreign.log);
    foreign.assert_clean();
    std::os::unix::fs::chown(&key, Some(0), None).unwrap();
    pins.wait_idle();

    // Put right, the set is reused again.
    let again = pins.scan(&pins.benign());
    assert!(again.log.contains(REUSED), "{}", again.log);
    again.assert_clean();
    pins.wait_idle();
}
