//! Probes loaded once for a series of watched jobs. Loading takes a fraction of a second, but
//! detaching the ~120 attachments (tracepoints or kprobes) takes from 0.3 s to several seconds
//! here (the kernel detaches them one at a time, each after an RCU grace period), so a load
//! per job would dominate the benchmark's run time.

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use monitor_engine::probes::{ProbeConfig, Probes, ProgramRuns};
use monitor_engine::reader::Reader;
use monitor_rules::RuleSet;
use tokio::runtime::Runtime;

use crate::{
    consumer::{self, Consumer},
    job::{WatchedJob, wait_success},
    workload::Workload,
};

/// One watched job's numbers.
#[derive(Debug, Clone, Copy)]
pub struct LiveRun {
    /// Records the kernel wrote or tried to write (written + dropped), per second of the loop.
    pub offered_per_s: f64,
    /// Records decoded per second (see [`consumer::Consumed`]).
    pub decoded_per_s: f64,
    pub offered: u64,
    pub decoded: u64,
    /// Records the kernel wrote, by its own count: equal to `decoded` unless user space lost
    /// some, which would be a bug.
    pub written: u64,
    pub dropped: u64,
    /// The workload's loop, nanoseconds per iteration.
    pub loop_ns_per_iteration: f64,
}

/// How the ring buffer is read: through monitor's reader, or directly (to read less than
/// there is).
enum Ring {
    Reader(Reader),
    Raw(RingBuf<MapData>),
}

pub struct Session {
    probes: Probes,
    ring: Ring,
    rules: RuleSet,
}

impl Session {
    /// Loads and attaches the probes; `raw` keeps the ring buffer for [`Consumer::Overloaded`].
    pub fn load(rt: &Runtime, ring_buffer_bytes: u32, raw: bool) -> Result<Self> {
        let mut probes =
            Probes::load(&ProbeConfig { ring_buffer_bytes }).context("loading the probes")?;
        let events = probes
            .take_events()
            .context("the ring buffer is already taken")?;
        let ring = if raw {
            Ring::Raw(events)
        } else {
            let _runtime = rt.enter();
            Ring::Reader(Reader::new(events).context("registering the ring buffer with tokio")?)
        };
        Ok(Session {
            probes,
            ring,
            rules: RuleSet::defaults(),
        })
    }

    /// Production settings: the default ring buffer, read by monitor's reader.
    pub fn default_load(rt: &Runtime) -> Result<Self> {
        Session::load(rt, ProbeConfig::default().ring_buffer_bytes, false)
    }

    /// Runs `workload` in a fresh watched cgroup while `consumer` reads its records.
    pub fn run(
        &mut self,
        rt: &Runtime,
        workload: &Workload,
        consumer: Consumer,
    ) -> Result<LiveRun> {
        let job = WatchedJob::new(&mut self.probes)?;
        let mut child = job.spawn(workload.std_command()?)?;
        let consumed = match (&mut self.ring, consumer) {
            (Ring::Reader(reader), Consumer::Woken) => {
                consumer::woken(rt, reader, None, &job, &mut child)
            }
            (Ring::Reader(reader), Consumer::Judged) => {
                consumer::woken(rt, reader, Some(&self.rules), &job, &mut child)
            }
            (Ring::Reader(reader), Consumer::Polled) => consumer::polled(reader, &job, &mut child),
            (Ring::Raw(ring), Consumer::Overloaded(factor)) => {
                consumer::overloaded(ring, factor, &job, &mut child)
            }
            (_, consumer) => Err(anyhow::anyhow!(
                "consumer {consumer:?} does not fit how this session reads the ring buffer"
            )),
        };
        let consumed = consumed.inspect_err(|_| {
            let _ = child.kill();
        })?;
        wait_success(&mut child)?;
        let counters = job.counters()?;
        let loop_time = workload.elapsed()?;
        let offered = counters.events + counters.dropped;
        Ok(LiveRun {
            offered_per_s: offered as f64 / loop_time.as_secs_f64(),
            decoded_per_s: consumed.decoded_per_s,
            offered,
            decoded: consumed.decoded,
            written: counters.events,
            dropped: counters.dropped,
            loop_ns_per_iteration: loop_time.as_nanos() as f64 / workload.iterations as f64,
        })
    }

    /// Each program's name, total run time and run count (see `Probes::program_runs`).
    pub fn program_runs(&self) -> Result<Vec<ProgramRuns>> {
        Ok(self.probes.program_runs()?)
    }

    /// Runs `workload` watched with nobody reading, then takes every record's raw bytes. The
    /// ring buffer must hold them all.
    pub fn capture(&mut self, workload: &Workload) -> Result<Vec<Vec<u8>>> {
        let Ring::Reader(reader) = &mut self.ring else {
            bail!("capturing needs a session read through monitor's reader");
        };
        let job = WatchedJob::new(&mut self.probes)?;
        let mut child = job.spawn(workload.std_command()?)?;
        wait_success(&mut child)?;
        while job.is_populated()? {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut raw = Vec::new();
        reader.drain_raw(|r| raw.push(r.to_vec()));
        let counters = job.counters()?;
        if counters.dropped > 0 || counters.events != raw.len() as u64 {
            bail!(
                "capture incomplete: {} records read, the kernel wrote {} and dropped {}",
                raw.len(),
                counters.events,
                counters.dropped
            );
        }
        Ok(raw)
    }
}
