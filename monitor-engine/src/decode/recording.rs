//! Raw records kept in a file, as the ring buffer gave them, to be decoded again later: the
//! golden tests' captures, and a benchmark's capture replayed under a profiler.
//!
//! The format: [`MAGIC`], then each record as its length (u32, little-endian) and its bytes.

use std::{fs, io, path::Path};

/// The first bytes of a record file. Its digit is the record layout's version
/// (`monitor_common::event`): 2 since a syscall that returns is one record carrying its result
/// (files of version 1 would decode wrongly, so they are refused).
pub const MAGIC: &[u8; 8] = b"MONREC2\n";

/// Writes `records` to `path`.
pub fn write(path: &Path, records: &[Vec<u8>]) -> io::Result<()> {
    let mut out = MAGIC.to_vec();
    for r in records {
        let len = u32::try_from(r.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a record over 4 GiB"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(r);
    }
    fs::write(path, out)
}

/// The records in `path`, refused (with what is wrong) if it is not a whole record file.
pub fn read(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let raw = fs::read(path)?;
    let mut rest = raw
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("not a record file"))?;
    let mut records = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let record = tail
            .get(..len)
            .ok_or_else(|| bad("its last record is cut short"))?;
        records.push(record.to_vec());
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad("it ends inside a record's length"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_cut_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let records = vec![b"one".to_vec(), Vec::new(), vec![7; 300]];
        write(&path, &records).unwrap();
        assert_eq!(read(&path).unwrap(), records);
        let whole = fs::read(&path).unwrap();
        for cut in [whole.len() - 1, MAGIC.len() + 2] {
            fs::write(&path, &whole[..cut]).unwrap();
            assert_eq!(read(&path).unwrap_err().kind(), io::ErrorKind::InvalidData);
        }
        for older in [b"MONREC0\n", b"MONREC1\n"] {
            fs::write(&path, older).unwrap();
            assert!(read(&path).is_err());
        }
    }
}
