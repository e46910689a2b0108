//! safetensors, checked natively: an 8-byte little-endian header length, a JSON header naming
//! each tensor's dtype, shape and byte range, then the data. Nothing in it can run; what can
//! go wrong is a header that lies (ranges that overlap, leave holes, run past the end, or do
//! not match dtype times shape), which loaders have had bugs with. Such a file is an error,
//! never clean.

use std::{collections::BTreeMap, io::Read};

use serde::Serialize;

/// Headers larger than this are refused (the format's own reference limit).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub tensors: usize,
    /// Distinct dtypes, sorted.
    pub dtypes: Vec<String>,
    pub data_bytes: u64,
    pub metadata_keys: usize,
}

/// Whether the first bytes look like a safetensors header (a sane length, then `{`).
pub fn looks_like(head: &[u8], file_size: u64) -> bool {
    if head.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    (2..=MAX_HEADER).contains(&n) && 8 + n <= file_size && head[8] == b'{'
}

/// Validates the whole layout; the error says which check failed.
pub fn check(input: &mut impl Read, file_size: u64) -> Result<Summary, String> {
    let mut len = [0u8; 8];
    input
        .read_exact(&mut len)
        .map_err(|e| format!("reading the header length: {e}"))?;
    let n = u64::from_le_bytes(len);
    if !(2..=MAX_HEADER).contains(&n) {
        return Err(format!("header length {n} is out of range"));
    }
    if 8 + n > file_size {
        return Err(format!(
            "header length {n} runs past the end of the file ({file_size} bytes)"
        ));
    }
    let mut header = vec![0u8; n as usize];
    input
        .read_exact(&mut header)
        .map_err(|e| format!("reading the header: {e}"))?;
    let text = std::str::from_utf8(&header).map_err(|_| "the header is not UTF-8".to_string())?;
    let entries: BTreeMap<String, serde_json::Value> = serde_json::from_str(text.trim_end())
        .map_err(|e| format!("the header is not a JSON object: {e}"))?;

    let data_len = file_size - 8 - n;
    let mut ranges = Vec::new();
    let mut dtypes = std::collections::BTreeSet::new();
    let mut metadata_keys = 0;
    for (name, value) in &entries {
        if name == "__metadata__" {
            let map = value.as_object().ok_or("__metadata__ is not an object")?;
            if map.values().any(|v| !v.is_string()) {
                return Err("__metadata__ holds a value that is not a string".into());
            }
            metadata_keys = map.len();
            continue;
        }
        let tensor: Tensor =
            serde_json::from_value(value.clone()).map_err(|e| format!("tensor {name:?}: {e}"))?;
        let width = dtype_bits(&tensor.dtype)
            .ok_or_else(|| format!("tensor {name:?}: unknown dtype {}", tensor.dtype))?;
        let elements = tensor
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor {name:?}: shape overflows"))?;
        let bits = elements
            .checked_mul(width)
            .ok_or_else(|| format!("tensor {name:?}: size overflows"))?;
        let [begin, end] = tensor.data_offsets;
        if begin > end {
            return Err(format!(
                "tensor {name:?}: data offsets {begin}..{end} are reversed"
            ));
        }
        if end > data_len {
            return Err(format!(
                "tensor {name:?}: data offsets {begin}..{end} run past the data ({data_len} bytes)"
            ));
        }
        if bits.div_ceil(8) != end - begin {
            return Err(format!(
                "tensor {name:?}: {} {:?} needs {} bytes but its offsets span {}",
                tensor.dtype,
                tensor.shape,
                bits.div_ceil(8),
                end - begin
            ));
        }
        dtypes.insert(tensor.dtype.clone());
        ranges.push((begin, end, name.as_str()));
    }
    // The ranges must tile the data area: sorted, each starts where the last ended.
    ranges.sort();
    let mut at = 0;
    for (begin, end, name) in &ranges {
        if *begin < at {
            return Err(format!("tensor {name:?} overlaps the tensor before it"));
        }
        if *begin > at {
            return Err(format!(
                "a hole of {} bytes before tensor {name:?}",
                begin - at
            ));
        }
        at = *end;
    }
    if at != data_len {
        return Err(format!(
            "{} bytes after the last tensor are not described by the header",
            data_len - at
        ));
    }
    Ok(Summary {
        tensors: ranges.len(),
        dtypes: dtypes.into_iter().collect(),
        data_bytes: data_len,
        metadata_keys,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Tensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Bits per element.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        bytes
    }

    fn check_bytes(bytes: &[u8]) -> Result<Summary, String> {
        check(&mut &bytes[..], bytes.len() as u64)
    }

    const TWO: &str = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"I8","shape":[3],"data_offsets":[16,19]},"__metadata__":{"format":"pt"}}"#;

    #[test]
    fn a_sound_file_is_summarised() {
        let s = check_bytes(&file(TWO, 19)).unwrap();
        assert_eq!(s.tensors, 2);
        assert_eq!(s.dtypes, ["F32", "I8"]);
        assert_eq!(s.data_bytes, 19);
        assert_eq!(s.metadata_keys, 1);
        assert!(looks_like(&file(TWO, 19), 8 + TWO.len() as u64 + 19));
    }

    #[test]
    fn lies_in_the_header_are_errors() {
        let cases = [
            (file(TWO, 18), "run past"),
            (file(TWO, 20), "not described"),
            (file(&TWO.replace("[16,19]", "[15,18]"), 19), "overlaps"),
            (file(&TWO.replace("[2,2]", "[2,3]"), 19), "needs 24 bytes"),
            (file(&TWO.replace("F32", "Q7"), 19), "unknown dtype"),
            (file("{not json}", 0), "not a JSON object"),
            (
                file(
                    r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                    2,
                ),
                "hole",
            ),
        ];
        for (bytes, expected) in cases {
            let err = check_bytes(&bytes).unwrap_err();
            assert!(err.contains(expected), "{err} (wanted {expected})");
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.push(b'{');
        assert!(check_bytes(&huge).unwrap_err().contains("out of range"));
    }
}
