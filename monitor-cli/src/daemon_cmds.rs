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
            let list = reply.json()?;
            let mut table = crate::common::table(["id", "verdict", "format", "path"]);
            for scan in list["scans"].as_array().into_iter().flatten() {
                table.add_row([
                    printable(scan["id"].as_str().unwrap_or("?")).into_owned(),
                    scan["verdict"]
                        .as_str()
                        .unwrap_or(scan["status"].as_str().unwrap_or("?"))
                        .to_owned(),
                    scan["format"].as_str().unwrap_or("-").to_owned(),
                    printable(scan["request"]["path"].as_str().unwrap_or("?")).into_owned(),
                ]);
            }
            println!("{table}");
        }
        Request::Status { json: false } => print!("{}", status_text(&reply.json()?)),
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
            for rule in reply.json()?["rules"].as_array().into_iter().flatten() {
                table.add_row([
                    printable(rule["id"].as_str().unwrap_or("?")).into_owned(),
                    rule["severity"].as_str().unwrap_or("?").to_owned(),
                    printable(rule["description"].as_str().unwrap_or("")).into_owned(),
                ]);
            }
            println!("{table}");
        }
        _ => println!("{}", serde_json::to_string_pretty(&reply.json()?)?),
    }
    Ok(())
}

/// `/v1/status` for people: one line per part of the daemon, what needs attention first.
fn status_text(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let probes = &status["probes"];
    let counters = &probes["counters"];
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<10}{text}");
    };
    line(
        "monitord",
        format!(
            "{} on Linux {}",
            status["version"].as_str().unwrap_or("?"),
            status["kernel"].as_str().unwrap_or("?")
        ),
    );
    line(
        "you",
        format!(
            "uid {}, role {}",
            status["caller"]["uid"],
            status["caller"]["role"].as_str().unwrap_or("none")
        ),
    );
    let missing = probes["missing"].as_array().map_or(0, Vec::len);
    line(
        "probes",
        format!(
            "{} attached, {missing} missing{}",
            probes["attached"]
                .as_array()
                .map_or(n(&probes["attached"]) as usize, Vec::len),
            match n(&probes["checks_that_found_tampering"]) {
                0 => String::new(),
                k => format!(", TAMPERED WITH ({k} checks found it; see --json)"),
            },
        ),
    );
    if let Some(why) = probes["syscall_hooks"]["why"].as_str() {
        line("hooks", why.to_owned());
    }
    if counters.is_object() && counters.get("error").is_none() {
        line(
            "kernel",
            format!(
                "{} records written, {} dropped, {} unreadable; {} processes followed",
                n(&counters["events"]),
                n(&counters["dropped"]),
                n(&counters["read_errors"]),
                n(&counters["followed"])
            ),
        );
    }
    let running = status["running"].as_array().cloned().unwrap_or_default();
    line(
        "scans",
        format!(
            "{} running, {} queued (at most {} at once){}",
            running.len(),
            n(&status["queue_depth"]),
            n(&status["max_concurrent_scans"]),
            running
                .iter()
                .map(|r| format!(
                    "\n          {} {}",
                    printable(r["id"].as_str().unwrap_or("?")),
                    r["phase"].as_str().unwrap_or("starting")
                ))
                .collect::<String>()
        ),
    );
    line(
        "watches",
        format!("{} active", n(&status["watches_active"])),
    );
    line("rules", format!("{} in force", n(&status["rules"])));
    line(
        "loader",
        format!(
            "{} ({})",
            printable(status["loader_env"]["python"].as_str().unwrap_or("?")),
            if status["loader_env"]["present"] == true {
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
        let list = reply.json()?;
        let scans = list["scans"].as_array().cloned().unwrap_or_default();
        for scan in &scans {
            let id = scan["id"].as_str().unwrap_or_default();
            let record = client
                .get(&format!("/v1/scans/{}", client::segment(id)))
                .await?
                .json()?;
            if !record["report"].is_null() {
                serde_json::to_writer(&mut out, &record["report"])?;
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
