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

/// How many times the cost rows' iterations each idle loop runs (about a second each).
const IDLE_LOOP_SCALE: u64 = 4;

/// One loop beside no daemon and beside the idle one: nanoseconds per iteration, of the
/// loop's duration and of its thread's CPU time.
pub struct IdleCost {
    pub kind: Kind,
    pub iterations: u64,
    pub no_daemon: Samples,
    pub idle_daemon: Samples,
    pub no_daemon_cpu: Samples,
    pub idle_daemon_cpu: Samples,
}

impl IdleCost {
    /// Of the loop's duration: what the host's work waits.
    pub fn ratio(&self) -> Samples {
        ratios(&self.idle_daemon, &self.no_daemon)
    }

    /// Of the loop thread's CPU time: what each of its syscalls costs it (the daemon's own
    /// threads, if they ran on its CPU, do not count here).
    pub fn cpu_ratio(&self) -> Samples {
        ratios(&self.idle_daemon_cpu, &self.no_daemon_cpu)
    }
}

/// What the idle daemon itself did while the loops ran beside it, per second.
#[derive(Default)]
pub struct DaemonUsage {
    /// CPU time of all its threads, in milliseconds per second.
    pub cpu_ms: Samples,
    /// Times its threads were put on a CPU (wake-ups), per second.
    pub wakeups: Samples,
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

/// Everything this module measures.
pub struct Idle {
    pub costs: Vec<IdleCost>,
    pub daemon: DaemonUsage,
    pub first_scan: FirstScan,
}

pub fn measure(rt: &Runtime, dir: &Path, rounds: usize, quiet: &mut Quiet) -> Result<Idle> {
    let (scan_dir, benign, _) = daemon::scan_bench_setup("idle")?;
    let workload = |kind, iterations| Workload {
        kind,
        iterations,
        file: dir.join(crate::OPENED),
        report: dir.join("loop-report"),
        cpu: cpu::WORKLOAD,
    };
    let mut idle = Idle {
        costs: LOOPS
            .iter()
            .map(|&(kind, iterations, _)| IdleCost {
                kind,
                // Longer than the cost rows' loops: the difference sought is a hundredth.
                iterations: iterations * IDLE_LOOP_SCALE,
                no_daemon: Samples::default(),
                idle_daemon: Samples::default(),
                no_daemon_cpu: Samples::default(),
                idle_daemon_cpu: Samples::default(),
            })
            .collect(),
        daemon: DaemonUsage::default(),
        first_scan: FirstScan::default(),
    };
    // The loops with no daemon; `beside`: with the idle one, whose use is sampled around them.
    let run_loops = |costs: &mut [IdleCost], beside: Option<(u32, &mut DaemonUsage)>| {
        let before = beside.as_ref().map(|(pid, _)| usage(*pid)).transpose()?;
        let started = Instant::now();
        for c in costs.iter_mut() {
            let w = workload(c.kind, c.iterations);
            let wall = per_iteration(launch::plain(&w)?, &w);
            let cpu = per_iteration(w.cpu_time()?, &w);
            let (wall_samples, cpu_samples) = if beside.is_some() {
                (&mut c.idle_daemon, &mut c.idle_daemon_cpu)
            } else {
                (&mut c.no_daemon, &mut c.no_daemon_cpu)
            };
            wall_samples.push(wall);
            cpu_samples.push(cpu);
        }
        if let (Some((pid, used)), Some(before)) = (beside, before) {
            let seconds = started.elapsed().as_secs_f64();
            let after = usage(pid)?;
            used.cpu_ms
                .push((after.0 - before.0).as_secs_f64() * 1e3 / seconds);
            used.wakeups.push((after.1 - before.1) as f64 / seconds);
        }
        anyhow::Ok(())
    };
    for round in 1..=rounds {
        quiet.check(&format!("idle daemon, round {round} of {rounds}"))?;
        // The arms take turns going first, so that a drift of the machine's speed within a
        // round (a neighbour, the clock) does not land on one arm only.
        let daemon_first = round % 2 == 0;
        if !daemon_first {
            run_loops(&mut idle.costs, None)?;
        }
        let state = scan_dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&state)?;
        let (daemon, client) =
            daemon::Daemon::start(&state, &format!("hooks_linger_ms = {LINGER_MS}\n"))?;
        rt.block_on(wait_for_hooks(&client, "detached"))?;
        settle(daemon.pid())?;
        run_loops(&mut idle.costs, Some((daemon.pid(), &mut idle.daemon)))?;
        let cold = rt.block_on(time_scan(&client, &benign))?;
        let warm = rt.block_on(time_scan(&client, &benign))?;
        let first = &mut idle.first_scan;
        first.cold.push(cold);
        first.warm.push(warm);
        first.extra.push(cold - warm);
        daemon.stop()?;
        if daemon_first {
            run_loops(&mut idle.costs, None)?;
        }
    }
    for _ in 0..rounds {
        let (attach, detach) = attach_alone()?;
        idle.first_scan.attach.push(attach);
        idle.first_scan.detach.push(detach);
    }
    Ok(idle)
}

/// The CPU time of all of `pid`'s threads so far, and how many times they were put on a CPU
/// (`/proc/PID/task/*/schedstat`: nanoseconds on a CPU, waiting, timeslices).
fn usage(pid: u32) -> Result<(Duration, u64)> {
    let mut total = (Duration::ZERO, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue; // a thread that just ended
        };
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [on_cpu, _, slices] = fields[..] else {
            bail!("unexpected schedstat {text:?}");
        };
        total.0 += Duration::from_nanos(on_cpu);
        total.1 += slices;
    }
    Ok(total)
}

/// Waits (up to 10 s) until the just-started daemon has used no CPU for half a second: its
/// start-up and the detach behind it are over, and what the loops see is the daemon idle.
fn settle(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = usage(pid)?.0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = usage(pid)?.0;
        if now - last < Duration::from_millis(1) {
            return Ok(());
        }
        last = now;
    }
    Ok(())
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
