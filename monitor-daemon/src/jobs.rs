//! The scan queue and the worker that runs it: up to `max_concurrent_scans` scans at once on
//! probes loaded once at start, each seeing only its own cgroup's records (the router sorts
//! them).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc};

use crate::Shared;
use crate::events::{DaemonEvent, Origin};
use crate::store::{Finished, ScanRequest, StoreError};
use monitor_formats::Limits;
use monitor_jobs::run::Output;
use monitor_rules::Phase;
use monitor_scan::{
    self as scan, LazyProbes, Progress, ScanSpec, input::OpenAs, report::MAX_FINDINGS_PER_RULE,
    sarif, text,
};

/// A scan's trace is stored up to this many events (the report counts them all).
const MAX_STORED_EVENTS: usize = 20_000;

/// The scans running now, by id.
pub type RunningScans = Arc<Mutex<BTreeMap<String, Running>>>;

/// A scan running now.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    /// Who asked for it.
    pub owner: Option<u32>,
    /// The phase its loader last reported; `setup` (its sandbox being built) until it reports.
    pub phase: Phase,
}

/// Runs queued scans until the queue is closed, as many at once as the configuration allows.
pub async fn worker(shared: Arc<Shared>, mut queue: mpsc::Receiver<(String, ScanRequest)>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_concurrent_scans));
    loop {
        // A slot first, then a scan: one taken from the queue before a slot is free would
        // wait outside it, and the queue would hold one more than max_queued_scans.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some((id, request)) = queue.recv().await else {
            return;
        };
        shared.metrics.queue_depth.dec();
        let shared = shared.clone();
        tokio::spawn(async move {
            // The syscall hooks attached (if they are not) off the runtime, while the scan
            // inspects the artifact and builds its sandbox: its job's own watch, which holds
            // them too, then finds them attached, or waits for this attach to end.
            let router = shared.router.clone();
            let hooks = tokio::task::spawn_blocking(move || router.hold_hooks());
            let mut probes = LazyProbes::loaded(shared.router.clone());
            let stored = run_one(&shared, &mut probes, &id, &request).await;
            // The job's watch is gone: from here the linger counts.
            drop(hooks.await);
            shared
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            drop(slot);
            if let Err(e) = stored {
                tracing::error!(scan = %id, error = %e, "storing the scan failed");
                if e.is_disk_full() {
                    shared.metrics.store_errors.inc();
                }
                abandon(&shared, &id).await;
            }
        });
    }
}

async fn run_one(
    shared: &Arc<Shared>,
    probes: &mut LazyProbes,
    id: &str,
    request: &ScanRequest,
) -> Result<(), StoreError> {
    let marked = {
        let (shared, id) = (shared.clone(), id.to_owned());
        blocking(move || shared.store.set_running(&id)).await
    };
    marked?;
    let owner = request.owner.as_ref().map(|o| o.uid);
    set_phase(&shared.running, id, owner, Phase::Setup);
    tracing::info!(scan = %id, path = %request.asked.path, uid = owner, "scan started");
    let spec = spec_for(shared, request);
    let running = shared.running.clone();
    let mut trace = Vec::new();
    // Streamed as the report keeps them: the first of each rule.
    let mut streamed: HashMap<String, usize> = HashMap::new();
    let report = scan::scan(&spec, probes, |progress| match progress {
        Progress::Phase(phase) => set_phase(&running, id, owner, phase),
        Progress::Job(Output::Finding(finding)) => {
            let sent = streamed.entry(finding.rule.clone()).or_default();
            if *sent < MAX_FINDINGS_PER_RULE {
                *sent += 1;
                DaemonEvent::Finding(finding).emit(shared, &Origin::Scan { id }, owner);
            }
        }
        Progress::Job(Output::Event(event)) => {
            if trace.len() < MAX_STORED_EVENTS
                && let Ok(value) = serde_json::to_value(event)
            {
                trace.push(value);
            }
            DaemonEvent::Traced(event).emit(shared, &Origin::Scan { id }, owner);
        }
        _ => {}
    })
    .await;
    DaemonEvent::ScanFinished(&report).emit(shared, &Origin::Scan { id }, owner);
    if request.uploaded {
        // The daemon's own copy of an uploaded artifact: its report is all that stays.
        let upload = std::path::Path::new(&request.asked.path)
            .parent()
            .map(PathBuf::from);
        if let Some(dir) = upload {
            let _ = blocking(move || Ok(std::fs::remove_dir_all(dir))).await;
        }
    }
    let (verdict, findings, ms) = (report.verdict, report.findings.len(), report.duration_ms);
    // Rendering a report and writing it in one transaction take long for a big one: off the
    // runtime, so that the API and the other jobs carry on meanwhile.
    let stored = {
        let (shared, id) = (shared.clone(), id.to_owned());
        blocking(move || store_report(&shared, &id, &report, trace)).await
    };
    stored?;
    tracing::debug!(scan = %id, verdict = verdict.name(), findings, ms, "scan stored");
    Ok(())
}

/// Renders `report` (JSON, text, SARIF) and stores it with its findings and `trace` in one
/// transaction. Blocking.
fn store_report(
    shared: &Shared,
    id: &str,
    report: &scan::ScanReport,
    trace: Vec<serde_json::Value>,
) -> Result<(), StoreError> {
    let mut rendered = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = text::write(&mut rendered, report);
    let json = serde_json::to_value(report)?;
    let stored = serde_json::json!({
        "json": json,
        "text": String::from_utf8_lossy(&rendered),
        "sarif": sarif::to_value(report),
    });
    // Every source's findings (kernel, audit, static), each saying its `source`.
    let row = |rule: &str, severity: monitor_rules::Severity, value| {
        Ok((rule.to_string(), severity.name().to_string(), value?))
    };
    let findings = (report.findings.iter())
        .map(|f| row(&f.rule, f.severity, serde_json::to_value(f)))
        .chain(
            (report.audit_findings.iter())
                .map(|f| row(&f.rule, f.severity, serde_json::to_value(f))),
        )
        .chain(
            (report.static_findings.iter())
                .map(|f| row(&f.rule, f.severity, serde_json::to_value(f))),
        )
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    // Out of the running list before the report shows as done: whoever sees the verdict
    // never sees the scan still running.
    (shared.running.lock())
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
    shared.store.finish(
        id,
        &Finished {
            verdict: report.verdict.name(),
            format: report.artifact.format.as_deref(),
            exit_code: u8::from(report.exit_code),
            report: &stored,
            findings,
            events: trace,
        },
    )?;
    Ok(())
}

/// Runs `f` on the blocking pool. A task that panicked there is a store failure of its own.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e))))
}

/// Ends scan `id`, whose report was lost, as an error, retrying until the store takes it
/// (a full disk takes even this small write until space is freed): until then it shows as
/// running without a phase, never as done.
async fn abandon(shared: &Arc<Shared>, id: &str) {
    loop {
        let abandoned = {
            let (shared, id) = (shared.clone(), id.to_owned());
            blocking(move || shared.store.abandon(&id)).await
        };
        let Err(e) = abandoned else {
            return;
        };
        tracing::warn!(scan = %id, error = %e, "marking the lost scan failed; retrying");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Marks scan `id` of `owner` running in `phase`.
fn set_phase(scans: &RunningScans, id: &str, owner: Option<u32>, phase: Phase) {
    scans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_owned(), Running { owner, phase });
}

fn spec_for(shared: &Shared, request: &ScanRequest) -> ScanSpec {
    let config = &shared.config;
    let mut spec = ScanSpec::new(PathBuf::from(&request.asked.path));
    spec.python = config.loader_env.join("bin/python");
    spec.rules = (*shared.rules()).clone();
    spec.exercise = request.asked.exercise;
    spec.audit = request.asked.audit;
    let linger_ms = request.asked.linger_ms.unwrap_or(config.scan_linger_ms);
    spec.linger = Duration::from_millis(linger_ms.min(crate::config::MAX_LINGER_MS));
    if let Some(fail_on) = request.asked.fail_on {
        spec.fail_on = fail_on;
    }
    let limit = config.scan_timeout_secs;
    spec.timeout = Duration::from_secs(request.asked.timeout_secs.unwrap_or(limit).clamp(1, limit));
    spec.limits = Limits {
        max_size: config.max_artifact_mib.saturating_mul(1 << 20),
    };
    // A path is opened with the rights of who asked; an upload is the daemon's own copy.
    spec.open_as = match &request.owner {
        Some(owner) if !request.uploaded => OpenAs::User(owner.clone()),
        _ => OpenAs::Myself,
    };
    spec
}
