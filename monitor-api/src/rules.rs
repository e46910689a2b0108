//! `GET /v1/rules` and `POST /v1/rules/reload`.

use monitor_rules::RuleSpec;
use serde::{Deserialize, Serialize};

/// `GET /v1/rules`: the rules in force, as their files state them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleList {
    pub rules: Vec<RuleSpec>,
}

/// `POST /v1/rules/reload`: how many rules are in force now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesReloaded {
    pub rules: usize,
}
