//! monitord: watches what model artifacts do when loaded, for every user of this host.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use monitor_daemon as daemon;
use monitor_daemon::config::Config;

/// The monitor daemon: scans model artifacts in a sandbox under eBPF watch, keeps every
/// report, and serves them over a Unix socket (and /metrics for Prometheus).
///
/// Needs root. Configuration: a TOML file whose every key has a default (`--print-config`
/// shows them all); without --config, /etc/monitor/monitord.toml if it exists.
#[derive(Parser)]
#[command(name = "monitord", version, about, long_about)]
struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the configuration in force (defaults filled in) and exit.
    #[arg(long)]
    print_config: bool,
    /// Log as JSON lines (for journald or a log shipper).
    #[arg(long)]
    json_logs: bool,
    /// Print the manual page (roff, section 8) and exit: `monitord --man | man -l -`.
    #[arg(long)]
    man: bool,
}

const DEFAULT_CONFIG: &str = "/etc/monitor/monitord.toml";

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        use clap::CommandFactory as _;
        let page = clap_mangen::Man::new(Args::command()).section("8");
        return match page.render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("monitord --man: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // What the daemon writes is root's alone unless it says otherwise (the unit's UMask=0077,
    // also when it is started by hand): reports, uploads, the database, the job's copies.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a terminal only: journald, a file or a container's log get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.json_logs {
        logs.json().init();
    } else {
        logs.init();
    }
    let config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("monitord: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", printed_config(&config));
        return ExitCode::SUCCESS;
    }
    // Several workers, whatever the machine: a request that waits on the store or a job that
    // judges a flood takes one of them, never the one that answers /healthz. Blocking file and
    // database work goes to the blocking pool, and the ring buffer's reader has a thread of its
    // own (see monitor_engine::router).
    let workers = std::thread::available_parallelism().map_or(4, |n| n.get().max(4));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("monitord-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("monitord: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    raise_open_file_limit();
    let ran = runtime.block_on(daemon::run(config));
    // Work still on the blocking pool (a read on a hung file system) does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every API connection is a descriptor: the soft open-file limit (often 1024) goes up to the
/// hard one, and `max_connections` stays within it (see daemon::run).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("monitord: raising the open-file limit to {hard}: {e}");
    }
}

/// The configuration as TOML, every key shown: TOML has no null, so a setting that is off
/// (`metrics_listen`, `export.path`, ...) is shown commented out, with an example value.
fn printed_config(config: &Config) -> String {
    let text = toml::to_string(config).expect("the configuration serializes");
    let unset: &[(&str, &str, &str)] = &[
        ("", "metrics_listen", "\"127.0.0.1:9464\""),
        ("[discovery]", "kill_at", "\"critical\""),
        (
            "[discovery]",
            "kill_in_kernel",
            "[\"execve\", \"execveat\"]",
        ),
        ("[export]", "path", "\"/var/log/monitor/events.jsonl\""),
    ];
    let mut out = String::new();
    let mut table = "";
    let mut pending: Vec<String> = Vec::new();
    let flush = |out: &mut String, table: &str, pending: &mut Vec<String>| {
        for (t, key, example) in unset {
            if *t == table && !pending.iter().any(|l| l.starts_with(&format!("{key} ="))) {
                out.push_str(&format!("# {key} = {example}\n"));
            }
        }
        pending.clear();
    };
    for line in text.lines() {
        if line.starts_with('[') {
            flush(&mut out, table, &mut pending);
            table = unset
                .iter()
                .map(|(t, _, _)| *t)
                .find(|t| *t == line.trim())
                .unwrap_or("?");
        }
        pending.push(line.to_owned());
        out.push_str(line);
        out.push('\n');
    }
    flush(&mut out, table, &mut pending);
    out
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, daemon::config::ConfigError> {
    match path {
        Some(path) => Config::load(path),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG))
        }
        None => Ok(Config::default()),
    }
}
