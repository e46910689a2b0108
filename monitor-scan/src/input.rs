//! The artifact, opened once: the path a user gave is opened with that user's rights (see
//! [`monitor_engine::creds`]), its last component never followed if it is a link, without blocking on
//! a fifo, and refused unless it is a regular file or a directory. Everything after works on
//! what that open gave: the file (or each file of a SavedModel directory, each opened the same
//! way relative to its directory's descriptor) is copied at once into a directory only root
//! can read, and the format, the size, the globals and the sandbox's copy all come from that
//! private copy. A link swapped in after a check, a fifo, a loop of links in a directory:
//! none of them gets past the one open, none reaches anything the user could not read.
//!
//! Directory walks follow no link and are bounded in entries and depth.

use std::{
    ffi::OsStr,
    fs, io,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
        },
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, open, openat},
    sys::stat::Mode,
};

use monitor_engine::creds::Credentials;

/// A SavedModel directory holds at most this many entries (files and directories, at any
/// depth).
pub const MAX_ENTRIES: usize = 10_000;
/// ... nested at most this deep.
pub const MAX_DEPTH: usize = 32;

/// Whose rights open the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenAs {
    /// This process's (`monitorctl scan` in process; the daemon's own copy of an upload). A
    /// link as the last component is followed: the path is the caller's own to resolve.
    Myself,
    /// A user's who asked over the API: the path is opened with their ids, and a link as its
    /// last component is refused.
    User(Credentials),
}

/// Why the artifact could not be taken. Each message is one line for the user; a file that
/// does not exist and one the user may not read get the same one.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: no such file or directory, or not readable by uid {uid}")]
    NotReadable { path: String, uid: u32 },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: cannot be read: {source}")]
    Unreadable { path: String, source: io::Error },
    #[error(
        "{path} is a symbolic link: give the path of the file it names (monitord follows no \
         link, whose target could change between a check and the open)"
    )]
    Symlink { path: String },
    #[error("{path}: not a regular file or directory but a {kind}")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path}: larger than the limit of {} MiB (max_artifact_mib, --max-size-mib)", limit >> 20)]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: a directory of more than {MAX_ENTRIES} entries (the limit)")]
    TooManyEntries { path: String },
    #[error("{path}: a directory nested more than {MAX_DEPTH} levels deep (the limit)")]
    TooDeep { path: String },
    /// Copying into the private directory failed (the daemon's side, not the input's).
    #[error("copying {path} into a private directory: {source}")]
    Copy { path: String, source: io::Error },
}

impl InputError {
    /// Whether the fault is the daemon's (its disk), not the input's.
    pub fn is_setup(&self) -> bool {
        matches!(self, InputError::Copy { .. })
    }
}

/// What is at a path, opened once.
struct Opened {
    file: fs::File,
    meta: fs::Metadata,
}

/// Opens `path` as `who` and checks it is a regular file or a directory; what an API
/// request is checked with before it is queued (the scan opens it again, the same way).
pub fn check(path: &Path, who: &OpenAs) -> Result<(), InputError> {
    open_top(path, who).map(drop)
}

/// The artifact at `path`, opened as `who` and copied into a private directory; at most
/// `max_size` bytes in all.
pub fn take(path: &Path, who: &OpenAs, max_size: u64) -> Result<Input, InputError> {
    let opened = open_top(path, who)?;
    // 0700 whatever the umask (monitorctl scan runs with the user's own).
    let dir = tempfile::Builder::new()
        .prefix("monitor-input-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|source| copy_error(path, source))?;
    let dest = dir.path().join("artifact");
    let mut copy = Copy {
        who,
        shown: path.display().to_string(),
        left: max_size,
        limit: max_size,
        entries: 0,
    };
    let sha256 = if opened.meta.is_dir() {
        copy.tree(opened.file, &dest, 0)?;
        None
    } else {
        Some(copy.file(opened.file, &dest)?)
    };
    Ok(Input {
        dir,
        path: dest,
        size: max_size - copy.left,
        sha256,
    })
}

/// The artifact's private copy: in a directory of its own that only root can read, removed
/// when dropped.
#[derive(Debug)]
pub struct Input {
    dir: tempfile::TempDir,
    path: PathBuf,
    size: u64,
    /// A file's SHA-256, of the bytes copied (what was scanned), in hex; none for a directory.
    sha256: Option<String>,
}

impl Input {
    /// The copy: a file, or a directory of them.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its bytes in all.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The SHA-256 of a file's bytes as copied (hex); none for a directory.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }

    /// Moves the copy to `dest` (renamed where it can be, else copied), owned by `owner`:
    /// files 0600, directories 0700, readable by that user alone.
    pub fn move_to(self, dest: &Path, owner: (u32, u32)) -> io::Result<()> {
        match fs::rename(&self.path, dest) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_tree(&self.path, dest)?,
            Err(e) => return Err(e),
        }
        give_to(dest, owner)?;
        drop(self.dir);
        Ok(())
    }
}

/// Opens the top of the artifact: as `who`, no link as its last component for a user, no
/// blocking open of a fifo, no controlling terminal; then checks what it is on the descriptor.
fn open_top(path: &Path, who: &OpenAs) -> Result<Opened, InputError> {
    let shown = path.display().to_string();
    let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let opened = match who {
        OpenAs::Myself => open(path, flags, Mode::empty()),
        OpenAs::User(creds) => {
            flags |= OFlag::O_NOFOLLOW;
            creds
                .with_fs_rights(|| open(path, flags, Mode::empty()))
                .map_err(|source| InputError::Unreadable {
                    path: shown.clone(),
                    source,
                })?
        }
    };
    let fd = opened.map_err(|errno| match (who, errno) {
        (OpenAs::User(_), nix::errno::Errno::ELOOP) => InputError::Symlink {
            path: shown.clone(),
        },
        // Missing or forbidden: one answer, so that the daemon tells nobody what exists.
        (OpenAs::User(creds), _) => InputError::NotReadable {
            path: shown.clone(),
            uid: creds.uid,
        },
        (OpenAs::Myself, nix::errno::Errno::ENOENT) => InputError::NotFound {
            path: shown.clone(),
        },
        (OpenAs::Myself, errno) => InputError::Unreadable {
            path: shown.clone(),
            source: errno.into(),
        },
    })?;
    let file = fs::File::from(fd);
    let meta = file.metadata().map_err(|source| InputError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(InputError::NotAFile {
            path: shown,
            kind: monitor_formats::kind_of(&meta.file_type()),
        });
    }
    Ok(Opened { file, meta })
}

/// Copies what descriptors give into the private directory, within the limits.
struct Copy<'a> {
    who: &'a OpenAs,
    shown: String,
    /// Bytes that may still be copied.
    left: u64,
    limit: u64,
    entries: usize,
}

/// Hashes what is written through it.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
}

impl<W: io::Write> io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Copy<'_> {
    /// Copies one file; returns the SHA-256 of what was copied, in hex.
    fn file(&mut self, mut src: fs::File, dest: &Path) -> Result<String, InputError> {
        let out = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(|source| copy_error(dest, source))?;
        use std::io::Read as _;
        // One byte over the limit is enough to know it is over (the file may grow meanwhile).
        let mut out = Hashing {
            inner: out,
            hasher: sha2::Digest::new(),
        };
        let copied = io::copy(&mut (&mut src).take(self.left + 1), &mut out).map_err(|source| {
            InputError::Unreadable {
                path: self.shown.clone(),
                source,
            }
        })?;
        if copied > self.left {
            return Err(InputError::TooLarge {
                path: self.shown.clone(),
                limit: self.limit,
            });
        }
        self.left -= copied;
        let digest = sha2::Digest::finalize(out.hasher);
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A directory: its regular files and directories, each opened relative to its parent's
    /// descriptor, as the user, without following links. Anything else is skipped.
    fn tree(&mut self, dir: fs::File, dest: &Path, depth: usize) -> Result<(), InputError> {
        if depth > MAX_DEPTH {
            return Err(InputError::TooDeep {
                path: self.shown.clone(),
            });
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dest)
            .map_err(|source| copy_error(dest, source))?;
        let shown = self.shown.clone();
        let unreadable = |source: io::Error| InputError::Unreadable {
            path: shown.clone(),
            source,
        };
        let mut entries =
            nix::dir::Dir::from_fd(OwnedFd::from(dir)).map_err(|e| unreadable(e.into()))?;
        let mut names = Vec::new();
        for entry in entries.iter() {
            let entry = entry.map_err(|e| unreadable(e.into()))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(InputError::TooManyEntries {
                    path: self.shown.clone(),
                });
            }
            names.push(name.to_vec());
        }
        for name in names {
            let name = OsStr::from_bytes(&name);
            let flags = OFlag::O_RDONLY
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW;
            let open_entry = || openat(entries.as_fd(), name, flags, Mode::empty());
            let opened = match self.who {
                OpenAs::Myself => open_entry(),
                OpenAs::User(creds) => creds.with_fs_rights(open_entry).map_err(unreadable)?,
            };
            // A link (ELOOP), or an entry gone or forbidden meanwhile: not part of the copy,
            // as a link or a fifo is not.
            let Ok(fd) = opened else {
                continue;
            };
            let file = fs::File::from(fd);
            let meta = file.metadata().map_err(unreadable)?;
            let to = dest.join(name);
            if meta.is_dir() {
                self.tree(file, &to, depth + 1)?;
            } else if meta.is_file() {
                self.file(file, &to)?;
            }
        }
        Ok(())
    }
}

fn copy_error(path: &Path, source: io::Error) -> InputError {
    InputError::Copy {
        path: path.display().to_string(),
        source,
    }
}

/// Copies the private copy (regular files and directories only: it holds nothing else).
fn copy_tree(src: &Path, dest: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        fs::DirBuilder::new().mode(0o700).create(dest)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        let mut out = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)?;
        io::copy(&mut fs::File::open(src)?, &mut out)?;
    }
    Ok(())
}

/// Gives `path` (and all below it) to `owner`: files 0600, directories 0700.
fn give_to(path: &Path, owner: (u32, u32)) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            give_to(&entry?.path(), owner)?;
        }
    }
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_copied_without_its_links_fifos_or_loops() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        fs::create_dir_all(model.join("variables")).unwrap();
        fs::write(model.join("saved_model.pb"), b"pb").unwrap();
        fs::write(model.join("variables/variables.index"), b"index").unwrap();
        std::os::unix::fs::symlink(".", model.join("loop1")).unwrap();
        std::os::unix::fs::symlink("..", model.join("variables/loop2")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", model.join("elsewhere")).unwrap();
        nix::unistd::mkfifo(&model.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let input = take(&model, &OpenAs::Myself, 1 << 20).unwrap();
        assert_eq!(input.size(), 7);
        let mut names: Vec<_> = walkdir(input.path());
        names.sort();
        assert_eq!(
            names,
            ["saved_model.pb", "variables", "variables/variables.index"]
        );
        let over = take(&model, &OpenAs::Myself, 6).unwrap_err();
        assert!(matches!(over, InputError::TooLarge { .. }), "{over}");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_and_a_users_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o666)).unwrap();
        let err = take(&fifo, &OpenAs::Myself, 1 << 20).unwrap_err();
        assert!(
            matches!(err, InputError::NotAFile { kind: "fifo", .. }),
            "{err}"
        );
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let me = OpenAs::User(Credentials {
            uid: 0,
            gid: 0,
            groups: vec![],
        });
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let err = check(&link, &me).unwrap_err();
        assert!(matches!(err, InputError::Symlink { .. }), "{err}");
        check(&link, &OpenAs::Myself).unwrap();
    }

    #[test]
    fn missing_and_forbidden_get_the_same_answer() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret.pkl");
        fs::write(&secret, b"root's").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = OpenAs::User(Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        });
        let forbidden = std::thread::scope(|s| {
            s.spawn(|| check(&secret, &nobody).unwrap_err().to_string())
                .join()
                .unwrap()
        });
        let missing = dir.path().join("missing.pkl");
        let missing = check(&missing, &nobody).unwrap_err().to_string();
        assert_eq!(
            forbidden.replace("secret", "missing"),
            missing,
            "the same words for both"
        );
        assert!(
            forbidden.contains("not readable by uid 65534"),
            "{forbidden}"
        );
    }

    /// Format detection and static analysis (scan::job's `inspect`) are handed the copy: a
    /// name swapped for a link to another file once it was opened changes nothing they read.
    #[test]
    fn format_and_static_analysis_read_the_copy_whatever_the_name_becomes() {
        use crate::static_analysis;
        use monitor_formats as format;
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("model.pkl");
        let benign = b"(dp0\nVa\np1\nI1\ns.";
        fs::write(&artifact, benign).unwrap();
        let other = dir.path().join("other.pkl");
        fs::write(&other, b"cposix\nsystem\n(Vid\ntR.").unwrap();
        let input = take(&artifact, &OpenAs::Myself, 1 << 20).unwrap();
        fs::remove_file(&artifact).unwrap();
        std::os::unix::fs::symlink(&other, &artifact).unwrap();

        assert_eq!(fs::read(input.path()).unwrap(), benign);
        let mode = fs::metadata(input.path().parent().unwrap())
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o077, 0, "the copy's directory is private");
        let shown = artifact.display().to_string();
        let detected = format::detect_as(input.path(), &shown, &format::Limits::default()).unwrap();
        let analysis = static_analysis::analyse(
            input.path(),
            &detected,
            &static_analysis::StaticRules::defaults(),
        );
        let seen = serde_json::to_string(&analysis.pickles).unwrap();
        assert!(!seen.contains("system"), "the other file was read: {seen}");
        assert!(analysis.findings.is_empty(), "{:?}", analysis.findings);
    }

    fn walkdir(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                out.extend(walkdir(&path).into_iter().map(|p| format!("{rel}/{p}")));
            }
            out.push(rel);
        }
        out
    }
}
