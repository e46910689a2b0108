//! The export: every finding, kill, discovery and scan verdict as one JSON line, to a file
//! that is rotated by size and/or to stdout, the way fleets collect events (a log shipper
//! such as Vector or Fluent Bit tails the file and sends each line on; see
//! docs/export.md). Each line carries an RFC 3339 time and the host, so that it means
//! something once it has left the node.
//!
//! Lines are written by a thread of their own, in the order they were emitted: a slow disk
//! never holds the daemon. Rotation happens between lines (the file is renamed to `.1`, `.1`
//! to `.2`, ... and a new file opened), so a shipper following the file by inode reads every
//! line once. A line the thread's queue has no room for (a flood faster than the disk) is
//! counted in `monitor_export_dropped_total`, never silently lost.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Mutex,
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use monitor_scan::report::{host_name, now_rfc3339};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

/// `[export]`: where the JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// The file the lines are appended to (created 0640); none: no file.
    pub path: Option<PathBuf>,
    /// Also write each line to standard output (a container's log).
    pub stdout: bool,
    /// The file is rotated before it would grow past this many KiB.
    pub max_file_kib: u64,
    /// Rotated files kept (`events.jsonl.1` is the newest); older ones are removed.
    pub keep_files: u32,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            path: None,
            stdout: false,
            max_file_kib: 100 * 1024,
            keep_files: 5,
        }
    }
}

impl ExportConfig {
    pub fn enabled(&self) -> bool {
        self.path.is_some() || self.stdout
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.max_file_kib == 0 {
            return Err("export.max_file_kib must be above zero".into());
        }
        if self.path.as_deref().is_some_and(|p| !p.is_absolute()) {
            return Err("export.path must be absolute".into());
        }
        Ok(())
    }
}

/// Lines waiting for the writer at most.
const QUEUE: usize = 65_536;

/// The sending side; cheap to use from any thread.
pub struct Exporter {
    /// `None` when the export is off, or closed.
    tx: Mutex<Option<SyncSender<String>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    host: String,
    dropped: Counter,
}

impl Exporter {
    /// Starts the writer (opening the file now, so that a path that cannot be written is an
    /// error at start, not a silent loss later). `dropped` counts lines that found no room.
    pub fn start(config: &ExportConfig, dropped: Counter) -> io::Result<Exporter> {
        let host = host_name();
        if !config.enabled() {
            return Ok(Exporter {
                tx: Mutex::new(None),
                writer: Mutex::new(None),
                host,
                dropped,
            });
        }
        let mut file = config.path.as_deref().map(Rotating::open).transpose()?;
        let (max, keep, stdout) = (
            config.max_file_kib.saturating_mul(1024),
            config.keep_files,
            config.stdout,
        );
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let writer = std::thread::Builder::new()
            .name("export".into())
            .spawn(move || {
                for line in rx {
                    if let Some(file) = &mut file
                        && let Err(e) = file.write_line(&line, max, keep)
                    {
                        tracing::error!(error = %e, path = %file.path.display(), "writing the export failed");
                    }
                    if stdout {
                        let mut out = io::stdout().lock();
                        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
                    }
                }
            })?;
        Ok(Exporter {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            host,
            dropped,
        })
    }

    /// Whether lines go anywhere: callers skip building them when not.
    pub fn enabled(&self) -> bool {
        lock(&self.tx).is_some()
    }

    /// Writes what is queued and stops the writer; later events are not exported.
    pub fn close(&self) {
        drop(lock(&self.tx).take());
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }

    /// Exports `kind` (`finding`, `kill`, `discovered`, `gap`, `learned`, `verdict`) with the
    /// fields of `body` (an object), stamped with the time and the host.
    pub fn export(&self, kind: &str, body: serde_json::Value) {
        let Some(tx) = lock(&self.tx).clone() else {
            return;
        };
        let mut line = serde_json::json!({
            "time": now_rfc3339(),
            "host": self.host,
            "kind": kind,
        });
        if let (Some(line), serde_json::Value::Object(body)) = (line.as_object_mut(), body) {
            line.extend(body);
        }
        let mut text = line.to_string();
        text.push('\n');
        match tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The export file, rotated by size.
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Rotating {
    fn open(path: &Path) -> io::Result<Rotating> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_owned(),
            file,
            size,
        })
    }

    /// Appends `line` whole, rotating first when it would take the file past `max` bytes (a
    /// file holds at least one line, however long).
    fn write_line(&mut self, line: &str, max: u64, keep: u32) -> io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > max {
            self.rotate(keep)?;
        }
        self.file.write_all(line.as_bytes())?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self, keep: u32) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(numbered(keep));
            for n in (1..keep).rev() {
                match fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, numbered(1))?;
        }
        *self = Rotating::open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_in(dir: &Path) -> Vec<String> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        // Oldest first: the highest number, ..., .1, then the file itself.
        files.sort_by_key(|p| {
            std::cmp::Reverse(
                p.extension()
                    .and_then(|e| e.to_str())
                    .and_then(|e| e.parse::<u32>().ok())
                    .unwrap_or(0),
            )
        });
        files
            .iter()
            .flat_map(|p| {
                fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rotation_and_reopening_lose_no_line_and_repeat_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = Rotating::open(&path).unwrap();
        for n in 0..100 {
            file.write_line(&format!("{{\"n\":{n}}}\n"), 64, 1000)
                .unwrap();
        }
        drop(file);
        // A restart appends to what is there.
        let mut file = Rotating::open(&path).unwrap();
        for n in 100..150 {
            file.write_line(&format!("{{\"n\":{n}}}\n"), 64, 1000)
                .unwrap();
        }
        let lines = lines_in(dir.path());
        let expected: Vec<String> = (0..150).map(|n| format!("{{\"n\":{n}}}")).collect();
        assert_eq!(lines, expected);
        assert!(fs::read_dir(dir.path()).unwrap().count() > 10, "it rotated");
        for entry in fs::read_dir(dir.path()).unwrap() {
            assert!(entry.unwrap().metadata().unwrap().len() <= 64);
        }
    }

    #[test]
    fn only_keep_files_rotated_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut file = Rotating::open(&path).unwrap();
        for n in 0..50 {
            file.write_line(&format!("{n:030}\n"), 40, 3).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["e.jsonl", "e.jsonl.1", "e.jsonl.2", "e.jsonl.3"]);
        // The newest lines are the ones kept.
        assert_eq!(lines_in(dir.path()).last().unwrap(), &format!("{:030}", 49));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-12-04T05:06:49.123Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
