//! What an artifact is, from its content (never its name): which framework loads it, or, for
//! the formats that hold no code (safetensors, ONNX, GGUF), whether its layout is sound (it is
//! checked here and never loaded).

mod archive;
pub mod gguf;
pub mod onnx;
pub mod pickle;
pub mod proto;
pub mod safetensors;

use std::{
    fs::{self, File},
    io::{self, BufReader, Read as _},
    path::Path,
};

use serde::Serialize;

/// What an artifact is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "id", rename_all = "kebab-case")]
pub enum Format {
    /// A plain pickle stream (one or more pickles).
    Pickle(PickleInfo),
    /// Written by joblib: a pickle with inline arrays, or a compressed one.
    Joblib {
        compression: Option<&'static str>,
    },
    /// A pickle that needs dill to load.
    Dill(PickleInfo),
    /// A pickle that needs cloudpickle to load.
    Cloudpickle(PickleInfo),
    /// NumPy .npy.
    Numpy,
    /// NumPy .npz.
    NumpyArchive {
        entries: usize,
    },
    TorchZip {
        entries: usize,
    },
    /// A TorchScript archive (`torch.jit.save`): code/ entries with pickled constants.
    TorchScript {
        entries: usize,
    },
    TorchLegacy,
    /// Keras v3 .keras.
    Keras {
        entries: usize,
    },
    /// HDF5 (Keras .h5).
    Hdf5,
    /// A TensorFlow SavedModel directory.
    SavedModel,
    Safetensors(safetensors::Summary),
    /// ONNX, validated natively.
    Onnx(onnx::Summary),
    /// GGUF (llama.cpp), validated natively.
    Gguf(gguf::Summary),
    /// A zip or 7z archive that is no model format: nothing loads it, but what it holds is
    /// read all the same (a pickle inside is a pickle some loader may be handed).
    Archive {
        kind: &'static str,
        entries: usize,
        /// Why no loader takes it.
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PickleInfo {
    /// 0 for protocol 0 or 1 (no PROTO opcode).
    pub protocol: u8,
    pub pickles: usize,
    /// Why the stream cannot be read to its end, if it cannot. It is loaded all the same: a
    /// victim's loader would run it up to there, and so does ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
}

impl Format {
    /// The stable id used in reports.
    pub fn id(&self) -> &'static str {
        match self {
            Format::Pickle(_) => "pickle",
            Format::Joblib { .. } => "joblib",
            Format::Dill(_) => "dill",
            Format::Cloudpickle(_) => "cloudpickle",
            Format::Numpy => "numpy",
            Format::NumpyArchive { .. } => "numpy-archive",
            Format::TorchZip { .. } => "torch-zip",
            Format::TorchScript { .. } => "torchscript",
            Format::TorchLegacy => "torch-legacy",
            Format::Keras { .. } => "keras",
            Format::Hdf5 => "hdf5",
            Format::SavedModel => "savedmodel",
            Format::Safetensors(_) => "safetensors",
            Format::Onnx(_) => "onnx",
            Format::Gguf(_) => "gguf",
            Format::Archive { kind, .. } => kind,
        }
    }

    /// The harness's loader for it; `None` when nothing needs to run (the code-free formats,
    /// archives no framework loads).
    pub fn loader(&self) -> Option<&'static str> {
        Some(match self {
            Format::Pickle(_) => "pickle",
            Format::Joblib { .. } => "joblib",
            Format::Dill(_) => "dill",
            Format::Cloudpickle(_) => "cloudpickle",
            Format::Numpy | Format::NumpyArchive { .. } => "numpy",
            Format::TorchZip { .. } | Format::TorchLegacy => "torch",
            Format::TorchScript { .. } => "torchscript",
            Format::Keras { .. } | Format::Hdf5 => "keras",
            Format::SavedModel => "tensorflow",
            Format::Safetensors(_) | Format::Onnx(_) | Format::Gguf(_) | Format::Archive { .. } => {
                return None;
            }
        })
    }

    /// Why nothing is loaded, for a format that needs no loader: the report's note.
    pub fn not_loaded_because(&self) -> Option<&'static str> {
        match self {
            Format::Safetensors(_) | Format::Onnx(_) | Format::Gguf(_) => Some(
                "a format that holds no code: validated natively and read by the static \
                 analysis; nothing was loaded",
            ),
            Format::Archive { .. } => Some(
                "an archive no framework loads: its members were read by the static analysis; \
                 nothing was loaded",
            ),
            _ => None,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let pickle = |name: &str, p: &PickleInfo| {
            let protocol = match p.protocol {
                0 => "protocol 0/1".to_string(),
                n => format!("protocol {n}"),
            };
            let count = match p.pickles {
                1 => "1 pickle".to_string(),
                n if n >= pickle::MAX_PICKLES => format!("at least {n} pickles"),
                n => format!("{n} pickles"),
            };
            let damage = p
                .damage
                .as_ref()
                .map(|d| format!("; damaged: {d}"))
                .unwrap_or_default();
            format!("{name} ({protocol}, {count}{damage})")
        };
        match self {
            Format::Pickle(p) => pickle("pickle", p),
            Format::Dill(p) => pickle("dill pickle", p),
            Format::Cloudpickle(p) => pickle("cloudpickle pickle", p),
            Format::Joblib { compression: None } => "joblib".into(),
            Format::Joblib {
                compression: Some(c),
            } => format!("joblib ({c}-compressed)"),
            Format::Numpy => "NumPy array (.npy)".into(),
            Format::NumpyArchive { entries } => format!("NumPy archive (.npz, {entries} arrays)"),
            Format::TorchZip { entries } => {
                format!("PyTorch zip checkpoint ({entries} entries)")
            }
            Format::TorchScript { entries } => {
                format!("TorchScript archive ({entries} entries)")
            }
            Format::TorchLegacy => "PyTorch legacy checkpoint (pickles and raw storages)".into(),
            Format::Keras { entries } => format!("Keras v3 model (.keras, {entries} entries)"),
            Format::Hdf5 => "HDF5 file (Keras .h5)".into(),
            Format::SavedModel => "TensorFlow SavedModel directory".into(),
            Format::Safetensors(s) => format!(
                "safetensors ({} tensors, {}, {})",
                s.tensors,
                if s.dtypes.is_empty() {
                    "no dtypes".to_string()
                } else {
                    s.dtypes.join("/")
                },
                human_bytes(s.data_bytes)
            ),
            Format::Onnx(s) => format!(
                "ONNX model (IR {}, {} nodes, {} initializers{}{})",
                s.ir_version,
                s.nodes,
                s.initializers,
                if s.producer.is_empty() {
                    String::new()
                } else {
                    format!(", from {}", s.producer)
                },
                if s.external_data.is_empty() {
                    String::new()
                } else {
                    format!(", {} external data files", s.external_data.len())
                }
            ),
            Format::Gguf(s) => format!(
                "GGUF v{} model ({}{} tensors, {} metadata entries, {} chat templates)",
                s.version,
                s.architecture
                    .as_ref()
                    .map(|a| format!("{a}, "))
                    .unwrap_or_default(),
                s.tensors,
                s.metadata,
                s.chat_templates.len()
            ),
            Format::Archive {
                kind, entries, why, ..
            } => format!("{kind} archive of {entries} entries, no model format ({why})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest artifact accepted, in bytes (a SavedModel: the sum of its files).
    pub max_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_size: 8 << 30 }
    }
}

/// Why an artifact cannot be scanned. Each message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: not a regular file or directory but a {kind}")]
    NotAFile { path: String, kind: &'static str },
    #[error("{path}: cannot be read: {source}")]
    Unreadable { path: String, source: io::Error },
    #[error("{path}: the file is empty")]
    Empty { path: String },
    #[error("{path}: {} is larger than the limit of {} (see --max-size-mib)", human_bytes(*size), human_bytes(*limit))]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error(
        "{path}: a directory, but not a TensorFlow SavedModel (no saved_model.pb); it holds: {entries}"
    )]
    NotASavedModel { path: String, entries: String },
    #[error("{path}: {source}")]
    Archive {
        path: String,
        source: archive::ArchiveError,
    },
    #[error("{path}: malformed safetensors: {reason}")]
    MalformedSafetensors { path: String, reason: String },
    #[error("{path}: malformed {format}: {reason}")]
    Malformed {
        path: String,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: unknown content: {seen}")]
    Unknown { path: String, seen: String },
}

/// Detects the format of the file or directory at `path`.
pub fn detect(path: &Path, limits: &Limits) -> Result<Format, FormatError> {
    detect_as(path, &path.display().to_string(), limits)
}

/// [`detect`], naming the artifact `shown` in errors (a private copy's path means nothing to
/// the user who named the original).
pub fn detect_as(path: &Path, shown: &str, limits: &Limits) -> Result<Format, FormatError> {
    let shown = shown.to_string();
    let unreadable = |source: io::Error| FormatError::Unreadable {
        path: shown.clone(),
        source,
    };
    // Follows symlinks: a link to a device is the device.
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => FormatError::NotFound {
            path: shown.clone(),
        },
        _ => unreadable(e),
    })?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return saved_model(path, &shown, limits);
    }
    if !kind.is_file() {
        let kind = kind_of(&kind);
        return Err(FormatError::NotAFile { path: shown, kind });
    }
    let size = meta.len();
    if size == 0 {
        return Err(FormatError::Empty { path: shown });
    }
    if size > limits.max_size {
        return Err(FormatError::TooLarge {
            path: shown,
            size,
            limit: limits.max_size,
        });
    }
    let mut file = File::open(path).map_err(unreadable)?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut file, &mut head).map_err(unreadable)?;
    let head = &head[..n];
    let reopen = || File::open(path).map_err(unreadable);

    if is_numpy(head) {
        return Ok(Format::Numpy);
    }
    if is_zip(head) {
        let classified = archive::classify(reopen()?, limits.max_size);
        return match classified {
            Ok((kind, entries)) => Ok(match kind {
                archive::Kind::Torch => Format::TorchZip { entries },
                archive::Kind::TorchScript => Format::TorchScript { entries },
                archive::Kind::Keras => Format::Keras { entries },
                archive::Kind::NumpyArchive => Format::NumpyArchive { entries },
            }),
            // No framework takes it, but its members are read: a pickle in any entry is
            // still a pickle some loader may be handed.
            Err(
                e
                @ (archive::ArchiveError::Unrecognised { .. } | archive::ArchiveError::Corrupt(_)),
            ) => Ok(Format::Archive {
                kind: "zip",
                entries: e.entries(),
                why: e.to_string(),
            }),
            Err(source) => Err(FormatError::Archive {
                path: shown.clone(),
                source,
            }),
        };
    }
    if head.starts_with(SEVEN_ZIP_MAGIC) {
        return Ok(Format::Archive {
            kind: "7z",
            entries: 0,
            why: "7z is no model format".into(),
        });
    }
    if head.starts_with(gguf::MAGIC) {
        return gguf::check(&mut BufReader::new(reopen()?), size)
            .map(Format::Gguf)
            .map_err(|reason| FormatError::Malformed {
                path: shown.clone(),
                format: "GGUF",
                reason,
            });
    }
    if is_hdf5(&mut reopen()?, size).map_err(unreadable)? {
        return Ok(Format::Hdf5);
    }
    if let Some(compression) = compression(head) {
        return Ok(Format::Joblib {
            compression: Some(compression),
        });
    }
    if safetensors::looks_like(head, size) {
        return safetensors::check(&mut BufReader::new(reopen()?), size)
            .map(Format::Safetensors)
            .map_err(|reason| FormatError::MalformedSafetensors {
                path: shown.clone(),
                reason,
            });
    }
    match pickle::walk(&mut BufReader::with_capacity(1 << 16, reopen()?)) {
        Ok(walk) => Ok(classify_pickle(walk)),
        Err(pickle::NotPickle::Io(e)) => Err(unreadable(e)),
        Err(pickle::NotPickle::Content) if onnx::looks_like(head) => {
            let data = fs::read(path).map_err(unreadable)?;
            onnx::check(&data)
                .map(Format::Onnx)
                .map_err(|reason| FormatError::Malformed {
                    path: shown.clone(),
                    format: "ONNX",
                    reason,
                })
        }
        Err(pickle::NotPickle::Content) => Err(FormatError::Unknown {
            path: shown,
            seen: describe_unknown(head),
        }),
    }
}

/// 7-Zip's signature.
pub(crate) const SEVEN_ZIP_MAGIC: &[u8] = b"7z\xbc\xaf\x27\x1c";

fn classify_pickle(walk: pickle::Walk) -> Format {
    if walk.torch_legacy {
        return Format::TorchLegacy;
    }
    let from = |prefix: &str| {
        walk.globals
            .iter()
            .any(|(m, _)| m == prefix || m.starts_with(&format!("{prefix}.")))
    };
    let info = PickleInfo {
        protocol: walk.protocol,
        pickles: walk.pickles.max(1),
        damage: walk
            .damage
            .as_ref()
            .map(|d| format!("{} at byte {}", d.what, d.offset)),
    };
    if from("joblib") || from("sklearn.externals.joblib") {
        Format::Joblib { compression: None }
    } else if from("dill") {
        Format::Dill(info)
    } else if from("cloudpickle") {
        Format::Cloudpickle(info)
    } else {
        Format::Pickle(info)
    }
}

/// NumPy's .npy magic.
pub fn is_numpy(head: &[u8]) -> bool {
    head.starts_with(b"\x93NUMPY")
}

/// A zip archive's first header (a file, or an empty archive's end record): PyTorch, Keras
/// v3 and NumPy .npz files are zips.
pub fn is_zip(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")
}

/// The compressions joblib writes (and reads back by their magic).
pub fn compression(head: &[u8]) -> Option<&'static str> {
    Some(match head {
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => "zlib",
        [0x1f, 0x8b, ..] => "gzip",
        [b'B', b'Z', b'h', ..] => "bz2",
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => "xz",
        [0x5d, 0x00, 0x00, ..] => "lzma",
        [0x04, 0x22, 0x4d, 0x18, ..] => "lz4",
        [b'Z', b'F', ..] => "zlib (joblib < 0.10)",
        _ => return None,
    })
}

/// HDF5's signature is at offset 0 or, after a user block, at 512, 1024, 2048, ...
pub fn is_hdf5(file: &mut File, size: u64) -> io::Result<bool> {
    use std::io::{Seek as _, SeekFrom};
    const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
    let mut offset = 0u64;
    while offset + 8 <= size {
        file.seek(SeekFrom::Start(offset))?;
        let mut sig = [0u8; 8];
        file.read_exact(&mut sig)?;
        if &sig == SIGNATURE {
            return Ok(true);
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    Ok(false)
}

fn saved_model(path: &Path, shown: &str, limits: &Limits) -> Result<Format, FormatError> {
    let unreadable = |source| FormatError::Unreadable {
        path: shown.to_string(),
        source,
    };
    if path.join("saved_model.pb").is_file() || path.join("saved_model.pbtxt").is_file() {
        let size = tree_size(path).map_err(unreadable)?;
        if size > limits.max_size {
            return Err(FormatError::TooLarge {
                path: shown.to_string(),
                size,
                limit: limits.max_size,
            });
        }
        return Ok(Format::SavedModel);
    }
    let mut names: Vec<String> = fs::read_dir(path)
        .map_err(unreadable)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut shown_names: Vec<String> = names.iter().take(5).cloned().collect();
    if names.len() > 5 {
        shown_names.push("...".into());
    }
    Err(FormatError::NotASavedModel {
        path: shown.to_string(),
        entries: if names.is_empty() {
            "nothing".into()
        } else {
            shown_names.join(", ")
        },
    })
}

fn tree_size(path: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += tree_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What unknown content looks like, for the error message.
pub fn describe_unknown(head: &[u8]) -> String {
    let guess = match head {
        [0x7f, b'E', b'L', b'F', ..] => Some("an ELF executable"),
        [0x89, b'P', b'N', b'G', ..] => Some("a PNG image"),

        [b'#', b'!', ..] => Some("a script"),
        [b'%', b'P', b'D', b'F', ..] => Some("a PDF document"),
        [0x08, ..] => Some("perhaps protobuf, but no ONNX model"),
        _ if head
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            Some("looks like text")
        }
        _ => None,
    };
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    match guess {
        Some(guess) => format!("{guess} (starts with {})", hex.join(" ")),
        None => format!("starts with bytes {}", hex.join(" ")),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests;

/// What a file that is not a regular file or a directory is, in words for an error.
pub fn kind_of(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}
