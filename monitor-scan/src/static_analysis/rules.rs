//! The static rules (monitor-rules/src/static.yaml): data like the default rules, validated as a whole when
//! loaded, with the line of whatever is wrong.

use std::{collections::HashSet, sync::Arc};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use monitor_rules::{RuleError, Severity, line_of_id, line_of_key};

pub use monitor_rules::STATIC_RULES;

/// Structural facts the analysis reports by name (`match: { evidence: [...] }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    UnknownGlobal,
    NestedPickle,
    ObjectArray,
    KerasLambda,
    KerasCustomObject,
    OnnxExternalPath,
    OnnxCustomDomain,
    ArchiveMember,
    DynamicGlobal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    rules: Vec<Spec>,
    #[serde(default)]
    allow: Allow,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    #[serde(default)]
    globals: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    id: String,
    description: String,
    severity: Severity,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    acts: Vec<String>,
    #[serde(rename = "match")]
    matcher: MatchSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    globals: Vec<String>,
    #[serde(default)]
    graph_ops: Vec<String>,
    #[serde(default)]
    graph_strings: Vec<String>,
    #[serde(default)]
    template: Vec<String>,
    #[serde(default)]
    torchscript: Vec<String>,
    #[serde(default)]
    evidence: Vec<Evidence>,
}

/// What a rule looks at, exactly one kind per rule.
#[derive(Debug)]
enum Matcher {
    Globals(Vec<GlobMatcher>),
    GraphOps(HashSet<String>),
    GraphStrings(Vec<GlobMatcher>),
    Template(Vec<String>),
    TorchScript(Vec<String>),
    Evidence(Vec<Evidence>),
}

/// One static rule, ready to match.
#[derive(Debug)]
pub struct StaticRule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub tags: Vec<String>,
    /// Globs on kernel and audit rule ids whose findings show this evidence acting.
    acts: Vec<GlobMatcher>,
    matcher: Matcher,
}

impl StaticRule {
    /// Whether a kernel or audit finding of rule `id` shows what this rule names acting.
    pub fn acted_as(&self, id: &str) -> bool {
        self.acts.iter().any(|g| g.is_match(id))
    }
}

/// The static rules in force, and the framework globals real checkpoints name.
#[derive(Debug, Clone)]
pub struct StaticRules {
    rules: Arc<Vec<StaticRule>>,
    allow: Arc<Vec<GlobMatcher>>,
}

impl Default for StaticRules {
    fn default() -> Self {
        StaticRules::defaults()
    }
}

impl StaticRules {
    /// The embedded rules.
    pub fn defaults() -> Self {
        StaticRules::parse(STATIC_RULES, "static.yaml")
            .expect("the embedded static rules are valid (tested)")
    }

    /// No rules: a scan judged by what loading did alone (tests of the kernel side, whose
    /// payloads the static rules would flag before the load).
    pub fn none() -> Self {
        StaticRules {
            rules: Arc::new(Vec::new()),
            allow: Arc::new(Vec::new()),
        }
    }

    /// Parses and validates a static rule file. `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, RuleError> {
        let error = |line: usize, message: String| RuleError {
            source_name: source_name.into(),
            line,
            message,
        };
        let file: File = serde_yaml_ng::from_str(text)
            .map_err(|e| error(e.location().map_or(1, |l| l.line()), e.to_string()))?;
        let glob = |line: usize, id: &str, pattern: &str| {
            Glob::new(pattern)
                .map(|g| g.compile_matcher())
                .map_err(|e| error(line, format!("rule `{id}`: bad glob `{pattern}`: {e}")))
        };
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        let mut previous = 0;
        for spec in file.rules {
            let line = line_of_id(text, &spec.id, previous)
                .unwrap_or_else(|| line_of_key(text, "rules").unwrap_or(1));
            previous = line;
            if spec.id.trim().is_empty() {
                return Err(error(line, "a rule has an empty id".into()));
            }
            if !seen.insert(spec.id.clone()) {
                return Err(error(line, format!("rule `{}` is defined twice", spec.id)));
            }
            let m = spec.matcher;
            let kinds = [
                !m.globals.is_empty(),
                !m.graph_ops.is_empty(),
                !m.graph_strings.is_empty(),
                !m.template.is_empty(),
                !m.torchscript.is_empty(),
                !m.evidence.is_empty(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(error(
                    line,
                    format!(
                        "rule `{}`: `match` needs exactly one of globals, graph_ops, \
                         graph_strings, template, torchscript, evidence",
                        spec.id
                    ),
                ));
            }
            let matcher = if !m.globals.is_empty() {
                Matcher::Globals(
                    m.globals
                        .iter()
                        .map(|p| glob(line, &spec.id, p))
                        .collect::<Result<_, _>>()?,
                )
            } else if !m.graph_ops.is_empty() {
                Matcher::GraphOps(m.graph_ops.into_iter().collect())
            } else if !m.graph_strings.is_empty() {
                Matcher::GraphStrings(
                    m.graph_strings
                        .iter()
                        .map(|p| {
                            Glob::new(p).map(|g| g.compile_matcher()).map_err(|e| {
                                error(line, format!("rule `{}`: bad glob `{p}`: {e}", spec.id))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                )
            } else if !m.template.is_empty() {
                Matcher::Template(m.template)
            } else if !m.torchscript.is_empty() {
                Matcher::TorchScript(m.torchscript)
            } else {
                Matcher::Evidence(m.evidence)
            };
            let acts = spec
                .acts
                .iter()
                .map(|p| glob(line, &spec.id, p))
                .collect::<Result<_, _>>()?;
            rules.push(StaticRule {
                id: spec.id,
                description: spec.description,
                severity: spec.severity,
                tags: spec.tags,
                acts,
                matcher,
            });
        }
        let allow_line = line_of_key(text, "allow").unwrap_or(1);
        let allow = file
            .allow
            .globals
            .iter()
            .map(|p| glob(allow_line, "allow", p))
            .collect::<Result<_, _>>()?;
        Ok(StaticRules {
            rules: Arc::new(rules),
            allow: Arc::new(allow),
        })
    }

    pub fn rules(&self) -> impl Iterator<Item = &StaticRule> {
        self.rules.iter()
    }

    pub fn by_id(&self, id: &str) -> Option<&StaticRule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The most severe rule naming `module.name` (the first in file order among equals).
    pub fn for_global(&self, qualified: &str) -> Option<&StaticRule> {
        self.most_severe(|m| match m {
            Matcher::Globals(globs) => globs.iter().any(|g| g.is_match(qualified)),
            _ => false,
        })
    }

    /// Whether `module.name` is a framework global real checkpoints name.
    pub fn allows(&self, qualified: &str) -> bool {
        self.allow.iter().any(|g| g.is_match(qualified))
    }

    /// The rule for a structural fact.
    pub fn for_evidence(&self, evidence: Evidence) -> Option<&StaticRule> {
        self.most_severe(|m| matches!(m, Matcher::Evidence(e) if e.contains(&evidence)))
    }

    /// The most severe rule naming TensorFlow op `op`.
    pub fn for_graph_op(&self, op: &str) -> Option<&StaticRule> {
        self.most_severe(|m| matches!(m, Matcher::GraphOps(ops) if ops.contains(op)))
    }

    /// The most severe rule a graph's string constant matches.
    pub fn for_graph_string(&self, text: &str) -> Option<&StaticRule> {
        self.most_severe(|m| match m {
            Matcher::GraphStrings(globs) => globs.iter().any(|g| g.is_match(text)),
            _ => false,
        })
    }

    /// The rule a chat template fires, with the marker it contains.
    pub fn for_template(&self, template: &str) -> Option<(&StaticRule, String)> {
        self.first_marker(template, |m| match m {
            Matcher::Template(markers) => Some(markers),
            _ => None,
        })
    }

    /// The rule TorchScript code fires, with the marker it contains.
    pub fn for_torchscript(&self, code: &str) -> Option<(&StaticRule, String)> {
        self.first_marker(code, |m| match m {
            Matcher::TorchScript(markers) => Some(markers),
            _ => None,
        })
    }

    fn first_marker(
        &self,
        text: &str,
        markers_of: impl Fn(&Matcher) -> Option<&Vec<String>>,
    ) -> Option<(&StaticRule, String)> {
        let mut best: Option<(&StaticRule, String)> = None;
        for rule in self.rules.iter() {
            let Some(markers) = markers_of(&rule.matcher) else {
                continue;
            };
            if let Some(marker) = markers.iter().find(|m| text.contains(m.as_str()))
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| rule.severity > b.severity)
            {
                best = Some((rule, marker.clone()));
            }
        }
        best
    }

    fn most_severe(&self, matches: impl Fn(&Matcher) -> bool) -> Option<&StaticRule> {
        let mut best: Option<&StaticRule> = None;
        for rule in self.rules.iter().filter(|r| matches(&r.matcher)) {
            if best.is_none_or(|b| rule.severity > b.severity) {
                best = Some(rule);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_static_rules_are_valid_and_grade_what_the_issue_lists() {
        let rules = StaticRules::defaults();
        let high = |g: &str| {
            rules
                .for_global(g)
                .is_some_and(|r| r.severity >= Severity::High)
        };
        for hostile in [
            "posix.system",
            "nt.system",
            "os.system",
            "subprocess.Popen",
            "builtins.eval",
            "__builtin__.eval",
            "marshal.loads",
            "types.CodeType",
            "importlib.import_module",
            "pdb.run",
            "bdb.Bdb.run",
            "webbrowser.open",
            "socket.create_connection",
            "ctypes.CDLL",
            "shutil.rmtree",
            "os.remove",
            "runpy._run_code",
            "torch.serialization.load",
            "_io.FileIO",
        ] {
            assert!(high(hostile), "{hostile} is not high");
        }
        for framework in [
            "torch._utils._rebuild_tensor_v2",
            "collections.OrderedDict",
            "numpy.core.multiarray._reconstruct",
            "numpy._core.multiarray._reconstruct",
            "sklearn.pipeline.Pipeline",
            "torch.FloatStorage",
            "_codecs.encode",
            "builtins.set",
            "pathlib.PosixPath",
        ] {
            assert!(
                rules.for_global(framework).is_none(),
                "{framework} is named"
            );
            assert!(rules.allows(framework), "{framework} is not allowed");
        }
        assert!(!rules.allows("mypackage.Model"));
        assert_eq!(
            rules
                .for_evidence(Evidence::UnknownGlobal)
                .map(|r| r.severity),
            Some(Severity::Low)
        );
        assert_eq!(
            rules
                .for_evidence(Evidence::NestedPickle)
                .map(|r| r.severity),
            Some(Severity::Medium)
        );
        assert!(rules.for_graph_op("WriteFile").is_some());
        assert!(rules.for_graph_op("MatMul").is_none());
        assert!(rules.for_graph_string("/home/user/.ssh/id_rsa").is_some());
        assert!(rules.for_graph_string("serving_default").is_none());
        assert!(rules.for_template("{{ ''.__class__.__mro__ }}").is_some());
        assert!(
            rules
                .for_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
                .is_none()
        );
        let rule = rules.for_global("posix.system").unwrap();
        assert!(rule.acted_as("exec.program"));
        assert!(!rule.acted_as("net.connect"));
    }

    #[test]
    fn bad_static_rule_files_are_refused_with_the_line() {
        let two_kinds = "rules:\n  - id: a\n    description: d\n    severity: high\n    match: { globals: [\"os.*\"] }\n  - id: b\n    description: d\n    severity: high\n    match: { globals: [\"x\"], graph_ops: [ReadFile] }\n";
        let e = StaticRules::parse(two_kinds, "mine.yaml").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.to_string().contains("exactly one"), "{e}");
        let bad_evidence = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { evidence: [nothing-such] }\n";
        let e = StaticRules::parse(bad_evidence, "x").unwrap_err();
        assert!(e.to_string().contains("nothing-such"), "{e}");
        assert_eq!(e.line, 5, "{e}");
        let bad_glob = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { globals: [\"os.[\"] }\n";
        let e = StaticRules::parse(bad_glob, "x").unwrap_err();
        assert!(e.to_string().contains("bad glob"), "{e}");
        assert_eq!(e.line, 2, "{e}");
        let twice = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { globals: [x] }\n  - id: a\n    description: d\n    severity: low\n    match: { globals: [y] }\n";
        let e = StaticRules::parse(twice, "x").unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        let typo = "rules:\n  - id: a\n    description: d\n    severity: low\n    match: { global: [x] }\n";
        assert!(StaticRules::parse(typo, "x").is_err());
    }
}
