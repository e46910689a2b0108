//! `monitorctl scan ARTIFACT`: load a model artifact with its framework in a sandbox, under
//! the kernel watch, and say whether loading it did anything dangerous.

use std::{
    fs::File,
    io::{self, BufWriter, IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use monitor_daemon::{
    daemon::client::{self, Client},
    probes::ProbeConfig,
    render::{self, Style},
    rules::Severity,
    run::Output,
    scan::{self, LazyProbes, Progress, ScanReport, ScanSpec, format::Limits, job::default_python},
};

use crate::common;

/// Scan a model artifact by loading it, and report what loading did.
///
/// The artifact's format is detected from its content: pickle (protocols 0-5), joblib, dill,
/// cloudpickle, NumPy .npy/.npz, PyTorch (zip and legacy), Keras (.keras, .h5), TensorFlow
/// SavedModel directories, and safetensors (checked natively: nothing runs). A private copy
/// is loaded with the framework a user would use, in a sandbox (no network but loopback, a
/// read-only host, a decoy home full of honeytoken credentials, Landlock, an unprivileged
/// user), while the kernel probes trace every process it starts. Framework imports happen in
/// a set-up phase that raises no findings; what follows is judged by the rules: the load, the
/// exercise (the model called on dummy input, where its format runs code when called), a
/// linger while anything the load left behind still runs (a thread, a child, a timer: as a
/// server would keep it) and the teardown. Python audit-hook evidence is judged too.
///
/// Exit codes: 0 clean, 1 a finding at --fail-on or above, 2 the scan could not be completed
/// (never reported as clean). A threat seen wins over an error.
///
/// Needs root and the loader environment (`cargo xtask loader-env`).
///
/// Examples:
///   monitorctl scan model.pkl
///   monitorctl scan --format json --report-file report.json model.keras
///   monitorctl scan --format sarif --fail-on medium ./saved_model_dir
///   monitorctl scan --no-exercise --linger 0 big-checkpoint.pt   # load only, quickest
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ScanArgs {
    /// The artifact: a file, or a TensorFlow SavedModel directory.
    #[arg(value_name = "ARTIFACT")]
    artifact: PathBuf,
    /// Report format on stdout (and in --report-file).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Also write the report to FILE.
    #[arg(long, value_name = "FILE")]
    report_file: Option<PathBuf>,
    /// Do not print the report on stdout (with --report-file, or when the exit code is all
    /// you need).
    #[arg(long)]
    no_print_res: bool,
    /// Write every traced event to FILE, as JSON lines.
    #[arg(long, value_name = "FILE")]
    trace_file: Option<PathBuf>,
    /// Print every traced event to stderr as it happens, strace-like.
    #[arg(long)]
    print_trace: bool,
    /// Exit with 1 when a finding of this severity or above is seen.
    #[arg(long, value_name = "SEVERITY", default_value = "high", value_parser = parse_severity)]
    fail_on: Severity,
    /// Do not call the loaded model. By default it is called on dummy input where its format
    /// runs code when called (Keras predict, SavedModel signatures, torch modules, objects with
    /// predict or __call__): some payloads fire only at inference.
    #[arg(long)]
    no_exercise: bool,
    /// The default (kept for scripts written when it was not).
    #[arg(long, hide = true, conflicts_with = "no_exercise")]
    exercise: bool,
    /// Leave out the Python audit-hook evidence (pickle globals asked for, os.system,
    /// exec/compile, ...), which the `py.*` rules judge by default: findings that can only
    /// raise the verdict.
    #[arg(long)]
    no_audit: bool,
    /// The default (kept for scripts written when it was not).
    #[arg(long, hide = true, conflicts_with = "no_audit")]
    audit: bool,
    /// How long the loader stays up after the load and the exercise while anything the load
    /// left behind still runs (a thread, a child, a timer), for it to act as it would in a
    /// server; cut short when nothing does. 0 turns it off. At most 1m.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_linger)]
    linger: Duration,
    /// Stop the scan (and count it as an error, unless a threat was seen) after this long.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = crate::duration::parse)]
    timeout: Duration,
    /// Add the rules of FILE (YAML) to the defaults; may be given more than once.
    #[arg(long, value_name = "FILE")]
    rules: Vec<PathBuf>,
    /// Judge with the --rules files only.
    #[arg(long)]
    no_default_rules: bool,
    /// The Python of the loader environment [default: /var/lib/monitor/loader/bin/python, or
    /// $MONITOR_LOADER_ENV/bin/python].
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// The largest artifact scanned, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 8192)]
    max_size_mib: u64,
    /// Working directory of the loader inside the sandbox.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Scan in this process even when a daemon answers. Without it, monitorctl submits the
    /// scan to monitord when its socket answers (options that only the embedded engine has,
    /// such as --rules, --trace-file, --print-trace, --python, --cwd, also scan here).
    #[arg(long)]
    local: bool,
    /// monitord's socket [default: $MONITOR_SOCKET, or /run/monitor/monitord.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Size of the kernel ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 16 * 1024, value_parser = common::parse_ring_kib)]
    ring_buffer_kib: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Sarif,
}

impl ReportFormat {
    /// Its name in the API (`?format=`).
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Text => "text",
            ReportFormat::Json => "json",
            ReportFormat::Sarif => "sarif",
        }
    }
}

/// A linger: a duration as `--timeout` takes it, or 0; at most a minute (a scan's time limit
/// is what bounds a long wait).
fn parse_linger(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches(['s', 'm']).trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let linger = crate::duration::parse(s)?;
    if linger > Duration::from_secs(60) {
        return Err("at most 1m".into());
    }
    Ok(linger)
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| "one of: info, low, medium, high, critical".to_string())
}

pub fn main(args: ScanArgs) -> ExitCode {
    match scan(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("monitorctl scan: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn scan(args: ScanArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let embedded_only = args.local
        || !args.rules.is_empty()
        || args.no_default_rules
        || args.trace_file.is_some()
        || args.print_trace
        || args.python.is_some()
        || args.cwd.is_some();
    if !embedded_only {
        let socket = client::socket_path(args.socket.as_deref());
        match runtime.block_on(Client::connect(&socket)) {
            Some(client) => return runtime.block_on(scan_with_daemon(&client, &args)),
            None if args.socket.is_some() => {
                anyhow::bail!("no daemon answers at {}", socket.display())
            }
            None => eprintln!(
                "monitorctl: no daemon answers at {}; scanning in this process",
                socket.display()
            ),
        }
    }
    let mut spec = ScanSpec::new(&args.artifact);
    spec.rules = common::rule_set(&args.rules, args.no_default_rules)?;
    spec.fail_on = args.fail_on;
    spec.exercise = args.exercise || !args.no_exercise;
    spec.audit = args.audit || !args.no_audit;
    spec.linger = args.linger;
    spec.timeout = args.timeout;
    spec.python = args.python.clone().unwrap_or_else(default_python);
    spec.limits = Limits {
        max_size: args.max_size_mib.saturating_mul(1 << 20),
    };
    spec.cwd = args.cwd.clone();
    let config = ProbeConfig {
        ring_buffer_bytes: args.ring_buffer_kib.saturating_mul(1024),
    };

    let mut trace_file = args
        .trace_file
        .as_ref()
        .map(|p| {
            File::create(p)
                .map(BufWriter::new)
                .with_context(|| format!("creating {}", p.display()))
        })
        .transpose()?;
    let spinner = (io::stderr().is_terminal() && !args.print_trace).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar.set_message("detecting the format");
        bar
    });
    let mut trace_error = None;
    let mut probes = LazyProbes::new(config);
    let report = runtime.block_on(scan::scan(&spec, &mut probes, |progress| match progress {
        Progress::LoadingProbes => {
            if let Some(bar) = &spinner {
                bar.set_message("loading the kernel probes");
            }
        }
        Progress::Detected(format) => {
            if let Some(bar) = &spinner {
                bar.set_message(format!("{}: preparing", format.describe()));
            }
        }
        Progress::Phase(phase) => {
            if let Some(bar) = &spinner {
                bar.set_message(format!("loader: {phase} phase"));
            }
        }
        Progress::Job(Output::Event(event)) => {
            if args.print_trace {
                eprintln!("{}", render::text(event));
            }
            if let Some(out) = trace_file.as_mut()
                && trace_error.is_none()
                && let Err(e) = render::write_event(out, Style::Json, event)
            {
                trace_error = Some(e);
            }
        }
        Progress::Job(Output::Finding(finding)) => {
            let line = format!(
                "{} {}: {}",
                finding.severity.name().to_uppercase(),
                finding.rule,
                finding.description
            );
            match &spinner {
                Some(bar) => bar.println(line),
                None if args.print_trace => eprintln!("{line}"),
                None => {}
            }
        }
        Progress::Job(Output::Control(_)) => {}
    }));
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    if let Some(probes) = runtime.block_on(probes.into_loaded()) {
        common::release_in_background(probes);
    }
    if let Some(e) = trace_error {
        return Err(e).context("writing the trace file");
    }
    if let Some(mut out) = trace_file {
        out.flush().context("writing the trace file")?;
    }

    let rendered = render_report(&report, args.format)?;
    deliver(&args, &rendered)?;
    Ok(u8::from(report.exit_code))
}

/// Prints the report and writes --report-file, as asked.
fn deliver(args: &ScanArgs, rendered: &[u8]) -> anyhow::Result<()> {
    if let Some(path) = &args.report_file {
        std::fs::write(path, rendered).with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.no_print_res {
        io::stdout()
            .write_all(rendered)
            .context("writing the report")?;
    }
    Ok(())
}

/// Submits the scan to monitord, follows it, and prints the daemon's report.
async fn scan_with_daemon(client: &Client, args: &ScanArgs) -> anyhow::Result<u8> {
    let path = std::path::absolute(&args.artifact)
        .with_context(|| format!("resolving {}", args.artifact.display()))?;
    let request = serde_json::json!({
        "path": path,
        "exercise": args.exercise || !args.no_exercise,
        "audit": args.audit || !args.no_audit,
        "linger_ms": args.linger.as_millis() as u64,
        "fail_on": args.fail_on,
        "timeout_secs": args.timeout.as_secs().max(1),
    });
    let reply = client.post_json("/v1/scans", &request).await?;
    if reply.status != 202 {
        anyhow::bail!("the daemon refused the scan: {}", reply.error_message());
    }
    let id = reply.json()?["id"]
        .as_str()
        .context("the daemon's reply has no scan id")?
        .to_owned();
    let spinner = io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let record = loop {
        let record = client.get(&format!("/v1/scans/{id}")).await?.json()?;
        let status = record["status"].as_str().unwrap_or("unknown").to_owned();
        if status == "done" || status == "interrupted" {
            break record;
        }
        if let Some(bar) = &spinner {
            let phase = record["phase"]
                .as_str()
                .map(|p| format!(", {p} phase"))
                .unwrap_or_default();
            bar.set_message(format!("monitord: scan {id} {status}{phase}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    if record["status"] == "interrupted" {
        anyhow::bail!("the daemon stopped during scan {id}; it is reported as interrupted");
    }
    let format = args.format.name();
    let reply = client
        .get(&format!("/v1/scans/{id}/report?format={format}"))
        .await?;
    if reply.status != 200 {
        anyhow::bail!("fetching the report: {}", reply.error_message());
    }
    let mut rendered = reply.body.to_vec();
    if args.format != ReportFormat::Text {
        // Pretty, as the embedded engine prints it.
        let value: serde_json::Value = serde_json::from_slice(&rendered)?;
        rendered = serde_json::to_vec_pretty(&value)?;
        rendered.push(b'\n');
    }
    deliver(args, &rendered)?;
    let code = record["exit_code"]
        .as_u64()
        .context("the scan has no exit code")?;
    Ok(code.min(2) as u8)
}

fn render_report(report: &ScanReport, format: ReportFormat) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        ReportFormat::Text => scan::text::write(&mut out, report)?,
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, report)?;
            out.push(b'\n');
        }
        ReportFormat::Sarif => {
            serde_json::to_writer_pretty(&mut out, &scan::sarif::to_value(report))?;
            out.push(b'\n');
        }
    }
    Ok(out)
}
