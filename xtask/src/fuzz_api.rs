//! `cargo xtask fuzz-api`: schemathesis (pinned in fuzz/api/requirements.txt, in its own
//! environment) generates requests from docs/api.yaml, valid and not, and sends them to a real
//! monitord on its real socket. The run fails on a 5xx, a reply the spec does not describe, a
//! request that hangs, or a daemon that is not serving at the end.
//!
//! schemathesis speaks TCP only: a loopback proxy here passes each connection on to the
//! daemon's Unix socket, byte for byte.

use std::{
    io,
    net::{Shutdown, TcpListener},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{root, run, venv::PinnedVenv};

const DEFAULT_ENV: &str = "/var/lib/monitor/fuzz-api-env";
/// Test cases per operation and phase; with the bound below, about a minute here.
const MAX_EXAMPLES: &str = "60";
/// A run past this is a hang (schemathesis' own per-request timeout is 10 s).
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn env() -> PinnedVenv<'static> {
    PinnedVenv {
        dir: crate::venv::dir_from_env("MONITOR_FUZZ_API_ENV", DEFAULT_ENV),
        requirements: root().join("fuzz/api/requirements.txt"),
        stamp: "fuzz-api-requirements.txt",
        label: "fuzz-api",
    }
}

/// Installs schemathesis when its environment is not current (idempotent).
fn ensure_env() -> Result<PinnedVenv<'static>> {
    let env = env();
    if !env.is_current()? {
        println!(
            "fuzz-api: installing schemathesis into {}",
            env.dir.display()
        );
        env.rebuild(|_| Ok(()))?;
    }
    Ok(env)
}

pub fn run_fuzz() -> Result<()> {
    let env = ensure_env()?;
    let dir = TempDir::new()?;
    let mut daemon = Monitord::start(&dir.0)?;
    let port = proxy(daemon.socket.clone())?;
    let scan_id = daemon.seed_scan(&dir.0)?;

    let started = Instant::now();
    let out = root().join("target/fuzz-api");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut schemathesis = Command::new(env.python());
    schemathesis
        .arg(root().join("fuzz/api/run_schemathesis.py"))
        .arg("--config-file")
        .arg(root().join("fuzz/api/schemathesis.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(root().join("docs/api.yaml"))
        .arg("--url")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--max-examples", MAX_EXAMPLES])
        // Seeded: a failure found in CI is found again by the same command.
        .args(["--seed", "7", "--workers", "2"])
        .arg("--report-dir")
        .arg(&out)
        .args(["--report", "junit"])
        .env("MONITOR_FUZZ_SCAN_ID", &scan_id)
        // Its cache of crashes goes into the working directory: keep it out of the tree.
        .current_dir(&out);
    let mut schemathesis = schemathesis.spawn().context("starting schemathesis")?;
    let status = wait_bounded(&mut schemathesis, RUN_LIMIT)?;
    let alive = daemon.serving();
    daemon.stop();
    if !alive {
        bail!("monitord stopped serving during the fuzzing run");
    }
    match status {
        None => bail!(
            "schemathesis ran past {} s: a request hung",
            RUN_LIMIT.as_secs()
        ),
        Some(s) if !s.success() => bail!("schemathesis found failures ({s}); see above"),
        Some(_) => {
            println!(
                "fuzz-api: no failures in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// A release monitord on a socket and state directory of its own.
struct Monitord {
    child: Child,
    socket: PathBuf,
}

impl Monitord {
    fn start(dir: &Path) -> Result<Monitord> {
        let socket = dir.join("monitord.sock");
        let config = dir.join("monitord.toml");
        // Uploads of random bytes are real scans: room for all of them in the queue, so a
        // 503 is never the fuzzer's own doing.
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nsocket = {socket:?}\nmax_queued_scans = 100000\n\
                 scan_timeout_secs = 30\n",
                dir.join("state")
            ),
        )?;
        let log = std::fs::File::create(dir.join("monitord.log"))?;
        let child = Command::new(root().join("target/release/monitord"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting target/release/monitord")?;
        let mut daemon = Monitord { child, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(&daemon.socket).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "monitord exited at start ({status}); its log: {}",
                    dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("monitord did not open its socket in 60 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }

    /// Scans a benign pickle through the daemon; returns the scan's id.
    fn seed_scan(&self, dir: &Path) -> Result<String> {
        let pickle = dir.join("plain.pkl");
        std::fs::write(&pickle, "(dp0\nVa\np1\nI1\ns.")?;
        let monitorctl = root().join("target/release/monitorctl");
        run(Command::new(&monitorctl)
            .arg("scan")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--no-print-res")
            .arg(&pickle)
            .stdout(Stdio::null()))?;
        let listed = Command::new(&monitorctl)
            .args(["reports", "list", "--limit", "1", "--socket"])
            .arg(&self.socket)
            .output()
            .context("running monitorctl reports list")?;
        // A header line, then `ID  VERDICT  FORMAT  PATH`.
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .with_context(|| format!("no scan listed: {listed:?}"))
    }

    /// Whether it still runs and answers /healthz.
    fn serving(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return false;
        }
        let ask = || -> io::Result<String> {
            use io::{Read as _, Write as _};
            let mut s = UnixStream::connect(&self.socket)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        };
        ask().is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Past the bound, the drop kills it.
        let _ = wait_bounded(&mut self.child, Duration::from_secs(30));
    }
}

impl Drop for Monitord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` at most `limit`; kills it past that (`None`).
fn wait_bounded(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Listens on a loopback port and joins each connection to a new one to `socket`; returns
/// the port. The threads end with the process.
fn proxy(socket: PathBuf) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the loopback proxy")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(daemon) = UnixStream::connect(&socket) else {
                continue;
            };
            let (Ok(client2), Ok(daemon2)) = (client.try_clone(), daemon.try_clone()) else {
                continue;
            };
            thread::spawn(move || pump(client, daemon, |d| d.shutdown(Shutdown::Write)));
            thread::spawn(move || pump(daemon2, client2, |c| c.shutdown(Shutdown::Write)));
        }
    });
    Ok(port)
}

/// Copies until end of file, then passes the half-close on (a request may end with it).
fn pump<R: io::Read, W: io::Write>(
    mut from: R,
    mut to: W,
    half_close: impl FnOnce(&W) -> io::Result<()>,
) {
    let _ = io::copy(&mut from, &mut to);
    let _ = half_close(&to);
}

/// A directory under /tmp removed on drop (xtask has no tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("monitor-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
