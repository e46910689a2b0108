//! Live watches on the real kernel: a cgroup's processes, a process tree, and processes that
//! discovery finds loading a model; reported as they act, killed by policy.

use std::{
    net::TcpListener,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use monitor_common::event::Counter;
use monitor_engine::cgroup::{self, JobCgroup};
use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_rules::{Finding, Phase, RuleSet, Severity};
use monitor_tests::is_root;
use monitor_watch::Validate as _;
use monitor_watch::{
    self as watch, Kill, Release, Selector, WatchOutput, WatchRequest, WatchSpec, WatchSummary,
    content::Content,
};

/// What a watch reported, in order.
#[derive(Default)]
struct Seen {
    /// (rule, pid, phase) of each finding.
    findings: Vec<(String, u32, Phase)>,
    kills: Vec<Kill>,
    /// pids of every event.
    pids: Vec<u32>,
    /// Each process discovery found, and what its open could load.
    discovered: Vec<(u32, Content)>,
    released: Vec<Release>,
    /// Every finding, whole.
    all: Vec<Finding>,
    /// The watch as it changed by itself (learning), and whether it had learned.
    changed: Vec<(WatchSpec, bool)>,
}

/// Runs the watch `request` while `act` runs, and a moment after.
async fn watch_while(
    router: &Router,
    request: WatchRequest,
    act: impl std::future::Future<Output = ()>,
) -> (Arc<Mutex<Seen>>, WatchSummary) {
    watch_until(router, request, act, true).await
}

/// Runs the watch `request` while `act` runs, then stops it, or (`stop` false) waits for it
/// to end by itself.
async fn watch_until(
    router: &Router,
    request: WatchRequest,
    act: impl std::future::Future<Output = ()>,
    stop: bool,
) -> (Arc<Mutex<Seen>>, WatchSummary) {
    let spec = request
        .validate(&cgroup::cgroup2_mount().unwrap())
        .expect("a valid watch");
    run_spec(router, spec, act, stop).await
}

/// [`watch_until`] for a spec made by hand (discovery has no request form).
async fn run_spec(
    router: &Router,
    spec: WatchSpec,
    act: impl std::future::Future<Output = ()>,
    stop: bool,
) -> (Arc<Mutex<Seen>>, WatchSummary) {
    assert!(
        is_root(),
        "watches load eBPF programs: run the tests as root"
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink_seen = seen.clone();
    let rules = Arc::new(RuleSet::defaults());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watching = watch::run(
        &spec,
        router,
        move || rules.clone(),
        async move {
            let _ = stop_rx.await;
        },
        move |out| {
            let mut seen = sink_seen.lock().unwrap();
            match out {
                WatchOutput::Event(e) => seen.pids.push(e.pid),
                WatchOutput::Discovered { event, content, .. } => {
                    seen.discovered.push((event.pid, content.clone()))
                }
                WatchOutput::Released(r) => seen.released.push(r.clone()),
                WatchOutput::Gap { pid, .. } => panic!("a gap in pid {pid}'s trace"),
                WatchOutput::Finding(f) => {
                    seen.findings.push((f.rule.clone(), f.event.pid, f.phase));
                    seen.all.push(f.clone());
                }
                WatchOutput::Kill(k) => seen.kills.push(k.clone()),
                WatchOutput::Changed { spec, learned } => {
                    seen.changed.push((spec.clone(), learned))
                }
                WatchOutput::Lost(_) => {}
            }
        },
    );
    let driver = async move {
        act.await;
        if !stop {
            // Kept until the watch ends: dropping it would stop the watch.
            return Some(stop_tx);
        }
        // The last records of the act reach the watch before it stops.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_tx.send(());
        None
    };
    let watching = tokio::time::timeout(Duration::from_secs(30), watching);
    let (summary, _) = tokio::join!(watching, driver);
    (
        seen,
        summary
            .expect("the watch ended in time")
            .expect("the watch ran"),
    )
}

fn router() -> Router {
    Router::start(Probes::load(&ProbeConfig::default()).expect("loading the probes")).unwrap()
}

/// Starts `script` with bash inside `cgroup` (joined before exec).
fn spawn_in(cgroup: &JobCgroup, script: &str) -> std::process::Child {
    let procs = cgroup.procs_file().unwrap();
    let mut cmd = Command::new("/bin/bash");
    cmd.args(["-c", script]);
    // SAFETY: join_in_child only calls write(2).
    unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
    cmd.spawn().unwrap()
}

async fn wait(mut child: std::process::Child) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

fn honeytoken(dir: &Path) -> String {
    let aws = dir.join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    let path = aws.join("credentials");
    std::fs::write(&path, "[default]\naws_access_key_id = AKIAMONITORTEST\n").unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "current_thread")]
async fn a_watched_cgroup_is_reported_live_in_order_and_others_are_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let token = honeytoken(dir.path());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let watched = JobCgroup::create(&format!("test-watch-{}", std::process::id())).unwrap();
    let other = JobCgroup::create(&format!("test-other-{}", std::process::id())).unwrap();
    let request = WatchRequest {
        cgroup: Some(watched.path().to_owned()),
        ..WatchRequest::default()
    };
    // Same acts in both: exec, connect to a closed loopback port, read the honeytoken.
    let script =
        format!("/bin/true; exec 3<>/dev/tcp/127.0.0.1/{port} 2>/dev/null; cat {token} >/dev/null");
    let script = format!("bash -c '{script}'");
    let router = router();
    let (other_pid, watched_pid) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let (o, w) = (other_pid.clone(), watched_pid.clone());
    let (seen, summary) = watch_while(&router, request, async {
        let unwatched = spawn_in(&other, &script);
        *o.lock().unwrap() = unwatched.id();
        let child = spawn_in(&watched, &script);
        *w.lock().unwrap() = child.id();
        assert!(wait(child).await.success());
        assert!(wait(unwatched).await.success());
    })
    .await;
    let seen = seen.lock().unwrap();
    assert!(summary.complete, "{summary:?}");
    let rules: Vec<&str> = seen.findings.iter().map(|(r, _, _)| r.as_str()).collect();
    let at = |rule: &str| {
        rules
            .iter()
            .position(|r| *r == rule)
            .unwrap_or_else(|| panic!("no {rule} finding in {rules:?}"))
    };
    assert!(
        at("exec.program") < at("net.connect") && at("net.connect") < at("cred.read"),
        "reported in the order they happened: {rules:?}"
    );
    assert!(
        seen.findings
            .iter()
            .all(|(_, _, phase)| *phase == Phase::Run),
        "a server's acts are in the run phase"
    );
    let other_pid = *other_pid.lock().unwrap();
    assert!(
        !seen.pids.contains(&other_pid),
        "nothing of the other cgroup"
    );
    assert!(seen.pids.contains(&*watched_pid.lock().unwrap()));
    assert!(seen.kills.is_empty(), "a report-only watch kills nothing");
}

#[tokio::test(flavor = "current_thread")]
async fn kill_on_high_stops_an_exec_before_the_program_runs_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let cgroup = JobCgroup::create(&format!("test-kill-{}", std::process::id())).unwrap();
    let request = WatchRequest {
        cgroup: Some(cgroup.path().to_owned()),
        kill_at: Some(Severity::High),
        ..WatchRequest::default()
    };
    let router = router();
    let status = Arc::new(Mutex::new(None));
    let st = status.clone();
    let script = format!("exec /usr/bin/touch {}", marker.display());
    let (seen, summary) = watch_while(&router, request, async {
        let child = spawn_in(&cgroup, &script);
        *st.lock().unwrap() = Some(wait(child).await);
    })
    .await;
    let status = status.lock().unwrap().unwrap();
    assert_eq!(status.signal(), Some(9), "killed: {status:?}");
    assert!(!marker.exists(), "the program never ran");
    let seen = seen.lock().unwrap();
    let kill = seen
        .kills
        .iter()
        .find(|k| k.by == "kernel")
        .expect("the kernel's kill is reported");
    assert_eq!(kill.syscall, Some("execve"));
    assert!(summary.kills >= 1);
}

#[tokio::test(flavor = "current_thread")]
async fn kill_on_high_in_user_space_kills_the_cgroup_at_the_finding() {
    let dir = tempfile::tempdir().unwrap();
    let token = honeytoken(dir.path());
    let go = dir.path().join("go");
    let cgroup = JobCgroup::create(&format!("test-ukill-{}", std::process::id())).unwrap();
    // Started before the watch; then reads the honeytoken and spins, with built-ins only.
    let child = spawn_in(
        &cgroup,
        &format!(
            "while [ ! -e {go} ]; do :; done; read -r x < {token}; \
             i=0; while [ $i -lt 20000000 ]; do i=$((i+1)); done",
            go = go.display()
        ),
    );
    let request = WatchRequest {
        cgroup: Some(cgroup.path().to_owned()),
        kill_at: Some(Severity::High),
        kill_in_kernel: Some(Vec::new()),
        ..WatchRequest::default()
    };
    let router = router();
    let status = Arc::new(Mutex::new(None));
    let st = status.clone();
    let (seen, _) = watch_while(&router, request, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&go, "").unwrap();
        *st.lock().unwrap() = Some(wait(child).await);
    })
    .await;
    let status = status.lock().unwrap().unwrap();
    assert_eq!(status.signal(), Some(9), "killed: {status:?}");
    let seen = seen.lock().unwrap();
    let kill = seen.kills.first().expect("the kill is reported");
    assert_eq!(
        (kill.by, kill.rule.as_deref()),
        ("policy", Some("cred.read"))
    );
    assert_eq!(kill.cgroup.as_deref(), Some(cgroup.path()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_pid_watch_follows_the_processes_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let token = honeytoken(dir.path());
    let go = dir.path().join("go");
    // Unwatched at its start; it waits until the watch stands, then reads in a child.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "while [ ! -e {go} ]; do sleep 0.05; done; cat {token} >/dev/null",
            go = go.display()
        ),
    ]);
    let child = cmd.spawn().unwrap();
    let root = child.id();
    let request = WatchRequest {
        pid: Some(root),
        ..WatchRequest::default()
    };
    let router = router();
    let act = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&go, "").unwrap();
        assert!(wait(child).await.success());
    };
    let (seen, summary) = watch_until(&router, request, act, false).await;
    let seen = seen.lock().unwrap();
    let (_, reader, _) = seen
        .findings
        .iter()
        .find(|(rule, _, _)| rule == "cred.read")
        .expect("the child's read of the honeytoken");
    assert_ne!(
        *reader, root,
        "read by the child it started after the watch began"
    );
    assert!(seen.pids.contains(&root));
    assert!(summary.complete);
    assert_eq!(
        summary.ended,
        monitor_watch::runner::Ended::Exited,
        "a pid watch ends with its last process"
    );
}

/// The load phase of a watched server starts at an open that could load a model: a Python
/// process that reads only its site `.pth` files (text) and a `.bin` that is an ELF, then
/// writes a file, writes in the run phase; after opening a pickle that imports, the same
/// write is on load.
#[tokio::test(flavor = "current_thread")]
async fn the_load_phase_starts_at_a_model_not_at_a_file_named_like_one() {
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("firmware.bin");
    std::fs::write(&blob, b"\x7fELF\x02\x01\x01\x00").unwrap();
    let model = dir.path().join("model.pkl");
    // An OrderedDict: it imports collections, so a loader could run code from such a file.
    std::fs::write(&model, b"ccollections\nOrderedDict\n)R.").unwrap();
    let cgroup = JobCgroup::create(&format!("test-phase-{}", std::process::id())).unwrap();
    let request = WatchRequest {
        cgroup: Some(cgroup.path().to_owned()),
        ..WatchRequest::default()
    };
    let write = |name: &str| {
        format!(
            "open('{}', 'w').write('x')",
            dir.path().join(name).display()
        )
    };
    let script = format!(
        // Alive a while after: a file read again once its process is gone is unknown, which
        // counts as a model.
        "python3 -c \"import pickle, time; open('{blob}', 'rb').read(); {before}; \
         pickle.load(open('{model}', 'rb')); {after}; time.sleep(1)\"",
        blob = blob.display(),
        model = model.display(),
        before = write("before.txt"),
        after = write("after.txt"),
    );
    let router = router();
    let (seen, _) = watch_while(&router, request, async {
        assert!(wait(spawn_in(&cgroup, &script)).await.success());
    })
    .await;
    let seen = seen.lock().unwrap();
    let on_load: Vec<&(String, u32, Phase)> = seen
        .findings
        .iter()
        .filter(|(rule, _, _)| rule == "file.write-on-load")
        .collect();
    assert_eq!(
        on_load.len(),
        1,
        "only the write after the pickle is on load: {:?}",
        seen.findings
    );
}

/// The kernel does not even read the path of an open that reads nothing (for writing only): a
/// shell that writes a `.pkl` is never watched; the `cat` it starts to read one is.
#[tokio::test(flavor = "current_thread")]
async fn discovery_passes_over_opens_for_writing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("in.pkl");
    std::fs::write(&model, b"cos\nsystem\n(S'true'\ntR.").unwrap();
    let script = format!(
        "echo x > {out}; sleep 0.5; cat {model} > /dev/null",
        out = dir.path().join("out.pkl").display(),
        model = model.display()
    );
    let mut shell = Command::new("/bin/bash");
    shell.args(["-c", &script]);
    let (seen, _, shell) = discover_while(&router(), shell).await;
    let seen = seen.lock().unwrap();
    assert!(
        !seen.pids.contains(&shell),
        "the shell that only wrote a .pkl was never watched"
    );
    assert!(
        seen.discovered
            .iter()
            // Unknown when the cat was gone before its file could be read again.
            .any(|(pid, content)| *pid != shell && content.could_load()),
        "the cat that read one was: {:?}",
        seen.discovered
    );
}

/// Discovery with the default suffixes, as monitord's `[discovery]` defaults run it.
fn discovery_spec() -> WatchSpec {
    WatchSpec {
        name: Some("discovery".into()),
        selector: Selector::Discovery {
            suffixes: watch::artifact::DEFAULT_SUFFIXES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            window_secs: 60,
            release_without_model: true,
        },
        policy: Default::default(),
        load_window_ms: 10_000,
        load_grace_ms: 1_000,
        learning: None,
    }
}

/// Runs `cmd` to success under discovery, which must find it: nobody watches the process
/// (no watched cgroup holds it, no pid watch names it). What the watch saw, its summary, and
/// the process's pid.
async fn discover_while(
    router: &Router,
    mut cmd: Command,
) -> (Arc<Mutex<Seen>>, WatchSummary, u32) {
    let pid = Arc::new(Mutex::new(0));
    let p = pid.clone();
    let act = async move {
        let child = cmd.spawn().unwrap();
        *p.lock().unwrap() = child.id();
        assert!(wait(child).await.success());
    };
    let (seen, summary) = run_spec(router, discovery_spec(), act, true).await;
    let pid = *pid.lock().unwrap();
    (seen, summary, pid)
}

#[tokio::test(flavor = "current_thread")]
async fn discovery_lets_go_of_a_process_that_opened_no_model_and_finds_it_again_at_a_load() {
    let dir = tempfile::tempdir().unwrap();
    // A model's name, an executable's bytes: no loader runs code from it.
    let blob = dir.path().join("firmware.bin");
    std::fs::write(&blob, b"\x7fELF\x02\x01\x01\x00 and no model").unwrap();
    let model = dir.path().join("downloaded-model.pkl");
    std::fs::write(&model, b"cposix\nsystem\n(Vtrue\ntR.").unwrap();
    let (blob_path, model_path) = (blob.display().to_string(), model.display().to_string());
    // Reads the blob, waits past its release (the watch looks once a second), then loads.
    let mut python = Command::new("/usr/bin/python3");
    python.args([
        "-c",
        "import pickle, sys, time\n\
         open(sys.argv[1], 'rb').read()\n\
         time.sleep(3)\n\
         pickle.load(open(sys.argv[2], 'rb'))",
        &blob_path,
        &model_path,
    ]);
    let (seen, summary, python) = discover_while(&router(), python).await;
    let seen = seen.lock().unwrap();
    let found: Vec<&Content> = seen
        .discovered
        .iter()
        .filter(|(pid, _)| *pid == python)
        .map(|(_, content)| content)
        .collect();
    // Found at its first model-named open (the blob, or a site .pth file Python reads at its
    // start, which is text), let go of unannounced, and found again at the pickle: had the
    // blob's open counted as a model, it would have stayed watched, and the pickle's open
    // found nothing.
    assert!(
        // (Unknown, which counts as a model, when python was gone before its file was read.)
        matches!(found.as_slice(), [content] if content.could_load()),
        "announced once, at the pickle: {found:?}"
    );
    let released: Vec<&Release> = seen.released.iter().filter(|r| r.pid == python).collect();
    assert!(!released.is_empty(), "let go of before the pickle");
    assert!(
        released
            .iter()
            .flat_map(|r| &r.opened)
            .any(|o| o.path == blob_path
                && matches!(&o.content, Content::NoModel(why) if why.contains("ELF"))),
        "the blob is named among what it opened: {released:?}"
    );
    let exec = seen
        .findings
        .iter()
        .find(|(rule, _, _)| rule == "exec.program")
        .expect("the payload's exec is found after the release");
    assert_eq!(exec.2, Phase::Load, "while loading the model it opened");
    assert!(summary.released >= 1 && summary.gaps == 0, "{summary:?}");
    assert!(summary.complete, "{summary:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn discovery_catches_a_python_process_unpickling_a_malicious_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("downloaded-model.pkl");
    // pickle protocol 0: os.system("true") at load.
    std::fs::write(&model, b"cposix\nsystem\n(Vtrue\ntR.").unwrap();
    let router = router();
    let mut python = Command::new("/usr/bin/python3");
    python
        .args([
            "-c",
            "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
        ])
        .arg(&model);
    let (seen, summary, python) = discover_while(&router, python).await;
    let seen = seen.lock().unwrap();
    assert!(
        seen.discovered.iter().any(|(pid, _)| *pid == python),
        "the python process was discovered: {:?}",
        seen.discovered
    );
    let exec = seen
        .findings
        .iter()
        .find(|(rule, _, _)| rule == "exec.program")
        .expect("the payload's exec is found");
    assert_eq!(exec.2, Phase::Load, "while loading the model it opened");
    assert!(summary.complete);
    assert!(router.counters().unwrap().get(Counter::Discovered) >= 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_cgroup_made_under_a_watched_one_is_watched_before_anything_enters_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = honeytoken(dir.path());
    let parent = JobCgroup::create(&format!("test-tree-{}", std::process::id())).unwrap();
    let request = WatchRequest {
        cgroup: Some(parent.path().to_owned()),
        ..WatchRequest::default()
    };
    let router = router();
    let child_cgroup = parent.path().join("worker");
    let reader = Arc::new(Mutex::new(0));
    let r = reader.clone();
    let before = router.counters().unwrap().get(Counter::Followed);
    let (seen, summary) = watch_while(&router, request, async {
        // Made after the watch stood, and used at once: a process that lives a few
        // milliseconds is gone long before user space's next look at the tree.
        std::fs::create_dir(&child_cgroup).unwrap();
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(child_cgroup.join("cgroup.procs"))
            .unwrap();
        let mut cmd = Command::new("/bin/bash");
        cmd.args(["-c", &format!("read -r x < {token}")]);
        // SAFETY: join_in_child only calls write(2).
        unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
        let child = cmd.spawn().unwrap();
        *r.lock().unwrap() = child.id();
        assert!(wait(child).await.success());
    })
    .await;
    let followed = router.counters().unwrap().get(Counter::Followed) - before;
    std::fs::remove_dir(&child_cgroup).unwrap();
    let seen = seen.lock().unwrap();
    let reader = *reader.lock().unwrap();
    assert!(
        seen.findings
            .iter()
            .any(|(rule, pid, _)| rule == "cred.read" && *pid == reader),
        "the new cgroup's process is seen: {:?}",
        seen.findings
    );
    assert!(followed >= 1, "the kernel added the cgroup itself");
    assert!(summary.complete);
}

#[tokio::test(flavor = "current_thread")]
async fn an_executable_watch_takes_running_and_new_processes_of_that_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let token = honeytoken(dir.path());
    let go = dir.path().join("go");
    // A "model server": its own copy of bash, so no other process runs this file.
    let server = dir.path().join("model-server");
    std::fs::copy("/bin/bash", &server).unwrap();
    let router = router();
    let read_token = format!("read -r x < {token}");
    // Running before the watch: found in /proc. It reads once the watch stands.
    let running = Command::new(&server)
        .args([
            "-c",
            &format!(
                "while [ ! -e {go} ]; do sleep 0.05; done; {read_token}",
                go = go.display()
            ),
        ])
        .spawn()
        .unwrap();
    let running_pid = running.id();
    let request = WatchRequest {
        exe: Some(server.clone()),
        ..WatchRequest::default()
    };
    let pids = Arc::new(Mutex::new((0, 0)));
    let p = pids.clone();
    let (seen, summary) = watch_while(&router, request, async {
        std::fs::write(&go, "").unwrap();
        assert!(wait(running).await.success());
        // Started after: the kernel matches it at its exec.
        let started = Command::new(&server)
            .args(["-c", &read_token])
            .spawn()
            .unwrap();
        // The same acts by another program: not this watch's.
        let other = Command::new("/bin/bash")
            .args(["-c", &read_token])
            .spawn()
            .unwrap();
        *p.lock().unwrap() = (started.id(), other.id());
        assert!(wait(started).await.success());
        assert!(wait(other).await.success());
    })
    .await;
    let (started, other) = *pids.lock().unwrap();
    let seen = seen.lock().unwrap();
    let readers: Vec<u32> = seen
        .findings
        .iter()
        .filter(|(rule, _, _)| rule == "cred.read")
        .map(|&(_, pid, _)| pid)
        .collect();
    assert!(
        readers.contains(&running_pid),
        "the process running before: {readers:?}"
    );
    assert!(
        readers.contains(&started),
        "the process started after: {readers:?}"
    );
    assert!(!seen.pids.contains(&other), "another program's process");
    assert!(summary.complete);
}

/// A syscall the kernel killed is the finding of the rule it would have matched, marked
/// blocked, and the watch's policy fires on it: the script that tried the exec is killed
/// before its next step (on the old code it was an `exec.attempt` at low, and the script went
/// on).
#[tokio::test(flavor = "current_thread")]
async fn an_exec_killed_in_the_kernel_is_a_blocked_finding_and_the_policy_kills_the_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("next-step");
    let cgroup = JobCgroup::create(&format!("test-blocked-{}", std::process::id())).unwrap();
    let request = WatchRequest {
        cgroup: Some(cgroup.path().to_owned()),
        kill_at: Some(Severity::High),
        ..WatchRequest::default()
    };
    // The script's child executes a program; the script's next step comes a second later.
    let script = format!(
        "import os, time\nos.system('/usr/bin/true')\ntime.sleep(1)\nopen({:?}, 'w').write('x')\n",
        marker.display().to_string()
    );
    let router = router();
    let status = Arc::new(Mutex::new(None));
    let st = status.clone();
    let (seen, _) = watch_while(&router, request, async {
        let child = spawn_in(&cgroup, &format!("exec /usr/bin/python3 -c \"{script}\""));
        *st.lock().unwrap() = Some(wait(child).await);
    })
    .await;
    let status = status.lock().unwrap().unwrap();
    let seen = seen.lock().unwrap();
    let blocked: Vec<&Finding> = seen.all.iter().filter(|f| f.blocked).collect();
    assert!(
        matches!(blocked.as_slice(), [f] if f.rule == "exec.program" && f.severity == Severity::High),
        "the killed exec is a high, blocked exec.program: {:?}",
        seen.findings
    );
    assert!(
        !seen
            .findings
            .iter()
            .any(|(rule, _, _)| rule == "exec.attempt"),
        "not an attempt: {:?}",
        seen.findings
    );
    let by_policy = seen
        .kills
        .iter()
        .find(|k| k.by == "policy")
        .expect("the policy fired on the blocked act");
    assert_eq!(by_policy.rule.as_deref(), Some("exec.program"));
    assert_eq!(by_policy.cgroup.as_deref(), Some(cgroup.path()));
    assert_eq!(
        status.signal(),
        Some(9),
        "the script was killed: {status:?}"
    );
    assert!(!marker.exists(), "the script never got to its next step");
}

/// A cgroup watch `learn_secs` long, its request otherwise `request`.
fn learning(cgroup: &JobCgroup, learn_secs: u64, request: WatchRequest) -> WatchRequest {
    WatchRequest {
        cgroup: Some(cgroup.path().to_owned()),
        learn_secs: Some(learn_secs),
        ..request
    }
}

/// Waits for `path` to appear, checking every 50 ms.
fn wait_for_file(path: &Path) -> String {
    format!("while [ ! -e {} ]; do sleep 0.05; done", path.display())
}

/// While learning, a service's acts are learned and not reported, but for those that are
/// never learned (a write to a persistence file), which are reported at once and named in the
/// profile. After the window, the learned acts raise nothing and anything else fires at its
/// rule's severity.
#[tokio::test(flavor = "current_thread")]
async fn a_learned_profile_silences_the_service_and_never_learns_a_critical_act() {
    let dir = tempfile::tempdir().unwrap();
    let token = honeytoken(dir.path());
    let go = dir.path().join("go");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cgroup = JobCgroup::create(&format!("test-learn-{}", std::process::id())).unwrap();
    let acts = format!(
        "cat {token} >/dev/null; /usr/bin/true; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; \
         echo x >> {dir}/.bashrc",
        dir = dir.path().display()
    );
    let script = format!(
        "{acts}; {wait}; {acts}; /usr/bin/id >/dev/null",
        wait = wait_for_file(&go)
    );
    let learn_secs = 2;
    let request = learning(&cgroup, learn_secs, WatchRequest::default());
    let router = router();
    let (seen, _) = watch_while(&router, request, async {
        let child = spawn_in(&cgroup, &script);
        // Past the window (ended at the watch's next look, once a second).
        tokio::time::sleep(Duration::from_millis(learn_secs * 1000 + 1600)).await;
        std::fs::write(&go, "").unwrap();
        assert!(wait(child).await.success());
    })
    .await;
    let seen = seen.lock().unwrap();
    let (learned, _) = seen
        .changed
        .iter()
        .find(|(_, learned)| *learned)
        .expect("the window ended and its profile became the policy");
    assert!(learned.learning.is_none());
    let file = learned.policy.file();
    let profile = file.profile.as_ref().expect("the profile's summary");
    assert!(
        profile.refused("persist.write"),
        "the profile names the critical act it refused: {profile:?}"
    );
    let learned_rules: Vec<&str> = file.exceptions.iter().map(|x| x.rule.as_str()).collect();
    for rule in ["exec.program", "cred.read", "net.connect"] {
        assert!(
            learned_rules.contains(&rule),
            "{rule} learned: {learned_rules:?}"
        );
    }
    assert!(
        !learned_rules.contains(&"persist.write"),
        "{learned_rules:?}"
    );
    let rules: Vec<&str> = seen.findings.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(
        rules.iter().filter(|r| **r == "persist.write").count(),
        2,
        "reported while learning and after: {rules:?}"
    );
    let exec_findings: Vec<&Finding> = seen
        .all
        .iter()
        .filter(|f| f.rule == "exec.program")
        .collect();
    assert!(
        matches!(exec_findings.as_slice(), [f] if f.process.as_ref().and_then(|p| p.exe.as_deref()) == Some("/usr/bin/id")),
        "only the program it never ran while learning: {exec_findings:?}"
    );
    for quiet in ["cred.read", "net.connect"] {
        assert!(!rules.contains(&quiet), "{quiet} was learned: {rules:?}");
    }
}

/// A learned service under `--kill-at high` (execs killed in the kernel): the programs it ran
/// while learning still run; another is killed in the kernel before it runs, and the policy
/// kills the service's cgroup.
#[tokio::test(flavor = "current_thread")]
async fn a_learned_service_runs_its_programs_and_the_kernel_kills_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let ran = dir.path().join("learned-ran");
    let payload = dir.path().join("payload-ran");
    let after = dir.path().join("after");
    let cgroup = JobCgroup::create(&format!("test-learn-kill-{}", std::process::id())).unwrap();
    // `touch` is learned; `mkdir` never was.
    let script = format!(
        "rm -f {ran}; /usr/bin/touch {ran}; {wait}; rm -f {ran}; /usr/bin/touch {ran}; \
         /usr/bin/mkdir {payload}; sleep 1; touch {after}",
        ran = ran.display(),
        wait = wait_for_file(&go),
        payload = payload.display(),
        after = after.display(),
    );
    let learn_secs = 2;
    let request = learning(
        &cgroup,
        learn_secs,
        WatchRequest {
            kill_at: Some(Severity::High),
            ..WatchRequest::default()
        },
    );
    let router = router();
    let status = Arc::new(Mutex::new(None));
    let st = status.clone();
    let (seen, _) = watch_while(&router, request, async {
        let child = spawn_in(&cgroup, &script);
        tokio::time::sleep(Duration::from_millis(learn_secs * 1000 + 1600)).await;
        std::fs::write(&go, "").unwrap();
        *st.lock().unwrap() = Some(wait(child).await);
    })
    .await;
    let status = status.lock().unwrap().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        ran.exists(),
        "the learned program ran again, under the kill policy"
    );
    assert!(!payload.exists(), "the other program never ran");
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!after.exists(), "the service was killed with it");
    let kernel = seen
        .kills
        .iter()
        .find(|k| k.by == "kernel")
        .expect("killed in the kernel");
    assert_eq!(kernel.syscall, Some("execve"));
    assert!(
        seen.all
            .iter()
            .any(|f| f.blocked && f.rule == "exec.program"),
        "{:?}",
        seen.findings
    );
}
