//! `monitorctl scan PATH...`: load each model artifact with its framework in a sandbox, under
//! the kernel watch, read its bytes for what every loader would be handed, and say whether it
//! is dangerous: one report per artifact, and a summary when there are several.

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
use monitor_api::client::{self, Client};
use monitor_api::{ScanAccepted, ScanRequest, ScanStatus};
use monitor_engine::probes::ProbeConfig;
use monitor_formats::Limits;
use monitor_jobs::render::{self, Style};
use monitor_jobs::run::Output;
use monitor_rules::Severity;
use monitor_scan::{self as scan, LazyProbes, Progress, ScanReport, ScanSpec, job::default_python};
use serde_json::Value;

use crate::{common, targets};

/// Scan model artifacts by loading them, and by reading what their bytes name.
///
/// The format is detected from content: pickle (protocols 0-5), joblib (plain and
/// compressed), dill, cloudpickle, NumPy .npy/.npz, PyTorch (zip, legacy, TorchScript), Keras
/// (.keras, .h5), TensorFlow SavedModel directories; safetensors, ONNX and GGUF hold no code
/// and are validated natively (nothing runs). A private copy is loaded with the framework a
/// user would use, in a sandbox (no network but loopback, a read-only host, a decoy home full
/// of honeytoken credentials, Landlock, an unprivileged user), while the kernel probes trace
/// every process it starts. Framework imports happen in a set-up phase that raises no
/// findings; what follows is judged by the rules: the load, the exercise (the model called on
/// dummy input, where its format runs code when called), a linger while anything the load
/// left behind still runs (a thread, a child, a timer: as a server would keep it) and the
/// teardown. Python audit-hook evidence is judged too.
///
/// Every scan also reads the artifact statically, for every loader that could be handed it:
/// the globals of every pickle (in any archive member, compressed joblib, object arrays, or
/// hidden in data), Keras Lambda bytecode, SavedModel ops, TorchScript code, ONNX external
/// data and operator domains, GGUF chat templates. The verdict is the strongest of the kernel
/// trace, the audit hook and that analysis; each finding says its source.
///
/// A directory that is no SavedModel (a Hugging Face snapshot) is walked: every model
/// artifact inside is scanned (symlinks are not followed), one report each and a summary.
///
/// Exit codes: 0 clean, 1 a finding at --fail-on or above, 2 a scan could not be completed
/// (never reported as clean). A threat seen wins over an error; with several artifacts, the
/// worst of them.
///
/// Needs root and the loader environment (`cargo xtask loader-env`), except --static-only.
///
/// Examples:
///   monitorctl scan model.pkl
///   monitorctl scan --format json --report-file report.json model.keras
///   monitorctl scan --format sarif --fail-on medium ./saved_model_dir
///   monitorctl scan ~/models/my-snapshot other.pt
///   monitorctl scan --static-only model.onnx      # no root, for CI
///   monitorctl scan --no-exercise --linger 0 big-checkpoint.pt   # load only, quickest
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ScanArgs {
    /// The artifacts: files, SavedModel directories, or directories to walk for artifacts.
    #[arg(value_name = "PATH", required = true)]
    artifacts: Vec<PathBuf>,
    /// Only read the artifacts' bytes: no root, no kernel probes, no sandbox, no loader
    /// environment (what a CI runner without privileges can do). The report says what was
    /// not done; exit codes are the same.
    #[arg(long)]
    static_only: bool,
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
    /// Size of the kernel ring buffer in KiB (a power of two from 4 to 1048576).
    #[arg(long, value_name = "KIB", default_value_t = monitor_common::event::RING_BUFFER_DEFAULT_KIB, value_parser = common::parse_ring_kib)]
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
    let limits = Limits {
        max_size: args.max_size_mib.saturating_mul(1 << 20),
    };
    let targets = targets::expand(&args.artifacts, &limits);
    if targets.artifacts.is_empty() {
        for (path, why) in &targets.skipped {
            eprintln!("monitorctl scan: {}: skipped: {why}", path.display());
        }
        anyhow::bail!("no model artifact to scan");
    }
    let embedded_only = args.local
        || args.static_only
        || !args.rules.is_empty()
        || args.no_default_rules
        || args.trace_file.is_some()
        || args.print_trace
        || args.python.is_some()
        || args.cwd.is_some();
    let mut outcomes = None;
    if !embedded_only {
        let socket = client::socket_path(args.socket.as_deref());
        match runtime.block_on(Client::connect(&socket)) {
            Ok(client) => {
                outcomes =
                    Some(runtime.block_on(scan_with_daemon(&client, &args, &targets.artifacts))?)
            }
            // Asked for that daemon, or one is there and refuses us: say so, rather than try
            // a scan here that needs root.
            Err(e) if args.socket.is_some() || !e.no_daemon() => return Err(e.into()),
            Err(_) => eprintln!(
                "monitorctl: no daemon answers at {}; scanning in this process",
                socket.display()
            ),
        }
    }
    let outcomes = match outcomes {
        Some(outcomes) => outcomes,
        None => scan_here(&runtime, &args, &targets.artifacts, limits)?,
    };
    if targets.is_single(args.artifacts.len()) {
        let only = &outcomes[0];
        deliver(&args, &only.rendered)?;
        return Ok(only.exit_code);
    }
    let rendered = render_batch(&outcomes, &targets.skipped, args.format)?;
    deliver(&args, &rendered)?;
    Ok(worst_exit(&outcomes))
}

/// One artifact's scan: its report rendered as asked, and the JSON report.
struct Outcome {
    path: String,
    rendered: Vec<u8>,
    json: Value,
    exit_code: u8,
}

/// 1 if any scan found a threat (a threat wins over an error), else 2 if any failed, else 0.
fn worst_exit(outcomes: &[Outcome]) -> u8 {
    let codes: Vec<u8> = outcomes.iter().map(|o| o.exit_code).collect();
    if codes.contains(&1) {
        1
    } else if codes.contains(&2) {
        2
    } else {
        0
    }
}

/// Scans each artifact in this process, one after the other, on one set of probes.
fn scan_here(
    runtime: &tokio::runtime::Runtime,
    args: &ScanArgs,
    artifacts: &[PathBuf],
    limits: Limits,
) -> anyhow::Result<Vec<Outcome>> {
    // Said first, in these words: what fails later without root (copying the artifact to the
    // job's user, loading the probes) would name a symptom.
    if !args.static_only && !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "a scan in this process needs root (it loads eBPF programs and builds a sandbox): \
             run it as root, ask monitord (`monitorctl scan` without --local, as a member of \
             the socket's group), or read the bytes only with --static-only"
        );
    }
    let rules = common::rule_set(&args.rules, args.no_default_rules)?;
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
    let mut probes = LazyProbes::embedded(config);
    let mut outcomes = Vec::with_capacity(artifacts.len());
    let many = artifacts.len() > 1;
    for (i, artifact) in artifacts.iter().enumerate() {
        let mut spec = ScanSpec::new(artifact);
        spec.rules = rules.clone();
        spec.fail_on = args.fail_on;
        spec.exercise = args.exercise || !args.no_exercise;
        spec.audit = args.audit || !args.no_audit;
        spec.linger = args.linger;
        spec.static_only = args.static_only;
        spec.timeout = args.timeout;
        spec.python = args.python.clone().unwrap_or_else(default_python);
        spec.limits = limits.clone();
        spec.cwd = args.cwd.clone();
        let which = if many {
            format!("[{}/{}] {}: ", i + 1, artifacts.len(), artifact.display())
        } else {
            String::new()
        };
        let report = runtime.block_on(scan::scan(&spec, &mut probes, |progress| match progress {
            Progress::LoadingProbes => {
                if let Some(bar) = &spinner {
                    bar.set_message(format!("{which}loading the kernel probes"));
                }
            }
            Progress::Detected(format) => {
                if let Some(bar) = &spinner {
                    bar.set_message(format!("{which}{}: preparing", format.describe()));
                }
            }
            Progress::Phase(phase) => {
                if let Some(bar) = &spinner {
                    bar.set_message(format!("{which}loader: {phase} phase"));
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
                    "{which}{} {}: {}",
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
        outcomes.push(Outcome {
            path: report.artifact.path.clone(),
            rendered: render_report(&report, args.format)?,
            json: serde_json::to_value(&report)?,
            exit_code: u8::from(report.exit_code),
        });
    }
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
    Ok(outcomes)
}

/// Several reports: text, one after the other and a summary; JSON, one document with every
/// report and the summary; SARIF, one run per artifact.
fn render_batch(
    outcomes: &[Outcome],
    skipped: &[(PathBuf, String)],
    format: ReportFormat,
) -> anyhow::Result<Vec<u8>> {
    let summary: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "path": o.path,
                "format": o.json["artifact"]["format"],
                "verdict": o.json["verdict"],
                "exit_code": o.exit_code,
                "counts": o.json["counts"],
            })
        })
        .collect();
    let skipped_json: Vec<Value> = skipped
        .iter()
        .map(|(p, why)| serde_json::json!({ "path": p.display().to_string(), "why": why }))
        .collect();
    let mut out = Vec::new();
    match format {
        ReportFormat::Text => {
            for o in outcomes {
                out.extend_from_slice(&o.rendered);
                out.push(b'\n');
            }
            writeln!(
                out,
                "Summary: {} artifacts scanned, exit code {}",
                outcomes.len(),
                worst_exit(outcomes)
            )?;
            for o in outcomes {
                writeln!(
                    out,
                    "  {:<10} {}",
                    o.json["verdict"].as_str().unwrap_or("?").to_uppercase(),
                    o.path
                )?;
            }
            for (path, why) in skipped {
                writeln!(out, "  {:<10} {} ({why})", "skipped", path.display())?;
            }
        }
        ReportFormat::Json => {
            let reports: Vec<&Value> = outcomes.iter().map(|o| &o.json).collect();
            let doc = serde_json::json!({
                "schema": "monitor.scan-batch/v1",
                "exit_code": worst_exit(outcomes),
                "summary": summary,
                "skipped": skipped_json,
                "reports": reports,
            });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            out.push(b'\n');
        }
        ReportFormat::Sarif => {
            let mut runs = Vec::new();
            let mut head = None;
            for o in outcomes {
                let value: Value = serde_json::from_slice(&o.rendered)?;
                if head.is_none() {
                    head = Some(value.clone());
                }
                if let Some(r) = value["runs"].as_array() {
                    runs.extend(r.iter().cloned());
                }
            }
            let mut doc = head.unwrap_or(Value::Null);
            doc["runs"] = Value::Array(runs);
            serde_json::to_writer_pretty(&mut out, &doc)?;
            out.push(b'\n');
        }
    }
    Ok(out)
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

/// Submits one scan per artifact to monitord (it runs them side by side), follows them, and
/// fetches each report.
async fn scan_with_daemon(
    client: &Client,
    args: &ScanArgs,
    artifacts: &[PathBuf],
) -> anyhow::Result<Vec<Outcome>> {
    let mut ids = Vec::with_capacity(artifacts.len());
    for artifact in artifacts {
        // The daemon opens the path with our rights and follows no link at its end: resolved
        // here, as ourselves (a model in a Hugging Face cache is a link to its blob). What
        // does not resolve is sent as it is, for the daemon to say why.
        let path = std::fs::canonicalize(artifact)
            .or_else(|_| std::path::absolute(artifact))
            .with_context(|| format!("resolving {}", artifact.display()))?;
        let request = ScanRequest {
            exercise: args.exercise || !args.no_exercise,
            audit: args.audit || !args.no_audit,
            linger_ms: Some(args.linger.as_millis() as u64),
            fail_on: Some(args.fail_on),
            timeout_secs: Some(args.timeout.as_secs().max(1)),
            ..ScanRequest::new(path.display().to_string())
        };
        let reply = client.post_json("/v1/scans", &request).await?;
        if reply.status != 202 {
            anyhow::bail!(
                "the daemon refused the scan of {}: {}",
                artifact.display(),
                reply.error_message()
            );
        }
        let id = reply.parse::<ScanAccepted>()?.id;
        ids.push((id, artifact.display().to_string()));
    }
    let spinner = io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let mut records: Vec<Option<monitor_api::ScanRecord>> = vec![None; ids.len()];
    while records.iter().any(Option::is_none) {
        for (i, (id, _)) in ids.iter().enumerate() {
            if records[i].is_some() {
                continue;
            }
            let reply = client
                .get(&format!("/v1/scans/{}", client::segment(id)))
                .await?;
            if reply.status >= 400 {
                anyhow::bail!(
                    "scan {id} ({path}): {}",
                    reply.error_message(),
                    path = ids[i].1
                );
            }
            let record: monitor_api::ScanRecord = reply.parse()?;
            let status = record.status;
            if matches!(status, ScanStatus::Done | ScanStatus::Interrupted) {
                records[i] = Some(record);
            } else if let Some(bar) = &spinner {
                let phase = record
                    .phase
                    .map(|p| format!(", {} phase", p.name()))
                    .unwrap_or_default();
                let status = status.name();
                let done = records.iter().filter(|r| r.is_some()).count();
                bar.set_message(format!(
                    "monitord: {done}/{} done; scan {id} {status}{phase}",
                    ids.len()
                ));
            }
        }
        if records.iter().any(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    let mut outcomes = Vec::with_capacity(ids.len());
    for ((id, path), record) in ids.iter().zip(records) {
        let record = record.expect("every scan finished above");
        if record.status == ScanStatus::Interrupted {
            anyhow::bail!(
                "the daemon stopped during scan {id} ({path}); it is reported as interrupted"
            );
        }
        let fetch = |format: &'static str| {
            let url = format!("/v1/scans/{}/report?format={format}", client::segment(id));
            async move {
                let reply = client.get(&url).await?;
                if reply.status != 200 {
                    anyhow::bail!("fetching the report of {path}: {}", reply.error_message());
                }
                Ok::<_, anyhow::Error>(reply.body.to_vec())
            }
        };
        let json: Value = serde_json::from_slice(&fetch("json").await?)?;
        let mut rendered = match args.format {
            ReportFormat::Json => serde_json::to_vec_pretty(&json)?,
            other => fetch(other.name()).await?,
        };
        if args.format == ReportFormat::Sarif {
            // Pretty, as the embedded engine prints it.
            let value: Value = serde_json::from_slice(&rendered)?;
            rendered = serde_json::to_vec_pretty(&value)?;
        }
        if args.format == ReportFormat::Text {
            // Escaped by the daemon already; a report stored by an older one too, here.
            rendered = monitor_jobs::render::printable_lines(&String::from_utf8_lossy(&rendered))
                .into_owned()
                .into_bytes();
        } else {
            rendered.push(b'\n');
        }
        let code = record.exit_code.context("the scan has no exit code")?;
        outcomes.push(Outcome {
            path: path.clone(),
            rendered,
            json,
            exit_code: code.min(2),
        });
    }
    Ok(outcomes)
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
