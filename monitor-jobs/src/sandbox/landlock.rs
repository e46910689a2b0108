//! Landlock, the sandbox's last layer: applied by a small helper that runs inside bubblewrap
//! (after its mounts; a Landlock-restricted process may not mount) and then runs the job.
//!
//! The helper also keeps the job's sandbox alive until the job's last process has exited:
//! bubblewrap's pid namespace dies with its first process, which would kill a payload's
//! children that outlive the loader before they could be traced. As a child subreaper the
//! helper inherits those orphans and waits for all of them.
//!
//! The job may read and execute anything it can see, write only below the directories it is
//! given, and signal no process outside its own Landlock domain. Denied attempts still reach
//! the kernel probes, so they are reported.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible as _, Ruleset, RulesetAttr as _,
    RulesetCreatedAttr as _, RulesetStatus, Scope, path_beneath_rules,
};

/// The helper binary (monitor-jobs' `monitor-sandbox`) that applies the policy and executes
/// the job.
pub const HELPER: &str = "monitor-sandbox";

/// The newest Landlock ABI this code knows; older kernels get what they support, but a
/// kernel without Landlock is an error (the sandbox is not built, the job does not run).
const ABI_TARGET: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock is not enforced by this kernel ({0:?}): the sandbox cannot be built")]
    NotEnforced(RulesetStatus),
    #[error("building the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("installing the seccomp filter that admits only the native syscall ABI: {0}")]
    NativeAbi(std::io::Error),
    #[error("executing {program:?} under Landlock: {source}")]
    Exec {
        program: OsString,
        source: std::io::Error,
    },
}

/// Restricts the calling thread (and what it executes) to reading everywhere and writing
/// below `writable`.
pub fn restrict(writable: &[PathBuf]) -> Result<(), LandlockError> {
    let all = AccessFs::from_all(ABI_TARGET);
    let read = AccessFs::from_read(ABI_TARGET);
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .scope(Scope::Signal | Scope::AbstractUnixSocket)?
        .create()?
        .add_rules(path_beneath_rules(["/"], read))?
        .add_rules(path_beneath_rules(
            writable.iter().filter(|p| p.exists()),
            all,
        ))?
        .restrict_self()?;
    match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
        other => Err(LandlockError::NotEnforced(other)),
    }
}

/// Restricts this process as [`restrict`] does, admits only the native syscall ABI
/// ([`super::native_abi`]), runs `program`, and waits until it and every
/// process it left behind have exited. Returns `program`'s exit status in the shell's way
/// (128 + N for signal N).
pub fn run_restricted(
    writable: &[PathBuf],
    program: &OsString,
    args: &[OsString],
) -> Result<i32, LandlockError> {
    restrict(writable)?;
    // After Landlock, which set no_new_privs (seccomp needs it, unprivileged).
    super::native_abi::restrict().map_err(LandlockError::NativeAbi)?;
    let exec_error = |source| LandlockError::Exec {
        program: program.clone(),
        source,
    };
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| exec_error(e.into()))?;
    let child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(exec_error)?;
    let main = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut status = 0;
    loop {
        use nix::sys::wait::{WaitStatus, waitpid};
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => status = code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => status = 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            // ECHILD: nobody is left.
            Err(_) => return Ok(status),
        }
    }
}

/// Where the helper is: `$MONITOR_SANDBOX_HELPER`, else a [`HELPER`] next to the running
/// program or one directory up (how packages install it beside monitord and monitorctl, and
/// how cargo lays out test binaries), else on `PATH`.
pub fn find_helper() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MONITOR_SANDBOX_HELPER") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let near = exe.ancestors().skip(1).take(2).map(|dir| dir.join(HELPER));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(HELPER))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    near.chain(on_path).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
