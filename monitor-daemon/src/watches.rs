//! The daemon's live watches: each one a task running [`monitor_watch::run`] on the shared
//! router, its findings and kills stored, streamed and counted as they happen. Watches are in
//! the store, so a restart resumes them (those whose process is gone end instead).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::{FeedItem, Shared, store::WatchRecord};
use monitor_watch::{self as watch, Command, WatchOutput, WatchSpec, WatchSummary};

/// The id of the watch that monitord's `[discovery]` settings start.
pub const DISCOVERY_ID: &str = "discovery";

/// Where a watch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Active,
    /// It ended by itself (its processes are gone).
    Ended,
    /// It could not run (see `error`).
    Failed,
}

/// A watch as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WatchStatus {
    pub id: String,
    #[serde(flatten)]
    pub spec: WatchSpec,
    pub created_at: i64,
    /// The uid of who added it (`None`: the configuration's).
    pub owner_uid: Option<u32>,
    /// Started by the configuration, not the API (cannot be removed through it).
    pub builtin: bool,
    pub state: State,
    pub events: u64,
    pub findings: u64,
    pub kills: u64,
    /// Discovery's: processes found, let go of early, and watched again after a gap.
    #[serde(skip_serializing_if = "is_zero")]
    pub discovered: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub released: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gaps: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<WatchSummary>,
}

struct Running {
    status: Arc<Mutex<WatchStatus>>,
    stop: Option<oneshot::Sender<()>>,
    commands: mpsc::UnboundedSender<Command>,
}

/// Every watch of this daemon, by id.
#[derive(Default)]
pub struct Watches {
    running: Mutex<BTreeMap<String, Running>>,
}

impl Watches {
    /// Registers `record` with the kernel programs now, then runs it as a task on the
    /// daemon's runtime: when this returns, every later act of what it selects is seen.
    pub fn start(
        &self,
        shared: &Arc<Shared>,
        record: WatchRecord,
        builtin: bool,
    ) -> anyhow::Result<()> {
        let started = watch::runner::start(&record.spec, &shared.router, &shared.rules())?;
        let status = Arc::new(Mutex::new(WatchStatus {
            id: record.id.clone(),
            spec: record.spec.clone(),
            created_at: record.created_at,
            owner_uid: record.owner,
            builtin,
            state: State::Active,
            events: 0,
            findings: 0,
            kills: 0,
            discovered: 0,
            released: 0,
            gaps: 0,
            error: None,
            summary: None,
        }));
        let (stop, stopped) = oneshot::channel();
        let (commands, control) = mpsc::unbounded_channel();
        lock(&self.running).insert(
            record.id.clone(),
            Running {
                status: status.clone(),
                stop: Some(stop),
                commands,
            },
        );
        shared.metrics.watches_active.inc();
        let shared = shared.clone();
        tokio::spawn(async move {
            let id = record.id.clone();
            let owner = record.owner;
            tracing::info!(watch = %id, name = ?record.spec.name, "watch started");
            let ran = started
                .run(
                    || shared.rules(),
                    async {
                        let _ = stopped.await;
                    },
                    control,
                    |out| report(&shared, &id, owner, &status, out),
                )
                .await;
            shared.metrics.watches_active.dec();
            let mut s = lock(&status);
            match ran {
                Ok(summary) => {
                    if summary.ended == watch::runner::Ended::Exited {
                        s.state = State::Ended;
                        // Its processes are gone: nothing to resume after a restart.
                        if let Err(e) = shared.store.remove_watch(&id) {
                            tracing::error!(watch = %id, error = %e, "removing an ended watch");
                        }
                        tracing::info!(watch = %id, "watch ended: its processes have exited");
                    }
                    s.summary = Some(summary);
                }
                Err(e) => {
                    tracing::error!(watch = %id, error = format!("{e:#}"), "watch failed");
                    s.state = State::Failed;
                    s.error = Some(format!("{e:#}"));
                }
            }
        });
        Ok(())
    }

    /// Stops watch `id` and forgets it; `false` when there is none.
    pub fn stop(&self, id: &str) -> bool {
        match lock(&self.running).remove(id) {
            Some(mut running) => {
                if let Some(stop) = running.stop.take() {
                    let _ = stop.send(());
                }
                true
            }
            None => false,
        }
    }

    /// Stops every watch (the daemon is stopping; they resume at the next start).
    pub fn stop_all(&self) {
        for running in lock(&self.running).values_mut() {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// Tells running watch `id` `command`; `false` when there is no such watch running.
    pub fn command(&self, id: &str, command: Command) -> bool {
        lock(&self.running)
            .get(id)
            .is_some_and(|r| r.commands.send(command).is_ok())
    }

    /// Shows `spec` as watch `id`'s (its policy or learning window changed).
    pub fn set_spec(&self, id: &str, spec: WatchSpec) {
        if let Some(running) = lock(&self.running).get(id) {
            lock(&running.status).spec = spec;
        }
    }

    pub fn get(&self, id: &str) -> Option<WatchStatus> {
        lock(&self.running).get(id).map(|r| lock(&r.status).clone())
    }

    pub fn list(&self) -> Vec<WatchStatus> {
        lock(&self.running)
            .values()
            .map(|r| lock(&r.status).clone())
            .collect()
    }

    /// Watches running now.
    pub fn active(&self) -> usize {
        lock(&self.running)
            .values()
            .filter(|r| lock(&r.status).state == State::Active)
            .count()
    }
}

/// Stores, streams and counts what watch `id` of `owner` reports. Storing waits on the disk:
/// the runtime is told (`block_in_place`), so that the other tasks of this worker move on.
fn report(
    shared: &Shared,
    id: &str,
    owner: Option<u32>,
    status: &Mutex<WatchStatus>,
    out: WatchOutput<'_>,
) {
    let feed = |value| {
        // Nobody listening is fine.
        let _ = shared.findings_feed.send(FeedItem { owner, value });
    };
    match out {
        WatchOutput::Event(event) => {
            lock(status).events += 1;
            shared.metrics.count_event(event);
        }
        WatchOutput::Finding(finding) => {
            lock(status).findings += 1;
            shared.metrics.count_finding(finding, "watch");
            match serde_json::to_value(finding) {
                Ok(value) => {
                    let stored = tokio::task::block_in_place(|| {
                        shared.store.add_watch_finding(
                            id,
                            owner,
                            &finding.rule,
                            finding.severity.name(),
                            &value,
                        )
                    });
                    if let Err(e) = stored {
                        tracing::error!(watch = %id, error = %e, "storing a finding failed");
                    }
                    feed(json!({
                        "source": "watch",
                        "watch_id": id,
                        "finding": value,
                    }));
                }
                Err(e) => tracing::error!(watch = %id, error = %e, "a finding did not serialise"),
            }
        }
        WatchOutput::Discovered {
            event,
            path,
            content,
        } => {
            lock(status).discovered += 1;
            shared.metrics.count_discovered(content);
            feed(json!({
                "source": "watch",
                "watch_id": id,
                "discovered": {
                    "pid": event.pid,
                    "comm": event.comm,
                    "time_ns": event.time_ns,
                    "path": path,
                    "opened": content,
                },
            }));
        }
        WatchOutput::Released(_) => {
            // Every Python process is found at its site .pth files and let go of: counted, not
            // streamed.
            lock(status).released += 1;
            shared.metrics.discovery_released.inc();
        }
        WatchOutput::Gap { pid, comm, path } => {
            lock(status).gaps += 1;
            shared.metrics.discovery_gaps.inc();
            tracing::warn!(watch = %id, pid, comm, path, "a process let go of had just opened a model: watched again, with a gap");
            feed(json!({
                "source": "watch",
                "watch_id": id,
                "gap": { "pid": pid, "comm": comm, "path": path },
            }));
        }
        WatchOutput::Lost(records) => {
            shared.metrics.events_dropped.inc_by(records);
            tracing::warn!(watch = %id, records, "records of the watch were lost");
        }
        WatchOutput::Changed { spec, learned } => {
            lock(status).spec = spec.clone();
            if let Err(e) = tokio::task::block_in_place(|| shared.store.update_watch(id, spec)) {
                tracing::error!(watch = %id, error = %e, "storing the watch failed");
            }
            if learned {
                tracing::info!(watch = %id, "learning ended: the watch enforces its profile");
                feed(json!({
                    "source": "watch",
                    "watch_id": id,
                    "learned": spec.policy.file().profile,
                }));
            }
        }
        WatchOutput::Kill(kill) => {
            lock(status).kills += 1;
            shared.metrics.processes_killed.inc();
            tracing::warn!(watch = %id, pid = kill.pid, comm = %kill.comm, by = kill.by, rule = ?kill.rule, syscall = ?kill.syscall, "killed a process");
            let value = serde_json::to_value(kill).unwrap_or_default();
            if let Err(e) = tokio::task::block_in_place(|| shared.store.add_watch_kill(id, &value))
            {
                tracing::error!(watch = %id, error = %e, "storing a kill failed");
            }
            feed(json!({
                "source": "watch",
                "watch_id": id,
                "kill": value,
            }));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
