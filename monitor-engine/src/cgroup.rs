//! cgroup v2: every watched job runs in a cgroup of its own, whose id the kernel programs
//! filter on. The id is the inode number of the cgroup's directory.

use std::{
    fs,
    io::{self, Write as _},
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

/// Where monitor creates its job cgroups, under the cgroup2 mount.
pub const PARENT: &str = "monitor";

/// Finds the cgroup2 mount in /proc/self/mountinfo (it is /sys/fs/cgroup on unified hosts and
/// /sys/fs/cgroup/unified on hybrid ones, never assume either).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    parse_cgroup2_mount(&mountinfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (see /proc/self/mountinfo)",
        )
    })
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 25 0:31 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw,..."
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Removes the job cgroups of monitor processes that died without cleaning up (`run-<pid>-*`
/// whose pid is gone), killing what is left in them first. Returns how many were removed.
pub fn remove_stale_jobs() -> io::Result<usize> {
    let parent = cgroup2_mount()?.join(PARENT);
    let Ok(entries) = fs::read_dir(&parent) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = fs::write(entry.path().join("cgroup.kill"), "1");
        // Emptying takes the kernel a moment after the kill.
        for _ in 0..50 {
            if fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(removed)
}

/// A cgroup created for one job. Dropping it kills whatever is left in it and removes it.
#[derive(Debug)]
pub struct JobCgroup {
    path: PathBuf,
    id: u64,
}

impl JobCgroup {
    /// Creates `<cgroup2>/monitor/<name>`.
    pub fn create(name: &str) -> io::Result<Self> {
        let parent = cgroup2_mount()?.join(PARENT);
        fs::create_dir_all(&parent)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", parent.display())))?;
        let path = parent.join(name);
        fs::create_dir(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
        let id = fs::metadata(&path)?.ino();
        Ok(JobCgroup { path, id })
    }

    /// The id `bpf_get_current_cgroup_id()` returns for tasks in this cgroup.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An open `cgroup.procs` for a child to write "0" into between fork and exec, which moves
    /// it here before its first instruction of the new program.
    pub fn procs_file(&self) -> io::Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
    }

    /// Whether any task is still in the cgroup.
    pub fn is_populated(&self) -> io::Result<bool> {
        let events = fs::read_to_string(self.path.join("cgroup.events"))?;
        Ok(events.lines().any(|l| l.trim() == "populated 1"))
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        Ok(fs::read_to_string(self.path.join("cgroup.procs"))?
            .lines()
            .filter_map(|pid| pid.trim().parse().ok())
            .collect())
    }

    /// Kills every task in the cgroup: `cgroup.kill` where the kernel has it (5.14+), else a
    /// SIGKILL to each listed process.
    pub fn kill_all(&self) -> io::Result<()> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            return fs::OpenOptions::new()
                .write(true)
                .open(kill)?
                .write_all(b"1");
        }
        for pid in self.pids()? {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        // rmdir fails while tasks remain; kill them and give the kernel a moment to reap.
        for _ in 0..100 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {
                    let _ = self.kill_all();
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        tracing::warn!(path = %self.path.display(), "could not remove job cgroup");
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs`.
/// Async-signal-safe: meant for `pre_exec`, between fork and exec.
pub fn join_in_child(procs: &impl AsRawFd) -> io::Result<()> {
    let rc = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
    if rc == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
            31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
            32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("25 1 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }
}
