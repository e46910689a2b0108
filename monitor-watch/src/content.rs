//! What an open by a discovered process could load, told from the opened file's first bytes.
//!
//! The kernel starts watching a process at the open of a file whose *name* looks like a model
//! artifact; it cannot read the file there. Here the daemon reads the file's magic bytes, as the
//! process's open sees it, and says whether a model loader that runs code could be reading it:
//! a pickle that imports or calls something, a zip (PyTorch, Keras, .npz), joblib's compressed
//! pickles, HDF5, ... An open that provably cannot (it failed, it only writes, the file is an
//! ELF or a pickle of plain data) lets discovery stop watching the process early.
//!
//! Whatever cannot be told (a file gone, a fifo, an empty file that may yet be written) counts
//! as a model: an unknown never stops a watch.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::{
        ffi::OsStrExt as _,
        fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use serde::Serialize;

use monitor_common::event::open_reads_nothing;

use crate::load::{FileId, file_of};
use monitor_engine::trace::SyscallEvent;
use monitor_formats::{self as format, pickle};

/// How much of a file is read: enough for every magic, and for a pickle's first opcodes (its
/// first import is in its first few hundred bytes; one that runs past this counts as a model).
/// Little, since every open of a model-named file in a watch is read.
const HEAD: usize = 4 << 10;

/// What an opened file could be to a loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "content", content = "what", rename_all = "snake_case")]
pub enum Content {
    /// A loader that runs code could be reading a model from it; what it looks like.
    Model(String),
    /// Nothing that runs code can come of this open; why.
    NoModel(String),
    /// It could not be told, so it counts as a model; why.
    Unknown(String),
}

impl Content {
    /// Whether the open could be the load of a model (an unknown could).
    pub fn could_load(&self) -> bool {
        !matches!(self, Content::NoModel(_))
    }

    /// Every [`Content::kind`].
    pub const KINDS: [&'static str; 3] = ["model", "no_model", "unknown"];

    /// `model`, `no_model` or `unknown` (the metrics' label).
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Model(_) => "model",
            Content::NoModel(_) => "no_model",
            Content::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Model(what) => write!(f, "could be a model: {what}"),
            Content::NoModel(why) => write!(f, "no model: {why}"),
            Content::Unknown(why) => write!(f, "unknown (counted as a model): {why}"),
        }
    }
}

/// What process `pid`'s open `sc` of `path` could load, read as soon as the open is judged.
pub fn of_open(pid: u32, sc: &SyscallEvent, path: &str) -> Content {
    let Some(ret) = sc.ret else {
        return Content::Unknown("the open did not return".into());
    };
    if ret < 0 {
        return Content::NoModel("the open failed".into());
    }
    let flags = sc
        .arg("flags")
        .or_else(|| sc.arg("how"))
        .and_then(|v| v.as_u64());
    // The kernel passes over these opens, but for openat2's, whose flags it cannot see.
    if flags.is_some_and(open_reads_nothing) {
        return Content::NoModel("opened for writing only, as a directory or as a path".into());
    }
    let dir_fd = sc.arg("dfd").and_then(|v| v.as_u64()).map(|v| v as i32);
    match open_as_the_process_did(pid, ret, path, dir_fd) {
        Ok(file) => of_file(&file, path),
        Err(e) => Content::Unknown(format!("cannot open it again to read: {e}")),
    }
}

/// What the file at `path` could be to a loader, as discovery reads it.
pub fn of_path(path: &Path) -> Content {
    match open_for_reading(path) {
        Ok(file) => of_file(&file, &path.to_string_lossy()),
        Err(e) => Content::Unknown(format!("cannot open it: {e}")),
    }
}

/// What the file an opening syscall opened could load, read from it at most once however
/// often it is asked (discovery and a watch's load phase both ask).
pub struct OpenedFile<'e> {
    pid: u32,
    sc: &'e SyscallEvent,
    content: Option<Content>,
}

impl<'e> OpenedFile<'e> {
    /// Syscall `sc` of process `pid`, not read yet.
    pub fn new(pid: u32, sc: &'e SyscallEvent) -> Self {
        OpenedFile {
            pid,
            sc,
            content: None,
        }
    }

    pub fn content(&mut self) -> &Content {
        let (pid, sc) = (self.pid, self.sc);
        self.content.get_or_insert_with(|| match opened_path(sc) {
            Some(path) => of_open(pid, sc, path),
            None => Content::Unknown(format!("{} opens no named file", sc.name)),
        })
    }
}

/// The path an opening syscall named (the argument discovery looks at).
pub fn opened_path(sc: &SyscallEvent) -> Option<&str> {
    let i = sc.syscall.discovery_arg()?;
    sc.args.values().get(i).and_then(|v| v.as_str())
}

/// What `file`, opened at `path`, could be to a loader.
fn of_file(file: &File, path: &str) -> Content {
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Content::Unknown(format!("cannot stat it: {e}")),
    };
    if meta.is_dir() {
        return Content::NoModel("a directory".into());
    }
    if !meta.is_file() {
        // Reading a fifo or a device would take bytes from the loader.
        return Content::Unknown("not a regular file, so not read".into());
    }
    let size = meta.len();
    if size == 0 {
        return Content::Unknown("empty when looked at (it may be being written)".into());
    }
    let mut head = vec![0u8; HEAD.min(size as usize)];
    let n = match read_up_to(file, &mut head) {
        Ok(n) => n,
        Err(e) => return Content::Unknown(format!("cannot read it: {e}")),
    };
    head.truncate(n);
    let hdf5 = || {
        let mut f = file.try_clone()?;
        format::is_hdf5(&mut f, size)
    };
    classify(&head, size, path, hdf5)
}

/// What a file of `size` bytes that begins with `head`, opened at `path`, could be; `hdf5`
/// looks for HDF5's signature (which may follow a user block).
fn classify(
    head: &[u8],
    size: u64,
    path: &str,
    hdf5: impl FnOnce() -> std::io::Result<bool>,
) -> Content {
    let model = |what: &str| Content::Model(what.to_owned());
    if format::is_numpy(head) {
        return model("a NumPy array (.npy)");
    }
    if format::is_zip(head) {
        return model("a zip archive (PyTorch, Keras v3, NumPy .npz)");
    }
    if let Some(compression) = format::compression(head) {
        return Content::Model(format!("{compression}-compressed data (joblib)"));
    }
    // PyTorch's oldest format is a tar archive ("ustar" at offset 257).
    if head.get(257..262) == Some(b"ustar") {
        return model("a tar archive (legacy PyTorch)");
    }
    let whole = head.len() as u64 >= size;
    if pickle::could_act(head, whole) {
        return model(match head.first() {
            Some(0x80) => "a pickle (protocol 2 or later)",
            _ => "perhaps a pickle (protocol 0 or 1)",
        });
    }
    // Protobuf has no magic: a TensorFlow graph cannot be ruled out by its bytes.
    if path.to_ascii_lowercase().ends_with(".pb") {
        return model("perhaps protobuf (TensorFlow), which has no magic bytes");
    }
    match hdf5() {
        Ok(true) => return model("HDF5 (Keras .h5)"),
        Ok(false) => {}
        Err(e) => return Content::Unknown(format!("cannot look for HDF5's signature: {e}")),
    }
    let text = head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    Content::NoModel(if whole && text {
        "text that no unpickler runs code from (it imports and calls nothing)".into()
    } else if whole && pickle::starts_with_opcode(head) {
        "a pickle of plain data (it imports and calls nothing)".into()
    } else if format::safetensors::looks_like(head, size) {
        "safetensors (tensors only: no loader runs code from it)".into()
    } else {
        format!(
            "no model loader accepts it: {}",
            format::describe_unknown(&head[..head.len().min(16)])
        )
    })
}

/// The file process `pid` opened as descriptor `fd` at `path`, opened again for reading here.
/// Through the descriptor while it still names a file of that name (the process may have
/// closed it, and the number been reused), even one removed since; else by the path as the
/// process saw it (its root, its working directory or the directory descriptor it named).
fn open_as_the_process_did(
    pid: u32,
    fd: i64,
    path: &str,
    dir_fd: Option<i32>,
) -> std::io::Result<File> {
    let name = Path::new(path)
        .file_name()
        .map_or(&b""[..], |n| n.as_bytes());
    let by_fd = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
    let same_name = |target: PathBuf| {
        target.file_name().is_some_and(|held| {
            let held = held.as_bytes();
            held == name || held.strip_suffix(b" (deleted)") == Some(name)
        })
    };
    if fs::read_link(&by_fd).is_ok_and(same_name)
        && let Ok(file) = open_for_reading(&by_fd)
    {
        return Ok(file);
    }
    let by_path = match (path.strip_prefix('/'), dir_fd) {
        (Some(absolute), _) => format!("/proc/{pid}/root/{absolute}"),
        (None, None | Some(libc::AT_FDCWD)) => format!("/proc/{pid}/cwd/{path}"),
        (None, Some(dir)) => format!("/proc/{pid}/fd/{dir}/{path}"),
    };
    open_for_reading(Path::new(&by_path))
}

/// The file descriptor `fd` of process `pid` holds, if it is still the one the process opened
/// at `path` (with `dir_fd`): the number may have been closed and taken by another file since.
pub fn held_by(pid: u32, fd: i32, path: &str, dir_fd: Option<i32>) -> Option<FileId> {
    let held = file_of(pid, fd)?;
    let opened = open_as_the_process_did(pid, i64::from(fd), path, dir_fd).ok()?;
    let meta = opened.metadata().ok()?;
    (held == (meta.dev(), meta.ino())).then_some(held)
}

/// Opens without blocking (a fifo) and without taking a terminal.
fn open_for_reading(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A loader opens its model, reads it, closes it, and opens something else (a socket, a
    /// log) that takes the same descriptor number, all before the judge looks: the
    /// descriptor no longer holds the model, so the load is not "descriptor open" for as long
    /// as the other file stays open (on the old code it was, and a server's every act after
    /// its start was in the load phase).
    #[test]
    fn a_descriptor_number_reused_before_the_judge_looks_holds_no_model() {
        use std::os::fd::{AsRawFd as _, IntoRawFd as _};

        let dir = tempfile::tempdir().unwrap();
        let (model, log) = (dir.path().join("model.pt"), dir.path().join("server.log"));
        fs::write(&model, b"PK\x03\x04").unwrap();
        fs::write(&log, b"").unwrap();
        let me = std::process::id();
        let fd = File::open(&model).unwrap().into_raw_fd();
        let path = model.to_str().unwrap();
        let id = (
            fs::metadata(&model).unwrap().dev(),
            fs::metadata(&model).unwrap().ino(),
        );
        assert_eq!(held_by(me, fd, path, None), Some(id), "still open");
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(fd) };
        let other = File::open(&log).unwrap();
        assert_eq!(other.as_raw_fd(), fd, "the number was reused");
        assert!(crate::load::file_of(me, fd).is_some());
        assert_eq!(held_by(me, fd, path, None), None, "the model is closed");
        drop(other);
        // Opened through a symlink (as the Hugging Face cache does): the descriptor names
        // the target, and still holds the model.
        let link = dir.path().join("pytorch_model.bin");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        let file = File::open(&link).unwrap();
        assert_eq!(
            held_by(me, file.as_raw_fd(), link.to_str().unwrap(), None),
            Some(id)
        );
    }

    fn of_bytes(bytes: &[u8], name: &str) -> Content {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        of_file(&File::open(&path).unwrap(), path.to_str().unwrap())
    }

    #[test]
    fn what_could_run_code_counts_as_a_model() {
        let malicious = b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02id\x94\x85\x94R\x94.";
        for (bytes, name) in [
            (&malicious[..], "model.pkl"),
            (b"cos\nsystem\n(S'id'\ntR.", "old.pkl"),
            (b"PK\x03\x04rest of a zip", "model.pt"),
            (b"\x93NUMPY\x01\x00v\x00", "a.npy"),
            (b"\x1f\x8b\x08\x00", "m.joblib"),
            (b"\x0a\x04\x08\x01\x10\x02", "saved_model.pb"),
        ] {
            let content = of_bytes(bytes, name);
            assert!(matches!(content, Content::Model(_)), "{name}: {content:?}");
        }
        // HDF5 after a 512-byte user block.
        let mut h5 = vec![b'x'; 512];
        h5.extend_from_slice(b"\x89HDF\r\n\x1a\n");
        h5.extend_from_slice(&[0; 64]);
        assert_eq!(
            of_bytes(&h5, "w.h5"),
            Content::Model("HDF5 (Keras .h5)".into())
        );
    }

    #[test]
    fn what_no_loader_runs_code_from_is_no_model() {
        for (bytes, name, why) in [
            (&b"\x7fELF\x02\x01\x01\x00"[..], "firmware.bin", "ELF"),
            (b"{\"weights\": []}", "config.bin", "text"),
            (
                b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94K\x01K\x02s.",
                "counts.pkl",
                "plain data",
            ),
        ] {
            match of_bytes(bytes, name) {
                Content::NoModel(reason) => assert!(reason.contains(why), "{name}: {reason}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn what_cannot_be_told_counts_as_a_model() {
        assert!(of_bytes(b"", "being-written.pkl").could_load());
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stream.pkl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let file = open_for_reading(&fifo).unwrap();
        assert!(matches!(
            of_file(&file, fifo.to_str().unwrap()),
            Content::Unknown(_)
        ));
    }

    #[test]
    fn a_file_another_process_holds_open_is_read_through_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        fs::write(&path, b"\x7fELF\x02\x01\x01\x00").unwrap();
        let held = File::open(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        // Removed, and another file put at its path: the descriptor still reaches the first.
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"cos\nsystem\n(S'id'\ntR.").unwrap();
        let open = |fd: i64| {
            open_as_the_process_did(std::process::id(), fd, path.to_str().unwrap(), None)
                .ok()
                .map(|file| of_file(&file, path.to_str().unwrap()))
        };
        assert!(matches!(open(fd.into()), Some(Content::NoModel(_))));
        // A descriptor that names another file (its number reused): the path is read.
        let other = File::open("/proc/self/status").unwrap();
        let reused = std::os::fd::AsRawFd::as_raw_fd(&other);
        assert!(matches!(open(reused.into()), Some(Content::Model(_))));
        drop(held);
    }
}
