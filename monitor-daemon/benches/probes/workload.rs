//! The measured loops. Each runs in a child process (this binary, re-executed with
//! `--workload ...`) so that it can be placed in a watched cgroup or under strace, and times
//! its own loop: process start-up, probe loading and tracer set-up never count.

use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What the loop does, once per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// read(2) one byte of /dev/zero, write(2) it to /dev/null: what `dd if=/dev/zero
    /// of=/dev/null bs=1` does, with syscalls the probes do not trace.
    ReadWrite,
    /// openat(2) a file, fstat(2) it, close(2) it: openat is traced (an entry record with the
    /// path and an exit record), fstat and close are not.
    OpenStat,
    /// kill(2) with signal 0 to itself: the cheapest traced syscall (no path to copy), to see
    /// how many records per second the kernel side can write from one CPU.
    Kill0,
}

impl Kind {
    /// The short name, on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ReadWrite => "rw",
            Kind::OpenStat => "open",
            Kind::Kill0 => "kill0",
        }
    }

    fn parse(name: &str) -> Result<Self> {
        match name {
            "rw" => Ok(Kind::ReadWrite),
            "open" => Ok(Kind::OpenStat),
            "kill0" => Ok(Kind::Kill0),
            other => bail!("unknown workload {other:?}"),
        }
    }

    /// What the loop does, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::ReadWrite => "rw: read+write of 1 byte (`dd bs=1`), untraced syscalls",
            Kind::OpenStat => "open: openat+fstat+close, openat traced",
            Kind::Kill0 => "kill0: kill(self, 0), traced, no strings",
        }
    }
}

/// One run of a loop, as the parent describes it to the child.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: Kind,
    pub iterations: u64,
    /// The file the open loop opens.
    pub file: PathBuf,
    /// Where the child writes the nanoseconds its loop took.
    pub report: PathBuf,
    /// The CPU the loop runs on, so that the tracer (strace, our consumer) has the other one.
    pub cpu: usize,
}

const FLAG: &str = "--workload";

impl Workload {
    /// The command line that runs this workload.
    pub fn command(&self) -> Result<(PathBuf, Vec<OsString>)> {
        let me = std::env::current_exe().context("finding the benchmark's own executable")?;
        let args: Vec<OsString> = vec![
            FLAG.into(),
            self.kind.name().into(),
            self.iterations.to_string().into(),
            self.file.clone().into(),
            self.report.clone().into(),
            self.cpu.to_string().into(),
        ];
        Ok((me, args))
    }

    pub fn std_command(&self) -> Result<Command> {
        let (program, args) = self.command()?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        Ok(cmd)
    }

    /// The workload this process was started to run, if it was.
    pub fn from_args() -> Result<Option<Self>> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.first().map(String::as_str) != Some(FLAG) {
            return Ok(None);
        }
        let [kind, iterations, file, report, cpu] = &args[1..] else {
            bail!("usage: {FLAG} KIND ITERATIONS FILE REPORT CPU");
        };
        Ok(Some(Workload {
            kind: Kind::parse(kind)?,
            iterations: iterations.parse().context("iterations")?,
            file: file.into(),
            report: report.into(),
            cpu: cpu.parse().context("cpu")?,
        }))
    }

    /// The loop's own duration, as the child reported it; with `MONITOR_BENCH_CLOCK=cpu`, its
    /// thread's CPU time instead: on a machine shared with other work, what the loop's own
    /// syscalls (and the kernel programs they run) cost it, without the time other processes
    /// held its CPU, which wall time counts.
    pub fn elapsed(&self) -> Result<Duration> {
        let [wall, cpu] = self.reported()?;
        Ok(match std::env::var("MONITOR_BENCH_CLOCK").as_deref() {
            Ok("cpu") => cpu,
            _ => wall,
        })
    }

    /// The CPU time the loop's thread spent, user and kernel (what its syscalls cost it,
    /// without the time other threads held its CPU), as the child reported it.
    pub fn cpu_time(&self) -> Result<Duration> {
        Ok(self.reported()?[1])
    }

    /// The report: the loop's duration and its thread's CPU time, in nanoseconds.
    fn reported(&self) -> Result<[Duration; 2]> {
        let text = std::fs::read_to_string(&self.report)
            .with_context(|| format!("reading the workload's report {}", self.report.display()))?;
        let numbers: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()
            .filter(|n: &Vec<u64>| n.len() == 2)
            .with_context(|| {
                format!("workload report {text:?} is not two numbers of nanoseconds")
            })?;
        Ok([numbers[0], numbers[1]].map(Duration::from_nanos))
    }

    /// Runs the loop (in the child) and writes its duration and CPU time to the report file.
    pub fn run(&self) -> Result<()> {
        crate::cpu::pin(self.cpu)?;
        let start = Instant::now();
        let cpu_start = thread_cpu_time()?;
        match self.kind {
            Kind::ReadWrite => read_write(self.iterations)?,
            Kind::OpenStat => open_stat(self.iterations, &self.file)?,
            Kind::Kill0 => kill0(self.iterations)?,
        }
        let cpu = thread_cpu_time()? - cpu_start;
        let elapsed = start.elapsed();
        std::fs::write(
            &self.report,
            format!("{} {}", elapsed.as_nanos(), cpu.as_nanos()),
        )
        .with_context(|| format!("writing {}", self.report.display()))
    }
}

/// The calling thread's CPU time so far.
fn thread_cpu_time() -> Result<Duration> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .context("reading the thread's CPU clock")?;
    Ok(Duration::from(now))
}

fn read_write(iterations: u64) -> Result<()> {
    let zero = open(Path::new("/dev/zero"), libc::O_RDONLY)?;
    let null = open(Path::new("/dev/null"), libc::O_WRONLY)?;
    let mut byte = 0u8;
    for _ in 0..iterations {
        // SAFETY: one byte to and from a local, on descriptors this function opened.
        let ok = unsafe {
            libc::read(zero, (&raw mut byte).cast(), 1) == 1
                && libc::write(null, (&raw const byte).cast(), 1) == 1
        };
        if !ok {
            bail!("read/write failed: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn open_stat(iterations: u64, file: &Path) -> Result<()> {
    let path = CString::new(file.as_os_str().as_bytes())?;
    // SAFETY: a zeroed `stat` is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    for _ in 0..iterations {
        // SAFETY: a NUL-terminated path and a local out-parameter; the fd is closed at once.
        let ok = unsafe {
            let fd = libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            fd >= 0 && libc::fstat(fd, &mut st) == 0 && libc::close(fd) == 0
        };
        if !ok {
            bail!(
                "open/fstat/close of {} failed: {}",
                file.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn kill0(iterations: u64) -> Result<()> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    for _ in 0..iterations {
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        if unsafe { libc::kill(me, 0) } != 0 {
            bail!("kill(self, 0) failed: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn open(path: &Path, flags: i32) -> Result<i32> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        bail!(
            "opening {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(fd)
}
