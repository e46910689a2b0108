//! The host's processes, as /proc lists them at the moment of asking (not the trace's view:
//! see `process` for that).

use std::{fs, path::Path};

use foldhash::HashMap;

use crate::process::{OpenFile, Process};

/// The ids of the processes alive now; empty when /proc cannot be read.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// A `/proc/PID/stat` line: "pid (comm) state ppid ...". The command name may hold spaces
/// and parentheses, so the fields are read after the last ')'.
#[derive(Debug)]
pub struct Stat<'a> {
    pub comm: &'a str,
    /// Fields 3 (state) onwards.
    rest: Vec<&'a str>,
}

impl<'a> Stat<'a> {
    pub fn parse(line: &'a str) -> Option<Stat<'a>> {
        let (head, tail) = line.rsplit_once(')')?;
        Some(Stat {
            comm: head.split_once('(')?.1,
            rest: tail.split_whitespace().collect(),
        })
    }

    /// Field `n` as proc(5) numbers them (1 is the pid, 2 the command name), from 3 on.
    pub fn field(&self, n: usize) -> Option<u64> {
        self.rest.get(n.checked_sub(3)?)?.parse().ok()
    }

    pub fn ppid(&self) -> Option<u32> {
        u32::try_from(self.field(4)?).ok()
    }

    /// When the process started, in clock ticks after boot.
    pub fn start_ticks(&self) -> Option<u64> {
        self.field(22)
    }
}

/// Whether process `pid` exists now (a zombie does, until reaped).
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The `/proc/PID/stat` line of process `pid`, while it lives.
pub fn stat_line(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// What /proc tells of process `pid` now, as the trace would have recorded it had it seen the
/// process start; `None` once it is gone. For processes that started before the probes
/// watched them.
pub fn process(pid: u32) -> Option<Process> {
    let dir = Path::new("/proc").join(pid.to_string());
    let line = fs::read_to_string(dir.join("stat")).ok()?;
    let stat = Stat::parse(&line)?;
    let comm = stat.comm.to_string();
    let ppid = stat.ppid();
    let link = |name: &str| {
        fs::read_link(dir.join(name))
            .ok()
            .map(|p| p.display().to_string())
    };
    let argv = fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Some(Process {
        pid,
        ppid,
        exe: link("exe"),
        argv,
        cwd: link("cwd"),
        comm,
        start_ns: 0,
        exit_ns: None,
        exit_code: None,
        killed_by: None,
        fds: open_files(&dir),
        outside_parent_exe: None,
        looked_up: true,
    })
}

/// The descriptors of the process at `dir` (`/proc/PID`) that name files, as the kernel shows
/// them (at most a few thousand: what directory fds a watch starts with).
fn open_files(dir: &Path) -> HashMap<i32, OpenFile> {
    const MAX: usize = 4096;
    let Ok(entries) = fs::read_dir(dir.join("fd")) else {
        return HashMap::default();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let path = fs::read_link(entry.path()).ok()?;
            let path = path.to_str().filter(|p| p.starts_with('/'))?.to_owned();
            Some((
                fd,
                OpenFile {
                    path: path.into(),
                    cloexec: false,
                },
            ))
        })
        .take(MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_as_the_trace_would_record_it() {
        let me = process(std::process::id()).expect("this process is alive");
        assert_eq!(me.ppid, Some(std::os::unix::process::parent_id()));
        assert_eq!(
            me.exe.as_deref().map(Path::new),
            std::env::current_exe().ok().as_deref()
        );
        assert_eq!(me.argv, std::env::args().collect::<Vec<_>>());
        assert!(!me.comm.is_empty());
    }

    #[test]
    fn a_process_that_is_gone_is_none() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        assert!(process(pid).is_none());
    }
}
