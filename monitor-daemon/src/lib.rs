//! monitord: the engine as a long-running host daemon. Scans are accepted over the API
//! ([`api`]) from callers the kernel names and `[roles]` authorizes ([`auth`]), kept in the
//! store from the moment they are accepted ([`store`]), run side by side on probes loaded once
//! ([`jobs`]), and counted for Prometheus ([`metrics`]).

pub mod api;
pub mod auth;
pub mod config;
pub mod events;
pub mod export;
pub mod feed;
pub mod jobs;
pub mod metrics;
mod serve;
pub mod store;
pub mod watches;

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{net::UnixListener, sync::mpsc};

use config::Config;
use monitor_engine::probes::{ProbeConfig, Probes};
use monitor_engine::router::Router;
use monitor_rules::RuleSet;
use store::{ScanRequest, Store};

/// What the API handlers and the worker share.
pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub metrics: metrics::Metrics,
    /// The rules in force; replaced whole by a reload (SIGHUP or the API).
    pub rules: RwLock<Arc<RuleSet>>,
    pub queue: mpsc::Sender<(String, ScanRequest)>,
    pub running: jobs::RunningScans,
    /// The probes, loaded once at start, and the router of their records.
    pub router: Router,
    pub watches: watches::Watches,
    /// Findings as they happen, for /v1/findings/stream.
    pub findings_feed: feed::Feed,
    /// `[roles]`, looked up.
    pub roles: auth::Roles,
    /// Becomes true when the daemon stops, ending the streams that would keep it serving.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// `[export]`: the JSON lines of what happened, for a log shipper.
    pub export: export::Exporter,
}

/// How long open API connections may finish after SIGTERM; a client that does not read its
/// reply is then dropped.
const GRACE: Duration = Duration::from_secs(2);

/// How long, after that, a running scan may finish before the daemon exits anyway (the scan
/// is then reported as interrupted at the next start): ten seconds from SIGTERM in all.
const DRAIN: Duration = Duration::from_secs(8);

/// A reply may stall this long (the client reads nothing) before its connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors kept for the probes, the jobs and the store: the API's connections get the
/// open-file limit less these.
const RESERVED_FDS: usize = 256;

impl Shared {
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Loads the rules again from the configured files; the old ones stay in force when the
    /// new ones do not validate.
    pub fn reload_rules(&self) -> Result<usize, monitor_rules::RuleError> {
        let rules = load_rules(&self.config)?;
        let count = rules.len();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        tracing::info!(rules = count, "rules reloaded");
        Ok(count)
    }
}

/// The default rules plus the configured files, validated.
fn load_rules(config: &Config) -> Result<RuleSet, monitor_rules::RuleError> {
    let mut rules = RuleSet::defaults();
    for path in config.rules.iter().flat_map(|p| rule_files(p)) {
        // A file may use the lists, and add exceptions to the rules, of those before it.
        rules.add_file(&path?)?;
    }
    Ok(rules)
}

/// `path` itself, or, for a directory, its YAML files in name order.
fn rule_files(path: &std::path::Path) -> Vec<Result<std::path::PathBuf, monitor_rules::RuleError>> {
    if !path.is_dir() {
        return vec![Ok(path.to_owned())];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            return vec![Err(monitor_rules::RuleError {
                source_name: path.display().to_string(),
                line: 0,
                message: e.to_string(),
            })];
        }
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files.into_iter().map(Ok).collect()
}

/// Runs the daemon until SIGTERM or SIGINT, on a multi-thread tokio runtime.
pub async fn run(config: Config) -> Result<()> {
    let rules = load_rules(&config).context("loading the rules")?;
    let store = Store::open(&config.database())
        .with_context(|| format!("opening {}", config.database().display()))?;
    let expired = store.expire(config.retention_days)?;
    let (interrupted, requeued) = store.recover()?;
    if interrupted > 0 || !requeued.is_empty() || expired > 0 {
        tracing::info!(
            interrupted,
            requeued = requeued.len(),
            expired,
            "recovered the store"
        );
    }

    match monitor_engine::cgroup::remove_stale_jobs() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed job cgroups left by a monitor that died"
        ),
        Err(e) => tracing::warn!(error = %e, "looking for stale job cgroups"),
    }
    let probes = Probes::load(&ProbeConfig {
        ring_buffer_bytes: config.ring_buffer_kib.saturating_mul(1024),
    })
    .context("loading the kernel probes")?;
    let router = Router::start(probes).context("starting the record router")?;
    // Discovery, once on, holds them attached for good.
    router
        .detach_when_idle(config.hooks_linger())
        .context("starting the thread that detaches the syscall hooks")?;

    let capacity = config.max_queued_scans.max(requeued.len());
    let (queue, waiting) = mpsc::channel(capacity);
    let roles = auth::Roles::resolve(&config.roles);
    let mut metrics = metrics::Metrics::default();
    metrics.collect_from(router.clone());
    let export = export::Exporter::start(&config.export, metrics.export_dropped.clone())
        .with_context(|| format!("starting the export ({:?})", config.export.path))?;
    let shared = Arc::new(Shared {
        config,
        store,
        metrics,
        rules: RwLock::new(Arc::new(rules)),
        queue,
        running: Arc::new(Mutex::new(Default::default())),
        router,
        watches: watches::Watches::default(),
        findings_feed: feed::Feed::default(),
        roles,
        stopping: tokio::sync::watch::channel(false).0,
        export,
    });
    for item in requeued {
        shared.metrics.queue_depth.inc();
        shared.queue.send(item).await.expect("the queue is open");
    }
    let worker = tokio::spawn(jobs::worker(shared.clone(), waiting));
    let checker = tokio::spawn(check_probes(shared.clone()));
    resume_watches(&shared)?;

    let listener = bind(&shared.config.socket)?;
    let limits = connection_limits(&shared.config);
    tracing::info!(
        socket = %shared.config.socket.display(),
        max_connections = limits.max_connections,
        "monitord is serving"
    );
    if let Some(addr) = shared.config.metrics_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for /metrics"))?;
        let app = api::metrics_router(shared.clone());
        tokio::spawn(serve::serve(
            tcp,
            app,
            limits,
            |_| None,
            std::future::pending(),
        ));
    }
    let reloader = shared.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = reloader.reload_rules() {
                tracing::error!(error = %e, "rules not reloaded; the old ones stay in force");
            }
        }
    });
    let stopping = shared.clone();
    serve::serve(
        listener,
        api::router(shared.clone()),
        limits,
        |io: &tokio::net::UnixStream| match monitor_engine::creds::Credentials::of_peer(io) {
            Ok((creds, pid)) => Some(auth::Peer { creds, pid }),
            Err(e) => {
                // No credentials, no role: such a caller may ask /healthz only.
                tracing::warn!(error = %e, "a connection's credentials could not be read");
                None
            }
        },
        async move {
            shutdown_signal().await;
            stopping.stopping.send_replace(true);
        },
    )
    .await;

    shared.watches.stop_all();
    tracing::info!("stopping: letting the running scans finish");
    let _ = std::fs::remove_file(&shared.config.socket);
    if tokio::time::timeout(DRAIN, async {
        while !shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_err()
    {
        tracing::warn!("scans were still running; they will be reported as interrupted");
    }
    worker.abort();
    // What was emitted is written before the daemon exits.
    shared.export.close();
    // The probes' attachments released here, many at once, rather than by the process's
    // exit, which closes them one after another: seconds (each waits for an RCU grace
    // period), and `systemctl stop` and every restart wait for it.
    checker.abort();
    let detaching = std::time::Instant::now();
    shared.router.detach_all();
    tracing::info!(took = ?detaching.elapsed(), "probes detached; stopped");
    Ok(())
}

/// How often the probes are checked for changes made from outside.
const PROBE_CHECK: Duration = Duration::from_secs(1);

/// Checks the probes every [`PROBE_CHECK`] (each job also checks them as it ends) and keeps
/// the metric of what was found.
async fn check_probes(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(PROBE_CHECK);
    loop {
        every.tick().await;
        let problems = shared.router.check_probes();
        shared.metrics.probes_tampered.set(problems.len() as i64);
        // Counted from the router's totals: a job's own check as it ends may have been the one
        // that found (and repaired) something.
        let found = shared.router.tampering();
        let metrics = &shared.metrics;
        for (counter, total) in [
            (&metrics.probe_tampering, found.checks),
            (&metrics.probes_reattached, found.reattached),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }
}

/// Starts the stored watches (those whose process is gone end instead) and discovery.
fn resume_watches(shared: &Arc<Shared>) -> Result<()> {
    for record in shared
        .store
        .watches()
        .context("reading the stored watches")?
    {
        if record.spec.selector.still_there() {
            let id = record.id.clone();
            if let Err(e) = shared.watches.start(shared, record, false) {
                tracing::error!(watch = %id, error = format!("{e:#}"), "watch not resumed");
            }
        } else {
            tracing::info!(watch = %record.id, "not resumed: what it watched is gone");
            shared.store.remove_watch(&record.id)?;
        }
    }
    if shared.config.discovery.enabled {
        let spec = shared.config.discovery.spec()?;
        let record = store::WatchRecord {
            id: watches::DISCOVERY_ID.into(),
            spec,
            created_at: 0,
            owner: None,
        };
        shared
            .watches
            .start(shared, record, true)
            .context("starting discovery")?;
    }
    Ok(())
}

/// What the API server allows: the configured connection limits, within the open-file limit.
fn connection_limits(config: &Config) -> serve::Limits {
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        });
    let fits = nofile.saturating_sub(RESERVED_FDS).max(16);
    if config.max_connections > fits {
        tracing::warn!(
            max_connections = config.max_connections,
            open_file_limit = nofile,
            "max_connections lowered to {fits}: the open-file limit leaves no more"
        );
    }
    serve::Limits {
        read_timeout: config.read_timeout(),
        write_timeout: WRITE_TIMEOUT,
        max_connections: config.max_connections.min(fits),
        max_per_user: config.max_connections_per_user,
        grace: GRACE,
    }
}

/// Binds the API socket: mode 0660, group `monitor` when it exists. A stale socket file (no
/// daemon answering) is replaced; a live one is an error.
fn bind(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: is another monitord running?", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name(config::SOCKET_GROUP) {
        let _ = nix::unistd::chown(path, None, Some(group.gid));
    }
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_directory_is_its_yaml_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |id: &str| {
            format!(
                "rules:\n  - id: {id}\n    description: d\n    severity: low\n    \
                 match: {{ syscalls: [openat] }}\n"
            )
        };
        std::fs::write(dir.path().join("b.yml"), rule("test.b")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), rule("test.a")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not rules").unwrap();
        let files: Vec<_> = rule_files(dir.path())
            .into_iter()
            .map(|f| f.unwrap().file_name().unwrap().to_owned())
            .collect();
        assert_eq!(files, ["a.yaml", "b.yml"]);
        let config = Config {
            rules: vec![dir.path().to_owned()],
            ..Config::default()
        };
        let rules = load_rules(&config).unwrap();
        assert_eq!(rules.len(), RuleSet::defaults().len() + 2);
        std::fs::write(
            dir.path().join("c.yaml"),
            "rules: [{id: x, severity: loud}]",
        )
        .unwrap();
        let err = load_rules(&config).unwrap_err();
        assert!(err.source_name.ends_with("c.yaml"), "{err}");
    }
}
