//! The live runs of the pipeline section, and what each shows. The set-ups take turns within
//! each round, like the cost loops.

use std::path::Path;

use anyhow::Result;
use monitor_engine::probes::ProbeConfig;
use tokio::runtime::Runtime;

use crate::{
    consumer::Consumer,
    cpu,
    quiet::Quiet,
    session::{LiveRun, Session},
    stats::Samples,
    workload::{Kind, Workload},
};

/// Repeated live runs of one set-up.
pub struct LiveRow {
    pub producer: Kind,
    pub iterations: u64,
    pub consumer: Consumer,
    pub runs: Vec<LiveRun>,
}

impl LiveRow {
    pub fn loop_ns_per_iteration(&self) -> Samples {
        self.runs.iter().map(|r| r.loop_ns_per_iteration).collect()
    }

    pub fn offered_per_s(&self) -> Samples {
        self.runs.iter().map(|r| r.offered_per_s).collect()
    }

    pub fn decoded_per_s(&self) -> Samples {
        self.runs.iter().map(|r| r.decoded_per_s).collect()
    }

    pub fn offered(&self) -> Samples {
        self.runs.iter().map(|r| r.offered as f64).collect()
    }

    pub fn decoded(&self) -> Samples {
        self.runs.iter().map(|r| r.decoded as f64).collect()
    }

    pub fn dropped(&self) -> Samples {
        self.runs.iter().map(|r| r.dropped as f64).collect()
    }

    pub fn dropped_share(&self) -> Samples {
        self.runs
            .iter()
            .map(|r| r.dropped as f64 / r.offered as f64)
            .collect()
    }

    /// Every record the kernel wrote was decoded (dropped ones are counted apart).
    pub fn accounted(&self) -> bool {
        self.runs.iter().all(|r| r.decoded == r.written)
    }
}

/// The set-ups, each a producer running flat out and a consumer:
/// - the open loop, read as monitor's reader does, then also paired and judged;
/// - the cheapest traced syscall, for the most records one CPU can produce;
/// - the open loop against a consumer that polls instead of being woken;
/// - 2x overload: the open loop against a consumer that takes half of what is offered. The
///   ring buffer (16 MiB) holds about 140,000 open records and fills at half the offered rate,
///   so this run fills it a few times over.
const SETUPS: [(Kind, u64, Consumer); 5] = [
    (Kind::OpenStat, 150_000, Consumer::Woken),
    (Kind::OpenStat, 150_000, Consumer::Judged),
    (Kind::Kill0, 300_000, Consumer::Woken),
    (Kind::OpenStat, 150_000, Consumer::Polled),
    (Kind::OpenStat, 500_000, Consumer::Overloaded(2)),
];

pub fn measure(rt: &Runtime, dir: &Path, rounds: usize, quiet: &mut Quiet) -> Result<Vec<LiveRow>> {
    let mut rows: Vec<LiveRow> = SETUPS
        .iter()
        .map(|&(producer, iterations, consumer)| LiveRow {
            producer,
            iterations,
            consumer,
            runs: Vec::with_capacity(rounds),
        })
        .collect();
    let mut reading = Session::default_load(rt)?;
    let mut overloaded = Session::load(rt, ProbeConfig::default().ring_buffer_bytes, true)?;
    for round in 1..=rounds {
        quiet.check(&format!("live pipeline, round {round} of {rounds}"))?;
        for row in &mut rows {
            let workload = Workload {
                kind: row.producer,
                iterations: row.iterations,
                file: dir.join(crate::OPENED),
                report: dir.join("live-report"),
                cpu: cpu::WORKLOAD,
            };
            let session = match row.consumer {
                Consumer::Overloaded(_) => &mut overloaded,
                _ => &mut reading,
            };
            row.runs.push(session.run(rt, &workload, row.consumer)?);
        }
    }
    Ok(rows)
}
