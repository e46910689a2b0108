//! Records -> events: a syscall's entry and exit arrive in one record, or (where the entry had
//! to be written at once) as two records that are paired here, per thread (a thread is in at
//! most one syscall at a time); keeps the process table up to date.

use std::{borrow::Cow, sync::Arc};

use foldhash::HashMap;
use smallvec::SmallVec;

use monitor_common::syscall::{Arg, ArgKind, Class, Effect, F_DUPFD_CLOEXEC, Syscall};
use serde::{Serialize, Serializer, ser::SerializeMap};

use crate::decode::{ArgValue, ArgValues, Call, Enter, FileId, Flags, Record};
use crate::process::{OpenFile, ProcessTable};
use crate::resolve::{self, Names};

/// One thing a watched process did.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds of the syscall's entry (or of the record).
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    /// Shared with the process's other events while its name stays the same.
    pub comm: Arc<str>,
    pub cgroup_id: u64,
    #[serde(flatten)]
    pub what: What,
}

/// What happened.
// Nearly every event is a syscall: boxing it would cost an allocation per event, which the
// pipeline is built to avoid.
#[allow(clippy::large_enum_variant)]
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
        /// The signal that killed it, where the kernel said.
        #[serde(skip_serializing_if = "Option::is_none")]
        killed_by: Option<u8>,
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
    /// Its entry record's flags: arguments cut or unreadable, read at exit, killed.
    #[serde(flatten)]
    pub flags: Flags,
    /// What its path arguments reached, where that is not what they spell: made absolute
    /// against a directory fd or the working directory, through `/proc/self/fd`, through the
    /// symlinks and renames the job made, and the name of a file known by identity (a
    /// honeytoken) that it opened. Rules judge these with the arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<String>,
    #[serde(skip)]
    pub syscall: &'static Syscall,
    /// The path arguments (bit i: argument i) the tracer found absolute and normal already,
    /// so that the rules need not check them again; 0 where nobody checked.
    #[serde(skip)]
    pub clean_paths: u8,
}

impl SyscallEvent {
    /// The value of the argument called `name`.
    pub fn arg(&self, name: &str) -> Option<&ArgValue> {
        self.args.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Arguments by name, in declaration order (a JSON object): the decoded values as the decoder
/// gave them, named by the syscall table (so no list of pairs is built for every event).
#[derive(Debug, Clone, Default)]
pub struct Args {
    names: &'static [Arg],
    values: ArgValues,
}

impl Args {
    /// `values` named by `names` (a syscall's arguments in the table); a value without a name
    /// is not kept.
    pub fn new(names: &'static [Arg], values: impl Into<ArgValues>) -> Self {
        let mut values = values.into();
        values.truncate(names.len());
        Args { names, values }
    }

    /// Each argument's name and value, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ArgValue)> {
        self.names.iter().map(|a| a.name).zip(&self.values)
    }

    /// The values, in declaration order.
    pub fn values(&self) -> &[ArgValue] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (name, value) in self.iter() {
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
    /// The names the job made, and the files known by identity.
    names: Names,
    /// Exits whose entry was never seen (lost, or begun before the watch).
    unpaired_exits: u64,
}

/// What the path arguments of a call reached, argument by argument, in their order: for
/// each, the absolute path first, then each path that leads to in turn (see
/// [`Tracer::resolve`]). Most calls reach one path per argument, the argument's own text,
/// borrowed from the entry (no reference count touched for it).
#[derive(Default)]
struct Reached<'e> {
    list: SmallVec<[(usize, Cow<'e, Arc<str>>); 4]>,
    /// The arguments (bit i: argument i) whose text was an absolute, normal path already.
    clean: u8,
    /// The caller's parent, looked up with its working directory (one lookup per event).
    ppid: Option<u32>,
}

impl Reached<'_> {
    /// What argument `arg` reached first: its absolute path.
    fn first(&self, arg: usize) -> Option<&Arc<str>> {
        self.list
            .iter()
            .find(|(a, _)| *a == arg)
            .map(|(_, p)| p.as_ref())
    }

    /// What argument `arg` finally reached.
    fn last(&self, arg: usize) -> Option<&Arc<str>> {
        self.list
            .iter()
            .rev()
            .find(|(a, _)| *a == arg)
            .map(|(_, p)| p.as_ref())
    }
}

impl<'e> Reached<'e> {
    /// Argument `arg` (the last one added) also reached `path`, unless that is where it
    /// stands already.
    fn push(&mut self, arg: usize, path: Cow<'e, Arc<str>>) {
        if self
            .list
            .last()
            .is_some_and(|(a, p)| *a == arg && **p == *path)
        {
            return;
        }
        self.list.push((arg, path));
    }
}

/// How a syscall returned.
#[derive(Debug, Clone, Copy)]
struct Returned {
    ret: i64,
    time_ns: u64,
    file: Option<FileId>,
}

impl Tracer {
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    pub fn processes_mut(&mut self) -> &mut ProcessTable {
        &mut self.processes
    }

    /// The names the job made and the files to recognise by identity ([`Names::know`]).
    pub fn names_mut(&mut self) -> &mut Names {
        &mut self.names
    }

    pub fn unpaired_exits(&self) -> u64 {
        self.unpaired_exits
    }

    /// Feeds one record; calls `emit` for each event it completes.
    pub fn push(&mut self, record: Record, emit: &mut impl FnMut(Event)) {
        if let Some(last) = self.push_last(record, emit) {
            emit(last);
        }
    }

    /// Feeds one record; calls `emit` for each event it completes but the last, which it
    /// returns where there is one: a syscall's, most records' only event, then stays where
    /// the caller keeps it (an event is large), not moved into a batch first.
    #[inline]
    pub fn push_last(&mut self, record: Record, emit: &mut impl FnMut(Event)) -> Option<Event> {
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
                comm: parent.map_or_else(|| "".into(), |p| p.comm.as_str().into()),
                cgroup_id: h.cgroup_id,
                what: What::Fork { child_pid },
            });
        }
        // Before the record is taken apart: its entry is then moved once, into the event, not
        // first out of the record to outlive this call.
        if let Record::Call(call) = &record {
            self.lost_exit(call.enter.header.tid, emit);
        }
        match record {
            Record::Call(Call {
                enter,
                exit_ns,
                ret,
                file,
            }) => {
                let returned = Returned {
                    ret,
                    time_ns: exit_ns,
                    file,
                };
                return Some(self.completed(enter, Some(returned)));
            }
            Record::Enter(enter) => return self.enter(enter, emit),
            Record::Exit(exit) => {
                let tid = exit.header.tid;
                match self.pending.remove(&tid) {
                    Some(enter) if enter.syscall.nr == exit.syscall.nr => {
                        let returned = Returned {
                            ret: exit.ret,
                            time_ns: exit.header.time_ns,
                            file: exit.file,
                        };
                        return Some(self.completed(enter, Some(returned)));
                    }
                    other => {
                        if let Some(enter) = other {
                            emit(self.completed(enter, None));
                        }
                        // A new task's first return from clone/fork is the child half of a
                        // fork already reported; anything else is worth counting.
                        if !(exit.ret == 0 && exit.syscall.forks) {
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
                if h.flags.killed
                    && let Some(enter) = self.pending.get_mut(&h.tid)
                {
                    enter.header.flags.killed = true;
                }
                let argv = self.pending.get(&h.tid).and_then(|e| match e.args.get(1) {
                    Some(ArgValue::Argv(v)) if e.syscall.executes => Some(v.clone()),
                    _ => e.args.iter().find_map(|a| match a {
                        ArgValue::Argv(v) => Some(v.clone()),
                        _ => None,
                    }),
                });
                self.processes.executed(h.pid, &exec.filename, argv.clone());
                let argv = argv.unwrap_or_default();
                emit(self.event(
                    exec.header,
                    What::Exec {
                        filename: exec.filename,
                        argv,
                    },
                ));
            }
            Record::ProcessExit(end) => {
                let h = &end.header;
                if let Some(enter) = self.pending.remove(&h.tid) {
                    emit(self.completed(enter, None));
                }
                if end.group_dead || h.pid == h.tid {
                    self.processes.exited(h.pid, h.time_ns, end.signal);
                    let exit_code = self.processes.get(h.pid).and_then(|p| p.exit_code);
                    emit(self.event(
                        end.header,
                        What::Exit {
                            exit_code,
                            killed_by: end.signal,
                        },
                    ));
                }
            }
        }
        None
    }

    /// Emits every entry still waiting for its exit (at the end of a job).
    pub fn flush(&mut self, emit: &mut impl FnMut(Event)) {
        let mut pending: Vec<Enter> = self.pending.drain().map(|(_, e)| e).collect();
        pending.sort_by_key(|e| e.header.time_ns);
        for enter in pending {
            emit(self.completed(enter, None));
        }
    }

    /// An entry alone: the event of a call whose exit is not traced (`close`, whose result is
    /// not kept; `exit_group`, which does not return), returned; any other waits for its exit.
    // Inlined, like `completed`: the entry is then moved once, into its event or the pending
    // table, not first into this call.
    #[inline(always)]
    fn enter(&mut self, enter: Enter, emit: &mut impl FnMut(Event)) -> Option<Event> {
        let sc = enter.syscall;
        if enter.header.flags.recaptured {
            // A second look at the entry waiting for its exit: keep its time, take the data.
            if let Some(pending) = self.pending.get_mut(&enter.header.tid)
                && pending.syscall.nr == sc.nr
            {
                let time_ns = pending.header.time_ns;
                *pending = enter;
                pending.header.time_ns = time_ns;
            }
            return None;
        }
        if sc.ends_process
            && let Some(code) = enter.args.first().and_then(ArgValue::as_u64)
        {
            self.processes.exit_code(enter.header.pid, code as i32);
        }
        if !sc.has_exit() {
            return Some(self.completed(enter, None));
        }
        let tid = enter.header.tid;
        self.lost_exit(tid, emit);
        self.pending.insert(tid, enter);
        None
    }

    /// Thread `tid` begins a syscall. A thread is in one syscall at a time: an entry of
    /// its still waiting for its exit lost it, and is reported with what we have.
    fn lost_exit(&mut self, tid: u32, emit: &mut impl FnMut(Event)) {
        // Nearly always so (most calls come in one record): no lookup.
        if self.pending.is_empty() {
            return;
        }
        if let Some(previous) = self.pending.remove(&tid) {
            emit(self.completed(previous, None));
        }
    }

    /// The event of a syscall that returned (or whose return will not be seen), with its
    /// paths resolved as the process's state was when it made the call; then that state
    /// updated by what the call did.
    // Inlined, and the event written in one expression: an event is large (one per syscall),
    // and built this way it is written once where the caller puts it, not moved through
    // intermediate values (`event_sizes` pins how large).
    #[inline(always)]
    fn completed(&mut self, mut enter: Enter, exit: Option<Returned>) -> Event {
        let (resolved, ppid, clean_paths) = {
            let paths = self.resolve(&enter, exit.and_then(|e| e.file));
            self.apply(&enter, exit.map(|e| e.ret), &paths);
            let mut resolved: Vec<String> = Vec::new();
            for (_, path) in &paths.list {
                // Most paths reached are an argument's own text, borrowed from it.
                let literal = match path {
                    Cow::Borrowed(_) => true,
                    Cow::Owned(path) => enter.args.iter().any(|a| match a {
                        ArgValue::Str(Some(text)) => **text == **path,
                        _ => false,
                    }),
                };
                if !literal && !resolved.iter().any(|r| **r == ***path) {
                    resolved.push(path.to_string());
                }
            }
            (resolved, paths.ppid, paths.clean)
        };
        // The event is written from the entry's fields in one expression (no local copies).
        enter.args.truncate(enter.syscall.args.len());
        let sc = enter.syscall;
        let ret = exit.map(|e| e.ret);
        Event {
            time_ns: enter.header.time_ns,
            pid: enter.header.pid,
            tid: enter.header.tid,
            ppid,
            uid: enter.header.uid,
            comm: enter.header.comm,
            cgroup_id: enter.header.cgroup_id,
            what: What::Syscall(SyscallEvent {
                name: sc.name,
                class: sc.class,
                args: Args {
                    names: sc.args,
                    values: enter.args,
                },
                ret,
                errno: ret
                    .filter(|r| (-4095..0).contains(r))
                    .map(|r| errno_name(-r as i32)),
                exit_time_ns: exit.map(|e| e.time_ns),
                flags: enter.header.flags,
                resolved,
                syscall: sc,
                clean_paths,
            }),
        }
    }

    /// For each argument of `enter`, what it reached (empty for an argument that is no path,
    /// or one that cannot be resolved): the absolute path first, then each path that leads to
    /// in turn, last the name of the file known by identity that the call opened (`file`).
    fn resolve<'e>(&self, enter: &'e Enter, file: Option<FileId>) -> Reached<'e> {
        let pid = enter.header.pid;
        let process = self.processes.get(pid);
        let cwd = process.and_then(|p| p.cwd.as_deref());
        let fd_path = |fd: i32| self.processes.fd(pid, fd).map(|f| f.path.clone());
        let kinds = enter.syscall.args;
        let mut paths = Reached {
            ppid: process.and_then(|p| p.ppid),
            ..Reached::default()
        };
        if !kinds.iter().any(|a| a.kind == ArgKind::Path) {
            return paths;
        }
        for (i, value) in enter.args.iter().enumerate() {
            let ArgValue::Str(Some(path)) = value else {
                continue;
            };
            if kinds[i].kind != ArgKind::Path {
                continue;
            }
            // A symlink's content is resolved against the link's directory, once made.
            if enter.syscall.effect == Effect::Symlinks && i == 0 {
                continue;
            }
            // An absolute path that is normal already is its own absolute form: shared, not
            // copied (most paths).
            let absolute = if resolve::is_clean(path) {
                paths.clean |= 1 << i;
                Cow::Borrowed(path)
            } else {
                let dir_fd = match i.checked_sub(1).map(|d| (kinds[d].kind, &enter.args[d])) {
                    Some((ArgKind::DirFd, ArgValue::Fd(fd))) if *fd != libc::AT_FDCWD => {
                        Some(fd_path(*fd))
                    }
                    _ => None,
                };
                let base = match &dir_fd {
                    Some(dir) => dir.as_deref(),
                    None => cwd,
                };
                let Some(absolute) = resolve::absolute(path, base) else {
                    continue;
                };
                Cow::Owned(absolute.into())
            };
            let mut last = absolute.clone();
            paths.push(i, absolute);
            for _ in 0..2 {
                let before = paths.list.len();
                if let Some(target) = resolve::magic(&last, fd_path, cwd) {
                    last = Cow::Owned(target.into());
                    paths.push(i, last.clone());
                }
                for further in self.names.follow(&last) {
                    last = Cow::Owned(further.into());
                    paths.push(i, last.clone());
                }
                // Nothing further: a second look at the same path finds nothing either.
                if paths.list.len() == before {
                    break;
                }
            }
        }
        // After what the first path argument reached.
        if let Some(known) = file.and_then(|f| self.names.known(f))
            && let Some(&(first, _)) = paths.list.first()
        {
            let at = paths.list.iter().take_while(|(a, _)| *a == first).count();
            paths.list.insert(at, (first, Cow::Owned(known.into())));
        }
        paths
    }

    /// Updates the process table and the job's names from a syscall that returned `ret`
    /// (`None`: not seen), whose arguments reached `paths`.
    fn apply(&mut self, enter: &Enter, ret: Option<i64>, paths: &Reached) {
        let pid = enter.header.pid;
        let fd_arg = |i: usize| match enter.args.get(i) {
            Some(ArgValue::Fd(fd)) => Some(*fd),
            _ => None,
        };
        // What the i-th argument finally reached, if it is a path the tracer could resolve.
        let reached = |i: usize| paths.last(i).cloned();
        if enter.syscall.effect == Effect::ClosesFd {
            // The descriptor is gone whatever close returns.
            if let Some(fd) = fd_arg(0) {
                self.processes.set_fd(pid, fd, None);
            }
            return;
        }
        let Some(ret) = ret.filter(|&r| r >= 0) else {
            return;
        };
        let first_path = enter
            .syscall
            .args
            .iter()
            .position(|a| a.kind == ArgKind::Path);
        let last_path = enter
            .syscall
            .args
            .iter()
            .rposition(|a| a.kind == ArgKind::Path);
        match enter.syscall.effect {
            Effect::None | Effect::ClosesFd => {}
            Effect::Opens => {
                let file = first_path.and_then(reached).map(|path| OpenFile {
                    path,
                    cloexec: has_flag(enter, libc::O_CLOEXEC as u64),
                });
                self.processes.set_fd(pid, ret as i32, file);
            }
            Effect::DupsFd => {
                let file = fd_arg(0)
                    .and_then(|fd| self.processes.fd(pid, fd))
                    .map(|f| OpenFile {
                        path: f.path.clone(),
                        cloexec: enter.args.get(1).and_then(ArgValue::as_u64)
                            == Some(F_DUPFD_CLOEXEC),
                    });
                self.processes.set_fd(pid, ret as i32, file);
            }
            Effect::DupsFdTo => {
                if let (Some(old), Some(new)) = (fd_arg(0), fd_arg(1))
                    && old != new
                {
                    let file = self.processes.fd(pid, old).map(|f| OpenFile {
                        path: f.path.clone(),
                        cloexec: has_flag(enter, libc::O_CLOEXEC as u64),
                    });
                    self.processes.set_fd(pid, new, file);
                }
            }
            Effect::ChangesCwd => {
                let cwd = match first_path {
                    Some(i) => reached(i),
                    None => fd_arg(0)
                        .and_then(|fd| self.processes.fd(pid, fd))
                        .map(|f| f.path.clone()),
                };
                self.processes
                    .changed_dir(pid, cwd.map(|dir| dir.to_string()));
            }
            Effect::Symlinks => {
                let content = first_path.and_then(|i| enter.args[i].as_str());
                if let (Some(content), Some(link)) = (content, last_path.and_then(reached)) {
                    self.names.symlinked(&link, content);
                }
            }
            Effect::Renames => {
                if let (Some(from), Some(to)) = (
                    first_path.and_then(reached),
                    last_path.and_then(|i| paths.first(i).cloned()),
                ) {
                    self.names.moved(&from, &to);
                }
            }
            Effect::Removes => {
                if let Some(path) = first_path.and_then(|i| paths.first(i).cloned()) {
                    self.names.removed(&path);
                }
            }
        }
    }

    fn ppid(&self, pid: u32) -> Option<u32> {
        self.processes.get(pid).and_then(|p| p.ppid)
    }

    // Inlined, so that an event (large, one per syscall) is built in place, not moved.
    #[inline(always)]
    fn event(&self, h: crate::decode::Header, what: What) -> Event {
        Event {
            time_ns: h.time_ns,
            pid: h.pid,
            tid: h.tid,
            ppid: self.ppid(h.pid),
            uid: h.uid,
            comm: h.comm,
            cgroup_id: h.cgroup_id,
            what,
        }
    }
}

/// Whether the open flags of `enter` (open, openat, openat2, dup3) include `flag`.
fn has_flag(enter: &Enter, flag: u64) -> bool {
    enter
        .syscall
        .args
        .iter()
        .zip(&enter.args)
        .any(|(arg, value)| {
            matches!(arg.kind, ArgKind::OpenFlags | ArgKind::OpenHow)
                && value.as_u64().is_some_and(|v| v & flag != 0)
        })
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

#[cfg(test)]
mod tests {
    use monitor_common::syscall::by_name;

    use super::*;
    use crate::decode::{Call, Exit, Header};

    const PID: u32 = 40;

    fn header(pid: u32, time_ns: u64) -> Header {
        Header {
            time_ns,
            cpu: 0,
            cgroup_id: 1,
            watch_id: 1,
            pid,
            tid: pid,
            uid: 1000,
            gid: 1000,
            comm: "python".into(),
            flags: Flags::default(),
        }
    }

    fn path(p: &str) -> ArgValue {
        ArgValue::Str(Some(p.into()))
    }

    fn flags(raw: u64) -> ArgValue {
        ArgValue::Flags {
            raw,
            text: "".into(),
        }
    }

    /// A tracer whose process `PID` works in `/work`.
    fn tracer() -> Tracer {
        let mut tracer = Tracer::default();
        tracer.processes_mut().insert(crate::process::Process {
            pid: PID,
            ppid: Some(1),
            exe: Some("/usr/bin/python3".into()),
            argv: Vec::new(),
            cwd: Some("/work".into()),
            comm: "python".into(),
            start_ns: 0,
            exit_ns: None,
            exit_code: None,
            killed_by: None,
            fds: HashMap::default(),
            outside_parent_exe: None,
            looked_up: true,
        });
        tracer
    }

    /// Feeds syscall `name` with `args` that returned `ret` (opening `file`), in the records
    /// the kernel writes for it (one, or an entry and an exit); returns its event's resolved
    /// paths.
    fn call(
        tracer: &mut Tracer,
        name: &str,
        args: Vec<ArgValue>,
        ret: i64,
        file: Option<FileId>,
    ) -> Vec<String> {
        let syscall = by_name(name).unwrap();
        let mut events = Vec::new();
        for record in records(syscall, args, ret, file, syscall.entry_waits()) {
            tracer.push(record, &mut |e| events.push(e));
        }
        let What::Syscall(sc) = &events.last().expect("an event").what else {
            panic!("{events:?}")
        };
        sc.resolved.clone()
    }

    /// The records of a call: one (`together`), or its entry and, if it has one, its exit.
    fn records(
        syscall: &'static Syscall,
        args: Vec<ArgValue>,
        ret: i64,
        file: Option<FileId>,
        together: bool,
    ) -> Vec<Record> {
        let enter = Enter {
            header: header(PID, 1),
            syscall,
            args: args.into(),
        };
        if together {
            return vec![Record::Call(Call {
                enter,
                exit_ns: 2,
                ret,
                file,
            })];
        }
        let mut records = vec![Record::Enter(enter)];
        if syscall.has_exit() {
            records.push(Record::Exit(Exit {
                header: header(PID, 2),
                syscall,
                ret,
                file,
            }));
        }
        records
    }

    /// Every event of `records`, flushed.
    fn events_of(tracer: &mut Tracer, records: Vec<Record>) -> Vec<Event> {
        let mut events = Vec::new();
        for record in records {
            tracer.push(record, &mut |e| events.push(e));
        }
        tracer.flush(&mut |e| events.push(e));
        events
    }

    #[test]
    fn a_call_in_one_record_is_one_event_with_its_entry_and_its_result() {
        let openat = by_name("openat").unwrap();
        let args = || {
            vec![
                ArgValue::Fd(AT_FDCWD),
                path("/home/user/.ssh/id_rsa"),
                flags(O_CLOEXEC),
                ArgValue::Mode(0),
            ]
        };
        let token = FileId { dev: 42, ino: 7 };
        let one = events_of(&mut tracer(), records(openat, args(), 3, Some(token), true));
        let two = events_of(
            &mut tracer(),
            records(openat, args(), 3, Some(token), false),
        );
        assert_eq!(one.len(), 1, "{one:?}");
        let What::Syscall(sc) = &one[0].what else {
            panic!("{one:?}")
        };
        assert_eq!(
            sc.arg("filename").and_then(ArgValue::as_str),
            Some("/home/user/.ssh/id_rsa")
        );
        assert_eq!(
            (sc.ret, sc.exit_time_ns, one[0].time_ns),
            (Some(3), Some(2), 1)
        );
        // The same event as from an entry and an exit.
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            serde_json::to_string(&two).unwrap()
        );
    }

    #[test]
    fn an_entry_whose_exit_was_lost_is_reported_unfinished_before_the_next_call() {
        let mut t = tracer();
        let connect = by_name("connect").unwrap();
        let openat = by_name("openat").unwrap();
        let mut records = records(connect, vec![ArgValue::Fd(3)], 0, None, false);
        records.truncate(1);
        let open = vec![ArgValue::Fd(AT_FDCWD), path("/etc/passwd"), flags(0)];
        records.extend(self::records(openat, open, 4, None, true));
        let events = events_of(&mut t, records);
        let calls: Vec<(&str, Option<i64>)> = events
            .iter()
            .filter_map(|e| match &e.what {
                What::Syscall(sc) => Some((sc.name, sc.ret)),
                _ => None,
            })
            .collect();
        assert_eq!(calls, [("connect", None), ("openat", Some(4))]);
    }

    fn openat(tracer: &mut Tracer, dir: i32, name: &str, open_flags: u64, ret: i64) -> Vec<String> {
        let args = vec![
            ArgValue::Fd(dir),
            path(name),
            flags(open_flags),
            ArgValue::Mode(0),
        ];
        call(tracer, "openat", args, ret, None)
    }

    const AT_FDCWD: i32 = libc::AT_FDCWD;
    const O_DIRECTORY: u64 = libc::O_DIRECTORY as u64;
    const O_CLOEXEC: u64 = libc::O_CLOEXEC as u64;

    #[test]
    fn the_table_says_what_forks_executes_ends_a_process_and_changes_directory() {
        let with = |test: fn(&Syscall) -> bool| {
            let mut names: Vec<&str> = monitor_common::syscall::SYSCALLS
                .iter()
                .filter(|sc| test(sc))
                .map(|sc| sc.name)
                .collect();
            names.sort();
            names
        };
        assert_eq!(with(|sc| sc.forks), ["clone", "clone3", "fork", "vfork"]);
        assert_eq!(with(|sc| sc.executes), ["execve", "execveat"]);
        assert_eq!(with(|sc| sc.ends_process), ["exit_group"]);
        assert_eq!(with(|sc| sc.changes_cwd()), ["chdir", "fchdir"]);
    }

    #[test]
    fn paths_relative_to_a_directory_fd_or_its_duplicates_are_resolved() {
        let mut t = tracer();
        openat(
            &mut t,
            AT_FDCWD,
            "/home/user/.ssh",
            O_DIRECTORY | O_CLOEXEC,
            3,
        );
        assert_eq!(
            openat(&mut t, 3, "id_rsa", 0, 4),
            ["/home/user/.ssh/id_rsa"]
        );
        // dup, fcntl(F_DUPFD_CLOEXEC), dup2, dup3: each copy names the directory too.
        call(&mut t, "dup", vec![ArgValue::Fd(3)], 5, None);
        let fcntl = vec![ArgValue::Fd(3), ArgValue::Int(1030), ArgValue::UInt(0)];
        call(&mut t, "fcntl", fcntl, 6, None);
        call(
            &mut t,
            "dup2",
            vec![ArgValue::Fd(3), ArgValue::Fd(9)],
            9,
            None,
        );
        for fd in [5, 6, 9] {
            assert_eq!(
                openat(&mut t, fd, "id_ed25519", 0, 10),
                ["/home/user/.ssh/id_ed25519"]
            );
        }
        // Closed, the number means nothing any more: a relative path from it is not guessed.
        call(&mut t, "close", vec![ArgValue::Fd(5)], 0, None);
        assert!(openat(&mut t, 5, "id_rsa", 0, -9).is_empty());
        // Relative to the working directory, and through /proc/self/fd.
        assert_eq!(
            openat(&mut t, AT_FDCWD, "../etc/passwd", 0, 11),
            ["/etc/passwd"]
        );
        assert_eq!(
            openat(&mut t, AT_FDCWD, "/proc/self/fd/3/config", 0, 12),
            ["/home/user/.ssh/config"]
        );
        // An exec closes the close-on-exec ones (3, 6), not the others (9, from dup2).
        t.processes_mut().executed(PID, "/bin/sh", None);
        assert!(openat(&mut t, 3, "id_rsa", 0, -9).is_empty());
        assert_eq!(
            openat(&mut t, 9, "id_rsa", 0, 13),
            ["/home/user/.ssh/id_rsa"]
        );
    }

    #[test]
    fn the_working_directory_follows_chdir_and_fchdir() {
        let mut t = tracer();
        openat(&mut t, AT_FDCWD, "/home/user/.aws", O_DIRECTORY, 3);
        call(&mut t, "fchdir", vec![ArgValue::Fd(3)], 0, None);
        assert_eq!(
            openat(&mut t, AT_FDCWD, "credentials", 0, 4),
            ["/home/user/.aws/credentials"]
        );
        call(&mut t, "chdir", vec![path("../.ssh")], 0, None);
        assert_eq!(
            openat(&mut t, AT_FDCWD, "id_rsa", 0, 5),
            ["/home/user/.ssh/id_rsa"]
        );
        // A failed chdir changes nothing.
        call(&mut t, "chdir", vec![path("/nonexistent")], -2, None);
        assert_eq!(
            t.processes().get(PID).unwrap().cwd.as_deref(),
            Some("/home/user/.ssh")
        );
    }

    #[test]
    fn symlinks_and_renames_the_job_made_are_followed() {
        let mut t = tracer();
        let symlink = vec![path("/home/user/.netrc"), path("/tmp/notes.txt")];
        call(&mut t, "symlink", symlink, 0, None);
        assert_eq!(
            openat(&mut t, AT_FDCWD, "/tmp/notes.txt", 0, 3),
            ["/home/user/.netrc"]
        );
        // A relative symlink made from a directory fd, to a directory.
        openat(&mut t, AT_FDCWD, "/tmp", O_DIRECTORY, 4);
        let symlinkat = vec![path("../etc"), ArgValue::Fd(4), path("conf")];
        call(&mut t, "symlinkat", symlinkat, 0, None);
        assert_eq!(
            openat(&mut t, AT_FDCWD, "/tmp/conf/shadow", 0, -13),
            ["/etc/shadow"]
        );
        let rename = vec![
            path("/home/user/.git-credentials"),
            path("/work/readme.txt"),
        ];
        call(&mut t, "rename", rename, 0, None);
        assert_eq!(
            openat(&mut t, AT_FDCWD, "readme.txt", 0, 5),
            ["/work/readme.txt", "/home/user/.git-credentials"]
        );
        // Unlinked, the symlink leads nowhere; a failed symlink never did.
        call(&mut t, "unlink", vec![path("/tmp/notes.txt")], 0, None);
        assert!(openat(&mut t, AT_FDCWD, "/tmp/notes.txt", 0, 6).is_empty());
        call(
            &mut t,
            "symlink",
            vec![path("/etc/shadow"), path("/tmp/x")],
            -17,
            None,
        );
        assert!(openat(&mut t, AT_FDCWD, "/tmp/x", 0, 7).is_empty());
    }

    #[test]
    fn a_file_known_by_identity_is_named_whatever_path_reached_it() {
        let mut t = tracer();
        let token = FileId { dev: 42, ino: 7 };
        t.names_mut().know(token, "/home/user/.ssh/id_rsa");
        let args = vec![
            ArgValue::Fd(AT_FDCWD),
            path("x"),
            flags(0),
            ArgValue::Mode(0),
        ];
        assert_eq!(
            call(&mut t, "openat", args.clone(), 3, Some(token)),
            ["/work/x", "/home/user/.ssh/id_rsa"]
        );
        // And the descriptor names it: a later openat relative to it is under it.
        let other = FileId { dev: 42, ino: 8 };
        assert_eq!(call(&mut t, "openat", args, 4, Some(other)), ["/work/x"]);
        assert_eq!(
            &*t.processes().fd(PID, 3).unwrap().path,
            "/home/user/.ssh/id_rsa"
        );
    }

    /// The event of `openat(dir, name)` fed through `tracer` as one record.
    fn opened(tracer: &mut Tracer, dir: i32, name: &str) -> SyscallEvent {
        let openat = by_name("openat").unwrap();
        let args = vec![ArgValue::Fd(dir), path(name), flags(0), ArgValue::Mode(0)];
        let mut events = events_of(tracer, records(openat, args, 3, None, true));
        match events.pop().map(|e| e.what) {
            Some(What::Syscall(sc)) => sc,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_path_argument_written_absolute_and_normal_is_marked_so_for_the_rules() {
        let mut t = tracer();
        // The path is argument 1 of openat.
        assert_eq!(opened(&mut t, AT_FDCWD, "/etc/passwd").clean_paths, 1 << 1);
        assert_eq!(opened(&mut t, AT_FDCWD, "/").clean_paths, 1 << 1);
        for unclean in [
            "passwd",
            "/etc/../etc/passwd",
            "/etc//passwd",
            "/etc/",
            "/etc/.",
        ] {
            assert_eq!(
                opened(&mut t, AT_FDCWD, unclean).clean_paths,
                0,
                "{unclean}"
            );
        }
        // Relative to a directory fd: resolved, so not the argument's own text.
        opened(&mut t, AT_FDCWD, "/etc");
        assert_eq!(opened(&mut t, 3, "passwd").clean_paths, 0);
    }

    #[test]
    fn push_gives_the_events_push_last_gives_in_the_same_order() {
        let openat = by_name("openat").unwrap();
        let close = by_name("close").unwrap();
        let open = || vec![ArgValue::Fd(AT_FDCWD), path("/etc/passwd"), flags(0)];
        // A lost exit (an entry, then another call of the thread), an entry alone, a call.
        let mut feed = records(openat, open(), 3, None, false);
        feed.truncate(1);
        feed.extend(records(close, vec![ArgValue::Fd(3)], 0, None, false));
        feed.extend(records(openat, open(), 4, None, true));
        let names = |events: &[Event]| -> Vec<String> {
            events
                .iter()
                .map(|e| serde_json::to_string(e).unwrap())
                .collect()
        };
        let mut pushed = Vec::new();
        let mut t = tracer();
        for r in feed.clone() {
            t.push(r, &mut |e| pushed.push(e));
        }
        let mut last = Vec::new();
        let mut t = tracer();
        for r in feed {
            let returned = t.push_last(r, &mut |e| last.push(e));
            last.extend(returned);
        }
        assert_eq!(pushed.len(), 3, "{pushed:?}");
        assert_eq!(names(&pushed), names(&last));
    }

    #[test]
    fn records_and_events_stay_small() {
        // Every record and event is moved between the decoder, the tracer and the judge, at
        // millions a second: grow one only knowingly (a large, rare variant is boxed).
        use std::mem::size_of;
        assert!(size_of::<Record>() <= 256, "{}", size_of::<Record>());
        assert!(size_of::<Enter>() <= 216, "{}", size_of::<Enter>());
        assert!(size_of::<Event>() <= 328, "{}", size_of::<Event>());
        assert!(size_of::<ArgValue>() <= 32, "{}", size_of::<ArgValue>());
    }
}
