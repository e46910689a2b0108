//! `cargo xtask bench soak`: the real monitord under a long mixed load. 1,000 small-pickle
//! scans (half benign, half running `true`), four at a time, while a process in a watched
//! cgroup makes traced syscalls at a set rate. Checked: every verdict right and every report
//! stored, which scans' traces are incomplete (records dropped), the watch's drops, and the
//! daemon's resident memory over the run. Harness-less: never part of `cargo test`.
//!
//! The flood is this binary run again as `workload-flood RATE SECONDS`.

#[allow(dead_code)]
#[path = "support/daemon.rs"]
mod support;

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_api::client::Client;
use monitor_engine::cgroup::{self, JobCgroup};
use serde_json::{Value, json};
use support::{Daemon, memory, submit_scan};

const SCANS: usize = 1000;
const CONCURRENT: usize = 4;
/// Traced syscalls per second of the watched process.
const FLOOD_RATE: u64 = 200_000;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("workload-flood") {
        return workload_flood(args[2].parse()?, args[3].parse()?);
    }
    let (dir, benign, malicious) = support::scan_bench_setup("soak")?;
    let (daemon, client) = Daemon::start(
        dir.path(),
        &format!("max_concurrent_scans = {CONCURRENT}\n"),
    )?;
    let pid = daemon.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_start = memory(pid, "VmRSS")?;

    let flood_cgroup = JobCgroup::create(&format!("bench-soak-{}", std::process::id()))?;
    let watch = rt.block_on(async {
        let reply = client
            .post_json(
                "/v1/watches",
                &json!({ "cgroup": flood_cgroup.path(), "name": "soak flood" }),
            )
            .await?;
        if reply.status != 201 {
            bail!("watch refused: {}", reply.error_message());
        }
        Ok(reply.json()?["id"].as_str().unwrap_or_default().to_owned())
    })?;
    // Longer than the scans take; stopped when they are done.
    let mut flood = spawn_flood(&flood_cgroup, FLOOD_RATE, 3600)?;

    eprintln!("soak: {SCANS} scans, {CONCURRENT} at a time, flood at {FLOOD_RATE}/s");
    let started = Instant::now();
    let outcome = rt.block_on(run_scans(&client, &benign, &malicious, pid));
    let secs = started.elapsed().as_secs_f64();
    let _ = flood.kill();
    let _ = flood.wait();
    let outcome = outcome?;
    let watch_view: Value = rt.block_on(async {
        client
            .get(&format!("/v1/watches/{watch}"))
            .await?
            .json()
            .context("reading the watch")
    })?;
    // A watch's drops are counted when it stops.
    let dropped = rt.block_on(async {
        client.delete(&format!("/v1/watches/{watch}")).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reply = client.get("/metrics").await?;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        anyhow::Ok(metric(&text, "monitor_events_dropped_total"))
    })?;
    let rss_end = memory(pid, "VmRSS")?;
    let rss_peak = memory(pid, "VmHWM")?;
    drop(daemon);

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("## Soak (`cargo xtask bench soak`)\n");
    println!(
        "{SCANS} small-pickle scans over the socket (half benign, half running `true`), \
         monitord running {CONCURRENT} at a time, while a process in a watched cgroup makes \
         kill(self, 0) calls (traced, no rule) at a target of {FLOOD_RATE}/s.\n"
    );
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| scans finished | {} / {SCANS} |", outcome.finished);
    println!("| wrong verdicts | {} |", outcome.wrong.len());
    println!("| reports missing | {} |", outcome.reports_missing);
    println!(
        "| scans with an incomplete trace (never clean) | {} |",
        outcome.incomplete
    );
    println!(
        "| wall time | {secs:.1} s ({:.1} scans/s) |",
        SCANS as f64 / secs
    );
    let events = watch_view["events"].as_u64().unwrap_or(0);
    println!(
        "| watched flood: events judged ({:.0}/s) / records dropped | {events} / {} |",
        events as f64 / secs,
        dropped.map_or("?".into(), |d| format!("{d:.0}"))
    );
    println!(
        "| monitord RSS: idle / after 100 scans / min-max during / end / peak (MiB) | {:.1} / {:.1} / {:.1}-{:.1} / {:.1} / {:.1} |",
        mib(rss_start),
        mib(outcome.rss_after_100),
        mib(outcome.rss_min),
        mib(outcome.rss_max),
        mib(rss_end),
        mib(rss_peak)
    );
    if !outcome.wrong.is_empty() {
        println!("\nWrong verdicts: {:?}", outcome.wrong);
    }
    Ok(())
}

/// What came of the scans.
struct Outcome {
    finished: usize,
    wrong: Vec<String>,
    reports_missing: usize,
    incomplete: usize,
    rss_after_100: u64,
    rss_min: u64,
    rss_max: u64,
}

/// Submits the scans, keeping twice `CONCURRENT` outstanding, and checks each one's record
/// and report as it finishes.
async fn run_scans(
    client: &Client,
    benign: &Path,
    malicious: &Path,
    daemon_pid: u32,
) -> Result<Outcome> {
    let mut outcome = Outcome {
        finished: 0,
        wrong: Vec::new(),
        reports_missing: 0,
        incomplete: 0,
        rss_after_100: 0,
        rss_min: u64::MAX,
        rss_max: 0,
    };
    let mut outstanding: Vec<(String, &str)> = Vec::new();
    let mut next = 0;
    let mut last_sample = Instant::now();
    while outcome.finished < SCANS {
        while next < SCANS && outstanding.len() < 2 * CONCURRENT {
            let (path, want) = if next % 2 == 0 {
                (malicious, "malicious")
            } else {
                (benign, "clean")
            };
            outstanding.push((submit_scan(client, path).await?, want));
            next += 1;
        }
        let mut still = Vec::new();
        for (id, want) in outstanding.drain(..) {
            let record: Value = client.get(&format!("/v1/scans/{id}")).await?.json()?;
            if record["status"] != "done" {
                still.push((id, want));
                continue;
            }
            outcome.finished += 1;
            if record["verdict"] != want {
                outcome.wrong.push(format!("{id}: {}", record["verdict"]));
            }
            let report = client.get(&format!("/v1/scans/{id}/report")).await?;
            match report.json() {
                Ok(report) if report.get("verdict").is_some() => {
                    if report["trace"]["complete"] == false {
                        outcome.incomplete += 1;
                    }
                }
                _ => outcome.reports_missing += 1,
            }
            if outcome.finished.is_multiple_of(100) {
                eprintln!("soak: {} scans done", outcome.finished);
            }
            if outcome.finished == 100 {
                outcome.rss_after_100 = memory(daemon_pid, "VmRSS")?;
            }
        }
        outstanding = still;
        if last_sample.elapsed() > Duration::from_secs(1) {
            let rss = memory(daemon_pid, "VmRSS")?;
            outcome.rss_min = outcome.rss_min.min(rss);
            outcome.rss_max = outcome.rss_max.max(rss);
            last_sample = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if outcome.rss_min == u64::MAX {
        outcome.rss_min = outcome.rss_max;
    }
    Ok(outcome)
}

/// Starts the flood inside `cgroup` (joined before exec).
fn spawn_flood(cgroup: &JobCgroup, rate: u64, secs: u64) -> Result<std::process::Child> {
    let procs = cgroup.procs_file()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["workload-flood", &rate.to_string(), &secs.to_string()]);
    // SAFETY: join_in_child only calls write(2).
    unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
    cmd.spawn().context("starting the flood")
}

/// `rate` kill(self, 0) calls a second, in 10 ms slices (a burst, then sleep), for `secs`.
fn workload_flood(rate: u64, secs: u64) -> Result<()> {
    let me = std::process::id() as libc::pid_t;
    let per_slice = rate / 100;
    let start = Instant::now();
    let mut slice = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..per_slice {
            // SAFETY: signal 0 only checks that the process exists.
            unsafe { libc::kill(me, 0) };
        }
        slice += 1;
        if let Some(wait) = (Duration::from_millis(10) * slice).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// The value of an unlabelled metric in Prometheus' text format.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
