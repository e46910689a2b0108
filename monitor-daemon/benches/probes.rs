//! `cargo xtask bench probes`: what the probes cost, and how fast the pipeline drains.
//!
//! Every workload is this binary re-executed (`--workload KIND N REPORT`): it times its own loop
//! and writes the nanoseconds to REPORT, so start-up, tracing set-up and teardown never count.
//!
//! - rw: N × (read 1 byte of /dev/zero, write it to /dev/null), like `dd bs=1`: syscalls the
//!   probes do not trace.
//! - open: N × (openat, fstat, close) of a file: traced syscalls.
//!
//! Each is timed unwatched without probes, unwatched with probes attached, watched by monitor,
//! and under `strace -f`. Then the decoder alone over records captured from the real ring
//! buffer, and a live run at the highest rate two producers reach.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_daemon::{
    cgroup::{self, JobCgroup},
    decode::Decoder,
    probes::{ProbeConfig, Probes},
    reader::Reader,
    rules::RuleSet,
    run::{RunSpec, RunSummary},
};

const REPS: usize = 5;
const RW_ITERS: u64 = 1_000_000;
const OPEN_ITERS: u64 = 200_000;
/// strace runs 1/STRACE_SHARE of the iterations.
const STRACE_SHARE: u64 = 10;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--workload") {
        return workload(&args[i + 1], args[i + 2].parse()?, Path::new(&args[i + 3]));
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    println!("# cargo xtask bench probes\n");
    println!(
        concat!(
            "kernel {}, {} CPUs; medians of {} interleaved runs, ratios are medians of per-run ",
            "ratios to the unwatched run beside them (strace: 3 pairs on a tenth of the loop)\n"
        ),
        kernel(),
        num_cpus(),
        REPS
    );
    println!(
        "| workload | unwatched, no probes | unwatched, probes attached | watched by monitor | under strace -f (ratio) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (kind, n) in [("rw", RW_ITERS), ("open", OPEN_ITERS)] {
        // The configurations take turns within each repetition, so the machine's drift
        // (seen here: 40% between runs minutes apart) cancels in the per-repetition ratios.
        let (mut bare, mut attached, mut watched) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPS {
            bare.push(timed(kind, n, dir.path(), Launch::Plain)?);
            let probes = Probes::load(&ProbeConfig::default())?;
            attached.push(timed(kind, n, dir.path(), Launch::Plain)?);
            drop(probes);
            watched.push(timed(kind, n, dir.path(), Launch::Watched(&runtime))?);
        }
        // strace stops the process at every syscall: a tenth of the loop keeps the run short;
        // what is compared is the time per iteration.
        let strace_n = n / STRACE_SHARE;
        let mut strace = Vec::new();
        for _ in 0..3 {
            let b = timed(kind, strace_n, dir.path(), Launch::Plain)?;
            let s = timed(kind, strace_n, dir.path(), Launch::Strace)?;
            strace.push((s, b));
        }
        let per = |d: Duration| format!("{:.0} ns/iter", d.as_nanos() as f64 / n as f64);
        let ratios = |xs: &[Duration]| median_ratio(xs.iter().zip(&bare).map(|(x, b)| (*x, *b)));
        println!(
            "| {kind} ×{n} | {} | {} ({:.3}x) | {} ({:.3}x) | {:.1}x |",
            per(median_of(&bare)),
            per(median_of(&attached)),
            ratios(&attached),
            per(median_of(&watched)),
            ratios(&watched),
            median_ratio(strace.into_iter()),
        );
    }

    let (records, decode_rate) = decoder_throughput(dir.path())?;
    println!("\n| pipeline | result |\n| --- | --- |");
    println!(
        "| decoder alone, one core, {records} real records | {:.2} M records/s |",
        decode_rate / 1e6
    );
    for producers in [1, 2] {
        let s = live(&runtime, dir.path(), producers)?;
        println!(
            "| live, {producers} producer(s) of open loops, 16 MiB ring | {:.2} M records/s delivered, {} dropped of {} |",
            s.rate / 1e6,
            s.summary.dropped,
            s.summary.kernel_records + s.summary.dropped
        );
    }
    Ok(())
}

/// How a workload is started.
enum Launch<'a> {
    Plain,
    Watched(&'a tokio::runtime::Runtime),
    Strace,
}

/// Runs one workload and returns the time it reported for its own loop.
fn timed(kind: &str, n: u64, dir: &Path, launch: Launch<'_>) -> Result<Duration> {
    let report = dir.join(format!("report-{kind}"));
    let _ = std::fs::remove_file(&report);
    let (program, args) = workload_command(kind, n, &report)?;
    match launch {
        Launch::Plain => check(Command::new(&program).args(&args).status()?)?,
        Launch::Strace => check(
            Command::new("strace")
                .args(["-f", "-o", "/dev/null"])
                .arg(&program)
                .args(&args)
                .status()?,
        )?,
        Launch::Watched(rt) => {
            let s = watched(rt, program, args)?;
            if s.dropped > 0 {
                eprintln!("note: {} records dropped while watching {kind}", s.dropped);
            }
        }
    }
    let ns: u64 = std::fs::read_to_string(&report)
        .context("workload report")?
        .trim()
        .parse()?;
    Ok(Duration::from_nanos(ns))
}

fn watched(
    rt: &tokio::runtime::Runtime,
    program: PathBuf,
    args: Vec<OsString>,
) -> Result<RunSummary> {
    let spec = RunSpec {
        program: program.into(),
        args,
        cwd: None,
        rules: RuleSet::default(),
        terminate_at: None,
        sandbox: None,
    };
    let mut probes = Probes::load(&ProbeConfig::default())?;
    let summary = rt.block_on(monitor_daemon::run::run(&spec, &mut probes, |_| {}))?;
    check_code(summary.exit_code)?;
    Ok(summary)
}

fn workload_command(kind: &str, n: u64, report: &Path) -> Result<(PathBuf, Vec<OsString>)> {
    let me = std::env::current_exe()?;
    let args = vec![
        "--workload".into(),
        kind.into(),
        n.to_string().into(),
        report.into(),
    ];
    Ok((me, args))
}

/// The workloads themselves.
fn workload(kind: &str, n: u64, report: &Path) -> Result<()> {
    let start;
    match kind {
        "rw" => {
            use std::os::fd::AsRawFd as _;
            let zero = std::fs::File::open("/dev/zero")?;
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            let mut byte = 0u8;
            start = Instant::now();
            for _ in 0..n {
                // SAFETY: one byte into a local; plain syscalls on open descriptors.
                unsafe {
                    libc::read(zero.as_raw_fd(), (&raw mut byte).cast(), 1);
                    libc::write(null.as_raw_fd(), (&raw const byte).cast(), 1);
                }
            }
        }
        "open" => {
            let target = std::env::current_exe()?;
            start = Instant::now();
            for _ in 0..n {
                let f = std::fs::File::open(&target)?;
                f.metadata()?;
            }
        }
        other => bail!("unknown workload {other}"),
    }
    std::fs::write(report, start.elapsed().as_nanos().to_string())?;
    Ok(())
}

/// Captures the raw records of a watched open loop, then times the decoder over them.
fn decoder_throughput(dir: &Path) -> Result<(usize, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let mut probes = Probes::load(&ProbeConfig {
        ring_buffer_bytes: 256 << 20,
    })?;
    let mut reader = Reader::new(probes.take_events().context("ring")?)?;
    let job = JobCgroup::create(&format!("bench-{}", std::process::id()))?;
    probes.watch(job.id())?;
    let (program, args) = workload_command("open", 50_000, &dir.join("report-capture"))?;
    let procs = job.procs_file()?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: join_in_child only calls write(2).
    unsafe { cmd.pre_exec(move || cgroup::join_in_child(&procs)) };
    check(cmd.status()?)?;
    while job.is_populated()? {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut raw: Vec<Vec<u8>> = Vec::new();
    reader.drain_raw(|r| raw.push(r.to_vec()));
    if probes.watch_counters(job.id())?.dropped > 0 {
        bail!("records dropped while capturing");
    }
    let decoder = Decoder::default();
    let rounds = 10;
    let start = Instant::now();
    let mut ok = 0usize;
    for _ in 0..rounds {
        for r in &raw {
            ok += usize::from(decoder.decode(std::hint::black_box(r)).is_ok());
        }
    }
    let elapsed = start.elapsed();
    if ok != raw.len() * rounds {
        bail!(
            "{} of {} records did not decode",
            raw.len() * rounds - ok,
            raw.len() * rounds
        );
    }
    Ok((
        raw.len(),
        (raw.len() * rounds) as f64 / elapsed.as_secs_f64(),
    ))
}

struct Live {
    summary: RunSummary,
    rate: f64,
}

/// `producers` open loops at once in one watched job; records delivered per second of loop.
fn live(rt: &tokio::runtime::Runtime, dir: &Path, producers: usize) -> Result<Live> {
    let (program, _) = workload_command("open", OPEN_ITERS, &dir.join("unused"))?;
    let loops: Vec<String> = (0..producers)
        .map(|i| {
            format!(
                "{} --workload open {OPEN_ITERS} {}/live-{i} &",
                program.display(),
                dir.display()
            )
        })
        .collect();
    let script = format!("{} wait", loops.join(" "));
    let summary = watched(rt, "sh".into(), vec!["-c".into(), script.into()])?;
    let longest = (0..producers)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("live-{i}")))
                .map(|s| s.trim().parse::<u64>().unwrap_or(0))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(1);
    let rate = summary.kernel_records as f64 / Duration::from_nanos(longest).as_secs_f64();
    Ok(Live { summary, rate })
}

fn median_of(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// The median of `x / baseline` over pairs measured side by side.
fn median_ratio(pairs: impl Iterator<Item = (Duration, Duration)>) -> f64 {
    let mut r: Vec<f64> = pairs
        .map(|(x, b)| x.as_secs_f64() / b.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

fn check(status: std::process::ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("workload failed: {status}");
    }
    Ok(())
}

fn check_code(code: i32) -> Result<()> {
    if code != 0 {
        bail!("workload exited with {code}");
    }
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
