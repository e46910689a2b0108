//! `cargo xtask bench probes`: what monitor's probes cost the processes beside them and the
//! ones they watch, and how fast the user-space pipeline turns ring-buffer records into
//! events. Prints a markdown report for docs/benchmarks.md.
//!
//! A bench target of monitor-daemon (not part of xtask) because it needs the engine, which
//! xtask must build without; harness-less, so it is never part of `cargo test`.
//!
//! Every workload is this binary re-executed with `--workload ...` (see [`workload`]): it
//! pins itself to one CPU and times its own loop, so start-up and tracer set-up never count.

mod breakdown;
mod consumer;
mod control;
mod cost;
mod cpu;
mod idle;
mod job;
mod launch;
mod machine;
mod quiet;
mod replay;
mod report;
mod session;
mod stats;
mod throughput;
mod workload;

use anyhow::{Context as _, Result, bail};

use crate::{
    machine::Machine,
    quiet::Quiet,
    report::{Results, Rounds},
    workload::Workload,
};

/// The file the open loops open, in the benchmark's temporary directory.
pub const OPENED: &str = "opened";

const ROUNDS: Rounds = Rounds {
    cost: 11,
    replay: 5,
    live: 5,
    idle: 7,
};

fn main() -> Result<()> {
    if let Some(workload) = Workload::from_args()? {
        return workload.run();
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let machine = Machine::describe()?;
    cpu::pin(cpu::CONSUMER)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    std::fs::write(dir.path().join(OPENED), b"the open loops open this file\n")
        .context("creating the file the open loops open")?;
    // One thread: the consumer stays on the CPU it is pinned to.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;

    let mut quiet = Quiet::new();
    // `MONITOR_BENCH_ONLY=replay`: the user-space pipeline's rows alone (a minute, for work on
    // the decoder, the tracer or the judge; under a profiler too).
    // `MONITOR_BENCH_ONLY=cost`: what the probes cost the loops beside them and the ones they
    // watch, alone (a minute and a half, for work on the kernel programs).
    match std::env::var("MONITOR_BENCH_ONLY").as_deref() {
        Ok("replay") => {
            let replay = replay::measure(&rt, dir.path(), ROUNDS.replay, &mut quiet)?;
            report::print_replay(&replay);
            return Ok(());
        }
        Ok("cost") => {
            let (costs, probe_times) = cost::measure(&rt, dir.path(), ROUNDS.cost, &mut quiet)?;
            report::print_cost(&costs, &probe_times, &quiet);
            return Ok(());
        }
        // `MONITOR_BENCH_ONLY=breakdown`: where a watched open loop's time goes, by kernel
        // program and against the reader (two minutes; not part of the full run, since the
        // kernel's statistics slow every program down while they are on).
        Ok("breakdown") => {
            let rounds = match std::env::var("MONITOR_BENCH_ROUNDS") {
                Ok(n) => n.parse().context("MONITOR_BENCH_ROUNDS is not a number")?,
                Err(_) => ROUNDS.idle,
            };
            let b = breakdown::measure(&rt, dir.path(), rounds, &mut quiet)?;
            report::print_breakdown(&b, &quiet);
            return Ok(());
        }
        // `MONITOR_BENCH_ONLY=idle`: the idle daemon's rows alone (a few minutes).
        Ok("idle") => {
            let idle = idle::measure(&rt, dir.path(), ROUNDS.idle, &mut quiet)?;
            report::print_idle(&idle);
            return Ok(());
        }
        _ => {}
    }
    let (costs, probe_times) = cost::measure(&rt, dir.path(), ROUNDS.cost, &mut quiet)?;
    let replay = replay::measure(&rt, dir.path(), ROUNDS.replay, &mut quiet)?;
    let live = throughput::measure(&rt, dir.path(), ROUNDS.live, &mut quiet)?;
    let idle = idle::measure(&rt, dir.path(), ROUNDS.idle, &mut quiet)?;
    report::print(&Results {
        machine: &machine,
        rounds: ROUNDS,
        costs: &costs,
        probe_times: &probe_times,
        replay: &replay,
        live: &live,
        idle: &idle,
        quiet: &quiet,
    });
    Ok(())
}
