//! Static evidence: the globals an artifact's pickles name (`module.name`, what GLOBAL, INST
//! and STACK_GLOBAL import), read without running anything, per pickle, also inside torch zips
//! and NumPy object arrays. Each is marked with the rule an unpickler resolving it would fire
//! (the `pickle.find_class` audit rules: one list for both views).
//!
//! Evidence, never the verdict: a name says what a file could do, the trace what it did.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Cursor, Read, Seek},
    path::Path,
};

use serde::Serialize;

use crate::{
    rules::{RuleSet, Severity},
    scan::format::{Format, pickle},
};

/// Distinct globals kept per pickle; more are counted in `omitted`.
const MAX_PER_PICKLE: usize = 200;
/// Pickles reported per artifact.
const MAX_PICKLES: usize = 64;
/// The largest archive member read into memory to be walked.
const MAX_MEMBER_BYTES: u64 = 256 << 20;
/// A torch legacy file: magic number, protocol, system info, the object, the storage keys;
/// raw storages follow.
const TORCH_LEGACY_PICKLES: usize = 5;

/// The globals one pickle names.
#[derive(Debug, Clone, Serialize)]
pub struct PickleGlobals {
    /// Which pickle: `pickle 2` of a file, or the archive member (`archive/data.pkl`).
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
    /// The rule resolving it would fire, when it is one a model has no business naming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
}

impl NamedGlobal {
    /// Whether a rule marks it (the ones the text and SARIF reports show).
    pub fn is_flagged(&self) -> bool {
        self.rule.is_some()
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The globals of every pickle in the artifact at `path`, detected as `format`. Formats that
/// hold no pickle (Keras, HDF5, SavedModel, safetensors) give none. Reading errors become an
/// `incomplete` entry: evidence is best effort and never decides anything.
pub fn of(path: &Path, format: &Format, rules: &RuleSet) -> Vec<PickleGlobals> {
    let found = match format {
        Format::Pickle(_) | Format::Dill(_) | Format::Cloudpickle(_) => {
            open(path).map(|mut f| in_stream(&mut f, "pickle", pickle::MAX_PICKLES))
        }
        Format::TorchLegacy => {
            open(path).map(|mut f| in_stream(&mut f, "pickle", TORCH_LEGACY_PICKLES))
        }
        Format::Joblib { compression: None } => open(path).map(|mut f| {
            let mut found = in_stream(&mut f, "pickle", 1);
            // joblib writes each array's bytes inside the pickle stream, after its wrapper.
            for p in &mut found {
                if let Some(why) = &mut p.incomplete {
                    *why = format!("{why} (joblib: array data inside the stream)");
                }
            }
            found
        }),
        Format::Joblib {
            compression: Some(c),
        } => Ok(vec![unread(
            "pickle 1",
            format!("{c}-compressed: not read"),
        )]),
        Format::Numpy => open(path).map(|mut f| in_npy(&mut f, "array")),
        Format::TorchZip { .. } | Format::NumpyArchive { .. } => in_zip(path),
        Format::Keras { .. } | Format::Hdf5 | Format::SavedModel | Format::Safetensors(_) => {
            Ok(Vec::new())
        }
    };
    let mut found = found.unwrap_or_else(|e| vec![unread("artifact", format!("unreadable: {e}"))]);
    found.truncate(MAX_PICKLES);
    for p in &mut found {
        for g in &mut p.globals {
            if let Some(rule) = rules.rule_for_global(&g.module, &g.name) {
                g.rule = Some(rule.id().to_string());
                g.severity = Some(rule.spec.severity);
            }
        }
    }
    found
}

fn open(path: &Path) -> io::Result<BufReader<File>> {
    File::open(path).map(|f| BufReader::with_capacity(1 << 16, f))
}

fn unread(source: &str, why: String) -> PickleGlobals {
    PickleGlobals {
        source: source.to_string(),
        globals: Vec::new(),
        omitted: 0,
        incomplete: Some(why),
    }
}

/// Every pickle of a stream, named `{label} 1`, `{label} 2`, ... when there are several.
fn in_stream(
    input: &mut (impl BufRead + Seek),
    label: &str,
    max_pickles: usize,
) -> Vec<PickleGlobals> {
    let (per_pickle, damage) = pickle::globals_per_pickle(input, max_pickles.min(MAX_PICKLES));
    let last = per_pickle.len().saturating_sub(1);
    per_pickle
        .into_iter()
        .enumerate()
        .map(|(i, named)| {
            let mut p = distinct(format!("{label} {}", i + 1), named);
            if i == last
                && let Some(d) = &damage
            {
                p.incomplete = Some(format!("{} at byte {}", d.what, d.offset));
            }
            p
        })
        .collect()
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

/// A `.npy` holds a pickle after its header when its dtype is object (`'O'`).
fn in_npy(input: &mut (impl BufRead + Seek), label: &str) -> Vec<PickleGlobals> {
    match npy_header(input) {
        Ok(header) if is_object_dtype(&header) => in_stream(input, label, 1),
        Ok(_) => Vec::new(),
        Err(e) => vec![unread(label, format!("unreadable .npy header: {e}"))],
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

/// The pickles of a zip: torch's `*.pkl` members, and `.npz` members of object dtype.
fn in_zip(path: &Path) -> io::Result<Vec<PickleGlobals>> {
    let mut archive = zip::ZipArchive::new(open(path)?).map_err(io::Error::other)?;
    let mut found = Vec::new();
    for i in 0..archive.len() {
        let mut member = match archive.by_index(i) {
            Ok(m) => m,
            Err(e) => {
                found.push(unread(&format!("member {i}"), e.to_string()));
                continue;
            }
        };
        let name = match member.name() {
            Ok(name) => name.into_owned(),
            Err(e) => {
                found.push(unread(&format!("member {i}"), e.to_string()));
                continue;
            }
        };
        let is_pickle = name.ends_with(".pkl");
        if !is_pickle && !name.ends_with(".npy") {
            continue;
        }
        if member.size() > MAX_MEMBER_BYTES {
            found.push(unread(&name, format!("{} bytes: not read", member.size())));
            continue;
        }
        let mut bytes = Vec::with_capacity(member.size() as usize);
        if let Err(e) = member.read_to_end(&mut bytes) {
            found.push(unread(&name, format!("unreadable: {e}")));
            continue;
        }
        let mut input = Cursor::new(bytes);
        let mut of_member = if is_pickle {
            in_stream(&mut input, &name, pickle::MAX_PICKLES)
        } else {
            in_npy(&mut input, &name)
        };
        // One pickle per member: its name says which.
        if let [only] = of_member.as_mut_slice() {
            only.source = name.clone();
        }
        found.extend(of_member);
        if found.len() >= MAX_PICKLES {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pickle_names_its_globals_once_each_and_the_rules_mark_the_dangerous_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pkl");
        std::fs::write(
            &path,
            b"cposix\nsystem\n(Vid\ntRcposix\nsystem\n0cbuiltins\nset\n0.",
        )
        .unwrap();
        let format = crate::scan::format::detect(&path, &Default::default()).unwrap();
        let found = of(&path, &format, &RuleSet::defaults());
        assert_eq!(found.len(), 1, "{found:?}");
        let globals = &found[0].globals;
        assert_eq!(globals.len(), 2, "{globals:?}");
        assert_eq!(
            (globals[0].module.as_str(), globals[0].name.as_str()),
            ("posix", "system")
        );
        assert_eq!(globals[0].rule.as_deref(), Some("py.global-system"));
        assert_eq!(globals[0].severity, Some(Severity::High));
        assert!(
            !globals[1].is_flagged(),
            "builtins.set is what containers name"
        );
    }
}
