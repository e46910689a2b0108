//! `monitorctl sandbox-exec`: the helper the sandbox starts inside bubblewrap to confine the
//! job with Landlock, run it, and wait for everything it leaves behind. Not for people;
//! hidden from --help.

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::Args;
use monitor_daemon::sandbox::landlock;

#[derive(Args)]
pub struct SandboxExecArgs {
    /// A directory the job may write below; may be given more than once.
    #[arg(long, value_name = "DIR")]
    write: Vec<PathBuf>,
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn main(args: SandboxExecArgs) -> ExitCode {
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    match landlock::run_restricted(&args.write, program, rest) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("monitorctl sandbox-exec: {error}");
            // As env(1) does: 126 when the command could not be run.
            ExitCode::from(126)
        }
    }
}
