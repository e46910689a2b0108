//! Raw ring-buffer bytes -> typed records.
//!
//! A record is checked for length and kind before any field is read; anything malformed is an
//! error the reader counts, never a panic.

mod args;
pub mod recording;
mod shared;

use std::{cell::RefCell, mem::size_of, sync::Arc};

use monitor_common::{
    event::{
        EventHeader, EventKind, FLAG_KILLED, FLAG_READ_ERROR, FLAG_RECAPTURED, FLAG_TRUNCATED,
        ProcessExec, ProcessExit, ProcessFork, STR_SLOTS, SyscallEnter, SyscallExit, SyscallReturn,
    },
    syscall::{self, Syscall},
};
use serde::Serialize;

pub use args::{ArgValue, ArgValues, SockAddr, is_family_name, is_flag_name};

/// Who did it, when, and where; common to every record.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub cpu: u32,
    pub cgroup_id: u64,
    /// The watch that selected the task (which job the record belongs to).
    pub watch_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Shared by the records of a process while its name stays the same.
    pub comm: Arc<str>,
    #[serde(flatten)]
    pub flags: Flags,
}

/// What the kernel said of a record's data (its `FLAG_*` bits), kept with the syscall's
/// event; each shown only when set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    /// Some captured data (an argument) was cut at its bound.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Some user memory (an argument's) could not be read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_error: bool,
    /// An entry record captured again at the syscall's exit, because its memory was not
    /// readable at entry: the arguments show what the memory held then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recaptured: bool,
    /// The watch's policy killed the task at this syscall's entry, in the kernel.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub killed: bool,
}

impl Flags {
    /// From a record header's `flags` bits.
    pub fn from_bits(bits: u16) -> Self {
        Flags {
            truncated: bits & FLAG_TRUNCATED != 0,
            read_error: bits & FLAG_READ_ERROR != 0,
            recaptured: bits & FLAG_RECAPTURED != 0,
            killed: bits & FLAG_KILLED != 0,
        }
    }
}

/// One decoded ring-buffer record.
#[derive(Debug, Clone)]
pub enum Record {
    /// A syscall that returned: entry and exit in one record (most syscalls).
    Call(Call),
    /// A syscall's entry alone: one that does not return, one whose entry had to be seen at
    /// once, or whose exit comes apart (see `monitor_common::event`).
    Enter(Enter),
    /// A syscall's exit alone, after its [`Record::Enter`].
    Exit(Exit),
    Fork(Fork),
    Exec(Exec),
    ProcessExit(ProcessEnd),
}

impl Record {
    pub fn header(&self) -> &Header {
        match self {
            Record::Call(r) => &r.enter.header,
            Record::Enter(r) => &r.header,
            Record::Exit(r) => &r.header,
            Record::Fork(r) => &r.header,
            Record::Exec(r) => &r.header,
            Record::ProcessExit(r) => &r.header,
        }
    }
}

/// A syscall entry, with its arguments named and decoded.
#[derive(Debug, Clone)]
pub struct Enter {
    pub header: Header,
    pub syscall: &'static Syscall,
    pub args: ArgValues,
}

/// A syscall that returned, from one record: its entry, and what it returned.
#[derive(Debug, Clone)]
pub struct Call {
    /// The entry, as the kernel read it at entry (its header is the entry's).
    pub enter: Enter,
    /// When it returned (CLOCK_MONOTONIC nanoseconds).
    pub exit_ns: u64,
    pub ret: i64,
    /// The file a successful open opened, as the kernel saw it.
    pub file: Option<FileId>,
}

/// A syscall's return.
#[derive(Debug, Clone)]
pub struct Exit {
    pub header: Header,
    pub syscall: &'static Syscall,
    pub ret: i64,
    /// The file a successful open opened, as the kernel saw it.
    pub file: Option<FileId>,
}

/// A file's identity: its device (as `stat`'s `st_dev` encodes it) and inode number. The same
/// whatever name, symlink or directory fd reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// From the kernel's encoding of a device (`major << 20 | minor`, a super block's
    /// `s_dev`), which differs from user space's.
    pub fn from_kernel(dev: u32, ino: u64) -> Option<Self> {
        (ino != 0).then(|| FileId {
            dev: libc::makedev(dev >> 20, dev & 0xf_ffff),
            ino,
        })
    }

    /// The identity of what `path` names now (followed if a symlink).
    pub fn of(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path)?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A new task; the header is the parent's.
#[derive(Debug, Clone)]
pub struct Fork {
    pub header: Header,
    pub child_tid: u32,
}

/// A task executed a new program.
#[derive(Debug, Clone)]
pub struct Exec {
    pub header: Header,
    pub old_tid: u32,
    pub filename: String,
}

/// A task exited.
#[derive(Debug, Clone)]
pub struct ProcessEnd {
    pub header: Header,
    pub group_dead: bool,
    /// The signal that killed the task, where the kernel said (see
    /// [`ProcessExit::exit_code`](monitor_common::event::ProcessExit::exit_code)).
    pub signal: Option<u8>,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte layout")]
    Short { len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("syscall number {0} is not in the table")]
    UnknownSyscall(u32),
    #[error("record data lengths exceed the record")]
    BadLengths,
}

/// Syscall number -> table entry, built once; and the texts records repeat, decoded once.
pub struct Decoder {
    by_nr: Vec<Option<&'static Syscall>>,
    /// Boxed: the reader holding a decoder stays small to move.
    shared: RefCell<Box<shared::Shared>>,
}

impl Default for Decoder {
    fn default() -> Self {
        let len = syscall::SYSCALLS
            .iter()
            .map(|s| s.nr as usize + 1)
            .max()
            .unwrap_or(0);
        let mut by_nr = vec![None; len];
        for sc in syscall::SYSCALLS {
            by_nr[sc.nr as usize] = Some(sc);
        }
        Decoder {
            by_nr,
            shared: RefCell::default(),
        }
    }
}

impl Decoder {
    pub fn syscall(&self, nr: u32) -> Result<&'static Syscall, DecodeError> {
        self.by_nr
            .get(nr as usize)
            .copied()
            .flatten()
            .ok_or(DecodeError::UnknownSyscall(nr))
    }

    /// Decodes one record.
    pub fn decode(&self, bytes: &[u8]) -> Result<Record, DecodeError> {
        let raw: EventHeader = read(bytes)?;
        let kind = EventKind::from_u16(raw.kind).ok_or(DecodeError::UnknownKind(raw.kind))?;
        let header = header(&raw, &mut self.shared.borrow_mut());
        Ok(match kind {
            EventKind::SyscallEnter => Record::Enter(self.enter(bytes, header)?),
            EventKind::Syscall => {
                let enter = self.enter(bytes, header)?;
                // `enter` checked the fixed part's length, which holds the return.
                let off = std::mem::offset_of!(SyscallEnter, exit);
                let exit: SyscallReturn = read(&bytes[off..])?;
                Record::Call(Call {
                    enter,
                    exit_ns: exit.ktime_ns,
                    ret: exit.ret,
                    file: FileId::from_kernel(exit.dev, exit.ino),
                })
            }
            EventKind::SyscallExit => {
                let r: SyscallExit = read(bytes)?;
                Record::Exit(Exit {
                    header,
                    syscall: self.syscall(r.nr)?,
                    ret: r.ret,
                    file: FileId::from_kernel(r.dev, r.ino),
                })
            }
            EventKind::ProcessFork => {
                let r: ProcessFork = read(bytes)?;
                Record::Fork(Fork {
                    header,
                    child_tid: r.child_tid,
                })
            }
            EventKind::ProcessExec => {
                let r: ProcessExec = read(bytes)?;
                let len = (r.filename_len as usize).min(r.filename.len());
                Record::Exec(Exec {
                    header,
                    old_tid: r.old_tid,
                    filename: c_string(&r.filename[..len]),
                })
            }
            EventKind::ProcessExit => {
                let r: ProcessExit = read(bytes)?;
                Record::ProcessExit(ProcessEnd {
                    header,
                    group_dead: r.group_dead != 0,
                    signal: ProcessExit::signal_of(r.exit_code),
                })
            }
        })
    }

    // Inlined, like `args::decode_all`: a record (large) is then written once, where
    // `decode` returns it, not moved from one function's result into the next.
    #[inline(always)]
    fn enter(&self, bytes: &[u8], header: Header) -> Result<Enter, DecodeError> {
        let fixed = SyscallEnter::FIXED_LEN;
        if bytes.len() < fixed {
            return Err(DecodeError::Short {
                len: bytes.len(),
                need: fixed,
            });
        }
        // Only the fixed part is read (field by field, where it lies: not copied out first);
        // the kernel sends `data` trimmed.
        let head = &bytes[..fixed];
        let nr = u32::from_ne_bytes(field(head, std::mem::offset_of!(SyscallEnter, nr)));
        let data_len =
            u32::from_ne_bytes(field(head, std::mem::offset_of!(SyscallEnter, data_len))) as usize;
        let data = bytes
            .get(fixed..fixed + data_len)
            .ok_or(DecodeError::BadLengths)?;
        let off_args = std::mem::offset_of!(SyscallEnter, args);
        // Arrays read whole (one unaligned load each), not element by element.
        let raw_args: [u64; 6] = read(&head[off_args..])?;
        let u16_at = |off: usize| u16::from_ne_bytes(field(head, off));
        let off_str = std::mem::offset_of!(SyscallEnter, str_len);
        let str_len: [u16; STR_SLOTS] = read(&head[off_str..])?;
        let blob_len = u16_at(std::mem::offset_of!(SyscallEnter, blob_len)) as usize;
        let argv_len = u16_at(std::mem::offset_of!(SyscallEnter, argv_len)) as usize;
        let argc = u16_at(std::mem::offset_of!(SyscallEnter, argc)) as usize;

        let syscall = self.syscall(nr)?;
        let mut cursor = 0usize;
        let mut take = |len: usize| -> Result<&[u8], DecodeError> {
            let s = data
                .get(cursor..cursor + len)
                .ok_or(DecodeError::BadLengths)?;
            cursor += len;
            Ok(s)
        };
        let mut strings: [&[u8]; STR_SLOTS] = [&[]; STR_SLOTS];
        for (slot, len) in strings.iter_mut().zip(str_len) {
            *slot = take(len.into())?;
        }
        let blob = take(blob_len)?;
        let argv = take(argv_len)?;
        // Only exec entries carry an argv: nothing to split for the others.
        let argv: Vec<String> = if argc == 0 {
            Vec::new()
        } else {
            argv.split(|&b| b == 0).take(argc).map(c_string).collect()
        };

        let captured = args::Captured {
            strings: &strings,
            blob,
            argv,
        };
        let args = args::decode_all(syscall, &raw_args, captured, &mut self.shared.borrow_mut());
        Ok(Enter {
            header,
            syscall,
            args,
        })
    }
}

fn header(raw: &EventHeader, shared: &mut shared::Shared) -> Header {
    Header {
        time_ns: raw.ktime_ns,
        cpu: raw.cpu,
        cgroup_id: raw.cgroup_id,
        watch_id: raw.watch_id,
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        gid: raw.gid,
        comm: shared.comm(&raw.comm),
        flags: Flags::from_bits(raw.flags),
    }
}

/// Reads a plain-data record from the front of `bytes`.
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: length checked above; T is Pod (any bit pattern valid); read_unaligned because
    // the ring buffer only guarantees 8-byte alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn field<const N: usize>(bytes: &[u8], off: usize) -> [u8; N] {
    bytes[off..off + N]
        .try_into()
        .expect("offset inside the fixed part")
}

/// Bytes up to the first NUL, as UTF-8 with invalid sequences replaced.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let bytes = &bytes[..end];
    // Valid UTF-8 (nearly every name and path) is checked in one fast pass and copied; only
    // the rest is walked chunk by chunk to replace what is invalid.
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}
