//! monitord's configuration: a TOML file whose every key has a default, so an empty file (or
//! none) is a working configuration. `monitord --print-config` shows the values in force.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database of scans and reports lives.
    pub state_dir: PathBuf,
    /// The API's Unix socket (mode 0660, group `monitor` when that group exists). Who may
    /// connect is the socket's business; what each caller may do, `[roles]`'s.
    pub socket: PathBuf,
    /// Also serve /metrics (only) over TCP here. A loopback address unless
    /// `metrics_listen_allow_non_loopback`: a listener others reach is an opt-in.
    pub metrics_listen: Option<SocketAddr>,
    /// Allow `metrics_listen` on an address that is not loopback (a pod's IP in a Kubernetes
    /// DaemonSet, for Prometheus to scrape). Only /metrics is served there: counters, no
    /// reports and no control; the API stays on the Unix socket, whose permissions are its
    /// only access control.
    pub metrics_listen_allow_non_loopback: bool,
    /// Scans waiting beyond this are refused with 503 (`queue_full`).
    pub max_queued_scans: usize,
    /// Scans run at once; the others wait in the queue. Each runs a Python loader, so more
    /// than the machine's cores gains little.
    pub max_concurrent_scans: usize,
    /// A scan running longer is stopped (and reported as an error unless a threat was seen).
    pub scan_timeout_secs: u64,
    /// How long a scan's loader stays up after the load and the exercise, in milliseconds,
    /// while anything the load left behind still runs (a thread, a child, a timer), as a
    /// server would keep it; cut short when nothing does. 0 turns it off, at most 60000. A
    /// request's `linger_ms` overrides it.
    pub scan_linger_ms: u64,
    /// The largest artifact accepted, in MiB.
    pub max_artifact_mib: u64,
    /// Extra rule files (YAML), judged with the defaults. A directory stands for every
    /// `*.yaml` / `*.yml` file in it, in name order (read again at each reload).
    pub rules: Vec<PathBuf>,
    /// The loader environment (its bin/python is the loader).
    pub loader_env: PathBuf,
    /// Reports older than this many days are deleted (0: kept for ever).
    pub retention_days: u64,
    /// Scans are refused (507, `disk_full`) while the state directory's file system has less
    /// free space than this, in MiB: a report with its trace takes up to tens of MiB, and a
    /// scan that cannot be stored is a scan lost.
    pub min_free_mib: u64,
    /// Size of the kernel ring buffer in KiB (a power of two from 4 to 1048576).
    pub ring_buffer_kib: u32,
    /// An API client must send a request's head within this many seconds of connecting (or,
    /// on a kept-alive connection, of its last reply), and each piece of a request body
    /// within this many seconds of the last; one that stalls is disconnected, so that half a
    /// request cannot hold a connection and its task for ever.
    pub read_timeout_secs: u64,
    /// API connections open at once, all users together; more are answered 503 and closed.
    /// (At most the daemon's open-file limit less what its scans and probes need.)
    pub max_connections: usize,
    /// API connections one user other than root may hold open at once: a user who opens
    /// thousands (streams never read, say) holds these and no more.
    pub max_connections_per_user: usize,
    /// The syscall hooks are attached only while a scan, a run or a watch needs them (on a
    /// kernel without kprobes, attached hooks slow every syscall of every process on the
    /// host), and detached once nothing has needed them for this many milliseconds; the next
    /// job attaches them again before its first process starts (a fraction of a second).
    /// With discovery on they stay attached.
    pub hooks_linger_ms: u64,
    /// Who may do what over the API (root may do everything).
    pub roles: RolesConfig,
    /// Watching any process on the host that opens a model artifact.
    pub discovery: DiscoveryConfig,
    /// Every finding, kill, discovery and scan verdict as JSON lines, for a log shipper.
    pub export: crate::export::ExportConfig,
}

/// `[roles]`: the users and groups (by name) that hold each role. A caller holds the highest
/// role that names them or one of their groups; root is always `admin`. One named in no role
/// may only ask `/healthz`.
///
/// - `scan`: submit scans (of files they can read themselves), see their own scans, reports
///   and findings, and watch (report only) processes and cgroups they own;
/// - `read`: that, and every scan, report, finding and watch;
/// - `admin`: everything: watches of any process, cgroup or executable, kill policies, rule
///   reloads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolesConfig {
    pub scan_users: Vec<String>,
    pub scan_groups: Vec<String>,
    pub read_users: Vec<String>,
    pub read_groups: Vec<String>,
    pub admin_users: Vec<String>,
    pub admin_groups: Vec<String>,
}

/// By default the members of the socket's group (`monitor`) may scan.
impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            scan_users: Vec::new(),
            scan_groups: vec![SOCKET_GROUP.into()],
            read_users: Vec::new(),
            read_groups: Vec::new(),
            admin_users: Vec::new(),
            admin_groups: Vec::new(),
        }
    }
}

/// The group the API socket belongs to when it exists (mode 0660): who may connect at all.
pub const SOCKET_GROUP: &str = "monitor";

/// `[discovery]`: any process on the host that opens a file whose name ends in one of
/// `suffixes` is watched from that open on, with what it starts, for `window_secs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub enabled: bool,
    /// File name endings, matched without case (at most 16, each at most 16 bytes).
    pub suffixes: Vec<String>,
    pub window_secs: u64,
    /// Stop watching a discovered process as soon as no open of a model-named file by it
    /// could load a model, as the files' magic bytes tell (it failed, it wrote, it was an ELF
    /// or a pickle of plain data); a later open of a model is discovered again.
    pub release_without_model: bool,
    /// Kill a discovered process at a finding of this severity or above.
    pub kill_at: Option<monitor_rules::Severity>,
    /// Syscalls killed in the kernel (default with `kill_at`: execve, execveat).
    pub kill_in_kernel: Option<Vec<String>>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: false,
            suffixes: monitor_watch::artifact::DEFAULT_SUFFIXES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            window_secs: 300,
            release_without_model: true,
            kill_at: None,
            kill_in_kernel: None,
        }
    }
}

impl DiscoveryConfig {
    /// The watch discovery runs as.
    pub fn spec(&self) -> Result<monitor_watch::WatchSpec, ConfigError> {
        use monitor_watch::{Policy, Selector, WatchSpec, spec::DEFAULT_KILL_IN_KERNEL};
        let mut probe = monitor_common::event::Discovery::default();
        monitor_watch::artifact::kernel_suffixes(&self.suffixes, &mut probe)
            .map_err(|e| ConfigError::Invalid(format!("discovery.suffixes: {e}")))?;
        if self.window_secs == 0 {
            return Err(ConfigError::Invalid(
                "discovery.window_secs must be above zero".into(),
            ));
        }
        let kill_in_kernel = match (&self.kill_at, &self.kill_in_kernel) {
            (None, Some(k)) if !k.is_empty() => {
                return Err(ConfigError::Invalid(
                    "discovery.kill_in_kernel needs discovery.kill_at".into(),
                ));
            }
            (None, _) => Vec::new(),
            (Some(_), Some(k)) => k.clone(),
            (Some(_), None) => DEFAULT_KILL_IN_KERNEL
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        if let Some(bad) = kill_in_kernel
            .iter()
            .find(|n| !monitor_common::syscall::is_known(n))
        {
            return Err(ConfigError::Invalid(format!(
                "discovery.kill_in_kernel: `{bad}` is not a traced syscall"
            )));
        }
        Ok(WatchSpec {
            name: Some("discovery".into()),
            selector: Selector::Discovery {
                suffixes: self.suffixes.clone(),
                window_secs: self.window_secs,
                release_without_model: self.release_without_model,
            },
            policy: Policy {
                kill_at: self.kill_at,
                kill_in_kernel,
                document: None,
            },
            load_window_ms: monitor_watch::spec::DEFAULT_LOAD_WINDOW_MS,
            load_grace_ms: monitor_watch::spec::DEFAULT_LOAD_GRACE_MS,
            learning: None,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: "/var/lib/monitor/state".into(),
            socket: "/run/monitor/monitord.sock".into(),
            metrics_listen: None,
            metrics_listen_allow_non_loopback: false,
            max_queued_scans: 1000,
            max_concurrent_scans: 2,
            scan_timeout_secs: 120,
            scan_linger_ms: monitor_scan::job::DEFAULT_LINGER.as_millis() as u64,
            max_artifact_mib: 8192,
            rules: Vec::new(),
            loader_env: monitor_scan::job::DEFAULT_LOADER_ENV.into(),
            retention_days: 90,
            min_free_mib: 64,
            ring_buffer_kib: monitor_common::event::RING_BUFFER_DEFAULT_KIB,
            read_timeout_secs: 5,
            max_connections: 512,
            max_connections_per_user: 32,
            hooks_linger_ms: 30_000,
            roles: RolesConfig::default(),
            discovery: DiscoveryConfig::default(),
            export: Default::default(),
        }
    }
}

/// The longest a scan's loader lingers after the load, in milliseconds: a scan's time limit,
/// not its linger, is what bounds a long wait.
pub const MAX_LINGER_MS: u64 = 60_000;

/// More scans at once than this would only contend for the CPUs and the ring buffer.
pub const MAX_CONCURRENT_SCANS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.export.validate().map_err(ConfigError::Invalid)?;
        if let Some(addr) = self.metrics_listen
            && !addr.ip().is_loopback()
            && !self.metrics_listen_allow_non_loopback
        {
            return Err(ConfigError::Invalid(format!(
                "metrics_listen = {addr}: only loopback addresses are allowed unless \
                 metrics_listen_allow_non_loopback = true"
            )));
        }
        if monitor_common::event::ring_buffer_kib(self.ring_buffer_kib).is_none() {
            return Err(ConfigError::Invalid(format!(
                "ring_buffer_kib must be {}",
                monitor_common::event::RING_BUFFER_KIB_RULE
            )));
        }
        if self.scan_timeout_secs == 0
            || self.max_queued_scans == 0
            || self.read_timeout_secs == 0
            || self.max_connections == 0
            || self.max_connections_per_user == 0
        {
            return Err(ConfigError::Invalid(
                "scan_timeout_secs, max_queued_scans, read_timeout_secs, max_connections and \
                 max_connections_per_user must be above zero"
                    .into(),
            ));
        }
        self.discovery.spec()?;
        if self.scan_linger_ms > MAX_LINGER_MS {
            return Err(ConfigError::Invalid(format!(
                "scan_linger_ms must be at most {MAX_LINGER_MS}"
            )));
        }
        if !(1..=MAX_CONCURRENT_SCANS).contains(&self.max_concurrent_scans) {
            return Err(ConfigError::Invalid(format!(
                "max_concurrent_scans must be between 1 and {MAX_CONCURRENT_SCANS}"
            )));
        }
        Ok(())
    }

    pub fn hooks_linger(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.hooks_linger_ms)
    }

    pub fn read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.read_timeout_secs)
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir.join("monitor.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults_and_mistakes_are_named() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.scan_timeout_secs, 120);
        let err = toml::from_str::<Config>("scan_timeout = 5").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let open: Config = toml::from_str("metrics_listen = \"0.0.0.0:9464\"").unwrap();
        assert!(open.validate().is_err());
        let err = open.validate().unwrap_err().to_string();
        assert!(err.contains("metrics_listen_allow_non_loopback"), "{err}");
        let opted: Config = toml::from_str(
            "metrics_listen = \"0.0.0.0:9464\"\nmetrics_listen_allow_non_loopback = true",
        )
        .unwrap();
        opted.validate().unwrap();
        let loopback: Config = toml::from_str("metrics_listen = \"[::1]:9464\"").unwrap();
        loopback.validate().unwrap();
        let discovery: Config =
            toml::from_str("[discovery]\nenabled = true\nkill_at = \"high\"").unwrap();
        discovery.validate().unwrap();
        let spec = discovery.discovery.spec().unwrap();
        assert_eq!(spec.policy.kill_in_kernel, ["execve", "execveat"]);
        let bad: Config = toml::from_str("[discovery]\nsuffixes = [\"\"]").unwrap();
        assert!(bad.validate().is_err());
        assert_eq!(config.read_timeout(), std::time::Duration::from_secs(5));
        // No timeout at all would bring back the stalled client that holds its connection.
        let never: Config = toml::from_str("read_timeout_secs = 0").unwrap();
        let err = never.validate().unwrap_err().to_string();
        assert!(err.contains("read_timeout_secs"), "{err}");
    }
}
