//! What an idle monitord costs the host, and what its first scan pays for attaching the
//! syscall hooks (issue 21): the real daemon, started with a short `hooks_linger_ms`, is
//! measured once it has detached them. Each round, in turns: the loops with no daemon; the
//! loops beside the idle daemon; a scan through it while its hooks are detached (cold), then
//! one while they are still attached (warm). And, in-process, the attach alone: the probes
//! loaded, their syscall hooks detached, then attached again.

// The benchmark uses part of it.
#[allow(dead_code)]
#[path = "../support/daemon.rs"]
mod daemon;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_api::client::Client;
use monitor_engine::probes::{HooksState, ProbeConfig, Probes};
use tokio::runtime::Runtime;

use crate::{
    cost::LOOPS,
    cpu, launch,
    quiet::Quiet,
    stats::{Samples, ratios},
    workload::{Kind, Workload},
};

/// The idle daemon's linger: short, so that a round waits little for the detach.
const LINGER_MS: u64 = 1000;

/// One loop beside no daemon and beside the idle one, in nanoseconds per iteration.
pub struct IdleCost {
    pub kind: Kind,
    pub iterations: u64,
    pub no_daemon: Samples,
    pub idle_daemon: Samples,
}

impl IdleCost {
    pub fn ratio(&self) -> Samples {
        ratios(&self.idle_daemon, &self.no_daemon)
    }
}

/// A small pickle's scan through the daemon, submitted to done, in seconds.
#[derive(Default)]
pub struct FirstScan {
    /// Submitted with the syscall hooks detached: it attaches them.
    pub cold: Samples,
    /// Submitted while they are still attached (within the linger of the one before).
    pub warm: Samples,
    /// Cold less warm, within each round: what the attach added.
    pub extra: Samples,
    /// In-process: attaching the syscall hooks of loaded probes, in seconds.
    pub attach: Samples,
    /// In-process: from the start of a detach to its end (in the background in monitord).
    pub detach: Samples,
}

pub fn measure(
    rt: &Runtime,
    dir: &Path,
    rounds: usize,
    quiet: &mut Quiet,
) -> Result<(Vec<IdleCost>, FirstScan)> {
    let (scan_dir, benign, _) = daemon::scan_bench_setup("idle")?;
    let workload = |kind, iterations| Workload {
        kind,
        iterations,
        file: dir.join(crate::OPENED),
        report: dir.join("loop-report"),
        cpu: cpu::WORKLOAD,
    };
    let mut costs: Vec<IdleCost> = LOOPS
        .iter()
        .map(|&(kind, iterations, _)| IdleCost {
            kind,
            iterations,
            no_daemon: Samples::default(),
            idle_daemon: Samples::default(),
        })
        .collect();
    let mut first = FirstScan::default();
    for round in 1..=rounds {
        quiet.check(&format!("idle daemon, round {round} of {rounds}"))?;
        for c in &mut costs {
            let w = workload(c.kind, c.iterations);
            c.no_daemon.push(per_iteration(launch::plain(&w)?, &w));
        }
        let state = scan_dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&state)?;
        let (daemon, client) =
            daemon::Daemon::start(&state, &format!("hooks_linger_ms = {LINGER_MS}\n"))?;
        rt.block_on(wait_for_hooks(&client, "detached"))?;
        for c in &mut costs {
            let w = workload(c.kind, c.iterations);
            c.idle_daemon.push(per_iteration(launch::plain(&w)?, &w));
        }
        let cold = rt.block_on(time_scan(&client, &benign))?;
        let warm = rt.block_on(time_scan(&client, &benign))?;
        first.cold.push(cold);
        first.warm.push(warm);
        first.extra.push(cold - warm);
        daemon.stop()?;
    }
    for _ in 0..rounds {
        let (attach, detach) = attach_alone()?;
        first.attach.push(attach);
        first.detach.push(detach);
    }
    Ok((costs, first))
}

/// Loads the probes, detaches their syscall hooks, attaches them again: the seconds the
/// attach took, and the detach before it.
fn attach_alone() -> Result<(f64, f64)> {
    let mut probes = Probes::load(&ProbeConfig::default()).context("loading the probes")?;
    let detaching = Instant::now();
    probes.detach_syscalls();
    while probes.syscalls_state() != HooksState::Detached {
        std::thread::sleep(Duration::from_millis(5));
    }
    let detach = detaching.elapsed().as_secs_f64();
    let attaching = Instant::now();
    probes
        .attach_syscalls()
        .context("attaching the syscall hooks again")?;
    Ok((attaching.elapsed().as_secs_f64(), detach))
}

/// Waits until the daemon's status says its syscall hooks are in `state`.
async fn wait_for_hooks(client: &Client, state: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = client.get("/v1/status").await?.json()?;
        if status["probes"]["syscall_hooks"]["state"] == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the syscall hooks never became {state}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scans `path` through the daemon: seconds from submission to the verdict.
async fn time_scan(client: &Client, path: &Path) -> Result<f64> {
    let started = Instant::now();
    let id = daemon::submit_scan(client, path).await?;
    loop {
        let record = client.get(&format!("/v1/scans/{id}")).await?.json()?;
        if record["status"] == "done" {
            if record["verdict"] != "clean" {
                bail!("the benign pickle's scan was not clean: {record}");
            }
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("scan {id} did not finish: {record}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn per_iteration(elapsed: Duration, w: &Workload) -> f64 {
    elapsed.as_nanos() as f64 / w.iterations as f64
}
