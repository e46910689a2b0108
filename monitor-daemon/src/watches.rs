//! The daemon's live watches: each one a task running [`monitor_watch::run`] on the shared
//! router, its findings and kills stored, streamed and counted as they happen. Watches are in
//! the store, so a restart resumes them (those whose process is gone end instead).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use crate::Shared;
use crate::events::{DaemonEvent, Origin};
use crate::store::WatchRecord;
use monitor_watch::{self as watch, Command, WatchOutput, WatchSpec};

/// The id of the watch that monitord's `[discovery]` settings start.
pub const DISCOVERY_ID: &str = "discovery";

/// A watch as the API shows it (monitor-api's type, `recent_kills` left out).
pub use monitor_api::Watch as WatchStatus;
use monitor_api::WatchState as State;

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
            recent_kills: None,
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

/// What watch `id` of `owner` reports, emitted (counted, logged, stored, streamed: see
/// [`crate::events`]); a changed spec is kept for a restart first.
fn report(
    shared: &Shared,
    id: &str,
    owner: Option<u32>,
    status: &Mutex<WatchStatus>,
    out: WatchOutput<'_>,
) {
    if let WatchOutput::Changed { spec, .. } = out {
        lock(status).spec = spec.clone();
        if let Err(e) = tokio::task::block_in_place(|| shared.store.update_watch(id, spec)) {
            tracing::error!(watch = %id, error = %e, "storing the watch failed");
        }
    }
    DaemonEvent::Watch(out).emit(shared, &Origin::Watch { id, status }, owner);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
