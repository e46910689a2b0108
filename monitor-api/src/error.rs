//! The body of every error reply: `{"error": {"code": ..., "message": ...}}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// A stable identifier for programs (`invalid_path`, `queue_full`, `not_found`, ...).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorReply {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorReply {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}
