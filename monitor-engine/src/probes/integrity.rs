//! Whether the loaded probes are still the ones monitor set up. Root on the host can change
//! them from outside: rewrite a map with `bpftool map update` (turn a syscall's capture off
//! in `CAPTURE`, delete a job's cgroup from `WATCHED`, so that its syscalls go unrecorded),
//! or make the daemon close its link fds (a debugger injecting `close`). What it cannot do
//! is detach a link from outside: `bpftool link detach` answers EOPNOTSUPP for the perf-event
//! links that attach the tracepoints and kprobes (kernel 6.18).
//!
//! So the checks are: every link fd still holds the link it was given at attach time; every
//! `CAPTURE` entry is what the table says; every watched cgroup is still in `WATCHED` with
//! its watch. Map changes are repaired on the spot (a write of what should be there); a link
//! whose fd was closed is attached again, from the program loaded at start, at its hook.
//! Every finding is still reported: what ran while a link was gone went unrecorded.

use std::{collections::HashMap, fs, os::fd::RawFd};

use super::{
    Object,
    attach::{Hook, Link},
};

/// An attachment as the check follows it.
pub struct Tracked {
    hook: Hook,
    link: Link,
    /// The fd that holds the link and the link's id (a bpf link; kernels before 5.15 attach
    /// perf events without one, and there is nothing to follow).
    held: Option<(RawFd, u32)>,
}

impl Tracked {
    /// `link`, attached at `hook`, found in `fds` (link id to fd, from [`link_fds`]).
    pub fn new(hook: Hook, link: Link, fds: &HashMap<u32, RawFd>) -> Self {
        let held = link.link_id().and_then(|id| Some((*fds.get(&id)?, id)));
        Tracked { hook, link, held }
    }

    pub fn hook(&self) -> &Hook {
        &self.hook
    }

    pub fn fd(&self) -> Option<RawFd> {
        self.held.map(|(fd, _)| fd)
    }

    pub fn into_link(self) -> Link {
        self.link
    }

    /// The fd no longer holds the link it was given.
    fn lost(&self) -> bool {
        self.held
            .is_some_and(|(fd, id)| link_of(fd).map(|(link, _)| link) != Some(id))
    }
}

/// Finds the attachments in `tracked` whose fd was closed under them and attaches each
/// again, unless its link still exists in the kernel: the kernel frees a link whose last fd
/// closed from a workqueue a moment later, and another process may hold it. Either way it
/// still traces, and attaching again now would run its program twice; it is looked at again
/// at the next check. Returns what it found and how many it attached again.
pub fn reattach_lost(tracked: &mut [Tracked], ebpf: &mut Object) -> (Vec<String>, usize) {
    let lost: Vec<usize> = (0..tracked.len()).filter(|&i| tracked[i].lost()).collect();
    if lost.is_empty() {
        return (Vec::new(), 0);
    }
    let alive = live_links();
    let (mut again, mut elsewhere, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for i in lost {
        let Some((_, id)) = tracked[i].held else {
            continue;
        };
        if alive.contains(&id) {
            elsewhere.push(id);
            continue;
        }
        match tracked[i].hook.attach(ebpf) {
            Ok(link) => {
                let fresh = Tracked::new(tracked[i].hook.clone(), link, &link_fds());
                // The old link's fd number is no longer ours (it may be another file of this
                // process by now): dropping the link would close that file, so it is leaked.
                std::mem::forget(std::mem::replace(&mut tracked[i], fresh));
                again.push(id);
            }
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    let closed = again.len() + elsewhere.len() + failed.len();
    let mut problem = format!(
        "{closed} of {} probe attachments were closed from outside (link ids {:?})",
        tracked.len(),
        [&again[..], &elsewhere[..]].concat()
    );
    if !again.is_empty() {
        problem.push_str(&format!("; {} attached again", again.len()));
    }
    if !elsewhere.is_empty() {
        problem.push_str(&format!(
            "; links {elsewhere:?} still exist in the kernel (being freed, or held by another \
             process: still attached; attached again once they are gone)"
        ));
    }
    if !failed.is_empty() {
        problem.push_str(&format!(
            "; attaching again failed (retried at the next check): {}",
            failed.join(", ")
        ));
    }
    (vec![problem], again.len())
}

/// The ids of the bpf links that exist in the kernel now.
fn live_links() -> Vec<u32> {
    aya::programs::loaded_links()
        .filter_map(|info| info.ok().map(|info| info.id()))
        .collect()
}

/// The bpf link fds this process holds now, by link id.
pub fn link_fds() -> HashMap<u32, RawFd> {
    let Ok(dir) = fs::read_dir("/proc/self/fdinfo") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            Some((link_of(fd)?.0, fd))
        })
        .collect()
}

/// The ids of the bpf link behind `fd` and of its program, if it is a link.
fn link_of(fd: RawFd) -> Option<(u32, u32)> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("link_id:")?, field("prog_id:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fd_that_is_not_a_link_holds_no_link() {
        // fd 0 is never a bpf link in a test.
        assert_eq!(link_of(0), None);
        assert!(!link_fds().values().any(|&fd| fd == 0));
    }
}
