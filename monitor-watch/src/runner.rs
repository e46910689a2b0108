//! A live watch, running: the records of what it selects, judged as they come (see
//! [`super::judge`]), until it is stopped (or, for a pid watch, until the last of its
//! processes has exited). Its policy can be replaced, and a learning window started, while it
//! runs.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::artifact::kernel_suffixes;
use crate::content::Content;
use crate::discovery::Release;
use crate::judge::Judge;
use crate::load::CHECK_EVERY_MS;
use crate::spec::{Learning, Policy, Selector, WatchSpec};
use monitor_common::event::{Discovery, PATH_KEY_MAX, PathKey};
use monitor_engine::cgroup::cgroup2_mount;
use monitor_engine::probes::Target;
use monitor_engine::procfs;
use monitor_engine::router::{Router, Subscription, TraceCounts};
use monitor_engine::trace::Event;
use monitor_rules::{Finding, RuleSet};

/// How often the cgroup tree is looked at again for new cgroups, and gone processes noticed.
const TICK: Duration = Duration::from_secs(1);

/// What a watch reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum WatchOutput<'a> {
    Event(&'a Event),
    Finding(&'a Finding),
    Kill(&'a Kill),
    /// Discovery watches a process for an open that could load a model (the event): its first
    /// record, or a later open, when its first opens were of no model.
    Discovered {
        event: &'a Event,
        /// The model-named file opened (none when the process was first seen otherwise).
        path: Option<&'a str>,
        content: &'a Content,
    },
    /// Discovery stopped watching a process early: no open of a model-named file by it could
    /// load a model (so it was never announced).
    Released(&'a Release),
    /// A released process had opened a model in the instant before its release: it is
    /// watched again, but what it did in between was not seen.
    Gap {
        pid: u32,
        comm: &'a str,
        path: &'a str,
    },
    /// The watch as it stands changed by itself: a learning window learned more (to keep, so
    /// that a restart loses none of it), or ended and its profile is now the policy
    /// (`learned`).
    Changed {
        spec: &'a WatchSpec,
        learned: bool,
    },
    /// Records of the watch lost since the last `Lost` (a full ring buffer or queue): counted
    /// as it runs, so that a long watch's losses show before it ends.
    Lost(u64),
}

/// What a running watch can be told.
#[derive(Debug)]
pub enum Command {
    /// Replace its policy (validated already).
    SetPolicy(Policy),
    /// Learn its service's profile, from now for the window given (in place of a window
    /// running), then enforce it.
    Learn(Learning),
}

/// A process the watch's policy killed.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub pid: u32,
    pub comm: String,
    pub time_ns: u64,
    /// `kernel`: at the entry of `syscall` (an exec: once the kernel had the program), before
    /// it returned to user space; `policy`: by user space, at `rule`'s finding.
    pub by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The cgroup killed whole (a cgroup watch), if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// The processes killed otherwise: the watched tree the act came from, from its top.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
}

/// Why a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// Every process it selected has exited (pid watches).
    Exited,
}

/// A watch's account when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSummary {
    pub ended: Ended,
    pub events: u64,
    pub findings: u64,
    pub kills: u64,
    pub processes: usize,
    /// Discovered processes released early (no open of theirs could load a model).
    pub released: u64,
    /// Released processes that had opened a model just before their release: watched again,
    /// but their syscalls in between were not seen (the watch is then not complete).
    pub gaps: u64,
    pub kernel_records: u64,
    pub dropped: u64,
    pub complete: bool,
}

/// Runs `spec` on `router` until `stop` resolves (or its processes are gone), judging with
/// the rules `rules` returns at each batch (so a reload takes effect at once).
pub async fn run(
    spec: &WatchSpec,
    router: &Router,
    rules: impl Fn() -> Arc<RuleSet>,
    stop: impl std::future::Future<Output = ()>,
    sink: impl FnMut(WatchOutput<'_>),
) -> Result<WatchSummary> {
    let (_commands, control) = mpsc::unbounded_channel();
    start(spec, router, &rules())?
        .run(rules, stop, control, sink)
        .await
}

/// A watch registered with the kernel programs: from here on nothing it selects is missed,
/// and its kill policy is in force.
pub struct Started {
    judge: Judge,
    selection: Selection,
    records_of_watch: Subscription,
}

/// Resolves what `spec` selects and registers it with the kernel programs, with its kill
/// policy (from `rules`, monitord's, and its own), at once (so that a caller who is told the
/// watch stands knows every later act is seen, and killed if the policy says so).
pub fn start(spec: &WatchSpec, router: &Router, rules: &Arc<RuleSet>) -> Result<Started> {
    let selection = Selection::resolve(&spec.selector)?;
    let records_of_watch = match &spec.selector {
        Selector::Discovery { suffixes, .. } => {
            let mut discovery = Discovery {
                enabled: 1,
                exempt_tgid: std::process::id(),
                watch: spec.kernel_watch(),
                ..Discovery::default()
            };
            kernel_suffixes(suffixes, &mut discovery)?;
            router
                .discover(discovery)
                .context("turning discovery on in the kernel programs")?
        }
        _ => router
            .watch(&selection.targets(), spec.kernel_watch())
            .context("registering the watch with the kernel programs")?,
    };
    // A pid watch ends with the last of its processes.
    let mut live = HashSet::new();
    if let Selector::Pid { pid, .. } = spec.selector {
        live.insert(pid);
        live.extend(descendants_in_proc(pid));
    }
    let mut judge = Judge::new(spec, live);
    set_kernel_policy(&mut judge, rules, &records_of_watch)?;
    Ok(Started {
        judge,
        selection,
        records_of_watch,
    })
}

fn set_kernel_policy(
    judge: &mut Judge,
    rules: &Arc<RuleSet>,
    records: &Subscription,
) -> Result<()> {
    judge
        .set_kernel_policy(rules, |kill, allowed| {
            records
                .set_exec_allowed(allowed)
                .context("giving the kernel the programs the watch allows")?;
            records
                .set_kill_policy(kill)
                .context("giving the kernel the watch's kill policy")?;
            Ok(())
        })
        .context("setting the watch's kill policy")
}

impl Started {
    /// Judges until `stop` resolves (or, for a pid watch, its processes are gone), taking
    /// `commands` as they come.
    pub async fn run(
        self,
        rules: impl Fn() -> Arc<RuleSet>,
        stop: impl std::future::Future<Output = ()>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut sink: impl FnMut(WatchOutput<'_>),
    ) -> Result<WatchSummary> {
        let Started {
            mut judge,
            mut selection,
            mut records_of_watch,
        } = self;
        let mut records = Vec::with_capacity(1024);
        let mut tick = tokio::time::interval(TICK);
        let mut loads = tokio::time::interval(Duration::from_millis(CHECK_EVERY_MS));
        loads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stop = std::pin::pin!(stop);
        let mut commands_open = true;
        let mut lost_told = 0;
        let ended = loop {
            tokio::select! {
                received = records_of_watch.recv(&mut records) => {
                    received.context("receiving the watch's records")?;
                    let global = rules();
                    if let Err(e) = set_kernel_policy(&mut judge, &global, &records_of_watch) {
                        tracing::error!(error = format!("{e:#}"), "the watch's kill policy could not be set");
                    }
                    judge.feed(&mut records, &global, &selection, &mut sink);
                    judge.discoveries.rewatch(&records_of_watch);
                }
                _ = loads.tick() => judge.check_loads(),
                _ = tick.tick() => {
                    selection.refresh(&records_of_watch);
                    judge.end_discoveries(&records_of_watch, &mut sink);
                    judge.prune();
                    if judge.learning_is_over() {
                        judge.finish_learning();
                        set_kernel_policy(&mut judge, &rules(), &records_of_watch)?;
                        tracing::info!(watch = ?judge.spec.name, "learning ended: the watch enforces its profile");
                        sink(WatchOutput::Changed { spec: &judge.spec, learned: true });
                    } else if judge.take_profile_changed() {
                        sink(WatchOutput::Changed { spec: &judge.spec, learned: false });
                    }
                    let lost = records_of_watch.lost_so_far();
                    if lost > lost_told {
                        sink(WatchOutput::Lost(lost - lost_told));
                        lost_told = lost;
                    }
                    if selection.is_finished(&judge.live) {
                        break Ended::Exited;
                    }
                }
                command = commands.recv(), if commands_open => match command {
                    None => commands_open = false,
                    Some(Command::SetPolicy(policy)) => {
                        judge.spec.policy = policy;
                        judge.policy_changed();
                        set_kernel_policy(&mut judge, &rules(), &records_of_watch)?;
                    }
                    Some(Command::Learn(learning)) => {
                        judge.learn(learning);
                        set_kernel_policy(&mut judge, &rules(), &records_of_watch)?;
                        sink(WatchOutput::Changed { spec: &judge.spec, learned: false });
                    }
                },
                _ = &mut stop => break Ended::Stopped,
            }
        };
        let counts: TraceCounts = records_of_watch
            .finish(&mut records)
            .await
            .context("taking the watch's last records")?;
        judge.feed(&mut records, &rules(), &selection, &mut sink);
        let lost = counts.kernel.dropped + counts.lost_in_queue;
        if lost > lost_told {
            sink(WatchOutput::Lost(lost - lost_told));
        }
        Ok(WatchSummary {
            ended,
            events: judge.core.events(),
            findings: judge.core.findings_total(),
            kills: judge.kills,
            processes: judge.core.tracer.processes().len(),
            released: judge.discoveries.released_count,
            gaps: judge.discoveries.gaps,
            kernel_records: counts.kernel.events,
            dropped: lost,
            complete: counts.complete() && judge.discoveries.gaps == 0,
        })
    }
}

/// What the watch selects on the host, kept up to date: for each kind of selector, what it
/// needs and nothing the others do.
pub(super) enum Selection {
    Cgroups(Cgroups),
    Pid {
        pid: u32,
    },
    Executable(Executable),
    /// The kernel finds them.
    Discovery,
}

/// A cgroup watch's tree.
pub(super) struct Cgroups {
    root: PathBuf,
    /// The cgroup2 mount, under which the kernel names cgroups.
    mount: PathBuf,
    /// Cgroups watched, by id.
    ids: HashMap<u64, PathBuf>,
}

/// An executable watch's file, and the processes found running it in /proc.
pub(super) struct Executable {
    /// The kernel matches a process at its exec by the path it executes: the path given
    /// and the file it names.
    keys: Vec<PathKey>,
    /// The file, symlinks resolved: what /proc/PID/exe names.
    file: PathBuf,
    found: HashSet<u32>,
}

impl Selection {
    fn resolve(selector: &Selector) -> Result<Self> {
        Ok(match selector {
            Selector::Cgroup(root) => Selection::Cgroups(Cgroups {
                root: root.clone(),
                mount: cgroup2_mount().context("finding the cgroup2 mount")?,
                ids: cgroup_tree(root)
                    .with_context(|| format!("reading cgroup {}", root.display()))?
                    .into_iter()
                    .collect(),
            }),
            Selector::Pid { pid, .. } => {
                anyhow::ensure!(selector.still_there(), "pid {pid}: the process is gone");
                Selection::Pid { pid: *pid }
            }
            Selector::Executable(path) => {
                let file = path.canonicalize().unwrap_or_else(|_| path.clone());
                let mut keys: Vec<PathKey> = [path, &file]
                    .iter()
                    .filter_map(|p| PathKey::new(p.as_os_str().as_bytes()))
                    .collect();
                keys.dedup();
                anyhow::ensure!(
                    !keys.is_empty(),
                    "{}: too long a path for the kernel to match (at most {} bytes)",
                    path.display(),
                    PATH_KEY_MAX - 1
                );
                let mut found = HashSet::new();
                for pid in processes_running(&file) {
                    found.insert(pid);
                    found.extend(descendants_in_proc(pid));
                }
                Selection::Executable(Executable { keys, file, found })
            }
            Selector::Discovery { .. } => Selection::Discovery,
        })
    }

    /// What the kernel is told to watch at the start. A pid watch takes the process's
    /// existing descendants too; those it starts later the kernel adds itself.
    fn targets(&self) -> Vec<Target> {
        match self {
            Selection::Cgroups(cgroups) => cgroups
                .ids
                .iter()
                .map(|(&id, path)| cgroups.target(id, path))
                .collect(),
            Selection::Pid { pid } => std::iter::once(*pid)
                .chain(descendants_in_proc(*pid))
                .map(Target::Process)
                .collect(),
            Selection::Executable(exe) => exe
                .keys
                .iter()
                .map(|&key| Target::Executable(key))
                .chain(exe.found.iter().map(|&pid| Target::Process(pid)))
                .collect(),
            Selection::Discovery => Vec::new(),
        }
    }

    /// The path of watched cgroup `id`, for a cgroup watch.
    pub(super) fn cgroup(&self, id: u64) -> Option<&PathBuf> {
        match self {
            Selection::Cgroups(cgroups) => cgroups.ids.get(&id),
            _ => None,
        }
    }

    /// Adds what the kernel could not add itself since the last look: cgroups made under a
    /// watched one that it could not name, processes that executed the watched file by
    /// another path. Forgets processes that are gone.
    fn refresh(&mut self, records_of_watch: &Subscription) {
        match self {
            Selection::Cgroups(cgroups) => cgroups.refresh(records_of_watch),
            Selection::Executable(exe) => exe.refresh(records_of_watch),
            Selection::Pid { .. } | Selection::Discovery => {}
        }
    }

    fn is_finished(&self, live: &HashSet<u32>) -> bool {
        matches!(self, Selection::Pid { .. }) && live.is_empty()
    }
}

impl Cgroups {
    /// Cgroup `id` at `path`, with the cgroups made under it later where the kernel can name
    /// it (else the rescan finds those).
    fn target(&self, id: u64, path: &Path) -> Target {
        let key = path.strip_prefix(&self.mount).ok().and_then(|rel| {
            let mut named = b"/".to_vec();
            named.extend_from_slice(rel.as_os_str().as_bytes());
            PathKey::new(&named)
        });
        match key {
            Some(path) => Target::CgroupTree { id, path },
            None => Target::Cgroup(id),
        }
    }

    fn refresh(&mut self, records_of_watch: &Subscription) {
        let Ok(tree) = cgroup_tree(&self.root) else {
            // Gone for now (a service being restarted): looked for again next time.
            return;
        };
        for (id, path) in tree {
            if self.ids.contains_key(&id) {
                continue;
            }
            match records_of_watch.add_target(self.target(id, &path)) {
                Ok(()) => {
                    tracing::debug!(cgroup = %path.display(), "watching a new cgroup");
                    self.ids.insert(id, path);
                }
                Err(e) => {
                    tracing::warn!(cgroup = %path.display(), error = %e, "cannot watch a new cgroup")
                }
            }
        }
    }
}

impl Executable {
    fn refresh(&mut self, records_of_watch: &Subscription) {
        let gone: Vec<u32> = self
            .found
            .iter()
            .copied()
            .filter(|pid| !procfs::exists(*pid))
            .collect();
        if !gone.is_empty() {
            for pid in &gone {
                self.found.remove(pid);
            }
            let _ = records_of_watch.forget_processes(&gone);
        }
        for pid in processes_running(&self.file) {
            if self.found.insert(pid)
                && let Err(e) = records_of_watch.add_target(Target::Process(pid))
            {
                tracing::warn!(pid, error = %e, "cannot watch a process running the executable");
            }
        }
    }
}

/// A cgroup directory and every cgroup below it, with their ids (inode numbers).
fn cgroup_tree(root: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = vec![(fs::metadata(root)?.ino(), root.to_owned())];
    let mut next = 0;
    while next < out.len() {
        let dir = out[next].1.clone();
        next += 1;
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir())
                && let Ok(meta) = entry.metadata()
            {
                out.push((meta.ino(), entry.path()));
            }
        }
    }
    Ok(out)
}

/// The processes whose executable is `file` now, from /proc.
fn processes_running(file: &Path) -> Vec<u32> {
    procfs::pids()
        .into_iter()
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == file))
        .collect()
}

/// The processes below `pid` now, from /proc (their parent links).
fn descendants_in_proc(pid: u32) -> Vec<u32> {
    let parent_of: HashMap<u32, u32> = procfs::pids()
        .into_iter()
        .filter_map(|child| {
            let stat = procfs::stat_line(child)?;
            Some((child, parse_ppid(&stat)?))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parent_of {
            if parent == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// The parent pid from a /proc/PID/stat line.
fn parse_ppid(stat: &str) -> Option<u32> {
    monitor_engine::procfs::Stat::parse(stat)?.ppid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_is_read_after_the_command_name() {
        assert_eq!(parse_ppid("42 (a b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn our_own_children_are_our_descendants() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants_in_proc(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }
}
