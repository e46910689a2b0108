//! What the subcommands share: rule files, and handing the probes off when done.

use std::path::PathBuf;

use monitor_engine::probes::Probes;
use monitor_rules::RuleSet;

/// Runs `task` on a current-thread runtime; an error is printed as `monitorctl{context}: ...`
/// and becomes exit status 1.
pub fn block_on(
    context: &str,
    task: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("monitorctl: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitorctl{context}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The default rules (unless `no_defaults`) plus those of each file, validated.
pub fn rule_set(files: &[PathBuf], no_defaults: bool) -> anyhow::Result<RuleSet> {
    let mut rules = if no_defaults {
        RuleSet::default()
    } else {
        RuleSet::defaults()
    };
    for path in files {
        // A file may use the lists, and add exceptions to the rules, of those before it.
        rules.add_file(path)?;
    }
    if rules.is_empty() {
        anyhow::bail!("no rules: --no-default-rules needs at least one --rules FILE");
    }
    Ok(rules)
}

/// `--ring-buffer-kib`: what the kernel accepts for a ring buffer.
pub fn parse_ring_kib(s: &str) -> Result<u32, String> {
    use monitor_common::event::{RING_BUFFER_KIB_RULE, ring_buffer_kib};
    let kib: u32 = s.parse().map_err(|e| format!("{e}"))?;
    ring_buffer_kib(kib).ok_or_else(|| format!("must be {RING_BUFFER_KIB_RULE}"))?;
    Ok(kib)
}

/// Detaching the ~120 tracepoints takes seconds: the kernel waits for an RCU grace period per
/// tracepoint under one mutex, whether we detach them or our exit does. A child process keeps
/// the links and releases them, so the caller gets the command's status at once. It keeps
/// them attached for `$MONITOR_PROBE_LINGER` seconds first (default 10), for the next scan
/// to adopt: back-to-back scans then attach and detach nothing (see `Probes::release_lingering`).
///
/// Whoever closes a link's last reference pays for its grace period. The child therefore waits
/// until the parent has closed its own references (cheap while the child holds them); were both
/// to close at once, the parent's exit would pay for every link the child had closed first, and
/// the command would end seconds late.
pub fn release_in_background(probes: Probes) {
    use nix::fcntl::OFlag;
    use nix::unistd::{ForkResult, fork, pipe2, setsid};
    let Ok((parent_closed, parent_closing)) = pipe2(OFlag::O_CLOEXEC) else {
        drop(probes);
        return;
    };
    // SAFETY: single-threaded here (current-thread runtime, no worker threads); the child only
    // redirects its standard streams, detaches, waits on a pipe, drops the probes and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(parent_closing);
            // Nobody may wait on our output: a reader of the parent's stdout would see no EOF.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            let _ = setsid();
            // End of file once the parent has dropped its references (or has died).
            let mut byte = [0u8; 1];
            while let Err(nix::errno::Errno::EINTR) | Ok(1..) =
                nix::unistd::read(&parent_closed, &mut byte)
            {}
            probes.release_lingering(monitor_engine::probes::pins::linger_from_env());
            // SAFETY: ends the child without running the parent's exit handlers twice.
            unsafe { nix::libc::_exit(0) }
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(parent_closed);
            // Not the last references: the child holds them too, so this costs no grace period.
            drop(probes);
            drop(parent_closing);
        }
        Err(_) => drop(probes),
    }
}

/// A table for the terminal: a header and aligned columns, no borders (easy to read, to
/// `grep` and to `awk`).
pub fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header);
    table
}
