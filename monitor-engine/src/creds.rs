//! Who a user is (uid, gid, groups), as the kernel says it of a socket's peer, and file work
//! done with that user's rights instead of root's.
//!
//! monitord runs as root with `CAP_DAC_OVERRIDE`: whatever it opens for a user, it could open
//! for anyone. So a path a user submits is opened with that user's rights. Linux keeps the
//! ids that file access is checked against per thread: the file-system uid and gid
//! (`setfsuid`, `setfsgid`) and the supplementary groups (the raw `setgroups` syscall; glibc's
//! wrapper changes every thread of the process). Moving the fsuid away from 0 also drops the
//! file capabilities (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`, ...) from the
//! thread's effective set, and moving it back restores them: [`Credentials::with_fs_rights`]
//! checks access exactly as the kernel would for that user, on this thread only.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
};

use serde::{Deserialize, Serialize};

/// A user's ids as the kernel checks file access with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

/// At most this many supplementary groups are read of a peer (the kernel's own limit is
/// 65536; NGROUPS_MAX).
const MAX_GROUPS: usize = 65_536;

impl Credentials {
    /// The peer of a connected Unix socket, as it was when it connected (SO_PEERCRED and
    /// SO_PEERGROUPS), and its pid.
    pub fn of_peer(socket: &impl AsFd) -> io::Result<(Credentials, i32)> {
        let fd = socket.as_fd().as_raw_fd();
        let mut cred = libc::ucred {
            pid: 0,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: a getsockopt into a local struct of the length given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let groups = peer_groups(fd)?;
        Ok((
            Credentials {
                uid: cred.uid,
                gid: cred.gid,
                groups,
            },
            cred.pid,
        ))
    }

    /// This process's own ids.
    pub fn of_this_process() -> Credentials {
        Credentials {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the user is in group `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Runs `work` on this thread with the user's ids for file access, then gives the thread
    /// back root's. Needs `CAP_SETUID` and `CAP_SETGID`. A thread that cannot be given back its
    /// ids ends the process: it must never serve anyone else with a user's (or root's) rights
    /// by mistake.
    pub fn with_fs_rights<T>(&self, work: impl FnOnce() -> T) -> io::Result<T> {
        let saved = ThreadIds::current()?;
        let _restore = RestoreOnDrop(saved.clone());
        ThreadIds {
            fsuid: self.uid,
            fsgid: self.gid,
            groups: self.groups.clone(),
        }
        .apply()?;
        Ok(work())
    }
}

/// The ids a thread's file access is checked against.
#[derive(Clone)]
struct ThreadIds {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
}

impl ThreadIds {
    fn current() -> io::Result<ThreadIds> {
        // setfsuid(-1) changes nothing and returns the current value.
        // SAFETY: plain syscalls.
        let (fsuid, fsgid) = unsafe { (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX)) };
        let groups = nix::unistd::getgroups()
            .map_err(io::Error::from)?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(ThreadIds {
            fsuid: fsuid as u32,
            fsgid: fsgid as u32,
            groups,
        })
    }

    /// Sets groups first and the fsuid last: once the fsuid is not 0 the thread has lost its
    /// file capabilities, not `CAP_SETGID`, but the order keeps every step a root's.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: the raw syscall (this thread only) with a buffer of the length given.
        let rc =
            unsafe { libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // setfsuid and setfsgid report no error: read them back.
        // SAFETY: plain syscalls.
        unsafe {
            libc::setfsgid(self.fsgid);
            libc::setfsuid(self.fsuid);
        }
        let now = ThreadIds::current()?;
        if now.fsuid != self.fsuid || now.fsgid != self.fsgid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "could not take uid {} gid {} for file access (needs CAP_SETUID and \
                     CAP_SETGID)",
                    self.fsuid, self.fsgid
                ),
            ));
        }
        Ok(())
    }
}

struct RestoreOnDrop(ThreadIds);

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        // Root's fsuid first: it brings back the capabilities that setgroups may need.
        // SAFETY: plain syscalls.
        unsafe {
            libc::setfsuid(self.0.fsuid);
            libc::setfsgid(self.0.fsgid);
        }
        if self.0.apply().is_err() {
            eprintln!("monitord: a thread could not get its own ids back; stopping");
            std::process::abort();
        }
    }
}

/// The supplementary groups of a Unix socket's peer (SO_PEERGROUPS, Linux 4.13).
fn peer_groups(fd: std::os::fd::RawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
        // SAFETY: a getsockopt into a buffer of the length given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<u32>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // Too small: the kernel says how much it needs.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= MAX_GROUPS {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_takes_a_users_rights_for_file_access_and_gives_them_back() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root's").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let read = std::thread::spawn(move || {
            let as_nobody = nobody
                .with_fs_rights(|| std::fs::read(&secret).map_err(|e| e.kind()))
                .unwrap();
            let as_root = std::fs::read(&secret).map_err(|e| e.kind());
            (as_nobody, as_root)
        })
        .join()
        .unwrap();
        assert_eq!(read.0, Err(io::ErrorKind::PermissionDenied));
        assert_eq!(read.1, Ok(b"root's".to_vec()), "root's rights came back");
        // The other threads never lost theirs.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (me, pid) = Credentials::of_peer(&a).unwrap();
        drop(b);
        assert_eq!(me.uid, 0);
        assert_eq!(pid as u32, std::process::id());
    }
}
