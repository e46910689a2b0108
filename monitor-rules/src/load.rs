//! Where a finding's act stands in a model load: the artifact being loaded and what bounds the
//! load phase (a live watch's tracker in monitor-watch decides it; rules and reports carry it).

use std::sync::Arc;

use serde::Serialize;

/// What a finding in the load phase says of that phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadContext {
    /// The model file being loaded.
    #[serde(serialize_with = "as_str")]
    pub artifact: Arc<str>,
    /// What bounds the phase the act came in.
    pub bound: LoadBound,
}

fn as_str<S: serde::Serializer>(text: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(text)
}

/// What bounds a load phase, as a finding reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBound {
    /// The loader still held the artifact's descriptor open.
    DescriptorOpen,
    /// The descriptor was closed; the act came within the grace after.
    DescriptorClosed,
    /// The descriptor could not be followed: a fixed window after the open.
    Window,
    /// The act was a process's that a load started: part of that load for its whole life.
    StartedByLoad,
}
