//! `cargo xtask bench scan`: how long a scan takes, against loading the artifact bare and
//! against scanning it the seeds' way (the same load under `strace -f`), in one run.
//!
//! For a small pickle, a small and a 134 MB PyTorch checkpoint and a small Keras model, rounds
//! in which the methods take turns:
//! - bare: the loader environment's Python loading the artifact, nothing watching;
//! - strace: the same load under `strace -f` writing the full trace to a file (not for Keras:
//!   TensorFlow's import under strace takes minutes);
//! - monitorctl scan: the command a user runs, with its defaults (opens the probes pinned by
//!   the previous round, or loads and pins them in the first, builds the sandbox, loads,
//!   exercises, lingers while anything is left running, judges with the audit hook on,
//!   releases the probes in the background), cold: the previous scan's hooks detached
//!   (`MONITOR_PROBE_LINGER=0`, and the rounds wait for the detach);
//! - right after others: the third of three scans in a row, each started as soon as the one
//!   before returned, which keeps its hooks attached for it (`MONITOR_PROBE_LINGER`'s
//!   default): a shell loop over models;
//! - the same when scans detach at once (`MONITOR_PROBE_LINGER=0`, what every scan did
//!   before): the two before it still hold both pinned slots while they detach, so it loads
//!   fresh, and its attach waits for the kernel's mutex that their detach holds (both in a
//!   first pass, before the bench loads probes of its own for the warm scans: while those are
//!   attached, every other detach is instant);
//! - the same with nothing pinned (`MONITOR_PROBE_PINS=off`): BTF parsed and programs verified
//!   every time, as before pinning;
//! - warm scan: the library with probes already loaded, as the daemon scans, with the
//!   defaults;
//! - warm, load only: the same without exercise, audit hook and linger (`--no-exercise
//!   --no-audit --linger 0`): the difference is what those defaults cost.
//!
//! `MONITOR_BENCH_ROUNDS` sets the rounds (default 9). Prints a markdown report for
//! docs/benchmarks.md. Harness-less: never part of `cargo test`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use monitor_engine::probes::ProbeConfig;
use monitor_scan::{LazyProbes, ScanSpec, job::default_python, scan, verdict::ExitCode};

const DEFAULT_ROUNDS: usize = 9;
/// Releasing the probes takes the kernel seconds (one RCU grace period per tracepoint, under
/// a mutex that the next load waits for); monitorctl does it in the background, so a user
/// never waits for it, but back-to-back runs would. Rounds leave it this long.
const SETTLE: Duration = Duration::from_secs(7);
/// Where the bench's monitorctl pins its probes: its own, removed before and after.
const PINS: &str = "/sys/fs/bpf/monitor-bench";

struct Artifact {
    name: String,
    path: PathBuf,
    /// Python that loads it, with the path as sys.argv[1].
    load: &'static str,
    /// Whether to time it under strace too.
    strace: bool,
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
    let pins = Path::new(PINS);
    let _ = monitor_engine::probes::pins::unpin(pins);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut probes = LazyProbes::new(ProbeConfig::default());
    let rounds = std::env::var("MONITOR_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(DEFAULT_ROUNDS);

    println!("## Scan latency (`cargo xtask bench scan`)\n");
    println!(
        "{rounds} rounds; in each the methods take turns on the same artifact; medians \
         (min-max). Wall time of the whole command, start to exit.\n"
    );
    println!(
        "| artifact | bare load | strace -f load | monitorctl scan | monitorctl, third in a row \
         | third in a row, detaching at once | monitorctl, nothing pinned | warm scan \
         (daemon-like) | warm, load only | monitorctl - bare | third in a row - bare | third, \
         detaching - bare | unpinned - bare | warm - bare | defaults - load only | strace / bare |"
    );
    println!("|{}", " --- |".repeat(16));
    // Scans in a row first, while this process has no probes of its own: its warm probes'
    // attached tracepoints would make every detach instant (the kernel waits for a grace
    // period only when a tracepoint's last user goes), hiding what a series pays.
    let mut in_a_row = std::collections::HashMap::new();
    for artifact in &artifacts {
        let (mut handed_over, mut detaching) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            eprintln!(
                "bench scan: {} in a row, round {}/{rounds}",
                artifact.name,
                round + 1
            );
            // Each keeps its hooks attached for the next, which takes them over; the timed one
            // detaches them when it is done (the first one's child holds them too until its
            // linger is over).
            handed_over.push(third_in_a_row(
                &monitorctl,
                &artifact.path,
                pins,
                Linger::Default,
            )?);
            std::thread::sleep(SETTLE + monitor_engine::probes::pins::DEFAULT_LINGER);
            detaching.push(third_in_a_row(
                &monitorctl,
                &artifact.path,
                pins,
                Linger::No,
            )?);
            // Three detaches queue on one kernel mutex.
            std::thread::sleep(3 * SETTLE);
        }
        in_a_row.insert(artifact.name.clone(), (handed_over, detaching));
    }

    for artifact in &artifacts {
        let mut bare = Vec::new();
        let mut strace = Vec::new();
        let mut cli = Vec::new();
        let (after_another, after_detaching) = &in_a_row[&artifact.name];
        let mut unpinned = Vec::new();
        let mut warm = Vec::new();
        let mut load_only = Vec::new();
        for round in 0..rounds {
            eprintln!("bench scan: {} round {}/{rounds}", artifact.name, round + 1);
            bare.push(time(
                Command::new(&python)
                    .args(["-c", artifact.load])
                    .arg(&artifact.path),
            )?);
            if artifact.strace {
                let trace = dir.path().join("strace.out");
                strace.push(time(
                    Command::new("strace")
                        .args(["-f", "-qq", "-o"])
                        .arg(&trace)
                        .arg(&python)
                        .args(["-c", artifact.load])
                        .arg(&artifact.path),
                )?);
            }
            std::thread::sleep(SETTLE);
            cli.push(time_scan_cli(
                &monitorctl,
                &artifact.path,
                Some(pins),
                Linger::No,
            )?);
            std::thread::sleep(SETTLE);
            unpinned.push(time_scan_cli(
                &monitorctl,
                &artifact.path,
                None,
                Linger::No,
            )?);
            std::thread::sleep(SETTLE);
            for (defaults, samples) in [(true, &mut warm), (false, &mut load_only)] {
                let mut spec = ScanSpec::new(&artifact.path);
                if !defaults {
                    spec.exercise = false;
                    spec.audit = false;
                    spec.linger = Duration::ZERO;
                }
                let started = Instant::now();
                let report = rt.block_on(scan(&spec, &mut probes, |_| {}));
                samples.push(started.elapsed());
                if report.exit_code != ExitCode::Clean {
                    bail!(
                        "{}: the warm scan was not clean: {:?}",
                        artifact.name,
                        report.errors
                    );
                }
            }
        }
        let (b, c, a, d, u, w, l) = (
            median(&bare),
            median(&cli),
            median(after_another),
            median(after_detaching),
            median(&unpinned),
            median(&warm),
            median(&load_only),
        );
        let traced = match strace.is_empty() {
            true => ("not run".to_string(), "-".to_string()),
            false => (
                spread(&strace),
                format!("{:.2}x", ms(median(&strace)) / ms(b)),
            ),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:+.0} ms | {:+.0} ms | {:+.0} ms | {:+.0} ms | {:+.0} ms | {:+.0} ms | {} |",
            artifact.name,
            spread(&bare),
            traced.0,
            spread(&cli),
            spread(after_another),
            spread(after_detaching),
            spread(&unpinned),
            spread(&warm),
            spread(&load_only),
            ms(c) - ms(b),
            ms(a) - ms(b),
            ms(d) - ms(b),
            ms(u) - ms(b),
            ms(w) - ms(b),
            ms(w) - ms(l),
            traced.1,
        );
    }
    println!(
        "\nThe goals: monitorctl scan's overhead over the bare load at most 150 ms for a small \
         pickle, and at most 1.2x the bare load for the 134 MB checkpoint. monitorctl scan \
         opens the probes the previous round pinned (the first round loads and pins them) \
         and attaches them; right after another, it takes over the hooks the scan before it \
         left attached."
    );
    let _ = monitor_engine::probes::pins::unpin(pins);
    Ok(())
}

fn make_artifacts(python: &Path, dir: &Path) -> Result<Vec<Artifact>> {
    let pickle = dir.join("small.pkl");
    let checkpoint = dir.join("checkpoint.pt");
    let large = dir.join("large-checkpoint.pt");
    let keras = dir.join("small.keras");
    // The large checkpoint as compare/make_large.py makes it: a state dict of 134 MB.
    let make_torch = r#"
import pickle, sys, torch
with open(sys.argv[1], "wb") as f:
    pickle.dump({"weights": [0.5] * 64, "name": "small"}, f)
net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
torch.save({"epoch": 1, "model": net.state_dict()}, sys.argv[2])
torch.manual_seed(0)
big = torch.nn.Sequential(
    torch.nn.Linear(1024, 4096), torch.nn.ReLU(),
    torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
    torch.nn.Linear(4096, 3072), torch.nn.ReLU(),
    torch.nn.Linear(3072, 10),
)
torch.save(big.state_dict(), sys.argv[3])
"#;
    // TensorFlow and PyTorch do not share a process (see corpus/make_corpus.py).
    let make_keras = r#"
import os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(2)])
model.save(sys.argv[1])
"#;
    for (make, outputs) in [
        (make_torch, vec![&pickle, &checkpoint, &large]),
        (make_keras, vec![&keras]),
    ] {
        let status = Command::new(python)
            .args(["-c", make])
            .args(&outputs)
            .env("TF_CPP_MIN_LOG_LEVEL", "3")
            .status()
            .context("making the artifacts")?;
        if !status.success() {
            bail!("making the artifacts failed: {status}");
        }
    }
    for path in [&pickle, &checkpoint, &large, &keras] {
        // The sandbox's user reads a private copy; the bare load reads this one.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len() as f64);
    let torch_load =
        "import sys, torch; torch.load(sys.argv[1], map_location='cpu', weights_only=False)";
    Ok(vec![
        Artifact {
            name: "small pickle (0.6 KiB)".into(),
            path: pickle,
            load: "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
            strace: true,
        },
        Artifact {
            name: format!("torch checkpoint ({:.0} KiB)", size(&checkpoint)? / 1024.0),
            path: checkpoint,
            load: torch_load,
            strace: true,
        },
        Artifact {
            name: format!("torch checkpoint ({:.0} MB)", size(&large)? / 1e6),
            path: large,
            load: torch_load,
            strace: true,
        },
        Artifact {
            name: format!("Keras model ({:.0} KiB)", size(&keras)? / 1024.0),
            path: keras,
            load: "import sys, keras; keras.models.load_model(sys.argv[1])",
            strace: false,
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

/// Whether a scan keeps its hooks attached for the next one when it is done.
#[derive(Clone, Copy)]
enum Linger {
    /// Detached at once (`MONITOR_PROBE_LINGER=0`).
    No,
    /// For monitorctl's default time.
    Default,
}

/// The time of the third of three `monitorctl scan`s in a row, the first two lingering as
/// `linger` says; the third detaches at once.
fn third_in_a_row(
    monitorctl: &Path,
    artifact: &Path,
    pins: &Path,
    linger: Linger,
) -> Result<Duration> {
    for _ in 0..2 {
        time_scan_cli(monitorctl, artifact, Some(pins), linger)?;
    }
    time_scan_cli(monitorctl, artifact, Some(pins), Linger::No)
}

/// A `monitorctl scan` with no daemon, its probes pinned under `pins` (or never pinned).
fn time_scan_cli(
    monitorctl: &Path,
    artifact: &Path,
    pins: Option<&Path>,
    linger: Linger,
) -> Result<Duration> {
    let mut cmd = Command::new(monitorctl);
    match linger {
        Linger::No => cmd.env(monitor_engine::probes::pins::LINGER_ENV, "0"),
        Linger::Default => cmd.env_remove(monitor_engine::probes::pins::LINGER_ENV),
    };
    let started = Instant::now();
    let status = cmd
        .env(
            monitor_engine::probes::pins::ROOT_ENV,
            pins.map_or("off".into(), |p| p.as_os_str().to_owned()),
        )
        .args(["scan", "--local", "--no-print-res"])
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
