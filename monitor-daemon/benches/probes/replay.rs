//! The user-space pipeline alone, on one core: records captured from the real ring buffer
//! (a watched open loop, with its start-up), kept as raw bytes, then replayed through the
//! decoder, the decoder and the tracer (entry/exit pairing, process table), and those and the
//! default rules; then as a live watch judges them (with the process table and the watch's
//! name), under the default rules and under a learned policy. No kernel and no waiting is in
//! the timed part.

use std::{hint::black_box, path::Path, time::Instant};

use anyhow::{Context, Result, bail};
use monitor_engine::decode::{Decoder, recording};
use monitor_engine::trace::Tracer;
use monitor_rules::judge::{Judge, Plain, Setting};
use monitor_rules::{Finding, Phase, RuleSet};
use monitor_watch::policy::PolicyFile;
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
    /// The events the records make (a syscall with its result, a fork, an exec, an exit),
    /// whether its entry and exit came in one record or two.
    pub events: usize,
    pub bytes: usize,
    pub decode: Samples,
    pub decode_pair: Samples,
    pub decode_pair_judge: Samples,
    /// As a live watch judges: the default rules, a learned profile (the example model
    /// server's), and a learned profile whose exceptions take back a finding on every record.
    pub watch_default: Samples,
    pub watch_learned: Samples,
    pub watch_learned_every: Samples,
}

/// The watch's name the rules are judged for.
const WATCH: &str = "model-server";

/// The profile `monitorctl watch profile` printed for the example model server
/// (examples/model-server) after 20 s of learning, with its paths made generic.
const LEARNED: &str = "\
exceptions:
- rule: cred.read
  name: learned-files
  phases: [run]
  fields: [exe, path]
  values:
  - [/opt/serving/venv/bin/python3, /var/lib/model-server/.aws/credentials]
- rule: cred.read
  name: learned-files-on-load
  fields: [exe, path]
  values:
  - [/opt/serving/venv/bin/python3, /proc/self/environ]
- rule: exec.failed
  name: learned-programs
  phases: [run]
  fields: [exe, parent_exe]
  values:
  - [/opt/serving/venv/bin/python3, /opt/serving/venv/bin/python3]
- rule: exec.program
  name: learned-programs
  phases: [run]
  fields: [exe, parent_exe]
  values:
  - [/usr/bin/df, /opt/serving/venv/bin/python3]
  - [/usr/bin/uname, /opt/serving/venv/bin/python3]
  - [/opt/serving/venv/bin/python3, /usr/lib/systemd/systemd]
- rule: exec.program
  name: learned-programs-on-load
  fields: [exe, parent_exe]
  values:
  - [/sbin/ldconfig, /opt/serving/venv/bin/python3]
  - [/opt/serving/venv/bin/python3, /opt/serving/venv/bin/python3]
- rule: file.write-on-load
  name: learned-directories-on-load
  fields: [exe, path]
  values:
  - [/opt/serving/venv/bin/python3, /tmp/*]
- rule: net.connect
  name: learned-peers
  phases: [run]
  fields: [exe, addr, port]
  values:
  - [/opt/serving/venv/bin/python3, loopback, 9000]
- rule: net.listen
  name: learned-peers-on-load
  fields: [exe, addr, port]
  values:
  - [/opt/serving/venv/bin/python3, loopback, 8080]
- rule: net.socket
  name: learned-calls-on-load
  fields: [exe, syscall]
  values:
  - [/opt/serving/venv/bin/python3, socket]
";

/// [`LEARNED`], and a rule of the policy's that fires on every open of the loop's `file`
/// but for the learned exception that takes it back (the judge's worst case: a rule and an
/// exception matched on every record).
fn learned_every(file: &Path) -> Result<String> {
    let exe = std::env::current_exe()?;
    Ok(format!(
        "rules:\n\
         - id: bench.opened\n  description: The open loop's file was opened\n  severity: medium\n  \
         match: {{ syscalls: [openat], path: [{file}] }}\n\
         {LEARNED}\
         - rule: bench.opened\n  name: learned-files\n  phases: [run]\n  fields: [exe, path]\n  \
         values:\n  - [{exe}, {file}]\n",
        file = file.display(),
        exe = exe.display(),
    ))
}

/// The default rules with a policy document's (as a watch enforcing it judges).
fn with_policy(text: &str) -> Result<RuleSet> {
    Ok(PolicyFile::parse(text)?.rules_over(&RuleSet::defaults(), text, true)?)
}

/// Open-loop iterations captured: two records each.
const ITERATIONS: u64 = 100_000;
/// Large enough to hold the whole capture without a reader running.
const RING_BYTES: u32 = 128 << 20;

pub fn measure(rt: &Runtime, dir: &Path, rounds: usize, quiet: &mut Quiet) -> Result<Replay> {
    let raw = capture(rt, dir)?;
    // `MONITOR_BENCH_CAPTURE=FILE` keeps the capture, to replay it under a profiler
    // (monitor-rules' golden test `replay_for_profiling`, with `MONITOR_REPLAY_RECORDS=FILE`).
    if let Some(file) = std::env::var_os("MONITOR_BENCH_CAPTURE") {
        recording::write(Path::new(&file), &raw)
            .with_context(|| format!("keeping the capture in {}", file.display()))?;
    }
    let decoder = Decoder::default();
    let rules = RuleSet::defaults();
    let learned = with_policy(LEARNED)?;
    let every = with_policy(&learned_every(&dir.join(crate::OPENED))?)?;
    // The policies must judge as they say: nothing more than the default rules find (the
    // exceptions take back what the policy's rule finds on every record).
    let found = |rules: &RuleSet| decode_pair_watch(&decoder, rules, &raw).1;
    let (default_found, learned_found, every_found) =
        (found(&rules), found(&learned), found(&every));
    if learned_found > default_found || every_found > default_found {
        bail!(
            "a learned policy found more than the default rules ({learned_found} and \
             {every_found} findings, {default_found} by default)"
        );
    }
    let mut replay = Replay {
        records: raw.len(),
        events: events(&decoder, &raw),
        bytes: raw.iter().map(Vec::len).sum(),
        decode: Samples::default(),
        decode_pair: Samples::default(),
        decode_pair_judge: Samples::default(),
        watch_default: Samples::default(),
        watch_learned: Samples::default(),
        watch_learned_every: Samples::default(),
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
        for (samples, rules) in [
            (&mut replay.watch_default, &rules),
            (&mut replay.watch_learned, &learned),
            (&mut replay.watch_learned_every, &every),
        ] {
            samples.push(rate(&|| Ok(decode_pair_watch(&decoder, rules, &raw).0))?);
        }
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

fn events(decoder: &Decoder, raw: &[Vec<u8>]) -> usize {
    let mut tracer = Tracer::default();
    let mut events = 0;
    for record in raw.iter().filter_map(|r| decoder.decode(r).ok()) {
        tracer.push(record, &mut |_| events += 1);
    }
    tracer.flush(&mut |_| events += 1);
    events
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

/// Decodes `raw` a batch at a time and feeds each batch to the judge all jobs share
/// (`monitor_rules::judge`), judging every event in `setting`, for the watch called `watch`.
/// Records decoded, and findings.
fn decode_pair_then_judge(
    decoder: &Decoder,
    rules: &RuleSet,
    raw: &[Vec<u8>],
    setting: Setting,
    watch: Option<&str>,
) -> (usize, usize) {
    const BATCH: usize = 1024;
    let mut judge = Judge::new(Tracer::default()).for_watch(watch.map(str::to_owned));
    let mut found = 0;
    let mut scope = Plain::new(setting, |f: &Finding| {
        black_box(f);
        found += 1;
    });
    let mut records = Vec::with_capacity(BATCH);
    let mut decoded = 0;
    for chunk in raw.chunks(BATCH) {
        records.extend(chunk.iter().filter_map(|r| decoder.decode(r).ok()));
        decoded += records.len();
        judge.feed(&mut records, rules, &mut scope);
    }
    judge.finish(rules, &mut scope);
    (decoded, found)
}

/// As `run::run` does: each event judged by `rules` in the run phase.
fn decode_pair_judge(decoder: &Decoder, rules: &RuleSet, raw: &[Vec<u8>]) -> usize {
    decode_pair_then_judge(decoder, rules, raw, Setting::in_phase(Phase::Run), None).0
}

/// As a live watch's judge does: each event judged in its context (the process table's view
/// of its process, the watch's name), by `rules`. Records decoded, and findings.
fn decode_pair_watch(decoder: &Decoder, rules: &RuleSet, raw: &[Vec<u8>]) -> (usize, usize) {
    let setting = Setting {
        process_view: true,
        ..Setting::in_phase(Phase::Run)
    };
    decode_pair_then_judge(decoder, rules, raw, setting, Some(WATCH))
}
