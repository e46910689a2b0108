//! Offsets of kernel structure members, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): where the kernel programs find the file behind a descriptor.
//!
//! Only what that needs is read: the type section's structs and unions with their members,
//! and the type chains (typedefs, qualifiers) that lead to them. Anonymous members (a union of
//! alternatives inside `struct inode`, say) are searched too, so a field that moved into one
//! is still found. The format is the kernel's `Documentation/bpf/btf.rst`.

use std::collections::HashMap;

use monitor_common::event::FileOffsets;

/// Why an offset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("not BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{structure}` has no member `{member}` in the kernel's BTF")]
    NoMember { structure: String, member: String },
}

const MAGIC: u16 = 0xeb9f;

// Kinds (btf.rst, "BTF Type Encoding"), and what follows each `struct btf_type`.
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union.
#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing type.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// A struct or union, with its members.
    Composite {
        name_off: u32,
        members: Vec<Member>,
    },
    /// A typedef or a qualifier: stands for the type it names.
    Alias(u32),
    Other,
}

/// The parts of a BTF blob this module reads.
pub struct Btf {
    /// By type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Named structs, by name: the type ids of each (a name may be both a struct and, rarely,
    /// defined twice).
    structs: HashMap<String, Vec<u32>>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> std::io::Result<Result<Btf, BtfError>> {
        std::fs::read("/sys/kernel/btf/vmlinux").map(|bytes| Btf::parse(&bytes))
    }

    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        let u16_at = |off: usize| -> Result<u16, BtfError> {
            bytes
                .get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(BtfError::Malformed("truncated header"))
        };
        let u32_at = |data: &[u8], off: usize| -> Result<u32, BtfError> {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(BtfError::Malformed("truncated type"))
        };
        if u16_at(0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (or a big-endian blob)"));
        }
        let hdr_len = u32_at(bytes, 4)? as usize;
        let [type_off, type_len, str_off, str_len] =
            [8, 12, 16, 20].map(|at| u32_at(bytes, at).map(|v| v as usize));
        let section = |off: usize, len: usize| {
            bytes
                .get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed("section past the end"))
        };
        let type_data = section(type_off?, type_len?)?;
        let strings = section(str_off?, str_len?)?.to_vec();

        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < type_data.len() {
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let offset = u32_at(type_data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            // With the kind flag, the top 8 bits are a bitfield's size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                    }
                    Type::Composite { name_off, members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                _ => Type::Other,
            };
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            types.push(ty);
        }
        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name_off, .. } = ty
                && *name_off != 0
            {
                let name = btf.string(*name_off).to_owned();
                btf.structs.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// The type `id` stands for, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                ty => return Some(ty),
            }
        }
        None
    }

    /// The byte offset of member `member` in struct `structure`, searching anonymous members.
    pub fn offset_of(&self, structure: &str, member: &str) -> Result<u32, BtfError> {
        let ids = self
            .structs
            .get(structure)
            .ok_or_else(|| BtfError::NoStruct(structure.into()))?;
        ids.iter()
            .find_map(|&id| self.find_member(id, member, 0))
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                structure: structure.into(),
                member: member.into(),
            })
    }

    fn find_member(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        let Some(Type::Composite { members, .. }) = self.resolve(id) else {
            return None;
        };
        // Named members first: an anonymous one is only searched when no named one matches.
        if let Some(m) = members.iter().find(|m| self.string(m.name_off) == member) {
            return Some(base_bits + m.bit_offset);
        }
        members
            .iter()
            .filter(|m| m.name_off == 0)
            .find_map(|m| self.find_member(m.type_id, member, base_bits + m.bit_offset))
    }

    /// The offsets that lead from a task to the device and inode of one of its files.
    pub fn file_offsets(&self) -> Result<FileOffsets, BtfError> {
        Ok(FileOffsets {
            task_files: self.offset_of("task_struct", "files")?,
            files_fdt: self.offset_of("files_struct", "fdt")?,
            fdt_max_fds: self.offset_of("fdtable", "max_fds")?,
            fdt_fd: self.offset_of("fdtable", "fd")?,
            file_inode: self.offset_of("file", "f_inode")?,
            inode_ino: self.offset_of("inode", "i_ino")?,
            inode_sb: self.offset_of("inode", "i_sb")?,
            sb_dev: self.offset_of("super_block", "s_dev")?,
        })
    }

    /// Where a task keeps how it ended (`task_struct.exit_code`).
    pub fn task_exit_code_offset(&self) -> Result<u32, BtfError> {
        self.offset_of("task_struct", "exit_code")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 int, 2 `struct inner { int a; int b; }`, 3 `struct outer { int x;
    /// union { struct inner in; }; }` (anonymous), 4 typedef inner_t -> 2, 5 the union.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0x\0outer\0in\0inner_t\0";
        let name = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        push(&[name("int"), info(KIND_INT, 0), 4, 32]); // 1
        push(&[name("inner"), info(KIND_STRUCT, 2), 8]); // 2
        push(&[name("a"), 1, 0, name("b"), 1, 32]);
        push(&[name("outer"), info(KIND_STRUCT, 2), 12]); // 3
        push(&[name("x"), 1, 0, 0, 5, 32]);
        push(&[name("inner_t"), info(KIND_TYPEDEF, 0), 2]); // 4
        push(&[0, info(KIND_UNION, 1), 8]); // 5
        push(&[name("in"), 4, 0]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn members_are_found_also_inside_anonymous_members_and_through_typedefs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("inner", "b").unwrap(), 4);
        assert_eq!(btf.offset_of("outer", "x").unwrap(), 0);
        assert_eq!(btf.offset_of("outer", "in").unwrap(), 4);
        assert!(matches!(
            btf.offset_of("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset_of("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }

    #[test]
    fn the_running_kernel_has_every_offset() {
        let Ok(Ok(btf)) = Btf::from_kernel() else {
            eprintln!("skipped: no readable kernel BTF");
            return;
        };
        let offsets = btf.file_offsets().expect("every member is there");
        // A task's files pointer is far into task_struct; an fdtable starts with max_fds.
        assert!(offsets.task_files > 0, "{offsets:?}");
        assert_eq!(offsets.fdt_max_fds, 0, "{offsets:?}");
    }
}
