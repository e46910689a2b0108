//! The subcommands that ask monitord: `status`, `reports list|show`, `rules list|reload`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use monitor_api::client::{self, Client};
use monitor_jobs::render::{printable, printable_lines};
use monitor_scan::Verdict;

use crate::scan::ReportFormat;

/// A verdict's name, checked here so that a typo is a usage error even with no daemon.
fn verdict_name(s: &str) -> Result<String, String> {
    Verdict::ALL
        .iter()
        .find(|v| v.name() == s)
        .map(|v| v.name().to_owned())
        .ok_or_else(|| {
            let names: Vec<_> = Verdict::ALL.iter().map(|v| v.name()).collect();
            format!("one of: {}", names.join(", "))
        })
}

#[derive(Args)]
pub struct DaemonArgs {
    /// monitord's socket [default: $MONITOR_SOCKET, or /run/monitor/monitord.sock].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The daemon's answer as it is (JSON), for programs.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ReportsCommand {
    /// Scans, newest first.
    List {
        /// Only scans with this verdict.
        #[arg(long, value_parser = verdict_name)]
        verdict: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Every finished report as JSON lines (schema monitor.scan/v1), oldest last.
    Export {
        /// Only scans with this verdict.
        #[arg(long, value_parser = verdict_name)]
        verdict: Option<String>,
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// One scan's report.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
    },
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// The rules in force.
    List,
    /// Load the daemon's rule files again (bad rules are refused; the old ones stay).
    Reload,
}

pub enum Request {
    Status { json: bool },
    Reports(ReportsCommand),
    Rules(RulesCommand),
}

pub fn main(args: DaemonArgs, request: Request) -> ExitCode {
    crate::common::block_on("", ask(args, request))
}

async fn ask(args: DaemonArgs, request: Request) -> Result<()> {
    let socket = client::socket_path(args.socket.as_deref());
    let client = Client::connect(&socket).await?;
    if let Request::Reports(ReportsCommand::Export { verdict, output }) = &request {
        return export(&client, verdict.as_deref(), output.as_deref()).await;
    }
    let (path, post) = match &request {
        Request::Status { .. } => ("/v1/status".to_string(), false),
        Request::Reports(ReportsCommand::List { verdict, limit }) => {
            let filter = verdict
                .as_ref()
                .map(|v| format!("&verdict={v}"))
                .unwrap_or_default();
            (format!("/v1/scans?limit={limit}{filter}"), false)
        }
        Request::Reports(ReportsCommand::Show { id, format }) => (
            format!(
                "/v1/scans/{}/report?format={}",
                client::segment(id),
                format.name()
            ),
            false,
        ),
        Request::Reports(ReportsCommand::Export { .. }) => unreachable!("handled above"),
        Request::Rules(RulesCommand::List) => ("/v1/rules".to_string(), false),
        Request::Rules(RulesCommand::Reload) => ("/v1/rules/reload".to_string(), true),
    };
    let reply = if post {
        client.post_json(&path, &serde_json::Value::Null).await?
    } else {
        client.get(&path).await?
    };
    if reply.status >= 400 {
        bail!("{}", reply.error_message());
    }
    match request {
        Request::Reports(ReportsCommand::List { .. }) => {
            let page: monitor_api::ScanPage = reply.parse()?;
            let mut table = crate::common::table(["id", "verdict", "format", "path"]);
            for scan in &page.scans {
                table.add_row([
                    printable(&scan.id).into_owned(),
                    scan.verdict
                        .clone()
                        .unwrap_or_else(|| scan.status.name().to_owned()),
                    scan.format.clone().unwrap_or_else(|| "-".to_owned()),
                    printable(&scan.request.asked.path).into_owned(),
                ]);
            }
            println!("{table}");
        }
        Request::Status { json: false } => print!("{}", status_text(&reply.parse()?)),
        Request::Reports(ReportsCommand::Show {
            format: ReportFormat::Text,
            ..
        }) => {
            // The daemon escapes what the payload chose; this keeps a report stored by an
            // older one from driving the terminal too.
            print!("{}", printable_lines(&String::from_utf8_lossy(&reply.body)));
        }
        Request::Rules(RulesCommand::List) => {
            let mut table = crate::common::table(["rule", "severity", "description"]);
            for rule in reply.parse::<monitor_api::RuleList>()?.rules {
                table.add_row([
                    printable(&rule.id).into_owned(),
                    rule.severity.name().to_owned(),
                    printable(&rule.description).into_owned(),
                ]);
            }
            println!("{table}");
        }
        _ => println!("{}", serde_json::to_string_pretty(&reply.json()?)?),
    }
    Ok(())
}

/// `/v1/status` for people: one line per part of the daemon, what needs attention first.
fn status_text(status: &monitor_api::Status) -> String {
    use std::fmt::Write as _;
    let probes = &status.probes;
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<10}{text}");
    };
    line(
        "monitord",
        format!("{} on Linux {}", status.version, status.kernel),
    );
    line(
        "you",
        format!(
            "uid {}, role {}",
            status.caller.uid,
            status.caller.role.map_or("none", |r| r.name())
        ),
    );
    line(
        "probes",
        format!(
            "{} attached, {} missing{}",
            probes.attached,
            probes.missing.len(),
            match probes.checks_that_found_tampering {
                0 => String::new(),
                k => format!(", TAMPERED WITH ({k} checks found it; see --json)"),
            },
        ),
    );
    line("hooks", probes.syscall_hooks.why.clone());
    let counter = |name| probes.counters.get(name).unwrap_or(0);
    match &probes.counters {
        monitor_api::status::KernelCounters::Read(_) => line(
            "kernel",
            format!(
                "{} records written, {} dropped, {} unreadable; {} processes followed",
                counter("events"),
                counter("dropped"),
                counter("read_errors"),
                counter("followed")
            ),
        ),
        monitor_api::status::KernelCounters::Unreadable { error } => {
            line("kernel", format!("counters unreadable: {error}"))
        }
    }
    line(
        "scans",
        format!(
            "{} running, {} queued (at most {} at once){}",
            status.running.len(),
            status.queue_depth,
            status.max_concurrent_scans,
            status
                .running
                .iter()
                .map(|r| format!("\n          {} {}", printable(&r.id), r.phase.name()))
                .collect::<String>()
        ),
    );
    line("watches", format!("{} active", status.watches_active));
    line("rules", format!("{} in force", status.rules));
    line(
        "loader",
        format!(
            "{} ({})",
            printable(&status.loader_env.python.to_string_lossy()),
            if status.loader_env.present {
                "present"
            } else {
                "MISSING: scans fail; `cargo xtask loader-env`"
            }
        ),
    );
    out
}

/// Pages through the scans and writes each finished report as one JSON line.
async fn export(
    client: &Client,
    verdict: Option<&str>,
    output: Option<&std::path::Path>,
) -> Result<()> {
    use std::io::Write as _;
    let mut out: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    const PAGE: u32 = 500;
    let filter = verdict.map(|v| format!("&verdict={v}")).unwrap_or_default();
    let mut offset = 0;
    let mut written = 0;
    loop {
        let reply = client
            .get(&format!("/v1/scans?limit={PAGE}&offset={offset}{filter}"))
            .await?;
        if reply.status >= 400 {
            bail!("{}", reply.error_message());
        }
        let scans = reply.parse::<monitor_api::ScanPage>()?.scans;
        for scan in &scans {
            let record: monitor_api::ScanRecord = client
                .get(&format!("/v1/scans/{}", client::segment(&scan.id)))
                .await?
                .parse()?;
            if let Some(report) = &record.report {
                serde_json::to_writer(&mut out, report)?;
                writeln!(out)?;
                written += 1;
            }
        }
        if scans.len() < PAGE as usize {
            break;
        }
        offset += PAGE;
    }
    out.flush()?;
    eprintln!("monitorctl: exported {written} reports");
    Ok(())
}
