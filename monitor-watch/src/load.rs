//! A live watch's load phase: which tasks are loading a model, and until when.
//!
//! A load starts when a watched thread opens a file that could hold a model (named like one,
//! with bytes a loader could run code from). It lasts while the process holds that descriptor
//! open, and a grace after it is closed (a loader may read the whole file, close it, and only
//! then deserialize); where the descriptor cannot be followed (the open's result was not seen),
//! a fixed window after the open.
//!
//! Whether a descriptor is still open is looked up in /proc (the same file at
//! `/proc/PID/fd/N`, by device and inode), every [`CHECK_EVERY_MS`] while a load is in
//! progress: a close, a `close_range`, an exec that closes it, a `dup2` over it and the
//! process's exit all end it alike, and no syscall is traced for it. A close is seen up to one
//! check late: the acts in between count as the load's, which errs on the strict side.
//!
//! It is the opening thread's phase, not its whole process's: a server's other threads (its
//! request handlers, a health check) go on in the run phase while one thread loads. The
//! threads a loading thread starts load with it; a process it starts (a payload's shell) is
//! part of the load for its whole life, and so is everything that process starts. A thread a
//! load started is in that load only: a server that starts its request and health-check
//! threads while it loads its first model goes on serving in the run phase when, much later,
//! another thread loads the next one.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, sync::Arc};

use smallvec::SmallVec;

/// How often the descriptors of loads in progress are looked at.
pub const CHECK_EVERY_MS: u64 = 100;

/// A file by device and inode: what a descriptor must still name to be the one opened.
pub type FileId = (u64, u64);

/// The file process `pid` has open as descriptor `fd`, if it still has one.
pub fn file_of(pid: u32, fd: i32) -> Option<FileId> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    Some((meta.dev(), meta.ino()))
}

pub use monitor_rules::load::{LoadBound, LoadContext};

/// The loads in progress of one watch.
#[derive(Debug, Default)]
pub struct Loads {
    grace_ns: u64,
    window_ns: u64,
    /// By process: its open descriptors of model files, and when its load ends.
    processes: HashMap<u32, ProcessLoad>,
    /// By thread id: the tasks that are loading.
    tasks: HashMap<u32, Task>,
}

#[derive(Debug)]
struct ProcessLoad {
    /// The model file opened last.
    artifact: Arc<str>,
    /// Descriptors of model files open, and the file each names.
    fds: SmallVec<[(i32, FileId); 2]>,
    /// CLOCK_MONOTONIC ns at which the load ends; `None` while a descriptor is open.
    ends_ns: Option<u64>,
    /// Whether the end is a window (no descriptor followed) rather than a close and a grace.
    windowed: bool,
    /// Counts the loads of the process that began after the one before had ended: a thread
    /// is in the load it was started in (or opened a model in), not in a later one.
    generation: u64,
}

impl ProcessLoad {
    fn at(&self, time_ns: u64) -> Option<LoadBound> {
        match self.ends_ns {
            None => Some(LoadBound::DescriptorOpen),
            Some(end) if time_ns <= end => Some(if self.windowed {
                LoadBound::Window
            } else {
                LoadBound::DescriptorClosed
            }),
            Some(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Task {
    /// A thread of process `pid` in that process's load `generation`: the one that opened
    /// the model, or one it started while loading.
    Loader { pid: u32, generation: u64 },
    /// Started by a loading task of process `parent`, in its load `generation`: a thread of
    /// it, or a process, as its first record will tell.
    Child {
        parent: u32,
        artifact: Arc<str>,
        generation: u64,
    },
    /// A process a load started, and its threads: in that load for good.
    Started { artifact: Arc<str> },
}

impl Loads {
    /// `grace_ms`: how long after the last close a load lasts; `window_ms`: how long after an
    /// open whose descriptor cannot be followed.
    pub fn new(grace_ms: u64, window_ms: u64) -> Self {
        Loads {
            grace_ns: grace_ms.saturating_mul(1_000_000),
            window_ns: window_ms.saturating_mul(1_000_000),
            ..Loads::default()
        }
    }

    /// Whether nothing is loading (most of a server's life): nothing to look up then.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Thread `tid` of process `pid` opened model file `artifact` at `time_ns`, as descriptor
    /// `fd` naming file `file` (`fd` is `None` when the open's result was not seen; `file`
    /// is `None` when the descriptor is closed already, `now_ns` being when that was seen).
    pub fn opened(
        &mut self,
        pid: u32,
        tid: u32,
        fd: Option<(i32, Option<FileId>)>,
        artifact: &str,
        time_ns: u64,
        now_ns: u64,
    ) {
        let load = self.processes.entry(pid).or_insert_with(|| ProcessLoad {
            artifact: artifact.into(),
            fds: SmallVec::new(),
            ends_ns: Some(0),
            windowed: false,
            generation: 0,
        });
        if load.at(time_ns).is_none() {
            // A load of its own, not one going on in another thread.
            load.generation += 1;
        }
        let generation = load.generation;
        load.artifact = artifact.into();
        match fd {
            Some((fd, Some(file))) => {
                load.fds.retain(|(f, _)| *f != fd);
                load.fds.push((fd, file));
                load.ends_ns = None;
                load.windowed = false;
            }
            // Loaded and closed before the open was judged: over a grace after now.
            Some((_, None)) if load.fds.is_empty() => {
                let end = now_ns.max(time_ns).saturating_add(self.grace_ns);
                load.ends_ns = Some(load.ends_ns.map_or(end, |e| e.max(end)));
                load.windowed = false;
            }
            Some((_, None)) => {}
            None if load.fds.is_empty() => {
                let end = time_ns.saturating_add(self.window_ns);
                load.ends_ns = Some(load.ends_ns.map_or(end, |e| e.max(end)));
                load.windowed = true;
            }
            None => {}
        }
        match self.tasks.get(&tid) {
            Some(Task::Started { .. }) => {}
            _ => {
                self.tasks.insert(tid, Task::Loader { pid, generation });
            }
        }
    }

    /// Looks at the descriptors of the loads in progress (`still` says whether process `pid`
    /// still has descriptor `fd` open on file `file`): a load whose last one is gone ends a
    /// grace after `now_ns`.
    pub fn check(&mut self, now_ns: u64, still: impl Fn(u32, i32, FileId) -> bool) {
        for (&pid, load) in &mut self.processes {
            let before = load.fds.len();
            load.fds.retain(|&mut (fd, file)| still(pid, fd, file));
            if before > 0 && load.fds.is_empty() {
                load.ends_ns = Some(now_ns.saturating_add(self.grace_ns));
                load.windowed = false;
            }
        }
    }

    /// Whether some load holds a descriptor open (and so needs looking at).
    pub fn has_open_descriptors(&self) -> bool {
        self.processes.values().any(|load| !load.fds.is_empty())
    }

    /// Task `parent_tid` of process `parent_pid` started task `child_tid` at `time_ns`.
    pub fn forked(&mut self, parent_pid: u32, parent_tid: u32, child_tid: u32, time_ns: u64) {
        let Some(load) = self.at(parent_pid, parent_tid, time_ns) else {
            return;
        };
        if load.bound == LoadBound::StartedByLoad {
            // A thread or a process of a process the load started: in it for good too.
            let artifact = load.artifact;
            self.tasks.insert(child_tid, Task::Started { artifact });
            return;
        }
        let generation = self.processes.get(&parent_pid).map_or(0, |p| p.generation);
        self.tasks.insert(
            child_tid,
            Task::Child {
                parent: parent_pid,
                artifact: load.artifact,
                generation,
            },
        );
    }

    /// Thread `tid` of process `pid` is gone (`whole`: with its process).
    pub fn exited(&mut self, pid: u32, tid: u32, whole: bool) {
        self.tasks.remove(&tid);
        if whole {
            self.tasks.remove(&pid);
            self.processes.remove(&pid);
        }
    }

    /// The load that thread `tid` of process `pid` is in at `time_ns`, if any.
    pub fn at(&mut self, pid: u32, tid: u32, time_ns: u64) -> Option<LoadContext> {
        let task = self.tasks.get(&tid)?.clone();
        let (pid, task) = match task {
            // Its first record tells a process from a thread.
            Task::Child {
                parent,
                artifact,
                generation,
            } => {
                let settled = if pid == tid && pid != parent {
                    Task::Started { artifact }
                } else {
                    Task::Loader { pid, generation }
                };
                self.tasks.insert(tid, settled.clone());
                (pid, settled)
            }
            other => (pid, other),
        };
        match task {
            Task::Started { artifact } => Some(LoadContext {
                artifact,
                bound: LoadBound::StartedByLoad,
            }),
            Task::Loader {
                pid: loader,
                generation,
            } if loader == pid => {
                let load = self
                    .processes
                    .get(&pid)
                    .filter(|l| l.generation == generation)?;
                Some(LoadContext {
                    artifact: load.artifact.clone(),
                    bound: load.at(time_ns)?,
                })
            }
            // A thread id reused by another process.
            _ => None,
        }
    }

    /// Forgets loads over before `time_ns`, and their threads (a watch runs for weeks).
    pub fn prune(&mut self, time_ns: u64) {
        self.processes
            .retain(|_, load| load.ends_ns.is_none_or(|end| end >= time_ns));
        let processes = &self.processes;
        self.tasks.retain(|_, task| match task {
            Task::Loader { pid, .. } | Task::Child { parent: pid, .. } => {
                processes.contains_key(pid)
            }
            Task::Started { .. } => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const FILE: FileId = (1, 2);

    fn open_fd(fd: i32) -> Option<(i32, Option<FileId>)> {
        Some((fd, Some(FILE)))
    }

    #[test]
    fn a_load_lasts_while_the_descriptor_is_open_and_a_grace_after() {
        let mut loads = Loads::new(500, 10_000);
        loads.opened(10, 10, open_fd(5), "/m/model.pt", 0, MS);
        let at = |loads: &mut Loads, tid, t| loads.at(10, tid, t).map(|c| c.bound);
        loads.check(20_000 * MS, |_, _, _| true);
        assert_eq!(
            at(&mut loads, 10, 20_000 * MS),
            Some(LoadBound::DescriptorOpen)
        );
        // Another thread of the server (a health check) is not loading.
        assert_eq!(at(&mut loads, 11, MS), None);
        assert!(loads.has_open_descriptors());
        loads.check(30_000 * MS, |pid, fd, file| {
            (pid, fd, file) != (10, 5, FILE)
        });
        assert!(!loads.has_open_descriptors());
        assert_eq!(
            at(&mut loads, 10, 30_400 * MS),
            Some(LoadBound::DescriptorClosed)
        );
        assert_eq!(at(&mut loads, 10, 30_600 * MS), None);
        loads.prune(31_000 * MS);
        assert!(loads.is_empty());
    }

    #[test]
    fn what_a_load_starts_is_part_of_it() {
        let mut loads = Loads::new(500, 10_000);
        loads.opened(10, 10, open_fd(5), "/m/evil.pkl", 0, 0);
        // A process (its first record has pid == tid) and a thread of the loader.
        loads.forked(10, 10, 20, MS);
        loads.forked(10, 10, 12, MS);
        // Forked by a thread that is not loading: not part of it.
        loads.forked(10, 11, 21, MS);
        loads.check(2 * MS, |_, _, _| false);
        let late = 60_000 * MS;
        assert_eq!(
            loads.at(20, 20, late).map(|c| c.bound),
            Some(LoadBound::StartedByLoad),
            "the payload's shell, for its whole life"
        );
        assert_eq!(
            loads.at(10, 12, late),
            None,
            "the thread ends with the load"
        );
        assert_eq!(loads.at(21, 21, MS), None);
        // A thread of the shell's, and what the shell starts, are in too.
        loads.forked(20, 20, 22, late);
        assert!(loads.at(20, 22, late + MS).is_some());
        loads.forked(20, 20, 30, late);
        assert_eq!(
            loads.at(30, 30, late + MS).unwrap().artifact.as_ref(),
            "/m/evil.pkl"
        );
        loads.exited(20, 20, true);
        assert_eq!(loads.at(20, 20, late), None);
    }

    /// A server loads its model at start on its main thread, and starts its health check and
    /// request threads then (within the load's grace); much later another thread loads the
    /// next model. The threads started in the first load are not part of the second: the
    /// health check's programs and the request handlers' log writes stay in the run phase.
    #[test]
    fn a_thread_started_in_one_load_is_not_in_the_next() {
        let mut loads = Loads::new(1_000, 10_000);
        loads.opened(10, 10, open_fd(5), "/m/a.pt", 0, 0);
        loads.check(MS, |_, _, _| false);
        // The health check thread, started within the grace.
        loads.forked(10, 10, 11, 2 * MS);
        assert!(loads.at(10, 11, 3 * MS).is_some(), "in the first load");
        let later = 60_000 * MS;
        // Another thread loads the next model.
        loads.opened(10, 12, open_fd(6), "/m/b.pt", later, later);
        assert!(loads.at(10, 12, later + MS).is_some());
        assert_eq!(
            loads.at(10, 11, later + MS),
            None,
            "the health check thread"
        );
        assert_eq!(loads.at(10, 10, later + MS), None, "the main thread");
        // What the health check starts then is no part of it either.
        loads.forked(10, 11, 30, later + 2 * MS);
        assert_eq!(loads.at(30, 30, later + 3 * MS), None);
        // A thread the new loader starts is.
        loads.forked(10, 12, 13, later + 2 * MS);
        assert!(loads.at(10, 13, later + 3 * MS).is_some());
        // The main thread loading again (a reload) is in its new load.
        loads.opened(
            10,
            10,
            open_fd(7),
            "/m/c.pt",
            later + 4 * MS,
            later + 4 * MS,
        );
        assert!(loads.at(10, 10, later + 5 * MS).is_some());
    }

    #[test]
    fn a_descriptor_closed_before_it_was_seen_and_an_unfollowed_open() {
        let mut loads = Loads::new(100, 1_000);
        // Opened at 0, judged at 5 ms, gone by then: over 100 ms after 5 ms.
        loads.opened(10, 10, Some((7, None)), "/m/a.pt", 0, 5 * MS);
        assert_eq!(
            loads.at(10, 10, 100 * MS).map(|c| c.bound),
            Some(LoadBound::DescriptorClosed)
        );
        assert_eq!(loads.at(10, 10, 106 * MS), None);
        loads.opened(10, 10, None, "/m/c.pt", 200 * MS, 200 * MS);
        assert_eq!(
            loads.at(10, 10, 900 * MS).map(|c| c.bound),
            Some(LoadBound::Window)
        );
        assert_eq!(loads.at(10, 10, 1_300 * MS), None);
    }

    #[test]
    fn our_own_descriptor_is_found_in_proc() {
        let file = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let me = std::process::id();
        let id = file_of(me, fd).expect("open");
        let meta = file.metadata().unwrap();
        assert_eq!(id, (meta.dev(), meta.ino()));
        drop(file);
        assert_ne!(file_of(me, fd), Some(id));
    }
}
