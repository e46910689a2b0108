//! A pickle opcode walker: follows a pickle stream to its STOP without executing anything,
//! noting the globals it names (GLOBAL, INST, STACK_GLOBAL). Enough to tell a pickle from
//! other content, count the pickles in a file, and tell which library wrote it.

use std::io::{self, BufRead, Read, Seek};

/// The first pickle of a PyTorch legacy file is just this number (LONG1, little-endian).
const TORCH_LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Pickles counted past this are "at least this many".
pub const MAX_PICKLES: usize = 1000;
/// Globals kept per file (classification needs the modules only).
const MAX_GLOBALS: usize = 10_000;
/// Memoized strings kept for STACK_GLOBAL's lookups.
const MAX_MEMO: usize = 100_000;
/// Longest newline-terminated argument (protocol 0).
const MAX_LINE: usize = 1 << 20;
/// Strings this long or shorter are kept for STACK_GLOBAL's lookups.
const MAX_NAME: u64 = 4096;
/// Bytes and strings up to this long are looked into for a pickle hidden inside.
const MAX_NESTED_BYTES: u64 = 16 << 20;
/// Hidden pickles kept per file.
const MAX_NESTED: usize = 16;

/// How an opcode's argument is encoded.
#[derive(Clone, Copy)]
enum Arg {
    None,
    Fixed(u8),
    /// Text up to a newline.
    Line,
    /// Two lines (module and name).
    TwoLines,
    /// A length of this many bytes (little-endian), then that many bytes.
    Counted(u8),
}

/// What an opcode means to the walker, besides its argument.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Other,
    Stop,
    Proto,
    /// Pushes a string STACK_GLOBAL may use.
    Str,
    /// Pushes bytes (BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8).
    Bytes,
    Global,
    StackGlobal,
    /// Stores the top of the stack in the memo (MEMOIZE: next index; PUT: given index).
    Memoize,
    Put,
    Get,
    Frame,
    Long1,
}

fn opcode(byte: u8) -> Option<(Arg, Op)> {
    use Arg::*;
    Some(match byte {
        b'(' | b'.' | b'0' | b'2' | b'1' | b'N' | b'Q' | b'R' | b'a' | b'b' | b'd' | b'}'
        | b'e' | b'l' | b']' | b'o' | b's' | b't' | b')' | b'u' => {
            (None, if byte == b'.' { Op::Stop } else { Op::Other })
        }
        b'F' | b'I' | b'L' | b'P' => (Line, Op::Other),
        b'S' | b'V' => (Line, Op::Str),
        b'g' => (Line, Op::Get),
        b'p' => (Line, Op::Put),
        b'c' | b'i' => (TwoLines, Op::Global),
        b'J' => (Fixed(4), Op::Other),
        b'K' => (Fixed(1), Op::Other),
        b'M' => (Fixed(2), Op::Other),
        b'G' => (Fixed(8), Op::Other),
        b'h' => (Fixed(1), Op::Get),
        b'j' => (Fixed(4), Op::Get),
        b'q' => (Fixed(1), Op::Put),
        b'r' => (Fixed(4), Op::Put),
        b'T' | b'X' => (Counted(4), Op::Str),
        b'U' => (Counted(1), Op::Str),
        // Protocol 2.
        0x80 => (Fixed(1), Op::Proto),
        0x81 | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 => (None, Op::Other),
        0x82 => (Fixed(1), Op::Other),
        0x83 => (Fixed(2), Op::Other),
        0x84 => (Fixed(4), Op::Other),
        0x8a => (Counted(1), Op::Long1),
        0x8b => (Counted(4), Op::Other),
        // Protocol 3.
        b'B' => (Counted(4), Op::Bytes),
        b'C' => (Counted(1), Op::Bytes),
        // Protocol 4.
        0x8c => (Counted(1), Op::Str),
        0x8d => (Counted(8), Op::Str),
        0x8e => (Counted(8), Op::Bytes),
        0x8f..=0x92 => (None, Op::Other),
        0x93 => (None, Op::StackGlobal),
        0x94 => (None, Op::Memoize),
        0x95 => (Fixed(8), Op::Frame),
        // Protocol 5.
        0x96 => (Counted(8), Op::Bytes),
        0x97 | 0x98 => (None, Op::Other),
        _ => return Option::None,
    })
}

/// Opcodes with which the unpickler imports or calls something (or hands a value to the
/// loader's `persistent_load`): GLOBAL, INST, OBJ, REDUCE, BUILD, PERSID, BINPERSID, NEWOBJ,
/// EXT1/2/4, NEWOBJ_EX, STACK_GLOBAL. Every other opcode only builds plain data.
fn acts(byte: u8) -> bool {
    matches!(
        byte,
        b'c' | b'i' | b'o' | b'R' | b'b' | b'P' | b'Q' | 0x81..=0x84 | 0x92 | 0x93
    )
}

/// Whether Python's unpickler, reading a stream that begins with `head`, could import or call
/// anything before it fails. `whole`: `head` is the entire stream (else what follows it is
/// unknown, and could be anything).
///
/// False only when the unpickler provably fails first, having built nothing but plain data:
/// at a byte that is no opcode, at a protocol it does not know, or at the end of a whole
/// stream. A stream of plain data with its STOPs counts as failing at its end, since a loader
/// may read pickle after pickle until the end of the file.
pub fn could_act(head: &[u8], whole: bool) -> bool {
    // Past the end of `head`: the unpickler fails at the end of a whole stream, and anything
    // may follow a prefix.
    let beyond = !whole;
    let mut at = 0usize;
    loop {
        let Some(&byte) = head.get(at) else {
            return beyond;
        };
        let Some((arg, op)) = opcode(byte) else {
            return false;
        };
        if matches!(byte, b'c' | b'i') {
            // GLOBAL and INST import the module their first line names. A line that is no
            // module name fails the import (only a package planted under that very name on
            // sys.path could answer it, and whoever can plant one runs code already): the
            // text of a site .pth file, say, which Python opens at every start.
            let line = &head[at + 1..];
            return match line.iter().position(|&b| b == b'\n') {
                Some(end) => could_name_a_module(&line[..end]),
                None => true,
            };
        }
        if acts(byte) {
            return true;
        }
        at += 1;
        let next = match arg {
            Arg::None => Some(at),
            Arg::Fixed(n) => {
                if op == Op::Proto {
                    match head.get(at) {
                        // pickle.HIGHEST_PROTOCOL is 5.
                        Some(&p) if p > 5 => return false,
                        None => return beyond,
                        _ => {}
                    }
                }
                Some(at + usize::from(n))
            }
            // GLOBAL and INST, the two-line opcodes, act.
            Arg::Line | Arg::TwoLines => head[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| at + i + 1),
            Arg::Counted(width) => {
                let width = usize::from(width);
                head.get(at..at + width).and_then(|len| {
                    usize::try_from(le(len))
                        .ok()
                        .and_then(|len| (at + width).checked_add(len))
                })
            }
        };
        match next {
            Some(next) if next <= head.len() => at = next,
            _ => return beyond,
        }
    }
}

/// Whether `head` begins with a pickle opcode (Python's unpickler refuses any other first
/// byte at once).
pub fn starts_with_opcode(head: &[u8]) -> bool {
    head.first().is_some_and(|&b| opcode(b).is_some())
}

/// Whether `line` could name a module to import: dotted parts, each of letters, digits and
/// underscores, none starting with a digit. Bytes beyond ASCII count as letters (Python's
/// identifiers take many), so that only what surely names nothing is ruled out.
fn could_name_a_module(line: &[u8]) -> bool {
    line.split(|&b| b == b'.').all(|part| {
        !part.is_empty()
            && !part[0].is_ascii_digit()
            && part
                .iter()
                .all(|&b| !b.is_ascii() || b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// What a walk over a file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Walk {
    /// The protocol of the first pickle (0 when it has no PROTO opcode: protocol 0 or 1).
    pub protocol: u8,
    /// Complete pickles (capped at [`MAX_PICKLES`]).
    pub pickles: usize,
    /// `(module, name)` of the globals named, in order.
    pub globals: Vec<(String, String)>,
    /// The first pickle is PyTorch's legacy magic number.
    pub torch_legacy: bool,
    /// Where and why the walk stopped early, if it did.
    pub damage: Option<Damage>,
    /// The walk stopped on purpose before the end (joblib array data, torch storages).
    pub stopped_early: bool,
    /// Pickles hidden in the data (bytes or strings that are pickles, or base64 of one).
    pub nested: Vec<Nested>,
    /// Identifiers pushed as strings (the names of code pickled by value), each once.
    pub names: Vec<String>,
    /// STACK_GLOBALs whose module or name was no string the stream pushed: the pickle
    /// computes what it imports (no pickler writes that).
    pub dynamic_globals: usize,
}

/// A pickle found inside another pickle's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nested {
    /// Where its bytes or string start in the outer stream.
    pub offset: u64,
    /// `bytes`, `string` or `base64`.
    pub encoding: &'static str,
    /// The hidden pickle, decoded.
    pub bytes: Vec<u8>,
}

/// Whether `data` is a pickle that imports or calls something (plain data hidden in bytes is
/// no concern; a pickle that acts is).
pub fn is_acting_pickle(data: &[u8]) -> bool {
    let framed = matches!(data, [0x80, 2..=5, ..]);
    let protocol_0 = matches!(data.first(), Some(b'c' | b'(' | b'i')) && data.ends_with(b".");
    (framed || protocol_0) && could_act(data, true)
}

/// A pickle hidden in `data`: the bytes themselves, or their base64.
fn hidden_pickle(data: &[u8], is_text: bool) -> Option<(&'static str, Vec<u8>)> {
    if is_acting_pickle(data) {
        return Some((if is_text { "string" } else { "bytes" }, data.to_vec()));
    }
    // Base64 of a framed pickle starts with "gA" (0x80).
    let text = data.trim_ascii();
    if text.len() >= 8 && text.starts_with(b"gA") {
        use base64::Engine as _;
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&compact))
            .ok()?;
        if is_acting_pickle(&decoded) {
            return Some(("base64", decoded));
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub what: String,
}

/// Why content is not a pickle at all.
#[derive(Debug)]
pub enum NotPickle {
    /// The first byte is no opcode, or the start makes no sense as a pickle.
    Content,
    Io(io::Error),
}

/// Walks every pickle in `input` until its end, or until the globals tell who wrote it and
/// the rest need not be read (joblib's arrays and torch's storages are raw bytes between
/// pickles).
pub fn walk(input: &mut (impl BufRead + Seek)) -> Result<Walk, NotPickle> {
    let mut walk = Walk::default();
    let mut walker = Walker::default();
    loop {
        let start = input.stream_position().map_err(NotPickle::Io)?;
        if input.fill_buf().map_err(NotPickle::Io)?.is_empty() {
            return Ok(walk);
        }
        match walker.one(input, &mut walk) {
            Ok(()) => {
                if walk.pickles == 0 {
                    walk.protocol = walker.protocol;
                    walk.torch_legacy = walker.saw_torch_magic && walker.ops == 3;
                }
                walk.pickles = (walk.pickles + 1).min(MAX_PICKLES);
                if walk.torch_legacy || by_joblib(&walk.globals) {
                    walk.stopped_early = true;
                    return Ok(walk);
                }
            }
            Err(failure) => {
                let plausible = walk.pickles > 0 || walker.protocol >= 2 || walker.named_globals;
                if !plausible || start == 0 && walker.ops < 2 {
                    return Err(match failure {
                        Failure::Io(e) => NotPickle::Io(e),
                        _ => NotPickle::Content,
                    });
                }
                if by_joblib(&walk.globals) {
                    walk.stopped_early = true;
                    return Ok(walk);
                }
                walk.damage = Some(Damage {
                    offset: input.stream_position().unwrap_or(start),
                    what: failure.to_string(),
                });
                return Ok(walk);
            }
        }
    }
}

/// What one pickle of a stream names and hides.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    /// `(module, name)` of the globals named, in order.
    pub globals: Vec<(String, String)>,
    /// Pickles hidden in its data.
    pub nested: Vec<Nested>,
    /// Identifiers it pushes as strings.
    pub names: Vec<String>,
    /// STACK_GLOBALs of computed operands.
    pub dynamic_globals: usize,
}

/// The globals of each pickle in `input`, in order, for at most `max_pickles` pickles (a torch
/// legacy file is followed by raw storages). A pickle that cannot be read to its STOP ends the
/// walk: its globals so far are kept, and the damage says where it stopped.
pub fn globals_per_pickle(
    input: &mut (impl BufRead + Seek),
    max_pickles: usize,
) -> (Vec<Contents>, Option<Damage>) {
    let mut per_pickle = Vec::new();
    let mut walker = Walker::default();
    while per_pickle.len() < max_pickles {
        match input.fill_buf() {
            Ok([]) => break,
            Ok(_) => {}
            Err(e) => return (per_pickle, Some(damage_at(input, &Failure::Io(e)))),
        }
        let mut walk = Walk::default();
        let result = walker.one(input, &mut walk);
        per_pickle.push(Contents {
            globals: walk.globals,
            nested: walk.nested,
            names: walk.names,
            dynamic_globals: walk.dynamic_globals,
        });
        if let Err(failure) = result {
            return (per_pickle, Some(damage_at(input, &failure)));
        }
    }
    (per_pickle, None)
}

fn damage_at(input: &mut impl Seek, failure: &Failure) -> Damage {
    Damage {
        offset: input.stream_position().unwrap_or(0),
        what: failure.to_string(),
    }
}

fn by_joblib(globals: &[(String, String)]) -> bool {
    globals
        .iter()
        .any(|(m, _)| m.starts_with("joblib.") || m.starts_with("sklearn.externals.joblib"))
}

#[derive(Debug)]
enum Failure {
    Io(io::Error),
    Truncated,
    UnknownOpcode(u8),
    BadArgument(&'static str),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "read error: {e}"),
            Failure::Truncated => f.write_str("the stream ends before the pickle's STOP"),
            Failure::UnknownOpcode(b) => write!(f, "unknown opcode 0x{b:02x}"),
            Failure::BadArgument(what) => write!(f, "bad argument: {what}"),
        }
    }
}

/// State of one pickle's walk.
#[derive(Default)]
struct Walker {
    protocol: u8,
    /// Opcodes read in the current pickle.
    ops: usize,
    named_globals: bool,
    saw_torch_magic: bool,
    /// The two most recent pushes, if they were strings (for STACK_GLOBAL).
    recent: [Option<String>; 2],
    memo: std::collections::HashMap<u64, String>,
    memo_len: u64,
    /// The identifiers of `Walk::names`, to keep each once.
    names: std::collections::HashSet<String>,
}

impl Walker {
    /// Walks one pickle, through its STOP.
    fn one(&mut self, input: &mut (impl BufRead + Seek), walk: &mut Walk) -> Result<(), Failure> {
        self.protocol = 0;
        self.ops = 0;
        self.named_globals = false;
        self.saw_torch_magic = false;
        self.memo.clear();
        self.memo_len = 0;
        self.names.clear();
        self.recent = [None, None];
        loop {
            let byte = read_byte(input)?;
            let (arg, op) = opcode(byte).ok_or(Failure::UnknownOpcode(byte))?;
            self.ops += 1;
            let mut pushed: Option<Option<String>> = Some(None);
            match arg {
                Arg::None => {}
                Arg::Fixed(n) => {
                    let mut buf = [0u8; 8];
                    read_exact(input, &mut buf[..n as usize])?;
                    match op {
                        Op::Proto => {
                            if !(2..=5).contains(&buf[0]) {
                                return Err(Failure::BadArgument("protocol out of range"));
                            }
                            self.protocol = buf[0];
                        }
                        Op::Get => pushed = Some(self.memo.get(&le(&buf[..n as usize])).cloned()),
                        Op::Put => self.remember(le(&buf[..n as usize])),
                        _ => {}
                    }
                }
                Arg::Line => {
                    let line = read_line(input)?;
                    match op {
                        Op::Str => pushed = Some(Some(unquote(&line))),
                        Op::Get => {
                            let key = parse_index(&line)?;
                            pushed = Some(self.memo.get(&key).cloned());
                        }
                        Op::Put => self.remember(parse_index(&line)?),
                        _ => {}
                    }
                }
                Arg::TwoLines => {
                    let module = read_line(input)?;
                    let name = read_line(input)?;
                    if !is_dotted_name(&module) || !is_dotted_name(&name) {
                        return Err(Failure::BadArgument("a global that is not a Python name"));
                    }
                    self.note_global(walk, module, name);
                }
                Arg::Counted(width) => {
                    let mut len_bytes = [0u8; 8];
                    read_exact(input, &mut len_bytes[..width as usize])?;
                    let len = le(&len_bytes[..width as usize]);
                    let at = input.stream_position().map_err(Failure::Io)?;
                    if matches!(op, Op::Str | Op::Bytes) && (8..=MAX_NESTED_BYTES).contains(&len) {
                        let mut data = vec![0u8; len as usize];
                        read_exact(input, &mut data)?;
                        if walk.nested.len() < MAX_NESTED
                            && let Some((encoding, bytes)) = hidden_pickle(&data, op == Op::Str)
                        {
                            walk.nested.push(Nested {
                                offset: at,
                                encoding,
                                bytes,
                            });
                        }
                        if op == Op::Str && len <= MAX_NAME {
                            pushed = Some(String::from_utf8(data).ok());
                        }
                    } else if op == Op::Str && len <= MAX_NAME {
                        let mut text = vec![0u8; len as usize];
                        read_exact(input, &mut text)?;
                        pushed = Some(String::from_utf8(text).ok());
                    } else if op == Op::Long1 && len == 10 {
                        let mut digits = [0u8; 10];
                        read_exact(input, &mut digits)?;
                        self.saw_torch_magic = digits == TORCH_LEGACY_MAGIC;
                    } else {
                        skip(input, len)?;
                    }
                }
            }
            match op {
                Op::Stop => return Ok(()),
                Op::Memoize => {
                    let index = self.memo_len;
                    self.remember(index);
                    pushed = None;
                }
                Op::Put | Op::Frame | Op::Proto => pushed = None,
                Op::StackGlobal => {
                    if let [Some(module), Some(name)] = self.recent.clone() {
                        self.note_global(walk, module, name);
                    } else if self.memo.len() < MAX_MEMO {
                        // (Past the memo's cap a string may just not have been kept.)
                        walk.dynamic_globals += 1;
                    }
                }
                _ => {}
            }
            if let Some(value) = pushed {
                if let Some(name) = &value
                    && walk.names.len() < MAX_NAMES
                    && is_identifier(name)
                    && self.names.insert(name.clone())
                {
                    walk.names.push(name.clone());
                }
                self.recent = [self.recent[1].take(), value];
            }
        }
    }

    /// Memoizes the most recent push (only strings matter to us).
    fn remember(&mut self, index: u64) {
        self.memo_len = self.memo_len.max(index + 1);
        if let Some(s) = &self.recent[1]
            && self.memo.len() < MAX_MEMO
        {
            self.memo.insert(index, s.clone());
        }
    }

    fn note_global(&mut self, walk: &mut Walk, module: String, name: String) {
        self.named_globals = true;
        if walk.globals.len() < MAX_GLOBALS {
            walk.globals.push((module, name));
        }
    }
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

fn read_byte(input: &mut impl BufRead) -> Result<u8, Failure> {
    let mut b = [0u8; 1];
    read_exact(input, &mut b)?;
    Ok(b[0])
}

fn read_exact(input: &mut impl BufRead, buf: &mut [u8]) -> Result<(), Failure> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Failure::Truncated,
        _ => Failure::Io(e),
    })
}

fn read_line(input: &mut impl BufRead) -> Result<String, Failure> {
    let mut line = Vec::new();
    let n = Read::take(&mut *input, MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .map_err(Failure::Io)?;
    if n == 0 || line.last() != Some(&b'\n') {
        return Err(if n >= MAX_LINE {
            Failure::BadArgument("line too long")
        } else {
            Failure::Truncated
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn skip(input: &mut (impl BufRead + Seek), len: u64) -> Result<(), Failure> {
    let here = input.stream_position().map_err(Failure::Io)?;
    let end = input.seek(io::SeekFrom::End(0)).map_err(Failure::Io)?;
    if here.checked_add(len).is_none_or(|target| target > end) {
        return Err(Failure::Truncated);
    }
    input
        .seek(io::SeekFrom::Start(here + len))
        .map_err(Failure::Io)?;
    Ok(())
}

fn parse_index(line: &str) -> Result<u64, Failure> {
    line.trim()
        .parse()
        .map_err(|_| Failure::BadArgument("a memo index that is not a number"))
}

/// A protocol-0 string argument without its quotes.
fn unquote(line: &str) -> String {
    let t = line.trim_end();
    for q in ['\'', '"'] {
        if let Some(inner) = t.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    t.to_string()
}

/// Globals a protocol 2+ pickle names with STACK_GLOBAL, found by their byte pattern
/// (SHORT_BINUNICODE or BINUNICODE module, then name, each maybe memoized, then STACK_GLOBAL)
/// anywhere in `data`: how the globals after joblib's inline array data are read, where an
/// opcode walk cannot follow (the bytes of an array are no opcodes).
pub fn sweep_globals(data: &[u8]) -> Vec<(String, String)> {
    fn string_at(data: &[u8], at: usize) -> Option<(String, usize)> {
        let (len, start) = match data.get(at)? {
            0x8c => (usize::from(*data.get(at + 1)?), at + 2),
            b'X' => {
                let b = data.get(at + 1..at + 5)?;
                (
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                    at + 5,
                )
            }
            _ => return None,
        };
        if len == 0 || len > 256 {
            return None;
        }
        let text = std::str::from_utf8(data.get(start..start + len)?).ok()?;
        if !is_dotted_name(text) {
            return None;
        }
        let mut next = start + len;
        match data.get(next) {
            Some(0x94) => next += 1,
            Some(b'q') => next += 2,
            _ => {}
        }
        Some((text.to_string(), next))
    }
    let mut found: Vec<(String, String)> = Vec::new();
    let mut at = 0usize;
    while at < data.len() && found.len() < MAX_GLOBALS {
        if let Some((module, next)) = string_at(data, at)
            && let Some((name, end)) = string_at(data, next)
            && data.get(end) == Some(&0x93)
        {
            if !found.iter().any(|(m, n)| *m == module && *n == name) {
                found.push((module, name));
            }
            at = end + 1;
            continue;
        }
        at += 1;
    }
    found
}

/// Identifier strings kept per pickle.
const MAX_NAMES: usize = 4096;

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_dotted_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn walk_bytes(bytes: &[u8]) -> Result<Walk, NotPickle> {
        walk(&mut Cursor::new(bytes.to_vec()))
    }

    #[test]
    fn only_a_stream_that_fails_on_plain_data_cannot_act() {
        // No opcode at all: an ELF, JSON.
        assert!(!could_act(b"\x7fELF\x02\x01\x01", false));
        assert!(!could_act(b"{\"a\": 1}", false));
        // A protocol the unpickler does not know.
        assert!(!could_act(b"\x80\x09}", false));
        // Plain data to the end of the whole file (a dict of small ints, protocol 4).
        let plain = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94K\x01K\x02s.";
        assert!(!could_act(plain, true));
        // ... but a prefix of a file could go on to anything.
        assert!(could_act(plain, false));
        // Cut inside a counted argument: the rest of a whole file is too short.
        assert!(!could_act(b"\x8c\x10abc", true));
        assert!(could_act(b"\x8c\x10abc", false));
        // Imports and calls.
        assert!(could_act(b"cos\nsystem\n(S'id'\ntR.", true));
        assert!(could_act(b"\x80\x04\x8c\x02os\x8c\x06system\x93", true));
        assert!(could_act(b"(X\x01\x00\x00\x00a\x85R", true));
        // A site .pth file: INST of a "module" that no import can find.
        assert!(!could_act(b"import os; os.environ.get('X')\n", true));
        assert!(could_act(b"ipackage.sub\nName\n", true));
        // A PNG: 0x89 is NEWFALSE, then PERSID hands "NG" to persistent_load.
        assert!(could_act(b"\x89PNG\r\n\x1a\n", true));
    }

    #[test]
    fn protocol_0_global_and_reduce() {
        let w = walk_bytes(b"cposix\nsystem\n(Vid\ntR.").unwrap();
        assert_eq!(w.protocol, 0);
        assert_eq!(w.pickles, 1);
        assert_eq!(w.globals, [("posix".into(), "system".into())]);
        assert!(w.damage.is_none());
    }

    #[test]
    fn protocol_4_stack_global_through_the_memo() {
        // pickle.dumps(os.system, protocol=4) names posix.system with STACK_GLOBAL.
        let bytes = b"\x80\x04\x95\x16\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.";
        let w = walk_bytes(bytes).unwrap();
        assert_eq!(w.protocol, 4);
        assert_eq!(w.globals, [("posix".into(), "system".into())]);
    }

    #[test]
    fn several_pickles_are_counted() {
        let one = b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.";
        let mut two = one.to_vec();
        two.extend_from_slice(one);
        assert_eq!(walk_bytes(&two).unwrap().pickles, 2);
    }

    #[test]
    fn a_cut_pickle_is_damaged_but_still_a_pickle() {
        let w =
            walk_bytes(b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K").unwrap();
        let damage = w.damage.expect("damage noted");
        assert!(damage.what.contains("ends before"), "{damage:?}");
    }

    #[test]
    fn text_is_not_a_pickle() {
        for text in [
            &b"hello world\n"[..],
            b"config: yes\n",
            b"{\"a\": 1}",
            b"\x7fELF\x02",
        ] {
            assert!(
                matches!(walk_bytes(text), Err(NotPickle::Content)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn globals_are_kept_per_pickle_up_to_the_damage() {
        let mut bytes = b"cposix\nsystem\n(Vid\ntR.".to_vec();
        bytes.extend_from_slice(b"cbuiltins\nset\n)R.");
        bytes.extend_from_slice(b"cos\ngetcwd\n\xff");
        let (per_pickle, damage) = globals_per_pickle(&mut Cursor::new(bytes), 10);
        let names: Vec<Vec<String>> = per_pickle
            .iter()
            .map(|c| c.globals.iter().map(|(m, n)| format!("{m}.{n}")).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec!["posix.system"],
                vec!["builtins.set"],
                vec!["os.getcwd"]
            ]
        );
        assert!(damage.expect("damaged").what.contains("0xff"));
        let (first, damage) =
            globals_per_pickle(&mut Cursor::new(b"cposix\nsystem\n.K\x01.".to_vec()), 1);
        assert_eq!(first.len(), 1);
        assert!(damage.is_none());
    }

    #[test]
    fn pickles_hidden_in_bytes_strings_and_base64_are_found() {
        let inner = b"\x80\x04\x95\x16\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.";
        // SHORT_BINBYTES of the inner pickle, then base64 of it as a string.
        let mut outer = vec![0x80, 0x04, b'C', inner.len() as u8];
        outer.extend_from_slice(inner);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        outer.push(0x8c);
        outer.push(b64.len() as u8);
        outer.extend_from_slice(b64.as_bytes());
        outer.extend_from_slice(b"\x86.");
        let (per_pickle, damage) = globals_per_pickle(&mut Cursor::new(outer), 10);
        assert!(damage.is_none(), "{damage:?}");
        let nested = &per_pickle[0].nested;
        assert_eq!(nested.len(), 2, "{nested:?}");
        assert_eq!(nested[0].encoding, "bytes");
        assert_eq!(nested[1].encoding, "base64");
        assert_eq!(nested[1].bytes, inner);
        // Plain bytes are not a pickle.
        let plain = b"\x80\x04C\x0812345678.";
        let (per_pickle, _) = globals_per_pickle(&mut Cursor::new(plain.to_vec()), 10);
        assert!(per_pickle[0].nested.is_empty());
    }

    #[test]
    fn globals_past_raw_bytes_are_swept() {
        let mut data = b"\x80\x04junk \x00\x09\xff".to_vec();
        data.extend_from_slice(b"\x8c\x05posix\x94\x8c\x06system\x94\x93");
        data.extend_from_slice(b"X\x08\x00\x00\x00builtinsq\x01\x8c\x04eval\x93");
        data.extend_from_slice(b"\x8c\x03a b\x8c\x01c\x93");
        assert_eq!(
            sweep_globals(&data),
            [
                ("posix".to_string(), "system".to_string()),
                ("builtins".to_string(), "eval".to_string())
            ]
        );
    }

    #[test]
    fn torch_legacy_magic_is_recognised() {
        let mut bytes = vec![0x80, 0x02, 0x8a, 0x0a];
        bytes.extend_from_slice(&TORCH_LEGACY_MAGIC);
        bytes.push(b'.');
        bytes.extend_from_slice(b"\x80\x02K\x01.");
        bytes.extend_from_slice(b"raw storage bytes that are no pickle");
        let w = walk_bytes(&bytes).unwrap();
        assert!(w.torch_legacy);
        assert!(w.stopped_early);
    }
}
