//! Paths as the kernel resolved them. A syscall's path argument is only what the caller wrote:
//! relative to a directory fd or to a working directory reached with `fchdir`, through
//! `/proc/self/fd/N` or `/proc/self/cwd`, through a symlink or another name the job gave the
//! file. Rules judge what was reached, so the tracer keeps, per process, the descriptor table
//! and the working directory ([`crate::process::Process`]) and, per job, the names made
//! ([`Names`]) and the files known by identity (honeytokens, by device and inode).
//!
//! Everything here is lexical and built from the trace alone: what the job did is known from
//! its own syscalls, never by looking at the file system later (which it could change in
//! between). What it cannot know (a descriptor received over a socket, a symlink that existed
//! before the job) the file's identity, read by the kernel at the open, still covers for the
//! files known by identity.

use foldhash::HashMap;

use crate::decode::FileId;

/// Symlinks are followed at most this often in one path (the kernel's limit is 40).
const MAX_HOPS: usize = 40;
/// Names a job may make before new ones are ignored (and counted): a job renaming files in a
/// loop must not grow the tracer without bound.
const MAX_NAMES: usize = 16_384;

/// What a name the job made stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// A symlink: its content, made absolute against the link's directory.
    Symlink(String),
    /// Another name of a file that was at this path (`rename`, `link`).
    Moved(String),
}

/// The names a job gave files (symlinks, renames, links), and the files it is to be told about
/// by identity.
#[derive(Debug, Default)]
pub struct Names {
    names: HashMap<String, Name>,
    known: HashMap<FileId, String>,
    /// Names not kept because [`MAX_NAMES`] were.
    pub ignored: u64,
}

impl Names {
    /// Files to recognise by identity whatever path reaches them, by the path rules know them
    /// by (a honeytoken: `/home/user/.ssh/id_rsa`).
    pub fn know(&mut self, file: FileId, path: impl Into<String>) {
        self.known.insert(file, path.into());
    }

    /// What a file known by identity is called.
    pub fn known(&self, file: FileId) -> Option<&str> {
        self.known.get(&file).map(String::as_str)
    }

    /// `link` is now a symlink whose content is `target`.
    pub fn symlinked(&mut self, link: &str, target: &str) {
        let dir = parent(link);
        let target = absolute(target, Some(dir)).unwrap_or_else(|| target.to_owned());
        self.insert(link, Name::Symlink(target));
    }

    /// What was at `from` is now (also) at `to`.
    pub fn moved(&mut self, from: &str, to: &str) {
        if from != to {
            self.insert(to, Name::Moved(from.to_owned()));
        }
    }

    /// `path` no longer names what the job made it name.
    pub fn removed(&mut self, path: &str) {
        self.names.remove(path);
    }

    fn insert(&mut self, path: &str, name: Name) {
        if self.names.len() >= MAX_NAMES && !self.names.contains_key(path) {
            self.ignored += 1;
            return;
        }
        self.names.insert(path.to_owned(), name);
    }

    /// The other paths `path` (absolute, normalised) reaches through the names the job made:
    /// each symlink's target in turn, and the paths its files had before a rename or link.
    pub fn follow(&self, path: &str) -> Vec<String> {
        let mut chain: Vec<String> = Vec::new();
        // Most paths lead through no name the job made: nothing to copy for them.
        if self.longest_prefix(path).is_none() {
            return chain;
        }
        let mut current = path.to_owned();
        for _ in 0..MAX_HOPS {
            let Some((prefix, name)) = self.longest_prefix(&current) else {
                break;
            };
            let rest = &current[prefix.len()..];
            let (Name::Symlink(to) | Name::Moved(to)) = name;
            let next = normalize(&format!("{to}{rest}"));
            if next == current || next == path || chain.contains(&next) {
                break;
            }
            chain.push(next.clone());
            current = next;
        }
        chain
    }

    /// The longest leading run of `path`'s components that is a name the job made.
    fn longest_prefix<'p>(&self, path: &'p str) -> Option<(&'p str, &Name)> {
        if self.names.is_empty() {
            return None;
        }
        let mut end = path.len();
        loop {
            let prefix = &path[..end];
            if let Some(name) = self.names.get(prefix) {
                return Some((prefix, name));
            }
            end = prefix.rfind('/').filter(|&i| i > 0)?;
        }
    }
}

/// The directory a path is in (`/` for a top-level name).
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `path` made absolute against `base` (a directory) and normalised lexically; `None` when it
/// is relative and the base is unknown. An empty path is the base itself (`AT_EMPTY_PATH`).
pub fn absolute(path: &str, base: Option<&str>) -> Option<String> {
    if path.starts_with('/') {
        return Some(normalize(path));
    }
    let base = base?;
    if path.is_empty() {
        return Some(normalize(base));
    }
    let mut joined = String::with_capacity(base.len() + 1 + path.len());
    joined.push_str(base);
    joined.push('/');
    joined.push_str(path);
    Some(if is_clean(&joined) {
        joined
    } else {
        normalize(&joined)
    })
}

/// `.`, `..` and repeated slashes resolved lexically: `/tmp/./a/../../etc//passwd` is
/// `/etc/passwd`.
pub fn normalize(path: &str) -> String {
    // Most paths a process hands the kernel are normal already: copied as they are, without
    // splitting them into parts (this runs for every path of every traced syscall).
    if is_clean(path) {
        return path.to_owned();
    }
    by_components(path)
}

/// [`normalize`] the long way: component by component.
fn by_components(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Whether `path` is absolute and has no empty, `.` or `..` component to resolve (`/` itself
/// is clean).
pub fn is_clean(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    // This runs for every path of every traced syscall. A part is bad when it is empty (`//`,
    // a trailing `/`) or `.` or `..`, so only what follows each slash needs a look: the
    // slashes are found eight bytes at a time (the last eight overlapping those before, or a
    // short path padded), and most paths have a few.
    let clean_after_slashes = |word: [u8; 8], offset: usize, skip: usize| {
        let mut slashes = bytes_equal(word, b'/') & (u64::MAX << (8 * skip));
        while slashes != 0 {
            if bad_part_after(bytes, offset + (slashes.trailing_zeros() / 8) as usize) {
                return false;
            }
            slashes &= slashes - 1;
        }
        true
    };
    let len = bytes.len();
    if len < 8 {
        let mut word = [0; 8];
        word[..len].copy_from_slice(bytes);
        // `/` alone is the root, whose one part is empty.
        return len == 1 || clean_after_slashes(word, 0, 0);
    }
    let word_at = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().expect("8 bytes") };
    let mut at = 0;
    while at + 8 <= len {
        if !clean_after_slashes(word_at(at), at, 0) {
            return false;
        }
        at += 8;
    }
    at == len || clean_after_slashes(word_at(len - 8), len - 8, at - (len - 8))
}

/// The high bit of each byte of `word` (eight bytes of text, in order) that is `byte`, exactly
/// (no carry from one byte to the next): what finds a separator eight bytes at a time.
pub fn bytes_equal(word: [u8; 8], byte: u8) -> u64 {
    const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
    let zeroed = u64::from_le_bytes(word) ^ u64::from_le_bytes([byte; 8]);
    !(((zeroed & LOW7) + LOW7) | zeroed | LOW7)
}

/// Whether the part that begins after the slash at `slash` is empty, `.` or `..`.
fn bad_part_after(bytes: &[u8], slash: usize) -> bool {
    let ends = |i: usize| bytes.get(i).is_none_or(|&b| b == b'/');
    ends(slash + 1)
        || (bytes[slash + 1] == b'.'
            && (ends(slash + 2) || (bytes[slash + 2] == b'.' && ends(slash + 3))))
}

/// Where `/proc/self/...`-style magic links lead, for process `pid`: `fd` maps a descriptor to
/// the path it was opened with, `cwd` is the working directory. `None` for a path that is no
/// such link (or leads where the tracer does not know).
pub fn magic<B: AsRef<str>>(
    path: &str,
    fd: impl Fn(i32) -> Option<B>,
    cwd: Option<&str>,
) -> Option<String> {
    let rest = ["/proc/self/", "/proc/thread-self/", "/dev/fd/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix).map(|rest| (*prefix, rest)));
    let (prefix, rest) = rest?;
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let join = |base: &str| normalize(&format!("{base}/{tail}"));
    if prefix == "/dev/fd/" {
        return head.parse().ok().and_then(fd).map(|p| join(p.as_ref()));
    }
    match head {
        "cwd" => cwd.map(join),
        "root" => Some(join("/")),
        "fd" => {
            let (n, tail) = tail.split_once('/').unwrap_or((tail, ""));
            let base = n.parse().ok().and_then(fd)?;
            Some(normalize(&format!("{}/{tail}", base.as_ref())))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_their_base() {
        assert_eq!(
            absolute("../../etc/shadow", Some("/home/u/x")).as_deref(),
            Some("/home/etc/shadow")
        );
        assert_eq!(absolute("id_rsa", None), None);
        assert_eq!(
            absolute("", Some("/home/u/.ssh")).as_deref(),
            Some("/home/u/.ssh")
        );
        assert_eq!(normalize("/tmp/./a/../../etc//passwd"), "/etc/passwd");
    }

    /// Every path of up to 7 characters over `a`, `/` and `.`: the fast path for normal paths
    /// gives what splitting into components gives.
    #[test]
    fn normal_paths_are_copied_as_splitting_would_give_them() {
        let paths = every_text(&['a', '/', '.'], 7);
        assert_eq!(paths.len(), 3280);
        for path in &paths {
            assert_eq!(normalize(path), by_components(path), "{path:?}");
            // Clean: what splitting gives back unchanged (the fast path's test).
            assert_eq!(
                is_clean(path),
                path.starts_with('/') && by_components(path) == *path,
                "{path:?}"
            );
            let joined = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/b/c/{path}")
            };
            assert_eq!(
                absolute(path, Some("/b/c")).unwrap(),
                by_components(&joined),
                "{path:?}"
            );
        }
    }

    /// Every text of up to `max` characters of `alphabet`, the empty one included.
    fn every_text(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = all.clone();
        for _ in 0..max {
            last = (last.iter())
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    /// The byte-by-byte check `is_clean` was: each part between slashes neither empty nor
    /// `.` or `..`.
    fn clean_by_parts(path: &str) -> bool {
        path.strip_prefix('/').is_some_and(|rest| {
            rest.is_empty() || rest.split('/').all(|p| !matches!(p, "" | "." | ".."))
        })
    }

    /// Paths long enough for the eight-byte steps, with their slashes and dots at every
    /// offset of a step: the fast check says what the parts say.
    #[test]
    fn clean_paths_are_found_eight_bytes_at_a_time_as_part_by_part() {
        let paths = every_text(&['/', '.', 'x'], 10);
        for prefix in ["", "/a", "/abc", "/abcdefg", "/.tmpXYZ/"] {
            for path in &paths {
                let path = format!("{prefix}{path}");
                assert_eq!(is_clean(&path), clean_by_parts(&path), "{path:?}");
            }
        }
        assert!(is_clean("/tmp/.tmpA1b2C3/opened") && is_clean("/a/.../b"));
        assert!(!is_clean("/tmp/.tmpA1b2C3/./opened") && !is_clean("/tmp/.tmpA1b2C3/opened/"));
    }

    #[test]
    fn symlinks_and_renames_lead_to_what_they_name() {
        let mut names = Names::default();
        names.symlinked("/tmp/notes.txt", "/home/user/.netrc");
        assert_eq!(names.follow("/tmp/notes.txt"), ["/home/user/.netrc"]);
        // A symlinked directory, with a relative target.
        names.symlinked("/tmp/conf", "../etc");
        assert_eq!(names.follow("/tmp/conf/shadow"), ["/etc/shadow"]);
        // Chains, and a rename of a directory.
        names.symlinked("/work/a", "/tmp/conf");
        assert_eq!(
            names.follow("/work/a/shadow"),
            ["/tmp/conf/shadow", "/etc/shadow"]
        );
        names.moved("/home/user/.ssh", "/home/user/keys");
        assert_eq!(
            names.follow("/home/user/keys/id_rsa"),
            ["/home/user/.ssh/id_rsa"]
        );
        // Loops end.
        names.symlinked("/tmp/x", "/tmp/y");
        names.symlinked("/tmp/y", "/tmp/x");
        assert_eq!(names.follow("/tmp/x"), ["/tmp/y"]);
        // Unrelated paths, and a prefix that is not a whole component.
        assert!(names.follow("/tmp/notes.txt.bak").is_empty());
        assert!(names.follow("/usr/lib").is_empty());
        names.removed("/tmp/notes.txt");
        assert!(names.follow("/tmp/notes.txt").is_empty());
    }

    #[test]
    fn proc_self_links_lead_to_descriptors_and_the_working_directory() {
        let fd = |n: i32| (n == 5).then(|| "/home/user/.ssh".to_string());
        assert_eq!(
            magic("/proc/self/fd/5/id_rsa", fd, None).as_deref(),
            Some("/home/user/.ssh/id_rsa")
        );
        assert_eq!(
            magic("/dev/fd/5/id_rsa", fd, None).as_deref(),
            Some("/home/user/.ssh/id_rsa")
        );
        assert_eq!(
            magic("/proc/self/cwd/.aws/credentials", fd, Some("/home/user")).as_deref(),
            Some("/home/user/.aws/credentials")
        );
        assert_eq!(
            magic("/proc/thread-self/root/etc/shadow", fd, None).as_deref(),
            Some("/etc/shadow")
        );
        assert_eq!(magic("/proc/self/fd/6/x", fd, None), None);
        assert_eq!(magic("/proc/self/status", fd, None), None);
        assert_eq!(magic("/etc/passwd", fd, None), None);
    }
}
