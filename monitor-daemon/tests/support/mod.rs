//! The real monitord for the daemon's integration tests: started on a temporary socket and
//! state directory (root: it loads the probes), talked to over raw HTTP on its socket.

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
        let socket = dir.join("monitord.sock");
        let config = dir.join("monitord.toml");
        let mut settings = format!(
            "state_dir = {:?}\nsocket = {:?}\n",
            dir.join("state"),
            socket
        );
        let extra_rules = dir.join("extra-rules.yaml");
        if extra_rules.exists() {
            settings.push_str(&format!("rules = [{extra_rules:?}]\n"));
        }
        // Tables go last in TOML.
        if let Ok(extra) = std::fs::read_to_string(dir.join("extra-config.toml")) {
            settings.push_str(&extra);
        }
        std::fs::write(&config, settings).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_monitord"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: monitord\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        // A refused body may be cut off by the daemon's early reply: that reply is what counts.
        let _ = stream.write_all(body);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
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
