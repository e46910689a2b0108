//! Syscall arguments: raw register values plus captured user memory -> typed, named values.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use monitor_common::syscall::{ArgKind, Capture, Syscall};
use serde::{Serialize, Serializer};
use smallvec::SmallVec;

use super::shared::Shared;

/// User memory the kernel copied for one syscall entry, in table order.
pub(super) struct Captured<'a> {
    pub strings: &'a [&'a [u8]],
    pub blob: &'a [u8],
    pub argv: Vec<String>,
}

/// A call's decoded arguments: held in place for up to four (most calls), so a record's
/// arguments cost no allocation of their own.
pub type ArgValues = SmallVec<[ArgValue; 4]>;

/// One decoded argument.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    Int(i64),
    UInt(u64),
    /// Pointers and bit fields shown in hex.
    Hex(u64),
    /// A file descriptor; `AT_FDCWD` for the current directory.
    Fd(i32),
    /// A string copied from user memory; `None` when it could not be read. Shared: the
    /// same path read again is one text ([`super::shared`]).
    Str(Option<Arc<str>>),
    /// Symbolic flags with the raw value kept for rules; the text is shared by every
    /// argument of that value.
    Flags {
        raw: u64,
        text: Arc<str>,
    },
    /// A file mode, shown in octal.
    Mode(u32),
    SockAddr(Option<SockAddr>),
    Argv(Vec<String>),
}

impl ArgValue {
    /// The string, for path and string arguments.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ArgValue::Str(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// The raw integer value, where there is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            ArgValue::Int(v) => Some(v as u64),
            ArgValue::UInt(v) | ArgValue::Hex(v) | ArgValue::Flags { raw: v, .. } => Some(v),
            ArgValue::Fd(v) => Some(v as i64 as u64),
            ArgValue::Mode(v) => Some(v.into()),
            _ => None,
        }
    }
}

/// A socket address decoded from a captured `sockaddr`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "family")]
pub enum SockAddr {
    #[serde(rename = "AF_INET")]
    Inet { addr: Ipv4Addr, port: u16 },
    #[serde(rename = "AF_INET6")]
    Inet6 { addr: Ipv6Addr, port: u16 },
    #[serde(rename = "AF_UNIX")]
    Unix { path: String },
    #[serde(rename = "other")]
    Other { family_nr: u16 },
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Inet { addr, port } => write!(f, "{{AF_INET, {addr}:{port}}}"),
            SockAddr::Inet6 { addr, port } => write!(f, "{{AF_INET6, [{addr}]:{port}}}"),
            SockAddr::Unix { path } => write!(f, "{{AF_UNIX, {path:?}}}"),
            SockAddr::Other { family_nr } => write!(f, "{{family={family_nr}}}"),
        }
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Int(v) => write!(f, "{v}"),
            ArgValue::UInt(v) => write!(f, "{v}"),
            ArgValue::Hex(v) => write!(f, "{v:#x}"),
            ArgValue::Fd(AT_FDCWD) => f.write_str("AT_FDCWD"),
            ArgValue::Fd(v) => write!(f, "{v}"),
            ArgValue::Str(Some(s)) => write!(f, "{s:?}"),
            ArgValue::Str(None) => f.write_str("<unreadable>"),
            ArgValue::Flags { text, .. } => f.write_str(text),
            ArgValue::Mode(m) => write!(f, "{m:#o}"),
            ArgValue::SockAddr(Some(a)) => write!(f, "{a}"),
            ArgValue::SockAddr(None) => f.write_str("<unreadable>"),
            ArgValue::Argv(v) => write!(f, "{v:?}"),
        }
    }
}

impl Serialize for ArgValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ArgValue::Int(v) => s.serialize_i64(*v),
            ArgValue::UInt(v) => s.serialize_u64(*v),
            ArgValue::Hex(v) => s.serialize_str(&format!("{v:#x}")),
            ArgValue::Fd(AT_FDCWD) => s.serialize_str("AT_FDCWD"),
            ArgValue::Fd(v) => s.serialize_i32(*v),
            ArgValue::Str(v) => v.as_deref().serialize(s),
            ArgValue::Flags { text, .. } => s.serialize_str(text),
            ArgValue::Mode(m) => s.serialize_str(&format!("{m:#o}")),
            ArgValue::SockAddr(a) => a.serialize(s),
            ArgValue::Argv(v) => v.serialize(s),
        }
    }
}

const AT_FDCWD: i32 = libc::AT_FDCWD;

/// Decodes every argument of `syscall`; texts and named values through `shared`.
#[inline(always)]
pub(super) fn decode_all(
    syscall: &Syscall,
    raw: &[u64; 6],
    mut cap: Captured<'_>,
    shared: &mut Shared,
) -> ArgValues {
    let mut strings = cap.strings.iter();
    // Not `with_capacity`: its result would be moved in; up to four arguments fit in place.
    let mut args = ArgValues::new();
    for (arg, &value) in syscall.args.iter().zip(raw) {
        let decoded = match arg.kind.capture() {
            Capture::Str => ArgValue::Str(
                strings
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(|s| shared.text(s)),
            ),
            Capture::SizedBlob => decode_blob(arg.kind, cap.blob),
            Capture::Argv => ArgValue::Argv(std::mem::take(&mut cap.argv)),
            Capture::Value if is_named(arg.kind) => {
                shared.named(arg.kind as u8, value, || decode_value(arg.kind, value))
            }
            Capture::Value => decode_value(arg.kind, value),
        };
        args.push(decoded);
    }
    args
}

/// Whether values of `kind` decode to a name or flags text (worth decoding once per value).
fn is_named(kind: ArgKind) -> bool {
    matches!(
        kind,
        ArgKind::OpenFlags
            | ArgKind::AtFlags
            | ArgKind::ProtFlags
            | ArgKind::MapFlags
            | ArgKind::CloneFlags
            | ArgKind::MountFlags
            | ArgKind::SockType
            | ArgKind::AddressFamily
            | ArgKind::Signal
            | ArgKind::PtraceRequest
            | ArgKind::BpfCmd
            | ArgKind::FcntlCmd
    )
}

fn decode_blob(kind: ArgKind, blob: &[u8]) -> ArgValue {
    let u64_at = |off: usize| {
        blob.get(off..off + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
    };
    match kind {
        ArgKind::SockAddr => ArgValue::SockAddr(sockaddr(blob)),
        // struct open_how { u64 flags; u64 mode; u64 resolve; }
        ArgKind::OpenHow => match u64_at(0) {
            Some(flags) => open_flags(flags),
            None => ArgValue::Str(None),
        },
        // struct clone_args { u64 flags; ... }
        ArgKind::CloneArgs => match u64_at(0) {
            Some(flags) => flags_value(flags, CLONE_FLAGS),
            None => ArgValue::Str(None),
        },
        _ => ArgValue::Str(None),
    }
}

fn decode_value(kind: ArgKind, v: u64) -> ArgValue {
    match kind {
        ArgKind::Int | ArgKind::Pid => ArgValue::Int(v as i64),
        ArgKind::UInt | ArgKind::Size => ArgValue::UInt(v),
        ArgKind::Id => ArgValue::Int(v as u32 as i32 as i64),
        ArgKind::Fd | ArgKind::DirFd => ArgValue::Fd(v as i32),
        ArgKind::Mode => ArgValue::Mode(v as u32),
        ArgKind::OpenFlags => open_flags(v as u32 as u64),
        ArgKind::AtFlags => flags_value(v as u32 as u64, AT_FLAGS),
        ArgKind::ProtFlags => flags_value(v, PROT_FLAGS),
        ArgKind::MapFlags => flags_value(v, MAP_FLAGS),
        ArgKind::CloneFlags => flags_value(v, CLONE_FLAGS),
        ArgKind::MountFlags => flags_value(v, MOUNT_FLAGS),
        ArgKind::SockType => {
            let base = v & 0xf;
            let name = named(base, SOCK_TYPES).map_or_else(|| base.to_string(), str::to_owned);
            let extra = flags_text(v & !0xf, SOCK_TYPE_FLAGS);
            let text = if extra.is_empty() || extra == "0" {
                name
            } else {
                format!("{name}|{extra}")
            };
            ArgValue::Flags {
                raw: v,
                text: text.into(),
            }
        }
        ArgKind::AddressFamily => enum_value(v, ADDRESS_FAMILIES),
        ArgKind::Signal => enum_value(v, SIGNALS),
        ArgKind::PtraceRequest => enum_value(v, PTRACE_REQUESTS),
        ArgKind::BpfCmd => enum_value(v, BPF_CMDS),
        ArgKind::FcntlCmd => enum_value(v, FCNTL_CMDS),
        ArgKind::Hex | ArgKind::Ptr => ArgValue::Hex(v),
        // Captured kinds never reach here; keep the raw value if the table and capture disagree.
        ArgKind::Path
        | ArgKind::Str
        | ArgKind::Argv
        | ArgKind::SockAddr
        | ArgKind::OpenHow
        | ArgKind::CloneArgs => ArgValue::Hex(v),
    }
}

fn sockaddr(b: &[u8]) -> Option<SockAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?);
    let port =
        |b: &[u8]| -> Option<u16> { Some(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)) };
    Some(match family as i32 {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            SockAddr::Inet {
                addr: Ipv4Addr::from(ip),
                port: port(b)?,
            }
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            SockAddr::Inet6 {
                addr: Ipv6Addr::from(ip),
                port: port(b)?,
            }
        }
        libc::AF_UNIX => {
            let path = b.get(2..).unwrap_or_default();
            // Abstract sockets start with a NUL; show it as '@' like ss(8) does.
            let path = match path.first() {
                Some(0) if path.len() > 1 => format!("@{}", String::from_utf8_lossy(&path[1..])),
                _ => super::c_string(path),
            };
            SockAddr::Unix { path }
        }
        _ => SockAddr::Other { family_nr: family },
    })
}

type Names = &'static [(u64, &'static str)];

/// Whether `name` is a flag the decoder can show (what rules may test for).
pub fn is_flag_name(name: &str) -> bool {
    ["O_RDONLY", "O_WRONLY", "O_RDWR"].contains(&name)
        || [
            OPEN_FLAGS,
            AT_FLAGS,
            PROT_FLAGS,
            MAP_FLAGS,
            CLONE_FLAGS,
            MOUNT_FLAGS,
            SOCK_TYPES,
            SOCK_TYPE_FLAGS,
        ]
        .iter()
        .any(|names| names.iter().any(|&(_, n)| n == name))
}

/// Whether `name` is an address family the decoder can show.
pub fn is_family_name(name: &str) -> bool {
    ADDRESS_FAMILIES.iter().any(|&(_, n)| n == name)
}

fn named(v: u64, names: Names) -> Option<&'static str> {
    names.iter().find(|&&(n, _)| n == v).map(|&(_, s)| s)
}

fn enum_value(v: u64, names: Names) -> ArgValue {
    match named(v, names) {
        Some(name) => ArgValue::Flags {
            raw: v,
            text: name.into(),
        },
        None => ArgValue::Int(v as i64),
    }
}

/// `O_RDONLY` is 0, so the access mode is named apart from the bit flags.
fn open_flags(v: u64) -> ArgValue {
    let mode = match v & 0o3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        2 => "O_RDWR",
        _ => "O_ACCMODE",
    };
    let mut text = String::with_capacity(32);
    text.push_str(mode);
    let rest = v & !0o3;
    if rest != 0 {
        text.push('|');
        push_flags(&mut text, rest, OPEN_FLAGS);
    }
    ArgValue::Flags {
        raw: v,
        text: text.into(),
    }
}

fn flags_value(v: u64, names: Names) -> ArgValue {
    ArgValue::Flags {
        raw: v,
        text: flags_text(v, names).into(),
    }
}

/// `A|B|0x40` for the named bits of `v` and what is left; `0` for none.
fn flags_text(v: u64, names: Names) -> String {
    if v == 0 {
        return "0".into();
    }
    let mut text = String::with_capacity(32);
    push_flags(&mut text, v, names);
    text
}

/// Appends `A|B|0x40` for `v` (not 0) to `text`: one string, built in place (this runs for
/// every flags argument of every record).
fn push_flags(text: &mut String, mut v: u64, names: Names) {
    use std::fmt::Write as _;
    let start = text.len();
    for &(bit, name) in names {
        if bit != 0 && v & bit == bit {
            if text.len() > start {
                text.push('|');
            }
            text.push_str(name);
            v &= !bit;
        }
    }
    if v != 0 {
        if text.len() > start {
            text.push('|');
        }
        let _ = write!(text, "{v:#x}");
    }
}

/// libc's constants of the target, by name; an entry may carry a `#[cfg]` (a constant only
/// some architectures have).
macro_rules! names {
    ($($(#[$cfg:meta])* $c:ident),* $(,)?) => {
        &[$($(#[$cfg])* (libc::$c as u64, stringify!($c))),*]
    };
}

// O_TMPFILE includes O_DIRECTORY's bit; listed first so it wins.
static OPEN_FLAGS: Names = names![
    O_TMPFILE,
    O_CREAT,
    O_EXCL,
    O_NOCTTY,
    O_TRUNC,
    O_APPEND,
    O_NONBLOCK,
    O_DSYNC,
    O_ASYNC,
    O_DIRECT,
    O_LARGEFILE,
    O_DIRECTORY,
    O_NOFOLLOW,
    O_NOATIME,
    O_CLOEXEC,
    O_SYNC,
    O_PATH,
];
static AT_FLAGS: Names = names![
    AT_SYMLINK_NOFOLLOW,
    AT_REMOVEDIR,
    AT_SYMLINK_FOLLOW,
    AT_NO_AUTOMOUNT,
    AT_EMPTY_PATH,
];
static PROT_FLAGS: Names = names![PROT_READ, PROT_WRITE, PROT_EXEC];
static MAP_FLAGS: Names = names![
    MAP_SHARED,
    MAP_PRIVATE,
    MAP_FIXED,
    MAP_ANONYMOUS,
    MAP_GROWSDOWN,
    MAP_DENYWRITE,
    MAP_EXECUTABLE,
    MAP_LOCKED,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_NONBLOCK,
    MAP_STACK,
    MAP_HUGETLB,
];
static CLONE_FLAGS: Names = names![
    CLONE_VM,
    CLONE_FS,
    CLONE_FILES,
    CLONE_SIGHAND,
    CLONE_PIDFD,
    CLONE_PTRACE,
    CLONE_VFORK,
    CLONE_PARENT,
    CLONE_THREAD,
    CLONE_NEWNS,
    CLONE_SYSVSEM,
    CLONE_SETTLS,
    CLONE_PARENT_SETTID,
    CLONE_CHILD_CLEARTID,
    CLONE_DETACHED,
    CLONE_UNTRACED,
    CLONE_CHILD_SETTID,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
    CLONE_IO,
];
static MOUNT_FLAGS: Names = names![
    MS_RDONLY,
    MS_NOSUID,
    MS_NODEV,
    MS_NOEXEC,
    MS_SYNCHRONOUS,
    MS_REMOUNT,
    MS_MANDLOCK,
    MS_DIRSYNC,
    MS_NOATIME,
    MS_NODIRATIME,
    MS_BIND,
    MS_MOVE,
    MS_REC,
    MS_SILENT,
    MS_UNBINDABLE,
    MS_PRIVATE,
    MS_SLAVE,
    MS_SHARED,
    MS_RELATIME,
    MS_STRICTATIME,
    MS_LAZYTIME,
];
static SOCK_TYPES: Names = names![SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_RDM, SOCK_SEQPACKET];
static SOCK_TYPE_FLAGS: Names = names![SOCK_NONBLOCK, SOCK_CLOEXEC];
static ADDRESS_FAMILIES: Names = names![
    AF_UNSPEC,
    AF_UNIX,
    AF_INET,
    AF_AX25,
    AF_IPX,
    AF_APPLETALK,
    AF_NETROM,
    AF_BRIDGE,
    AF_X25,
    AF_INET6,
    AF_KEY,
    AF_NETLINK,
    AF_PACKET,
    AF_RDS,
    AF_CAN,
    AF_TIPC,
    AF_BLUETOOTH,
    AF_ALG,
    AF_VSOCK,
    AF_XDP,
];
static SIGNALS: Names = names![
    SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGKILL, SIGUSR1, SIGSEGV,
    SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGSTKFLT, SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN,
    SIGTTOU, SIGURG, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGWINCH, SIGIO, SIGPWR, SIGSYS,
];
static PTRACE_REQUESTS: Names = names![
    PTRACE_TRACEME,
    PTRACE_PEEKTEXT,
    PTRACE_PEEKDATA,
    PTRACE_PEEKUSER,
    PTRACE_POKETEXT,
    PTRACE_POKEDATA,
    PTRACE_POKEUSER,
    PTRACE_CONT,
    PTRACE_KILL,
    PTRACE_SINGLESTEP,
    // arm64 has only the regset requests.
    #[cfg(target_arch = "x86_64")]
    PTRACE_GETREGS,
    #[cfg(target_arch = "x86_64")]
    PTRACE_SETREGS,
    PTRACE_ATTACH,
    PTRACE_DETACH,
    PTRACE_SYSCALL,
    PTRACE_SETOPTIONS,
    PTRACE_SEIZE,
    PTRACE_INTERRUPT,
];
/// The fcntl commands traced (the table's filter keeps the others out).
static FCNTL_CMDS: Names = &[
    (libc::F_DUPFD as u64, "F_DUPFD"),
    (libc::F_DUPFD_CLOEXEC as u64, "F_DUPFD_CLOEXEC"),
];

static BPF_CMDS: Names = &[
    (0, "BPF_MAP_CREATE"),
    (1, "BPF_MAP_LOOKUP_ELEM"),
    (2, "BPF_MAP_UPDATE_ELEM"),
    (3, "BPF_MAP_DELETE_ELEM"),
    (4, "BPF_MAP_GET_NEXT_KEY"),
    (5, "BPF_PROG_LOAD"),
    (6, "BPF_OBJ_PIN"),
    (7, "BPF_OBJ_GET"),
    (8, "BPF_PROG_ATTACH"),
    (9, "BPF_PROG_DETACH"),
    (10, "BPF_PROG_TEST_RUN"),
    (28, "BPF_LINK_CREATE"),
    (17, "BPF_RAW_TRACEPOINT_OPEN"),
    (18, "BPF_BTF_LOAD"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_read_like_strace() {
        let v = decode_value(
            ArgKind::OpenFlags,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        );
        assert_eq!(v.to_string(), "O_RDONLY|O_CLOEXEC");
        let v = decode_value(
            ArgKind::OpenFlags,
            (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u64,
        );
        assert_eq!(v.to_string(), "O_WRONLY|O_CREAT|O_TRUNC");
        assert_eq!(decode_value(ArgKind::OpenFlags, 0).to_string(), "O_RDONLY");
        assert_eq!(
            decode_value(ArgKind::DirFd, libc::AT_FDCWD as u32 as u64).to_string(),
            "AT_FDCWD"
        );
    }

    #[test]
    fn unknown_bits_are_kept_in_hex() {
        assert_eq!(
            flags_text(libc::PROT_EXEC as u64 | 0x100, PROT_FLAGS),
            "PROT_EXEC|0x100"
        );
        assert_eq!(decode_value(ArgKind::Signal, 9).to_string(), "SIGKILL");
        assert_eq!(decode_value(ArgKind::Signal, 77).to_string(), "77");
    }

    #[test]
    fn sockaddrs_decode() {
        let mut b = vec![0u8; 16];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&8080u16.to_be_bytes());
        b[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(
            sockaddr(&b),
            Some(SockAddr::Inet {
                addr: Ipv4Addr::LOCALHOST,
                port: 8080
            })
        );
        let mut u = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        u.extend_from_slice(b"\0hidden");
        assert_eq!(
            sockaddr(&u),
            Some(SockAddr::Unix {
                path: "@hidden".into()
            })
        );
        assert_eq!(sockaddr(&[1]), None);
    }
}
