//! Discovery's side of a running watch: the processes the kernel found opening a model-named
//! file, whether any open of theirs could load a model (as the file's bytes tell), the ones let
//! go of early because none could, and the ones to watch again because a record of such an open
//! arrived after their release.
//!
//! A found process is announced (`WatchOutput::Discovered`) at its first open that could load
//! a model. Every Python process reads its site `.pth` files at start and is found there; none
//! of those is announced, and each is let go of at the next tick, within a second.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::artifact::ends_in_any;
use crate::content::{Content, OpenedFile, opened_path};
use crate::runner::WatchOutput;
use monitor_engine::probes::Target;
use monitor_engine::process::ProcessTable;
use monitor_engine::router::Subscription;
use monitor_engine::trace::{Event, What};

/// How many of a found process's opens its release names.
pub const OPENS_KEPT: usize = 16;

/// A found process that discovery stopped watching early, with what it started.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub pid: u32,
    pub comm: String,
    /// The model-named files it and its children opened while watched (the first
    /// [`OPENS_KEPT`]), and why none could load a model.
    pub opened: Vec<Opened>,
    /// Processes no longer watched: it and those it started.
    pub processes: usize,
}

/// A model-named file a found process opened, and what it could be to a loader.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    pub path: String,
    #[serde(flatten)]
    pub content: Content,
}

/// What discovery knows of the processes it found.
#[derive(Default)]
pub struct Discoveries {
    /// Processes found and watched, by pid.
    found: HashMap<u32, Found>,
    /// Processes let go of early, and when (CLOCK_MONOTONIC ns): their records from before
    /// then may still arrive.
    released: HashMap<u32, u64>,
    /// Released processes to watch again: they had opened a model just before.
    to_rewatch: Vec<u32>,
    /// Processes let go of early, in all.
    pub released_count: u64,
    /// Released processes watched again, in all: their acts in between were not seen.
    pub gaps: u64,
}

/// A process discovery found, while it is watched.
struct Found {
    /// When it was found (its open's time).
    since: u64,
    comm: String,
    /// The model-named files it and its children opened, the first [`OPENS_KEPT`].
    opened: Vec<Opened>,
    /// Some open of a model-named file by it, or by a process it started, could load a model.
    could_load: bool,
}

impl Discoveries {
    /// What syscall event `event` tells: a process just found (one whose parent the watch
    /// never saw: not in `started`), an open showing a found one loading a model, or a record
    /// of a released one from before its release. `suffixes` are discovery's; `opened` reads
    /// the file the syscall opened, if it did.
    pub fn on_syscall(
        &mut self,
        event: &Event,
        suffixes: &[String],
        opened: &mut OpenedFile<'_>,
        started: &HashSet<u32>,
        processes: &ProcessTable,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        let What::Syscall(sc) = &event.what else {
            return;
        };
        let pid = event.pid;
        let model_named = opened_path(sc).filter(|p| sc.syscall.opens && ends_in_any(p, suffixes));
        let mut what_it_could_load = || match model_named {
            Some(_) => opened.content().clone(),
            None => Content::Unknown(format!("first seen at {}", sc.name)),
        };
        if let Some(&released_at) = self.released.get(&pid) {
            if event.time_ns >= released_at {
                // The kernel found it again: a new discovery.
                self.released.remove(&pid);
            } else {
                // Recorded before the release. An open of a model then means the release
                // came too soon: watched again, with what it did in between unseen.
                let Some(content) = model_named
                    .map(|_| what_it_could_load())
                    .filter(Content::could_load)
                else {
                    return;
                };
                self.released.remove(&pid);
                self.to_rewatch.push(pid);
                self.gaps += 1;
                tracing::warn!(pid, comm = %event.comm, path = ?model_named, "a released process had just opened a model: watching it again (its syscalls since the release were not seen)");
                sink(WatchOutput::Gap {
                    pid,
                    comm: &event.comm,
                    path: model_named.unwrap_or_default(),
                });
                self.found(event, model_named, content, sink);
                return;
            }
        }
        // Discovery's watch sees a process first at the open that selected it.
        if !self.found.contains_key(&pid) && !started.contains(&pid) {
            let content = what_it_could_load();
            self.found(event, model_named, content, sink);
            return;
        }
        // A later open of a model-named file, by a found process or one it started: once one
        // could load a model, the process is watched for the whole window.
        if let Some(root) = model_named.and_then(|_| self.root_of(pid, processes))
            && !self.found[&root].could_load
        {
            let content = what_it_could_load();
            tracing::debug!(pid, path = ?model_named, %content, "a discovered process opened a model-named file");
            if content.could_load() {
                announce(event, model_named, &content, sink);
            }
            if let Some(found) = self.found.get_mut(&root) {
                found.could_load = content.could_load();
                found.opened(model_named, content);
            }
        }
    }

    fn found(
        &mut self,
        event: &Event,
        path: Option<&str>,
        content: Content,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        if content.could_load() {
            announce(event, path, &content, sink);
        } else {
            tracing::debug!(pid = event.pid, comm = %event.comm, path = ?path, %content, "found a process at an open of no model");
        }
        let mut found = Found {
            since: event.time_ns,
            comm: event.comm.to_string(),
            opened: Vec::new(),
            could_load: content.could_load(),
        };
        found.opened(path, content);
        self.found.insert(event.pid, found);
    }

    /// The found process `pid` is, or that started it.
    fn root_of(&self, pid: u32, processes: &ProcessTable) -> Option<u32> {
        if self.found.contains_key(&pid) {
            return Some(pid);
        }
        processes
            .ancestors(pid)
            .into_iter()
            .find(|p| self.found.contains_key(p))
    }

    /// Stops watching the found processes none of whose opens of a model-named file could
    /// load a model, with what they started (a later open of one is found again); they are
    /// no longer in `started` either.
    pub fn release_without_model(
        &mut self,
        processes: &ProcessTable,
        started: &mut HashSet<u32>,
        records_of_watch: &Subscription,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        let done: Vec<u32> = self
            .found
            .iter()
            .filter(|(_, found)| !found.could_load)
            .map(|(&pid, _)| pid)
            .collect();
        for root in done {
            let pids = with_descendants(processes, root);
            if let Err(e) = records_of_watch.forget_processes(&pids) {
                tracing::warn!(pid = root, error = %e, "cannot stop watching a discovered process");
                continue;
            }
            // Taken after the release: records stamped before it may still arrive.
            let now = monotonic_ns();
            let Some(found) = self.found.remove(&root) else {
                continue;
            };
            for &pid in &pids {
                self.released.insert(pid, now);
                started.remove(&pid);
            }
            self.released_count += 1;
            let paths: Vec<&str> = found.opened.iter().map(|o| o.path.as_str()).collect();
            tracing::debug!(pid = root, comm = %found.comm, opened = ?paths, "released a discovered process: it loaded no model");
            sink(WatchOutput::Released(&Release {
                pid: root,
                comm: found.comm,
                opened: found.opened,
                processes: pids.len(),
            }));
        }
    }

    /// Stops watching the found processes whose window of `window_secs` has passed, with
    /// what they started.
    pub fn expire(
        &mut self,
        window_secs: u64,
        processes: &ProcessTable,
        records_of_watch: &Subscription,
    ) {
        let now = monotonic_ns();
        let window = window_secs.saturating_mul(1_000_000_000);
        let expired: Vec<u32> = self
            .found
            .iter()
            .filter(|(_, found)| found.since.saturating_add(window) < now)
            .map(|(&pid, _)| pid)
            .collect();
        for root in expired {
            self.found.remove(&root);
            let pids = with_descendants(processes, root);
            if let Err(e) = records_of_watch.forget_processes(&pids) {
                tracing::warn!(pid = root, error = %e, "cannot stop watching a discovered process");
            }
        }
    }

    /// Watches again the released processes that had opened a model just before.
    pub fn rewatch(&mut self, records_of_watch: &Subscription) {
        for pid in self.to_rewatch.drain(..) {
            if let Err(e) = records_of_watch.add_target(Target::Process(pid)) {
                tracing::warn!(pid, error = %e, "cannot watch a released process again");
            }
        }
    }

    /// Forgets released processes that are gone.
    pub fn prune(&mut self) {
        self.released
            .retain(|pid, _| monitor_engine::procfs::exists(*pid));
    }
}

impl Found {
    fn opened(&mut self, path: Option<&str>, content: Content) {
        if let Some(path) = path
            && self.opened.len() < OPENS_KEPT
        {
            self.opened.push(Opened {
                path: path.to_owned(),
                content,
            });
        }
    }
}

/// Says that discovery watches `event`'s process for its open of `path`, which could load a
/// model.
fn announce(
    event: &Event,
    path: Option<&str>,
    content: &Content,
    sink: &mut impl FnMut(WatchOutput<'_>),
) {
    tracing::info!(pid = event.pid, comm = %event.comm, path = ?path, %content, "discovered a process opening a model");
    sink(WatchOutput::Discovered {
        event,
        path,
        content,
    });
}

/// `root` and the processes below it, as the trace knows them.
fn with_descendants(processes: &ProcessTable, root: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = processes
        .iter()
        .filter(|p| processes.ancestors(p.pid).contains(&root))
        .map(|p| p.pid)
        .collect();
    pids.push(root);
    pids
}

/// CLOCK_MONOTONIC, the clock of the records.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::{fs, os::fd::AsRawFd as _};

    use super::*;
    use monitor_engine::decode::ArgValue;
    use monitor_engine::trace::SyscallEvent;

    /// An `openat` of `path` by this process, returning `fd`, at `time_ns`.
    fn open_event(path: &str, fd: i64, time_ns: u64) -> Event {
        let syscall = monitor_common::syscall::by_name("openat").unwrap();
        Event {
            time_ns,
            pid: std::process::id(),
            tid: std::process::id(),
            ppid: None,
            uid: 0,
            comm: "loader".into(),
            cgroup_id: 0,
            what: What::Syscall(SyscallEvent {
                name: syscall.name,
                class: syscall.class,
                args: monitor_engine::trace::Args::new(
                    syscall.args,
                    vec![
                        ArgValue::Fd(libc::AT_FDCWD),
                        ArgValue::Str(Some(path.into())),
                        ArgValue::Flags {
                            raw: 0,
                            text: "O_RDONLY".into(),
                        },
                    ],
                ),
                ret: Some(fd),
                errno: None,
                exit_time_ns: Some(time_ns + 1),
                flags: monitor_engine::decode::Flags::default(),
                resolved: Vec::new(),
                syscall,
                clean_paths: 0,
            }),
        }
    }

    #[test]
    fn found_processes_are_confirmed_by_content_and_watched_again_after_a_release_too_soon() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("firmware.bin");
        let model = dir.path().join("model.pkl");
        fs::write(&blob, b"\x7fELF\x02\x01\x01\x00").unwrap();
        fs::write(&model, b"cos\nsystem\n(S'true'\ntR.").unwrap();
        let (blob_file, model_file) = (
            fs::File::open(&blob).unwrap(),
            fs::File::open(&model).unwrap(),
        );
        let suffixes = vec![".bin".to_string(), ".pkl".to_string()];
        let (started, processes) = (HashSet::new(), ProcessTable::default());
        let mut discoveries = Discoveries::default();
        let mut outputs = Vec::new();
        let mut sink = |out: WatchOutput<'_>| {
            outputs.push(match out {
                WatchOutput::Discovered { content, .. } => {
                    format!("discovered {}", content.kind())
                }
                WatchOutput::Gap { path, .. } => format!("gap {path}"),
                other => format!("{other:?}"),
            })
        };
        let me = std::process::id();
        let mut see = |d: &mut Discoveries, path: &std::path::Path, file: &fs::File, t| {
            let event = open_event(path.to_str().unwrap(), file.as_raw_fd().into(), t);
            let What::Syscall(sc) = &event.what else {
                unreachable!()
            };
            let mut opened = OpenedFile::new(event.pid, sc);
            d.on_syscall(
                &event,
                &suffixes,
                &mut opened,
                &started,
                &processes,
                &mut sink,
            );
        };
        see(&mut discoveries, &blob, &blob_file, 100);
        assert!(!discoveries.found[&me].could_load, "an ELF is no model");
        // Released (as a tick does), then a record from before the release: an open of a model.
        let found = discoveries.found.remove(&me).unwrap();
        assert_eq!(found.opened.len(), 1);
        discoveries.released.insert(me, 1_000);
        see(&mut discoveries, &model, &model_file, 900);
        assert_eq!(discoveries.to_rewatch, vec![me], "watched again");
        assert_eq!(discoveries.gaps, 1);
        assert!(discoveries.found[&me].could_load);
        // A record from after a release is the kernel's new find: no gap.
        discoveries.found.clear();
        discoveries.released.insert(me, 1_000);
        see(&mut discoveries, &model, &model_file, 2_000);
        assert_eq!(discoveries.gaps, 1);
        let model_path = model.display().to_string();
        assert_eq!(
            outputs,
            vec![
                format!("gap {model_path}"),
                "discovered model".to_string(),
                "discovered model".to_string(),
            ]
        );
    }
}
