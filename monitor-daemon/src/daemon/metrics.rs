//! What Prometheus scrapes from /metrics, counted where the data path passes.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

use crate::scan::ScanReport;

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
    pub watches_active: Gauge,
    pub store_errors: Counter,
    pub probes_tampered: Gauge,
    pub probe_tampering: Counter,
    pub probes_reattached: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("monitor");
        let scans = Family::<ScanLabels, Counter>::default();
        registry.register(
            "scans",
            "Scans finished, by verdict and format",
            scans.clone(),
        );
        // 10 ms to about 80 s.
        let scan_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
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
            "probe_tampering",
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
            registry,
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
    pub fn count_discovered(&self, content: &crate::watch::content::Content) {
        self.discovered
            .get_or_create(&ContentLabels {
                content: content.kind(),
            })
            .inc();
    }

    /// A traced event of a scan or a watch: syscalls are counted by name.
    pub fn count_event(&self, event: &crate::trace::Event) {
        if let crate::trace::What::Syscall(sc) = &event.what {
            self.events
                .get_or_create(&EventLabels {
                    syscall: sc.name.to_string(),
                })
                .inc();
        }
    }

    /// A finding of a scan or a watch (`source`).
    pub fn count_finding(&self, finding: &crate::rules::Finding, source: &str) {
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
            .any(|e| e.kind == crate::scan::report::ErrorKind::Timeout)
        {
            self.processes_killed.inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
