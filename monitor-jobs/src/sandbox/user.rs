//! Who a job runs as: by default a user of its own, taken for the sandbox's life from a range
//! no account uses. What the kernel counts per user (RLIMIT_NPROC, where a fork bomb stops) is
//! then counted per job, so a bomb in one scan cannot starve the scans beside it, and one
//! job's processes cannot signal or trace another's.

use std::{collections::BTreeSet, fs, os::unix::fs::MetadataExt as _, sync::Mutex};

/// The first uid (and gid) of the range jobs run as: far above the accounts and the subuid
/// ranges that system tools hand out.
pub const FIRST_JOB_UID: u32 = 0x6d6f_0000;
/// How many uids the range holds: more jobs than can ever run at once.
pub const JOB_UIDS: u32 = 4096;

/// The account name a job sees itself as (`USER`, and its line in the sandbox's
/// /etc/passwd).
pub const JOB_USER_NAME: &str = "user";

/// The uid and gid a job sees itself as inside its user namespace: those of the first user
/// account a Linux installer makes, not the high uid of the job range it runs as outside (a
/// tell of a sandbox). The kernel, the probes and the limits see the real one.
pub const INSIDE_ID: u32 = 1000;

/// Who a sandbox's job runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxUser {
    /// A uid of its own from the job range ([`FIRST_JOB_UID`]).
    PerJob,
    /// These ids, shared with whatever else runs as them.
    Fixed { uid: u32, gid: u32 },
}

/// Uids of the job range that sandboxes of this process hold.
static TAKEN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// The ids a sandbox runs its job as, held until dropped.
#[derive(Debug)]
pub struct Lease {
    pub uid: u32,
    pub gid: u32,
    from_range: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("all {JOB_UIDS} job users (uids {FIRST_JOB_UID}..) are in use")]
pub struct NoFreeUser;

impl Lease {
    /// Takes the ids `user` says. A per-job uid is one no sandbox of this process holds and no
    /// process on the host runs as (so two daemons, or a daemon and an in-process
    /// `monitorctl scan`, do not share one either, short of a race at the same instant; each
    /// process starts looking at its own place in the range to make that rarer).
    pub fn take(user: SandboxUser) -> Result<Lease, NoFreeUser> {
        let SandboxUser::Fixed { uid, gid } = user else {
            return Self::take_from_range();
        };
        Ok(Lease {
            uid,
            gid,
            from_range: false,
        })
    }

    fn take_from_range() -> Result<Lease, NoFreeUser> {
        let running = uids_running();
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        let start = std::process::id().wrapping_mul(97) % JOB_UIDS;
        let uid = (0..JOB_UIDS)
            .map(|k| FIRST_JOB_UID + (start + k) % JOB_UIDS)
            .find(|uid| !taken.contains(uid) && !running.contains(uid))
            .ok_or(NoFreeUser)?;
        taken.insert(uid);
        Ok(Lease {
            uid,
            gid: uid,
            from_range: true,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.from_range {
            TAKEN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.uid);
        }
    }
}

/// Whether `uid` is one of the job range.
pub fn is_job_uid(uid: u32) -> bool {
    (FIRST_JOB_UID..FIRST_JOB_UID + JOB_UIDS).contains(&uid)
}

/// The job-range uids that processes on the host run as now (/proc/PID is owned by the
/// process's effective uid).
fn uids_running() -> BTreeSet<u32> {
    monitor_engine::procfs::pids()
        .into_iter()
        .filter_map(|pid| fs::metadata(format!("/proc/{pid}")).ok())
        .map(|m| m.uid())
        .filter(|&uid| is_job_uid(uid))
        .collect()
}

/// The sandbox's /etc/passwd: the host's, with the job's user added, so that looking itself up
/// gives the job the name, home and shell its environment claims (`nobody` with a home of
/// `/nonexistent` beside `USER=user` told a payload it was in a sandbox).
pub fn passwd(host: &str, uid: u32, gid: u32, home: &str) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| {
            let mut fields = l.split(':');
            fields.next() != Some(JOB_USER_NAME) && fields.nth(1) != Some(&uid.to_string())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!(
        "{JOB_USER_NAME}:x:{uid}:{gid}:ML worker:{home}:/bin/bash\n"
    ));
    out
}

/// The sandbox's /etc/group: the host's, with the job's group added.
pub fn group(host: &str, gid: u32) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| {
            let mut fields = l.split(':');
            fields.next() != Some(JOB_USER_NAME) && fields.nth(1) != Some(&gid.to_string())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{JOB_USER_NAME}:x:{gid}:\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_at_once_get_users_of_their_own_and_give_them_back() {
        let a = Lease::take(SandboxUser::PerJob).unwrap();
        let b = Lease::take(SandboxUser::PerJob).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(is_job_uid(a.uid) && is_job_uid(b.uid));
        assert_eq!(a.gid, a.uid);
        let uid = a.uid;
        drop(a);
        assert!(!TAKEN.lock().unwrap().contains(&uid), "given back");
        let fixed = Lease::take(SandboxUser::Fixed {
            uid: 65534,
            gid: 65534,
        })
        .unwrap();
        assert_eq!((fixed.uid, fixed.gid), (65534, 65534));
    }

    #[test]
    fn the_job_user_is_in_passwd_and_group_once() {
        let host = "root:x:0:0:root:/root:/bin/bash\nuser:x:1001:1001::/home/user:/bin/sh\n\
                    admin:x:1000:1000::/home/admin:/bin/sh\n";
        let p = passwd(host, 1000, 1000, "/home/user");
        assert!(p.starts_with("root:x:0:0:"));
        assert_eq!(p.matches("\nuser:").count(), 1);
        assert!(!p.contains("admin"), "the uid is the job's alone: {p}");
        assert!(p.ends_with("user:x:1000:1000:ML worker:/home/user:/bin/bash\n"));
        let g = group("root:x:0:\nuser:x:1001:\nadmin:x:7:\n", 7);
        assert_eq!(g, "root:x:0:\nuser:x:7:\n");
    }
}
