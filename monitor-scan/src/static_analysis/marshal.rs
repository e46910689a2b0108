//! The names a marshal'd Python code object mentions (a Keras Lambda's bytecode), read
//! without knowing which Python wrote it: marshal tags every string with its type and length,
//! so the identifiers among them (co_names, co_consts, co_varnames of the code object and its
//! nested ones) can be picked out of the bytes whatever the code object's field layout, which
//! changes between Python versions.

/// Identifiers kept from one code object.
const MAX_NAMES: usize = 512;

/// Every identifier or dotted name stored as a marshal string in `code`, in order, each once.
pub fn names(code: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut at = 0usize;
    while at < code.len() && names.len() < MAX_NAMES {
        let kind = code[at] & 0x7f; // FLAG_REF marks objects marshal may refer back to
        let (header, len) = match kind {
            b'z' | b'Z' => match code.get(at + 1) {
                Some(&n) => (2, usize::from(n)),
                None => break,
            },
            b'a' | b'A' | b'u' | b't' => match code.get(at + 1..at + 5) {
                Some(b) => (5, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
                None => break,
            },
            _ => {
                at += 1;
                continue;
            }
        };
        let text = code.get(at + header..at + header + len.min(256));
        match text {
            Some(text) if len > 0 && len <= 256 && is_name(text) => {
                let name = String::from_utf8_lossy(text).into_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
                at += header + len;
            }
            _ => at += 1,
        }
    }
    names
}

fn is_name(text: &[u8]) -> bool {
    !text[0].is_ascii_digit()
        && text[0] != b'.'
        && text.last() != Some(&b'.')
        && text
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// What the names could call: `builtins.<name>` for each, and `<module>.<name>` for each pair
/// (a module imported by name, `__import__("os").system`, or a global module `os.system`).
pub fn candidates(names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in names.iter().filter(|n| !n.contains('.')) {
        out.push(format!("builtins.{n}"));
        for m in names.iter().filter(|m| *m != n) {
            out.push(format!("{m}.{n}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_picked_out_of_marshal_bytes() {
        // Python 3.11's marshal.dumps((lambda x: __import__("os").system("id")).__code__),
        // shortened to its strings: short ASCII ('z', 'Z', FLAG_REF) and interned ('t').
        let mut code = vec![0xe3, 0, 0, 0, 0];
        code.extend_from_slice(b"\xda\x02os");
        code.extend_from_slice(b"\xda\x02id");
        code.extend_from_slice(b"\xfa\x0a__import__");
        code.extend_from_slice(b"t\x06\x00\x00\x00system");
        code.extend_from_slice(b"\xda\x08<lambda>");
        let got = names(&code);
        assert_eq!(got, ["os", "id", "__import__", "system"]);
        let c = candidates(&got);
        assert!(c.contains(&"builtins.__import__".to_string()));
        assert!(c.contains(&"os.system".to_string()));
        assert!(names(b"\xda").is_empty());
        assert!(names(b"t\xff\xff\xff\xff").is_empty());
    }
}
