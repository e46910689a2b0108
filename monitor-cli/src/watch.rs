//! `monitorctl watch add|list|show|rm|tail`: monitord's live watches of model-serving
//! processes.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use monitor_api::client::{self, Client};
use monitor_api::stream::{Origin, StreamEvent, StreamItem};
use monitor_api::watches::Selector;
use monitor_api::{LearnRequest, WatchRequest};
use monitor_jobs::render::printable;
use monitor_rules::Severity;
use serde_json::Value;

/// Watch live processes through monitord: a service's cgroup, a process tree, an
/// executable. Findings stream in as they happen (`watch tail`); a policy can kill the process that does
/// something high-risk, in the kernel before its syscall returns (`--kill-in-kernel`) or at
/// the finding.
#[derive(Args)]
pub struct WatchArgs {
    /// monitord's socket [default: $MONITOR_SOCKET, or /run/monitor/monitord.sock].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: WatchCommand,
}

#[derive(Subcommand)]
enum WatchCommand {
    /// Start watching a cgroup (with the cgroups below it, also those created later), a
    /// process (with every process it starts), or every process of an executable (those
    /// running now and those started later, with what they start). Watches survive
    /// monitord's restarts.
    ///
    /// Examples:
    ///   monitorctl watch add --cgroup system.slice/torchserve.service --kill-at high
    ///   monitorctl watch add --pid 4242 --name notebook
    ///   monitorctl watch add --exe /opt/serving/bin/python3.11 --name inference
    ///   monitorctl watch add --cgroup system.slice/model.service --learn 10m --kill-at high
    ///   monitorctl watch add --cgroup system.slice/model.service --policy policy.yaml
    #[command(
        verbatim_doc_comment,
        group(clap::ArgGroup::new("selector").required(true).multiple(false))
    )]
    Add {
        /// A cgroup v2 directory: absolute, or relative to the cgroup2 mount.
        #[arg(long, value_name = "PATH", group = "selector")]
        cgroup: Option<PathBuf>,
        /// A process id.
        #[arg(long, value_name = "PID", group = "selector")]
        pid: Option<u32>,
        /// An executable's absolute path. A process is matched when it executes this path
        /// or the file it names (symlinks resolved); one started through another symlink is
        /// picked up within a second.
        #[arg(long, value_name = "PATH", group = "selector")]
        exe: Option<PathBuf>,
        /// A name to show.
        #[arg(long)]
        name: Option<String>,
        /// Kill the offending process (a cgroup watch: its cgroup) at the first finding of
        /// this severity or above.
        #[arg(long, value_name = "SEVERITY", value_parser = parse_severity)]
        kill_at: Option<Severity>,
        /// Syscalls killed in the kernel at their entry, comma-separated [default with
        /// --kill-at: execve,execveat]. Careful: in a watched cgroup this also kills a
        /// service's own restart. `none` for no in-kernel kill.
        #[arg(
            long,
            value_name = "SYSCALLS",
            value_delimiter = ',',
            requires = "kill_at"
        )]
        kill_in_kernel: Option<Vec<String>>,
        /// Where a model's descriptor cannot be followed, a watched process's acts for this
        /// many milliseconds after it opens the model are in the `load` phase [default: 10000].
        #[arg(long, value_name = "MS")]
        load_window_ms: Option<u64>,
        /// After the loader closes a model's descriptor, its acts for this many milliseconds
        /// more are in the `load` phase [default: 1000].
        #[arg(long, value_name = "MS")]
        load_grace_ms: Option<u64>,
        /// A policy file (YAML): kill settings, and lists, rules and exceptions for this watch
        /// only (`monitorctl watch profile ID` prints one).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Learn the service's profile for this long (`90s`, `10m`, `2h`), reporting only
        /// what is never learned; then enforce it: only acts outside the profile fire.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        learn: Option<u64>,
    },
    /// Learn a watch's service again, for DURATION (`90s`, `10m`, `2h`); the new profile
    /// replaces the exceptions learned before (`learned-*`), the rest of the policy stays.
    Learn {
        id: String,
        #[arg(value_parser = parse_duration)]
        duration: u64,
    },
    /// Print a watch's policy, its learned profile included, as a YAML document to review,
    /// edit and give back with `monitorctl watch policy ID FILE`.
    Profile { id: String },
    /// Replace a watch's policy with FILE (YAML), without stopping the watch.
    Policy { id: String, file: PathBuf },
    /// The watches, with what each has seen.
    List,
    /// One watch, with its recent kills.
    Show { id: String },
    /// Stop a watch (its findings stay in the store).
    Rm { id: String },
    /// Print findings and kills as they happen, until interrupted.
    Tail {
        /// Only this watch's.
        #[arg(long, value_name = "ID")]
        watch: Option<String>,
        /// Scans' findings too.
        #[arg(long)]
        all: bool,
        /// One JSON object per line, as the daemon sends them.
        #[arg(long)]
        json: bool,
    },
}

/// Seconds in `90`, `90s`, `10m`, `2h`.
fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| "a duration: 90s, 10m, 2h".to_owned())?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err("a duration: 90s, 10m, 2h".into()),
    };
    if seconds == 0 {
        return Err("a duration above zero".into());
    }
    Ok(seconds)
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| "one of info, low, medium, high, critical".to_owned())
}

pub fn main(args: WatchArgs) -> ExitCode {
    crate::common::block_on(" watch", watch(args))
}

async fn watch(args: WatchArgs) -> Result<()> {
    let socket = client::socket_path(args.socket.as_deref());
    // Watches live in the daemon: without one there is nothing to do.
    let client = Client::connect(&socket).await?;
    match args.command {
        WatchCommand::Add {
            cgroup,
            pid,
            exe,
            name,
            kill_at,
            kill_in_kernel,
            load_window_ms,
            load_grace_ms,
            policy,
            learn,
        } => {
            let kill_in_kernel = kill_in_kernel.map(|names| {
                names
                    .into_iter()
                    .filter(|n| n != "none" && !n.is_empty())
                    .collect::<Vec<_>>()
            });
            let policy = policy
                .map(|path| {
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading the policy {}", path.display()))
                })
                .transpose()?;
            let body = WatchRequest {
                name,
                cgroup,
                pid,
                // The daemon resolves nothing against its own working directory.
                exe: exe.map(|exe| std::path::absolute(&exe).unwrap_or(exe)),
                kill_at,
                kill_in_kernel,
                load_window_ms,
                load_grace_ms,
                policy,
                learn_secs: learn,
            };
            let reply = client.post_json("/v1/watches", &body).await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            let watch: monitor_api::Watch = reply.parse()?;
            println!("{}", watch.id);
            eprintln!(
                "monitorctl: watching {}; `monitorctl watch tail` shows what it finds",
                printable(&describe(&watch))
            );
        }
        WatchCommand::Learn { id, duration } => {
            let reply = client
                .post_json(
                    &format!("/v1/watches/{}/learn", client::segment(&id)),
                    &LearnRequest { seconds: duration },
                )
                .await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            eprintln!(
                "monitorctl: watch {id} learns for {duration} s, then enforces its profile \
                 (`monitorctl watch profile {id}` shows it)"
            );
        }
        WatchCommand::Profile { id } => {
            let reply = client
                .get(&format!("/v1/watches/{}/profile", client::segment(&id)))
                .await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            print!("{}", String::from_utf8_lossy(&reply.body));
        }
        WatchCommand::Policy { id, file } => {
            let text = std::fs::read(&file)
                .with_context(|| format!("reading the policy {}", file.display()))?;
            let reply = client
                .put(
                    &format!("/v1/watches/{}/policy", client::segment(&id)),
                    text,
                )
                .await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            eprintln!(
                "monitorctl: watch {id} now has the policy of {}",
                file.display()
            );
        }
        WatchCommand::List => {
            let reply = client.get("/v1/watches").await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            let mut table =
                crate::common::table(["id", "state", "events", "findings", "kills", "what"]);
            for w in &reply.parse::<monitor_api::WatchList>()?.watches {
                table.add_row([
                    printable(&w.id).into_owned(),
                    w.state.name().to_owned(),
                    w.events.to_string(),
                    w.findings.to_string(),
                    w.kills.to_string(),
                    printable(&describe(w)).into_owned(),
                ]);
            }
            for column in 2..5 {
                if let Some(c) = table.column_mut(column) {
                    c.set_cell_alignment(comfy_table::CellAlignment::Right);
                }
            }
            println!("{table}");
        }
        WatchCommand::Show { id } => {
            let reply = client
                .get(&format!("/v1/watches/{}", client::segment(&id)))
                .await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            let watch: monitor_api::Watch = reply.parse()?;
            println!("{}", serde_json::to_string_pretty(&watch)?);
        }
        WatchCommand::Rm { id } => {
            let reply = client
                .delete(&format!("/v1/watches/{}", client::segment(&id)))
                .await?;
            if reply.status >= 400 {
                bail!("{}", reply.error_message());
            }
            eprintln!("monitorctl: watch {id} stopped");
        }
        WatchCommand::Tail { watch, all, json } => {
            client
                .follow("/v1/findings/stream", |data| {
                    let Ok(item) = serde_json::from_str::<StreamItem>(data) else {
                        return true;
                    };
                    let wanted = match &watch {
                        Some(id) => {
                            matches!(&item.origin, Origin::Watch { watch_id } if watch_id == id)
                        }
                        None => all || matches!(item.origin, Origin::Watch { .. }),
                    };
                    if wanted {
                        if json {
                            println!("{data}");
                        } else {
                            // Payload-chosen names and paths: escaped, one line each.
                            println!("{}", printable(&line(&item)));
                        }
                    }
                    true
                })
                .await?;
        }
    }
    Ok(())
}

/// "cgroup X", "pid N", "executable P" or "discovery", with the name.
fn describe(w: &monitor_api::Watch) -> String {
    let what = match &w.spec.selector {
        Selector::Cgroup(path) => format!("cgroup {}", path.display()),
        Selector::Pid { pid, .. } => format!("pid {pid}"),
        Selector::Executable(path) => format!("executable {}", path.display()),
        Selector::Discovery { .. } => "processes that open model files (discovery)".into(),
    };
    match &w.spec.name {
        Some(name) => format!("{name}: {what}"),
        None => what,
    }
}

/// One line of `watch tail`.
fn line(item: &StreamItem) -> String {
    let owner = item.job_id();
    match &item.event {
        StreamEvent::Discovered(found) => format!(
            "DISCOVERED [{owner}] pid {} {}: opened {} ({}: {}); watched from now on",
            found.pid,
            found.comm,
            found.path.as_deref().unwrap_or("a model artifact"),
            found.opened.content.name().replace('_', " "),
            found.opened.what,
        ),
        StreamEvent::Gap(gap) => format!(
            "GAP [{owner}] pid {} {}: opened {} as it was let go of; watched again, its acts in \
             between unseen",
            gap.pid, gap.comm, gap.path,
        ),
        StreamEvent::Kill(kill) => {
            let how = match kill["by"].as_str() {
                Some("kernel") => format!(
                    "in the kernel at {}",
                    kill["syscall"].as_str().unwrap_or("?")
                ),
                _ => format!("at finding {}", kill["rule"].as_str().unwrap_or("?")),
            };
            format!(
                "KILLED [{owner}] pid {} {} {how}",
                kill["pid"],
                kill["comm"].as_str().unwrap_or("")
            )
        }
        StreamEvent::Learned(_) => {
            format!("LEARNED [{owner}] the learning window ended: the watch enforces its profile")
        }
        StreamEvent::Finding(f) => finding_line(owner, f),
    }
}

fn finding_line(owner: &str, f: &Value) -> String {
    let e = &f["event"];
    // A load phase names its model and what bounds it (the descriptor still open, closed
    // within the grace, a fixed window, a process the load started).
    let phase = match f["load"]["artifact"].as_str() {
        Some(model) => format!(
            "load phase of {model}, {}",
            f["load"]["bound"].as_str().unwrap_or("?").replace('_', " ")
        ),
        None => format!("{} phase", f["phase"].as_str().unwrap_or("?")),
    };
    format!(
        "{} {}{} [{owner}] {}: pid {} {} {}({}) = {} ({phase})",
        f["severity"].as_str().unwrap_or("?").to_uppercase(),
        f["rule"].as_str().unwrap_or("?"),
        if f["blocked"].as_bool() == Some(true) {
            " BLOCKED"
        } else {
            ""
        },
        f["description"].as_str().unwrap_or(""),
        e["pid"],
        e["comm"].as_str().unwrap_or(""),
        e["syscall"].as_str().unwrap_or("?"),
        e["args"],
        e["ret"],
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::line;

    #[test]
    fn a_tail_line_says_blocked_and_names_the_model_of_a_load_phase() {
        let item = json!({
            "source": "watch",
            "watch_id": "3f0c",
            "finding": {
                "rule": "exec.program", "severity": "high", "phase": "load", "blocked": true,
                "description": "A program was executed",
                "load": {"artifact": "/srv/models/evil.pt", "bound": "descriptor_closed"},
                "event": {"pid": 42, "comm": "python3", "syscall": "execve",
                          "args": {"filename": "/bin/sh"}, "ret": null}
            }
        });
        let text = line(&serde_json::from_value(item.clone()).unwrap());
        assert!(
            text.starts_with("HIGH exec.program BLOCKED [3f0c]"),
            "{text}"
        );
        assert!(
            text.ends_with("(load phase of /srv/models/evil.pt, descriptor closed)"),
            "{text}"
        );
        let mut serving = item.clone();
        serving["finding"]["blocked"] = json!(false);
        serving["finding"]["phase"] = json!("run");
        serving["finding"]["load"] = json!(null);
        let text = line(&serde_json::from_value(serving).unwrap());
        assert!(text.starts_with("HIGH exec.program [3f0c]") && text.ends_with("(run phase)"));
    }
}
