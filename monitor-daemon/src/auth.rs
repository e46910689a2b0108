//! Who may do what over the API. The kernel names each connection's peer (SO_PEERCRED, read
//! by `serve` when it accepts), `[roles]` gives it a role, and each handler asks for the role
//! it needs ([`Caller::require`]); what a caller may see of scans, findings and watches
//! depends on the role too ([`Caller::may_see`]). Every request is written to the log with the
//! caller's uid ([`audit`]).

use std::{collections::HashMap, path::Path, sync::Arc, time::Instant};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{StatusCode, request::Parts},
    middleware::Next,
    response::Response,
};

use crate::Shared;
use crate::api::ApiError;
use crate::config::RolesConfig;
use monitor_engine::creds::Credentials;
use monitor_watch::{Selector, WatchSpec};

pub use monitor_api::status::Role;

/// `[roles]` with its names looked up.
#[derive(Debug, Default)]
pub struct Roles {
    users: HashMap<u32, Role>,
    groups: HashMap<u32, Role>,
}

impl Roles {
    /// Looks the names up (once, at start: the system's user database may be slow). A name
    /// that is no user or group here is logged and skipped: it grants nothing.
    pub fn resolve(config: &RolesConfig) -> Roles {
        let mut roles = Roles::default();
        for (role, users, groups) in [
            (Role::Scan, &config.scan_users, &config.scan_groups),
            (Role::Read, &config.read_users, &config.read_groups),
            (Role::Admin, &config.admin_users, &config.admin_groups),
        ] {
            for name in users {
                match nix::unistd::User::from_name(name) {
                    Ok(Some(user)) => grant(&mut roles.users, user.uid.as_raw(), role),
                    _ => {
                        tracing::warn!(user = %name, role = role.name(), "[roles] names no user of this host")
                    }
                }
            }
            for name in groups {
                match nix::unistd::Group::from_name(name) {
                    Ok(Some(group)) => grant(&mut roles.groups, group.gid.as_raw(), role),
                    // The default names the socket's group, which a host may not have.
                    _ => {
                        tracing::info!(group = %name, role = role.name(), "[roles] names no group of this host")
                    }
                }
            }
        }
        roles
    }

    /// The role of a user: root's is admin; else the highest that names them or one of
    /// their groups.
    pub fn of(&self, creds: &Credentials) -> Option<Role> {
        if creds.is_root() {
            return Some(Role::Admin);
        }
        let by_group = std::iter::once(creds.gid)
            .chain(creds.groups.iter().copied())
            .filter_map(|gid| self.groups.get(&gid).copied());
        self.users
            .get(&creds.uid)
            .copied()
            .into_iter()
            .chain(by_group)
            .max()
    }
}

fn grant(map: &mut HashMap<u32, Role>, id: u32, role: Role) {
    let held = map.entry(id).or_insert(role);
    *held = (*held).max(role);
}

/// The peer of an API connection, as the kernel named it when it connected.
#[derive(Debug, Clone)]
pub struct Peer {
    pub creds: Credentials,
    pub pid: i32,
}

/// Who sent a request, and their role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub creds: Credentials,
    pub pid: i32,
    pub role: Option<Role>,
}

impl Caller {
    pub fn uid(&self) -> u32 {
        self.creds.uid
    }

    /// A 403 unless the caller holds `role` (or a higher one).
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= Some(role) {
            return Ok(());
        }
        let held = match self.role {
            Some(held) => format!("the {} role", held.name()),
            None => "no role".into(),
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; uid {} has {held} (see [roles] in monitord's \
                 configuration)",
                role.name(),
                self.uid()
            ),
        ))
    }

    /// Whether the caller sees what everyone submitted (`read` and `admin`), not only their
    /// own.
    pub fn sees_everything(&self) -> bool {
        self.role >= Some(Role::Read)
    }

    /// Whether the caller may see a scan or watch of `owner` (`None`: the daemon's own, or
    /// one stored before owners were).
    pub fn may_see(&self, owner: Option<u32>) -> bool {
        self.sees_everything() || owner == Some(self.uid())
    }

    /// The owner to filter lists by: `None` for a caller who sees everything.
    pub fn only_own(&self) -> Option<u32> {
        (!self.sees_everything()).then_some(self.uid())
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<Peer>().ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the caller's credentials are unknown (not the API socket)",
            )
        })?;
        Ok(Caller {
            creds: peer.creds.clone(),
            pid: peer.pid,
            role: shared.roles.of(&peer.creds),
        })
    }
}

/// Writes one line per request to the log (target `monitord::audit`): who (uid, pid, role),
/// what (method, path), and the answer (status, milliseconds).
pub async fn audit(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let peer = request.extensions().get::<Peer>().cloned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    match peer {
        Some(peer) => {
            let role = shared.roles.of(&peer.creds).map_or("none", Role::name);
            tracing::info!(
                target: "monitord::audit",
                uid = peer.creds.uid,
                gid = peer.creds.gid,
                pid = peer.pid,
                role,
                %method,
                path,
                status,
                ms,
                "request"
            );
        }
        None => tracing::info!(target: "monitord::audit", %method, path, status, ms, "request"),
    }
    response
}

/// Whether `caller` may start a watch of `spec`. Nobody watches the root cgroup (every
/// process of the host), a cgroup that holds monitord or its jobs, PID 1 or monitord itself;
/// a caller below admin watches only processes and cgroups they own, never an executable
/// (every user's processes that run it), and reports only (no kill policy).
pub fn check_watch(caller: &Caller, spec: &WatchSpec, cgroup_root: &Path) -> Result<(), ApiError> {
    let refused = |why: String| Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden_watch", why));
    let admin = caller.role >= Some(Role::Admin);
    match &spec.selector {
        Selector::Cgroup(path) => {
            if path == cgroup_root {
                return refused("the root cgroup holds every process of the host".into());
            }
            if let Some(own) = own_cgroup(cgroup_root)
                && own.starts_with(path)
            {
                return refused(format!("cgroup {} holds monitord itself", path.display()));
            }
            // monitor's job cgroups: `monitor/` holds them, `run-<pid>-*` are this daemon's.
            let jobs = cgroup_root.join(monitor_engine::cgroup::PARENT);
            let ours = format!("run-{}-", std::process::id());
            let is_ours = path.strip_prefix(&jobs).ok().is_some_and(|rel| {
                rel.as_os_str().is_empty() || rel.to_string_lossy().starts_with(&ours)
            });
            if is_ours {
                return refused(format!(
                    "cgroup {} holds monitord's own jobs",
                    path.display()
                ));
            }
            if !admin && owner_of(path) != Some(caller.uid()) {
                return refused(format!(
                    "cgroup {} is not yours (uid {}): watching it needs the admin role",
                    path.display(),
                    caller.uid()
                ));
            }
        }
        Selector::Pid { pid, .. } => {
            if *pid == std::process::id() {
                return refused("that is monitord itself".into());
            }
            if !admin && !runs_as(*pid, caller.uid()) {
                return refused(format!(
                    "process {pid} is not yours (uid {}): watching it needs the admin role",
                    caller.uid()
                ));
            }
        }
        Selector::Executable(path) => {
            let me = std::fs::canonicalize("/proc/self/exe").ok();
            if me.is_some() && std::fs::canonicalize(path).ok() == me {
                return refused("that is monitord itself".into());
            }
            if !admin {
                return refused(
                    "a watch of an executable selects every user's processes that run it: it \
                     needs the admin role"
                        .into(),
                );
            }
        }
        Selector::Discovery { .. } => {
            return refused("discovery is started by monitord's configuration".into());
        }
    }
    check_policy(caller, &spec.policy)
}

/// Whether `caller` may give a watch `policy`: below admin a watch only reports, so a kill
/// policy (which kills processes, in the kernel or from monitord) needs the admin role.
pub fn check_policy(caller: &Caller, policy: &monitor_watch::Policy) -> Result<(), ApiError> {
    if caller.role < Some(Role::Admin)
        && (policy.kill_at.is_some() || !policy.kill_in_kernel.is_empty())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_watch",
            "a kill policy (kill_at, kill_in_kernel) needs the admin role",
        ));
    }
    Ok(())
}

/// Whether `caller` may change watch `status` (its policy, a learning window, removing it):
/// its owner may, and an admin; seeing every watch (`read`) is not changing them.
pub fn check_watch_owner(
    caller: &Caller,
    status: &crate::watches::WatchStatus,
) -> Result<(), ApiError> {
    if status.owner_uid != Some(caller.uid()) {
        caller.require(Role::Admin)?;
    }
    Ok(())
}

/// The cgroup monitord runs in, under the cgroup2 mount (cgroup v2: the line `0::/path`).
fn own_cgroup(cgroup_root: &Path) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup_root.join(rel.trim_start_matches('/')))
}

fn owner_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.uid())
}

/// Whether process `pid` runs as `uid` and nothing else: real, effective, saved and
/// file-system uid (a set-uid program the user started runs as its owner, not as them).
fn runs_as(pid: u32, uid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() == 4 && ids.iter().all(|id| id.parse() == Ok(uid))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn a_caller_holds_the_highest_role_naming_them_or_a_group_and_root_is_admin() {
        let mut roles = Roles::default();
        grant(&mut roles.groups, 100, Role::Scan);
        grant(&mut roles.groups, 200, Role::Read);
        grant(&mut roles.users, 1001, Role::Admin);
        grant(&mut roles.users, 1002, Role::Scan);
        assert_eq!(roles.of(&creds(0, 0, &[])), Some(Role::Admin));
        assert_eq!(roles.of(&creds(1000, 100, &[])), Some(Role::Scan));
        assert_eq!(roles.of(&creds(1000, 5, &[100, 200])), Some(Role::Read));
        assert_eq!(roles.of(&creds(1001, 5, &[])), Some(Role::Admin));
        assert_eq!(roles.of(&creds(1002, 200, &[])), Some(Role::Read));
        assert_eq!(roles.of(&creds(1003, 5, &[6])), None);
        let caller = Caller {
            creds: creds(1000, 100, &[]),
            pid: 1,
            role: Some(Role::Scan),
        };
        assert!(caller.require(Role::Scan).is_ok());
        assert!(caller.require(Role::Read).is_err());
        assert!(caller.may_see(Some(1000)) && !caller.may_see(Some(1001)));
        assert!(!caller.may_see(None));
        assert_eq!(caller.only_own(), Some(1000));
    }

    #[test]
    fn a_process_runs_as_a_user_only_when_every_uid_is_theirs() {
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        assert!(runs_as(me, uid));
        assert!(!runs_as(me, uid + 1));
        assert!(!runs_as(u32::MAX, uid), "no such process");
    }
}
