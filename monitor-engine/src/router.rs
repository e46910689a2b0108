//! Sorts the records of the one ring buffer by watch, so that many jobs (scans, runs, live
//! watches, discovery) share one set of loaded probes at once.
//!
//! One thread of its own (`monitor-router`, with a single-threaded tokio runtime) owns the
//! [`Reader`]: it wakes when the kernel signals data, decodes every available record and hands
//! each to the [`Subscription`] of the watch that selected it (the kernel marks each record
//! with its watch's id). Nothing the jobs do on the caller's runtime (a judge that falls
//! behind, a report being written, a request being served) keeps it from draining the ring
//! buffer, so a busy job cannot make the kernel drop another job's records. A job subscribes
//! before its first process starts and [`finish`](Subscription::finish)es after its last one
//! has exited; in between it sees its own records and nobody else's.
//!
//! Every subscription holds the syscall hooks attached ([`HooksHeld`]): the first one
//! attaches them before it is returned, so a job's first process, started after it
//! subscribed, is recorded from its first syscall. Where the router was told to
//! ([`detach_when_idle`](Router::detach_when_idle), monitord), a thread of its own detaches
//! them once nobody has held them for the linger.
//!
//! Nothing is lost silently. A subscription's queue is bounded: records that find it full are
//! counted as lost for that job, like the kernel counts a full ring buffer, and either makes
//! the job's trace incomplete. Records that cannot be decoded belong to no known cgroup, so
//! every job running while one appears counts it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::{mpsc, oneshot};

use monitor_common::event::{Discovery, KillPolicy, PathKey, Watch};

use crate::decode::Record;
use crate::probes::{HooksState, KernelCounters, ProbeError, Probes, Target, WatchCounters};
use crate::reader::Reader;

/// Records one subscription may have waiting before further ones are counted as lost. A job
/// whose judge falls this far behind is being flooded; its memory stays bounded.
pub const MAX_PENDING_RECORDS: usize = 1 << 18;

/// Why the router could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the probes' ring buffer is already in use by another reader")]
    RingInUse,
    #[error("registering the ring buffer with the async runtime: {0}")]
    Register(std::io::Error),
    #[error("starting the router's thread: {0}")]
    Thread(std::io::Error),
    #[error("the record router stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// Shared handle to loaded probes and the thread that routes their records. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

struct Shared {
    probes: Mutex<Probes>,
    /// Who holds the syscall hooks attached, and when to detach them. Dropped with the router,
    /// it ends the detaching thread.
    hooks: EndsDetaching,
    /// By watch id.
    routes: Mutex<HashMap<u64, Route>>,
    next_watch_id: AtomicU64,
    /// Records that could not be decoded, since start.
    malformed: AtomicU64,
    /// Records of watches nobody subscribes to (the tail of a job that finished).
    unrouted: AtomicU64,
    /// Checks of the probes that found them changed from outside, since start.
    tampered: AtomicU64,
    /// What the last check of the probes found wrong.
    tampering: Mutex<Vec<String>>,
    /// The last problems any check found, and when (Unix seconds): kept after a repair.
    last_tampering: Mutex<Option<(u64, Vec<String>)>>,
    /// Why the routing thread ended, when it ended on its own.
    failure: Mutex<Option<String>>,
    thread: Mutex<Option<RouterThread>>,
}

/// The demand for the syscall hooks, and what wakes the detaching thread when it changes.
#[derive(Default)]
struct Hooks {
    demand: Mutex<Demand>,
    changed: Condvar,
}

/// The router's handle on [`Hooks`]: the detaching thread holds the router only weakly, and
/// learns from this one's drop that it is gone.
#[derive(Default)]
struct EndsDetaching(Arc<Hooks>);

impl std::ops::Deref for EndsDetaching {
    type Target = Arc<Hooks>;
    fn deref(&self) -> &Arc<Hooks> {
        &self.0
    }
}

impl Drop for EndsDetaching {
    fn drop(&mut self) {
        lock(&self.0.demand).stopping = true;
        self.0.changed.notify_all();
    }
}

/// Who needs the syscall hooks attached.
#[derive(Default)]
struct Demand {
    /// [`HooksHeld`]s alive.
    holders: usize,
    /// Detach them once nobody has held them this long; `None`: never (they stay attached).
    linger: Option<Duration>,
    /// Since when nobody holds them (while attached).
    idle_since: Option<Instant>,
    /// The router is stopping: the detaching thread ends.
    stopping: bool,
}

/// What [`Router::hooks`] says.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HooksStatus {
    pub state: HooksState,
    /// Jobs, watches and discovery holding them attached now.
    pub held_by: usize,
    /// They are detached after this long with nobody holding them (`None`: never).
    pub detach_after_idle_ms: Option<u64>,
}

/// Holds the syscall hooks attached while alive (see [`Router::hold_hooks`]).
pub struct HooksHeld {
    hooks: Arc<Hooks>,
}

impl Drop for HooksHeld {
    fn drop(&mut self) {
        let mut demand = lock(&self.hooks.demand);
        demand.holders -= 1;
        if demand.holders == 0 {
            demand.idle_since = Some(Instant::now());
            self.hooks.changed.notify_all();
        }
    }
}

/// The routing thread, and where it gives the ring buffer back when it ends.
struct RouterThread {
    handle: std::thread::JoinHandle<()>,
    ring: oneshot::Receiver<RingBuf<MapData>>,
}

struct Route {
    tx: mpsc::UnboundedSender<Vec<Record>>,
    queue: Arc<Queue>,
}

/// What a subscription's channel holds, counted on both ends.
#[derive(Default)]
struct Queue {
    pending: AtomicUsize,
    lost: AtomicU64,
}

enum Command {
    /// Route every record available now, then answer.
    Sync(oneshot::Sender<()>),
    Stop,
}

impl Router {
    /// Starts routing the records of `probes` on a thread of its own.
    pub fn start(mut probes: Probes) -> Result<Router, RouterError> {
        let ring = probes.take_events().ok_or(RouterError::RingInUse)?;
        let shared = Arc::new(Shared {
            probes: Mutex::new(probes),
            hooks: EndsDetaching::default(),
            routes: Mutex::new(HashMap::new()),
            next_watch_id: AtomicU64::new(1),
            malformed: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            tampered: AtomicU64::new(0),
            tampering: Mutex::new(Vec::new()),
            last_tampering: Mutex::new(None),
            failure: Mutex::new(None),
            thread: Mutex::new(None),
        });
        let (commands, received) = mpsc::unbounded_channel();
        let thread = spawn_thread(ring, shared.clone(), received)?;
        *lock(&shared.thread) = Some(thread);
        Ok(Router { shared, commands })
    }

    /// From now on, detaches the syscall hooks once nobody has held them for `linger` (from
    /// now, if nobody holds them now), on a thread of its own; a later
    /// [`hold_hooks`](Self::hold_hooks) attaches them again.
    pub fn detach_when_idle(&self, linger: Duration) -> Result<(), RouterError> {
        {
            let mut demand = lock(&self.shared.hooks.demand);
            if demand.linger.is_some() {
                demand.linger = Some(linger);
                return Ok(());
            }
            demand.linger = Some(linger);
            if demand.holders == 0 {
                demand.idle_since = Some(Instant::now());
            }
        }
        let (hooks, shared) = (Arc::clone(&self.shared.hooks), Arc::downgrade(&self.shared));
        std::thread::Builder::new()
            .name("monitor-hooks".into())
            .spawn(move || detach_when_idle(&hooks, &shared))
            .map(drop)
            .map_err(RouterError::Thread)
    }

    /// Holds the syscall hooks attached until the returned guard is dropped: attaches them
    /// first if they are not (blocking: the attach alone, a fraction of a second).
    pub fn hold_hooks(&self) -> Result<HooksHeld, RouterError> {
        {
            let mut demand = lock(&self.shared.hooks.demand);
            demand.holders += 1;
            demand.idle_since = None;
        }
        // Counted first: the detaching thread, which looks at the demand before it takes the
        // probes, cannot detach them after this attach.
        let held = HooksHeld {
            hooks: Arc::clone(&self.shared.hooks),
        };
        lock(&self.shared.probes).attach_syscalls()?;
        Ok(held)
    }

    /// Whether the syscall hooks are attached, and who holds them.
    pub fn hooks(&self) -> HooksStatus {
        let (held_by, linger) = {
            let demand = lock(&self.shared.hooks.demand);
            (demand.holders, demand.linger)
        };
        HooksStatus {
            state: lock(&self.shared.probes).syscalls_state(),
            held_by,
            detach_after_idle_ms: linger.map(|l| l.as_millis() as u64),
        }
    }

    /// Starts delivering the records of cgroup `cgroup_id` (and the cgroups it leaves its
    /// tasks in) to the returned subscription.
    pub fn watch_cgroup(&self, cgroup_id: u64) -> Result<Subscription, RouterError> {
        self.watch(&[Target::Cgroup(cgroup_id)], Watch::default())
    }

    /// Starts delivering the records of what `targets` select to the returned subscription,
    /// and tells the kernel to record them with `policy` (its id is chosen here), in that
    /// order, so that no record finds no route.
    pub fn watch(&self, targets: &[Target], policy: Watch) -> Result<Subscription, RouterError> {
        let (subscription, watch) = self.subscribe(policy)?;
        lock(&self.shared.probes).watch(&watch, targets)?;
        Ok(subscription)
    }

    /// Turns discovery on: processes that open files named as `discovery` says are watched
    /// from then on, and their records go to the returned subscription. Discovery stops when
    /// the subscription finishes.
    pub fn discover(&self, mut discovery: Discovery) -> Result<Subscription, RouterError> {
        let (mut subscription, watch) = self.subscribe(discovery.watch)?;
        discovery.watch = watch;
        {
            let mut probes = lock(&self.shared.probes);
            probes.watch(&watch, &[])?;
            probes.set_discovery(Some(&discovery))?;
        }
        subscription.discovery = true;
        Ok(subscription)
    }

    fn subscribe(&self, mut policy: Watch) -> Result<(Subscription, Watch), RouterError> {
        self.check_running()?;
        let hooks = self.hold_hooks()?;
        policy.id = self.shared.next_watch_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::default());
        lock(&self.shared.routes).insert(
            policy.id,
            Route {
                tx,
                queue: queue.clone(),
            },
        );
        let subscription = Subscription {
            router: self.clone(),
            watch_id: policy.id,
            rx,
            queue,
            malformed_at_start: self.shared.malformed.load(Ordering::Relaxed),
            tampered_at_start: self.shared.tampered.load(Ordering::Relaxed),
            finished: false,
            discovery: false,
            _hooks: hooks,
        };
        Ok((subscription, policy))
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        lock(&self.shared.probes).counters()
    }

    /// How many tracepoints are attached, and which table entries this kernel lacks.
    pub fn attachments(&self) -> (usize, Vec<String>) {
        let mut probes = lock(&self.shared.probes);
        (probes.attached(), probes.missing().to_vec())
    }

    /// The fds that hold the attachments (see [`Probes::attachment_fds`]), for the tests that
    /// close them the way an injected `close` would.
    pub fn attachment_fds(&self) -> Vec<std::os::fd::RawFd> {
        lock(&self.shared.probes).attachment_fds()
    }

    /// Checks the probes for changes made from outside (see [`Probes::check`]), repairing
    /// what can be; returns what was wrong. Every job running meanwhile is incomplete.
    pub fn check_probes(&self) -> Vec<String> {
        let problems = lock(&self.shared.probes).check();
        if !problems.is_empty() {
            tracing::error!(?problems, "the probes were changed from outside");
            self.shared.tampered.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            *lock(&self.shared.last_tampering) = Some((now, problems.clone()));
        }
        lock(&self.shared.tampering).clone_from(&problems);
        problems
    }

    /// What the checks of the probes found.
    pub fn tampering(&self) -> Tampering {
        Tampering {
            now: lock(&self.shared.tampering).clone(),
            checks: self.shared.tampered.load(Ordering::Relaxed),
            last: lock(&self.shared.last_tampering).clone(),
            reattached: lock(&self.shared.probes).reattached(),
        }
    }

    /// Records that could not be decoded since start.
    pub fn malformed(&self) -> u64 {
        self.shared.malformed.load(Ordering::Relaxed)
    }

    /// Records that arrived for a watch no job subscribes to any more.
    pub fn unrouted(&self) -> u64 {
        self.shared.unrouted.load(Ordering::Relaxed)
    }

    /// Watches subscribed to now.
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared.routes).len()
    }

    /// Detaches every probe for good, now, from many threads at once (see
    /// [`Probes::detach_all`]): for an owner about to exit, whose other handles keep the
    /// probes from being dropped. The probes see nothing more, and their checks find nothing
    /// to restore.
    pub fn detach_all(&self) {
        lock(&self.shared.probes).detach_all();
    }

    /// Stops routing and gives the probes back (to release them where it costs nothing).
    /// `None` while another handle or a subscription still uses the router.
    pub async fn stop(self) -> Option<Probes> {
        let _ = self.commands.send(Command::Stop);
        let thread = lock(&self.shared.thread).take();
        let ring = match thread {
            Some(thread) => {
                let ring = thread.ring.await.ok();
                // It has handed the ring buffer back: it is ending, the join is at once.
                let _ = thread.handle.join();
                ring
            }
            None => None,
        };
        let shared = Arc::try_unwrap(self.shared).ok()?;
        let mut probes = shared
            .probes
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(ring) = ring {
            probes.return_events(ring);
        }
        Some(probes)
    }

    fn check_running(&self) -> Result<(), RouterError> {
        match lock(&self.shared.failure).as_ref() {
            Some(why) => Err(RouterError::Stopped(why.clone())),
            None if self.commands.is_closed() => Err(RouterError::Stopped("it was stopped".into())),
            None => Ok(()),
        }
    }

    /// Routes every record the ring buffer holds now; returns when they are delivered.
    async fn sync(&self) -> Result<(), RouterError> {
        let (done, answered) = oneshot::channel();
        self.commands
            .send(Command::Sync(done))
            .map_err(|_| self.stopped())?;
        answered.await.map_err(|_| self.stopped())
    }

    fn stopped(&self) -> RouterError {
        RouterError::Stopped(
            lock(&self.shared.failure)
                .clone()
                .unwrap_or_else(|| "it was stopped".into()),
        )
    }
}

/// What the checks of the probes found since start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tampering {
    /// What the last check found wrong (empty once repaired).
    pub now: Vec<String>,
    /// Checks that found something.
    pub checks: u64,
    /// The last problems found, and when (Unix seconds).
    pub last: Option<(u64, Vec<String>)>,
    /// Attachments attached again after their fds were closed from outside.
    pub reattached: u64,
}

/// The records of one watch, in the order the kernel wrote them (per CPU; the tracer
/// orders what needs ordering).
pub struct Subscription {
    router: Router,
    watch_id: u64,
    rx: mpsc::UnboundedReceiver<Vec<Record>>,
    queue: Arc<Queue>,
    malformed_at_start: u64,
    tampered_at_start: u64,
    finished: bool,
    /// This is discovery's watch: finishing it turns discovery off.
    discovery: bool,
    /// Dropped last, once the watch is out of the kernel's maps.
    _hooks: HooksHeld,
}

/// A finished subscription's account of its trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceCounts {
    /// What the kernel wrote, dropped and killed for this watch.
    pub kernel: WatchCounters,
    /// Records this job's queue had no room for.
    pub lost_in_queue: u64,
    /// Undecodable records seen while the job ran (they may have been its own).
    pub malformed: u64,
    /// What was found changed in the probes while the job ran (its records may be missing).
    pub tampering: Vec<String>,
}

impl TraceCounts {
    /// Every record of the job reached it.
    pub fn complete(&self) -> bool {
        self.kernel.dropped == 0
            && self.lost_in_queue == 0
            && self.malformed == 0
            && self.tampering.is_empty()
    }
}

impl Subscription {
    /// The watch id the kernel marks this subscription's records with.
    pub fn watch_id(&self) -> u64 {
        self.watch_id
    }

    /// Makes this watch kill what `kill` names, in the kernel, from now on.
    pub fn set_kill_policy(&self, kill: &KillPolicy) -> Result<(), RouterError> {
        Ok(lock(&self.router.shared.probes).set_kill_policy(self.watch_id, kill)?)
    }

    /// The programs this watch lets its processes execute although it kills execs.
    pub fn set_exec_allowed(&self, programs: &[PathKey]) -> Result<(), RouterError> {
        Ok(lock(&self.router.shared.probes).set_exec_allowed(self.watch_id, programs)?)
    }

    /// Watches `target` too (a cgroup found later, a process).
    pub fn add_target(&self, target: Target) -> Result<(), RouterError> {
        Ok(lock(&self.router.shared.probes).add_target(self.watch_id, target)?)
    }

    /// Stops watching processes `pids` (discovered ones whose window passed).
    pub fn forget_processes(&self, pids: &[u32]) -> Result<(), RouterError> {
        Ok(lock(&self.router.shared.probes).forget_processes(self.watch_id, pids)?)
    }

    /// Waits for records, then moves every delivered one into `out`; returns how many.
    pub async fn recv(&mut self, out: &mut Vec<Record>) -> Result<usize, RouterError> {
        let Some(batch) = self.rx.recv().await else {
            return Err(self.router.stopped());
        };
        let mut n = self.take(out, batch);
        n += self.take_ready(out);
        Ok(n)
    }

    /// Moves into `out` every record of this watch that the ring buffer holds now, without
    /// waiting for the kernel to signal them.
    pub async fn sync(&mut self, out: &mut Vec<Record>) -> Result<usize, RouterError> {
        self.router.sync().await?;
        Ok(self.take_ready(out))
    }

    /// The kernel's counters of this cgroup so far.
    pub fn kernel_counters(&self) -> Result<WatchCounters, ProbeError> {
        lock(&self.router.shared.probes).watch_counters(self.watch_id)
    }

    /// Records of this watch lost so far: dropped by a full ring buffer, or by its own full
    /// queue. (What [`Subscription::finish`] counts at the end, while the watch runs.)
    pub fn lost_so_far(&self) -> u64 {
        let dropped = self.kernel_counters().map_or(0, |c| c.dropped);
        dropped + self.queue.lost.load(Ordering::Relaxed)
    }

    /// Stops recording, moves the last records into `out`, and accounts for the trace. For a
    /// job, call it when no task is left in its cgroup: every record of an exited task was
    /// committed before it left.
    pub async fn finish(mut self, out: &mut Vec<Record>) -> Result<TraceCounts, RouterError> {
        self.finished = true;
        // Before the job's cgroup leaves WATCHED, so that its removal by someone else shows.
        let mut tampering = self.router.check_probes();
        let kernel = self.unwatch()?;
        let synced = self.router.sync().await;
        lock(&self.router.shared.routes).remove(&self.watch_id);
        self.take_ready(out);
        synced?;
        Ok(TraceCounts {
            kernel,
            lost_in_queue: self.queue.lost.load(Ordering::Relaxed),
            malformed: self.router.malformed() - self.malformed_at_start,
            tampering: {
                let found = self.router.shared.tampered.load(Ordering::Relaxed);
                if tampering.is_empty() && found > self.tampered_at_start {
                    tampering.push(
                        "the probes were changed from outside while the job ran (and restored)"
                            .into(),
                    );
                }
                tampering
            },
        })
    }

    fn unwatch(&self) -> Result<WatchCounters, ProbeError> {
        let mut probes = lock(&self.router.shared.probes);
        if self.discovery {
            probes.set_discovery(None)?;
        }
        probes.unwatch(self.watch_id)
    }

    fn take(&self, out: &mut Vec<Record>, batch: Vec<Record>) -> usize {
        let n = batch.len();
        self.queue.pending.fetch_sub(n, Ordering::Relaxed);
        out.extend(batch);
        n
    }

    fn take_ready(&mut self, out: &mut Vec<Record>) -> usize {
        let mut n = 0;
        while let Ok(batch) = self.rx.try_recv() {
            n += self.take(out, batch);
        }
        n
    }
}

impl Drop for Subscription {
    /// A job that ends early (an error) must not leave its cgroup watched.
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.unwatch();
            lock(&self.router.shared.routes).remove(&self.watch_id);
        }
    }
}

/// The detaching thread: detaches the syscall hooks once nobody has held them for the linger.
/// Ends with the router.
fn detach_when_idle(hooks: &Hooks, shared: &Weak<Shared>) {
    let mut demand = lock(&hooks.demand);
    loop {
        if demand.stopping {
            return;
        }
        let due = match (demand.idle_since, demand.linger) {
            (Some(since), Some(linger)) if demand.holders == 0 => Some(since + linger),
            _ => None,
        };
        match due {
            Some(due) if due <= Instant::now() => {
                demand.idle_since = None;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                // Under the demand's lock: a hold that comes now waits for it, then attaches.
                lock(&shared.probes).detach_syscalls();
            }
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                demand = hooks
                    .changed
                    .wait_timeout(demand, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            None => {
                demand = hooks
                    .changed
                    .wait(demand)
                    .unwrap_or_else(|p| p.into_inner())
            }
        }
    }
}

/// Starts the routing thread: a single-threaded tokio runtime of its own, on which the ring
/// buffer is registered and [`dispatch`] runs until stopped. Returns once the ring buffer is
/// registered (or could not be).
fn spawn_thread(
    ring: RingBuf<MapData>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
) -> Result<RouterThread, RouterError> {
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (ring_tx, ring_back) = oneshot::channel();
    let handle = std::thread::Builder::new()
        .name("monitor-router".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started_tx.send(Err(RouterError::Register(e)));
                    return;
                }
            };
            let reader = {
                let _entered = runtime.enter();
                Reader::new(ring)
            };
            let reader = match reader {
                Ok(reader) => reader,
                Err(e) => {
                    let _ = started_tx.send(Err(RouterError::Register(e)));
                    return;
                }
            };
            let _ = started_tx.send(Ok(()));
            let reader = runtime.block_on(dispatch(reader, shared, commands));
            // Deregistered while its runtime still runs.
            let _ = ring_tx.send(reader.into_ring());
        })
        .map_err(RouterError::Thread)?;
    match started.recv() {
        Ok(Ok(())) => Ok(RouterThread {
            handle,
            ring: ring_back,
        }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(RouterError::Stopped(
                "the router's thread died at start".into(),
            ))
        }
    }
}

/// The routing loop: until stopped, waits for records and hands them out.
async fn dispatch(
    mut reader: Reader,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Reader {
    let mut records = Vec::with_capacity(4096);
    loop {
        tokio::select! {
            read = reader.read(&mut records) => {
                if let Err(e) = read {
                    tracing::error!(error = %e, "reading the ring buffer failed; no job can be traced");
                    *lock(&shared.failure) = Some(format!("reading the ring buffer: {e}"));
                    // Closing every channel wakes every job, which then fails closed.
                    lock(&shared.routes).clear();
                    return reader;
                }
            }
            command = commands.recv() => match command {
                Some(Command::Sync(done)) => {
                    reader.drain(&mut records);
                    route(&shared, &mut records, &reader);
                    let _ = done.send(());
                    continue;
                }
                Some(Command::Stop) | None => return reader,
            },
        }
        route(&shared, &mut records, &reader);
    }
}

/// Hands `records` (drained) to their watches' subscriptions, a batch per run of one watch.
fn route(shared: &Shared, records: &mut Vec<Record>, reader: &Reader) {
    shared
        .malformed
        .fetch_max(reader.malformed(), Ordering::Relaxed);
    if records.is_empty() {
        return;
    }
    deliver(&lock(&shared.routes), records, &shared.unrouted);
}

/// Hands `records` (drained) to the routes of their watches, a batch per run of one watch, in
/// the order they came; counts in `unrouted` those of no route, and in a route's queue those
/// it had no room for.
fn deliver(routes: &HashMap<u64, Route>, records: &mut Vec<Record>, unrouted: &AtomicU64) {
    let mut records = records.drain(..).peekable();
    while let Some(first) = records.next() {
        let watch = first.header().watch_id;
        let mut batch = vec![first];
        while let Some(next) = records.next_if(|r| r.header().watch_id == watch) {
            batch.push(next);
        }
        let Some(route) = routes.get(&watch) else {
            unrouted.fetch_add(batch.len() as u64, Ordering::Relaxed);
            continue;
        };
        let n = batch.len();
        if route.queue.pending.load(Ordering::Relaxed) + n > MAX_PENDING_RECORDS {
            route.queue.lost.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        route.queue.pending.fetch_add(n, Ordering::Relaxed);
        if route.tx.send(batch).is_err() {
            // The subscription is gone: its job no longer counts.
            route.queue.pending.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the maps it guards stay consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Flags, Fork, Header};

    /// A record of watch `watch`, told apart by `n`.
    fn record(watch: u64, n: u32) -> Record {
        Record::Fork(Fork {
            header: Header {
                time_ns: n.into(),
                cpu: 0,
                cgroup_id: 1,
                watch_id: watch,
                pid: 1,
                tid: 1,
                uid: 0,
                gid: 0,
                comm: "".into(),
                flags: Flags::default(),
            },
            child_tid: n,
        })
    }

    fn route() -> (Route, mpsc::UnboundedReceiver<Vec<Record>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::default());
        (Route { tx, queue }, rx)
    }

    /// The records' `n`s, by batch.
    fn batches(rx: &mut mpsc::UnboundedReceiver<Vec<Record>>) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            out.push(
                batch
                    .iter()
                    .map(|r| match r {
                        Record::Fork(f) => f.child_tid,
                        _ => unreachable!(),
                    })
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn records_reach_their_watch_in_order_a_batch_per_run() {
        let (a, mut rx_a) = route();
        let (b, mut rx_b) = route();
        let (queue_a, queue_b) = (a.queue.clone(), b.queue.clone());
        let routes = HashMap::from([(1, a), (2, b)]);
        let unrouted = AtomicU64::new(0);
        let mut records = vec![
            record(1, 10),
            record(1, 11),
            record(2, 20),
            record(9, 90),
            record(1, 12),
            record(2, 21),
            record(2, 22),
        ];
        deliver(&routes, &mut records, &unrouted);
        assert!(records.is_empty(), "drained");
        assert_eq!(batches(&mut rx_a), [vec![10, 11], vec![12]]);
        assert_eq!(batches(&mut rx_b), [vec![20], vec![21, 22]]);
        // Watch 9 has no subscriber: its record is counted, not lost to anyone's queue.
        assert_eq!(unrouted.load(Ordering::Relaxed), 1);
        assert_eq!(queue_a.pending.load(Ordering::Relaxed), 3);
        assert_eq!(queue_b.pending.load(Ordering::Relaxed), 3);
        assert_eq!(queue_a.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_loses_the_batch_and_counts_it_while_others_go_on() {
        let (a, mut rx_a) = route();
        let (b, mut rx_b) = route();
        let (queue_a, queue_b) = (a.queue.clone(), b.queue.clone());
        queue_a
            .pending
            .store(MAX_PENDING_RECORDS - 1, Ordering::Relaxed);
        let routes = HashMap::from([(1, a), (2, b)]);
        let unrouted = AtomicU64::new(0);
        let mut records = vec![record(1, 10), record(1, 11), record(2, 20), record(1, 12)];
        deliver(&routes, &mut records, &unrouted);
        // Two did not fit; the third, alone, still does.
        assert_eq!(batches(&mut rx_a), [vec![12]]);
        assert_eq!(queue_a.lost.load(Ordering::Relaxed), 2);
        assert_eq!(queue_a.pending.load(Ordering::Relaxed), MAX_PENDING_RECORDS);
        assert_eq!(batches(&mut rx_b), [vec![20]]);
        assert_eq!(queue_b.lost.load(Ordering::Relaxed), 0);
        assert_eq!(unrouted.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_subscriber_gone_holds_no_pending_records() {
        let (a, rx_a) = route();
        let queue = a.queue.clone();
        drop(rx_a);
        let routes = HashMap::from([(1, a)]);
        let unrouted = AtomicU64::new(0);
        deliver(&routes, &mut vec![record(1, 10), record(1, 11)], &unrouted);
        assert_eq!(queue.pending.load(Ordering::Relaxed), 0);
        assert_eq!(queue.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_trace_is_complete_only_with_nothing_dropped_lost_malformed_or_tampered() {
        let complete = TraceCounts::default();
        assert!(complete.complete());
        let incomplete = [
            TraceCounts {
                kernel: WatchCounters {
                    dropped: 1,
                    ..WatchCounters::default()
                },
                ..TraceCounts::default()
            },
            TraceCounts {
                lost_in_queue: 1,
                ..TraceCounts::default()
            },
            TraceCounts {
                malformed: 1,
                ..TraceCounts::default()
            },
            TraceCounts {
                tampering: vec!["a program detached".into()],
                ..TraceCounts::default()
            },
        ];
        for counts in incomplete {
            assert!(!counts.complete(), "{counts:?}");
        }
    }
}
