//! GGUF (llama.cpp's model format), validated natively: the header, every metadata key and
//! value, and every tensor's description, within the file's bounds. Nothing is loaded: the
//! format holds no code. Its chat templates, though, are Jinja programs that serving stacks
//! render (CVE-2024-34359: llama-cpp-python rendered them outside a sandbox), so they are kept
//! for the static analysis to read.

use std::io::{self, Read, Seek, SeekFrom};

use serde::Serialize;

pub const MAGIC: &[u8; 4] = b"GGUF";
/// Metadata entries and tensors accepted (real models have hundreds to thousands).
const MAX_ENTRIES: u64 = 1 << 20;
/// The longest string accepted (a tokenizer's merges are many short strings).
const MAX_STRING: u64 = 64 << 20;
/// Array elements accepted in one value (a vocabulary has ~10^5 tokens).
const MAX_ARRAY: u64 = 1 << 26;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub version: u32,
    pub tensors: u64,
    pub metadata: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// `(key, template)` of every chat template (tokenizer.chat_template*).
    #[serde(skip)]
    pub chat_templates: Vec<(String, String)>,
}

/// Validates the GGUF file `input` of `size` bytes.
pub fn check(input: &mut (impl Read + Seek), size: u64) -> Result<Summary, String> {
    read(input, size).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => "the file ends inside its header".to_string(),
        _ => e.to_string(),
    })
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read(input: &mut (impl Read + Seek), size: u64) -> io::Result<Summary> {
    let mut magic = [0u8; 4];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("no GGUF magic"));
    }
    let version = u32_le(input)?;
    if !(2..=3).contains(&version) {
        return Err(bad(format!("version {version} (2 and 3 are known)")));
    }
    let tensors = u64_le(input)?;
    let metadata = u64_le(input)?;
    if tensors > MAX_ENTRIES || metadata > MAX_ENTRIES {
        return Err(bad(format!(
            "{tensors} tensors and {metadata} metadata entries"
        )));
    }
    let mut architecture = None;
    let mut chat_templates = Vec::new();
    let mut alignment = 32u64;
    for _ in 0..metadata {
        let key = string(input, size)?;
        let kind = u32_le(input)?;
        if kind == 8 {
            let text = string(input, size)?;
            if key == "general.architecture" {
                architecture = Some(text);
            } else if key.starts_with("tokenizer.chat_template") {
                chat_templates.push((key, text));
            }
        } else if key == "general.alignment" && kind == 4 {
            alignment = u64::from(u32_le(input)?);
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(bad(format!("alignment {alignment}")));
            }
        } else {
            skip_value(input, kind, size, 0)?;
        }
    }
    let mut data_needed = 0u64;
    for _ in 0..tensors {
        let _name = string(input, size)?;
        let dims = u32_le(input)?;
        if dims > 8 {
            return Err(bad(format!("a tensor of {dims} dimensions")));
        }
        let mut elements = 1u64;
        for _ in 0..dims {
            elements = elements
                .checked_mul(u64_le(input)?)
                .ok_or_else(|| bad("a tensor's size overflows"))?;
        }
        let _type = u32_le(input)?;
        let offset = u64_le(input)?;
        if offset % alignment != 0 {
            return Err(bad(format!("a tensor at unaligned offset {offset}")));
        }
        data_needed = data_needed.max(offset);
        let _ = elements;
    }
    let header_end = input.stream_position()?;
    let data_start = header_end.div_ceil(alignment) * alignment;
    if tensors > 0 && data_start.saturating_add(data_needed) > size {
        return Err(bad(format!(
            "tensor data at offset {data_needed} past the end of the file"
        )));
    }
    Ok(Summary {
        version,
        tensors,
        metadata,
        architecture,
        chat_templates,
    })
}

fn u32_le(input: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_le(input: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn string(input: &mut (impl Read + Seek), size: u64) -> io::Result<String> {
    let len = u64_le(input)?;
    let here = input.stream_position()?;
    if len > MAX_STRING || here.saturating_add(len) > size {
        return Err(bad(format!("a string of {len} bytes")));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn skip_value(input: &mut (impl Read + Seek), kind: u32, size: u64, depth: u8) -> io::Result<()> {
    let width = match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => {
            let len = u64_le(input)?;
            return skip(input, len, size);
        }
        9 => {
            if depth > 2 {
                return Err(bad("arrays nested too deep"));
            }
            let element = u32_le(input)?;
            let count = u64_le(input)?;
            if count > MAX_ARRAY {
                return Err(bad(format!("an array of {count} elements")));
            }
            for _ in 0..count {
                skip_value(input, element, size, depth + 1)?;
            }
            return Ok(());
        }
        other => return Err(bad(format!("metadata of unknown type {other}"))),
    };
    skip(input, width, size)
}

fn skip(input: &mut (impl Read + Seek), len: u64, size: u64) -> io::Result<()> {
    let here = input.stream_position()?;
    let to = here
        .checked_add(len)
        .filter(|&to| to <= size)
        .ok_or_else(|| bad("a value past the end of the file"))?;
    input.seek(SeekFrom::Start(to))?;
    Ok(())
}

/// Small files of this format built in memory, for tests here and in the crates above
/// (feature `samples`).
#[cfg(any(test, feature = "samples"))]
pub mod tests {
    #[cfg(test)]
    use std::io::Cursor;

    #[cfg(test)]
    use super::*;

    fn string(s: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A GGUF of no tensors with an architecture and a chat template.
    pub fn file(template: &str) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        string("general.architecture", &mut out);
        out.extend_from_slice(&8u32.to_le_bytes());
        string("llama", &mut out);
        string("tokenizer.ggml.scores", &mut out);
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&6u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        string("tokenizer.chat_template", &mut out);
        out.extend_from_slice(&8u32.to_le_bytes());
        string(template, &mut out);
        out
    }

    #[test]
    fn metadata_is_read_and_damage_refused() {
        let bytes = file("{{ messages }}");
        let s = check(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(s.version, 3);
        assert_eq!(s.architecture.as_deref(), Some("llama"));
        assert_eq!(s.chat_templates[0].1, "{{ messages }}");
        for cut in [3, 10, 30, bytes.len() - 1] {
            assert!(
                check(&mut Cursor::new(&bytes[..cut]), cut as u64).is_err(),
                "cut at {cut}"
            );
        }
    }
}
