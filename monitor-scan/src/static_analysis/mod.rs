//! Static analysis: what an artifact's bytes say it could do, read without running anything,
//! for every loader that could be handed it, not only the one a scan runs: the globals of
//! every pickle (in a stream, a NumPy object array, compressed joblib, any member of a zip or
//! 7z archive, hidden in another pickle's data), Keras Lambda layers and custom objects, the
//! ops and path constants of TensorFlow graphs, TorchScript code, ONNX external data and
//! operator domains, GGUF chat templates.
//!
//! Judged by the static rules ([`rules`], rules/static.yaml). The findings join the kernel's
//! and the audit hook's: a scan's verdict is the strongest of them all. Each says whether the
//! load then showed it acting ([`Observed`]).

mod graph;
mod keras;
mod marshal;
mod members;
pub mod pickles;
pub mod rules;

use std::{
    collections::HashSet,
    fs::File,
    io::{BufReader, Cursor, Read},
    path::Path,
};

use serde::Serialize;

pub use pickles::{NamedGlobal, PickleGlobals};
pub use rules::{Evidence, StaticRule, StaticRules};

use monitor_formats::{Format, onnx, pickle};
use monitor_rules::{Severity, Source};

/// The largest archive member or decompressed stream read into memory.
const MAX_MEMBER_BYTES: u64 = 1 << 30;
/// Pickles reported per artifact.
const MAX_PICKLES: usize = 256;
/// Findings of one rule reported per artifact.
const MAX_PER_RULE: usize = 50;
/// A torch legacy file: magic number, protocol, system info, the object, the storage keys;
/// raw storages follow.
const TORCH_LEGACY_PICKLES: usize = 5;
/// How much of an .h5 file is searched for its model configuration (Keras writes it as an
/// attribute of the root group, near the start).
const H5_CONFIG_BYTES: u64 = 64 << 20;

/// A static rule that fired, with what fired it.
#[derive(Debug, Clone, Serialize)]
pub struct StaticFinding {
    /// Always [`Source::Static`].
    pub source: Source,
    pub rule: String,
    pub severity: Severity,
    pub description: String,
    pub tags: Vec<String>,
    /// Where in the artifact: `pickle 2`, `archive/data.pkl`, `config.json: layer lambda_1`.
    pub location: String,
    /// What was seen there: `posix.system`, `op WriteFile`, ...
    pub evidence: String,
    /// What the load did with it.
    pub observed: Observed,
}

/// Whether the loader, watched, showed what a static finding names acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    /// The kernel trace or the audit hook saw an act of its kind during the load.
    Acted,
    /// The audit hook saw the unpickler resolve it, and no act of its kind followed.
    Resolved,
    /// The artifact was loaded under watch and nothing of its kind was seen: named, never
    /// reached (here: a payload for another OS or Python, or one that waits).
    NotReached,
    /// Nothing was loaded (a code-free format, an archive, `--static-only`, or the scan
    /// stopped before the load).
    NotLoaded,
}

impl Observed {
    pub fn describe(self) -> &'static str {
        match self {
            Observed::Acted => "seen acting in the load",
            Observed::Resolved => "resolved by the unpickler, no act of its kind seen",
            Observed::NotReached => "named, never seen acting in the load",
            Observed::NotLoaded => "not loaded",
        }
    }
}

/// What the static analysis found.
#[derive(Debug, Default)]
pub struct Analysis {
    /// The globals of every pickle found, marked with the rule each fires.
    pub pickles: Vec<PickleGlobals>,
    pub findings: Vec<StaticFinding>,
}

/// Analyses the artifact at `path`, detected as `format`. Reading errors become entries of
/// the evidence (`incomplete`), never a failure of the scan.
pub fn analyse(path: &Path, format: &Format, rules: &StaticRules) -> Analysis {
    let mut a = Analyser {
        rules,
        found: pickles::Found::default(),
        findings: Vec::new(),
    };
    a.format(path, format);
    a.finish()
}

struct Analyser<'a> {
    rules: &'a StaticRules,
    found: pickles::Found,
    findings: Vec<StaticFinding>,
}

impl Analyser<'_> {
    fn format(&mut self, path: &Path, format: &Format) {
        let open = || File::open(path).map(|f| BufReader::with_capacity(1 << 16, f));
        match format {
            Format::Pickle(_) | Format::Dill(_) | Format::Cloudpickle(_) => match open() {
                Ok(mut f) => self.found.stream(&mut f, "pickle", pickle::MAX_PICKLES),
                Err(e) => self.found.unread("artifact", format!("unreadable: {e}")),
            },
            Format::TorchLegacy => match open() {
                Ok(mut f) => self.found.stream(&mut f, "pickle", TORCH_LEGACY_PICKLES),
                Err(e) => self.found.unread("artifact", format!("unreadable: {e}")),
            },
            Format::Joblib { compression } => {
                let stream = match compression {
                    None => std::fs::read(path).map_err(|e| e.to_string()),
                    Some(c) => open().map_err(|e| e.to_string()).and_then(|f| {
                        pickles::decompress(c.split(' ').next().unwrap_or(c), f, MAX_MEMBER_BYTES)
                    }),
                };
                match stream {
                    Ok(bytes) => {
                        let before = self.found.pickles.len();
                        self.found.stream(&mut Cursor::new(&bytes), "pickle", 1);
                        // joblib writes each array's bytes inside the pickle stream, after
                        // its wrapper: the walk stops at the first one, and the globals
                        // after it are swept for by their byte pattern.
                        let mut stopped = false;
                        for p in &mut self.found.pickles[before..] {
                            if let Some(why) = &mut p.incomplete {
                                *why = format!("{why} (joblib: array data inside the stream)");
                                stopped = true;
                            }
                        }
                        if stopped {
                            self.found.swept(&bytes, "pickle, past its array data");
                        }
                    }
                    Err(why) => self.found.unread("pickle", why),
                }
            }
            Format::Numpy => match open() {
                Ok(mut f) => {
                    if self.found.npy(&mut f, "array") {
                        self.evidence(Evidence::ObjectArray, "array", "dtype object");
                    }
                }
                Err(e) => self.found.unread("array", format!("unreadable: {e}")),
            },
            Format::TorchZip { .. }
            | Format::TorchScript { .. }
            | Format::NumpyArchive { .. }
            | Format::Keras { .. } => self.zip(path, true),
            Format::Archive { kind: "7z", .. } => {
                match members::seven_zip(path, MAX_MEMBER_BYTES) {
                    Ok(members) => self.members(members),
                    Err(e) => self.found.unread("archive", format!("unreadable 7z: {e}")),
                }
            }
            Format::Archive { .. } => self.zip(path, false),
            Format::Hdf5 => {
                let mut head = Vec::new();
                match open().and_then(|f| f.take(H5_CONFIG_BYTES).read_to_end(&mut head)) {
                    Ok(_) => self.keras(&head, "model_config"),
                    Err(e) => self
                        .found
                        .unread("model_config", format!("unreadable: {e}")),
                }
            }
            Format::SavedModel => self.saved_model(path),
            Format::Onnx(summary) => self.onnx(summary),
            Format::Gguf(summary) => {
                for (key, template) in &summary.chat_templates {
                    if let Some((rule, marker)) = self.rules.for_template(template) {
                        self.push(rule, key, format!("template text `{marker}`"));
                    }
                }
            }
            Format::Safetensors(_) => {}
        }
    }

    fn zip(&mut self, path: &Path, model: bool) {
        // torch's storages are raw numbers no loader unpickles.
        let storage = |name: &str| {
            model
                && name.rsplit_once('/').is_some_and(|(dir, file)| {
                    (dir == "data" || dir.ends_with("/data"))
                        && !file.is_empty()
                        && file.bytes().all(|b| b.is_ascii_digit())
                })
        };
        match members::zip(path, MAX_MEMBER_BYTES, &storage) {
            Ok(members) => self.members(members),
            Err(e) => self.found.unread("archive", format!("unreadable zip: {e}")),
        }
    }

    fn members(&mut self, members: Vec<members::Member>) {
        for member in members {
            if self.found.pickles.len() >= MAX_PICKLES {
                break;
            }
            let name = member.name;
            let bytes = match member.data {
                Ok(bytes) => bytes,
                Err(why) => {
                    self.found.unread(&name, why.clone());
                    self.evidence(Evidence::ArchiveMember, &name, why);
                    continue;
                }
            };
            if monitor_formats::is_numpy(&bytes) {
                if self.found.npy(&mut Cursor::new(&bytes), &name) {
                    self.evidence(Evidence::ObjectArray, &name, "dtype object");
                }
            } else if name.ends_with("config.json") || name.ends_with("metadata.json") {
                self.keras(&bytes, &name);
            } else if name.contains("/code/") || name.starts_with("code/") {
                if let Ok(code) = std::str::from_utf8(&bytes)
                    && let Some((rule, marker)) = self.rules.for_torchscript(code)
                {
                    self.push(rule, &name, format!("code `{marker}`"));
                }
            } else if pickle::starts_with_opcode(&bytes)
                && pickle::walk(&mut Cursor::new(&bytes)).is_ok()
            {
                self.found
                    .stream(&mut Cursor::new(&bytes), &name, pickle::MAX_PICKLES);
            } else if name.ends_with(".pkl") || name.ends_with(".pickle") {
                // Named a pickle, but no pickle that could act: say so, as evidence.
                self.found.stream(&mut Cursor::new(&bytes), &name, 1);
            }
        }
    }

    fn keras(&mut self, bytes: &[u8], location: &str) {
        for config in keras::configs_in(bytes) {
            let found = keras::inspect(&config);
            for (layer, code) in found.lambdas {
                let at = format!("{location}: Lambda layer {layer}");
                self.evidence(Evidence::KerasLambda, &at, "Python bytecode");
                self.code_names(&at, "bytecode names", &marshal::names(&code));
            }
            for object in found.custom_objects {
                let rule = self.rules.for_global(&object);
                match rule {
                    Some(rule) => self.push(rule, location, object),
                    None => self.evidence(Evidence::KerasCustomObject, location, object),
                }
            }
        }
    }

    /// Judges what code names (a Lambda's bytecode, a function pickled by value): each name
    /// as a builtin, and each pair as `module.name`, by the rules for globals. What the
    /// frameworks' list allows (`os.path`) is passed over: code names far more than it calls.
    fn code_names(&mut self, location: &str, what: &str, names: &[String]) {
        let mut named: Vec<(String, &StaticRule)> = Vec::new();
        for candidate in marshal::candidates(names) {
            if self.rules.allows(&candidate) {
                continue;
            }
            if let Some(rule) = self.rules.for_global(&candidate)
                && rule.severity >= Severity::High
                && !named.iter().any(|(c, _)| *c == candidate)
            {
                named.push((candidate, rule));
            }
        }
        for (candidate, rule) in named {
            self.push(rule, location, format!("{what} {candidate}"));
        }
    }

    fn saved_model(&mut self, dir: &Path) {
        match std::fs::read(dir.join("saved_model.pb")) {
            Ok(data) => match graph::read_saved_model(&data) {
                Ok(graph) => {
                    for (op, at) in &graph.ops {
                        if let Some(rule) = self.rules.for_graph_op(op) {
                            self.push(rule, "saved_model.pb", format!("op {op} ({at})"));
                        }
                    }
                    for text in &graph.paths {
                        if let Some(rule) = self.rules.for_graph_string(text) {
                            self.push(rule, "saved_model.pb", format!("string constant {text:?}"));
                        }
                    }
                }
                Err(e) => self
                    .found
                    .unread("saved_model.pb", format!("not a readable graph: {e}")),
            },
            Err(e) => self
                .found
                .unread("saved_model.pb", format!("unreadable: {e}")),
        }
        // A Keras-made SavedModel keeps each layer's configuration (Lambda bytecode too).
        if let Ok(metadata) = std::fs::read(dir.join("keras_metadata.pb")) {
            self.keras(&metadata, "keras_metadata.pb");
        }
    }

    fn onnx(&mut self, summary: &onnx::Summary) {
        for location in &summary.external_data {
            if onnx::leaves_directory(location) {
                self.evidence(
                    Evidence::OnnxExternalPath,
                    "initializer",
                    format!("external data at {location:?}"),
                );
            }
        }
        for domain in &summary.custom_domains {
            self.evidence(
                Evidence::OnnxCustomDomain,
                "graph",
                format!("operator domain {domain:?}"),
            );
        }
    }

    fn evidence(&mut self, evidence: Evidence, location: &str, what: impl Into<String>) {
        if let Some(rule) = self.rules.for_evidence(evidence) {
            self.push(rule, location, what.into());
        }
    }

    fn push(&mut self, rule: &StaticRule, location: &str, evidence: String) {
        let of_rule = self.findings.iter().filter(|f| f.rule == rule.id).count();
        if of_rule >= MAX_PER_RULE
            || self
                .findings
                .iter()
                .any(|f| f.rule == rule.id && f.location == location && f.evidence == evidence)
        {
            return;
        }
        self.findings.push(StaticFinding {
            source: Source::Static,
            rule: rule.id.clone(),
            severity: rule.severity,
            description: rule.description.clone(),
            tags: rule.tags.clone(),
            location: location.to_string(),
            evidence,
            observed: Observed::NotLoaded,
        });
    }

    /// Marks every global with its rule, and gives the findings of the pickles: one per
    /// dangerous global and pickle, one per pickle for the unknown ones.
    fn finish(mut self) -> Analysis {
        let mut found = std::mem::take(&mut self.found);
        found.pickles.truncate(MAX_PICKLES);
        for hidden in &found.hidden {
            self.evidence(
                Evidence::NestedPickle,
                &hidden.source,
                format!(
                    "a pickle in {} at byte {}",
                    hidden.found.encoding, hidden.found.offset
                ),
            );
        }
        for (source, count) in &found.dynamic_globals {
            self.evidence(
                Evidence::DynamicGlobal,
                source,
                format!("{count} STACK_GLOBAL of computed operands"),
            );
        }
        for (source, names) in &found.code_names {
            self.code_names(source, "code pickled by value names", names);
        }
        let unknown_rule = self.rules.for_evidence(Evidence::UnknownGlobal);
        for p in &mut found.pickles {
            let mut unknown = Vec::new();
            for g in &mut p.globals {
                let qualified = g.qualified();
                if let Some(rule) = self.rules.for_global(&qualified) {
                    g.rule = Some(rule.id.clone());
                    g.severity = Some(rule.severity);
                    self.push(rule, &p.source, qualified);
                } else if !self.rules.allows(&qualified) {
                    if let Some(rule) = unknown_rule {
                        g.rule = Some(rule.id.clone());
                        g.severity = Some(rule.severity);
                    }
                    unknown.push(qualified);
                }
            }
            if let (Some(rule), false) = (unknown_rule, unknown.is_empty()) {
                let shown = if unknown.len() > 8 {
                    format!(
                        "{}, ... ({} in all)",
                        unknown[..8].join(", "),
                        unknown.len()
                    )
                } else {
                    unknown.join(", ")
                };
                self.push(rule, &p.source, shown);
            }
        }
        Analysis {
            pickles: found.pickles,
            findings: self.findings,
        }
    }
}

/// Says, for each static finding, whether the load showed it acting: `loaded` when the
/// artifact was loaded under watch; `seen_rules` the ids of the kernel and audit findings of
/// the load; `resolved` the globals the audit hook saw the unpickler resolve.
pub fn observe(
    findings: &mut [StaticFinding],
    rules: &StaticRules,
    loaded: bool,
    seen_rules: &[&str],
    resolved: &HashSet<String>,
) {
    for f in findings {
        f.observed = if !loaded {
            Observed::NotLoaded
        } else if rules
            .by_id(&f.rule)
            .is_some_and(|r| seen_rules.iter().any(|id| r.acted_as(id)))
        {
            Observed::Acted
        } else if resolved.contains(&f.evidence) {
            Observed::Resolved
        } else {
            Observed::NotReached
        };
    }
}

/// Every parser of untrusted bytes, on arbitrary and mutated inputs: never a panic (a
/// deterministic mutation loop, seeded, so a failure reproduces).
#[cfg(test)]
mod never_panics {
    use std::io::Cursor;

    use monitor_formats::{gguf, onnx, pickle, proto};

    use super::{graph, keras, marshal};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn all_parsers(bytes: &[u8]) {
        let _ = onnx::check(bytes);
        let _ = gguf::check(&mut Cursor::new(bytes), bytes.len() as u64);
        let _ = proto::fields(bytes).count();
        let _ = graph::read_saved_model(bytes);
        let _ = pickle::walk(&mut Cursor::new(bytes));
        let _ = pickle::globals_per_pickle(&mut Cursor::new(bytes), 8);
        let _ = pickle::sweep_globals(bytes);
        let _ = pickle::could_act(bytes, true);
        let _ = marshal::names(bytes);
        for config in keras::configs_in(bytes) {
            let _ = keras::inspect(&config);
        }
    }

    #[test]
    fn no_parser_panics_on_arbitrary_or_mutated_bytes() {
        let seeds: Vec<Vec<u8>> = vec![
            onnx::tests::model("Relu", "com.x", Some("../w")),
            gguf::tests::file("{{ x.__class__ }}"),
            b"\x80\x04\x95\x16\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.".to_vec(),
            b"cposix\nsystem\n(S'id'\ntR.".to_vec(),
            br#"{"class_name": "Lambda", "config": {"name": "l", "function": ["4wEAAA==", null]}}"#
                .to_vec(),
            b"\xe3\x00\x00\x00\x00\xda\x02os\xfa\x06system".to_vec(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut bytes = if round % 5 == 0 {
                let len = (rng.next() % 512) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                seeds[round % seeds.len()].clone()
            };
            for _ in 0..(rng.next() % 6) {
                if bytes.is_empty() {
                    break;
                }
                let at = (rng.next() as usize) % bytes.len();
                match rng.next() % 3 {
                    0 => bytes[at] = rng.next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, rng.next() as u8),
                }
            }
            all_parsers(&bytes);
        }
    }
}
