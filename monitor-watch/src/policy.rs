//! A watch's own policy: one YAML document with its kill settings and the lists, rules and
//! exceptions that apply to this watch only, on top of monitord's rules. A learned profile is
//! such a document (its exceptions named `learned-*`), so what `watch profile` prints can be
//! reviewed, edited and given back as the watch's policy.
//!
//! ```yaml
//! kill_at: high
//! kill_in_kernel: [execve, execveat]
//! lists:
//!   - name: store
//!     items: [127.0.0.1, 10.1.0.0/16]
//! rules:
//!   - id: server.no-public-peers
//!     description: The server talked to the Internet
//!     severity: high
//!     match: { syscalls: [connect], addr: [public] }
//! exceptions:
//!   - rule: net.connect
//!     name: model-store
//!     fields: [exe, addr, port]
//!     values:
//!       - [/opt/venv/bin/python3, $store, 9000]
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use monitor_rules::{AddedException, ListSpec, RuleError, RuleSet, RuleSpec, Severity, parse_yaml};

/// The prefix of the names of exceptions a learning window wrote: learning again replaces
/// them, and leaves the others alone.
pub const LEARNED: &str = "learned";

/// What a source name for errors in a watch's policy says.
pub const POLICY_SOURCE: &str = "policy";

/// A watch's policy file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Kill the offending process (a cgroup watch: its cgroup) at a finding this severe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_at: Option<Severity>,
    /// Syscalls killed in the kernel at their entry (an exec: once the kernel has the
    /// program, unless the policy's exceptions allow that program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_in_kernel: Option<Vec<String>>,
    /// What the learning window that wrote the exceptions named `learned-*` saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<ListSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<AddedException>,
}

/// What a learning window saw, for the people who review the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSummary {
    /// When learning started (Unix time, milliseconds) and for how long it ran.
    pub started_unix_ms: i64,
    pub seconds: u64,
    /// Events judged while learning.
    pub events: u64,
    /// Acts learned (the tuples of the `learned-*` exceptions).
    pub acts: u64,
    /// monitord restarted while learning: what came before was kept, what happened while it
    /// was down was not seen.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// Acts of rules that are never learned (a module loaded, memory of another process read,
    /// a persistence file written, ...), seen while learning: reported at once, and left out
    /// of the profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_learned: Vec<NeverLearned>,
}

impl ProfileSummary {
    /// Whether an act of `rule` was seen while learning and refused.
    pub fn refused(&self, rule: &str) -> bool {
        self.never_learned.iter().any(|n| n.rule == rule)
    }
}

/// An act seen while learning that no profile may hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NeverLearned {
    pub rule: String,
    pub severity: Severity,
    pub pid: u32,
    pub comm: String,
    /// The syscall, as the trace shows it.
    pub act: String,
}

impl PolicyFile {
    /// Parses a policy document; errors name the line.
    pub fn parse(text: &str) -> Result<PolicyFile, RuleError> {
        parse_yaml(text, POLICY_SOURCE)
    }

    /// The rules of a watch with this policy: `global`'s, plus this policy's lists, rules and
    /// exceptions (`text` is the document, for line numbers). `learned`: with the exceptions
    /// a learning window wrote, or without them (while learning again).
    pub fn rules_over(
        &self,
        global: &RuleSet,
        text: &str,
        learned: bool,
    ) -> Result<RuleSet, RuleError> {
        let mut rules = global.clone();
        let exceptions: Vec<AddedException> = self
            .exceptions
            .iter()
            .filter(|x| learned || !is_learned(x))
            .cloned()
            .collect();
        rules.add_parts(
            &self.lists,
            self.rules.clone(),
            &exceptions,
            text,
            POLICY_SOURCE,
        )?;
        Ok(rules)
    }

    /// This policy with `learned` in place of the exceptions an earlier learning window
    /// wrote, and `summary` as its profile.
    pub fn with_learned(&self, learned: Vec<AddedException>, summary: ProfileSummary) -> Self {
        let mut next = self.clone();
        next.exceptions.retain(|x| !is_learned(x));
        next.exceptions.extend(learned);
        next.profile = Some(summary);
        next
    }

    /// The document, with `header` (comment lines) above it.
    pub fn to_yaml(&self, header: &str) -> String {
        let body = serde_yaml_ng::to_string(self).unwrap_or_default();
        let body = if body.trim() == "{}" {
            String::new()
        } else {
            body
        };
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&body);
        out
    }
}

fn is_learned(x: &AddedException) -> bool {
    x.name.starts_with(LEARNED)
}

/// A watch's rules, compiled from monitord's and the watch's policy, kept until either
/// changes.
#[derive(Default)]
pub struct WatchRules {
    /// The global rules it was made from.
    global: Option<Arc<RuleSet>>,
    /// With the learned exceptions, and without them.
    enforcing: Option<Arc<RuleSet>>,
    learning: Option<Arc<RuleSet>>,
}

impl WatchRules {
    /// Forgets what was compiled (the policy changed).
    pub fn reset(&mut self) {
        *self = WatchRules::default();
    }

    /// The rules for `global` and `policy` (`None`: the global rules alone); `learned` as in
    /// [`PolicyFile::rules_over`]. A policy that no longer fits the global rules (a reload
    /// took away a rule it adds exceptions to) leaves the last good compilation in force.
    pub fn get(
        &mut self,
        global: &Arc<RuleSet>,
        policy: Option<(&PolicyFile, &str)>,
        learned: bool,
    ) -> Arc<RuleSet> {
        if !self.global.as_ref().is_some_and(|g| Arc::ptr_eq(g, global)) {
            let (enforcing, learning) = match policy {
                None => (Ok(global.clone()), Ok(global.clone())),
                Some((file, text)) => (
                    file.rules_over(global, text, true).map(Arc::new),
                    file.rules_over(global, text, false).map(Arc::new),
                ),
            };
            match (enforcing, learning) {
                (Ok(enforcing), Ok(learning)) => {
                    self.enforcing = Some(enforcing);
                    self.learning = Some(learning);
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "the watch's policy does not fit the reloaded rules; the previous ones stay in force for it");
                }
            }
            self.global = Some(global.clone());
        }
        let compiled = if learned {
            &self.enforcing
        } else {
            &self.learning
        };
        compiled.clone().unwrap_or_else(|| global.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
kill_at: high
lists:
  - name: store
    items: [127.0.0.1, 10.1.0.0/16]
rules:
  - id: server.public-peer
    description: The server talked to the Internet
    severity: high
    match: { syscalls: [connect], addr: [public] }
exceptions:
  - rule: net.connect
    name: model-store
    fields: [exe, addr, port]
    values:
      - [/opt/venv/bin/python3, $store, 9000]
  - rule: exec.program
    name: learned-programs
    fields: [exe]
    values: [[/usr/bin/uname]]
";

    #[test]
    fn a_policy_adds_to_the_global_rules_and_learning_drops_only_learned_exceptions() {
        let file = PolicyFile::parse(POLICY).unwrap();
        assert_eq!(file.kill_at, Some(Severity::High));
        let global = RuleSet::defaults();
        let enforcing = file.rules_over(&global, POLICY, true).unwrap();
        assert_eq!(enforcing.len(), global.len() + 1);
        let count = |rules: &RuleSet, id: &str| {
            rules
                .rules_with_exceptions()
                .find(|(r, _)| r.id() == id)
                .map(|(_, x)| x.len())
                .unwrap()
        };
        assert_eq!(count(&enforcing, "exec.program"), 1);
        assert_eq!(count(&enforcing, "net.connect"), 1);
        let learning = file.rules_over(&global, POLICY, false).unwrap();
        assert_eq!(count(&learning, "exec.program"), 0);
        assert_eq!(count(&learning, "net.connect"), 1);

        let relearned = file.with_learned(Vec::new(), ProfileSummary::default());
        let text = relearned.to_yaml("a header");
        assert!(text.starts_with("# a header\n"), "{text}");
        let again = PolicyFile::parse(&text).unwrap();
        assert_eq!(again.exceptions.len(), 1, "{text}");
        assert!(again.profile.is_some());
    }

    #[test]
    fn a_bad_policy_says_where() {
        let bad = POLICY.replace("$store, 9000", "$stor, 9000");
        let file = PolicyFile::parse(&bad).unwrap();
        let e = file
            .rules_over(&RuleSet::defaults(), &bad, true)
            .unwrap_err();
        assert!(e.to_string().starts_with("policy:11: "), "{e}");
        assert!(e.to_string().contains("no list `stor`"), "{e}");
        let e = PolicyFile::parse("kill_at: sometimes\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = PolicyFile::parse("kill_at: high\nrulez: []\n").unwrap_err();
        assert!(e.to_string().contains("rulez"), "{e}");
        let unknown_rule =
            "exceptions:\n  - rule: nope\n    name: x\n    fields: [exe]\n    values: [[a]]\n";
        let file = PolicyFile::parse(unknown_rule).unwrap();
        let e = file
            .rules_over(&RuleSet::defaults(), unknown_rule, true)
            .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
}
