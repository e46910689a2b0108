//! A watch's judge: its records paired into events, each event judged in its phase by the
//! watch's rules (monitord's and its policy's), and acted on: reported, learned, or killed.
//!
//! While the watch learns, an act that makes a learnable rule fire is kept in the profile and
//! not reported; one that makes a rule fire that is never learned is reported at once (and
//! the kill policy applies to it). Once it enforces, every finding is reported, and one at
//! the policy's severity kills: a cgroup watch's cgroup, else the watched process tree the act
//! came from, from its top. A syscall the kernel killed is judged as the act it attempted,
//! marked `blocked`, and triggers the policy as well: the payload's shell is dead already, and
//! the process that started it goes next.

use std::{collections::HashSet, fs, sync::Arc};

use monitor_common::{
    event::{KillPolicy, PathKey},
    syscall::SYSCALLS,
};

use crate::{
    artifact::looks_like_artifact,
    content::{OpenedFile, held_by, opened_path},
    discovery::Discoveries,
    load::{Loads, file_of},
    policy::WatchRules,
    runner::{Kill, Selection, WatchOutput},
    spec::{Learning, Selector, WatchSpec, now_unix_ms},
};
use monitor_engine::decode::{Header, Record};
use monitor_engine::process::ProcessTable;
use monitor_engine::router::Subscription;
use monitor_engine::trace::{Event, Tracer, What};
use monitor_rules::judge::{Scope, Setting};
use monitor_rules::{Context, Field, Finding, Phase, ResultCondition, RuleSet, Severity, is_glob};

/// Exited processes stay in the table this long (their children's findings name them).
const KEEP_EXITED_NS: u64 = 60_000_000_000;

/// Events -> findings -> kills, for one watch: the shared judge ([`monitor_rules::judge`]) in a
/// watch's scope.
pub(super) struct Judge {
    pub spec: WatchSpec,
    /// The tracer, and what was judged.
    pub core: monitor_rules::judge::Judge,
    /// Processes alive as far as the trace says (pid watches end when none is left).
    pub live: HashSet<u32>,
    pub loads: Loads,
    /// Processes killed (by the kernel or by policy).
    killed: HashSet<u32>,
    /// Processes whose finding the policy acted on already.
    acted_on: HashSet<u32>,
    /// Processes started by watched ones (not found by discovery themselves).
    pub started: HashSet<u32>,
    /// What discovery found (a discovery watch's).
    pub discoveries: Discoveries,
    rules: WatchRules,
    /// The global rules the kernel's kill policy was last set from.
    kernel_set_from: Option<Arc<RuleSet>>,
    /// The learning window's profile changed since it was last reported.
    profile_changed: bool,
    pub kills: u64,
    latest_ns: u64,
}

impl Judge {
    pub fn new(spec: &WatchSpec, live: HashSet<u32>) -> Self {
        Judge {
            spec: spec.clone(),
            core: monitor_rules::judge::Judge::new(Tracer::default()).for_watch(spec.name.clone()),
            live,
            loads: Loads::new(spec.load_grace_ms, spec.load_window_ms),
            killed: HashSet::new(),
            acted_on: HashSet::new(),
            started: HashSet::new(),
            discoveries: Discoveries::default(),
            rules: WatchRules::default(),
            kernel_set_from: None,
            profile_changed: false,
            kills: 0,
            latest_ns: 0,
        }
    }

    /// Whether the watch is learning now.
    pub fn learning(&self) -> bool {
        self.spec.learning.is_some()
    }

    /// The rules in force for this watch, from monitord's `global`: with the learned
    /// exceptions, or (learning) without them.
    pub fn rules(&mut self, global: &Arc<RuleSet>) -> Arc<RuleSet> {
        let file = self.spec.policy.document.as_deref().map(|text| {
            (
                crate::policy::PolicyFile::parse(text).unwrap_or_default(),
                text,
            )
        });
        let learning = self.learning();
        self.rules
            .get(global, file.as_ref().map(|(f, t)| (f, *t)), !learning)
    }

    /// Sets the kernel's kill policy and allowed programs for the watch as it is now, if the
    /// rules or the policy changed since the last time.
    pub fn set_kernel_policy(
        &mut self,
        global: &Arc<RuleSet>,
        set: impl FnOnce(&KillPolicy, &[PathKey]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self
            .kernel_set_from
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, global))
        {
            return Ok(());
        }
        let rules = self.rules(global);
        let wanted = self.spec.policy.kernel_kills();
        let mut kill = KillPolicy::default();
        for sc in SYSCALLS.iter().filter(|sc| wanted.kills(sc.nr)) {
            // While learning, the service's own acts must happen to be learned: only the
            // syscalls no learnable rule is about stay killed.
            let learnable = || {
                rules
                    .rules()
                    .any(|r| r.is_about(sc) && r.spec.is_learnable())
            };
            if !self.learning() || !learnable() {
                kill.kill_at(sc.nr);
            }
        }
        let allowed = allowed_programs(&rules, self.spec.name.as_deref());
        set(&kill, &allowed)?;
        self.kernel_set_from = Some(global.clone());
        Ok(())
    }

    /// The policy changed: what was compiled from the old one goes.
    pub fn policy_changed(&mut self) {
        self.rules.reset();
        self.kernel_set_from = None;
    }

    pub fn feed(
        &mut self,
        records: &mut Vec<Record>,
        global: &Arc<RuleSet>,
        selection: &Selection,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) {
        let rules = self.rules(global);
        let mut core = std::mem::take(&mut self.core);
        let mut scope = WatchScope {
            judge: self,
            selection,
            sink,
            task: None,
        };
        core.feed(records, &rules, &mut scope);
        self.core = core;
    }

    /// Sees `event` before it is judged: reports it, follows the processes and the loads,
    /// reports a kill by the kernel; the setting to judge it in (syscalls only).
    fn see(
        &mut self,
        event: &Event,
        tracer: &mut Tracer,
        sink: &mut impl FnMut(WatchOutput<'_>),
    ) -> Option<Setting> {
        if let Some(learning) = &mut self.spec.learning {
            learning.so_far.events += 1;
        }
        self.latest_ns = self.latest_ns.max(event.time_ns);
        sink(WatchOutput::Event(event));
        match &event.what {
            What::Fork { child_pid } => {
                self.live.insert(*child_pid);
                self.started.insert(*child_pid);
            }
            What::Exit { .. } => {
                self.live.remove(&event.pid);
                self.loads.exited(event.pid, event.pid, true);
            }
            What::Syscall(sc) => {
                let mut opened = OpenedFile::new(event.pid, sc);
                if let Selector::Discovery { suffixes, .. } = &self.spec.selector {
                    self.discoveries.on_syscall(
                        event,
                        suffixes,
                        &mut opened,
                        &self.started,
                        tracer.processes(),
                        sink,
                    );
                }
                if sc.flags.killed && self.killed.insert(event.pid) {
                    self.kills += 1;
                    sink(WatchOutput::Kill(&Kill {
                        pid: event.pid,
                        comm: event.comm.to_string(),
                        time_ns: event.time_ns,
                        by: "kernel",
                        syscall: Some(sc.name),
                        rule: None,
                        cgroup: None,
                        pids: Vec::new(),
                    }));
                }
                // The load phase starts at an open that could load a model: not at the site
                // .pth files every Python process reads at its start.
                if sc.syscall.opens
                    && sc.ret.is_none_or(|r| r >= 0)
                    && let Some(path) = opened_path(sc).filter(|p| looks_like_artifact(p))
                    && opened.content().could_load()
                {
                    // The descriptor, and the model file it still holds: by the time the
                    // record is judged the loader may have closed it and the number gone to
                    // another file (a socket, its log), which would keep the load "open".
                    let dir_fd = sc.arg("dfd").and_then(|v| v.as_u64()).map(|v| v as i32);
                    let fd = sc
                        .ret
                        .and_then(|r| i32::try_from(r).ok())
                        .map(|fd| (fd, held_by(event.pid, fd, path, dir_fd)));
                    self.loads.opened(
                        event.pid,
                        event.tid,
                        fd,
                        path,
                        event.time_ns,
                        monotonic_ns(),
                    );
                }
            }
            What::Exec { .. } => {}
        }
        let What::Syscall(_) = &event.what else {
            return None;
        };
        tracer.processes_mut().look_up_in_proc(event.pid);
        let load = if self.loads.is_empty() {
            None
        } else {
            self.loads.at(event.pid, event.tid, event.time_ns)
        };
        let phase = if load.is_some() {
            Phase::Load
        } else {
            Phase::Run
        };
        Some(Setting {
            phase,
            process_view: true,
            load,
        })
    }

    /// While learning: the findings of learnable rules go into the profile, not out.
    fn learn_from(
        &mut self,
        event: &Event,
        found: &mut Vec<Finding>,
        rules: &RuleSet,
        ctx: &Context<'_>,
    ) {
        let (Some(learning), What::Syscall(sc)) = (&mut self.spec.learning, &event.what) else {
            return;
        };
        let profile = &mut learning.so_far;
        found.retain(|finding| match rules.rule(&finding.rule) {
            Some(rule) if rule.spec.is_learnable() => {
                profile.learn(finding, rule, sc, ctx.process, ctx.cwd);
                false
            }
            _ => {
                profile.refuse(finding);
                true
            }
        });
        self.profile_changed = true;
    }

    /// Kills what the policy kills for `event`'s finding of `rule`: a cgroup watch's cgroup;
    /// otherwise the watched process tree the act came from, from its top (the process that
    /// acted may be dead already: the kernel killed its exec).
    fn kill(
        &mut self,
        event: &Event,
        rule: &str,
        selection: &Selection,
        processes: &ProcessTable,
    ) -> Kill {
        let mut cgroup = None;
        let mut pids = Vec::new();
        if let Some(path) = selection.cgroup(event.cgroup_id) {
            match fs::write(path.join("cgroup.kill"), "1") {
                Ok(()) => cgroup = Some(path.clone()),
                Err(e) => {
                    tracing::warn!(cgroup = %path.display(), error = %e, "cgroup.kill failed")
                }
            }
        }
        if cgroup.is_none() {
            let alive = |pid: &u32| {
                processes.get(*pid).is_some_and(|p| p.exit_ns.is_none())
                    && monitor_engine::procfs::exists(*pid)
            };
            // The top of the watched tree above the act: its processes are the table's.
            let top = processes
                .ancestors(event.pid)
                .into_iter()
                .take_while(|pid| processes.get(*pid).is_some())
                .filter(alive)
                .last()
                .unwrap_or(event.pid);
            pids.push(top);
            pids.extend(
                processes
                    .iter()
                    .filter(|p| p.exit_ns.is_none() && processes.ancestors(p.pid).contains(&top))
                    .map(|p| p.pid),
            );
            if !pids.contains(&event.pid) {
                pids.push(event.pid);
            }
            for &pid in &pids {
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
            comm: event.comm.to_string(),
            time_ns: event.time_ns,
            by: "policy",
            syscall: match &event.what {
                What::Syscall(sc) => Some(sc.name),
                _ => None,
            },
            rule: Some(rule.to_owned()),
            cgroup,
            pids,
        }
    }

    /// Starts a learning window (in place of one running).
    pub fn learn(&mut self, learning: Learning) {
        self.spec.learning = Some(learning);
        self.profile_changed = true;
        self.policy_changed();
    }

    /// Whether the learning window is over by the wall clock.
    pub fn learning_is_over(&self) -> bool {
        self.spec
            .learning
            .as_ref()
            .is_some_and(|l| now_unix_ms() >= l.until_unix_ms)
    }

    /// Ends the learning window: the profile becomes the policy's `learned-*` exceptions.
    pub fn finish_learning(&mut self) {
        let Some(learning) = self.spec.learning.take() else {
            return;
        };
        let seconds =
            u64::try_from((learning.until_unix_ms - learning.started_unix_ms) / 1000).unwrap_or(0);
        let profile = &learning.so_far;
        let summary = profile.summary(learning.started_unix_ms, seconds, learning.interrupted);
        let file = self
            .spec
            .policy
            .file()
            .with_learned(profile.exceptions(), summary);
        self.spec.policy.set_document(file);
        self.profile_changed = false;
        self.policy_changed();
    }

    /// Whether the profile changed since the last call (to be kept in the store).
    pub fn take_profile_changed(&mut self) -> bool {
        std::mem::take(&mut self.profile_changed)
    }

    /// Forgets processes long gone, so a watch that runs for weeks stays small; notices
    /// processes that are gone without their exit in the trace.
    pub fn prune(&mut self) {
        let horizon = self.latest_ns.saturating_sub(KEEP_EXITED_NS);
        self.core.tracer.processes_mut().prune_exited(horizon);
        self.loads
            .prune(monotonic_ns().saturating_sub(KEEP_EXITED_NS));
        let exists = |pid: &u32| monitor_engine::procfs::exists(*pid);
        self.live.retain(exists);
        self.killed.retain(exists);
        self.acted_on.retain(exists);
        self.started.retain(exists);
        self.discoveries.prune();
    }

    /// Lets go of the found processes that loaded no model, and of those whose window has
    /// passed (a discovery watch's).
    pub fn end_discoveries(
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
        let processes = self.core.tracer.processes();
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

    /// Looks whether the loads in progress still hold their descriptors.
    pub fn check_loads(&mut self) {
        if self.loads.has_open_descriptors() {
            self.loads.check(monotonic_ns(), |pid, fd, file| {
                file_of(pid, fd) == Some(file)
            });
        }
    }
}

/// A watch's part of judging, for one batch: see [`Judge::see`], [`Judge::learn_from`], and
/// the kill policy: at the policy's severity, the first such finding of a process kills (see
/// [`Judge::kill`]).
struct WatchScope<'j, S> {
    judge: &'j mut Judge,
    selection: &'j Selection,
    sink: &'j mut S,
    /// A thread's start or end, applied to the loads once the events it completes are judged
    /// (threads are no events of their own; the load phase follows them).
    task: Option<(Header, Option<u32>)>,
}

impl<S: FnMut(WatchOutput<'_>)> Scope for WatchScope<'_, S> {
    fn record(&mut self, record: &Record) {
        self.task = match record {
            Record::Fork(f) => Some((f.header.clone(), Some(f.child_tid))),
            Record::ProcessExit(end) if !end.group_dead && end.header.pid != end.header.tid => {
                Some((end.header.clone(), None))
            }
            _ => None,
        };
    }

    fn recorded(&mut self) {
        match self.task.take() {
            Some((h, Some(child))) => self.judge.loads.forked(h.pid, h.tid, child, h.time_ns),
            Some((h, None)) => self.judge.loads.exited(h.pid, h.tid, false),
            None => {}
        }
    }

    fn event(&mut self, event: &Event, tracer: &mut Tracer) -> Option<Setting> {
        self.judge.see(event, tracer, self.sink)
    }

    fn review(
        &mut self,
        event: &Event,
        found: &mut Vec<Finding>,
        rules: &RuleSet,
        ctx: &Context<'_>,
    ) {
        self.judge.learn_from(event, found, rules, ctx);
    }

    fn finding(&mut self, finding: &Finding) {
        (self.sink)(WatchOutput::Finding(finding));
    }

    fn kill_at(&self) -> Option<Severity> {
        self.judge.spec.policy.kill_at
    }

    fn kill(&mut self, event: &Event, worst: &Finding, tracer: &Tracer) {
        if !self.judge.acted_on.insert(event.pid) {
            return;
        }
        let kill = self
            .judge
            .kill(event, &worst.rule, self.selection, tracer.processes());
        self.judge.kills += 1;
        (self.sink)(WatchOutput::Kill(&kill));
    }
}

/// The programs the kernel lets a watch's processes execute although its policy kills execs:
/// those the exceptions of the rules about a successful exec name exactly (as written, and
/// with symlinks resolved), for `watch`. A glob, or a field the kernel cannot see (the parent,
/// the phase), is judged in user space only: the kernel allows by program alone.
pub fn allowed_programs(rules: &RuleSet, watch: Option<&str>) -> Vec<PathKey> {
    let execs: Vec<_> = SYSCALLS.iter().filter(|sc| sc.executes).collect();
    let mut programs: Vec<String> = Vec::new();
    for (rule, exceptions) in rules.rules_with_exceptions() {
        if !rule.applies_to(watch)
            || rule.result() == ResultCondition::Failure
            || !execs.iter().any(|sc| rule.is_about(sc))
        {
            continue;
        }
        for x in exceptions {
            let Some(i) = x.spec.fields.iter().position(|f| *f == Field::Exe) else {
                continue;
            };
            for tuple in &x.spec.values {
                for item in tuple[i].items() {
                    let text = item.text();
                    if is_glob(&text) {
                        continue;
                    }
                    programs.push(text.to_string());
                    if let Ok(real) = fs::canonicalize(text.as_ref()) {
                        programs.push(real.display().to_string());
                    }
                }
            }
        }
    }
    programs.sort();
    programs.dedup();
    programs
        .iter()
        .filter_map(|p| PathKey::new(p.as_bytes()))
        .collect()
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the kernel's records.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}
