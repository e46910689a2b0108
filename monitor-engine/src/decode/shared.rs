//! Texts that come back record after record, decoded once and shared: a process has one
//! `comm` at a time, a program opens the same files again and again (a server its model and
//! libraries, a loop its data), and a flags argument has a few values. Each is an
//! `Arc<str>`: the event, the process table's descriptor and the rules share one text
//! instead of a copy each.
//!
//! Bounded like the judge's path memo: emptied when full, so texts never seen again cost a
//! lookup and an insert each, and no memory beyond the bound.

use std::sync::Arc;

use foldhash::HashMap;
use monitor_common::event::COMM_LEN;

use super::args::ArgValue;

#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Raw bytes (up to the first NUL) -> their text.
    texts: HashMap<Box<[u8]>, Arc<str>>,
    /// A named value (the argument's kind, its raw value) -> its decoded argument.
    named: HashMap<(u8, u64), ArgValue>,
    /// The last `comm` decoded: records come in runs from one process.
    last_comm: Option<([u8; COMM_LEN], Arc<str>)>,
}

impl Shared {
    /// Entries kept at most, of each map.
    const ENTRIES: usize = 4096;
    /// Longer texts are decoded each time, not kept (PATH_MAX is 4096).
    const LONGEST: usize = 256;

    /// A task's `comm` as text.
    pub(super) fn comm(&mut self, raw: &[u8; COMM_LEN]) -> Arc<str> {
        if let Some((last, text)) = &self.last_comm
            && last == raw
        {
            return text.clone();
        }
        let text = self.text(raw);
        self.last_comm = Some((*raw, text.clone()));
        text
    }

    /// The text of `bytes` up to the first NUL, as UTF-8 with invalid sequences replaced.
    pub(super) fn text(&mut self, bytes: &[u8]) -> Arc<str> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = &bytes[..end];
        if bytes.len() > Self::LONGEST {
            return super::c_string(bytes).into();
        }
        if let Some(text) = self.texts.get(bytes) {
            return text.clone();
        }
        if self.texts.len() >= Self::ENTRIES {
            self.texts.clear();
        }
        let text: Arc<str> = super::c_string(bytes).into();
        self.texts.insert(bytes.into(), text.clone());
        text
    }

    /// The argument `decode` makes of `raw`, a value of the kind numbered `kind`, decoded
    /// once per value.
    pub(super) fn named(
        &mut self,
        kind: u8,
        raw: u64,
        decode: impl FnOnce() -> ArgValue,
    ) -> ArgValue {
        if let Some(value) = self.named.get(&(kind, raw)) {
            return value.clone();
        }
        if self.named.len() >= Self::ENTRIES {
            self.named.clear();
        }
        let value = decode();
        self.named.insert((kind, raw), value.clone());
        value
    }
}
