//! `cargo xtask bench daemon`: how many small-pickle scans per second the real monitord
//! finishes when they are submitted all at once, and how much memory it holds (idle, and at
//! its peak). Harness-less: never part of `cargo test`.

#[allow(dead_code)]
#[path = "support/daemon.rs"]
mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use monitor_api::client::Client;
use support::{Daemon, memory, submit_scan};

/// Scans per batch, and batches.
const SCANS: usize = 40;
const BATCHES: usize = 3;

fn main() -> Result<()> {
    let (dir, benign, malicious) = support::scan_bench_setup("daemon")?;

    let (daemon, client) = Daemon::start(dir.path(), "")?;
    let pid = daemon.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = memory(pid, "VmRSS")?;

    println!("## monitord throughput (`cargo xtask bench daemon`)\n");
    println!(
        "{BATCHES} batches of {SCANS} small-pickle scans (half benign, half running `true`) \
         submitted at once over the socket; a batch's time runs from the first submission to \
         the last verdict.\n"
    );
    println!("| batch | scans | seconds | scans/s |");
    println!("| --- | --- | --- | --- |");
    let mut rates = Vec::new();
    for batch in 1..=BATCHES {
        let started = Instant::now();
        rt.block_on(run_batch(&client, &benign, &malicious))?;
        let secs = started.elapsed().as_secs_f64();
        rates.push(SCANS as f64 / secs);
        println!(
            "| {batch} | {SCANS} | {secs:.2} | {:.1} |",
            SCANS as f64 / secs
        );
    }
    let peak = memory(pid, "VmHWM")?;
    rates.sort_by(f64::total_cmp);
    println!(
        "\nMedian {:.1} scans/s (goal >= 4). monitord's resident memory: {:.1} MiB idle after \
         start (goal <= 64), {:.1} MiB at its peak.",
        rates[rates.len() / 2],
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(daemon);
    Ok(())
}

async fn run_batch(client: &Client, benign: &Path, malicious: &Path) -> Result<()> {
    let mut submissions = tokio::task::JoinSet::new();
    for i in 0..SCANS {
        let (path, want) = if i % 2 == 0 {
            (malicious.to_path_buf(), "malicious")
        } else {
            (benign.to_path_buf(), "clean")
        };
        let client = client.clone();
        submissions.spawn(async move {
            Ok::<_, anyhow::Error>((submit_scan(&client, &path).await?, want))
        });
    }
    let mut ids = Vec::new();
    while let Some(submitted) = submissions.join_next().await {
        ids.push(submitted??);
    }
    for (id, want) in ids {
        loop {
            let record = client.get(&format!("/v1/scans/{id}")).await?.json()?;
            if record["status"] == "done" {
                if record["verdict"] != want {
                    bail!("scan {id}: {} instead of {want}", record["verdict"]);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
