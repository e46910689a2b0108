//! The one judging loop, shared by `run` (and so scans), live watches and the bench: records
//! through the tracer into events, each event judged by the rules in the setting its owner
//! gives, the process context attached to each finding, findings counted, and a kill decided
//! at the owner's threshold.
//!
//! What differs between owners (which events are judged and in which phase, what a learning
//! watch keeps for its profile, how a kill is carried out, where events and findings go) is
//! the owner's [`Scope`]. Each record's events are judged before the next record goes in, so
//! a finding's process context and working directory are those of the moment of the act.

use std::collections::BTreeMap;

use crate::load::LoadContext;
use crate::{Context, Finding, PathMemo, Phase, RuleSet, Severity};
use monitor_engine::decode::Record;
use monitor_engine::trace::{Event, Tracer};

/// Records -> events -> findings, with the counts of what it judged.
#[derive(Default)]
pub struct Judge {
    pub tracer: Tracer,
    /// The live watch judged for (its name), for rules scoped to watches.
    watch: Option<String>,
    events: u64,
    findings: BTreeMap<Severity, u64>,
    batch: Vec<Event>,
    /// What paths matched the rules' globs, kept from one event to the next.
    paths: PathMemo,
}

/// How an event is judged, as its owner says.
#[derive(Debug, Clone)]
pub struct Setting {
    pub phase: Phase,
    /// Whether the rules see the process and those above it (a live watch's rules do; a
    /// run's judge only the act and its working directory).
    pub process_view: bool,
    /// The model load the act came with, given to its findings.
    pub load: Option<LoadContext>,
}

impl Setting {
    pub fn in_phase(phase: Phase) -> Self {
        Setting {
            phase,
            process_view: false,
            load: None,
        }
    }
}

/// What an owner of a [`Judge`] decides and does; every method but [`Scope::event`] and
/// [`Scope::finding`] has a default that does nothing.
pub trait Scope {
    /// `record` is about to go to the tracer.
    fn record(&mut self, _record: &Record) {}
    /// The events of the last record are judged.
    fn recorded(&mut self) {}
    /// Sees each event first (reports it, keeps the owner's state); the setting to judge it
    /// in, or `None` when it is not judged.
    fn event(&mut self, event: &Event, tracer: &mut Tracer) -> Option<Setting>;
    /// Takes out the findings that are not to be reported (a learning watch learns them).
    fn review(
        &mut self,
        _event: &Event,
        _found: &mut Vec<Finding>,
        _rules: &RuleSet,
        _ctx: &Context<'_>,
    ) {
    }
    /// A finding, counted, with its process context.
    fn finding(&mut self, finding: &Finding);
    /// Findings of this severity or above call for a kill.
    fn kill_at(&self) -> Option<Severity> {
        None
    }
    /// `worst`, the most severe finding of `event` (the first of them), is at
    /// [`Scope::kill_at`] or above.
    fn kill(&mut self, _event: &Event, _worst: &Finding, _tracer: &Tracer) {}
}

impl Judge {
    pub fn new(tracer: Tracer) -> Self {
        Judge {
            tracer,
            ..Judge::default()
        }
    }

    /// Judged for the live watch called `name`.
    pub fn for_watch(mut self, name: Option<String>) -> Self {
        self.watch = name;
        self
    }

    /// Events judged or not.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Findings reported, by severity.
    pub fn findings(&self) -> &BTreeMap<Severity, u64> {
        &self.findings
    }

    /// Findings reported.
    pub fn findings_total(&self) -> u64 {
        self.findings.values().sum()
    }

    /// Feeds `records` (drained) through the tracer, and judges each event they complete.
    pub fn feed(&mut self, records: &mut Vec<Record>, rules: &RuleSet, scope: &mut impl Scope) {
        let mut batch = std::mem::take(&mut self.batch);
        for r in records.drain(..) {
            scope.record(&r);
            // The record's last event (nearly always its only one) is judged where the
            // tracer returns it; any before it, in order, from the batch first.
            let last = self.tracer.push_last(r, &mut |e| batch.push(e));
            self.judge_batch(&mut batch, rules, scope);
            if let Some(event) = &last {
                self.judge(event, rules, scope);
            }
            scope.recorded();
        }
        self.batch = batch;
    }

    /// Judges the entries that never saw their exit (at the end of a job).
    pub fn finish(&mut self, rules: &RuleSet, scope: &mut impl Scope) {
        let mut batch = std::mem::take(&mut self.batch);
        self.tracer.flush(&mut |e| batch.push(e));
        self.judge_batch(&mut batch, rules, scope);
        self.batch = batch;
    }

    /// Judges the events of `batch` where they lie (an event is large: not moved out again),
    /// then empties it.
    fn judge_batch(&mut self, batch: &mut Vec<Event>, rules: &RuleSet, scope: &mut impl Scope) {
        for event in batch.iter() {
            self.judge(event, rules, scope);
        }
        batch.clear();
    }

    fn judge(&mut self, event: &Event, rules: &RuleSet, scope: &mut impl Scope) {
        self.events += 1;
        let Some(setting) = scope.event(event, &mut self.tracer) else {
            return;
        };
        let processes = self.tracer.processes();
        // One lookup of the process for its working directory and the rules' view of it.
        let view = processes.view(event.pid);
        let ctx = Context {
            phase: setting.phase,
            cwd: view.process().and_then(|p| p.cwd.as_deref()),
            process: setting.process_view.then_some(view),
            watch: self.watch.as_deref(),
        };
        let mut found = rules.judge_memo(event, &ctx, &mut self.paths);
        if found.is_empty() {
            return;
        }
        scope.review(event, &mut found, rules, &ctx);
        for finding in &mut found {
            finding.process = Some(processes.context(event.pid));
            finding.load = setting.load.clone();
        }
        for finding in &found {
            *self.findings.entry(finding.severity).or_default() += 1;
            scope.finding(finding);
        }
        let Some(kill_at) = scope.kill_at() else {
            return;
        };
        let worst =
            found
                .iter()
                .filter(|f| f.severity >= kill_at)
                .fold(None::<&Finding>, |worst, f| match worst {
                    Some(w) if w.severity >= f.severity => Some(w),
                    _ => Some(f),
                });
        if let Some(worst) = worst {
            scope.kill(event, worst, &self.tracer);
        }
    }
}

/// A scope that judges every event in one phase and hands each finding to a closure (the
/// bench, tests).
pub struct Plain<F> {
    pub setting: Setting,
    pub on_finding: F,
}

impl<F: FnMut(&Finding)> Plain<F> {
    pub fn new(setting: Setting, on_finding: F) -> Self {
        Plain {
            setting,
            on_finding,
        }
    }
}

impl<F: FnMut(&Finding)> Scope for Plain<F> {
    fn event(&mut self, _event: &Event, _tracer: &mut Tracer) -> Option<Setting> {
        Some(self.setting.clone())
    }

    fn finding(&mut self, finding: &Finding) {
        (self.on_finding)(finding)
    }
}
