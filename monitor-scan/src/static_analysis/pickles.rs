//! The pickles of an artifact, wherever they are: a stream of several, a NumPy object array,
//! a compressed joblib file, any member of a zip or 7z archive, or hidden in another pickle's
//! data. Each gives the globals it names (`module.name`: what GLOBAL, INST and STACK_GLOBAL
//! import), read without running anything.

use std::io::{self, BufRead, Cursor, Read, Seek};

use serde::Serialize;

use monitor_formats::pickle::{self, Nested};

/// Distinct globals kept per pickle; more are counted in `omitted`.
const MAX_PER_PICKLE: usize = 200;
/// Pickles hidden inside pickles are followed this deep.
const MAX_NESTING: usize = 3;

/// The globals one pickle names.
#[derive(Debug, Clone, Serialize)]
pub struct PickleGlobals {
    /// Which pickle: `pickle 2` of a file, the archive member (`archive/data.pkl`), or one
    /// hidden in another (`pickle 1 > base64 at byte 40`).
    pub source: String,
    /// In the order first named, each once.
    pub globals: Vec<NamedGlobal>,
    /// Distinct globals past the ones listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
    /// Why the rest of this pickle was not read, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedGlobal {
    pub module: String,
    pub name: String,
    /// The static rule it fires (`static.exec`, `static.unknown-global`, ...); absent for a
    /// framework global real checkpoints name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<monitor_rules::Severity>,
}

impl NamedGlobal {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }

    /// Whether a rule marks it.
    pub fn is_flagged(&self) -> bool {
        self.rule.is_some()
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A pickle hidden in another, with where it was found.
pub struct HiddenPickle {
    pub source: String,
    pub found: Nested,
}

/// What reading pickles found: their globals, and the pickles hidden in their data.
#[derive(Default)]
pub struct Found {
    pub pickles: Vec<PickleGlobals>,
    pub hidden: Vec<HiddenPickle>,
    /// `(source, identifiers)` of each pickle that builds code objects (code pickled by value,
    /// as dill and cloudpickle write functions): what that code may name.
    pub code_names: Vec<(String, Vec<String>)>,
    /// `(source, count)` of each pickle that imports names it computes.
    pub dynamic_globals: Vec<(String, usize)>,
}

/// Whether a pickle naming `globals` (and pushing `names`) builds Python code objects.
fn builds_code(globals: &[(String, String)], names: &[String]) -> bool {
    globals.iter().any(|(module, name)| {
        name == "_create_code"
            || (module == "types" && name == "CodeType")
            || (matches!(name.as_str(), "_builtin_type" | "_load_type")
                && names.iter().any(|n| n == "CodeType"))
    })
}

impl Found {
    pub fn unread(&mut self, source: &str, why: String) {
        self.pickles.push(PickleGlobals {
            source: source.to_string(),
            globals: Vec::new(),
            omitted: 0,
            incomplete: Some(why),
        });
    }

    /// Every pickle of a stream, named `{label} 1`, `{label} 2`, ... (or `label` alone when
    /// it holds one), and the pickles hidden in them, followed in turn.
    pub fn stream(&mut self, input: &mut (impl BufRead + Seek), label: &str, max_pickles: usize) {
        self.stream_at(input, label, max_pickles, 0);
    }

    fn stream_at(
        &mut self,
        input: &mut (impl BufRead + Seek),
        label: &str,
        max_pickles: usize,
        depth: usize,
    ) {
        let (per_pickle, damage) = pickle::globals_per_pickle(input, max_pickles);
        let count = per_pickle.len();
        for (i, contents) in per_pickle.into_iter().enumerate() {
            let source = if count == 1 {
                label.to_string()
            } else {
                format!("{label} {}", i + 1)
            };
            if builds_code(&contents.globals, &contents.names) {
                self.code_names.push((source.clone(), contents.names));
            }
            if contents.dynamic_globals > 0 {
                self.dynamic_globals
                    .push((source.clone(), contents.dynamic_globals));
            }
            let mut p = distinct(source.clone(), contents.globals);
            if i + 1 == count
                && let Some(d) = &damage
            {
                p.incomplete = Some(format!("{} at byte {}", d.what, d.offset));
            }
            self.pickles.push(p);
            for nested in contents.nested {
                let inner = format!("{source} > {} at byte {}", nested.encoding, nested.offset);
                if depth < MAX_NESTING {
                    self.stream_at(
                        &mut Cursor::new(nested.bytes.clone()),
                        &inner,
                        pickle::MAX_PICKLES,
                        depth + 1,
                    );
                }
                self.hidden.push(HiddenPickle {
                    source: source.clone(),
                    found: nested,
                });
            }
        }
    }

    /// The globals [`pickle::sweep_globals`] finds in `data` that no pickle listed so far
    /// names, as one more entry.
    pub fn swept(&mut self, data: &[u8], label: &str) {
        let known: std::collections::HashSet<(String, String)> = self
            .pickles
            .iter()
            .flat_map(|p| p.globals.iter().map(|g| (g.module.clone(), g.name.clone())))
            .collect();
        let more: Vec<(String, String)> = pickle::sweep_globals(data)
            .into_iter()
            .filter(|g| !known.contains(g))
            .collect();
        if !more.is_empty() {
            self.pickles.push(distinct(label.to_string(), more));
        }
    }

    /// A `.npy`: a pickle follows its header when its dtype is object. Returns whether it is
    /// an object array.
    pub fn npy(&mut self, input: &mut (impl BufRead + Seek), label: &str) -> bool {
        match npy_header(input) {
            Ok(header) if is_object_dtype(&header) => {
                self.stream(input, label, 1);
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.unread(label, format!("unreadable .npy header: {e}"));
                false
            }
        }
    }
}

fn distinct(source: String, named: Vec<(String, String)>) -> PickleGlobals {
    let mut globals: Vec<NamedGlobal> = Vec::new();
    let mut omitted = 0;
    for (module, name) in named {
        if globals.iter().any(|g| g.module == module && g.name == name) {
            continue;
        }
        if globals.len() == MAX_PER_PICKLE {
            omitted += 1;
            continue;
        }
        globals.push(NamedGlobal {
            module,
            name,
            rule: None,
            severity: None,
        });
    }
    PickleGlobals {
        source,
        globals,
        omitted,
        incomplete: None,
    }
}

/// Whether a `.npy` header's `descr` is the object dtype (`'|O'`, `'O'`).
fn is_object_dtype(header: &str) -> bool {
    let Some((_, rest)) = header.split_once("descr") else {
        return false;
    };
    let value =
        rest.trim_start_matches(|c: char| c == '\'' || c == '"' || c == ':' || c.is_whitespace());
    let value = value.split(['\'', '"']).next().unwrap_or("");
    value.trim_start_matches(['|', '<', '>', '=']) == "O"
}

/// Reads the magic, version and header of a `.npy`, leaving `input` at the array data.
fn npy_header(input: &mut impl Read) -> io::Result<String> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "no .npy magic"));
    }
    let len = if magic[6] == 1 {
        let mut len = [0u8; 2];
        input.read_exact(&mut len)?;
        u64::from(u16::from_le_bytes(len))
    } else {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        u64::from(u32::from_le_bytes(len))
    };
    let mut header = String::new();
    input.take(len).read_to_string(&mut header)?;
    Ok(header)
}

/// Decompresses a joblib file compressed with `compression` (joblib's names), at most `max`
/// bytes of it.
pub fn decompress(compression: &str, input: impl Read, max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let read = match compression {
        "zlib" => flate2::read::ZlibDecoder::new(input)
            .take(max)
            .read_to_end(&mut out),
        "gzip" => flate2::read::MultiGzDecoder::new(input)
            .take(max)
            .read_to_end(&mut out),
        "bz2" => bzip2::read::MultiBzDecoder::new(input)
            .take(max)
            .read_to_end(&mut out),
        "xz" => lzma_rust2::XzReader::new(input, true)
            .take(max)
            .read_to_end(&mut out),
        "lzma" => lzma_rust2::LzmaReader::new_mem_limit(input, u32::MAX, None)
            .map_err(|e| e.to_string())?
            .take(max)
            .read_to_end(&mut out),
        "lz4" => lz4_flex::frame::FrameDecoder::new(input)
            .take(max)
            .read_to_end(&mut out),
        other => return Err(format!("{other}-compressed: not read")),
    };
    match read {
        Ok(_) => Ok(out),
        // What came out before the damage is what a loader would unpickle too.
        Err(_) if !out.is_empty() => Ok(out),
        Err(e) => Err(format!(
            "{compression}-compressed, cannot be decompressed: {e}"
        )),
    }
}
