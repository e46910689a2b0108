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
/// a set-up phase that raises no findings; the load, exercise and teardown phases are judged
/// by the rules.
///
/// Exit codes: 0 clean, 1 a finding at --fail-on or above, 2 the scan could not be completed
/// (never reported as clean). A threat seen wins over an error.
///
/// Needs root and the loader environment (`cargo xtask loader-env`).
///
/// Examples:
///   monitorctl scan model.pkl
///   monitorctl scan --exercise --format json --report-file report.json model.keras
///   monitorctl scan --format sarif --fail-on medium ./saved_model_dir
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
    /// Call the loaded model on dummy input (Keras predict, SavedModel signatures, torch
    /// modules, objects with predict): some payloads fire only at inference.
    #[arg(long)]
    exercise: bool,
    /// Add Python audit-hook evidence (pickle globals resolved, exec/compile, ...) to the
    /// report.
    #[arg(long)]
    audit: bool,
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
    /// Scan in this process even when a daemon is running (the only mode so far).
    #[arg(long)]
    local: bool,
    /// Size of the kernel ring buffer in KiB (a power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 16 * 1024, value_parser = common::parse_ring_kib)]
    ring_buffer_kib: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
    Sarif,
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
    let mut spec = ScanSpec::new(&args.artifact);
    spec.rules = common::rule_set(&args.rules, args.no_default_rules)?;
    spec.fail_on = args.fail_on;
    spec.exercise = args.exercise;
    spec.audit = args.audit;
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
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
    if let Some(probes) = probes.into_loaded() {
        common::release_in_background(probes);
    }
    if let Some(e) = trace_error {
        return Err(e).context("writing the trace file");
    }
    if let Some(mut out) = trace_file {
        out.flush().context("writing the trace file")?;
    }

    let rendered = render_report(&report, args.format)?;
    if let Some(path) = &args.report_file {
        std::fs::write(path, &rendered).with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.no_print_res {
        io::stdout()
            .write_all(&rendered)
            .context("writing the report")?;
    }
    Ok(u8::from(report.exit_code))
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
