//! The sandbox a watched job runs in: bubblewrap (a well-kept namespace builder) started as an
//! unprivileged user, so the kernel sees that uid, not a root mapped into a namespace.
//!
//! Inside: new user, pid, net (loopback only), ipc, uts and cgroup namespaces; the host's file
//! system read-only; private /tmp, /var/tmp, /dev/shm and /run; /home and /root hidden; a decoy
//! home full of honeytokens at [`decoy::HOME`]; a writable scratch directory at
//! [`WORK_DIR`]; resource limits; and bubblewrap dies with its parent, so nothing outlives the
//! monitor.
//!
//! Inside bubblewrap, a helper ([`landlock`]) confines the job with Landlock before it
//! starts: writes only to its scratch, temporary and home directories, no signals to
//! processes outside; then with a seccomp filter that admits only the native syscall ABI
//! ([`native_abi`]: a 32-bit call would pass the probes unseen). Not yet: cgroup memory limits (this host's cgroup v2 has no memory
//! controller; RLIMIT_AS stands in).

pub mod decoy;
pub mod landlock;
pub mod native_abi;
pub mod user;

pub use user::{JOB_USER_NAME, SandboxUser};

use monitor_engine::decode::FileId;

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

/// The scratch directory inside the sandbox, writable by the job.
pub const WORK_DIR: &str = "/work";

/// Where monitor's own files for the job (the scan harness) are, read-only (under a tmpfs:
/// bubblewrap cannot create a mount point in the read-only host view).
pub const TOOL_DIR: &str = "/run/monitor";

/// Private tmpfs directories: nothing of the host's shows there.
const PRIVATE_DIRS: [&str; 6] = ["/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root"];

/// Where the Landlock helper is bound inside (the host path may be hidden, under /work say).
const HELPER_PATH: &str = "/run/monitor-sandbox-exec";

/// What the job may write, inside the sandbox (Landlock's allow list).
const WRITABLE: [&str; 7] = [
    WORK_DIR,
    decoy::HOME,
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/run",
    "/dev",
];

/// Why a sandbox could not be built. A job that cannot be sandboxed does not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` or `cargo xtask setup`"
    )]
    NoBubblewrap,
    #[error(
        "the sandbox helper (monitor-sandbox, which applies Landlock inside the sandbox) was not \
         found next to this program or on PATH; set MONITOR_SANDBOX_HELPER to its path"
    )]
    NoHelper,
    #[error("preparing the sandbox's directories: {0}")]
    Prepare(#[from] io::Error),
    #[error("no user to run the job as: {0}")]
    NoUser(#[from] user::NoFreeUser),
}

/// Who the job runs as, and its limits.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub user: SandboxUser,
    /// RLIMIT_AS in bytes (address space; ML frameworks reserve a lot of it).
    pub max_address_space: u64,
    /// RLIMIT_FSIZE in bytes: the largest file the job may write.
    pub max_file_size: u64,
    /// The size of each private tmpfs (/tmp, /var/tmp, /dev/shm, /run, and the scratch
    /// directory [`WORK_DIR`]) in bytes. tmpfs lives in the host's memory and RLIMIT_FSIZE
    /// bounds one file only, so without this a job writing file after file would fill the
    /// host's RAM.
    pub max_tmpfs_size: u64,
    /// The size of the decoy home's tmpfs in bytes: a home holds dotfiles and caches (Keras
    /// writes `~/.keras/keras.json`), not data.
    pub max_home_size: u64,
    /// RLIMIT_NOFILE.
    pub max_open_files: u64,
    /// RLIMIT_NPROC: processes and threads of the job's user, host-wide, so that a fork bomb
    /// stops there (the pid namespace alone does not bound it, and this host's cgroup v2 may
    /// lack the pids controller). Per job with [`SandboxUser::PerJob`].
    pub max_processes: u64,
    /// Environment of the job besides PATH, HOME, USER, LOGNAME and TMPDIR (the host's is not
    /// passed on: it may hold secrets).
    pub env: Vec<(String, String)>,
    /// Confine the job with Landlock too (needs the helper, see [`landlock::find_helper`]).
    pub landlock: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            user: SandboxUser::PerJob,
            max_address_space: default_address_space(),
            max_file_size: 1 << 30,
            max_tmpfs_size: 1 << 30,
            max_home_size: 64 << 20,
            max_open_files: 4096,
            max_processes: 2048,
            env: Vec::new(),
            landlock: true,
        }
    }
}

/// A prepared sandbox: its decoy home and scratch directory on the host. Dropping it removes
/// them.
#[derive(Debug)]
pub struct Sandbox {
    options: SandboxOptions,
    user: user::Lease,
    bwrap: PathBuf,
    /// The Landlock helper, when the job is to be confined with Landlock.
    helper: Option<PathBuf>,
    dir: tempfile::TempDir,
    tools: PathBuf,
    home: PathBuf,
    work: PathBuf,
}

impl Sandbox {
    pub fn create(options: SandboxOptions) -> Result<Self, SandboxError> {
        let bwrap = find_in_path("bwrap").ok_or(SandboxError::NoBubblewrap)?;
        let helper = match options.landlock {
            true => Some(landlock::find_helper().ok_or(SandboxError::NoHelper)?),
            false => None,
        };
        let dir = tempfile::Builder::new()
            .prefix("monitor-sandbox-")
            .tempdir()?;
        // bubblewrap runs as the job's user and must reach what it binds; nobody else may
        // list it. Every mode here is set, not left to the umask (monitord's is 0077).
        let mode = |path: &Path, mode| fs::set_permissions(path, fs::Permissions::from_mode(mode));
        mode(dir.path(), 0o711)?;
        let user = user::Lease::take(options.user)?;
        let home = decoy::create(dir.path())?;
        // The artifact's copy goes here: the job's user alone may read it.
        let work = dir.path().join("work");
        fs::create_dir(&work)?;
        mode(&work, 0o700)?;
        std::os::unix::fs::chown(&work, Some(user.uid), Some(user.gid))?;
        let etc = dir.path().join("etc");
        fs::create_dir(&etc)?;
        mode(&etc, 0o755)?;
        let host = |path: &str| fs::read_to_string(path).unwrap_or_default();
        // As the job sees itself, inside its user namespace.
        fs::write(
            etc.join("passwd"),
            user::passwd(
                &host("/etc/passwd"),
                user::INSIDE_ID,
                user::INSIDE_ID,
                decoy::HOME,
            ),
        )?;
        fs::write(
            etc.join("group"),
            user::group(&host("/etc/group"), user::INSIDE_ID),
        )?;
        for file in ["passwd", "group"] {
            mode(&etc.join(file), 0o644)?;
        }
        let tools = dir.path().join("tools");
        fs::create_dir(&tools)?;
        mode(&tools, 0o755)?;
        Ok(Sandbox {
            options,
            user,
            bwrap,
            helper,
            dir,
            tools,
            home,
            work,
        })
    }

    /// The program that builds the sandbox and starts the job in it (bubblewrap).
    pub fn launcher(&self) -> &Path {
        &self.bwrap
    }

    /// The uid and gid the job runs as.
    pub fn user(&self) -> (u32, u32) {
        (self.user.uid, self.user.gid)
    }

    /// Where to put files for the job on the host: each appears in [`WORK_DIR`], read-only
    /// (the scratch directory itself is a tmpfs, so that what the job writes there stays
    /// within its size and off the host's disk). The directory is the job user's, mode 0700:
    /// no other user of the host reads the artifact's copy.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// The decoy home's template on the host (inside: [`decoy::HOME`], a copy on a tmpfs).
    pub fn home_dir(&self) -> &Path {
        &self.home
    }

    /// Monitor's files for the job as the host sees them (inside: [`TOOL_DIR`], read-only).
    pub fn tool_dir(&self) -> &Path {
        &self.tools
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The honeytokens of the decoy home by identity, as the sandbox's processes see them
    /// (bubblewrap copies them onto a tmpfs that exists only inside): asked of the first of
    /// `pids` that runs inside (in a mount namespace other than ours). Empty, and said in the
    /// log, when none does.
    pub fn decoys_seen_by(&self, pids: &[u32]) -> Vec<(FileId, String)> {
        let ours = fs::read_link("/proc/self/ns/mnt").ok();
        for pid in pids {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            if fs::read_link(proc.join("ns/mnt")).ok() == ours {
                continue;
            }
            let found = decoy::identities(&proc.join("root"));
            if !found.is_empty() {
                return found;
            }
        }
        tracing::warn!(
            "no process of the sandbox showed its decoy home: honeytokens are matched by path only"
        );
        Vec::new()
    }

    /// A command that runs `program` inside the sandbox, in `cwd` (default: [`WORK_DIR`]).
    /// Call [`Sandbox::drop_privileges`] on it last, after any other `pre_exec` step that
    /// needs root (joining a cgroup).
    pub fn command(
        &self,
        program: &OsStr,
        args: &[impl AsRef<OsStr>],
        cwd: Option<&Path>,
    ) -> io::Result<Command> {
        let mut cmd = Command::new(&self.bwrap);
        let bind = |cmd: &mut Command, flag: &str, src: &Path, dst: &str| {
            cmd.arg(flag).arg(src).arg(dst);
        };
        cmd.args(["--unshare-all", "--die-with-parent", "--new-session"]);
        // What the job sees of itself looks like an ordinary host's: a user's uid (mapped in
        // its user namespace), a worker's hostname.
        let inside = user::INSIDE_ID.to_string();
        cmd.args(["--uid", &inside, "--gid", &inside]);
        cmd.args(["--hostname", "ml-worker"]);
        host_root(&mut cmd, Path::new("/"))?;
        cmd.args(["--dev", "/dev", "--proc", "/proc"]);
        let tmpfs_size = self.options.max_tmpfs_size.to_string();
        for private in PRIVATE_DIRS {
            cmd.args(["--size", &tmpfs_size, "--tmpfs", private]);
        }
        // No writable host directory: the job's every write lands on a tmpfs of bounded size.
        let home = decoy::in_sandbox(&self.home, self.options.max_home_size)?;
        cmd.args(&home.args);
        let fds = home.fds;
        // SAFETY: inherit_in_child only calls fcntl(2), which is async-signal-safe. The
        // closure owns the fds, so they stay open until the command is spawned.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    crate::control::inherit_in_child(std::os::fd::AsRawFd::as_raw_fd(fd))?;
                }
                Ok(())
            });
        }
        let etc = self.dir.path().join("etc");
        bind(&mut cmd, "--ro-bind", &etc.join("passwd"), "/etc/passwd");
        bind(&mut cmd, "--ro-bind", &etc.join("group"), "/etc/group");
        cmd.args(["--size", &tmpfs_size, "--tmpfs", WORK_DIR]);
        for entry in fs::read_dir(&self.work)? {
            let entry = entry?;
            let inside = Path::new(WORK_DIR).join(entry.file_name());
            cmd.arg("--ro-bind").arg(entry.path()).arg(inside);
        }
        bind(&mut cmd, "--ro-bind", &self.tools, TOOL_DIR);
        cmd.args([
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
        ]);
        cmd.args(["--setenv", "HOME", decoy::HOME]);
        cmd.args([
            "--setenv",
            "USER",
            JOB_USER_NAME,
            "--setenv",
            "LOGNAME",
            JOB_USER_NAME,
        ]);
        cmd.args(["--setenv", "TMPDIR", "/tmp"]);
        // Without SHELL, bash looks the user up in /etc/passwd (a finding of its own).
        cmd.args(["--setenv", "SHELL", "/bin/sh"]);
        for (name, value) in &self.options.env {
            cmd.arg("--setenv").arg(name).arg(value);
        }
        cmd.arg("--chdir").arg(cwd.unwrap_or(Path::new(WORK_DIR)));
        if let Some(helper) = &self.helper {
            bind(&mut cmd, "--ro-bind", helper, HELPER_PATH);
        }
        // Every mount point is made: the root itself becomes read-only, as the host's is.
        cmd.args(["--remount-ro", "/"]);
        cmd.arg("--");
        if self.helper.is_some() {
            cmd.arg(HELPER_PATH);
            for dir in WRITABLE {
                cmd.args(["--write", dir]);
            }
            cmd.arg("--");
        }
        cmd.arg(program).args(args);
        Ok(cmd)
    }

    /// Adds the last `pre_exec` step: resource limits, then the switch to the job's user.
    pub fn drop_privileges(&self, cmd: &mut Command) {
        let o = self.options.clone();
        let (uid, gid) = (self.user.uid, self.user.gid);
        // SAFETY: only async-signal-safe calls (setrlimit, setgroups, setgid, setuid).
        unsafe {
            cmd.pre_exec(move || {
                limit(libc::RLIMIT_AS, o.max_address_space)?;
                limit(libc::RLIMIT_FSIZE, o.max_file_size)?;
                limit(libc::RLIMIT_NOFILE, o.max_open_files)?;
                limit(libc::RLIMIT_NPROC, o.max_processes)?;
                limit(libc::RLIMIT_CORE, 0)?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                Ok(())
            });
        }
    }
}

/// The host's file system, read-only, on bubblewrap's own root (a tmpfs): each top-level
/// directory and file of `host` bound at its name, each symlink (`/bin -> usr/bin`) made
/// again, except what the sandbox makes itself (/proc, /dev, the private directories,
/// [`WORK_DIR`]). Not the host's `/` bound whole: bubblewrap could then make no mount point
/// that the host lacks, and a host has no `/work`.
fn host_root(cmd: &mut Command, host: &Path) -> io::Result<()> {
    let own: Vec<&str> = ["/proc", "/dev", WORK_DIR]
        .into_iter()
        .chain(PRIVATE_DIRS)
        .filter_map(|p| p.strip_prefix('/'))
        .filter(|p| !p.contains('/'))
        .collect();
    let mut entries: Vec<_> = fs::read_dir(host)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if own.iter().any(|o| OsStr::new(o) == name) {
            continue;
        }
        let inside = Path::new("/").join(&name);
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            cmd.arg("--symlink")
                .arg(fs::read_link(entry.path())?)
                .arg(inside);
        } else if kind.is_dir() || kind.is_file() {
            // -try: an entry removed meanwhile is not an error.
            cmd.arg("--ro-bind-try").arg(entry.path()).arg(inside);
        }
    }
    Ok(())
}

/// 32 GiB (frameworks reserve much more address space than they use), but at most half the
/// machine's memory: this host's cgroup v2 may have no memory controller, and a payload that
/// fills its address space must not push the host into the OOM killer.
fn default_address_space() -> u64 {
    const CAP: u64 = 32 << 30;
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match total_kib {
        Some(kib) => CAP.min(kib * 1024 / 2).max(4 << 30),
        None => CAP,
    }
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: plain syscall on a local struct.
    check(unsafe { libc::setrlimit(resource, &rl) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin").join(name)])
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_binds_the_hosts_entries_but_not_what_the_sandbox_makes() {
        let host = tempfile::tempdir().unwrap();
        for dir in ["usr", "etc", "work", "tmp", "proc", "run", "var"] {
            fs::create_dir(host.path().join(dir)).unwrap();
        }
        fs::write(host.path().join(".dockerenv"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", host.path().join("bin")).unwrap();
        let mut cmd = Command::new("bwrap");
        host_root(&mut cmd, host.path()).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| {
                a.to_string_lossy()
                    .replace(&*host.path().to_string_lossy(), "H")
            })
            .collect();
        assert_eq!(
            args,
            [
                "--ro-bind-try",
                "H/.dockerenv",
                "/.dockerenv",
                "--symlink",
                "usr/bin",
                "/bin",
                "--ro-bind-try",
                "H/etc",
                "/etc",
                "--ro-bind-try",
                "H/usr",
                "/usr",
                "--ro-bind-try",
                "H/var",
                "/var",
            ]
        );
    }
}
