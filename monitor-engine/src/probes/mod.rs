//! The kernel side, seen from user space: load the programs, attach them to the kernel
//! function of every syscall of the table (a kprobe at entry, a kretprobe at return) and to
//! the process tracepoints, fill the capture map, and manage which cgroups are watched.

mod attach;
mod btf;
mod integrity;
mod object;
pub mod pins;
mod tracefs;

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::ProgramError,
    util::nr_cpus,
};
use monitor_common::{
    event::{
        CAPTURE_ENTRIES, COUNTERS, CaptureSpec, Counter, Discovery, ExecKey, FileOffsets,
        KillPolicy, ONLY_IF_ANY_BIT, ONLY_IF_NONE, ONLY_IF_ONE_OF, PathKey, WATCH_FOLLOW_FORKS,
        Watch, WatchCounts,
    },
    syscall::{ArgTest, Effect, MAX_ARGS, SYSCALLS, Syscall},
};

pub use self::attach::{HooksState, SyscallHooks};
use self::{
    attach::{Adopted, Link, SyscallLinks, attach_all},
    integrity::Tracked,
    object::Object,
};

pub use tracefs::{Format, Tracefs};

/// The kernel object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Why the probes could not be loaded. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); run as root")]
    NotRoot,
    #[error(
        "the kernel's BTF ({}) is missing: monitor needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y, and /sys/kernel/btf visible to it",
        .0.display()
    )]
    NoBtf(PathBuf),
    #[error(
        "tracefs (the kernel's tracepoint descriptions) is mounted neither at /sys/kernel/tracing \
         nor at /sys/kernel/debug/tracing, and mounting it at {} failed: {errno}; mount it \
         (`mount -t tracefs tracefs /sys/kernel/tracing`) or give monitor a view of /sys \
         that has it",
        path.display()
    )]
    TracefsMount {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("tracepoint description {} is unreadable: {source} (kernel without CONFIG_TRACEPOINTS?)", path.display())]
    TracepointMissing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {event} has no field `{field}` on this kernel")]
    FieldMissing {
        event: &'static str,
        field: &'static str,
    },
    #[error(
        "this binary was built without kernel programs (AYA_BUILD_SKIP); rebuild after `cargo xtask setup`"
    )]
    NoObject,
    #[error("ring buffer size {0} is not a power-of-two multiple of the page size")]
    RingBufferSize(u32),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: String, source: ProgramError },
    #[error("the link of {name}: {source}")]
    Link {
        name: String,
        source: aya::programs::links::LinkError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("building per-CPU map values: {0}")]
    PerCpu(std::io::Error),
    #[error("counting CPUs failed: {0}")]
    Cpus(String),
    #[error("watch {0} is registered already")]
    WatchExists(u64),
    #[error("no watch {0}")]
    NoSuchWatch(u64),
}

/// Load-time settings.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Size of the ring buffer in bytes: a power-of-two multiple of the page size.
    pub ring_buffer_bytes: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            ring_buffer_bytes: monitor_common::event::RING_BUFFER_DEFAULT_BYTES,
        }
    }
}

/// What the kernel counted of one program while its run-time statistics were on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRuns {
    pub name: String,
    /// Time spent in the program, all runs together.
    pub time: Duration,
    pub runs: u64,
}

impl ProgramRuns {
    /// What each program of `after` did since `before`, two readings of
    /// [`Probes::program_runs`] (a program is matched by name; one missing from `before`
    /// is left out).
    pub fn since(after: Vec<ProgramRuns>, before: &[ProgramRuns]) -> Vec<ProgramRuns> {
        after
            .into_iter()
            .filter_map(|now| {
                let then = before.iter().find(|p| p.name == now.name)?;
                Some(ProgramRuns {
                    time: now.time.saturating_sub(then.time),
                    runs: now.runs.saturating_sub(then.runs),
                    name: now.name,
                })
            })
            .collect()
    }
}

/// The totals of the kernel programs' per-CPU counters (see [`Counter`]), reported by their
/// names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters([u64; COUNTERS as usize]);

impl KernelCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// Each counter's status key and total.
    pub fn by_key(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c.key(), self.get(c)))
    }
}

impl serde::Serialize for KernelCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(Counter::ALL.len()))?;
        for (key, total) in self.by_key() {
            map.serialize_entry(key, &total)?;
        }
        map.end()
    }
}

/// One watch's own counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchCounters {
    pub events: u64,
    pub dropped: u64,
    /// Tasks the kernel killed by the watch's policy.
    pub killed: u64,
}

/// What a watch selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every task of a cgroup (by id).
    Cgroup(u64),
    /// Every task of a cgroup, and of every cgroup made under it from now on: the kernel adds
    /// those as `mkdir` makes them. `path` is the cgroup's under the cgroup2 root.
    CgroupTree { id: u64, path: PathKey },
    /// One process (and, with `WATCH_FOLLOW_FORKS`, what it starts).
    Process(u32),
    /// Every process that executes this path from now on, as by [`Target::Process`].
    Executable(PathKey),
}

/// A watch as user space registered it.
struct Registered {
    watch: Watch,
    targets: Vec<Target>,
    /// What it kills in the kernel, and the programs it lets run although it kills execs.
    kill: KillPolicy,
    allowed: Vec<PathKey>,
}

/// The loaded and attached kernel programs.
pub struct Probes {
    /// The process and cgroup tracepoints' attachments. Owned here rather than by the
    /// programs so that [`Drop`] can detach them in parallel, and [`check`](Self::check)
    /// attach again one whose fd was closed.
    links: Vec<Tracked>,
    /// The syscall hooks' attachments, which can be detached while nothing is watched.
    syscalls: SyscallLinks,
    hooks: SyscallHooks,
    ebpf: Object,
    watched: HashMap<MapData, u64, Watch>,
    watched_tasks: HashMap<MapData, u32, Watch>,
    watched_cgroup_paths: HashMap<MapData, PathKey, Watch>,
    watched_exes: HashMap<MapData, PathKey, Watch>,
    kill_policies: HashMap<MapData, u64, KillPolicy>,
    exec_allowed: HashMap<MapData, ExecKey, u8>,
    watch_counts: PerCpuHashMap<MapData, u64, WatchCounts>,
    discovery: Array<MapData, Discovery>,
    registry: StdHashMap<u64, Registered>,
    counters: PerCpuArray<MapData, u64>,
    capture: Array<MapData, CaptureSpec>,
    events: Option<RingBuf<MapData>>,
    cpus: usize,
    /// Attachments attached again since load, after their fds were closed from outside.
    reattached: u64,
    missing: Vec<String>,
    origin: Origin,
    /// The pinned set's slot, held (locked) while these probes live.
    slot: Option<pins::Slot>,
    /// Links taken over attached from the slot's last holder (see [`pins`]).
    adopted: usize,
}

/// Where a [`Probes`]' programs and maps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Loaded and verified now.
    Loaded,
    /// Loaded and verified now, and pinned for the next embedded scan.
    Pinned,
    /// Opened from a pinned set: only attached now.
    Reused,
}

/// What a load needs from the host, found before anything is loaded.
struct Setup {
    ring_buffer_bytes: u32,
    tracefs: Tracefs,
    hooks: SyscallHooks,
    offsets: monitor_common::event::TracepointOffsets,
    wakeup_bytes: u64,
}

impl Setup {
    fn new(config: &ProbeConfig) -> Result<Self, ProbeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProbeError::NotRoot);
        }
        let btf = Path::new("/sys/kernel/btf/vmlinux");
        if !btf.exists() {
            return Err(ProbeError::NoBtf(btf.to_owned()));
        }
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u32;
        let size = config.ring_buffer_bytes;
        if !monitor_common::event::ring_buffer_bytes_ok(size)
            || size < page
            || !size.is_multiple_of(page)
            || !(size / page).is_power_of_two()
        {
            return Err(ProbeError::RingBufferSize(size));
        }
        raise_memlock_limit();

        let tracefs = Tracefs::find_or_mount()?;
        let hooks = SyscallHooks::detect();
        if hooks == SyscallHooks::Tracepoints {
            tracing::info!(
                "this kernel has no kprobes (CONFIG_KPROBES): syscalls are hooked on their \
                 tracepoints, which slow every syscall of every process while attached"
            );
        }
        let offsets = tracefs.offsets(hooks == SyscallHooks::Tracepoints)?;
        Ok(Setup {
            ring_buffer_bytes: size,
            tracefs,
            hooks,
            offsets,
            wakeup_bytes: wakeup_bytes(size),
        })
    }

    /// Parses, relocates and creates the maps of the object (its programs are verified at
    /// their first attach, or by [`attach::load_programs`]).
    fn load(&self) -> Result<Ebpf, ProbeError> {
        let found = btf_offsets();
        Ok(EbpfLoader::new()
            .override_global("TP_OFFSETS", &self.offsets, true)
            .override_global("FILE_OFFSETS", &found.file, true)
            .override_global("TASK_EXIT_CODE", &found.task_exit_code, true)
            .override_global("WAKEUP_BYTES", &self.wakeup_bytes, true)
            .map_max_entries("EVENTS", self.ring_buffer_bytes)
            .load(OBJECT)?)
    }

    /// Names what this load makes: the object and every setting that changes a program or a
    /// map. The file offsets (from the kernel's BTF, 0.1 s to parse) are the running kernel's:
    /// its boot id stands for them (bpffs is emptied at a reboot anyway). Pins of another key
    /// are never opened.
    fn key(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut hash = Sha256::new();
        hash.update(OBJECT);
        let capture: Vec<CaptureSpec> = SYSCALLS.iter().map(capture_spec).collect();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        hash.update(format!(
            "ring {} wakeup {} hooks {:?} offsets {:?} boot {} capture {:?}",
            self.ring_buffer_bytes,
            self.wakeup_bytes,
            self.hooks,
            self.offsets,
            boot.trim(),
            capture
        ));
        hash.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Probes {
    /// Loads the programs into the kernel and attaches them. Nothing is recorded until a cgroup
    /// is [`watch`](Self::watch)ed.
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        let setup = Setup::new(config)?;
        let object = Object::Fresh(setup.load()?);
        Self::start(object, &setup, None, Origin::Loaded, Adopted::default())
    }

    /// Probes for an embedded scan or run (no daemon): those pinned in bpffs under
    /// [`pins::root_from_env`] when a set fits, loaded fresh (and pinned for the next time)
    /// otherwise.
    pub fn load_embedded(config: &ProbeConfig) -> Result<Self, ProbeError> {
        match pins::root_from_env() {
            Some(root) => Self::load_pinned(config, &root),
            None => Self::load(config),
        }
    }

    /// Probes from the set pinned under `root` for this binary and `config` (see [`pins`]):
    /// opened, checked, their maps reset, and attached; or, where there is none yet, loaded
    /// fresh and pinned there. Any problem with the pins means a fresh load, said in the log.
    pub fn load_pinned(config: &ProbeConfig, root: &Path) -> Result<Self, ProbeError> {
        let started = std::time::Instant::now();
        let setup = Setup::new(config)?;
        let key = setup.key();
        let programs = attach::programs(setup.hooks);
        let taken = pins::take(root, &key, &programs);
        let probes = match taken {
            Ok(pins::Taken::Reused(slot, object, links)) => {
                let adopted = links
                    .into_iter()
                    .map(|(hook, link)| (hook, Link::Fd(link)))
                    .collect();
                let adopted = Adopted::new(adopted);
                match Self::start(object, &setup, Some(slot), Origin::Reused, adopted) {
                    Ok(probes) => Ok(probes),
                    Err(e) => {
                        tracing::warn!("the pinned probes failed ({e}); loading them fresh");
                        Self::load(config)
                    }
                }
            }
            Ok(pins::Taken::Empty(slot)) => {
                let mut object = Object::Fresh(setup.load()?);
                attach::load_programs(&mut object, setup.hooks)?;
                match pins::pin(&slot, &mut object, &programs) {
                    Ok(()) => {
                        pins::remove_other_keys(root, &key);
                        Self::start(
                            object,
                            &setup,
                            Some(slot),
                            Origin::Pinned,
                            Adopted::default(),
                        )
                    }
                    Err(e) => {
                        tracing::warn!("{e}; the probes stay unpinned");
                        Self::start(object, &setup, None, Origin::Loaded, Adopted::default())
                    }
                }
            }
            Ok(pins::Taken::Busy) => {
                tracing::info!("probes: every pinned set is in use; loading them fresh");
                Self::load(config)
            }
            Err(e) => {
                tracing::warn!("not using pinned probes: {e}; loading them fresh");
                Self::load(config)
            }
        }?;
        let ms = started.elapsed().as_millis() as u64;
        match (probes.origin, probes.slot.as_ref()) {
            (Origin::Reused, Some(slot)) => tracing::info!(
                ms,
                dir = %slot.dir().display(),
                adopted = probes.adopted,
                "probes: reused pinned programs"
            ),
            (Origin::Pinned, Some(slot)) => tracing::info!(
                ms,
                dir = %slot.dir().display(),
                "probes: loaded and pinned for the next scan"
            ),
            _ => tracing::info!(ms, "probes: loaded"),
        }
        Ok(probes)
    }

    /// Takes the maps out of `object`, fills the capture table and attaches every hook (those
    /// in `adopted` are attached already: taken over as they are).
    fn start(
        mut object: Object,
        setup: &Setup,
        slot: Option<pins::Slot>,
        origin: Origin,
        mut adopted: Adopted,
    ) -> Result<Self, ProbeError> {
        let handed_over = adopted.len();
        let watched = map_as(&mut object, "WATCHED", HashMap::try_from)?;
        let watched_tasks = map_as(&mut object, "WATCHED_TASKS", HashMap::try_from)?;
        let watched_cgroup_paths = map_as(&mut object, "WATCHED_CGROUP_PATHS", HashMap::try_from)?;
        let watched_exes = map_as(&mut object, "WATCHED_EXES", HashMap::try_from)?;
        let kill_policies = map_as(&mut object, "KILL_POLICIES", HashMap::try_from)?;
        let exec_allowed = map_as(&mut object, "EXEC_ALLOWED", HashMap::try_from)?;
        let watch_counts = map_as(&mut object, "WATCH_COUNTS", PerCpuHashMap::try_from)?;
        let discovery = map_as(&mut object, "DISCOVERY", Array::try_from)?;
        let counters = map_as(&mut object, "COUNTERS", PerCpuArray::try_from)?;
        let mut events = map_as(&mut object, "EVENTS", RingBuf::try_from)?;
        if origin == Origin::Reused {
            // A previous holder's unread records (one killed mid-scan): never the next job's.
            while events.next().is_some() {}
        }
        let cpus = nr_cpus().map_err(|(what, e)| ProbeError::Cpus(format!("{what}: {e}")))?;

        let mut capture = map_as(&mut object, "CAPTURE", Array::try_from)?;
        fill_capture_map(&mut capture)?;
        let all = attach_all(&mut object, setup.hooks, &setup.tracefs, &mut adopted)?;
        if !adopted.is_empty() {
            // At hooks this load does not make (cannot happen with the same key): detached.
            tracing::warn!(
                links = adopted.len(),
                "probes: links handed over at hooks this load does not have; detaching them"
            );
            drop_in_parallel(adopted.into_links().into_iter().map(|(_, l)| l).collect());
        }
        let missing = all.missing;
        let fds = integrity::link_fds();
        let tracked = |links: Vec<attach::Attached>| -> Vec<Tracked> {
            links
                .into_iter()
                .map(|(hook, link)| Tracked::new(hook, link, &fds))
                .collect()
        };
        let links = tracked(all.process);
        let syscalls = SyscallLinks::attached(tracked(all.syscalls));
        tracing::debug!(
            syscall_hooks = syscalls.hooks(),
            missing = missing.len(),
            hooks = ?setup.hooks,
            ?origin,
            "probes loaded"
        );
        Ok(Probes {
            links,
            syscalls,
            hooks: setup.hooks,
            ebpf: object,
            watched,
            watched_tasks,
            watched_cgroup_paths,
            watched_exes,
            kill_policies,
            exec_allowed,
            watch_counts,
            discovery,
            registry: StdHashMap::new(),
            counters,
            capture,
            events: Some(events),
            cpus,
            reattached: 0,
            missing,
            origin,
            slot,
            adopted: handed_over,
        })
    }

    /// Where these probes came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The ring buffer, for the one reader. `None` once taken.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Gives the ring buffer back when its reader is done, so that one set of loaded probes
    /// serves job after job (loading and detaching them takes seconds).
    pub fn return_events(&mut self, ring: RingBuf<MapData>) {
        self.events = Some(ring);
    }

    /// Starts recording what `watch` selects: every task in each target cgroup (and, since
    /// children inherit their cgroup, everything they start), each target process (and, with
    /// `WATCH_FOLLOW_FORKS`, everything it starts). Records carry `watch.id`.
    pub fn watch(&mut self, watch: &Watch, targets: &[Target]) -> Result<(), ProbeError> {
        if self.registry.contains_key(&watch.id) {
            return Err(ProbeError::WatchExists(watch.id));
        }
        // Counters first: the kernel records nothing for a watch without them.
        let zero = PerCpuValues::try_from(vec![WatchCounts::default(); self.cpus])
            .map_err(ProbeError::PerCpu)?;
        self.watch_counts
            .insert(watch.id, zero, 0)
            .map_err(map_error("WATCH_COUNTS"))?;
        self.registry.insert(
            watch.id,
            Registered {
                watch: *watch,
                targets: Vec::new(),
                kill: KillPolicy::default(),
                allowed: Vec::new(),
            },
        );
        for &target in targets {
            if let Err(e) = self.add_target(watch.id, target) {
                let _ = self.unwatch(watch.id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Adds `target` to watch `watch_id` (a cgroup created later, a process found later).
    pub fn add_target(&mut self, watch_id: u64, target: Target) -> Result<(), ProbeError> {
        let registered = self
            .registry
            .get_mut(&watch_id)
            .ok_or(ProbeError::NoSuchWatch(watch_id))?;
        let watch = registered.watch;
        match target {
            Target::Cgroup(id) => self
                .watched
                .insert(id, watch, 0)
                .map_err(map_error("WATCHED"))?,
            Target::CgroupTree { id, path } => {
                // The path first: a cgroup made in between is then the kernel's to add.
                self.watched_cgroup_paths
                    .insert(path, watch, 0)
                    .map_err(map_error("WATCHED_CGROUP_PATHS"))?;
                self.watched
                    .insert(id, watch, 0)
                    .map_err(map_error("WATCHED"))?
            }
            Target::Process(pid) => self
                .watched_tasks
                .insert(pid, watch, 0)
                .map_err(map_error("WATCHED_TASKS"))?,
            Target::Executable(path) => self
                .watched_exes
                .insert(path, watch, 0)
                .map_err(map_error("WATCHED_EXES"))?,
        }
        registered.targets.push(target);
        Ok(())
    }

    /// Makes watch `watch_id` kill what `kill` names, in the kernel, from now on (nothing:
    /// report only).
    pub fn set_kill_policy(&mut self, watch_id: u64, kill: &KillPolicy) -> Result<(), ProbeError> {
        let registered = self
            .registry
            .get_mut(&watch_id)
            .ok_or(ProbeError::NoSuchWatch(watch_id))?;
        if kill.is_empty() {
            gone(self.kill_policies.remove(&watch_id)).map_err(map_error("KILL_POLICIES"))?;
        } else {
            self.kill_policies
                .insert(watch_id, *kill, 0)
                .map_err(map_error("KILL_POLICIES"))?;
        }
        registered.kill = *kill;
        Ok(())
    }

    /// Makes `programs` (paths as an exec names them) the ones watch `watch_id` lets its
    /// processes execute although its policy kills execs. The new ones are in place before the
    /// old ones go, so a program on both lists is never killed in between.
    pub fn set_exec_allowed(
        &mut self,
        watch_id: u64,
        programs: &[PathKey],
    ) -> Result<(), ProbeError> {
        let registered = self
            .registry
            .get_mut(&watch_id)
            .ok_or(ProbeError::NoSuchWatch(watch_id))?;
        let key = |path: &PathKey| ExecKey {
            watch_id,
            path: *path,
        };
        for path in programs {
            self.exec_allowed
                .insert(key(path), 1, 0)
                .map_err(map_error("EXEC_ALLOWED"))?;
        }
        for old in registered.allowed.iter().filter(|p| !programs.contains(p)) {
            gone(self.exec_allowed.remove(&key(old))).map_err(map_error("EXEC_ALLOWED"))?;
        }
        registered.allowed = programs.to_vec();
        Ok(())
    }

    /// Stops recording processes `pids` for watch `watch_id` (a discovered process whose
    /// window has passed, with its descendants). Others' entries are left alone.
    pub fn forget_processes(&mut self, watch_id: u64, pids: &[u32]) -> Result<(), ProbeError> {
        for pid in pids {
            match self.watched_tasks.get(pid, 0) {
                Ok(w) if w.id == watch_id => {
                    gone(self.watched_tasks.remove(pid)).map_err(map_error("WATCHED_TASKS"))?
                }
                Ok(_) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("WATCHED_TASKS")(e)),
            }
        }
        if let Some(r) = self.registry.get_mut(&watch_id) {
            r.targets
                .retain(|t| !matches!(t, Target::Process(p) if pids.contains(p)));
        }
        Ok(())
    }

    /// Stops recording watch `watch_id`: its targets and every process the kernel added to it.
    /// Returns its final counters.
    pub fn unwatch(&mut self, watch_id: u64) -> Result<WatchCounters, ProbeError> {
        let Some(registered) = self.registry.remove(&watch_id) else {
            return Ok(WatchCounters::default());
        };
        let (mut tasks, mut trees) = (false, false);
        for target in &registered.targets {
            // A process's key goes when it exits, a cgroup's at its rmdir (the kernel removes
            // them): gone already is fine.
            match *target {
                Target::Cgroup(id) => {
                    gone(self.watched.remove(&id)).map_err(map_error("WATCHED"))?
                }
                Target::CgroupTree { .. } => trees = true,
                Target::Process(pid) => {
                    tasks = true;
                    gone(self.watched_tasks.remove(&pid)).map_err(map_error("WATCHED_TASKS"))?
                }
                Target::Executable(path) => {
                    tasks = true;
                    gone(self.watched_exes.remove(&path)).map_err(map_error("WATCHED_EXES"))?
                }
            }
        }
        if trees {
            // With the cgroups the kernel added.
            remove_entries_of(&mut self.watched_cgroup_paths, watch_id)
                .map_err(map_error("WATCHED_CGROUP_PATHS"))?;
            remove_entries_of(&mut self.watched, watch_id).map_err(map_error("WATCHED"))?;
        }
        if tasks || registered.watch.flags & WATCH_FOLLOW_FORKS != 0 {
            remove_entries_of(&mut self.watched_tasks, watch_id)
                .map_err(map_error("WATCHED_TASKS"))?;
        }
        gone(self.kill_policies.remove(&watch_id)).map_err(map_error("KILL_POLICIES"))?;
        for path in &registered.allowed {
            let key = ExecKey {
                watch_id,
                path: *path,
            };
            gone(self.exec_allowed.remove(&key)).map_err(map_error("EXEC_ALLOWED"))?;
        }
        let counts = self.watch_counters(watch_id)?;
        gone(self.watch_counts.remove(&watch_id)).map_err(map_error("WATCH_COUNTS"))?;
        Ok(counts)
    }

    /// The counters of one watch so far.
    pub fn watch_counters(&self, watch_id: u64) -> Result<WatchCounters, ProbeError> {
        match self.watch_counts.get(&watch_id, 0) {
            Ok(values) => {
                Ok(values
                    .iter()
                    .fold(WatchCounters::default(), |acc, w| WatchCounters {
                        events: acc.events + w.events,
                        dropped: acc.dropped + w.dropped,
                        killed: acc.killed + w.killed,
                    }))
            }
            Err(MapError::KeyNotFound) => Ok(WatchCounters::default()),
            Err(e) => Err(map_error("WATCH_COUNTS")(e)),
        }
    }

    /// Turns discovery on with `discovery` (its watch registered with [`watch`](Self::watch)
    /// first), or off with `None`.
    pub fn set_discovery(&mut self, discovery: Option<&Discovery>) -> Result<(), ProbeError> {
        let value = discovery.copied().unwrap_or_default();
        self.discovery
            .set(0, value, 0)
            .map_err(map_error("DISCOVERY"))
    }

    /// Each loaded program's name, total run time and run count, as the kernel keeps them
    /// while its run-time statistics are on (`aya::sys::enable_stats`, or the
    /// `kernel.bpf_stats_enabled` sysctl; zeros otherwise): for measuring what each program
    /// costs per call. Programs this kernel's hooks left unloaded are not listed.
    pub fn program_runs(&self) -> Result<Vec<ProgramRuns>, ProbeError> {
        self.ebpf
            .programs()
            .filter(|(_, program)| program.fd().is_ok())
            .map(|(name, program)| {
                let info = program.info().map_err(|source| ProbeError::Program {
                    name: name.to_owned(),
                    source,
                })?;
                Ok(ProgramRuns {
                    name: name.to_owned(),
                    time: info.run_time(),
                    runs: info.run_count(),
                })
            })
            .collect()
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let sum = |c: Counter| -> Result<u64, ProbeError> {
            let values = self
                .counters
                .get(&(c as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            Ok(values.iter().sum())
        };
        let mut totals = KernelCounters::default();
        for c in Counter::ALL {
            totals.0[c as usize] = sum(c)?;
        }
        Ok(totals)
    }

    /// Checks that the probes are still as set up (see [`integrity`]): repairs what someone
    /// changed in the maps, attaches again what was detached, and returns what was wrong
    /// (nothing when all is well).
    pub fn check(&mut self) -> Vec<String> {
        // The syscall hooks' links are checked while attached, with the others.
        let process = self.links.len();
        if let Some(syscalls) = self.syscalls.links_mut() {
            self.links.append(syscalls);
        }
        let (mut problems, reattached) = integrity::reattach_lost(&mut self.links, &mut self.ebpf);
        if let Some(syscalls) = self.syscalls.links_mut() {
            *syscalls = self.links.split_off(process);
        }
        self.reattached += reattached as u64;
        let changed: Vec<&str> = SYSCALLS
            .iter()
            .filter(|sc| self.capture.get(&sc.nr, 0).ok() != Some(capture_spec(sc)))
            .map(|sc| sc.name)
            .collect();
        if !changed.is_empty() {
            problems.push(format!(
                "the capture table was changed from outside for {changed:?}; restored"
            ));
            if let Err(e) = fill_capture_map(&mut self.capture) {
                problems.push(format!("restoring the capture table failed: {e}"));
            }
        }
        let mut changed = Vec::new();
        for (&id, registered) in &self.registry {
            let now = self.kill_policies.get(&id, 0).ok();
            let expected = (!registered.kill.is_empty()).then_some(registered.kill);
            if now != expected {
                changed.push(id);
                let restored = match expected {
                    Some(kill) => self.kill_policies.insert(id, kill, 0),
                    None => gone(self.kill_policies.remove(&id)),
                };
                if let Err(e) = restored {
                    problems.push(format!(
                        "restoring the kill policy of watch {id} failed: {e}"
                    ));
                }
            }
            for path in &registered.allowed {
                let key = ExecKey {
                    watch_id: id,
                    path: *path,
                };
                if self.exec_allowed.get(&key, 0).is_err() {
                    // Taken away, a program the service runs would be killed: put back.
                    changed.push(id);
                    if let Err(e) = self.exec_allowed.insert(key, 1, 0) {
                        problems.push(format!(
                            "restoring an allowed program of watch {id} failed: {e}"
                        ));
                    }
                }
            }
        }
        // Entries added from outside: a program let through that the watch never allowed.
        let foreign: Vec<ExecKey> = self
            .exec_allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !self
                    .registry
                    .get(&k.watch_id)
                    .is_some_and(|r| r.allowed.contains(&k.path))
            })
            .collect();
        for key in &foreign {
            changed.push(key.watch_id);
            let _ = gone(self.exec_allowed.remove(key));
        }
        changed.sort_unstable();
        changed.dedup();
        if !changed.is_empty() {
            problems.push(format!(
                "the kill policies of watches {changed:?} were changed from outside; restored"
            ));
        }
        let mut unwatched = Vec::new();
        for registered in self.registry.values() {
            for target in &registered.targets {
                let &Target::Cgroup(id) = target else {
                    // A watched process's entry goes when it exits: absence is no sign.
                    continue;
                };
                if self.watched.get(&id, 0).ok() != Some(registered.watch) {
                    unwatched.push(id);
                    if let Err(e) = self.watched.insert(id, registered.watch, 0) {
                        problems.push(format!("watching cgroup {id} again failed: {e}"));
                    }
                }
            }
        }
        if !unwatched.is_empty() {
            problems.push(format!(
                "watched cgroups {unwatched:?} were removed from WATCHED from outside; restored"
            ));
        }
        problems
    }

    /// The fds that hold the attachments (bpf links; none where the kernel attaches without
    /// links), for [`check`](Self::check)'s tests.
    pub fn attachment_fds(&mut self) -> Vec<std::os::fd::RawFd> {
        let syscalls = self
            .syscalls
            .links_mut()
            .map(|l| &l[..])
            .unwrap_or_default();
        (self.links.iter().chain(syscalls.iter()))
            .filter_map(Tracked::fd)
            .collect()
    }

    /// How many attachments (kprobes, kretprobes, tracepoints) there are now.
    pub fn attached(&mut self) -> usize {
        let syscalls = self.syscalls.links_mut().map_or(0, |l| l.len());
        self.links.len() + syscalls
    }

    /// Attaches the syscall hooks, unless they are: the programs are loaded already, so this
    /// is only the attach (a detach in progress stops, and the hooks it had not reached yet
    /// are kept). Returns once every hook records.
    pub fn attach_syscalls(&mut self) -> Result<(), ProbeError> {
        let started = std::time::Instant::now();
        let was = self.syscalls.state();
        self.syscalls.attach(&mut self.ebpf)?;
        if was != HooksState::Attached {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                hooks = self.syscalls.hooks(),
                "syscall hooks attached"
            );
        }
        Ok(())
    }

    /// Starts detaching the syscall hooks in the background (the process tracepoints stay);
    /// returns at once. Nothing is recorded of any syscall until they are attached again.
    pub fn detach_syscalls(&mut self) {
        if self.syscalls.state() == HooksState::Attached {
            tracing::info!("nothing is watched: detaching the syscall hooks");
        }
        self.syscalls.detach();
    }

    /// Whether the syscall hooks are attached.
    pub fn syscalls_state(&mut self) -> HooksState {
        self.syscalls.state()
    }

    /// Attachments attached again since load (their fds had been closed from outside).
    pub fn reattached(&self) -> u64 {
        self.reattached
    }

    /// How the syscalls are hooked on this kernel.
    pub fn syscall_hooks(&self) -> SyscallHooks {
        self.hooks
    }

    /// Syscalls of the table that this kernel does not have.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}

impl Probes {
    /// Detaches every program now (the probes then see nothing): what dropping them does,
    /// for an owner that cannot drop them (monitord at its exit, whose probes its tasks still
    /// share). Left to the process's exit, the kernel closes the attachments one after
    /// another, in the exiting thread: seconds (see [`drop_in_parallel`]).
    pub fn detach_all(&mut self) {
        let links = self.take_links();
        drop_in_parallel(links.into_iter().map(|(_, link)| link).collect());
    }

    /// Every attachment, out of these probes.
    fn take_links(&mut self) -> Vec<(attach::Hook, Link)> {
        let mut links = std::mem::take(&mut self.links);
        links.extend(self.syscalls.take_all());
        links
            .into_iter()
            .map(|t| (t.hook().clone(), t.into_link()))
            .collect()
    }

    /// Links taken over attached from the slot's last holder when these probes started.
    pub fn adopted(&self) -> usize {
        self.adopted
    }

    /// Releases probes whose job is done, keeping them attached for `linger` first so that the
    /// next embedded scan can adopt them (see [`pins`]): blocks for that long, then detaches
    /// what nobody took over. Probes from no pinned set, a zero `linger`, or attachments that
    /// cannot be pinned (no bpf links on this kernel) are detached at once. For the background
    /// child that releases a scan's probes.
    pub fn release_lingering(mut self, linger: std::time::Duration) {
        let Some(slot) = self.slot.take() else {
            return; // Dropped: detached now.
        };
        if linger.is_zero() {
            drop(self);
            return drop(slot);
        }
        let token = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut held = Vec::new();
        let mut pinned = true;
        for (hook, link) in self.take_links() {
            match link {
                Link::Fd(link) if pinned => {
                    match link.pin(slot.dir().join(pins::link_pin(&token, &hook))) {
                        Ok(link) => held.push(Link::Fd(link.into())),
                        Err(e) => {
                            tracing::warn!(error = %e, "pinning a link for the next scan");
                            pinned = false;
                        }
                    }
                }
                other => {
                    pinned = false;
                    held.push(other);
                }
            }
        }
        if pinned && slot.unlock().is_ok() {
            std::thread::sleep(linger);
            // Taken by a scan, which adopted the links (it holds them now: dropping ours costs
            // nothing); or taken back, and whatever is still pinned of ours is detached.
            if let Ok(false) = slot.relock() {
                drop(held);
                drop(self);
                return;
            }
        }
        pins::remove_links(slot.dir(), &token);
        drop_in_parallel(held);
        drop(self);
        drop(slot);
    }
}

/// Drops `links` from many threads at once: each detach waits for an RCU grace period (~70 ms
/// here), and one after another 120 of them take seconds; the waits overlap where the kernel
/// lets them.
fn drop_in_parallel(links: Vec<Link>) {
    let per_thread = links.len().div_ceil(DETACH_THREADS).max(1);
    let mut links = links.into_iter();
    std::thread::scope(|scope| {
        loop {
            let chunk: Vec<Link> = links.by_ref().take(per_thread).collect();
            if chunk.is_empty() {
                break;
            }
            scope.spawn(move || drop(chunk));
        }
    });
}

/// Threads that detach the probes at the end.
const DETACH_THREADS: usize = 32;

/// Pending bytes above which a record wakes the reader at once (see monitor-ebpf's `ring`):
/// an eighth of the buffer, so that a burst wakes the reader long before the buffer is full.
fn wakeup_bytes(ring_buffer_bytes: u32) -> u64 {
    u64::from(ring_buffer_bytes / 8)
}

/// Removes every entry of `map` whose watch is `watch_id`, the kernel's included.
fn remove_entries_of<K: aya::Pod>(
    map: &mut HashMap<MapData, K, Watch>,
    watch_id: u64,
) -> Result<(), MapError> {
    let keys: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, w)| w.id == watch_id)
        .map(|(key, _)| key)
        .collect();
    for key in keys {
        gone(map.remove(&key))?;
    }
    Ok(())
}

/// A removal of a key that is not there (any more) is a removal done.
fn gone(removed: Result<(), MapError>) -> Result<(), MapError> {
    match removed {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Takes map `name` out of `ebpf` as the type `convert` makes of it.
fn map_as<T>(
    ebpf: &mut Object,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, ProbeError> {
    convert(take_map(ebpf, name)?).map_err(map_error(name))
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

fn take_map(ebpf: &mut Object, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })
}

/// Writes the syscall table into the `CAPTURE` map: the kernel's only copy of it.
fn fill_capture_map(capture: &mut Array<MapData, CaptureSpec>) -> Result<(), ProbeError> {
    for sc in SYSCALLS {
        debug_assert!(sc.nr < CAPTURE_ENTRIES);
        capture
            .set(sc.nr, capture_spec(sc), 0)
            .map_err(map_error("CAPTURE"))?;
    }
    Ok(())
}

/// The kernel's view of one table entry.
pub fn capture_spec(sc: &Syscall) -> CaptureSpec {
    let mut args = [0u8; MAX_ARGS];
    for (slot, arg) in args.iter_mut().zip(sc.args) {
        *slot = arg.kind.capture() as u8;
    }
    let (only_if_arg, only_if, only_if_values) = match sc.only_if {
        None => (0, ONLY_IF_NONE, [0, 0]),
        Some((arg, ArgTest::AnyBit(mask))) => (arg, ONLY_IF_ANY_BIT, [mask, 0]),
        Some((arg, ArgTest::OneOf(values))) => (arg, ONLY_IF_ONE_OF, values),
    };
    CaptureSpec {
        enabled: 1,
        exit: u8::from(sc.has_exit()),
        only_if_arg,
        discover_arg: sc.discovery_arg().map_or(0, |i| i as u8 + 1),
        args,
        discover_flags_arg: sc.discovery_flags_arg().map_or(0, |i| i as u8 + 1),
        exit_file: u8::from(sc.effect == Effect::Opens && sc.has_exit()),
        only_if,
        executes: u8::from(sc.executes),
        waits: u8::from(sc.entry_waits()),
        _pad: 0,
        only_if_values,
    }
}

/// Where the kernel programs find what they read of the kernel's own structures.
struct BtfOffsets {
    file: FileOffsets,
    task_exit_code: u32,
}

/// [`BtfOffsets`] from the kernel's BTF (parsed once). Without the file offsets, open exit
/// records carry no file identity (honeytokens are then matched by path alone); without the
/// exit code's, exits carry no code (a job's child killed by a signal is not reported): each
/// said once in the log.
fn btf_offsets() -> BtfOffsets {
    let btf = match btf::Btf::from_kernel() {
        Ok(Ok(btf)) => Ok(btf),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("reading /sys/kernel/btf/vmlinux: {e}")),
    };
    let file = btf
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|btf| btf.file_offsets().map_err(|e| e.to_string()))
        .unwrap_or_else(|why| {
            tracing::warn!(
                "opened files will not be identified by inode (honeytokens are matched by \
                 path only): {why}"
            );
            FileOffsets::default()
        });
    let task_exit_code = btf
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|btf| btf.task_exit_code_offset().map_err(|e| e.to_string()))
        .unwrap_or_else(|why| {
            tracing::warn!("exits will carry no exit code (nor the signal that killed): {why}");
            0
        });
    BtfOffsets {
        file,
        task_exit_code,
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the cgroup. Raising
/// it can fail without CAP_SYS_RESOURCE, which is fine on a kernel that does not need it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::syscall::{Capture, PROT_EXEC, by_name};

    use super::*;

    /// Kernels without kprobes (this project's VMs) attach the tracepoint programs, so the
    /// kprobe programs would otherwise never meet the verifier here: load them, unattached.
    #[test]
    fn kprobe_programs_pass_the_verifier() {
        if !nix::unistd::geteuid().is_root() || OBJECT.is_empty() {
            eprintln!("skipped: needs root and the kernel object");
            return;
        }
        let mut ebpf = EbpfLoader::new().load(OBJECT).expect("loading the object");
        for name in ["sys_enter", "sys_exit"] {
            let program: &mut aya::programs::KProbe = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"))
                .try_into()
                .expect("a kprobe program");
            program
                .load()
                .unwrap_or_else(|e| panic!("{name} rejected: {e:?}"));
        }
    }

    /// The syscall hooks detached in the background and attached again half-way: those not
    /// yet detached are kept, the others attached again, none twice; then detached for good,
    /// the process tracepoints staying.
    #[test]
    fn syscall_hooks_attach_again_while_being_detached() {
        if !nix::unistd::geteuid().is_root() || OBJECT.is_empty() {
            eprintln!("skipped: needs root and the kernel object");
            return;
        }
        let mut probes = Probes::load(&ProbeConfig {
            ring_buffer_bytes: 1 << 20,
        })
        .expect("loading the probes");
        let all = probes.attached();
        let process = probes.links.len();
        assert!(all > process, "the syscall hooks are attached at load");
        let ours: Vec<u32> = (probes.ebpf.programs())
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect();
        let kernel_links = || {
            aya::programs::loaded_links()
                .filter_map(Result::ok)
                .filter(|l| ours.contains(&l.program_id()))
                .count()
        };
        assert_eq!(kernel_links(), all);

        probes.detach_syscalls();
        assert_ne!(probes.syscalls_state(), HooksState::Attached);
        std::thread::sleep(Duration::from_millis(150));
        probes.attach_syscalls().expect("attaching again");
        assert_eq!(probes.syscalls_state(), HooksState::Attached);
        assert_eq!(probes.attached(), all);
        assert_eq!(
            probes.attachment_fds().len(),
            all,
            "each one a link of ours"
        );
        assert!(probes.check().is_empty(), "{:?}", probes.check());
        // The kernel frees a closed link a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while kernel_links() != all && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kernel_links(), all, "no hook attached twice");

        probes.detach_syscalls();
        while probes.syscalls_state() != HooksState::Detached {
            assert!(std::time::Instant::now() < deadline + Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(probes.attached(), process, "the process tracepoints stay");
        assert!(probes.check().is_empty(), "{:?}", probes.check());
    }

    #[test]
    fn capture_specs_follow_the_table() {
        let openat = capture_spec(by_name("openat").unwrap());
        assert_eq!(openat.args[1], Capture::Str as u8);
        assert_eq!(openat.exit, 1);
        let connect = capture_spec(by_name("connect").unwrap());
        assert_eq!(connect.args[1], Capture::SizedBlob as u8);
        assert_eq!(openat.exit_file, 1, "an open's exit says which file");
        let mmap = capture_spec(by_name("mmap").unwrap());
        assert_eq!(
            (mmap.only_if_arg, mmap.only_if, mmap.only_if_values[0]),
            (2, ONLY_IF_ANY_BIT, PROT_EXEC)
        );
        assert_eq!(mmap.exit, 0, "its result is not wanted");
        assert_eq!(capture_spec(by_name("exit_group").unwrap()).exit, 0);
        assert_eq!(capture_spec(by_name("close").unwrap()).exit, 0);
        // fcntl is traced only when it duplicates a descriptor, and then with its result.
        let fcntl = capture_spec(by_name("fcntl").unwrap());
        assert_eq!(
            (fcntl.only_if_arg, fcntl.only_if, fcntl.only_if_values),
            (1, ONLY_IF_ONE_OF, [0, 1030])
        );
        assert_eq!((fcntl.exit, fcntl.exit_file), (1, 0));
        // One record per call where the entry can wait for the exit: not for an exec (its
        // entry is needed before its exit), nor for what has no exit record.
        assert_eq!((openat.waits, connect.waits, fcntl.waits), (1, 1, 1));
        assert_eq!(capture_spec(by_name("execve").unwrap()).waits, 0);
        assert_eq!(
            (mmap.waits, capture_spec(by_name("close").unwrap()).waits),
            (0, 0)
        );
        // The kernel's discovery loads the path from one of the first two arguments, straight
        // from the tracepoint's record: one every syscall it looks at has.
        for sc in SYSCALLS {
            assert!(capture_spec(sc).discover_arg <= 2, "{}", sc.name);
        }
        assert_eq!(capture_spec(by_name("openat").unwrap()).discover_arg, 2);
        // ... and the flags from one of the first three.
        for sc in SYSCALLS {
            assert!(capture_spec(sc).discover_flags_arg <= 3, "{}", sc.name);
        }
        assert_eq!(capture_spec(by_name("open").unwrap()).discover_flags_arg, 2);
        assert_eq!(
            capture_spec(by_name("openat").unwrap()).discover_flags_arg,
            3
        );
        assert_eq!(
            capture_spec(by_name("openat2").unwrap()).discover_flags_arg,
            0
        );
    }

    #[test]
    fn program_runs_since_match_programs_by_name() {
        let runs = |name: &str, ms: u64, runs: u64| ProgramRuns {
            name: name.into(),
            time: Duration::from_millis(ms),
            runs,
        };
        let before = [runs("sys_enter_tp", 5, 10), runs("sys_exit_tp", 1, 2)];
        // Listed in another order, with a program that was not there before.
        let after = vec![
            runs("sys_exit_tp", 4, 7),
            runs("sched_process_fork", 9, 9),
            runs("sys_enter_tp", 6, 30),
        ];
        assert_eq!(
            ProgramRuns::since(after, &before),
            [runs("sys_exit_tp", 3, 5), runs("sys_enter_tp", 1, 20)]
        );
    }
}
