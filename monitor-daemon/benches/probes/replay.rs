//! The user-space pipeline alone, on one core: records captured from the real ring buffer
//! (a watched open loop, with its start-up), kept as raw bytes, then replayed through the
//! decoder, the decoder and the tracer (entry/exit pairing, process table), and those and the
//! default rules. No kernel and no waiting is in the timed part.

use std::{hint::black_box, path::Path, time::Instant};

use anyhow::{Result, bail};
use monitor_daemon::{
    decode::Decoder,
    rules::{Phase, RuleSet},
    trace::{Event, Tracer},
};
use tokio::runtime::Runtime;

use crate::{
    cpu,
    quiet::Quiet,
    session::Session,
    stats::Samples,
    workload::{Kind, Workload},
};

/// Records per second through each stage.
pub struct Replay {
    pub records: usize,
    pub bytes: usize,
    pub decode: Samples,
    pub decode_pair: Samples,
    pub decode_pair_judge: Samples,
}

/// Open-loop iterations captured: two records each.
const ITERATIONS: u64 = 100_000;
/// Large enough to hold the whole capture without a reader running.
const RING_BYTES: u32 = 128 << 20;

pub fn measure(rt: &Runtime, dir: &Path, rounds: usize, quiet: &mut Quiet) -> Result<Replay> {
    let raw = capture(rt, dir)?;
    let decoder = Decoder::default();
    let rules = RuleSet::defaults();
    let mut replay = Replay {
        records: raw.len(),
        bytes: raw.iter().map(Vec::len).sum(),
        decode: Samples::default(),
        decode_pair: Samples::default(),
        decode_pair_judge: Samples::default(),
    };
    // Every stage must see every record decode, or its rate would flatter it.
    let rate = |stage: &dyn Fn() -> Result<usize>| -> Result<f64> {
        let start = Instant::now();
        let decoded = stage()?;
        let elapsed = start.elapsed();
        if decoded != raw.len() {
            bail!(
                "{} of {} records did not decode",
                raw.len() - decoded,
                raw.len()
            );
        }
        Ok(raw.len() as f64 / elapsed.as_secs_f64())
    };
    for round in 1..=rounds {
        quiet.check(&format!("decoder replay, round {round} of {rounds}"))?;
        replay.decode.push(rate(&|| Ok(decode(&decoder, &raw)))?);
        replay
            .decode_pair
            .push(rate(&|| Ok(decode_pair(&decoder, &raw)))?);
        replay
            .decode_pair_judge
            .push(rate(&|| Ok(decode_pair_judge(&decoder, &rules, &raw)))?);
    }
    Ok(replay)
}

/// Runs an open loop in a watched cgroup with a ring buffer that holds all of it, and keeps
/// every record's bytes.
fn capture(rt: &Runtime, dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut session = Session::load(rt, RING_BYTES, false)?;
    session.capture(&Workload {
        kind: Kind::OpenStat,
        iterations: ITERATIONS,
        file: dir.join(crate::OPENED),
        report: dir.join("capture-report"),
        cpu: cpu::WORKLOAD,
    })
}

fn decode(decoder: &Decoder, raw: &[Vec<u8>]) -> usize {
    raw.iter()
        .filter(|r| black_box(decoder.decode(r)).is_ok())
        .count()
}

fn decode_pair(decoder: &Decoder, raw: &[Vec<u8>]) -> usize {
    let mut tracer = Tracer::default();
    let mut decoded = 0;
    for r in raw {
        if let Ok(record) = decoder.decode(r) {
            decoded += 1;
            tracer.push(record, &mut |e| drop(black_box(e)));
        }
    }
    tracer.flush(&mut |e| drop(black_box(e)));
    decoded
}

/// As `run::run` does: events of a batch are judged after the batch has been paired.
fn decode_pair_judge(decoder: &Decoder, rules: &RuleSet, raw: &[Vec<u8>]) -> usize {
    const BATCH: usize = 1024;
    let mut tracer = Tracer::default();
    let mut events: Vec<Event> = Vec::with_capacity(BATCH);
    let mut decoded = 0;
    for chunk in raw.chunks(BATCH) {
        for r in chunk {
            if let Ok(record) = decoder.decode(r) {
                decoded += 1;
                tracer.push(record, &mut |e| events.push(e));
            }
        }
        for event in events.drain(..) {
            let cwd = tracer
                .processes()
                .get(event.pid)
                .and_then(|p| p.cwd.as_deref());
            black_box(rules.judge(&event, Phase::Run, cwd));
        }
    }
    decoded
}
