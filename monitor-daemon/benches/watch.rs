//! `cargo xtask bench watch`: how fast a live watch of the real monitord tells and acts, and
//! what discovery costs everything else on the host. Harness-less: never part of `cargo test`.
//!
//! 1. Finding latency: a watched process reads a honeytoken every few milliseconds; each
//!    read's kernel time (CLOCK_MONOTONIC, in the finding) is compared with the time the
//!    finding arrives on `/v1/findings/stream`.
//! 2. Kill: under `kill_at` with the in-kernel kill of execve, a watched process starts
//!    children that each try to execute a program; counted: how many programs ran (goal: none)
//!    and the time from the execve's entry to the parent seeing the child dead.
//! 3. Discovery's cost: an unwatched open+close loop, with monitord's kernel programs loaded
//!    and discovery switched off and on between short rounds.
//!
//! The workloads are this binary run again with a first argument naming the workload.

#[allow(dead_code)]
#[path = "support/daemon.rs"]
mod support;

use std::{
    collections::HashMap,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_common::event::{Counter, Discovery, Watch};
use monitor_engine::cgroup::{self, JobCgroup};
use monitor_engine::probes::{ProbeConfig, Probes, ProgramRuns};
use monitor_watch::artifact::{DEFAULT_SUFFIXES, kernel_suffixes};
use serde_json::{Value, json};
use support::Daemon;

const READS: usize = 300;
const READ_GAP: Duration = Duration::from_millis(5);
const EXECS: usize = 50;
const OPENS: u32 = 200_000;
const DISCOVERY_ROUNDS: usize = 40;
/// Rounds of each side with the kernel's run-time statistics on.
const STATS_ROUNDS: usize = 10;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("workload-reads") => return workload_reads(Path::new(&args[2]), Path::new(&args[3])),
        Some("workload-execs") => return workload_execs(Path::new(&args[2])),
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let dir = tempfile::Builder::new()
        .prefix("monitor-bench-watch-")
        .tempdir_in("/var/tmp")?;
    if args.get(1).map(String::as_str) == Some("discovery") {
        // One section, for working on it: `target/release/deps/watch-* discovery`.
        return discovery_cost(dir.path());
    }
    println!("## Live watches (`cargo xtask bench watch`)\n");
    finding_latency(dir.path())?;
    kill_latency(dir.path())?;
    discovery_cost(dir.path())?;
    Ok(())
}

/// Reads the honeytoken `READS` times, `READ_GAP` apart, once `go` exists.
fn workload_reads(go: &Path, token: &Path) -> Result<()> {
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..READS {
        drop(std::fs::File::open(token)?);
        std::thread::sleep(READ_GAP);
    }
    Ok(())
}

/// Once `dir/go` exists, starts `EXECS` children that each execute `touch dir/ran-N`; prints
/// one JSON line per child: its pid, whether a signal ended it, and when its parent saw it end.
fn workload_execs(dir: &Path) -> Result<()> {
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..EXECS {
        let mut child = Command::new("/usr/bin/touch")
            .arg(dir.join(format!("ran-{i}")))
            .spawn()?;
        let pid = child.id();
        let status = child.wait()?;
        println!(
            "{}",
            json!({ "pid": pid, "signal": status.signal(), "seen_dead_ns": monotonic_ns() })
        );
    }
    Ok(())
}

fn finding_latency(dir: &Path) -> Result<()> {
    let work = dir.join("latency");
    std::fs::create_dir_all(work.join(".aws"))?;
    let token = work.join(".aws/credentials");
    std::fs::write(&token, "[default]\n")?;
    let go = work.join("go");
    let cgroup = JobCgroup::create(&format!("bench-watch-{}", std::process::id()))?;
    let (daemon, client) = Daemon::start(&work, "")?;
    let mut workload = spawn_in(
        &cgroup,
        &[
            "workload-reads",
            &go.display().to_string(),
            &token.display().to_string(),
        ],
    )?;
    let rt = runtime()?;
    let latencies = rt.block_on(async {
        let reply = client
            .post_json("/v1/watches", &json!({ "cgroup": cgroup.path() }))
            .await?;
        if reply.status != 201 {
            bail!("the watch was refused: {}", reply.error_message());
        }
        let mut latencies = Vec::with_capacity(READS);
        let follow = client.follow("/v1/findings/stream", |data| {
            let now = monotonic_ns();
            if let Ok(item) = serde_json::from_str::<Value>(data)
                && item["finding"]["rule"] == "cred.read"
                && let Some(t) = item["finding"]["event"]["time_ns"].as_u64()
            {
                latencies.push(now.saturating_sub(t) as f64 / 1e6);
            }
            latencies.len() < READS
        });
        let start = async {
            // The stream is open once the daemon has taken the connection.
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(&go, "")?;
            Ok::<_, anyhow::Error>(())
        };
        let (followed, started) =
            tokio::join!(tokio::time::timeout(Duration::from_secs(60), follow), start);
        started?;
        followed.context("the findings did not all arrive in 60 s")??;
        Ok(latencies)
    })?;
    workload.wait()?;
    daemon.stop()?;
    let (median, p99, max) = percentiles(latencies.clone());
    println!("### From the offending syscall to the finding on the stream\n");
    println!(
        "A process in a watched cgroup opens a honeytoken {READS} times, {} ms apart; each \
         `cred.read` finding's kernel time against its arrival on `/v1/findings/stream` \
         (server-sent events over the Unix socket, read by this benchmark).\n",
        READ_GAP.as_millis()
    );
    println!("| findings | median | p99 | max | goal: median |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {} | {median:.2} ms | {p99:.2} ms | {max:.2} ms | <= 10 ms: {} |\n",
        latencies.len(),
        if median <= 10.0 { "met" } else { "**not met**" }
    );
    Ok(())
}

fn kill_latency(dir: &Path) -> Result<()> {
    let work = dir.join("kill");
    std::fs::create_dir_all(&work)?;
    let cgroup = JobCgroup::create(&format!("bench-kill-{}", std::process::id()))?;
    let (daemon, client) = Daemon::start(&work, "")?;
    let rt = runtime()?;
    // Started before the watch: its own start is an exec the policy would kill.
    let workload = spawn_in_piped(&cgroup, &["workload-execs", &work.display().to_string()])?;
    let kills = rt.block_on(async {
        let reply = client
            .post_json(
                "/v1/watches",
                &json!({ "cgroup": cgroup.path(), "kill_at": "critical", "kill_in_kernel": ["execve"] }),
            )
            .await?;
        if reply.status != 201 {
            bail!("the watch was refused: {}", reply.error_message());
        }
        let mut kills: HashMap<u64, u64> = HashMap::new();
        let follow = client.follow("/v1/findings/stream", |data| {
            if let Ok(item) = serde_json::from_str::<Value>(data)
                && item["kill"]["by"] == "kernel"
                && let (Some(pid), Some(t)) =
                    (item["kill"]["pid"].as_u64(), item["kill"]["time_ns"].as_u64())
            {
                kills.insert(pid, t);
            }
            kills.len() < EXECS
        });
        let start = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(work.join("go"), "")?;
            Ok::<_, anyhow::Error>(())
        };
        let (followed, started) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(60), follow),
            start
        );
        started?;
        followed.context("the kills were not all reported in 60 s")??;
        Ok(kills)
    })?;
    let out = workload.wait_with_output()?;
    daemon.stop()?;
    let mut latencies = Vec::new();
    let mut killed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let child: Value = serde_json::from_str(line)?;
        if child["signal"] == 9 {
            killed += 1;
        }
        if let (Some(pid), Some(dead)) = (child["pid"].as_u64(), child["seen_dead_ns"].as_u64())
            && let Some(entry) = kills.get(&pid)
        {
            latencies.push(dead.saturating_sub(*entry) as f64 / 1e6);
        }
    }
    let ran = (0..EXECS)
        .filter(|i| work.join(format!("ran-{i}")).exists())
        .count();
    let (median, p99, max) = percentiles(latencies);
    println!("### Kill on high risk\n");
    println!(
        "A watched process starts {EXECS} children that each execute `touch`; the watch kills \
         execve in the kernel (`kill_in_kernel: [execve]`). A program that ran would have \
         created its file.\n"
    );
    println!(
        "| children | killed by SIGKILL | programs that ran | execve entry -> parent sees the child dead: median | p99 | max |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {EXECS} | {killed} | {ran} (goal 0: {}) | {median:.3} ms | {p99:.3} ms | {max:.3} ms |\n",
        if ran == 0 { "met" } else { "**not met**" }
    );
    Ok(())
}

fn discovery_cost(dir: &Path) -> Result<()> {
    let file = dir.join("not-a-model.txt");
    std::fs::write(&file, "x")?;
    // The kernel programs as monitord loads them, in this process: discovery is switched on
    // and off between short rounds, so both sides see the same machine from moment to moment.
    let mut probes = Probes::load(&ProbeConfig::default()).context("loading the probes")?;
    let watch = Watch {
        id: 1,
        ..Watch::default()
    };
    probes.watch(&watch, &[])?;
    let mut discovery = Discovery {
        enabled: 1,
        watch,
        ..Discovery::default()
    };
    let suffixes: Vec<String> = DEFAULT_SUFFIXES.iter().map(|s| s.to_string()).collect();
    kernel_suffixes(&suffixes, &mut discovery)?;
    pin_to_last_cpu()?;
    open_loop(&file, OPENS)?; // warm-up
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..DISCOVERY_ROUNDS {
        for enabled in [false, true] {
            probes.set_discovery(enabled.then_some(&discovery))?;
            let ns = open_loop(&file, OPENS / 4)?;
            if enabled { &mut on } else { &mut off }.push(ns);
        }
    }
    probes.set_discovery(None)?;
    let costs = program_costs(&mut probes, &discovery, &file)?;
    let discovered = probes.counters()?.get(Counter::Discovered);
    let ratios: Vec<f64> = off.iter().zip(&on).map(|(a, b)| b / a).collect();
    let (off_m, _, _) = percentiles(off.clone());
    let (on_m, _, _) = percentiles(on.clone());
    let (ratio, _, _) = percentiles(ratios.clone());
    let (lo, hi) = (percentile(&ratios, 0.1), percentile(&ratios, 0.9));
    println!(
        "### What discovery costs the rest of the host
"
    );
    println!(
        "An unwatched loop of open+close on a file that is not a model, pinned to one CPU, with \
         monitord's kernel programs loaded and attached; discovery switched off and on between \
         rounds of {} opens ({DISCOVERY_ROUNDS} rounds each). With discovery on, the kernel \
         reads the path of every open on the host and matches its end against the model \
         suffixes. Ratio of each on round to the off round before it; median (10th-90th \
         percentile). Processes discovered meanwhile: {discovered} (0 expected).\n",
        OPENS / 4
    );
    println!("| discovery off, ns/open | discovery on, ns/open | on / off (p10-p90) | goal |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {off_m:.0} | {on_m:.0} | {ratio:.3} ({lo:.3}-{hi:.3}) | <= 1.05: {} |",
        if ratio <= 1.05 { "met" } else { "**not met**" }
    );
    println!(
        "\nWhere it goes: the kernel's run-time statistics of each program that ran, on for \
         {STATS_ROUNDS} more rounds of each (they add two clock reads to every run, so these \
         rounds are not the ones above); runs of every process on the host, per open of the \
         loop.\n"
    );
    println!("| program | runs/open off | runs/open on | ns/run off | ns/run on | extra ns/open |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for c in &costs {
        println!(
            "| `{}` | {:.2} | {:.2} | {:.0} | {:.0} | {:+.0} |",
            c.name,
            c.runs[0],
            c.runs[1],
            c.ns_per_run[0],
            c.ns_per_run[1],
            c.ns_per_open[1] - c.ns_per_open[0],
        )
    }
    Ok(())
}

/// One program's share of the open+close loop, discovery off (`[0]`) and on (`[1]`).
struct ProgramCost {
    name: String,
    runs: [f64; 2],
    ns_per_run: [f64; 2],
    ns_per_open: [f64; 2],
}

/// What each kernel program costs per open of the loop with discovery off and on, from the
/// kernel's run-time statistics (on only while this runs: they slow every program down).
fn program_costs(
    probes: &mut Probes,
    discovery: &Discovery,
    file: &Path,
) -> Result<Vec<ProgramCost>> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("turning on the kernel's BPF run-time statistics")?;
    let opens = OPENS / 4;
    // By program: [off, on] totals of (run time, runs).
    let mut totals: HashMap<String, [(Duration, u64); 2]> = HashMap::new();
    for _ in 0..STATS_ROUNDS {
        for (side, enabled) in [false, true].into_iter().enumerate() {
            probes.set_discovery(enabled.then_some(discovery))?;
            let before = probes.program_runs()?;
            open_loop(file, opens)?;
            for done in ProgramRuns::since(probes.program_runs()?, &before) {
                let total = &mut totals.entry(done.name).or_default()[side];
                total.0 += done.time;
                total.1 += done.runs;
            }
        }
    }
    probes.set_discovery(None)?;
    let all = f64::from(opens) * STATS_ROUNDS as f64;
    let mut costs: Vec<ProgramCost> = totals
        .into_iter()
        // Programs the loop does not run (a fork elsewhere on the host) are noise here.
        .filter(|(_, t)| (t[0].1 + t[1].1) as f64 >= all / 10.0)
        .map(|(name, t)| {
            let ns = |i: usize| t[i].0.as_nanos() as f64;
            let runs = |i: usize| t[i].1 as f64;
            ProgramCost {
                name,
                runs: [runs(0) / all, runs(1) / all],
                ns_per_run: [ns(0) / runs(0).max(1.0), ns(1) / runs(1).max(1.0)],
                ns_per_open: [ns(0) / all, ns(1) / all],
            }
        })
        .collect();
    costs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(costs)
}

/// The `q` quantile of `values` (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Pins this thread to the last CPU, away from the daemon's and the kernel's usual first.
fn pin_to_last_cpu() -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    let mut set = nix::sched::CpuSet::new();
    set.set(cpus - 1)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("pinning to a CPU")
}

/// ns per open+close of `file`, in this (unwatched) process.
fn open_loop(file: &Path, opens: u32) -> Result<f64> {
    let start = Instant::now();
    for _ in 0..opens {
        drop(std::fs::File::open(file)?);
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(opens))
}

fn spawn_in(cgroup: &JobCgroup, args: &[&str]) -> Result<std::process::Child> {
    command_in(cgroup, args)?
        .spawn()
        .context("starting a workload")
}

fn spawn_in_piped(cgroup: &JobCgroup, args: &[&str]) -> Result<std::process::Child> {
    command_in(cgroup, args)?
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting a workload")
}

/// This binary, run again as workload `args`, inside `cgroup` from its first instruction.
fn command_in(cgroup: &JobCgroup, args: &[&str]) -> Result<Command> {
    let procs = cgroup.procs_file()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args);
    // SAFETY: join_in_child only calls write(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
    Ok(cmd)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Median, 99th percentile and maximum.
fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

/// CLOCK_MONOTONIC, the clock of the kernel's records.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
