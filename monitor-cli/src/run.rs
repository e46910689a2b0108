//! `monitorctl run -- CMD ARGS...`: one-time monitoring of a command and all its descendants.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;

use crate::common;
use clap::Args;
use monitor_common::syscall::Class;
use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_engine::trace::{Event, What};
use monitor_jobs::render::{self, Style};
use monitor_jobs::run::{Output, RunSpec, RunSummary, SpawnError};
use monitor_jobs::sandbox::SandboxOptions;
use monitor_rules::{RuleSet, Severity};

/// Exit status when monitor itself failed (as timeout(1) and env(1) do).
const EXIT_MONITOR_FAILED: u8 = 125;

/// Run a command under watch and report every traced syscall of it and its descendants.
///
/// The command runs in a cgroup of its own that is watched before its first instruction; its
/// children stay in it and are traced too, until the last of them exits. monitorctl exits with
/// the command's exit status (128+N when signal N ended it), or 125 when monitoring failed.
///
/// Examples:
///   monitorctl run --print-trace -- sh -c 'cat /etc/hostname; exec /bin/true'
///   monitorctl run --json --output trace.jsonl -- python3 load_model.py model.pkl
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// Print every event as it happens (to stderr, or to --output).
    #[arg(long)]
    print_trace: bool,
    /// Real-time mode: every event and finding is written the moment it is judged and
    /// flushed line by line, so `tail -f` on --output follows it (implies --print-trace).
    /// Findings are always reported as they happen; --terminate-on-high-risk acts on them.
    #[arg(long)]
    realtime: bool,
    /// Write JSON lines instead of text: one object per event (with --print-trace) and a last
    /// `{"type":"summary",...}` line.
    #[arg(long)]
    json: bool,
    /// Write the trace and summary to FILE instead of stderr.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print only events of these classes (comma separated): process, file, network, memory,
    /// privilege, kernel. Process creation, exec and exit count as `process`. Default: all.
    #[arg(long, value_name = "CLASSES", value_delimiter = ',', value_parser = parse_class)]
    trace: Vec<Class>,
    /// Add the rules of FILE (YAML) to the defaults; may be given more than once.
    #[arg(long, value_name = "FILE")]
    rules: Vec<PathBuf>,
    /// Judge with the --rules files only.
    #[arg(long)]
    no_default_rules: bool,
    /// Kill the command and everything it started at the first finding of high severity or
    /// above.
    #[arg(long)]
    terminate_on_high_risk: bool,
    /// Run the command in a sandbox: as a user of its own (a fresh uid per job, no other
    /// job's), no network but loopback, the host file system read-only, private /tmp, a decoy
    /// home with honeytoken credentials, and a writable scratch directory at /work (the
    /// default working directory). Its files must be readable by any user. Needs bubblewrap.
    #[arg(long)]
    sandbox: bool,
    /// Working directory of the command.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Kill the command and everything it started after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    timeout: Option<std::time::Duration>,
    /// Size of the kernel ring buffer in KiB (a power of two from 4 to 1048576).
    #[arg(long, value_name = "KIB", default_value_t = monitor_common::event::RING_BUFFER_DEFAULT_KIB, value_parser = common::parse_ring_kib)]
    ring_buffer_kib: u32,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Parses one `--trace` class by its name in the syscall table.
fn parse_class(s: &str) -> Result<Class, String> {
    Class::ALL
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| {
            let names: Vec<_> = Class::ALL.iter().map(|c| c.name()).collect();
            format!("unknown class (one of: {})", names.join(", "))
        })
}

/// The class of an event: its syscall's, or `process` for process creation, exec and exit.
fn class_of(event: &Event) -> Class {
    match &event.what {
        What::Syscall(sc) => sc.class,
        What::Fork { .. } | What::Exec { .. } | What::Exit { .. } => Class::Process,
    }
}

pub fn main(args: RunArgs) -> ExitCode {
    match run(args) {
        Ok(summary) => ExitCode::from(summary.exit_code.clamp(0, 255) as u8),
        Err(e) => {
            let code = match e.downcast_ref::<SpawnError>() {
                Some(s) if s.source.kind() == io::ErrorKind::NotFound => 127,
                Some(_) => 126,
                None => EXIT_MONITOR_FAILED,
            };
            eprintln!("monitorctl: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<RunSummary> {
    let (program, rest) = args.command.split_first().context("no command given")?;
    let spec = RunSpec {
        program: program.clone(),
        args: rest.to_vec(),
        cwd: args.cwd.clone(),
        rules: rule_set(&args)?,
        terminate_at: args.terminate_on_high_risk.then_some(Severity::High),
        sandbox: args.sandbox.then(SandboxOptions::default),
        timeout: args.timeout,
    };
    let config = ProbeConfig {
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
    };
    let style = if args.json { Style::Json } else { Style::Text };

    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(io::stderr().lock()),
    };
    let mut write_error = None;
    let print = args.print_trace || args.realtime;
    let realtime = args.realtime;
    let classes = args.trace.clone();
    let selected = |e: &Event| classes.is_empty() || classes.contains(&class_of(e));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let probes = Probes::load_embedded(&config).context("loading the kernel probes")?;
    let router = runtime
        .block_on(async { Router::start(probes) })
        .context("starting the record router")?;
    let summary = runtime.block_on(monitor_jobs::run::run(&spec, &router, |output| {
        if write_error.is_some() {
            return;
        }
        let written = match output {
            Output::Event(event) if print && selected(event) => {
                render::write_event(&mut out, style, event)
            }
            Output::Event(_) => Ok(()),
            Output::Finding(finding) => render::write_finding(&mut out, style, finding),
            Output::Control(_) => Ok(()),
        };
        let written = written.and_then(|()| if realtime { out.flush() } else { Ok(()) });
        if let Err(e) = written {
            write_error = Some(e);
        }
    }))?;
    if let Some(e) = write_error {
        return Err(e).context("writing the trace");
    }
    write_summary(&mut out, style, &summary).context("writing the summary")?;
    out.flush().context("writing the trace")?;
    drop(out);
    if let Some(probes) = runtime.block_on(router.stop()) {
        common::release_in_background(probes);
    }
    Ok(summary)
}

fn write_summary(out: &mut impl Write, style: Style, s: &RunSummary) -> io::Result<()> {
    match style {
        Style::Json => {
            let mut value = serde_json::to_value(s)?;
            value["type"] = "summary".into();
            serde_json::to_writer(&mut *out, &value)?;
            writeln!(out)
        }
        Style::Text => {
            writeln!(
                out,
                "monitor: {} events from {} processes; command exited with {}",
                s.events, s.processes, s.exit_code
            )?;
            let findings: Vec<String> = s
                .findings
                .iter()
                .rev()
                .map(|(severity, n)| format!("{n} {severity}"))
                .collect();
            if findings.is_empty() {
                writeln!(out, "monitor: no findings")?;
            } else {
                writeln!(out, "monitor: findings: {}", findings.join(", "))?;
            }
            if let Some(rule) = &s.terminated_by {
                writeln!(
                    out,
                    "monitor: the command was killed at the first finding of rule {rule}"
                )?;
            }
            if !s.complete {
                writeln!(
                    out,
                    "monitor: WARNING: the trace is incomplete: {} records lost (ring buffer full), {} undecodable",
                    s.dropped, s.malformed
                )?;
            }
            Ok(())
        }
    }
}

/// The default rules (unless turned off) plus each --rules file.
fn rule_set(args: &RunArgs) -> anyhow::Result<RuleSet> {
    common::rule_set(&args.rules, args.no_default_rules)
}
