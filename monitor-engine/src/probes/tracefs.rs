//! tracefs: where the tracepoints are described. Mounted on demand, and read for the field
//! offsets of the running kernel (they change between kernel versions): the process
//! tracepoints always, the syscall ones for the fallback from kprobes.

use std::{
    fs,
    path::{Path, PathBuf},
};

use monitor_common::event::TracepointOffsets;

use super::ProbeError;

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
    pub fn find_or_mount() -> Result<Self, ProbeError> {
        if let Some(root) = MOUNT_POINTS
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
        {
            return Ok(Tracefs {
                root: root.to_owned(),
            });
        }
        let target = Path::new(MOUNT_POINTS[0]);
        tracing::info!(path = %target.display(), "tracefs is not mounted; mounting it");
        nix::mount::mount(
            Some("tracefs"),
            target,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| ProbeError::TracefsMount {
            path: target.to_owned(),
            errno,
        })?;
        Ok(Tracefs {
            root: target.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `category:name` exists on this kernel.
    pub fn has_event(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    /// The fields of tracepoint `category:name`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, ProbeError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| ProbeError::TracepointMissing {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(&text))
    }

    /// Reads every offset the kernel programs need. The syscall tracepoints' are needed only
    /// without kprobes (`syscall_tracepoints`); they are left 0 otherwise.
    pub fn offsets(&self, syscall_tracepoints: bool) -> Result<TracepointOffsets, ProbeError> {
        let fork = self.format("sched", "sched_process_fork")?;
        let exec = self.format("sched", "sched_process_exec")?;
        let exit_proc = self.format("sched", "sched_process_exit")?;
        let mkdir = self.format("cgroup", "cgroup_mkdir")?;
        let need = |f: &Format, event: &'static str, field: &'static str| {
            f.offset(field)
                .ok_or(ProbeError::FieldMissing { event, field })
        };
        let mut offsets = TracepointOffsets {
            fork_child_pid: need(&fork, "sched_process_fork", "child_pid")?,
            exec_filename_loc: need(&exec, "sched_process_exec", "filename")?,
            exec_old_pid: need(&exec, "sched_process_exec", "old_pid")?,
            exit_group_dead: exit_proc.offset("group_dead").unwrap_or(u16::MAX),
            cgroup_root: need(&mkdir, "cgroup_mkdir", "root")?,
            cgroup_id: need(&mkdir, "cgroup_mkdir", "id")?,
            cgroup_path_loc: need(&mkdir, "cgroup_mkdir", "path")?,
            ..TracepointOffsets::default()
        };
        // The programs read cgroup_rmdir with cgroup_mkdir's offsets.
        let rmdir = self.format("cgroup", "cgroup_rmdir")?;
        for field in ["root", "id", "path"] {
            if rmdir.offset(field) != mkdir.offset(field) {
                return Err(ProbeError::FieldMissing {
                    event: "cgroup_rmdir (laid out as cgroup_mkdir)",
                    field,
                });
            }
        }
        if syscall_tracepoints {
            // Every sys_enter_* / sys_exit_* event shares one layout; openat stands for all.
            let enter = self.format("syscalls", "sys_enter_openat")?;
            let exit = self.format("syscalls", "sys_exit_openat")?;
            offsets.enter_nr = need(&enter, "sys_enter_openat", "__syscall_nr")?;
            offsets.enter_args = need(&enter, "sys_enter_openat", "dfd")?;
            offsets.exit_nr = need(&exit, "sys_exit_openat", "__syscall_nr")?;
            offsets.exit_ret = need(&exit, "sys_exit_openat", "ret")?;
        }
        Ok(offsets)
    }
}

/// The field list of a tracepoint `format` file.
#[derive(Debug, Default)]
pub struct Format {
    fields: Vec<(String, u16)>,
}

impl Format {
    /// Parses lines like `field:const char * filename; offset:24; size:8; signed:0;` (tab
    /// separated).
    pub fn parse(text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim().strip_prefix("field:")?;
                let (decl, rest) = line.split_once(';')?;
                let name = decl.split_whitespace().last()?;
                let name = name.split('[').next()?.trim_start_matches('*');
                let offset = rest
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("offset:"))?;
                Some((name.to_owned(), offset.trim().parse().ok()?))
            })
            .collect();
        Format { fields }
    }

    pub fn offset(&self, field: &str) -> Option<u16> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|&(_, off)| off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork\nID: 366\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";

    #[test]
    fn parses_data_loc_arrays_and_pointers() {
        let f = Format::parse(FORK_6_18);
        assert_eq!(f.offset("child_pid"), Some(20));
        assert_eq!(f.offset("parent_comm"), Some(8));
        assert_eq!(f.offset("common_pid"), Some(4));
        assert_eq!(f.offset("nope"), None);
        let f = Format::parse(
            "\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;",
        );
        assert_eq!(f.offset("filename"), Some(24));
        assert_eq!(f.offset("comm"), Some(8));
    }
}
