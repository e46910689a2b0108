//! Landlock, the sandbox's last layer: applied by a small helper that runs inside bubblewrap
//! (after its mounts; a Landlock-restricted process may not mount) and then executes the job.
//!
//! The job may read and execute anything it can see, write only below the directories it is
//! given, and signal no process outside its own Landlock domain. Denied attempts still reach
//! the kernel probes, so they are reported.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible as _, Ruleset, RulesetAttr as _,
    RulesetCreatedAttr as _, RulesetStatus, Scope, path_beneath_rules,
};

/// The subcommand of `monitorctl` that applies the policy and executes the job.
pub const HELPER_SUBCOMMAND: &str = "sandbox-exec";

/// The newest Landlock ABI this code knows; older kernels get what they support, but a
/// kernel without Landlock is an error (the sandbox is not built, the job does not run).
const ABI_TARGET: ABI = ABI::V6;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock is not enforced by this kernel ({0:?}): the sandbox cannot be built")]
    NotEnforced(RulesetStatus),
    #[error("building the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
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

/// Restricts this process as [`restrict`] does, then replaces it with `program`. Returns only
/// on failure.
pub fn exec_restricted(
    writable: &[PathBuf],
    program: &OsString,
    args: &[OsString],
) -> LandlockError {
    if let Err(e) = restrict(writable) {
        return e;
    }
    let source = Command::new(program).args(args).exec();
    LandlockError::Exec {
        program: program.clone(),
        source,
    }
}

/// Where the helper is: `$MONITOR_SANDBOX_HELPER`, else the running program when it is
/// monitorctl, else a `monitorctl` next to the running program or one directory up (how
/// cargo lays out test binaries), else on `PATH`.
pub fn find_helper() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MONITOR_SANDBOX_HELPER") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "monitorctl") {
        return Some(exe);
    }
    let near = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("monitorctl"));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("monitorctl"))
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
