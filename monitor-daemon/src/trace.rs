//! Records -> events: pairs each syscall entry with its exit (per thread: a thread is in at
//! most one syscall at a time) and keeps the process table up to date.

use std::collections::HashMap;

use monitor_common::syscall::{Class, Syscall};
use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::{
    decode::{ArgValue, Enter, Record},
    process::ProcessTable,
};

/// One thing a watched process did.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds of the syscall's entry (or of the record).
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub what: What,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum What {
    Syscall(SyscallEvent),
    /// A new process.
    Fork {
        child_pid: u32,
    },
    /// The process now runs another program.
    Exec {
        filename: String,
        argv: Vec<String>,
    },
    /// The process's last thread exited.
    Exit {
        exit_code: Option<i32>,
    },
}

/// A syscall with its arguments and, once it returned, its result.
#[derive(Debug, Clone, Serialize)]
pub struct SyscallEvent {
    #[serde(rename = "syscall")]
    pub name: &'static str,
    pub class: Class,
    pub args: Args,
    /// `None` when it did not return (exit_group, a successful execve in the old image's
    /// view, a process killed in the call) or when its exit is not traced.
    pub ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_time_ns: Option<u64>,
    /// Some argument was cut at its capture bound.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Some argument's memory could not be read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_error: bool,
    /// The arguments were read at the syscall's exit, because their memory was not readable
    /// at entry: they show what the memory held then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recaptured: bool,
    /// The watch's policy killed the process at this syscall's entry, in the kernel.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub killed: bool,
    #[serde(skip)]
    pub syscall: &'static Syscall,
}

impl SyscallEvent {
    /// The value of the argument called `name`.
    pub fn arg(&self, name: &str) -> Option<&ArgValue> {
        self.args.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Arguments by name, in declaration order (a JSON object).
#[derive(Debug, Clone, Default)]
pub struct Args(pub Vec<(&'static str, ArgValue)>);

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Turns the record stream of one or more watched jobs into events.
#[derive(Default)]
pub struct Tracer {
    /// Syscall entries waiting for their exit, by thread id.
    pending: HashMap<u32, Enter>,
    processes: ProcessTable,
    /// Exits whose entry was never seen (lost, or begun before the watch).
    unpaired_exits: u64,
}

impl Tracer {
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    pub fn processes_mut(&mut self) -> &mut ProcessTable {
        &mut self.processes
    }

    pub fn unpaired_exits(&self) -> u64 {
        self.unpaired_exits
    }

    /// Feeds one record; calls `emit` for each event it completes.
    pub fn push(&mut self, record: Record, emit: &mut impl FnMut(Event)) {
        let h = record.header();
        if let Some(child) = self.processes.seen(h.pid, h.tid, &h.comm, h.time_ns) {
            // Reported as the parent's act, at the time of the fork.
            let (child_pid, parent, time_ns) = (child.pid, child.ppid, child.start_ns);
            let parent = parent.and_then(|p| self.processes.get(p));
            emit(Event {
                time_ns,
                pid: parent.map_or(0, |p| p.pid),
                tid: parent.map_or(0, |p| p.pid),
                ppid: parent.and_then(|p| p.ppid),
                uid: h.uid,
                comm: parent.map_or_else(String::new, |p| p.comm.clone()),
                cgroup_id: h.cgroup_id,
                what: What::Fork { child_pid },
            });
        }
        match record {
            Record::Enter(enter) => self.enter(enter, emit),
            Record::Exit(exit) => {
                let tid = exit.header.tid;
                match self.pending.remove(&tid) {
                    Some(enter) if enter.syscall.nr == exit.syscall.nr => {
                        self.apply_result(&enter, exit.ret);
                        emit(self.syscall_event(enter, Some((exit.ret, exit.header.time_ns))));
                    }
                    other => {
                        if let Some(enter) = other {
                            emit(self.syscall_event(enter, None));
                        }
                        // A new task's first return from clone/fork is the child half of a
                        // fork already reported; anything else is worth counting.
                        if !(exit.ret == 0 && is_fork(exit.syscall)) {
                            self.unpaired_exits += 1;
                        }
                    }
                }
            }
            Record::Fork(fork) => {
                let h = &fork.header;
                self.processes.forked(h.pid, fork.child_tid, h.time_ns);
            }
            Record::Exec(exec) => {
                let h = &exec.header;
                // A non-leader thread that executes takes over the leader's id.
                if exec.old_tid != h.tid
                    && let Some(enter) = self.pending.remove(&exec.old_tid)
                {
                    self.pending.insert(h.tid, enter);
                }
                // Killed at its exec: the exec syscall waiting for its exit is the act killed.
                if h.killed
                    && let Some(enter) = self.pending.get_mut(&h.tid)
                {
                    enter.header.killed = true;
                }
                let argv = self.pending.get(&h.tid).and_then(|e| match e.args.get(1) {
                    Some(ArgValue::Argv(v)) if e.syscall.name.starts_with("execve") => {
                        Some(v.clone())
                    }
                    _ => e.args.iter().find_map(|a| match a {
                        ArgValue::Argv(v) => Some(v.clone()),
                        _ => None,
                    }),
                });
                self.processes.executed(h.pid, &exec.filename, argv.clone());
                let argv = argv.unwrap_or_default();
                emit(self.event(
                    h,
                    What::Exec {
                        filename: exec.filename,
                        argv,
                    },
                ));
            }
            Record::ProcessExit(end) => {
                let h = &end.header;
                if let Some(enter) = self.pending.remove(&h.tid) {
                    emit(self.syscall_event(enter, None));
                }
                if end.group_dead || h.pid == h.tid {
                    self.processes.exited(h.pid, h.time_ns);
                    let exit_code = self.processes.get(h.pid).and_then(|p| p.exit_code);
                    emit(self.event(h, What::Exit { exit_code }));
                }
            }
        }
    }

    /// Emits every entry still waiting for its exit (at the end of a job).
    pub fn flush(&mut self, emit: &mut impl FnMut(Event)) {
        let mut pending: Vec<Enter> = self.pending.drain().map(|(_, e)| e).collect();
        pending.sort_by_key(|e| e.header.time_ns);
        for enter in pending {
            emit(self.syscall_event(enter, None));
        }
    }

    fn enter(&mut self, enter: Enter, emit: &mut impl FnMut(Event)) {
        let sc = enter.syscall;
        if enter.header.recaptured {
            // A second look at the entry waiting for its exit: keep its time, take the data.
            if let Some(pending) = self.pending.get_mut(&enter.header.tid)
                && pending.syscall.nr == sc.nr
            {
                let time_ns = pending.header.time_ns;
                *pending = enter;
                pending.header.time_ns = time_ns;
            }
            return;
        }
        if sc.name == "exit_group"
            && let Some(code) = enter.args.first().and_then(ArgValue::as_u64)
        {
            self.processes.exit_code(enter.header.pid, code as i32);
        }
        if !sc.returns || sc.only_if.is_some() {
            emit(self.syscall_event(enter, None));
            return;
        }
        if let Some(previous) = self.pending.insert(enter.header.tid, enter) {
            // Its exit was lost; report what we have.
            emit(self.syscall_event(previous, None));
        }
    }

    /// Updates the process table from a completed syscall.
    fn apply_result(&mut self, enter: &Enter, ret: i64) {
        if ret < 0 {
            return;
        }
        match enter.syscall.name {
            "chdir" => self
                .processes
                .changed_dir(enter.header.pid, enter.args[0].as_str()),
            "fchdir" => self.processes.changed_dir(enter.header.pid, None),
            _ => {}
        }
    }

    fn syscall_event(&self, enter: Enter, exit: Option<(i64, u64)>) -> Event {
        let sc = enter.syscall;
        let ret = exit.map(|(r, _)| r);
        let errno = ret
            .filter(|r| (-4095..0).contains(r))
            .map(|r| errno_name(-r as i32));
        let args = Args(sc.args.iter().map(|a| a.name).zip(enter.args).collect());
        let what = What::Syscall(SyscallEvent {
            name: sc.name,
            class: sc.class,
            args,
            ret,
            errno,
            exit_time_ns: exit.map(|(_, t)| t),
            truncated: enter.header.truncated,
            read_error: enter.header.read_error,
            recaptured: enter.header.recaptured,
            killed: enter.header.killed,
            syscall: sc,
        });
        self.event(&enter.header, what)
    }

    fn event(&self, h: &crate::decode::Header, what: What) -> Event {
        Event {
            time_ns: h.time_ns,
            pid: h.pid,
            tid: h.tid,
            ppid: self.processes.get(h.pid).and_then(|p| p.ppid),
            uid: h.uid,
            comm: h.comm.clone(),
            cgroup_id: h.cgroup_id,
            what,
        }
    }
}

fn is_fork(sc: &Syscall) -> bool {
    matches!(sc.name, "clone" | "clone3" | "fork" | "vfork")
}

/// `ENOENT` for 2; the kernel's own restart codes, which a syscall interrupted by a kill
/// returns, by their kernel names.
pub fn errno_name(errno: i32) -> String {
    match errno {
        512 => "ERESTARTSYS".into(),
        513 => "ERESTARTNOINTR".into(),
        514 => "ERESTARTNOHAND".into(),
        516 => "ERESTART_RESTARTBLOCK".into(),
        _ => format!("{:?}", nix::errno::Errno::from_raw(errno)),
    }
}
