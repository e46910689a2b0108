//! Whether the loaded probes are still the ones monitor set up. Root on the host can change
//! them from outside: rewrite a map with `bpftool map update` (turn a syscall's capture off
//! in `CAPTURE`, delete a job's cgroup from `WATCHED`, so that its syscalls go unrecorded),
//! or make the daemon close its link fds (a debugger injecting `close`). What it cannot do
//! is detach a link from outside: `bpftool link detach` answers EOPNOTSUPP for the perf-event
//! links that attach the tracepoints and kprobes (kernel 6.18).
//!
//! So the checks are: every link fd still holds the link it was given at attach time; every
//! `CAPTURE` entry is what the table says; every watched cgroup is still in `WATCHED` with
//! its watch. Map changes are repaired on the spot (a write of what should be there); a lost
//! link is only reported (re-attaching needs the program, loaded once at start).

use std::{fs, os::fd::RawFd};

/// The link fds this process holds to programs `programs`, with their kernel link ids.
/// (Other loaded probes in this process, a test's say, hold links of their own.)
pub fn link_fds(programs: &[u32]) -> Vec<(RawFd, u32)> {
    let Ok(dir) = fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let (link, program) = link_of(fd)?;
            programs.contains(&program).then_some((fd, link))
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

/// Problems with `links` (fd, link id): each fd that no longer holds its link.
pub fn lost_links(links: &[(RawFd, u32)]) -> Vec<String> {
    let lost: Vec<u32> = links
        .iter()
        .filter(|&&(fd, id)| link_of(fd).map(|(link, _)| link) != Some(id))
        .map(|&(_, id)| id)
        .collect();
    if lost.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "{} of {} probe attachments were closed from outside (link ids {:?}); restart monitord \
         to attach them again",
        lost.len(),
        links.len(),
        lost
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fd_that_is_not_a_link_is_a_lost_link() {
        // fd 0 is never a bpf link in a test.
        let problems = lost_links(&[(0, 1)]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("link ids [1]"), "{problems:?}");
        assert!(lost_links(&[]).is_empty());
    }
}
