//! A live watch, running: the records of what it selects, paired into events, judged by the
//! rules in force, and acted on by its policy, until it is stopped (or, for a pid watch, until
//! the last of its processes has exited).

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    cgroup::cgroup2_mount,
    probes::Target,
    procfs,
    router::{Router, Subscription, TraceCounts},
    rules::{Finding, Phase, RuleSet},
    trace::{Event, Tracer, What},
    watch::{
        artifact::{kernel_suffixes, looks_like_artifact},
        content::{Content, OpenedFile, opened_path},
        discovery::{Discoveries, Release},
        spec::{Selector, WatchSpec},
    },
};
use monitor_common::event::{Discovery, PATH_KEY_MAX, PathKey};

/// How often the cgroup tree is looked at again for new cgroups, and gone processes noticed.
const TICK: Duration = Duration::from_secs(1);
/// Exited processes stay in the table this long (their children's findings name them).
const KEEP_EXITED_NS: u64 = 60_000_000_000;

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
}

/// A process the watch's policy killed.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub pid: u32,
    pub comm: String,
    pub time_ns: u64,
    /// `kernel`: at the entry of `syscall`, before it returned to user space; `policy`: by
    /// user space, at `rule`'s finding.
    pub by: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The cgroup killed whole (a cgroup watch), if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// Why a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Asked to stop.
    Stopped,
    /// Every process it selected has exited (pid watches).
    Exited,
}

/// A watch's account when it ends.
#[derive(Debug, Clone, Serialize)]
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
    start(spec, router)?.run(rules, stop, sink).await
}

/// A watch registered with the kernel programs: from here on nothing it selects is missed.
pub struct Started {
    spec: WatchSpec,
    selection: Selection,
    records_of_watch: Subscription,
}

/// Resolves what `spec` selects and registers it with the kernel programs, at once (so that a
/// caller who is told the watch stands knows every later act is seen).
pub fn start(spec: &WatchSpec, router: &Router) -> Result<Started> {
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
    Ok(Started {
        spec: spec.clone(),
        selection,
        records_of_watch,
    })
}

impl Started {
    /// Judges until `stop` resolves (or, for a pid watch, its processes are gone).
    pub async fn run(
        self,
        rules: impl Fn() -> Arc<RuleSet>,
        stop: impl std::future::Future<Output = ()>,
        mut sink: impl FnMut(WatchOutput<'_>),
    ) -> Result<WatchSummary> {
        let Started {
            spec,
            mut selection,
            mut records_of_watch,
        } = self;
        let spec = &spec;
        let mut judge = Judge::new(spec);
        let mut records = Vec::with_capacity(1024);
        let mut tick = tokio::time::interval(TICK);
        let mut stop = std::pin::pin!(stop);
        let ended = loop {
            tokio::select! {
                received = records_of_watch.recv(&mut records) => {
                    received.context("receiving the watch's records")?;
                    judge.feed(&mut records, &rules(), &selection, &mut sink);
                    judge.discoveries.rewatch(&records_of_watch);
                }
                _ = tick.tick() => {
                    selection.refresh(&records_of_watch);
                    judge.end_discoveries(&records_of_watch, &mut sink);
                    judge.prune();
                    if selection.is_finished(&judge.live) {
                        break Ended::Exited;
                    }
                }
                _ = &mut stop => break Ended::Stopped,
            }
        };
        let counts: TraceCounts = records_of_watch
            .finish(&mut records)
            .await
            .context("taking the watch's last records")?;
        judge.feed(&mut records, &rules(), &selection, &mut sink);
        Ok(WatchSummary {
            ended,
            events: judge.events,
            findings: judge.findings,
            kills: judge.kills,
            processes: judge.tracer.processes().len(),
            released: judge.discoveries.released_count,
            gaps: judge.discoveries.gaps,
            kernel_records: counts.kernel.events,
            dropped: counts.kernel.dropped + counts.lost_in_queue,
            complete: counts.complete() && judge.discoveries.gaps == 0,
        })
    }
}

/// What the watch selects on the host, kept up to date: for each kind of selector, what it
/// needs and nothing the others do.
enum Selection {
    Cgroups(Cgroups),
    Pid {
        pid: u32,
    },
    Executable(Executable),
    /// The kernel finds them.
    Discovery,
}

/// A cgroup watch's tree.
struct Cgroups {
    root: PathBuf,
    /// The cgroup2 mount, under which the kernel names cgroups.
    mount: PathBuf,
    /// Cgroups watched, by id.
    ids: HashMap<u64, PathBuf>,
}

/// An executable watch's file, and the processes found running it in /proc.
struct Executable {
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
    fn cgroup(&self, id: u64) -> Option<&PathBuf> {
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
            .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
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

/// Events -> findings -> kills, for one watch.
struct Judge<'a> {
    spec: &'a WatchSpec,
    tracer: Tracer,
    /// Processes alive as far as the trace says (pid watches end when none is left).
    live: HashSet<u32>,
    /// Until when each process is loading a model (`load` phase), CLOCK_MONOTONIC ns.
    loading_until: HashMap<u32, u64>,
    killed: HashSet<u32>,
    /// Processes started by watched ones (not found by discovery themselves).
    started: HashSet<u32>,
    /// What discovery found (a discovery watch's).
    discoveries: Discoveries,
    events: u64,
    findings: u64,
    kills: u64,
    batch: Vec<Event>,
    latest_ns: u64,
}

impl<'a> Judge<'a> {
    fn new(spec: &'a WatchSpec) -> Self {
        let mut live = HashSet::new();
        if let Selector::Pid { pid, .. } = spec.selector {
            live.insert(pid);
            live.extend(descendants_in_proc(pid));
        }
        Judge {
            spec,
            tracer: Tracer::default(),
            live,
            loading_until: HashMap::new(),
            killed: HashSet::new(),
            started: HashSet::new(),
            discoveries: Discoveries::default(),
            events: 0,
            findings: 0,
            kills: 0,
            batch: Vec::new(),
            latest_ns: 0,
        }
    }

    fn feed(
        &mut self,
        records: &mut Vec<crate::decode::Record>,
        rules: &RuleSet,
        selection: &Selection,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        let mut batch = std::mem::take(&mut self.batch);
        for r in records.drain(..) {
            self.tracer.push(r, &mut |e| batch.push(e));
        }
        for event in batch.drain(..) {
            self.judge(&event, rules, selection, sink);
        }
        self.batch = batch;
    }

    fn judge(
        &mut self,
        event: &Event,
        rules: &RuleSet,
        selection: &Selection,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        self.events += 1;
        self.latest_ns = self.latest_ns.max(event.time_ns);
        sink(WatchOutput::Event(event));
        match &event.what {
            What::Fork { child_pid } => {
                self.live.insert(*child_pid);
                self.started.insert(*child_pid);
            }
            What::Exit { .. } => {
                self.live.remove(&event.pid);
                self.loading_until.remove(&event.pid);
            }
            What::Syscall(sc) => {
                let mut opened = OpenedFile::new(event.pid, sc);
                if let Selector::Discovery { suffixes, .. } = &self.spec.selector {
                    self.discoveries.on_syscall(
                        event,
                        suffixes,
                        &mut opened,
                        &self.started,
                        self.tracer.processes(),
                        sink,
                    );
                }
                if sc.killed && self.killed.insert(event.pid) {
                    self.kills += 1;
                    sink(WatchOutput::Kill(&Kill {
                        pid: event.pid,
                        comm: event.comm.clone(),
                        time_ns: event.time_ns,
                        by: "kernel",
                        syscall: Some(sc.name),
                        rule: None,
                        cgroup: None,
                    }));
                }
                // The load phase starts at an open that could load a model: not at the site
                // .pth files every Python process reads at its start.
                if sc.syscall.opens
                    && sc.ret.is_some_and(|r| r >= 0)
                    && opened_path(sc).is_some_and(looks_like_artifact)
                    && opened.content().could_load()
                {
                    self.loading_until.insert(
                        event.pid,
                        event.time_ns + self.spec.load_window_ms * 1_000_000,
                    );
                }
            }
            What::Exec { .. } => {}
        }
        let processes = self.tracer.processes();
        // What a loading process starts is part of the load.
        // Most of a server's life nothing is loading: no parent chain to walk then.
        let loading = !self.loading_until.is_empty()
            && std::iter::once(event.pid)
                .chain(processes.ancestors(event.pid))
                .any(|pid| {
                    self.loading_until
                        .get(&pid)
                        .is_some_and(|&until| event.time_ns <= until)
                });
        let phase = if loading { Phase::Load } else { Phase::Run };
        let cwd = processes.get(event.pid).and_then(|p| p.cwd.as_deref());
        let mut found = rules.judge(event, phase, cwd);
        for finding in &mut found {
            finding.process = Some(processes.context(event.pid));
        }
        for finding in &found {
            self.findings += 1;
            sink(WatchOutput::Finding(finding));
        }
        let kill_at = self.spec.policy.kill_at;
        if let Some(worst) = found
            .iter()
            .filter(|f| kill_at.is_some_and(|k| f.severity >= k))
            .max_by_key(|f| f.severity)
            && !self.killed.contains(&event.pid)
        {
            let kill = self.kill(event, &worst.rule, selection);
            self.kills += 1;
            sink(WatchOutput::Kill(&kill));
        }
    }

    /// Kills the process of `event` (a cgroup watch: its whole cgroup) for `rule`.
    fn kill(&mut self, event: &Event, rule: &str, selection: &Selection) -> Kill {
        let mut cgroup = None;
        if let Some(path) = selection.cgroup(event.cgroup_id) {
            match fs::write(path.join("cgroup.kill"), "1") {
                Ok(()) => cgroup = Some(path.clone()),
                Err(e) => {
                    tracing::warn!(cgroup = %path.display(), error = %e, "cgroup.kill failed")
                }
            }
        }
        if cgroup.is_none() {
            // The process and what it started.
            let processes = self.tracer.processes();
            let mut doomed: Vec<u32> = processes
                .iter()
                .filter(|p| p.exit_ns.is_none() && processes.ancestors(p.pid).contains(&event.pid))
                .map(|p| p.pid)
                .collect();
            doomed.push(event.pid);
            for pid in doomed {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                self.killed.insert(pid);
            }
        }
        self.killed.insert(event.pid);
        Kill {
            pid: event.pid,
            comm: event.comm.clone(),
            time_ns: event.time_ns,
            by: "policy",
            syscall: match &event.what {
                What::Syscall(sc) => Some(sc.name),
                _ => None,
            },
            rule: Some(rule.to_owned()),
            cgroup,
        }
    }

    /// Lets go of the found processes that loaded no model, and of those whose window has
    /// passed (a discovery watch's).
    fn end_discoveries(
        &mut self,
        records_of_watch: &Subscription,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        let Selector::Discovery {
            window_secs,
            release_without_model,
            ..
        } = self.spec.selector
        else {
            return;
        };
        let processes = self.tracer.processes();
        if release_without_model {
            self.discoveries.release_without_model(
                processes,
                &mut self.started,
                records_of_watch,
                sink,
            );
        }
        self.discoveries
            .expire(window_secs, processes, records_of_watch);
    }

    /// Forgets processes long gone, so a watch that runs for weeks stays small; notices
    /// processes that are gone without their exit in the trace.
    fn prune(&mut self) {
        let horizon = self.latest_ns.saturating_sub(KEEP_EXITED_NS);
        self.tracer.processes_mut().prune_exited(horizon);
        self.live
            .retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        self.killed
            .retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        self.started
            .retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        self.discoveries.prune();
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
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
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

/// The parent pid from a /proc/PID/stat line ("pid (comm) state ppid ..."; comm may hold
/// spaces and parentheses, so read after the last ')').
fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
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
