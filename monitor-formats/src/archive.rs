//! Zip archives: PyTorch's checkpoints, Keras v3 models and NumPy's .npz are all zips, told
//! apart by the names in the central directory (nothing is decompressed).

use std::{fs::File, io::BufReader};

/// What kind of model archive a zip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `torch.save`: `<name>/data.pkl` with `<name>/data/<n>` storages.
    Torch,
    /// `torch.jit.save`: `<name>/code/...` (TorchScript source), `<name>/constants.pkl`.
    TorchScript,
    /// `model.save("x.keras")`: `config.json`, `metadata.json`, `model.weights.h5`.
    Keras,
    /// `numpy.savez`: every member a `.npy`.
    NumpyArchive,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("a corrupt or truncated zip archive: {0}")]
    Corrupt(#[from] zip::result::ZipError),
    #[error("a zip archive that is no model format we know (entries: {listed})")]
    Unrecognised { listed: String, entries: usize },
    #[error(
        "a zip bomb: its entries unpack to {}, more than the limit of {} (see --max-size-mib)",
        super::human_bytes(*unpacked), super::human_bytes(*limit)
    )]
    Bomb { unpacked: u64, limit: u64 },
    #[error("a zip archive whose entries share bytes (a zip bomb's trick; no framework writes it)")]
    Overlapping,
    #[error("a NumPy archive whose member {0} is not a .npy array (numpy.savez writes only those)")]
    NotAnArray(String),
}

impl ArchiveError {
    /// How many entries the archive lists, where that is known.
    pub fn entries(&self) -> usize {
        match self {
            ArchiveError::Unrecognised { entries, .. } => *entries,
            _ => 0,
        }
    }
}

/// The magic every .npy starts with.
const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads the central directory of `file` and says which kind of archive it is, with its
/// entry count. Entries may unpack to `max_unpacked` bytes in all: loaders read them into
/// memory or onto disk by the sizes declared there.
pub fn classify(file: File, max_unpacked: u64) -> Result<(Kind, usize), ArchiveError> {
    let mut archive = zip::ZipArchive::new(BufReader::new(file))?;
    // Each entry's local header is read too: an archive cut short fails here.
    let mut unpacked = 0u64;
    for i in 0..archive.len() {
        unpacked = unpacked.saturating_add(archive.by_index_raw(i)?.size());
    }
    if unpacked > max_unpacked {
        return Err(ArchiveError::Bomb {
            unpacked,
            limit: max_unpacked,
        });
    }
    if archive.has_overlapping_entries()? {
        return Err(ArchiveError::Overlapping);
    }
    let owned: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()?;
    let names: Vec<&str> = owned.iter().map(String::as_str).collect();
    let torchscript = names.iter().any(|n| n.contains("/code/"))
        && names
            .iter()
            .any(|n| *n == "constants.pkl" || n.ends_with("/constants.pkl"));
    let kind = if torchscript {
        Kind::TorchScript
    } else if names
        .iter()
        .any(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
    {
        Kind::Torch
    } else if names.contains(&"config.json") && names.contains(&"metadata.json") {
        Kind::Keras
    } else if !names.is_empty() && names.iter().all(|n| n.ends_with(".npy")) {
        Kind::NumpyArchive
    } else {
        let mut shown: Vec<&str> = names.iter().take(5).copied().collect();
        if names.len() > shown.len() {
            shown.push("...");
        }
        let listed = if shown.is_empty() {
            "none".to_string()
        } else {
            shown.join(", ")
        };
        return Err(ArchiveError::Unrecognised {
            listed,
            entries: names.len(),
        });
    };
    if kind == Kind::NumpyArchive {
        // numpy.load hands a member that is no array on as raw bytes: a loader never looks
        // into it, so it could hide anything (another archive, a bomb).
        for (i, name) in owned.iter().enumerate() {
            let mut member = archive.by_index(i)?;
            let mut magic = [0u8; NPY_MAGIC.len()];
            if std::io::Read::read_exact(&mut member, &mut magic).is_err() || magic != NPY_MAGIC {
                return Err(ArchiveError::NotAnArray(name.clone()));
            }
        }
    }
    Ok((kind, names.len()))
}
