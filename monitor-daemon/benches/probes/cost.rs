//! What the probes cost the processes they run beside: each loop unwatched with the probes
//! detached (the baseline), unwatched with only the [`crate::control`], unwatched with the
//! probes attached, watched by monitor (read, paired and judged as `monitorctl run` does),
//! and under strace. They take turns within each round, so that the machine's drift (large on
//! this VM: the same loop varies by 20 % from one second to the next) hits them alike, and
//! ratios are taken within a round.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use tokio::runtime::Runtime;

use crate::{
    consumer::Consumer,
    control::UnusedSyscallTraced,
    cpu, launch,
    quiet::Quiet,
    session::Session,
    stats::{Samples, ratios},
    workload::{Kind, Workload},
};

/// One loop's results, in nanoseconds per iteration.
pub struct Cost {
    pub kind: Kind,
    pub iterations: u64,
    /// strace is some hundred times slower: it runs a shorter loop (the per-iteration cost of
    /// a steady loop does not depend on its length).
    pub strace_iterations: u64,
    pub detached: Samples,
    pub attached: Samples,
    /// Unwatched with only ftrace's event for an unused syscall enabled (see [`crate::control`]);
    /// `None` when that event was in use by someone else.
    pub control: Option<Samples>,
    pub watched: Samples,
    pub strace: Samples,
    /// Records per watched run.
    pub watched_records: Samples,
    /// Records of the watched runs that the kernel lost (must be 0 for a fair comparison).
    pub watched_dropped: u64,
}

impl Cost {
    pub fn attached_ratio(&self) -> Samples {
        ratios(&self.attached, &self.detached)
    }

    pub fn control_ratio(&self) -> Option<Samples> {
        self.control.as_ref().map(|c| ratios(c, &self.detached))
    }

    pub fn watched_ratio(&self) -> Samples {
        ratios(&self.watched, &self.detached)
    }

    pub fn strace_ratio(&self) -> Samples {
        ratios(&self.strace, &self.detached)
    }
}

/// How long loading and detaching the probes took, in seconds: what every `monitorctl run`
/// pays before and after its command.
#[derive(Default)]
pub struct ProbeTimes {
    pub load: Samples,
    pub detach: Samples,
}

/// The loops, their lengths, and the length of their strace runs: each run takes a few tenths
/// of a second here.
pub const LOOPS: [(Kind, u64, u64); 2] = [
    (Kind::ReadWrite, 500_000, 2_000),
    (Kind::OpenStat, 80_000, 1_000),
];

pub fn measure(
    rt: &Runtime,
    dir: &Path,
    rounds: usize,
    quiet: &mut Quiet,
) -> Result<(Vec<Cost>, ProbeTimes)> {
    let workload = |kind, iterations| Workload {
        kind,
        iterations,
        file: dir.join(crate::OPENED),
        report: dir.join("loop-report"),
        cpu: cpu::WORKLOAD,
    };
    let with_control = UnusedSyscallTraced::enable()?.is_some();
    if !with_control {
        eprintln!("bench: the control's tracefs event is in use by someone else; left out");
    }
    let mut costs: Vec<Cost> = LOOPS
        .iter()
        .map(|&(kind, iterations, strace_iterations)| Cost {
            kind,
            iterations,
            strace_iterations,
            detached: Samples::default(),
            attached: Samples::default(),
            control: with_control.then(Samples::default),
            watched: Samples::default(),
            strace: Samples::default(),
            watched_records: Samples::default(),
            watched_dropped: 0,
        })
        .collect();
    let mut probe_times = ProbeTimes::default();

    for round in 1..=rounds {
        quiet.check(&format!("cost, round {round} of {rounds}"))?;
        for c in &mut costs {
            let w = workload(c.kind, c.iterations);
            c.detached.push(per_iteration(launch::plain(&w)?, &w));
        }
        if with_control {
            let Some(_traced) = UnusedSyscallTraced::enable()? else {
                bail!("the control's tracefs event was enabled by someone else meanwhile");
            };
            for c in &mut costs {
                let w = workload(c.kind, c.iterations);
                let t = per_iteration(launch::plain(&w)?, &w);
                c.control.as_mut().expect("with_control").push(t);
            }
        }
        {
            let loading = Instant::now();
            let mut session = Session::default_load(rt)?;
            probe_times.load.push(loading.elapsed().as_secs_f64());
            // Attached, but nothing is watched yet.
            for c in &mut costs {
                let w = workload(c.kind, c.iterations);
                c.attached.push(per_iteration(launch::plain(&w)?, &w));
            }
            for c in &mut costs {
                let w = workload(c.kind, c.iterations);
                let run = session.run(rt, &w, Consumer::Judged)?;
                c.watched.push(run.loop_ns_per_iteration);
                c.watched_records.push(run.written as f64);
                c.watched_dropped += run.dropped;
            }
            let detaching = Instant::now();
            drop(session);
            probe_times.detach.push(detaching.elapsed().as_secs_f64());
        }
        for c in &mut costs {
            let w = workload(c.kind, c.strace_iterations);
            c.strace.push(per_iteration(launch::strace(&w)?, &w));
        }
    }
    Ok((costs, probe_times))
}

fn per_iteration(elapsed: Duration, w: &Workload) -> f64 {
    elapsed.as_nanos() as f64 / w.iterations as f64
}
