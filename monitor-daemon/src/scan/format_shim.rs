//! TEMPORARY until format lands.
use std::path::Path;
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    Pickle,
}
impl Format {
    pub fn id(&self) -> &'static str {
        "pickle"
    }
    pub fn loader(&self) -> Option<&'static str> {
        Some("pickle")
    }
    pub fn describe(&self) -> String {
        "pickle".into()
    }
}
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_size: u64,
}
impl Default for Limits {
    fn default() -> Self {
        Limits { max_size: 8 << 30 }
    }
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);
pub fn detect(path: &Path, _l: &Limits) -> Result<Format, FormatError> {
    let b = std::fs::read(path).map_err(|e| FormatError(e.to_string()))?;
    match b.first() {
        Some(0x80) | Some(b'c') => Ok(Format::Pickle),
        _ => Err(FormatError("unknown".into())),
    }
}
