//! Learning a service's profile: while a watch learns, every act that makes a rule fire is
//! kept as that rule's case (a tuple of the act's fields: the program and its parent, the
//! file or its directory, the peer's range and port), and nothing of it is reported. At the
//! end the cases become the rule's exceptions, named `learned-*`, in the watch's policy:
//! from then on only acts outside the profile fire, at their rules' severity.
//!
//! Rules that are not learnable (every critical one but for those a service needs, such as
//! reading its credentials or listening) are never learned: a compromised baseline would
//! otherwise teach the watch to accept the compromise. Such an act is reported at once and
//! the profile names it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{LEARNED, NeverLearned, ProfileSummary};
use monitor_engine::process::ProcessView;
use monitor_engine::trace::{SyscallEvent, What};
use monitor_rules::{
    AddedException, Facts, Field, Finding, Phase, Rule, Scalar, Value, glob_escape,
};

/// At most this many cases per rule and shape: a service that keeps doing new things (a new
/// file name per request) is not profiled case by case; past this, its rule's cases are cut
/// and the summary says so.
pub const MAX_CASES: usize = 500;

/// What a learning window has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Events judged.
    pub events: u64,
    /// Cases by rule id.
    pub cases: BTreeMap<String, Vec<Case>>,
    pub never_learned: Vec<NeverLearned>,
    /// Whether a rule had more cases than [`MAX_CASES`].
    #[serde(default)]
    pub cut: bool,
}

/// One act a rule fired on, as a tuple of the fields of its shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub shape: Shape,
    pub values: Vec<String>,
    /// Seen while a model loaded (so allowed in a load phase too).
    pub on_load: bool,
    pub count: u64,
}

/// Which fields a case keeps, from what the syscall is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A program executed, with the program of the process that executed it.
    Program,
    /// A file a rule about named files fired on (a credential, a sensitive file).
    File,
    /// A file a rule about any file fired on, by its directory (a log, a cache).
    Directory,
    /// A network peer or a listening address: its range and port.
    Peer,
    /// Any other syscall, by name.
    Call,
}

impl Shape {
    pub fn fields(self) -> &'static [Field] {
        match self {
            Shape::Program => &[Field::Exe, Field::ParentExe],
            Shape::File | Shape::Directory => &[Field::Exe, Field::Path],
            Shape::Peer => &[Field::Exe, Field::Addr, Field::Port],
            Shape::Call => &[Field::Exe, Field::Syscall],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Program => "programs",
            Shape::File => "files",
            Shape::Directory => "directories",
            Shape::Peer => "peers",
            Shape::Call => "calls",
        }
    }
}

/// The value of a field the trace could not tell (a program never seen executed, gone from
/// /proc): a glob that matches whatever it is.
const ANY: &str = "**";

impl Profile {
    /// Keeps the act of `finding` (fired by `rule` on `sc`) as a case of its rule.
    pub fn learn(
        &mut self,
        finding: &Finding,
        rule: &Rule,
        sc: &SyscallEvent,
        process: Option<ProcessView>,
        cwd: Option<&str>,
    ) {
        let facts = Facts::of(sc, cwd);
        let exe = || {
            process
                .and_then(|v| v.exe())
                .map_or_else(|| ANY.to_owned(), glob_escape)
        };
        let (shape, values) = if sc.syscall.executes {
            let parent = process
                .and_then(|v| v.parent_exe())
                .map_or_else(|| ANY.to_owned(), glob_escape);
            (Shape::Program, vec![exe(), parent])
        } else if let (Some(&addr), Some(&port)) = (facts.addrs.first(), facts.ports.first()) {
            let range = monitor_rules::net::Named::of(addr)
                .map_or_else(|| addr.to_string(), |n| n.name().to_owned());
            (Shape::Peer, vec![exe(), range, port.to_string()])
        } else if let Some(path) = facts.paths.first() {
            if rule.spec.matcher.path.is_empty() {
                let dir = match path.rsplit_once('/') {
                    Some(("", _)) => "/*".to_owned(),
                    Some((dir, _)) => format!("{}/*", glob_escape(dir)),
                    None => ANY.to_owned(),
                };
                (Shape::Directory, vec![exe(), dir])
            } else {
                (Shape::File, vec![exe(), glob_escape(path)])
            }
        } else {
            (Shape::Call, vec![exe(), sc.name.to_owned()])
        };
        let on_load = finding.phase == Phase::Load;
        let cases = self.cases.entry(finding.rule.clone()).or_default();
        if let Some(case) = cases
            .iter_mut()
            .find(|c| c.shape == shape && c.values == values)
        {
            case.count += 1;
            case.on_load |= on_load;
            return;
        }
        if cases.iter().filter(|c| c.shape == shape).count() >= MAX_CASES {
            self.cut = true;
            return;
        }
        cases.push(Case {
            shape,
            values,
            on_load,
            count: 1,
        });
    }

    /// Notes an act of a rule that is never learned.
    pub fn refuse(&mut self, finding: &Finding) {
        let act = match &finding.event.what {
            What::Syscall(sc) => format!(
                "{}({}) = {}",
                sc.name,
                serde_json::to_string(&sc.args).unwrap_or_default(),
                sc.ret.map_or_else(|| "?".to_owned(), |r| r.to_string())
            ),
            _ => String::new(),
        };
        if self.never_learned.len() < 100 {
            self.never_learned.push(NeverLearned {
                rule: finding.rule.clone(),
                severity: finding.severity,
                pid: finding.event.pid,
                comm: finding.event.comm.to_string(),
                act,
            });
        }
    }

    /// The cases as exceptions to their rules: per rule and shape, those seen only while
    /// serving (allowed in the run phase) and those seen while a model loaded (allowed in any
    /// phase).
    pub fn exceptions(&self) -> Vec<AddedException> {
        let mut out = Vec::new();
        for (rule, cases) in &self.cases {
            let mut shapes: Vec<Shape> = cases.iter().map(|c| c.shape).collect();
            shapes.sort();
            shapes.dedup();
            for shape in shapes {
                for on_load in [false, true] {
                    let mut values: Vec<Vec<Value>> = cases
                        .iter()
                        .filter(|c| c.shape == shape && c.on_load == on_load)
                        .map(|c| {
                            c.values
                                .iter()
                                .map(|v| Value::One(Scalar::Text(v.clone())))
                                .collect()
                        })
                        .collect();
                    if values.is_empty() {
                        continue;
                    }
                    values.sort_by_key(|tuple| format!("{tuple:?}"));
                    out.push(AddedException {
                        rule: rule.clone(),
                        name: format!(
                            "{LEARNED}-{}{}",
                            shape.name(),
                            if on_load { "-on-load" } else { "" }
                        ),
                        phases: if on_load {
                            Vec::new()
                        } else {
                            vec![Phase::Run]
                        },
                        fields: shape.fields().to_vec(),
                        values,
                    });
                }
            }
        }
        out
    }

    /// The summary the policy carries, for a window started at `started_unix_ms` that ran
    /// `seconds`.
    pub fn summary(&self, started_unix_ms: i64, seconds: u64, interrupted: bool) -> ProfileSummary {
        ProfileSummary {
            started_unix_ms,
            seconds,
            events: self.events,
            acts: self.cases.values().map(|c| c.len() as u64).sum(),
            interrupted,
            never_learned: self.never_learned.clone(),
        }
    }
}
