//! The Python harness that loads an artifact inside the sandbox (harness.py, shipped inside
//! the binary) and how it is invoked.

use std::{
    ffi::OsString,
    fs, io,
    os::{fd::RawFd, unix::fs::PermissionsExt as _},
    path::Path,
};

use monitor_jobs::sandbox::TOOL_DIR;

const SOURCE: &str = include_str!("harness.py");
const FILE_NAME: &str = "harness.py";

/// What the harness is asked to do.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// The control pipe's write end, inherited by the loader.
    pub control_fd: RawFd,
    /// The gate's read end, inherited by the loader: it loads the artifact only once the
    /// gate opens (see [`monitor_jobs::control::Gate`]).
    pub gate_fd: RawFd,
    /// `pickle`, `joblib`, `dill`, `cloudpickle`, `numpy`, `torch`, `torchscript`, `keras` or
    /// `tensorflow`.
    pub loader: &'a str,
    /// The artifact's path inside the sandbox.
    pub artifact: &'a Path,
    pub exercise: bool,
    pub audit: bool,
    /// How long to stay up after the load while anything the artifact left runs.
    pub linger: std::time::Duration,
}

/// Writes the harness into `tool_dir` (the sandbox's read-only [`TOOL_DIR`]).
pub fn install(tool_dir: &Path) -> io::Result<()> {
    let path = tool_dir.join(FILE_NAME);
    fs::write(&path, SOURCE)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
}

/// The interpreter's arguments: isolated mode (no environment variables, user site or script
/// directory on the path, so nothing outside the loader environment is imported) and no
/// bytecode writes.
pub fn args(inv: &Invocation<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-I".into(), "-B".into()];
    args.push(Path::new(TOOL_DIR).join(FILE_NAME).into());
    args.push("--control-fd".into());
    args.push(inv.control_fd.to_string().into());
    args.push("--gate-fd".into());
    args.push(inv.gate_fd.to_string().into());
    args.push("--loader".into());
    args.push(inv.loader.into());
    args.push("--path".into());
    args.push(inv.artifact.into());
    if inv.exercise {
        args.push("--exercise".into());
    }
    if inv.audit {
        args.push("--audit".into());
    }
    args.push("--linger-ms".into());
    args.push(inv.linger.as_millis().to_string().into());
    args
}
