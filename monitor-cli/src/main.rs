//! monitorctl: the command line of monitor.

mod common;
mod daemon_cmds;
mod duration;
mod probes;
mod run;
mod scan;
mod targets;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Watch what programs and model artifacts do, from the kernel (eBPF).
///
/// Every command that loads probes needs root (CAP_BPF and CAP_PERFMON) and a kernel with BTF.
#[derive(Parser)]
#[command(name = "monitorctl", version, about, long_about)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Scan(scan::ScanArgs),
    Run(run::RunArgs),
    Watch(watch::WatchArgs),
    /// What monitord is doing: kernel, probes, queue, the scans running, watches, the loader
    /// environment.
    Status(daemon_cmds::StatusArgs),
    /// The probes that scans without monitord keep pinned in bpffs (list, unpin).
    ///
    /// `monitorctl scan --local` and `monitorctl run` keep the verified kernel programs and
    /// their maps pinned under /sys/fs/bpf/monitor (root's alone), so that the next such scan
    /// only checks, resets and attaches them. $MONITOR_PROBE_PINS names another directory on a
    /// bpffs; MONITOR_PROBE_PINS=off pins nothing. monitord loads its own.
    ///
    /// A scan's hooks stay attached for $MONITOR_PROBE_LINGER seconds after it ends (default
    /// 10; 0 detaches at once), and the next scan in that time takes them over: back-to-back
    /// scans attach and detach nothing (detaching takes the kernel seconds). Meanwhile every
    /// process pays for the attached hooks, as during a scan.
    Probes {
        #[command(subcommand)]
        command: probes::ProbesCommand,
    },
    /// The reports monitord keeps.
    Reports {
        #[command(flatten)]
        daemon: daemon_cmds::DaemonArgs,
        #[command(subcommand)]
        command: daemon_cmds::ReportsCommand,
    },
    /// monitord's rules.
    Rules {
        #[command(flatten)]
        daemon: daemon_cmds::DaemonArgs,
        #[command(subcommand)]
        command: daemon_cmds::RulesCommand,
    },
    /// Print a shell completion script: `monitorctl completions bash > /etc/bash_completion.d/monitorctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `monitorctl man | man -l -`; with --out-dir, write a page
    /// for monitorctl and one for every subcommand (monitorctl-scan.1, monitorctl-watch-add.1,
    /// ...) into DIR, as the packages install them.
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Scan(args) => scan::main(args),
        Command::Run(args) => run::main(args),
        Command::Watch(args) => watch::main(args),
        Command::Status(args) => daemon_cmds::main(
            args.daemon,
            daemon_cmds::Request::Status { json: args.json },
        ),
        Command::Probes { command } => probes::main(command),
        Command::Reports { daemon, command } => {
            daemon_cmds::main(daemon, daemon_cmds::Request::Reports(command))
        }
        Command::Rules { daemon, command } => {
            daemon_cmds::main(daemon, daemon_cmds::Request::Rules(command))
        }
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "monitorctl",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { out_dir } => {
            use clap::CommandFactory as _;
            let written = match out_dir {
                Some(dir) => std::fs::create_dir_all(&dir)
                    .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir)),
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("monitorctl man: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
