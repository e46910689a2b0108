//! The members of zip and 7z archives, read leniently: what a loader could be handed from an
//! archive is read even when the archive lies about it (flags that claim encryption, a name in
//! the central directory that differs from the local header, a wrong CRC, a central directory
//! that cannot be read at all). Sizes are bounded: a member larger than the limit is reported
//! unread, never read into memory.

use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    path::Path,
};

/// One member of an archive.
pub struct Member {
    pub name: String,
    /// Its bytes, or why they could not be read.
    pub data: Result<Vec<u8>, String>,
}

/// Members whose bytes are not read (torch's tensor storages: raw numbers no loader
/// unpickles), by name.
pub type Skip<'a> = &'a dyn Fn(&str) -> bool;

/// Every member of the zip at `path`.
pub fn zip(path: &Path, max_member: u64, skip: Skip<'_>) -> io::Result<Vec<Member>> {
    let file = BufReader::new(File::open(path)?);
    match zip::ZipArchive::new(file) {
        Ok(mut archive) => {
            let mut members = Vec::with_capacity(archive.len());
            for i in 0..archive.len() {
                let raw = match archive.by_index_raw(i) {
                    Ok(raw) => raw,
                    Err(e) => {
                        members.push(Member {
                            name: format!("member {}", i + 1),
                            data: Err(e.to_string()),
                        });
                        continue;
                    }
                };
                let name = String::from_utf8_lossy(raw.name_raw()).into_owned();
                if raw.is_dir() || skip(&name) {
                    continue;
                }
                let method = method_id(raw.compression());
                let (compressed, size) = (raw.compressed_size(), raw.size());
                let data = if compressed > max_member || size > max_member {
                    Err(format!("{size} bytes: not read"))
                } else {
                    let mut bytes = Vec::with_capacity(compressed as usize);
                    match raw.take(max_member).read_to_end(&mut bytes) {
                        Ok(_) => inflate(method, &bytes, max_member),
                        Err(e) => Err(e.to_string()),
                    }
                };
                members.push(Member { name, data });
            }
            Ok(members)
        }
        // No central directory to trust: walk the local headers from the start.
        Err(_) => local_headers(&std::fs::read(path)?, max_member, skip),
    }
}

fn method_id(method: zip::CompressionMethod) -> u16 {
    #[allow(deprecated)]
    match method {
        zip::CompressionMethod::Stored => 0,
        zip::CompressionMethod::Deflated => 8,
        zip::CompressionMethod::Unsupported(n) => n,
        _ => u16::MAX,
    }
}

/// The bytes of a member compressed with `method` (the zip method ids).
fn inflate(method: u16, data: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let read = match method {
        0 => return Ok(data.to_vec()),
        8 => flate2::read::DeflateDecoder::new(data)
            .take(max)
            .read_to_end(&mut out),
        12 => bzip2::read::BzDecoder::new(data)
            .take(max)
            .read_to_end(&mut out),
        other => return Err(format!("compression method {other} is not read")),
    };
    read.map(|_| out)
        .map_err(|e| format!("cannot be decompressed: {e}"))
}

/// Members found by walking local file headers (`PK\3\4`) in order.
fn local_headers(bytes: &[u8], max_member: u64, skip: Skip<'_>) -> io::Result<Vec<Member>> {
    let mut members = Vec::new();
    let mut at = 0usize;
    let u16_at = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    while members.len() < 65_536 {
        let Some(start) = find(&bytes[at.min(bytes.len())..], b"PK\x03\x04").map(|i| at + i) else {
            break;
        };
        let (Some(flags), Some(method), Some(compressed), Some(name_len), Some(extra_len)) = (
            u16_at(start + 6),
            u16_at(start + 8),
            u32_at(start + 18),
            u16_at(start + 26),
            u16_at(start + 28),
        ) else {
            break;
        };
        let name_start = start + 30;
        let data_start = name_start + usize::from(name_len) + usize::from(extra_len);
        let Some(name) = bytes.get(name_start..name_start + usize::from(name_len)) else {
            break;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        // Sizes after the data (flag bit 3): up to the next header.
        let end = if flags & 0x08 != 0 || compressed == 0 {
            find(&bytes[data_start.min(bytes.len())..], b"PK\x03\x04")
                .map_or(bytes.len(), |i| data_start + i)
        } else {
            data_start
                .saturating_add(compressed as usize)
                .min(bytes.len())
        };
        at = end.max(start + 4);
        if name.ends_with('/') || skip(&name) {
            continue;
        }
        let data = match bytes.get(data_start..end) {
            Some(data) if data.len() as u64 <= max_member => inflate(method, data, max_member),
            Some(data) => Err(format!("{} bytes: not read", data.len())),
            None => Err("cut short".into()),
        };
        members.push(Member { name, data });
    }
    Ok(members)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every member of the 7z archive at `path`.
pub fn seven_zip(path: &Path, max_member: u64) -> Result<Vec<Member>, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut reader =
        sevenz_rust2::ArchiveReader::new(BufReader::new(file), sevenz_rust2::Password::empty())
            .map_err(|e| e.to_string())?;
    reader.set_thread_count(1);
    let mut members = Vec::new();
    reader
        .for_each_entries(|entry, data| {
            if entry.is_directory() {
                return Ok(true);
            }
            let mut bytes = Vec::new();
            let read = if entry.size() > max_member {
                Err(format!("{} bytes: not read", entry.size()))
            } else {
                data.take(max_member)
                    .read_to_end(&mut bytes)
                    .map(|_| bytes)
                    .map_err(|e| e.to_string())
            };
            members.push(Member {
                name: entry.name().to_string(),
                data: read,
            });
            Ok(members.len() < 65_536)
        })
        .map_err(|e| e.to_string())?;
    Ok(members)
}
