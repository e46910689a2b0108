//! What happens in the daemon that someone outside must hear of, each kind one variant of
//! [`DaemonEvent`], and one [`DaemonEvent::emit`] that counts it for /metrics, logs it, keeps
//! it in the store and streams it: a new kind of event is written in one place, and the
//! metrics, the log, the store and the stream cannot disagree about what happened.

use std::sync::Mutex;

use monitor_api::stream::{self, StreamEvent, StreamItem};
use monitor_engine::trace::Event;
use monitor_rules::Finding;
use monitor_scan::ScanReport;
use monitor_watch::{WatchOutput, content::Content};

use crate::Shared;
use crate::watches::WatchStatus;

/// Whose an event is.
pub enum Origin<'a> {
    Scan {
        id: &'a str,
    },
    Watch {
        id: &'a str,
        /// The watch's counters, shown by `GET /v1/watches/{id}`.
        status: &'a Mutex<WatchStatus>,
    },
}

/// Something a scan or a watch did that the outside hears of.
pub enum DaemonEvent<'a> {
    /// What a watch reported as it ran (its runner's own type: one list of what a watch can
    /// say). A changed spec is the registry's to keep; a learning window's end is streamed.
    Watch(WatchOutput<'a>),
    /// A scan's traced record, judged (counted only: the report keeps the trace).
    Traced(&'a Event),
    /// A scan's finding. Its findings are stored and counted with its report (which also
    /// counts those it did not keep); this streams the ones it keeps.
    Finding(&'a Finding),
    /// A scan ended with this report (stored next): its verdict and every finding it keeps,
    /// of every source (kernel, audit, static), exported; its counts counted.
    ScanFinished(&'a ScanReport),
}

impl DaemonEvent<'_> {
    /// Counts, logs, stores and streams the event, as its kind requires. Storing waits on the
    /// disk: the runtime is told (`block_in_place`), so that the other tasks of this worker
    /// move on.
    pub fn emit(self, shared: &Shared, origin: &Origin<'_>, owner: Option<u32>) {
        let (scan, watch) = match origin {
            Origin::Scan { id } => (Some(*id), None),
            Origin::Watch { id, status } => (None, Some((*id, *status))),
        };
        let job = scan.or(watch.map(|w| w.0)).unwrap_or_default();
        let bump = |f: fn(&mut WatchStatus)| {
            if let Some((_, status)) = watch {
                f(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
            }
        };
        let metrics = &shared.metrics;
        let streamed = match self {
            DaemonEvent::Traced(event) | DaemonEvent::Watch(WatchOutput::Event(event)) => {
                bump(|s| s.events += 1);
                metrics.count_event(event);
                None
            }
            DaemonEvent::Finding(finding) | DaemonEvent::Watch(WatchOutput::Finding(finding)) => {
                let value = match serde_json::to_value(finding) {
                    Ok(value) => value,
                    Err(e) => {
                        tracing::error!(job, error = %e, "a finding did not serialise");
                        return;
                    }
                };
                if let Some((id, _)) = watch {
                    bump(|s| s.findings += 1);
                    metrics.count_finding(finding, "watch");
                    store(job, || {
                        shared.store.add_watch_finding(
                            id,
                            owner,
                            &finding.rule,
                            finding.severity.name(),
                            &value,
                        )
                    });
                }
                Some(StreamEvent::Finding(value))
            }
            DaemonEvent::Watch(WatchOutput::Kill(kill)) => {
                bump(|s| s.kills += 1);
                metrics.processes_killed.inc();
                tracing::warn!(watch = job, pid = kill.pid, comm = %kill.comm, by = kill.by, rule = ?kill.rule, syscall = ?kill.syscall, "killed a process");
                let value = serde_json::to_value(kill).unwrap_or_default();
                store(job, || shared.store.add_watch_kill(job, &value));
                Some(StreamEvent::Kill(value))
            }
            DaemonEvent::Watch(WatchOutput::Discovered {
                event,
                path,
                content,
            }) => {
                bump(|s| s.discovered += 1);
                metrics.count_discovered(content);
                tracing::info!(watch = job, pid = event.pid, comm = %event.comm, path, "discovered a process opening a model");
                Some(StreamEvent::Discovered(stream::Discovered {
                    pid: event.pid,
                    comm: event.comm.to_string(),
                    time_ns: event.time_ns,
                    path: path.map(str::to_owned),
                    opened: opened(content),
                }))
            }
            DaemonEvent::Watch(WatchOutput::Released(_)) => {
                // Every Python process is found at its site .pth files and let go of: counted,
                // not streamed.
                bump(|s| s.released += 1);
                metrics.discovery_released.inc();
                None
            }
            DaemonEvent::Watch(WatchOutput::Gap { pid, comm, path }) => {
                bump(|s| s.gaps += 1);
                metrics.discovery_gaps.inc();
                tracing::warn!(
                    watch = job,
                    pid,
                    comm,
                    path,
                    "a process let go of had just opened a model: watched again, with a gap"
                );
                Some(StreamEvent::Gap(stream::Gap {
                    pid,
                    comm: comm.to_owned(),
                    path: path.to_owned(),
                }))
            }
            DaemonEvent::Watch(WatchOutput::Lost(records)) => {
                metrics.events_dropped.inc_by(records);
                tracing::warn!(job, records, "records of the job were lost");
                None
            }
            DaemonEvent::Watch(WatchOutput::Changed { learned: false, .. }) => None,
            DaemonEvent::Watch(WatchOutput::Changed {
                spec,
                learned: true,
            }) => {
                tracing::info!(
                    watch = job,
                    "learning ended: the watch enforces its profile"
                );
                let profile = serde_json::to_value(&spec.policy.file().profile);
                Some(StreamEvent::Learned(profile.unwrap_or_default()))
            }
            DaemonEvent::ScanFinished(report) => {
                metrics.record_scan(report);
                tracing::info!(
                    scan = job,
                    verdict = report.verdict.name(),
                    findings = report.findings.len(),
                    ms = report.duration_ms,
                    "scan finished"
                );
                export_scan(shared, job, owner, report);
                None
            }
        };
        if let Some(event) = streamed {
            // A scan's findings are exported with its verdict, all sources together.
            let exported = watch.is_some() && shared.export.enabled();
            let kind = event.kind();
            let item = match origin {
                Origin::Scan { id } => StreamItem::scan(*id, event),
                Origin::Watch { id, .. } => StreamItem::watch(*id, event),
            };
            match serde_json::to_value(item) {
                Ok(value) => {
                    if exported {
                        shared.export.export(kind, value.clone());
                    }
                    shared.findings_feed.publish(owner, value);
                }
                Err(e) => tracing::error!(job, error = %e, "a stream item did not serialise"),
            }
        }
    }
}

/// A scan's findings as /v1/findings has them (each an item of the stream's shape), then its
/// verdict.
fn export_scan(shared: &Shared, id: &str, owner: Option<u32>, report: &ScanReport) {
    if !shared.export.enabled() {
        return;
    }
    let findings = (report.findings.iter().map(serde_json::to_value))
        .chain(report.audit_findings.iter().map(serde_json::to_value))
        .chain(report.static_findings.iter().map(serde_json::to_value));
    for finding in findings.flatten() {
        let item = StreamItem::scan(id, StreamEvent::Finding(finding));
        if let Ok(value) = serde_json::to_value(item) {
            shared.export.export("finding", value);
        }
    }
    shared.export.export(
        "verdict",
        serde_json::json!({
            "source": "scan",
            "scan_id": id,
            "owner_uid": owner,
            "path": report.artifact.path,
            "sha256": report.artifact.sha256,
            "format": report.artifact.format,
            "verdict": report.verdict.name(),
            "exit_code": report.exit_code,
            "counts": report.counts,
            "duration_ms": report.duration_ms,
        }),
    );
}

fn store<E: std::fmt::Display>(job: &str, write: impl FnOnce() -> Result<(), E>) {
    if let Err(e) = tokio::task::block_in_place(write) {
        tracing::error!(job, error = %e, "storing an event failed");
    }
}

fn opened(content: &Content) -> stream::Opened {
    let (content, what) = match content {
        Content::Model(what) => (stream::Content::Model, what),
        Content::NoModel(what) => (stream::Content::NoModel, what),
        Content::Unknown(what) => (stream::Content::Unknown, what),
    };
    stream::Opened {
        content,
        what: what.clone(),
    }
}
