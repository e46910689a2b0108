//! Whether something else was using the machine. On 2 CPUs one busy neighbour is enough to
//! make a 2 % difference meaningless, so before each round the benchmark idles for a moment
//! and measures how busy the CPUs were; the report says how busy they were at worst.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Above this share of busy CPU time before a round, its numbers are suspect.
pub const BUSY_LIMIT: f64 = 0.05;
const WINDOW: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Quiet {
    start: Instant,
    /// The largest busy share seen before a round, and before which.
    pub worst: f64,
    pub worst_before: String,
    /// Rounds that started on a busy machine.
    pub busy_rounds: usize,
}

impl Quiet {
    pub fn new() -> Self {
        Quiet {
            start: Instant::now(),
            worst: 0.0,
            worst_before: String::new(),
            busy_rounds: 0,
        }
    }

    /// Announces the round `what` and checks that the machine is idle before it starts.
    pub fn check(&mut self, what: &str) -> Result<()> {
        eprintln!(
            "bench: [{:5.1} s] {what}",
            self.start.elapsed().as_secs_f64()
        );
        let busy = busy_share(WINDOW)?;
        if busy > self.worst {
            self.worst = busy;
            self.worst_before = what.to_owned();
        }
        if busy > BUSY_LIMIT {
            self.busy_rounds += 1;
            eprintln!(
                "bench: warning: the CPUs were {:.0}% busy with other work just before this \
                 round; its numbers are suspect",
                busy * 100.0
            );
        }
        Ok(())
    }
}

/// The share of all CPUs' time spent busy during `window` (while the benchmark sleeps).
fn busy_share(window: Duration) -> Result<f64> {
    let before = cpu_times()?;
    std::thread::sleep(window);
    let after = cpu_times()?;
    let total = after.total.saturating_sub(before.total);
    let idle = after.idle.saturating_sub(before.idle);
    Ok(if total == 0 {
        0.0
    } else {
        1.0 - idle as f64 / total as f64
    })
}

struct CpuTimes {
    total: u64,
    idle: u64,
}

/// The first line of /proc/stat: "cpu user nice system idle iowait irq softirq steal ...".
fn cpu_times() -> Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat is empty")?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().context("a /proc/stat field is not a number"))
        .collect::<Result<_>>()?;
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok(CpuTimes {
        total: fields.iter().sum(),
        idle,
    })
}
