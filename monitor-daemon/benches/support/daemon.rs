//! The real monitord, started for a benchmark on a temporary socket and state directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_api::client::Client;

/// A running monitord, killed when dropped.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts target/release/monitord with `extra` appended to its configuration (TOML), in
    /// `dir`; returns once its socket answers.
    pub fn start(dir: &Path, extra: &str) -> Result<(Daemon, Client)> {
        let release = release_dir();
        if !release.join("monitord").is_file() {
            bail!("monitord is missing: `cargo build --release --bins`");
        }
        let socket = dir.join("monitord.sock");
        let config = dir.join("monitord.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nsocket = {:?}\n{extra}",
                dir.join("state"),
                socket
            ),
        )?;
        let child = Command::new(release.join("monitord"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting monitord")?;
        let daemon = Daemon { child, socket };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(client) = Client::connect(&daemon.socket).await {
                    return Ok(client);
                }
                if Instant::now() > deadline {
                    bail!("monitord did not come up");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })?;
        Ok((daemon, client))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits: the probes are detached when this returns.
    pub fn stop(mut self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// target/release, where the binaries are.
pub fn release_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// Writes `content` to `dir/name`.
pub fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, content)?;
    Ok(path)
}

/// A line of /proc/<pid>/status, in KiB.
pub fn memory(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix("kB")
        })
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// What a benchmark of scans through the daemon needs: root, the release binaries, a
/// temporary directory (`monitor-bench-NAME-*`) and two small pickles in it, one benign and
/// one whose payload runs `true`.
pub fn scan_bench_setup(name: &str) -> Result<(tempfile::TempDir, PathBuf, PathBuf)> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    if !release_dir().join("monitorctl").is_file() {
        bail!("monitorctl is missing: `cargo build --release --bins`");
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("monitor-bench-{name}-"))
        .tempdir_in("/var/tmp")?;
    let benign = write(
        dir.path(),
        "plain.pkl",
        "(dp0\nVweights\np1\n(lp2\nF0.5\naF1.5\nas.",
    )?;
    let malicious = write(dir.path(), "evil.pkl", "cposix\nsystem\n(Vtrue\ntR.")?;
    Ok((dir, benign, malicious))
}

/// Submits a scan of `path` over the socket; its id.
pub async fn submit_scan(client: &Client, path: &Path) -> Result<String> {
    let reply = client
        .post_json("/v1/scans", &serde_json::json!({ "path": path }))
        .await?;
    if reply.status != 202 {
        bail!("submission refused: {}", reply.error_message());
    }
    Ok(reply.json()?["id"].as_str().unwrap_or_default().to_owned())
}
