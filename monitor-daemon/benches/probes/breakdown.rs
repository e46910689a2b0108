//! Where a watched open loop's time goes (`MONITOR_BENCH_ONLY=breakdown`): the kernel
//! programs' own time per iteration, from the kernel's run-time statistics (on only while this
//! runs: they add two clock reads to every program run), beside the loop's time unwatched,
//! attached but unwatched, watched and read (as `monitorctl run` reads), and watched with
//! nobody reading until the loop is over (what the reader on the other CPU costs the loop).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use monitor_engine::probes::ProgramRuns;
use tokio::runtime::Runtime;

use crate::{
    consumer::Consumer,
    cpu, launch,
    quiet::Quiet,
    session::Session,
    stats::{Samples, ratios},
    workload::{Kind, Workload},
};

const ITERATIONS: u64 = 80_000;

/// Big enough for every record of an unread loop (about 400 bytes an iteration).
const UNREAD_RING_BYTES: u32 = 64 << 20;

/// One program's cost per iteration of a loop.
#[derive(Default)]
pub struct ProgramShare {
    pub runs: Samples,
    pub ns: Samples,
}

#[derive(Default)]
pub struct Breakdown {
    pub detached: Samples,
    pub attached: Samples,
    pub watched: Samples,
    pub unread: Samples,
    /// By program: runs and ns per iteration, attached but unwatched.
    pub attached_programs: BTreeMap<String, ProgramShare>,
    /// By program: runs and ns per iteration, watched (and read).
    pub watched_programs: BTreeMap<String, ProgramShare>,
}

impl Breakdown {
    pub fn watched_ratio(&self) -> Samples {
        ratios(&self.watched, &self.detached)
    }

    pub fn unread_ratio(&self) -> Samples {
        ratios(&self.unread, &self.detached)
    }
}

/// Adds what each program that ran at least once an iteration did between `before` and
/// `after` to `into`.
fn add_runs(
    into: &mut BTreeMap<String, ProgramShare>,
    before: &[ProgramRuns],
    after: Vec<ProgramRuns>,
) {
    for done in ProgramRuns::since(after, before) {
        let runs = done.runs as f64 / ITERATIONS as f64;
        // Programs the loop does not run (a fork elsewhere on the host) are noise here.
        if runs < 0.5 {
            continue;
        }
        let share = into.entry(done.name).or_default();
        share.runs.push(runs);
        share
            .ns
            .push(done.time.as_nanos() as f64 / ITERATIONS as f64);
    }
}

pub fn measure(rt: &Runtime, dir: &Path, rounds: usize, quiet: &mut Quiet) -> Result<Breakdown> {
    let w = Workload {
        kind: Kind::OpenStat,
        iterations: ITERATIONS,
        file: dir.join(crate::OPENED),
        report: dir.join("loop-report"),
        cpu: cpu::WORKLOAD,
    };
    let per_iteration = |d: Duration| d.as_nanos() as f64 / ITERATIONS as f64;
    let mut b = Breakdown::default();
    for round in 1..=rounds {
        quiet.check(&format!("breakdown, round {round} of {rounds}"))?;
        b.detached.push(per_iteration(launch::plain(&w)?));
        {
            let mut session = Session::default_load(rt)?;
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("turning on the kernel's BPF run-time statistics")?;
            let before = session.program_runs()?;
            b.attached.push(per_iteration(launch::plain(&w)?));
            add_runs(&mut b.attached_programs, &before, session.program_runs()?);
            let before = session.program_runs()?;
            let run = session.run(rt, &w, Consumer::Judged)?;
            add_runs(&mut b.watched_programs, &before, session.program_runs()?);
            if run.dropped > 0 {
                bail!("the watched run lost {} records", run.dropped);
            }
            b.watched.push(run.loop_ns_per_iteration);
        }
        {
            let mut session = Session::load(rt, UNREAD_RING_BYTES, false)?;
            let records = session.capture(&w)?;
            b.unread.push(per_iteration(w.elapsed()?));
            drop(records);
        }
    }
    Ok(b)
}
