//! Zip archives: PyTorch's checkpoints, Keras v3 models and NumPy's .npz are all zips, told
//! apart by the names in the central directory (nothing is decompressed).

use std::{fs::File, io::BufReader};

/// What kind of model archive a zip is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `torch.save`: `<name>/data.pkl` with `<name>/data/<n>` storages.
    Torch,
    /// `model.save("x.keras")`: `config.json`, `metadata.json`, `model.weights.h5`.
    Keras,
    /// `numpy.savez`: every member a `.npy`.
    NumpyArchive,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("a corrupt or truncated zip archive: {0}")]
    Corrupt(#[from] zip::result::ZipError),
    #[error("a zip archive that is no model format we know (entries: {0})")]
    Unrecognised(String),
}

/// Reads the central directory of `file` and says which kind of archive it is, with its
/// entry count.
pub fn classify(file: File) -> Result<(Kind, usize), ArchiveError> {
    let archive = zip::ZipArchive::new(BufReader::new(file))?;
    let owned: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()?;
    let names: Vec<&str> = owned.iter().map(String::as_str).collect();
    let kind = if names
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
        return Err(ArchiveError::Unrecognised(listed));
    };
    Ok((kind, names.len()))
}
