//! What Prometheus scrapes from /metrics, counted where the data path passes, plus what is
//! read at each scrape: the kernel programs' own counters and the daemon's process.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

use monitor_common::event::Counter as KernelCounter;

use monitor_engine::router::Router;
use monitor_scan::ScanReport;

/// The exposition formats /metrics speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0, the default.
    OpenMetrics,
    /// Prometheus' classic text format (0.0.4), for scrapers and parsers that ask for it.
    Classic,
}

impl Format {
    /// The format an `Accept` header asks for: classic only when it prefers `text/plain`
    /// over OpenMetrics (or does not name OpenMetrics at all).
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let weight = |media: &str| {
            accept
                .split(',')
                .filter(|part| part.trim_start().starts_with(media))
                .map(|part| {
                    (part.split(';').map(str::trim))
                        .find_map(|p| p.strip_prefix("q="))
                        .and_then(|q| q.parse::<f32>().ok())
                        .unwrap_or(1.0)
                })
                .fold(None, |best: Option<f32>, q| {
                    Some(best.map_or(q, |b| b.max(q)))
                })
        };
        match (weight("application/openmetrics-text"), weight("text/plain")) {
            (Some(om), Some(text)) if text > om => Format::Classic,
            (None, Some(_)) => Format::Classic,
            _ => Format::OpenMetrics,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScanLabels {
    pub verdict: String,
    pub format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub severity: String,
    pub rule: String,
    /// `scan` or `watch`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub syscall: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContentLabels {
    /// `model`, `no_model` or `unknown`.
    pub content: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

pub struct Metrics {
    /// Unprefixed: the `process_*` families; `monitor_*` ones live in its sub-registry.
    registry: Registry,
    pub scans: Family<ScanLabels, Counter>,
    pub scan_duration: Histogram,
    pub findings: Family<FindingLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub events_dropped: Counter,
    pub queue_depth: Gauge,
    pub processes_killed: Counter,
    /// Processes discovery found, by what their open could load.
    pub discovered: Family<ContentLabels, Counter>,
    pub discovery_released: Counter,
    pub discovery_gaps: Counter,
    /// Export lines that found no room in the writer's queue.
    pub export_dropped: Counter,
    pub watches_active: Gauge,
    pub store_errors: Counter,
    pub probes_tampered: Gauge,
    pub probe_tampering: Counter,
    pub probes_reattached: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("monitor");
        let scans = Family::<ScanLabels, Counter>::default();
        registry.register(
            "scans",
            "Scans finished, by verdict and format",
            scans.clone(),
        );
        // 10 ms to about 330 s: above the longest scan a default time limit (120 s) allows.
        let scan_duration = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "scan_duration_seconds",
            "Wall time of a scan, from start to verdict",
            scan_duration.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Findings, by severity, rule and source",
            findings.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Traced syscalls of watched jobs, by syscall",
            events.clone(),
        );
        let processes_killed = Counter::default();
        registry.register(
            "processes_killed",
            "Processes or jobs monitor killed (a scan's time limit, a watch's kill policy)",
            processes_killed.clone(),
        );
        let discovered = Family::<ContentLabels, Counter>::default();
        // Every label value there is, from zero: a rate over a series that appears only at
        // its first increment misses that increment.
        for content in monitor_watch::content::Content::KINDS {
            discovered
                .get_or_create(&ContentLabels { content })
                .inc_by(0);
        }
        registry.register(
            "discovered_processes",
            "Processes discovery watches for an open that could load a model, by what the file \
             could be from its magic bytes (model, or unknown: counted as a model)",
            discovered.clone(),
        );
        let discovery_released = Counter::default();
        registry.register(
            "discovery_released",
            "Processes discovery found at model-named files that hold no model (site .pth \
             files, an ELF named .bin, ...) and let go of within a second",
            discovery_released.clone(),
        );
        let discovery_gaps = Counter::default();
        registry.register(
            "discovery_gaps",
            "Discovered processes watched again after their release, having opened a model \
             in the instant before it: their syscalls in between were not seen",
            discovery_gaps.clone(),
        );
        let export_dropped = Counter::default();
        registry.register(
            "export_dropped",
            "Export lines (findings, kills, discoveries, verdicts) dropped because the export \
             writer had fallen too far behind",
            export_dropped.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Trace records lost to a full ring buffer",
            events_dropped.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "scan_queue_depth",
            "Scans waiting to run",
            queue_depth.clone(),
        );
        let watches_active = Gauge::default();
        registry.register(
            "watches_active",
            "Live watches running (discovery included)",
            watches_active.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Scans refused or reports lost because the state directory was full",
            store_errors.clone(),
        );
        let probes_tampered = Gauge::default();
        registry.register(
            "probes_tampered",
            "Problems the last check found in the kernel probes (changed from outside); \
             scans are not clean while it is above zero",
            probes_tampered.clone(),
        );
        let probe_tampering = Counter::default();
        registry.register(
            "probes_tampering_found",
            "Checks of the kernel probes that found them changed from outside",
            probe_tampering.clone(),
        );
        let probes_reattached = Counter::default();
        registry.register(
            "probes_reattached",
            "Probe attachments attached again after their link fds were closed from outside",
            probes_reattached.clone(),
        );
        registry.register(
            "build",
            "The running monitord",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
        );
        Metrics {
            registry: root,
            scans,
            scan_duration,
            findings,
            events,
            events_dropped,
            queue_depth,
            processes_killed,
            discovered,
            discovery_released,
            discovery_gaps,
            export_dropped,
            watches_active,
            store_errors,
            probes_tampered,
            probe_tampering,
            probes_reattached,
        }
    }
}

impl Metrics {
    /// A process discovery found, and what its open could load.
    pub fn count_discovered(&self, content: &monitor_watch::content::Content) {
        self.discovered
            .get_or_create(&ContentLabels {
                content: content.kind(),
            })
            .inc();
    }

    /// A traced event of a scan or a watch: syscalls are counted by name.
    pub fn count_event(&self, event: &monitor_engine::trace::Event) {
        if let monitor_engine::trace::What::Syscall(sc) = &event.what {
            self.events
                .get_or_create(&EventLabels {
                    syscall: sc.name.to_string(),
                })
                .inc();
        }
    }

    /// A finding of a scan or a watch (`source`).
    pub fn count_finding(&self, finding: &monitor_rules::Finding, source: &str) {
        self.findings
            .get_or_create(&FindingLabels {
                severity: finding.severity.name().into(),
                rule: finding.rule.clone(),
                source: source.into(),
            })
            .inc();
    }

    pub fn record_scan(&self, report: &ScanReport) {
        self.scans
            .get_or_create(&ScanLabels {
                verdict: report.verdict.name().into(),
                format: report
                    .artifact
                    .format
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            })
            .inc();
        self.scan_duration
            .observe(report.duration_ms as f64 / 1000.0);
        for f in &report.findings {
            self.count_finding(f, "scan");
        }
        // Those the report did not keep (beyond the first of their rule) count too.
        for (rule, omitted) in &report.findings_omitted {
            if let Some(kept) = report.findings.iter().find(|f| &f.rule == rule) {
                self.findings
                    .get_or_create(&FindingLabels {
                        severity: kept.severity.name().into(),
                        rule: rule.clone(),
                        source: "scan".into(),
                    })
                    .inc_by(*omitted);
            }
        }
        if let Some(trace) = &report.trace {
            self.events_dropped.inc_by(trace.dropped);
        }
        if report
            .errors
            .iter()
            .any(|e| e.kind == monitor_scan::report::ErrorKind::Timeout)
        {
            self.processes_killed.inc();
        }
    }

    /// Reads the kernel programs' counters and the router's at each scrape.
    pub fn collect_from(&mut self, router: Router) {
        self.registry
            .sub_registry_with_prefix("monitor")
            .register_collector(Box::new(KernelCollector(router)));
    }

    /// The exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        };
        out
    }
}

/// One metric read at scrape time (a `ConstCounter` or a `ConstGauge`), under `name`.
fn encode_const(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The kernel programs' per-CPU counters and the router's, as `/v1/status` shows them.
struct KernelCollector(Router);

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCollector")
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let router = &self.0;
        // A map that cannot be read leaves its families out of this scrape (the log and
        // /v1/status say why); the others still answer.
        if let Ok(c) = router.counters() {
            for counter in KernelCounter::ALL {
                let (name, help) = counter.metric();
                let value = c.get(counter);
                encode_const(&mut encoder, name, help, ConstCounter::new(value))?;
            }
        }
        encode_const(
            &mut encoder,
            "records_malformed",
            "Ring-buffer records that could not be decoded",
            ConstCounter::new(router.malformed()),
        )?;
        encode_const(
            &mut encoder,
            "records_unrouted",
            "Records of no job or watch (one that had just ended)",
            ConstCounter::new(router.unrouted()),
        )?;
        let (attached, missing) = router.attachments();
        encode_const(
            &mut encoder,
            "probes_attached",
            "Tracepoints the probes are attached to",
            ConstGauge::new(attached as i64),
        )?;
        encode_const(
            &mut encoder,
            "probes_missing",
            "Syscalls of the table this kernel has no tracepoint for",
            ConstGauge::new(missing.len() as i64),
        )?;
        encode_const(
            &mut encoder,
            "router_subscriptions",
            "Jobs and watches the record router hands records to",
            ConstGauge::new(router.subscriptions() as i64),
        )
    }
}

/// The daemon's own process, as every Prometheus client library exports it (`process_*`).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        encode_const(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ConstCounter::new(p.cpu_seconds),
        )?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                p.threads,
            ),
        ] {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            encode_const(&mut encoder, name, help, ConstGauge::new(value))?;
        }
        Ok(())
    }
}

/// What /proc says of this process.
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: u64,
    threads: u64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        use nix::unistd::{SysconfVar, sysconf};
        let line = std::fs::read_to_string("/proc/self/stat").ok()?;
        let stat = monitor_engine::procfs::Stat::parse(&line)?;
        let field = |n: usize| stat.field(n);
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()?.max(1) as u64;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()?.max(1) as u64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let (max_fds, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks as f64,
            threads: field(20)?,
            start_time_seconds: boot + field(22)? / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds,
            max_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_is_served_only_to_whoever_prefers_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Format::OpenMetrics),
            (Some("*/*"), Format::OpenMetrics),
            (Some(prometheus), Format::OpenMetrics),
            (Some("text/plain; version=0.0.4"), Format::Classic),
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                Format::Classic,
            ),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
        ] {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn both_formats_hold_every_family() {
        let metrics = Metrics::default();
        let open = metrics.render(Format::OpenMetrics);
        let classic = metrics.render(Format::Classic);
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
        assert!(!classic.contains("# EOF"), "{classic}");
        for text in [&open, &classic] {
            assert!(text.contains("process_resident_memory_bytes "), "{text}");
            assert!(
                text.contains("monitor_discovered_processes_total{content=\"no_model\"} 0"),
                "{text}"
            );
        }
        assert!(
            classic.contains("# TYPE monitor_store_errors_total counter"),
            "{classic}"
        );
    }
}
