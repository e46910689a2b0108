//! `monitor-sandbox`: the helper the sandbox starts inside bubblewrap to confine the job with
//! Landlock, run it, and wait for everything it leaves behind (see
//! `monitor_jobs::sandbox::landlock`). Not for people: monitord and monitorctl start it.

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::Parser;
use monitor_jobs::sandbox::landlock;

/// Confines CMD with Landlock (read everywhere, write only below each --write DIR, signal
/// nothing outside), runs it, and waits for it and every process it leaves behind.
#[derive(Parser)]
#[command(name = "monitor-sandbox", version)]
struct Args {
    /// A directory the job may write below; may be given more than once.
    #[arg(long, value_name = "DIR")]
    write: Vec<PathBuf>,
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    match landlock::run_restricted(&args.write, program, rest) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("monitor-sandbox: {error}");
            // As env(1) does: 126 when the command could not be run.
            ExitCode::from(126)
        }
    }
}
