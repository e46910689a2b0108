//! `cargo xtask bench scan`: how long a scan takes, against loading the artifact bare and
//! against scanning it the seeds' way (the same load under `strace -f`), in one run.
//!
//! For a small pickle and a PyTorch checkpoint, rounds in which the methods take turns:
//! - bare: the loader environment's Python loading the artifact, nothing watching;
//! - strace: the same load under `strace -f` writing the full trace to a file;
//! - monitorctl scan: the command a user runs (loads the probes, builds the sandbox, loads,
//!   judges, releases the probes in the background);
//! - warm scan: the library with probes already loaded, as the daemon scans.
//!
//! Prints a markdown report for docs/benchmarks.md. Harness-less: never part of `cargo test`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_daemon::{
    probes::ProbeConfig,
    scan::{LazyProbes, ScanSpec, job::default_python, scan, verdict::ExitCode},
};

const ROUNDS: usize = 9;
/// Releasing the probes takes the kernel seconds (one RCU grace period per tracepoint, under
/// a mutex that the next load waits for); monitorctl does it in the background, so a user
/// never waits for it, but back-to-back runs would. Rounds leave it this long.
const SETTLE: Duration = Duration::from_secs(7);

struct Artifact {
    name: String,
    path: PathBuf,
    /// Python that loads it, with the path as sys.argv[1].
    load: &'static str,
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    let python = default_python();
    if !python.is_file() {
        bail!("no loader environment: run `cargo xtask loader-env`");
    }
    let monitorctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/monitorctl");
    if !monitorctl.is_file() {
        bail!(
            "{} is missing: `cargo build --release --bins`",
            monitorctl.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("monitor-bench-scan-")
        .tempdir_in("/var/tmp")
        .context("creating a directory for the artifacts")?;
    let artifacts = make_artifacts(&python, dir.path())?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut probes = LazyProbes::new(ProbeConfig::default());

    println!("## Scan latency (`cargo xtask bench scan`)\n");
    println!(
        "{ROUNDS} rounds; in each the methods take turns on the same artifact; medians \
         (min-max). Wall time of the whole command, start to exit.\n"
    );
    println!(
        "| artifact | bare load | strace -f load | monitorctl scan | warm scan (daemon-like) | \
         monitorctl - bare | warm - bare | strace / bare |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for artifact in &artifacts {
        let mut bare = Vec::new();
        let mut strace = Vec::new();
        let mut cli = Vec::new();
        let mut warm = Vec::new();
        for round in 0..ROUNDS {
            eprintln!("bench scan: {} round {}/{ROUNDS}", artifact.name, round + 1);
            bare.push(time(
                Command::new(&python)
                    .args(["-c", artifact.load])
                    .arg(&artifact.path),
            )?);
            let trace = dir.path().join("strace.out");
            strace.push(time(
                Command::new("strace")
                    .args(["-f", "-qq", "-o"])
                    .arg(&trace)
                    .arg(&python)
                    .args(["-c", artifact.load])
                    .arg(&artifact.path),
            )?);
            std::thread::sleep(SETTLE);
            cli.push(time_scan_cli(&monitorctl, &artifact.path)?);
            let spec = ScanSpec::new(&artifact.path);
            let started = Instant::now();
            let report = rt.block_on(scan(&spec, &mut probes, |_| {}));
            warm.push(started.elapsed());
            if report.exit_code != ExitCode::Clean {
                bail!(
                    "{}: the warm scan was not clean: {:?}",
                    artifact.name,
                    report.errors
                );
            }
        }
        let (b, s, c, w) = (median(&bare), median(&strace), median(&cli), median(&warm));
        println!(
            "| {} | {} | {} | {} | {} | {:+.0} ms | {:+.0} ms | {:.2}x |",
            artifact.name,
            spread(&bare),
            spread(&strace),
            spread(&cli),
            spread(&warm),
            ms(c) - ms(b),
            ms(w) - ms(b),
            ms(s) / ms(b),
        );
    }
    println!(
        "\nThe goal: monitorctl scan's overhead over the bare load at most 150 ms for a small \
         pickle."
    );
    Ok(())
}

fn make_artifacts(python: &Path, dir: &Path) -> Result<Vec<Artifact>> {
    let pickle = dir.join("small.pkl");
    let checkpoint = dir.join("checkpoint.pt");
    let make = r#"
import pickle, sys, torch
with open(sys.argv[1], "wb") as f:
    pickle.dump({"weights": [0.5] * 64, "name": "small"}, f)
net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
torch.save({"epoch": 1, "model": net.state_dict()}, sys.argv[2])
"#;
    let status = Command::new(python)
        .args(["-c", make])
        .arg(&pickle)
        .arg(&checkpoint)
        .status()
        .context("making the artifacts")?;
    if !status.success() {
        bail!("making the artifacts failed: {status}");
    }
    for path in [&pickle, &checkpoint] {
        // The sandbox's user reads a private copy; the bare load reads this one.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    let size = std::fs::metadata(&checkpoint)?.len();
    Ok(vec![
        Artifact {
            name: "small pickle (0.6 KiB)".into(),
            path: pickle,
            load: "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
        },
        Artifact {
            name: format!("torch checkpoint ({:.0} KiB)", size as f64 / 1024.0),
            path: checkpoint,
            load: "import sys, torch; torch.load(sys.argv[1], map_location='cpu', weights_only=False)",
        },
    ])
}

fn time(cmd: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(elapsed)
}

fn time_scan_cli(monitorctl: &Path, artifact: &Path) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new(monitorctl)
        .args(["scan", "--no-print-res"])
        .arg(artifact)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running monitorctl scan")?;
    let elapsed = started.elapsed();
    if status.code() != Some(0) {
        bail!(
            "monitorctl scan of {} was not clean: {status}",
            artifact.display()
        );
    }
    Ok(elapsed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn spread(samples: &[Duration]) -> String {
    let min = samples.iter().min().copied().unwrap_or_default();
    let max = samples.iter().max().copied().unwrap_or_default();
    format!(
        "{:.0} ms ({:.0}-{:.0})",
        ms(median(samples)),
        ms(min),
        ms(max)
    )
}
