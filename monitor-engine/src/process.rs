//! The process table: what is known of each process of a watched job, built from fork, exec,
//! exit and chdir records.

use std::sync::Arc;

use foldhash::HashMap;

use serde::Serialize;

/// One process (thread group) seen in a watched job.
#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub pid: u32,
    /// The process that created it (not updated on re-parenting: the creator is what matters
    /// for an investigation).
    pub ppid: Option<u32>,
    /// The program it runs (the exec filename as the kernel saw it).
    pub exe: Option<String>,
    pub argv: Vec<String>,
    /// Working directory where known (inherited at fork, updated by chdir).
    pub cwd: Option<String>,
    pub comm: String,
    pub start_ns: u64,
    pub exit_ns: Option<u64>,
    /// From exit_group's argument, when it exited that way.
    pub exit_code: Option<i32>,
    /// The signal that killed it, as the kernel said at its exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<u8>,
    /// Its descriptors that name files, as far as the trace shows them: what a directory fd
    /// or `/proc/self/fd/N` refers to. Shared by its threads; copied at fork.
    #[serde(skip)]
    pub fds: HashMap<i32, OpenFile>,
    /// The program of its parent, read from /proc, when the parent is not in the table (the
    /// service manager that started a watched service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_parent_exe: Option<String>,
    /// Whether what the trace did not say of it (its program, its parent) was looked for in
    /// /proc already.
    #[serde(skip)]
    pub looked_up: bool,
}

/// A descriptor the tracer saw made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    /// What it was opened as: the path the kernel reached, as far as the tracer can tell
    /// (the text of the call's event, shared).
    pub path: Arc<str>,
    /// Closed when the process executes a program.
    pub cloexec: bool,
}

/// A process as rules see it: its program, its parent's, and those of the processes above.
#[derive(Clone, Copy)]
pub struct ProcessView<'a> {
    table: &'a ProcessTable,
    /// Looked up once, when the view is made: rules and exceptions may ask for it several
    /// times per event.
    process: Option<&'a Process>,
}

impl<'a> ProcessView<'a> {
    /// The process itself, where the table has it.
    pub fn process(&self) -> Option<&'a Process> {
        self.process
    }

    /// The program it runs (after an exec, the program executed).
    pub fn exe(&self) -> Option<&'a str> {
        self.process()?.exe.as_deref()
    }

    /// The program of the process that started it.
    pub fn parent_exe(&self) -> Option<&'a str> {
        self.ancestor_exes().next().flatten()
    }

    /// The programs of the processes above it, parent first, as far as known (`None` for one
    /// whose program is not known).
    pub fn ancestor_exes(&self) -> Ancestors<'a> {
        Ancestors {
            table: self.table,
            current: self.process(),
            steps: 0,
        }
    }
}

/// The programs above a process, parent first: those in the table, then the program of the
/// first one outside it, if /proc told it.
pub struct Ancestors<'a> {
    table: &'a ProcessTable,
    /// The last process visited; `None` when done.
    current: Option<&'a Process>,
    steps: usize,
}

impl<'a> Iterator for Ancestors<'a> {
    type Item = Option<&'a str>;

    fn next(&mut self) -> Option<Self::Item> {
        let current = self.current.take()?;
        self.steps += 1;
        // A cycle cannot happen in the kernel's tree; a table can hold a pid reused.
        if self.steps > 64 {
            return None;
        }
        match current.ppid.and_then(|p| self.table.procs.get(&p)) {
            Some(parent) if parent.pid != current.pid => {
                self.current = Some(parent);
                Some(parent.exe.as_deref())
            }
            _ => current.outside_parent_exe.as_deref().map(Some),
        }
    }
}

/// A process as a finding reports it: the program, its arguments and its parent chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessContext {
    pub pid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    /// Parent first, up to the job's root.
    pub parents: Vec<Ancestor>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Option<String>,
    pub argv: Vec<String>,
}

/// Every process of a job, by pid, and which process each thread belongs to.
#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: HashMap<u32, Process>,
    /// Tasks announced by fork records whose kind (thread or process) is not known yet.
    unconfirmed: HashMap<u32, u32>,
}

impl ProcessTable {
    /// Adds a process the caller knows from outside the trace (the command it started).
    pub fn insert(&mut self, process: Process) {
        self.procs.insert(process.pid, process);
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.procs.get(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.procs.values()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The pids from `pid`'s parent up to the first one outside the table.
    pub fn ancestors(&self, pid: u32) -> Vec<u32> {
        let mut chain = Vec::new();
        let mut cur = self.procs.get(&pid).and_then(|p| p.ppid);
        while let Some(p) = cur {
            if chain.contains(&p) || chain.len() > 64 {
                break;
            }
            chain.push(p);
            cur = self.procs.get(&p).and_then(|p| p.ppid);
        }
        chain
    }

    /// Who `pid` is, and who started it, for a finding's evidence.
    pub fn context(&self, pid: u32) -> ProcessContext {
        let known = self.procs.get(&pid);
        ProcessContext {
            pid,
            exe: known.and_then(|p| p.exe.clone()),
            argv: known.map(|p| p.argv.clone()).unwrap_or_default(),
            cwd: known.and_then(|p| p.cwd.clone()),
            // Up to the job's root: its parent is monitor itself.
            parents: self
                .ancestors(pid)
                .into_iter()
                .filter_map(|pid| self.procs.get(&pid))
                .map(|p| Ancestor {
                    pid: p.pid,
                    exe: p.exe.clone(),
                    argv: p.argv.clone(),
                })
                .collect(),
        }
    }

    /// A task was created by `parent_pid`. Until its own records show its tgid it is taken as
    /// a process inheriting the parent's program and directory.
    pub fn forked(&mut self, parent_pid: u32, child_tid: u32, time_ns: u64) {
        let parent = self.procs.get(&parent_pid);
        let child = Process {
            pid: child_tid,
            ppid: Some(parent_pid),
            exe: parent.and_then(|p| p.exe.clone()),
            argv: parent.map(|p| p.argv.clone()).unwrap_or_default(),
            cwd: parent.and_then(|p| p.cwd.clone()),
            comm: parent.map(|p| p.comm.clone()).unwrap_or_default(),
            start_ns: time_ns,
            exit_ns: None,
            exit_code: None,
            killed_by: None,
            fds: parent.map(|p| p.fds.clone()).unwrap_or_default(),
            outside_parent_exe: None,
            looked_up: false,
        };
        self.procs.entry(child_tid).or_insert(child);
        self.unconfirmed.insert(child_tid, parent_pid);
    }

    /// A record from task `tid` of process `pid`: settles whether a forked task was a thread.
    /// Returns the new process when this record shows that a forked task is one.
    pub fn seen(&mut self, pid: u32, tid: u32, comm: &str, time_ns: u64) -> Option<&Process> {
        let mut confirmed = false;
        // Nearly always empty: no lookup then.
        if !self.unconfirmed.is_empty() && self.unconfirmed.remove(&tid).is_some() {
            if pid == tid {
                confirmed = true;
            } else {
                // It was a thread of `pid`, not a process of its own.
                self.procs.remove(&tid);
            }
        }
        // Nearly always a process known already: looked up, not entered.
        if !confirmed && let Some(known) = self.procs.get_mut(&pid) {
            if known.comm != comm {
                known.comm = comm.to_owned();
            }
            return None;
        }
        let proc = self.procs.entry(pid).or_insert_with(|| Process {
            pid,
            ppid: None,
            exe: None,
            argv: Vec::new(),
            cwd: None,
            comm: String::new(),
            start_ns: time_ns,
            exit_ns: None,
            exit_code: None,
            killed_by: None,
            fds: HashMap::default(),
            outside_parent_exe: None,
            looked_up: false,
        });
        if proc.comm != comm {
            proc.comm = comm.to_owned();
        }
        confirmed.then_some(&*proc)
    }

    /// Process `pid` now runs `filename` with `argv` (argv from its execve entry, if seen).
    /// Its close-on-exec descriptors are gone.
    pub fn executed(&mut self, pid: u32, filename: &str, argv: Option<Vec<String>>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exe = Some(filename.to_owned());
            if let Some(argv) = argv {
                p.argv = argv;
            }
            p.fds.retain(|_, f| !f.cloexec);
        }
    }

    /// Process `pid` changed directory to `path` (absolute, as resolved), or to an unknown
    /// one.
    pub fn changed_dir(&mut self, pid: u32, path: Option<String>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.cwd = path;
        }
    }

    /// The file descriptor `fd` of process `pid` names, if known.
    pub fn fd(&self, pid: u32, fd: i32) -> Option<&OpenFile> {
        self.procs.get(&pid)?.fds.get(&fd)
    }

    /// Descriptor `fd` of process `pid` now names `file` (`None`: something the tracer does
    /// not know).
    pub fn set_fd(&mut self, pid: u32, fd: i32, file: Option<OpenFile>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            match file {
                Some(file) => p.fds.insert(fd, file),
                None => p.fds.remove(&fd),
            };
        }
    }

    /// Process `pid` called exit_group(`code`).
    pub fn exit_code(&mut self, pid: u32, code: i32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exit_code = Some(code);
        }
    }

    /// The last task of process `pid` exited.
    /// Process `pid` ended at `time_ns`, killed by `signal` if the kernel said so.
    pub fn exited(&mut self, pid: u32, time_ns: u64, signal: Option<u8>) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exit_ns = Some(time_ns);
            p.killed_by = signal;
        }
    }

    /// What rules see of process `pid` and the processes above it.
    pub fn view(&self, pid: u32) -> ProcessView<'_> {
        ProcessView {
            table: self,
            process: self.procs.get(&pid),
        }
    }

    /// Fills in, once, from /proc what the trace did not say of a process it met already
    /// running (a live watch's processes started before it): its program and its parent, and,
    /// where the parent is not in the table, the parent's program. A process gone is left as
    /// it is.
    pub fn look_up_in_proc(&mut self, pid: u32) {
        let Some(known) = self.procs.get(&pid) else {
            return;
        };
        if known.looked_up {
            return;
        }
        let (needs_self, ppid) = (known.exe.is_none() || known.ppid.is_none(), known.ppid);
        let found = needs_self.then(|| crate::procfs::process(pid)).flatten();
        let ppid = ppid.or(found.as_ref().and_then(|f| f.ppid));
        let outside_parent_exe = ppid
            .filter(|p| !self.procs.contains_key(p))
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .map(|exe| exe.display().to_string());
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.looked_up = true;
        if let Some(found) = found {
            p.exe = p.exe.take().or(found.exe);
            p.ppid = p.ppid.or(found.ppid);
            if p.argv.is_empty() {
                p.argv = found.argv;
            }
            p.cwd = p.cwd.take().or(found.cwd);
        }
        p.outside_parent_exe = outside_parent_exe;
    }

    /// Forgets the processes that exited before `time_ns` (a long-running watch would
    /// otherwise keep every process it ever saw).
    pub fn prune_exited(&mut self, time_ns: u64) {
        self.procs
            .retain(|_, p| p.exit_ns.is_none_or(|t| t >= time_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(pid: u32) -> Process {
        Process {
            pid,
            ppid: Some(1),
            exe: Some("/bin/sh".into()),
            argv: vec!["sh".into()],
            cwd: Some("/work".into()),
            comm: "sh".into(),
            start_ns: 0,
            exit_ns: None,
            exit_code: None,
            killed_by: None,
            fds: HashMap::default(),
            outside_parent_exe: None,
            looked_up: false,
        }
    }

    #[test]
    fn forks_inherit_and_threads_fold_into_their_process() {
        let mut t = ProcessTable::default();
        t.insert(root(10));
        t.forked(10, 11, 5);
        t.forked(10, 12, 6);
        assert!(t.seen(11, 11, "sh", 7).is_some()); // a process
        assert!(t.seen(10, 12, "sh", 8).is_none()); // a thread of 10
        assert!(t.seen(11, 11, "sh", 9).is_none()); // already known
        assert_eq!(t.get(11).unwrap().cwd.as_deref(), Some("/work"));
        assert_eq!(t.get(11).unwrap().ppid, Some(10));
        assert!(t.get(12).is_none());
        t.changed_dir(11, Some("/work/sub".into()));
        assert_eq!(t.get(11).unwrap().cwd.as_deref(), Some("/work/sub"));
        let file = |path: &str, cloexec| OpenFile {
            path: path.into(),
            cloexec,
        };
        t.set_fd(11, 3, Some(file("/home/u/.ssh", true)));
        t.set_fd(11, 4, Some(file("/data", false)));
        t.forked(11, 13, 10);
        assert_eq!(t.fd(13, 3), Some(&file("/home/u/.ssh", true)), "inherited");
        t.executed(11, "/bin/true", Some(vec!["true".into()]));
        assert_eq!(t.get(11).unwrap().exe.as_deref(), Some("/bin/true"));
        assert_eq!(t.fd(11, 3), None, "closed on exec");
        assert_eq!(t.fd(11, 4), Some(&file("/data", false)));
        assert_eq!(t.ancestors(11), vec![10, 1]);
    }
}
