//! The ways this process consumes the ring buffer while a watched workload fills it, and
//! what each consumed.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use monitor_engine::decode::{Decoder, Record};
use monitor_engine::reader::Reader;
use monitor_rules::judge::{Judge, Plain, Setting};
use monitor_rules::{Finding, Phase, RuleSet};
use tokio::runtime::Runtime;

use crate::job::WatchedJob;

/// How the ring buffer is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// Sleep in epoll until the kernel signals records, drain, decode: monitor's reader.
    Woken,
    /// As [`Consumer::Woken`], then pair entries with exits and judge each event with the
    /// default rules: what `monitorctl run` does with every record.
    Judged,
    /// Drain and decode every millisecond without waiting for a signal. The kernel signals
    /// whenever a record lands in a buffer the consumer has emptied, so a consumer that keeps
    /// up is signalled for nearly every record; this shows what those signals cost.
    Polled,
    /// Decode at most 1/N of the records the kernel has offered so far (checked every
    /// millisecond against its counters): an overload of N times what the consumer takes.
    /// The real consumer is several times faster than one CPU can produce records, so an
    /// overload cannot be produced here other than by slowing the consumer down.
    Overloaded(u32),
}

/// What a consumer took from one job.
pub struct Consumed {
    pub decoded: u64,
    /// Records decoded per second, from the first decoded record to the last (or, for
    /// [`Consumer::Overloaded`], to the end of the overload).
    pub decoded_per_s: f64,
}

/// Counts decoded records and when they came.
struct Tally {
    decoded: u64,
    first: Option<Instant>,
    last: Instant,
    /// The rate, once it is fixed (see [`Tally::fix_rate`]).
    rate: Option<f64>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            decoded: 0,
            first: None,
            last: Instant::now(),
            rate: None,
        }
    }

    fn add(&mut self, n: usize) {
        if n > 0 {
            self.decoded += n as u64;
            self.last = Instant::now();
            self.first.get_or_insert(self.last);
        }
    }

    fn rate_so_far(&self) -> f64 {
        let span = self.last.duration_since(self.first.unwrap_or(self.last));
        self.decoded as f64 / span.as_secs_f64()
    }

    /// Records added from now on count, but no longer change the rate.
    fn fix_rate(&mut self) {
        self.rate = Some(self.rate_so_far());
    }

    fn done(self) -> Consumed {
        Consumed {
            decoded: self.decoded,
            decoded_per_s: self.rate.unwrap_or_else(|| self.rate_so_far()),
        }
    }
}

/// True once the workload has exited and left the cgroup: then every record it wrote is
/// committed to the ring buffer.
fn finished(job: &WatchedJob<'_>, child: &mut Child) -> Result<bool> {
    Ok(child.try_wait().context("polling the workload")?.is_some() && !job.is_populated()?)
}

/// [`Consumer::Woken`] and [`Consumer::Judged`].
pub fn woken(
    rt: &Runtime,
    reader: &mut Reader,
    judge: Option<&RuleSet>,
    job: &WatchedJob<'_>,
    child: &mut Child,
) -> Result<Consumed> {
    let mut records = Vec::with_capacity(4096);
    let mut tally = Tally::new();
    let mut judged = Judged::new(judge);
    let malformed_before = reader.malformed();
    rt.block_on(async {
        // Only to notice the end; records arrive through the reader's wake-ups.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                read = reader.read(&mut records) => {
                    read.context("reading the ring buffer")?;
                    tally.add(records.len());
                    judged.feed(&mut records);
                }
                _ = tick.tick() => if finished(job, child)? { break },
            }
        }
        anyhow::Ok(())
    })?;
    tally.add(reader.drain(&mut records));
    judged.feed(&mut records);
    if reader.malformed() > malformed_before {
        bail!(
            "{} records did not decode",
            reader.malformed() - malformed_before
        );
    }
    Ok(tally.done())
}

/// [`Consumer::Polled`].
pub fn polled(reader: &mut Reader, job: &WatchedJob<'_>, child: &mut Child) -> Result<Consumed> {
    let mut records = Vec::with_capacity(4096);
    let mut tally = Tally::new();
    let malformed_before = reader.malformed();
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let done = finished(job, child)?;
        tally.add(reader.drain(&mut records));
        records.clear();
        if done {
            break;
        }
    }
    if reader.malformed() > malformed_before {
        bail!(
            "{} records did not decode",
            reader.malformed() - malformed_before
        );
    }
    Ok(tally.done())
}

/// [`Consumer::Overloaded`]: reads the ring buffer directly, since the reader always drains
/// everything there is.
pub fn overloaded(
    ring: &mut RingBuf<MapData>,
    factor: u32,
    job: &WatchedJob<'_>,
    child: &mut Child,
) -> Result<Consumed> {
    let decoder = Decoder::default();
    let mut tally = Tally::new();
    let mut done = false;
    loop {
        // Once the workload is gone the overload is over: the rest is drained at full speed.
        let allowed = if done {
            u64::MAX
        } else {
            let offered = job.counters()?;
            (offered.events + offered.dropped) / u64::from(factor)
        };
        let mut n = 0;
        while tally.decoded + n < allowed {
            let Some(item) = ring.next() else { break };
            decoder.decode(&item).context("decoding a record")?;
            n += 1;
        }
        tally.add(n as usize);
        if done {
            break;
        }
        done = finished(job, child)?;
        if done {
            tally.fix_rate();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(tally.done())
}

/// Pairs and judges records as `run::run` does (the shared judge, in the run phase), when
/// asked to; otherwise drops them.
struct Judged<'r> {
    rules: Option<&'r RuleSet>,
    judge: Judge,
}

impl<'r> Judged<'r> {
    fn new(rules: Option<&'r RuleSet>) -> Self {
        Judged {
            rules,
            judge: Judge::default(),
        }
    }

    fn feed(&mut self, records: &mut Vec<Record>) {
        let Some(rules) = self.rules else {
            records.clear();
            return;
        };
        let mut scope = Plain::new(Setting::in_phase(Phase::Run), |f: &Finding| {
            std::hint::black_box(f);
        });
        self.judge.feed(records, rules, &mut scope);
    }
}
