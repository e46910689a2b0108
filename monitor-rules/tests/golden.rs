//! Golden tests of the pure core, without root: records the kernel programs really wrote,
//! kept as fixtures (tests/fixtures/golden/*.records), go through the decoder, the tracer's
//! entry/exit pairing and the default rules; what comes out must be what
//! tests/fixtures/golden/*.events and *.findings say, line for line.
//!
//! The fixtures are the raw ring-buffer bytes of a small shell script run in a watched cgroup
//! (see [`SCRIPT`]). To capture them again (root: it loads the probes), then rewrite the
//! expected output from them, and review the diff:
//!
//! ```text
//! cargo test --release -p monitor-rules --test golden -- --ignored capture_fixtures
//! MONITOR_UPDATE_GOLDEN=1 cargo test --release -p monitor-rules --test golden
//! ```
//!
//! Besides the line-for-line comparison, each test asserts what the script is known to have
//! done (a relative open of a key after `cd`, a symlink to it, an exec, a forked child), so
//! that a wrong expected file cannot make a broken decoder pass.
//!
//! The records carry x86_64 syscall numbers (they were captured there): the tests run on x86_64.
#![cfg(target_arch = "x86_64")]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use monitor_engine::decode::{Decoder, Record, recording};
use monitor_engine::trace::{Event, Tracer, What};
use monitor_rules::judge::{Judge, Plain, Setting};
use monitor_rules::{Finding, Phase, RuleSet};

/// What the captured job ran, under `bash -c`, in a fresh temporary directory (`$1`). Each
/// line is an act the pure core must get right; nothing leaves the directory but reads and a
/// refused connect to loopback.
const SCRIPT: &str = r#"
set -u
cd "$1"
mkdir -p .ssh sub
printf 'not a key\n' > .ssh/id_rsa
cd sub
cat ../.ssh/id_rsa > /dev/null
ln -s "$1/.ssh/id_rsa" notes.txt
cat notes.txt > /dev/null
cat /etc/passwd > /dev/null
id > /dev/null
(exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null || true
/nonexistent-program 2>/dev/null || true
exit 3
"#;

/// The fixture `name`: its records, and where its expected output lives.
struct Fixture {
    records: Vec<Vec<u8>>,
    events: PathBuf,
    findings: PathBuf,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn fixture(name: &str) -> Fixture {
    let dir = fixture_dir();
    Fixture {
        records: recording::read(&dir.join(format!("{name}.records"))).unwrap(),
        events: dir.join(format!("{name}.events")),
        findings: dir.join(format!("{name}.findings")),
    }
}

/// Compares `actual` (lines) with the expected file, or rewrites it when
/// `MONITOR_UPDATE_GOLDEN` is set.
fn check_golden(expected: &Path, actual: &[String]) {
    let text = actual.iter().map(|l| format!("{l}\n")).collect::<String>();
    if std::env::var_os("MONITOR_UPDATE_GOLDEN").is_some() {
        fs::write(expected, &text).unwrap();
        return;
    }
    let want = fs::read_to_string(expected).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (MONITOR_UPDATE_GOLDEN=1 writes it)",
            expected.display()
        )
    });
    for (i, (want, got)) in want.lines().zip(actual).enumerate() {
        assert_eq!(
            want,
            got,
            "{}:{}: differs (MONITOR_UPDATE_GOLDEN=1 rewrites it; review the diff)",
            expected.display(),
            i + 1
        );
    }
    assert_eq!(
        want.lines().count(),
        actual.len(),
        "{}: as many lines expected as produced",
        expected.display()
    );
}

/// Decodes every record of `fixture`; none may fail.
fn decode_all(fixture: &Fixture) -> Vec<Record> {
    let decoder = Decoder::default();
    fixture
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            decoder
                .decode(r)
                .unwrap_or_else(|e| panic!("record {i} does not decode: {e}"))
        })
        .collect()
}

/// The events the tracer makes of `records`, flushed at the end as a job's are.
fn pair(records: Vec<Record>) -> (Vec<Event>, Tracer) {
    let mut tracer = Tracer::default();
    let mut events = Vec::new();
    for r in records {
        tracer.push(r, &mut |e| events.push(e));
    }
    tracer.flush(&mut |e| events.push(e));
    (events, tracer)
}

fn json_lines<T: serde::Serialize>(items: &[T]) -> Vec<String> {
    items
        .iter()
        .map(|i| serde_json::to_string(i).unwrap())
        .collect()
}

fn syscalls<'e>(events: &'e [Event], name: &str) -> Vec<&'e monitor_engine::trace::SyscallEvent> {
    events
        .iter()
        .filter_map(|e| match &e.what {
            What::Syscall(sc) if sc.name == name => Some(sc),
            _ => None,
        })
        .collect()
}

#[test]
fn records_decode_as_the_kernel_wrote_them() {
    let fixture = fixture("shell");
    let records = decode_all(&fixture);
    assert!(records.len() > 50, "a real capture: {}", records.len());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        let kind = match r {
            Record::Call(_) => "call",
            Record::Enter(_) => "enter",
            Record::Exit(_) => "exit",
            Record::Fork(_) => "fork",
            Record::Exec(_) => "exec",
            Record::ProcessExit(_) => "process_exit",
        };
        *kinds.entry(kind).or_default() += 1;
    }
    // bash forks for each command and executes mkdir, cat, ln, id.
    assert!(kinds["fork"] >= 6, "{kinds:?}");
    assert!(kinds["exec"] >= 6, "{kinds:?}");
    assert!(kinds["enter"] >= kinds["exit"], "{kinds:?}");
    let execs: Vec<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Exec(e) => Some(e.filename.as_str()),
            _ => None,
        })
        .collect();
    for program in ["bash", "mkdir", "cat", "ln", "id"] {
        assert!(
            execs.iter().any(|f| f.ends_with(&format!("/{program}"))),
            "{program} in {execs:?}"
        );
    }
    // Every record of the job is from its cgroup, under one watch.
    let h = records[0].header();
    assert!(
        records
            .iter()
            .all(|r| r.header().cgroup_id == h.cgroup_id && r.header().watch_id == h.watch_id)
    );
}

/// A syscall that returned is one record, written at its exit: the arguments the kernel read
/// at entry (the path) and the result together. Entries stay apart only where the kernel
/// must write them at once: an exec (its exit is in the new image), a call that does not
/// return, memory to read again at exit.
#[test]
fn a_call_that_returned_is_one_record_with_its_path_and_its_result() {
    let records = decode_all(&fixture("shell"));
    let key = records
        .iter()
        .find_map(|r| match r {
            Record::Call(c)
                if c.enter.syscall.name == "openat"
                    && c.enter.args.get(1).and_then(|a| a.as_str()) == Some("../.ssh/id_rsa") =>
            {
                Some(c)
            }
            _ => None,
        })
        .expect("the key's open, as one record");
    assert!(key.ret >= 0, "opened: {key:?}");
    assert!(key.file.is_some(), "with the file the kernel opened");
    assert!(key.exit_ns >= key.enter.header.time_ns);
    let apart = |name: &'static str| {
        records.iter().filter_map(move |r| match r {
            Record::Enter(e) if e.syscall.name == name => Some(&e.header.flags),
            _ => None,
        })
    };
    // Only an open whose path was not paged in at entry: read again at its exit.
    assert!(
        apart("openat").all(|f| f.read_error || f.recaptured),
        "no other open is written as two records"
    );
    assert!(
        apart("execve").count() >= 6,
        "execs are: their exit is in the new image"
    );
}

#[test]
fn entries_pair_with_their_exits_into_the_golden_events() {
    let fixture = fixture("shell");
    let (events, tracer) = pair(decode_all(&fixture));
    // What the script did, whatever the expected file says.
    assert_eq!(tracer.unpaired_exits(), 0);
    let opens = syscalls(&events, "openat");
    let key_opened = opens.iter().any(|sc| {
        sc.arg("filename").and_then(|v| v.as_str()) == Some("../.ssh/id_rsa")
            && sc.resolved.iter().any(|p| p.ends_with("/.ssh/id_rsa"))
            && sc.ret.is_some_and(|r| r >= 0)
    });
    assert!(key_opened, "the key, relative to the new working directory");
    let through_link = opens.iter().any(|sc| {
        sc.arg("filename").and_then(|v| v.as_str()) == Some("notes.txt")
            && sc.resolved.iter().any(|p| p.ends_with("/.ssh/id_rsa"))
    });
    assert!(through_link, "the key, through the symlink the job made");
    let connects = syscalls(&events, "connect");
    assert!(
        connects
            .iter()
            .any(|sc| sc.ret.is_some_and(|r| r < 0) && sc.errno.is_some()),
        "a refused connect, with its errno"
    );
    let exec_failed = syscalls(&events, "execve")
        .into_iter()
        .any(|sc| sc.errno.as_deref() == Some("ENOENT"));
    assert!(exec_failed, "the missing program's execve failed");
    let exits: Vec<Option<i32>> = events
        .iter()
        .filter_map(|e| match e.what {
            What::Exit { exit_code, .. } => Some(exit_code),
            _ => None,
        })
        .collect();
    assert!(exits.contains(&Some(3)), "bash's exit code: {exits:?}");
    check_golden(&fixture.events, &json_lines(&events));
}

/// A finding as the golden file keeps it: what fired, on what, and in which process.
fn finding_line(f: &Finding) -> String {
    let what = match &f.event.what {
        What::Syscall(sc) => sc.name,
        _ => "-",
    };
    let exe = f.process.as_ref().and_then(|p| p.exe.as_deref());
    serde_json::json!({
        "rule": f.rule,
        "severity": f.severity,
        "phase": f.phase,
        "pid": f.event.pid,
        "syscall": what,
        "time_ns": f.event.time_ns,
        "exe": exe,
    })
    .to_string()
}

#[test]
fn the_default_rules_judge_the_capture_as_the_golden_findings_say() {
    let fixture = fixture("shell");
    let rules = RuleSet::defaults();
    let mut judge = Judge::new(Tracer::default());
    let mut found = Vec::new();
    // As a live watch judges (the process table's view of each process), without /proc.
    let setting = Setting {
        process_view: true,
        ..Setting::in_phase(Phase::Run)
    };
    let mut scope = Plain::new(setting, |f: &Finding| found.push(f.clone()));
    judge.feed(&mut decode_all(&fixture), &rules, &mut scope);
    judge.finish(&rules, &mut scope);
    let fired = |rule: &str| found.iter().filter(|f| f.rule == rule).count();
    // Opened three times: written by bash, read by cat relative to the working directory and
    // through the symlink; each finding names the process that did it.
    assert_eq!(
        fired("cred.read"),
        3,
        "{:#?}",
        found.iter().map(|f| &f.rule).collect::<Vec<_>>()
    );
    assert!(found.iter().filter(|f| f.rule == "cred.read").all(|f| {
        f.process
            .as_ref()
            .and_then(|p| p.exe.as_deref())
            .is_some_and(|e| e.ends_with("/cat") || e.ends_with("/bash"))
    }));
    assert!(fired("file.account-read") >= 1);
    assert!(fired("exec.failed") >= 1);
    assert!(fired("net.connect") + fired("net.socket") >= 1);
    assert_eq!(judge.events(), pair(decode_all(&fixture)).0.len() as u64);
    check_golden(
        &fixture.findings,
        &found.iter().map(finding_line).collect::<Vec<_>>(),
    );
}

/// Captures the fixtures again: runs [`SCRIPT`] in a watched cgroup with nobody reading, and
/// keeps every record's raw bytes. Root only; run by hand (see the module's documentation).
#[test]
#[ignore = "root: loads the probes; rewrites tests/fixtures/golden"]
fn capture_fixtures() {
    use monitor_common::event::Watch;
    use monitor_engine::cgroup::{self, JobCgroup};
    use monitor_engine::probes::{ProbeConfig, Probes, Target};
    use std::os::unix::process::CommandExt as _;

    let mut probes = Probes::load(&ProbeConfig::default()).expect("loading the probes");
    let mut ring = probes.take_events().expect("the ring buffer");
    let job = JobCgroup::create(&format!("golden-{}", std::process::id())).unwrap();
    let watch = Watch {
        id: job.id(),
        ..Watch::default()
    };
    probes
        .watch(&watch, &[Target::Cgroup(job.id())])
        .expect("watching the cgroup");
    let dir = tempfile::tempdir().unwrap();
    let procs = job.procs_file().unwrap();
    let mut cmd = std::process::Command::new("/bin/bash");
    // No locale to look for: a few opens per program, not dozens.
    cmd.args(["-c", SCRIPT, "golden"])
        .arg(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C");
    // SAFETY: join_in_child only calls write(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
    let status = cmd.status().expect("running the script");
    assert_eq!(status.code(), Some(3), "the script ran to its end");
    while job.is_populated().unwrap() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut raw = Vec::new();
    while let Some(item) = ring.next() {
        raw.push(item.to_vec());
    }
    let counters = probes.unwatch(job.id()).expect("unwatching");
    assert_eq!(counters.dropped, 0, "a complete capture");
    assert_eq!(counters.events, raw.len() as u64, "every record read");
    fs::create_dir_all(fixture_dir()).unwrap();
    recording::write(&fixture_dir().join("shell.records"), &raw).unwrap();
    eprintln!("{} records captured", raw.len());
}

/// The decoder never panics: on arbitrary bytes, on real records cut short or with bytes
/// changed, and on real entry records whose lengths and counts lie. What decodes goes on
/// through the tracer and the rules, which must not panic either.
mod fuzz {
    use std::mem::offset_of;

    use monitor_common::event::{EventHeader, SyscallEnter};
    use proptest::prelude::*;

    use super::*;

    fn real_records() -> &'static [Vec<u8>] {
        static RECORDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        RECORDS.get_or_init(|| fixture("shell").records)
    }

    /// Decodes `records` and judges what decodes: true when every one decoded.
    fn decode_and_judge(records: &[Vec<u8>]) -> bool {
        let decoder = Decoder::default();
        let mut decoded: Vec<Record> = records
            .iter()
            .filter_map(|r| decoder.decode(r).ok())
            .collect();
        let all = decoded.len() == records.len();
        let rules = RuleSet::defaults();
        let mut judge = Judge::new(Tracer::default());
        let setting = Setting {
            process_view: true,
            ..Setting::in_phase(Phase::Run)
        };
        let mut scope = Plain::new(setting, |_: &Finding| {});
        judge.feed(&mut decoded, &rules, &mut scope);
        judge.finish(&rules, &mut scope);
        all
    }

    /// A real record, by index.
    fn real() -> impl Strategy<Value = Vec<u8>> {
        (0..real_records().len()).prop_map(|i| real_records()[i].clone())
    }

    /// A real syscall record (the variable-size kinds: an entry, or a whole call).
    fn real_entry() -> impl Strategy<Value = Vec<u8>> {
        let entries: Vec<Vec<u8>> = real_records()
            .iter()
            .filter(|r| matches!(u16::from_ne_bytes([r[0], r[1]]), 1 | 6))
            .cloned()
            .collect();
        (0..entries.len()).prop_map(move |i| entries[i].clone())
    }

    fn put(record: &mut [u8], off: usize, bytes: &[u8]) {
        if let Some(slot) = record.get_mut(off..off + bytes.len()) {
            slot.copy_from_slice(bytes);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            decode_and_judge(&[bytes]);
        }

        #[test]
        fn arbitrary_bytes_of_each_kind(kind in 0u16..8, mut bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            put(&mut bytes, offset_of!(EventHeader, kind), &kind.to_ne_bytes());
            decode_and_judge(&[bytes]);
        }

        #[test]
        fn real_records_cut_or_changed(
            mut record in real(),
            cut in any::<proptest::sample::Index>(),
            changes in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..8),
        ) {
            for (at, byte) in changes {
                let i = at.index(record.len());
                record[i] = byte;
            }
            let keep = cut.index(record.len() + 1);
            record.truncate(keep);
            decode_and_judge(&[record]);
        }

        #[test]
        fn real_entries_whose_lengths_lie(
            mut record in real_entry(),
            nr in prop_oneof![Just(None), (0u32..600).prop_map(Some)],
            data_len in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
            str_len in proptest::collection::vec(any::<u16>(), 3),
            blob_len in any::<u16>(),
            argv_len in any::<u16>(),
            argc in any::<u16>(),
        ) {
            if let Some(nr) = nr {
                put(&mut record, offset_of!(SyscallEnter, nr), &nr.to_ne_bytes());
            }
            if let Some(len) = data_len {
                put(&mut record, offset_of!(SyscallEnter, data_len), &len.to_ne_bytes());
            }
            for (i, len) in str_len.iter().enumerate() {
                put(&mut record, offset_of!(SyscallEnter, str_len) + 2 * i, &len.to_ne_bytes());
            }
            put(&mut record, offset_of!(SyscallEnter, blob_len), &blob_len.to_ne_bytes());
            put(&mut record, offset_of!(SyscallEnter, argv_len), &argv_len.to_ne_bytes());
            put(&mut record, offset_of!(SyscallEnter, argc), &argc.to_ne_bytes());
            decode_and_judge(&[record]);
        }

    }

    proptest! {
        // Each case judges a whole capture.
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A whole capture with records changed, dropped or repeated: pairing and the process
        /// table see exits without entries, entries without exits, forks of unknown parents.
        #[test]
        fn a_capture_changed(
            drops in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
            repeats in proptest::collection::vec(any::<proptest::sample::Index>(), 0..20),
            changes in proptest::collection::vec((any::<proptest::sample::Index>(), any::<proptest::sample::Index>(), any::<u8>()), 0..20),
        ) {
            let mut records = real_records().to_vec();
            for (r, at, byte) in changes {
                let record = &mut records[r.index(real_records().len())];
                let i = at.index(record.len());
                record[i] = byte;
            }
            for at in repeats {
                let r = records[at.index(records.len())].clone();
                records.insert(at.index(records.len()), r);
            }
            for at in drops {
                records.remove(at.index(records.len()));
            }
            decode_and_judge(&records);
        }
    }

    #[test]
    fn every_real_record_decodes() {
        assert!(decode_and_judge(real_records()));
    }
}

/// The capture decoded, paired and judged `MONITOR_REPLAYS` times (default 50), each time
/// with a fresh tracer: a fixed workload for a profiler or an instruction counter, e.g.
/// `valgrind --tool=callgrind target/release/deps/golden-* --ignored replay_for_profiling`.
#[test]
#[ignore = "a workload for profiling, not a check"]
fn replay_for_profiling() {
    // `MONITOR_REPLAY_RECORDS=FILE`: another capture, e.g. the open loop the benchmark keeps
    // with `MONITOR_BENCH_CAPTURE=FILE cargo xtask bench probes`.
    let (records, shell) = match std::env::var_os("MONITOR_REPLAY_RECORDS") {
        Some(file) => (recording::read(Path::new(&file)).unwrap(), false),
        None => (fixture("shell").records, true),
    };
    // `MONITOR_REPLAY_RULES=FILE`: rules and exceptions added to the defaults, judged as a
    // live watch judges (with the process's view and a watch's name): a policy's cost, e.g.
    // the bench's rule and exception on every open.
    let mut rules = RuleSet::defaults();
    let watch = std::env::var_os("MONITOR_REPLAY_RULES").map(|file| {
        rules.add_file(Path::new(&file)).unwrap();
        "model-server".to_owned()
    });
    let setting = Setting {
        process_view: watch.is_some(),
        ..Setting::in_phase(Phase::Run)
    };
    let decoder = Decoder::default();
    let replays: usize = std::env::var("MONITOR_REPLAYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let mut findings = 0;
    for _ in 0..replays {
        let mut judge = Judge::new(Tracer::default()).for_watch(watch.clone());
        let mut scope = Plain::new(setting.clone(), |_: &Finding| findings += 1);
        let mut records: Vec<Record> = records.iter().map(|r| decoder.decode(r).unwrap()).collect();
        judge.feed(&mut records, &rules, &mut scope);
        judge.finish(&rules, &mut scope);
    }
    // The shell capture runs programs: a judge that found nothing there did not judge.
    assert!(!shell || findings > 0);
    if let Ok(most) = std::env::var("MONITOR_REPLAY_FINDINGS_AT_MOST") {
        assert!(findings <= most.parse().unwrap(), "{findings} findings");
    }
}
