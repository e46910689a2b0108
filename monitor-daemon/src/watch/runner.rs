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
        artifact::{ends_in_any, kernel_suffixes, looks_like_artifact},
        content::{self, Content},
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

/// A discovered process that discovery stopped watching early, with what it started.
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

/// A model-named file a discovered process opened, and what it could be to a loader.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    pub path: String,
    #[serde(flatten)]
    pub content: Content,
}

/// How many of a discovered process's opens its release names.
pub const OPENS_KEPT: usize = 16;

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
                    judge.rewatch(&records_of_watch);
                }
                _ = tick.tick() => {
                    selection.refresh(&records_of_watch);
                    judge.release_without_model(&records_of_watch, &mut sink);
                    judge.expire_discovered(&records_of_watch);
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
            released: judge.released_count,
            gaps: judge.gaps,
            kernel_records: counts.kernel.events,
            dropped: counts.kernel.dropped + counts.lost_in_queue,
            complete: counts.complete() && judge.gaps == 0,
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
    /// Processes discovery started watching.
    discovered: HashMap<u32, Found>,
    /// Processes started by watched ones (not discovered themselves).
    started: HashSet<u32>,
    /// Processes released early, and when (CLOCK_MONOTONIC ns): their records from before
    /// then may still arrive.
    released: HashMap<u32, u64>,
    /// Released processes to watch again: they had opened a model just before.
    to_rewatch: Vec<u32>,
    released_count: u64,
    gaps: u64,
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
            discovered: HashMap::new(),
            started: HashSet::new(),
            released: HashMap::new(),
            to_rewatch: Vec::new(),
            released_count: 0,
            gaps: 0,
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
                    self.discovery(event, sc, suffixes, &mut opened, sink);
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

    /// What discovery makes of syscall `sc` of `event`: a process it has just found, an open
    /// that shows a found one loading a model, or a record of a released one from before its
    /// release.
    fn discovery(
        &mut self,
        event: &Event,
        sc: &crate::trace::SyscallEvent,
        suffixes: &[String],
        opened: &mut OpenedFile<'_>,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
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
        // Discovery's watch sees a process first at the open that selected it; a process
        // whose parent it has never seen is one discovery found (not one that a discovered
        // process started).
        if !self.discovered.contains_key(&pid) && !self.started.contains(&pid) {
            let content = what_it_could_load();
            self.found(event, model_named, content, sink);
            return;
        }
        // A later open of a model-named file, by a found process or one it started: once one
        // could load a model, the process is watched for the whole window.
        if let Some(root) = model_named.and_then(|_| self.found_root(pid))
            && !self.discovered[&root].could_load
        {
            let content = what_it_could_load();
            tracing::debug!(pid, path = ?model_named, %content, "a discovered process opened a model-named file");
            if content.could_load() {
                announce(event, model_named, &content, sink);
            }
            if let Some(found) = self.discovered.get_mut(&root) {
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
            comm: event.comm.clone(),
            opened: Vec::new(),
            could_load: content.could_load(),
        };
        found.opened(path, content);
        self.discovered.insert(event.pid, found);
    }

    /// The found process `pid` is, or that started it.
    fn found_root(&self, pid: u32) -> Option<u32> {
        if self.discovered.contains_key(&pid) {
            return Some(pid);
        }
        self.tracer
            .processes()
            .ancestors(pid)
            .into_iter()
            .find(|p| self.discovered.contains_key(p))
    }

    /// Stops watching the found processes none of whose opens of a model-named file could
    /// load a model, with what they started (a later open of one is discovered again).
    fn release_without_model(
        &mut self,
        records_of_watch: &Subscription,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        let Selector::Discovery {
            release_without_model: true,
            ..
        } = self.spec.selector
        else {
            return;
        };
        let done: Vec<u32> = self
            .discovered
            .iter()
            .filter(|(_, found)| !found.could_load)
            .map(|(&pid, _)| pid)
            .collect();
        for root in done {
            let pids = self.with_descendants(root);
            if let Err(e) = records_of_watch.forget_processes(&pids) {
                tracing::warn!(pid = root, error = %e, "cannot stop watching a discovered process");
                continue;
            }
            // Taken after the release: records stamped before it may still arrive.
            let now = monotonic_ns();
            let Some(found) = self.discovered.remove(&root) else {
                continue;
            };
            for &pid in &pids {
                self.released.insert(pid, now);
                self.started.remove(&pid);
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

    /// Watches again the released processes that had opened a model just before.
    fn rewatch(&mut self, records_of_watch: &Subscription) {
        for pid in self.to_rewatch.drain(..) {
            if let Err(e) = records_of_watch.add_target(Target::Process(pid)) {
                tracing::warn!(pid, error = %e, "cannot watch a released process again");
            }
        }
    }

    /// `root` and the processes below it, as the trace knows them.
    fn with_descendants(&self, root: u32) -> Vec<u32> {
        let processes = self.tracer.processes();
        let mut pids: Vec<u32> = processes
            .iter()
            .filter(|p| processes.ancestors(p.pid).contains(&root))
            .map(|p| p.pid)
            .collect();
        pids.push(root);
        pids
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

    /// Stops watching the discovered processes whose window has passed, with what they
    /// started.
    fn expire_discovered(&mut self, records_of_watch: &Subscription) {
        let Selector::Discovery { window_secs, .. } = self.spec.selector else {
            return;
        };
        let now = monotonic_ns();
        let window = window_secs.saturating_mul(1_000_000_000);
        let expired: Vec<u32> = self
            .discovered
            .iter()
            .filter(|(_, found)| found.since.saturating_add(window) < now)
            .map(|(&pid, _)| pid)
            .collect();
        for root in expired {
            self.discovered.remove(&root);
            let pids = self.with_descendants(root);
            if let Err(e) = records_of_watch.forget_processes(&pids) {
                tracing::warn!(pid = root, error = %e, "cannot stop watching a discovered process");
            }
        }
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
        self.released
            .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
    }
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
/// model. A process found at opens of no model (every Python process reads its site `.pth`
/// files at start) is not announced unless one of its opens could load one: it is let go of
/// within a second, and only counted.
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

/// CLOCK_MONOTONIC, the clock of the records.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// What the file an opening syscall opened could load, read from it at most once (discovery
/// and the load phase both ask).
struct OpenedFile<'e> {
    pid: u32,
    sc: &'e crate::trace::SyscallEvent,
    content: Option<Content>,
}

impl<'e> OpenedFile<'e> {
    fn new(pid: u32, sc: &'e crate::trace::SyscallEvent) -> Self {
        OpenedFile {
            pid,
            sc,
            content: None,
        }
    }

    /// Asked only of a syscall that opens a path.
    fn content(&mut self) -> &Content {
        let (pid, sc) = (self.pid, self.sc);
        self.content.get_or_insert_with(|| match opened_path(sc) {
            Some(path) => content::of_open(pid, sc, path),
            None => Content::Unknown("no path".into()),
        })
    }
}

/// The path an opening syscall named.
fn opened_path(sc: &crate::trace::SyscallEvent) -> Option<&str> {
    let i = sc.syscall.discovery_arg()?;
    sc.args.0.get(i).and_then(|(_, v)| v.as_str())
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

    /// An `openat` of `path` by this process, returning `fd`, at `time_ns`.
    fn open_event(path: &str, fd: i64, time_ns: u64) -> Event {
        use crate::decode::ArgValue;
        let syscall = monitor_common::syscall::by_name("openat").unwrap();
        Event {
            time_ns,
            pid: std::process::id(),
            tid: std::process::id(),
            ppid: None,
            uid: 0,
            comm: "loader".into(),
            cgroup_id: 0,
            what: What::Syscall(crate::trace::SyscallEvent {
                name: syscall.name,
                class: syscall.class,
                args: crate::trace::Args(vec![
                    ("dfd", ArgValue::Fd(libc::AT_FDCWD)),
                    ("filename", ArgValue::Str(Some(path.into()))),
                    (
                        "flags",
                        ArgValue::Flags {
                            raw: 0,
                            text: "O_RDONLY".into(),
                        },
                    ),
                ]),
                ret: Some(fd),
                errno: None,
                exit_time_ns: Some(time_ns + 1),
                truncated: false,
                read_error: false,
                recaptured: false,
                killed: false,
                syscall,
            }),
        }
    }

    #[test]
    fn discovery_confirms_by_content_and_watches_again_what_opened_a_model_as_it_was_released() {
        use std::os::fd::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("firmware.bin");
        let model = dir.path().join("model.pkl");
        fs::write(&blob, b"\x7fELF\x02\x01\x01\x00").unwrap();
        fs::write(&model, b"cos\nsystem\n(S'true'\ntR.").unwrap();
        let (blob_file, model_file) = (
            fs::File::open(&blob).unwrap(),
            fs::File::open(&model).unwrap(),
        );
        let spec = WatchSpec {
            name: None,
            selector: Selector::Discovery {
                suffixes: vec![".bin".into(), ".pkl".into()],
                window_secs: 60,
                release_without_model: true,
            },
            policy: Default::default(),
            load_window_ms: 1000,
        };
        let mut judge = Judge::new(&spec);
        let mut outputs = Vec::new();
        let mut sink = |out: WatchOutput<'_>| {
            outputs.push(match out {
                WatchOutput::Discovered { content, .. } => format!("discovered {}", content.kind()),
                WatchOutput::Gap { path, .. } => format!("gap {path}"),
                WatchOutput::Event(_) => return,
                other => format!("{other:?}"),
            })
        };
        let me = std::process::id();
        let at = |path: &Path, file: &fs::File, t| {
            open_event(path.to_str().unwrap(), file.as_raw_fd().into(), t)
        };
        let rules = RuleSet::defaults();
        let e = at(&blob, &blob_file, 100);
        judge.judge(&e, &rules, &Selection::Discovery, &mut sink);
        assert!(!judge.discovered[&me].could_load, "an ELF is no model");
        // Released (as a tick does), then a record from before the release: an open of a model.
        let found = judge.discovered.remove(&me).unwrap();
        assert_eq!(found.opened.len(), 1);
        judge.released.insert(me, 1_000);
        let e = at(&model, &model_file, 900);
        judge.judge(&e, &rules, &Selection::Discovery, &mut sink);
        assert_eq!(judge.to_rewatch, vec![me], "watched again");
        assert_eq!(judge.gaps, 1);
        assert!(judge.discovered[&me].could_load);
        // A record from after a release is the kernel's new find: no gap.
        judge.discovered.clear();
        judge.released.insert(me, 1_000);
        let e = at(&model, &model_file, 2_000);
        judge.judge(&e, &rules, &Selection::Discovery, &mut sink);
        assert_eq!(judge.gaps, 1);
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
