//! The real monitord for the daemon's integration tests (daemon.rs, faults.rs): started on a
//! temporary socket and state directory (root: it loads the probes), talked to over raw HTTP
//! on its socket.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with_env(dir, &[])
    }

    /// [`Daemon::start`] with these variables added to the daemon's environment.
    pub fn start_with_env(dir: &Path, env: &[(&str, &Path)]) -> Daemon {
        let socket = dir.join("monitord.sock");
        let config = dir.join("monitord.toml");
        let mut settings = format!(
            "state_dir = {:?}\nsocket = {:?}\n",
            dir.join("state"),
            socket
        );
        let rules: Vec<_> = ["extra-rules.yaml", "extra-rules.d"]
            .iter()
            .map(|name| dir.join(name))
            .filter(|path| path.exists())
            .collect();
        if !rules.is_empty() {
            settings.push_str(&format!("rules = {rules:?}\n"));
        }
        // Tables go last in TOML.
        if let Ok(extra) = std::fs::read_to_string(dir.join("extra-config.toml")) {
            settings.push_str(&extra);
        }
        std::fs::write(&config, settings).unwrap();
        let child = as_the_unit_runs_it()
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            // Kept for tests that read what it logged (appended across restarts).
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("monitord.log"))
                    .expect("monitord's log file"),
            )
            .spawn()
            .expect("start monitord");
        let daemon = Daemon { child, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(&daemon.socket).is_err() {
            assert!(Instant::now() < deadline, "monitord did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// One HTTP/1.1 request; returns the status and the body.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.http_as(method, path, "application/json", body)
    }

    /// [`Daemon::http`] with the body's Content-Type named.
    pub fn http_as(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: monitord\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.exchange(&request)
    }

    /// Sends `request` as it is; returns the reply's status and body.
    pub fn exchange(&self, request: &[u8]) -> (u16, Vec<u8>) {
        parse_reply(&send(&self.socket, request))
    }

    pub fn json(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let (status, reply) = self.http(method, path, &serde_json::to_vec(body).unwrap());
        let value = serde_json::from_slice(&reply).unwrap_or_else(|e| {
            panic!(
                "{path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&reply)
            )
        });
        (status, value)
    }

    /// `monitorctl ARGS --socket SOCKET`, which must succeed; its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// `monitorctl ARGS --socket SOCKET`, which must fail; its standard error.
    pub fn ctl_fails(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(monitorctl())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run monitorctl")
    }

    pub fn submit(&self, path: &Path) -> String {
        let (status, reply) = self.json("POST", "/v1/scans", &json!({ "path": path }));
        assert_eq!(status, 202, "{reply}");
        reply["id"].as_str().unwrap().to_owned()
    }

    pub fn wait(&self, id: &str) -> Value {
        self.poll(&format!("/v1/scans/{id}"), 120, |r| {
            r["status"] == "done" || r["status"] == "interrupted"
        })
    }

    /// GETs `path` until `done` holds for the reply (or fails after `secs` seconds).
    pub fn poll(&self, path: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, reply) = self.json("GET", path, &Value::Null);
            if done(&reply) {
                return reply;
            }
            assert!(Instant::now() < deadline, "{path}: still {reply}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// monitord as dist/monitord.service starts it: with the unit's CapabilityBoundingSet and
/// NoNewPrivileges, applied by setpriv (systemd is not PID 1 where the tests run). So every test
/// here also checks that the unit leaves the daemon the powers it needs.
pub fn as_the_unit_runs_it() -> Command {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/monitord.service"
    ))
    .unwrap();
    let setting = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("dist/monitord.service has no {key}="))
            .to_owned()
    };
    assert_eq!(setting("NoNewPrivileges"), "yes");
    let keep: Vec<String> = setting("CapabilityBoundingSet")
        .split_whitespace()
        .map(|cap| {
            let name = cap.strip_prefix("CAP_").expect("a capability name");
            format!("+{}", name.to_ascii_lowercase())
        })
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--no-new-privs", "--inh-caps=-all"])
        .arg(format!("--bounding-set=-all,{}", keep.join(",")))
        .arg(env!("CARGO_BIN_EXE_monitord"));
    cmd
}

pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

/// A protocol-0 pickle calling `module.name(arg)` when loaded; harmless callables only.
pub fn pickle(dir: &Path, name: &str, call: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, call).unwrap();
    path
}

pub fn root_required() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "monitord loads eBPF programs: run the tests as root"
    );
}

/// Sends `request` on a new connection; returns all that comes back until the daemon closes it.
pub fn send(socket: &Path, request: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    // A stalled daemon fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A refused body may be cut off by the daemon's early reply: that reply is what counts.
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// An HTTP reply's status and body (de-chunked).
pub fn parse_reply(reply: &[u8]) -> (u16, Vec<u8>) {
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP reply");
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = reply[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

/// The release build of monitorctl, which `cargo xtask test` builds before the tests.
pub fn monitorctl() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/monitorctl");
    assert!(
        path.is_file(),
        "{} is missing: `cargo build --release --bins` (cargo xtask test does)",
        path.display()
    );
    path
}
