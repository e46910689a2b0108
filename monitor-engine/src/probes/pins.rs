//! Verified programs and their maps kept pinned in bpffs between embedded scans, so that a
//! `monitorctl scan --local` or `monitorctl run` opens and attaches them instead of parsing the
//! kernel's BTF and verifying them again (seconds, against milliseconds).
//!
//! Layout: `<root>/<key>/<slot>/` (root `/sys/fs/bpf/monitor`, every directory root's and
//! 0700) holds `prog_NAME` for each program the hooks of this kernel attach and `map_NAME` for
//! every map of the object. `key` hashes the kernel object and every load-time setting that
//! changes a program or a map (the ring's size, the tracepoint and file offsets, the syscall
//! table written into `CAPTURE`, kprobes or tracepoints), so another binary or another setting
//! never opens this one's pins; pinning a new key removes the other keys' sets.
//!
//! Pinned maps are shared state (the ring buffer, the watch tables), so a set is used by one
//! process at a time: it takes a slot with an exclusive `flock` on the slot's directory, held
//! until its probes are released (by the background child that detaches them, so the next
//! holder never attaches programs still attached). A second concurrent scan takes the next
//! slot, or loads fresh when every slot is taken. On taking a slot every map is reset to what
//! a fresh load makes (hash maps emptied, arrays zeroed, the ring's unread records dropped by
//! [`Probes`](super::Probes)), so nothing a previous holder left (watches, kill policies,
//! counters, the records of a scan killed by SIGKILL) reaches the next one.
//!
//! Attaching and detaching are what is left, and detaching takes seconds (an RCU grace period
//! per tracepoint, under a kernel mutex the next attach waits for): a scan right after another
//! would wait for it. So the background child that releases a scan's probes keeps them
//! attached for a while ([`LINGER_ENV`], default [`DEFAULT_LINGER`]): it pins their links in the
//! slot too (`link_<token>_<hook>`) and lets the slot go. The next scan to take the slot within
//! that time adopts the links (takes them over and removes their pins), so back-to-back scans
//! attach and detach nothing; otherwise the child takes the slot back, removes its own pins
//! (its token) and detaches, as before. Meanwhile unwatched processes pay for attached hooks,
//! as they do while a scan runs.
//!
//! What is reused is checked, and any doubt means a fresh load, never an unwatched scan:
//! directories must be root's and closed to others; a slot must hold exactly the programs this
//! binary attaches, with their types and names; its maps must be exactly the maps those
//! programs use (a map swapped in under a pinned name would take the watches while the programs
//! read another one); and none of its programs may be attached anywhere but through links
//! pinned in the slot, each at a hook of this binary's and running the program its name says
//! (any other link: a killed holder's still being torn down, or someone else's).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, RawFd},
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, MapInfo, MapType},
    programs::{
        KProbe, ProbeKind, Program, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use aya_obj::generated::{BPF_F_RDONLY_PROG, bpf_attr, bpf_cmd, bpf_prog_type};

use super::{
    Object,
    attach::{self, Hook, ProgramKind},
};

/// Where the sets are pinned unless [`ROOT_ENV`] says otherwise.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/monitor";

/// Environment variable naming another root (a directory on a bpffs), or `off`: load fresh
/// every time and pin nothing.
pub const ROOT_ENV: &str = "MONITOR_PROBE_PINS";

/// Sets kept per key: one per embedded scan running at once (or releasing its probes, which
/// takes seconds after it ended). A scan that finds every slot taken loads fresh.
pub const SLOTS: usize = 2;

/// Environment variable: how many seconds the background child that releases an embedded
/// scan's probes keeps them attached for the next scan to adopt (`0`: detach at once).
pub const LINGER_ENV: &str = "MONITOR_PROBE_LINGER";

/// How long released probes stay attached for the next scan, unless [`LINGER_ENV`] says.
pub const DEFAULT_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// [`LINGER_ENV`]'s value, or the default (a value that is no number of seconds is said in
/// the log).
pub fn linger_from_env() -> std::time::Duration {
    match std::env::var(LINGER_ENV) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && (0.0..=3600.0).contains(&secs) => {
                std::time::Duration::from_secs_f64(secs)
            }
            _ => {
                tracing::warn!(
                    "{LINGER_ENV}={v:?} is no number of seconds from 0 to 3600; using {}s",
                    DEFAULT_LINGER.as_secs()
                );
                DEFAULT_LINGER
            }
        },
        Err(_) => DEFAULT_LINGER,
    }
}

/// bpffs's `statfs` magic.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Where this process keeps its pinned probes, if anywhere.
pub fn root_from_env() -> Option<PathBuf> {
    match std::env::var_os(ROOT_ENV) {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => Some(PathBuf::from(DEFAULT_ROOT)),
    }
}

/// Why pinned probes were not used (a fresh load follows).
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{} is on no bpffs and mounting one at {} failed: {errno} (mount it: \
         `mount -t bpf bpf /sys/fs/bpf`)",
        root.display(),
        mount.display()
    )]
    NoBpffs {
        root: PathBuf,
        mount: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("{} is not on a bpffs", .0.display())]
    NotBpffs(PathBuf),
    #[error(
        "refusing {}: {why} (only root may own or write the pinned probes; \
         `monitorctl probes unpin` removes them)",
        path.display()
    )]
    Unsafe { path: PathBuf, why: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PinError {
    let path = path.to_owned();
    move |source| PinError::Io { what, path, source }
}

/// A slot taken by this process: its directory, locked until this is dropped (in whichever
/// process drops the last copy of the lock's fd).
pub struct Slot {
    dir: PathBuf,
    _lock: File,
}

impl Slot {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets the slot go while this process keeps holding the lock's fd, for [`relock`](Self::relock).
    pub(super) fn unlock(&self) -> io::Result<()> {
        self._lock.unlock()
    }

    /// Takes the slot back, unless another process holds it now.
    pub(super) fn relock(&self) -> io::Result<bool> {
        match self._lock.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// What [`take`] found.
pub(super) enum Taken {
    /// A slot whose pins were opened, checked, and their maps reset, with the links its last
    /// holder left attached for this process (their pins removed).
    Reused(Slot, Object, Vec<(Hook, FdLink)>),
    /// A slot with nothing usable pinned (emptied if something was): load fresh, pin there.
    Empty(Slot),
    /// Every slot is in use.
    Busy,
}

/// Takes a slot of `key`'s set under `root` for this process.
pub(super) fn take(
    root: &Path,
    key: &str,
    programs: &[(&'static str, ProgramKind)],
) -> Result<Taken, PinError> {
    ensure_bpffs(root)?;
    secure_dir(root)?;
    let key_dir = root.join(key);
    secure_dir(&key_dir)?;
    for n in 0..SLOTS {
        let dir = key_dir.join(n.to_string());
        secure_dir(&dir)?;
        let Some(slot) = lock(&dir)? else {
            continue;
        };
        match open(&slot.dir, programs) {
            Ok(Opened::Set(object, links)) => return Ok(Taken::Reused(slot, object, links)),
            Ok(Opened::Nothing) => return Ok(Taken::Empty(slot)),
            Ok(Opened::Attached(links)) => {
                tracing::info!(
                    dir = %slot.dir.display(),
                    links,
                    "the pinned probes are still attached (their last holder is being torn \
                     down); trying the next slot"
                );
            }
            Err(why) => {
                tracing::warn!(
                    "refusing the pinned probes in {}: {why}; loading them fresh and pinning \
                     them there again",
                    slot.dir.display()
                );
                clear(&slot.dir)?;
                return Ok(Taken::Empty(slot));
            }
        }
    }
    Ok(Taken::Busy)
}

/// Pins the freshly loaded `object`'s maps (every one) and `programs` (loaded already) into
/// `slot`. On an error the slot is emptied again.
pub(super) fn pin(
    slot: &Slot,
    object: &mut Object,
    programs: &[(&'static str, ProgramKind)],
) -> Result<(), PinError> {
    let pinned = (|| {
        let Object::Fresh(ebpf) = object else {
            return Err("not a fresh load".to_string());
        };
        for (name, map) in ebpf.maps() {
            map.pin(slot.dir.join(map_pin(name)))
                .map_err(|e| format!("map {name}: {e}"))?;
        }
        for (name, _) in programs {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("no program {name}"))?;
            program
                .pin(slot.dir.join(program_pin(name)))
                .map_err(|e| format!("program {name}: {e}"))?;
        }
        Ok(())
    })();
    pinned.map_err(|why| {
        let _ = clear(&slot.dir);
        PinError::Io {
            what: "pinning into",
            path: slot.dir.clone(),
            source: io::Error::other(why),
        }
    })
}

/// Removes the sets of every key under `root` but `key`, except those in use.
pub(super) fn remove_other_keys(root: &Path, key: &str) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() != key {
            match remove_set(&entry.path()) {
                Ok(true) => tracing::info!(
                    dir = %entry.path().display(),
                    "removed the pinned probes of another binary or setting"
                ),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "removing old pinned probes"),
            }
        }
    }
}

/// Removes one key's directory with its slots, unless a slot is in use: `Ok(false)` then.
fn remove_set(key_dir: &Path) -> io::Result<bool> {
    let mut locks = Vec::new();
    for slot in fs::read_dir(key_dir)?.flatten() {
        match lock(&slot.path()) {
            Ok(Some(lock)) => locks.push(lock),
            Ok(None) => return Ok(false),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
    for slot in &locks {
        clear(&slot.dir).map_err(|e| io::Error::other(e.to_string()))?;
        fs::remove_dir(&slot.dir)?;
    }
    fs::remove_dir(key_dir)?;
    Ok(true)
}

/// What `monitorctl probes unpin` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unpinned {
    /// Slots whose pins were removed.
    pub slots: usize,
    /// Of those, the ones in use: their holders keep their programs until they end.
    pub in_use: usize,
}

/// Removes every pinned set under `root`, and `root` itself.
pub fn unpin(root: &Path) -> io::Result<Unpinned> {
    let mut unpinned = Unpinned::default();
    let keys = match fs::read_dir(root) {
        Ok(keys) => keys,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(unpinned),
        Err(e) => return Err(e),
    };
    for key in keys.flatten() {
        if !key.file_type()?.is_dir() {
            fs::remove_file(key.path())?;
            continue;
        }
        for slot in fs::read_dir(key.path())?.flatten() {
            let dir = slot.path();
            if !slot.file_type()?.is_dir() {
                fs::remove_file(&dir)?;
                continue;
            }
            let free = lock(&dir).ok().flatten();
            unpinned.slots += 1;
            unpinned.in_use += usize::from(free.is_none());
            clear(&dir).map_err(|e| io::Error::other(e.to_string()))?;
            fs::remove_dir(&dir)?;
        }
        fs::remove_dir(key.path())?;
    }
    // Not where root is a mount point itself (`MONITOR_PROBE_PINS=/sys/fs/bpf`).
    let _ = fs::remove_dir(root);
    Ok(unpinned)
}

/// One slot as [`list`] sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotStatus {
    pub key: String,
    pub slot: String,
    pub pins: usize,
    pub in_use: bool,
    /// Links that attach its programs now (a holder's, or a killed holder's being torn down).
    pub attached: usize,
}

/// Every slot under `root`.
pub fn list(root: &Path) -> io::Result<Vec<SlotStatus>> {
    let mut slots = Vec::new();
    let keys = match fs::read_dir(root) {
        Ok(keys) => keys,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(slots),
        Err(e) => return Err(e),
    };
    for key in keys.flatten().filter(|k| k.path().is_dir()) {
        for slot in fs::read_dir(key.path())?.flatten() {
            let dir = slot.path();
            slots.push(SlotStatus {
                key: key.file_name().to_string_lossy().into_owned(),
                slot: slot.file_name().to_string_lossy().into_owned(),
                pins: fs::read_dir(&dir)?.count(),
                in_use: lock(&dir).ok().flatten().is_none(),
                attached: attached_links(&dir),
            });
        }
    }
    slots.sort_by(|a, b| (&a.key, &a.slot).cmp(&(&b.key, &b.slot)));
    Ok(slots)
}

/// How many links attach the programs pinned in `dir`.
fn attached_links(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let ids: BTreeSet<u32> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("prog_"))
        .filter_map(|e| aya::programs::ProgramInfo::from_pin(e.path()).ok())
        .map(|info| info.id())
        .collect();
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| ids.contains(&l.program_id()))
        .count()
}

/// Mounts bpffs at `/sys/fs/bpf` when `root` would be there and none is mounted.
fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    let mount = root.parent().unwrap_or(Path::new("/"));
    let on_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
    };
    if on_bpffs(root) || on_bpffs(mount) {
        return Ok(());
    }
    if mount != Path::new("/sys/fs/bpf") {
        return Err(PinError::NotBpffs(root.to_owned()));
    }
    let mounted = fs::create_dir_all(mount)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|()| {
            use nix::mount::MsFlags;
            nix::mount::mount(
                Some("bpf"),
                mount,
                Some("bpf"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
        });
    match mounted {
        Ok(()) if on_bpffs(mount) => {
            tracing::info!(
                "mounted bpffs at {} to keep the probes pinned",
                mount.display()
            );
            Ok(())
        }
        Ok(()) => Err(PinError::NotBpffs(root.to_owned())),
        Err(errno) => Err(PinError::NoBpffs {
            root: root.to_owned(),
            mount: mount.to_owned(),
            errno,
        }),
    }
}

/// Makes directory `path` (root's, 0700) unless it exists, and refuses it unless it is a
/// directory of root's that nobody else may enter or write.
fn secure_dir(path: &Path) -> Result<(), PinError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("creating", path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_error("reading", path))?;
    let why = if !meta.file_type().is_dir() {
        Some("not a directory".to_string())
    } else if meta.uid() != 0 {
        Some(format!("owned by uid {}, not root", meta.uid()))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!("mode {:04o}: open to others", meta.mode() & 0o7777))
    } else {
        None
    };
    match why {
        Some(why) => Err(PinError::Unsafe {
            path: path.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// Takes slot directory `dir` for this process; `None` when another holds it (or it was
/// replaced meanwhile). The lock's fd is close-on-exec: nothing the scan starts holds it.
fn lock(dir: &Path) -> Result<Option<Slot>, PinError> {
    let file = File::open(dir).map_err(io_error("opening", dir))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(None),
        Err(fs::TryLockError::Error(e)) => return Err(io_error("locking", dir)(e)),
    }
    let held = file.metadata().map_err(io_error("reading", dir))?;
    let now = fs::symlink_metadata(dir).map_err(io_error("reading", dir))?;
    if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
        return Ok(None);
    }
    Ok(Some(Slot {
        dir: dir.to_owned(),
        _lock: file,
    }))
}

/// Removes every pin in `dir` (the pinned objects live on while someone holds them).
fn clear(dir: &Path) -> Result<(), PinError> {
    for entry in fs::read_dir(dir)
        .map_err(io_error("reading", dir))?
        .flatten()
    {
        fs::remove_file(entry.path()).map_err(io_error("removing", &entry.path()))?;
    }
    Ok(())
}

enum Opened {
    /// Nothing pinned.
    Nothing,
    /// A complete, checked set, its maps reset, and the links pinned with it (adopted: their
    /// pins removed).
    Set(Object, Vec<(Hook, FdLink)>),
    /// Complete, but this many links that are not pinned with it attach its programs.
    Attached(usize),
}

/// Opens and checks the set pinned in `dir`. `Err` says why it is not this binary's set.
fn open(dir: &Path, expected: &[(&'static str, ProgramKind)]) -> Result<Opened, String> {
    let mut names: BTreeSet<String> = fs::read_dir(dir)
        .map_err(|e| format!("reading it: {e}"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(Opened::Nothing);
    }
    let link_pins: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with(LINK_PIN_PREFIX))
        .cloned()
        .collect();
    for name in &link_pins {
        names.remove(name);
    }
    let mut programs = BTreeMap::new();
    let mut program_ids = BTreeSet::new();
    let mut ids_by_name = BTreeMap::new();
    let mut used_maps = BTreeSet::new();
    for &(name, kind) in expected {
        let file = program_pin(name);
        if !names.remove(&file) {
            return Err(format!("program {name} is not pinned"));
        }
        let path = dir.join(&file);
        let opened = match kind {
            ProgramKind::TracePoint => TracePoint::from_pin(&path).map(Program::TracePoint),
            ProgramKind::KProbe => KProbe::from_pin(&path, ProbeKind::Entry).map(Program::KProbe),
            ProgramKind::KRetProbe => {
                KProbe::from_pin(&path, ProbeKind::Return).map(Program::KProbe)
            }
        };
        let program = opened.map_err(|e| format!("program {name}: {e}"))?;
        let info = program.info().map_err(|e| format!("program {name}: {e}"))?;
        let want = match kind {
            ProgramKind::TracePoint => bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT,
            ProgramKind::KProbe | ProgramKind::KRetProbe => bpf_prog_type::BPF_PROG_TYPE_KPROBE,
        };
        if info.program_type() != want {
            return Err(format!(
                "program {name} is of type {:?}, not {want:?}",
                info.program_type()
            ));
        }
        if info.name_as_str() != Some(kernel_name(name)) {
            return Err(format!(
                "the pin of program {name} holds program {:?}",
                info.name_as_str()
            ));
        }
        let maps = info
            .map_ids()
            .map_err(|e| format!("program {name}: {e}"))?
            .ok_or("this kernel does not say which maps a program uses")?;
        used_maps.extend(maps);
        program_ids.insert(info.id());
        ids_by_name.insert(name, info.id());
        programs.insert(name.to_owned(), program);
    }
    let mut maps = BTreeMap::new();
    for file in names {
        let Some(name) = map_of_pin(&file) else {
            return Err(format!("{file} is no pin of this binary's"));
        };
        let name = name.as_str();
        let data = MapData::from_pin(dir.join(&file)).map_err(|e| format!("map {name}: {e}"))?;
        let info = data.info().map_err(|e| format!("map {name}: {e}"))?;
        if info.name_as_str() != Some(kernel_name(name)) {
            return Err(format!(
                "the pin of map {name} holds map {:?}",
                info.name_as_str()
            ));
        }
        if !used_maps.remove(&info.id()) {
            return Err(format!("map {name} is not one the pinned programs use"));
        }
        maps.insert(name.to_owned(), (data, info));
    }
    if !used_maps.is_empty() {
        return Err(format!(
            "the pinned programs use {} maps that are not pinned",
            used_maps.len()
        ));
    }
    let mut pinned = Vec::new();
    let mut pinned_ids = BTreeSet::new();
    for file in link_pins {
        let hook = hook_of_pin(&file, expected)
            .ok_or_else(|| format!("{file} is no pin of this binary's"))?;
        let link = PinnedLink::from_pin(dir.join(&file))
            .map(FdLink::from)
            .map_err(|e| format!("link {file}: {e}"))?;
        let info = link.info().map_err(|e| format!("link {file}: {e}"))?;
        if ids_by_name.get(hook.prog()) != Some(&info.program_id()) {
            return Err(format!("link {file} runs another program"));
        }
        if !pinned_ids.insert(info.id()) {
            return Err(format!("link {file} is pinned twice"));
        }
        pinned.push((file, hook, link));
    }
    let others = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| program_ids.contains(&l.program_id()) && !pinned_ids.contains(&l.id()))
        .count();
    if others > 0 {
        return Ok(Opened::Attached(others));
    }
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
    let mut opened = BTreeMap::new();
    for (name, (data, info)) in maps {
        reset(&data, &info, cpus).map_err(|e| format!("resetting map {name}: {e}"))?;
        let map = Map::from_map_data(data).map_err(|e| format!("map {name}: {e}"))?;
        opened.insert(name, map);
    }
    // Ours now: held by their fds alone, so that the last holder's child, once it takes the
    // slot back, finds nothing of its own left to detach.
    let mut adopted = Vec::new();
    for (file, hook, link) in pinned {
        fs::remove_file(dir.join(&file)).map_err(|e| format!("unpinning link {file}: {e}"))?;
        adopted.push((hook, link));
    }
    Ok(Opened::Set(
        Object::Pinned {
            programs,
            maps: opened,
        },
        adopted,
    ))
}

/// Every link pin starts so: `link_<token>_<hook>`.
const LINK_PIN_PREFIX: &str = "link_";

/// The pin of the link at `hook`, left by the holder that says `token` (no `_` in it).
pub(super) fn link_pin(token: &str, hook: &Hook) -> String {
    let place = match hook {
        Hook::TracePoint {
            prog,
            category,
            event,
        } => format!("tp@{prog}@{category}@{event}"),
        Hook::KProbe { prog, function } => format!("kp@{prog}@{function}"),
    };
    format!("{LINK_PIN_PREFIX}{token}_{place}")
}

/// The hook whose link `file` pins, when it names one of the `expected` programs.
fn hook_of_pin(file: &str, expected: &[(&'static str, ProgramKind)]) -> Option<Hook> {
    let (_token, place) = file.strip_prefix(LINK_PIN_PREFIX)?.split_once('_')?;
    let program = |name: &str| expected.iter().find(|(p, _)| *p == name).map(|(p, _)| *p);
    let mut parts = place.split('@');
    let hook = match (parts.next()?, parts.next()?, parts.next()?, parts.next()) {
        ("tp", prog, category, Some(event)) => Hook::TracePoint {
            prog: program(prog)?,
            category: attach::CATEGORIES.into_iter().find(|c| *c == category)?,
            event: event.to_owned(),
        },
        ("kp", prog, function, None) => Hook::KProbe {
            prog: program(prog)?,
            function: function.to_owned(),
        },
        _ => return None,
    };
    parts.next().is_none().then_some(hook)
}

/// Removes the link pins in `dir` that the holder saying `token` left (those of a holder
/// since are not its to remove).
pub(super) fn remove_links(dir: &Path, token: &str) {
    let mine = format!("{LINK_PIN_PREFIX}{token}_");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&mine) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The pin of program `name`. bpffs refuses names with a dot (reserved for its own files),
/// and the kernel's object names never hold a `-`: a map's dots become dashes.
fn program_pin(name: &str) -> String {
    format!("prog_{name}")
}

fn map_pin(name: &str) -> String {
    format!("map_{}", name.replace('.', "-"))
}

/// The map pinned as `file`, if it is a map's pin.
fn map_of_pin(file: &str) -> Option<String> {
    file.strip_prefix("map_").map(|name| name.replace('-', "."))
}

/// The name the kernel keeps of an object named `name` (at most 15 bytes).
fn kernel_name(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Puts `map` back as a fresh load creates it: hash maps empty, arrays zeroed (but those the
/// programs only read, set at load and part of the key). The ring buffer's unread records are
/// dropped by its reader's handle ([`Probes`](super::Probes)).
fn reset(map: &MapData, info: &MapInfo, cpus: usize) -> Result<(), String> {
    let fd = map.fd().as_fd().as_raw_fd();
    let map_type = info.map_type().map_err(|e| e.to_string())?;
    match map_type {
        MapType::Hash | MapType::LruHash | MapType::PerCpuHash | MapType::LruPerCpuHash => {
            let mut key = vec![0u8; info.key_size() as usize];
            // Always the first key: deleting the one found makes the next the first.
            while map_elem(
                bpf_cmd::BPF_MAP_GET_NEXT_KEY,
                fd,
                None,
                key.as_mut_ptr() as u64,
            )
            .map(|()| true)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(false),
                _ => Err(e),
            })
            .map_err(|e| format!("listing keys: {e}"))?
            {
                match map_elem(bpf_cmd::BPF_MAP_DELETE_ELEM, fd, Some(&key), 0) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                        return Err(format!("deleting: {e}"));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        MapType::Array | MapType::PerCpuArray => {
            if info.map_flags() & BPF_F_RDONLY_PROG != 0 {
                return Ok(());
            }
            let value = match map_type {
                MapType::PerCpuArray => (info.value_size() as usize).next_multiple_of(8) * cpus,
                _ => info.value_size() as usize,
            };
            let zeros = vec![0u8; value];
            for index in 0..info.max_entries() {
                map_elem(
                    bpf_cmd::BPF_MAP_UPDATE_ELEM,
                    fd,
                    Some(&index.to_ne_bytes()),
                    zeros.as_ptr() as u64,
                )
                .map_err(|e| format!("zeroing entry {index}: {e}"))?;
            }
            Ok(())
        }
        MapType::RingBuf => Ok(()),
        other => Err(format!("maps of type {other:?} are not reset")),
    }
}

/// One `bpf(2)` element command on map `fd` (aya has no untyped element access): `value`
/// is the address of the value or of the next key.
fn map_elem(cmd: bpf_cmd, fd: RawFd, key: Option<&[u8]>, value: u64) -> io::Result<()> {
    // SAFETY: an all-zero bpf_attr is valid (the kernel requires unused fields zeroed).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the fields of the union member these commands read.
    unsafe {
        let elem = &mut attr.__bindgen_anon_2;
        elem.map_fd = fd as u32;
        elem.key = key.map_or(0, |k| k.as_ptr() as u64);
        elem.__bindgen_anon_1.value = value;
        elem.flags = 0;
    }
    // SAFETY: attr points at a live bpf_attr whose key and value addresses are live buffers of
    // the map's key and value sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            &attr as *const bpf_attr,
            std::mem::size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_pin_names_its_hook_and_only_this_binary_s_hooks() {
        let expected = [
            ("sys_enter_tp", ProgramKind::TracePoint),
            ("sys_enter", ProgramKind::KProbe),
        ];
        let hooks = [
            Hook::TracePoint {
                prog: "sys_enter_tp",
                category: "syscalls",
                event: "sys_enter_openat".into(),
            },
            Hook::KProbe {
                prog: "sys_enter",
                function: "__x64_sys_openat".into(),
            },
        ];
        for hook in &hooks {
            let pin = link_pin("1f2e", hook);
            assert!(!pin.contains('.'), "{pin}");
            assert_eq!(hook_of_pin(&pin, &expected).as_ref(), Some(hook), "{pin}");
        }
        for file in [
            "link_1f2e_tp@sys_exit_tp@syscalls@sys_exit_openat", // not a program of this set
            "link_1f2e_tp@sys_enter_tp@kprobes@sys_enter_openat", // not a category hooked
            "link_1f2e_tp@sys_enter_tp@syscalls@sys_enter_openat@x",
            "link_1f2e_kp@sys_enter",
            "link_tp@sys_enter_tp@syscalls@sys_enter_openat",
            "map_EVENTS",
        ] {
            assert_eq!(hook_of_pin(file, &expected), None, "{file}");
        }
    }

    #[test]
    fn kernel_names_are_cut_at_15_bytes() {
        assert_eq!(kernel_name("sys_enter_tp"), "sys_enter_tp");
        assert_eq!(kernel_name("sched_process_fork"), "sched_process_f");
    }

    #[test]
    fn pins_are_named_without_dots_and_name_their_map() {
        for name in [".rodata", "EVENTS", "WATCHED_TASKS"] {
            assert!(!map_pin(name).contains('.'));
            assert_eq!(map_of_pin(&map_pin(name)).as_deref(), Some(name));
        }
        assert!(!program_pin("sys_enter_tp").contains('.'));
        assert_eq!(map_of_pin(&program_pin("sys_enter_tp")), None);
    }
}
