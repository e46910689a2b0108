//! A decoy home directory full of honeytokens: credentials that look real, are random for each
//! job (so a payload cannot recognise them from an earlier run), and exist nowhere else. Any
//! read of them is a finding; any use of them elsewhere betrays the artifact.

use std::{
    ffi::OsString,
    fs,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::PermissionsExt as _,
    },
    path::{Path, PathBuf},
};

use monitor_engine::decode::FileId;

/// The home directory inside the sandbox.
pub const HOME: &str = "/home/user";

/// Files written into the decoy home, relative to it.
pub const HONEYTOKENS: &[&str] = &[
    ".ssh/id_rsa",
    ".ssh/id_ed25519",
    ".aws/credentials",
    ".netrc",
    ".git-credentials",
    ".cache/huggingface/token",
    ".docker/config.json",
    ".kube/config",
    ".pypirc",
];

/// Each honeytoken's identity (device and inode) and its path inside the sandbox, seen
/// through `root` (a sandboxed process's `/proc/PID/root`): the kernel reports the identity of
/// what an open reached, so a honeytoken read through a directory fd, a symlink or a new name
/// is still recognised. Those that cannot be seen are left out.
pub fn identities(root: &Path) -> Vec<(FileId, String)> {
    HONEYTOKENS
        .iter()
        .filter_map(|rel| {
            let inside = format!("{HOME}/{rel}");
            let seen = root.join(inside.trim_start_matches('/'));
            FileId::of(&seen).ok().map(|file| (file, inside))
        })
        .collect()
}

/// How bubblewrap builds the decoy home inside the sandbox: the arguments, and the fds of the
/// files it copies in (each to be inherited by bubblewrap alone, which reads it whole).
pub struct InSandbox {
    pub args: Vec<OsString>,
    pub fds: Vec<OwnedFd>,
}

/// The decoy home inside the sandbox, copied from `template` (what [`create`] wrote on the
/// host) onto a tmpfs of `size` bytes at [`HOME`]: directories and files with their modes,
/// owned by the job's user (bubblewrap writes them as that user). Not the host directory
/// itself: a payload could fill the host's disk through it.
pub fn in_sandbox(template: &Path, size: u64) -> io::Result<InSandbox> {
    let mut out = InSandbox {
        args: Vec::new(),
        fds: Vec::new(),
    };
    let mode = fs::metadata(template)?.permissions().mode() & 0o7777;
    out.args.extend(
        [
            "--perms".into(),
            format!("{mode:04o}"),
            "--size".into(),
            size.to_string(),
            "--tmpfs".into(),
            HOME.into(),
        ]
        .map(OsString::from),
    );
    copy_in(template, Path::new(HOME), &mut out)?;
    Ok(out)
}

/// Adds the entries of host directory `dir` at `inside`, in name order.
fn copy_in(dir: &Path, inside: &Path, out: &mut InSandbox) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let meta = entry.metadata()?;
        let dest = inside.join(entry.file_name());
        out.args.push("--perms".into());
        out.args
            .push(format!("{:04o}", meta.permissions().mode() & 0o7777).into());
        if meta.is_dir() {
            out.args.push("--dir".into());
            out.args.push(dest.clone().into());
            copy_in(&entry.path(), &dest, out)?;
        } else {
            let file = OwnedFd::from(fs::File::open(entry.path())?);
            out.args.push("--file".into());
            out.args.push(file.as_raw_fd().to_string().into());
            out.args.push(dest.into());
            out.fds.push(file);
        }
    }
    Ok(())
}

/// Writes the template of a decoy home under `dir` (root's: only [`in_sandbox`]'s copy is
/// the job's); returns its path.
pub fn create(dir: &Path) -> io::Result<PathBuf> {
    let home = dir.join("home");
    let mut rng = Random::new()?;
    let aws_key = format!("AKIA{}", rng.upper_alnum(16));
    let aws_secret = rng.base64ish(40);
    let hf = format!("hf_{}", rng.alnum(34));
    let gh = format!("ghp_{}", rng.alnum(36));
    let pypi = format!("pypi-{}", rng.base64ish(60));
    let docker = rng.base64ish(32);
    let kube = rng.base64ish(48);
    let files: [(&str, String); 9] = [
        (
            ".ssh/id_rsa",
            pem("OPENSSH PRIVATE KEY", &rng.base64ish(1600)),
        ),
        (
            ".ssh/id_ed25519",
            pem("OPENSSH PRIVATE KEY", &rng.base64ish(280)),
        ),
        (
            ".aws/credentials",
            format!(
                "[default]\naws_access_key_id = {aws_key}\naws_secret_access_key = {aws_secret}\n"
            ),
        ),
        (
            ".netrc",
            format!("machine api.github.com\n  login ml-bot\n  password {gh}\n"),
        ),
        (
            ".git-credentials",
            format!("https://ml-bot:{gh}@github.com\n"),
        ),
        (".cache/huggingface/token", hf),
        (
            ".docker/config.json",
            format!("{{\"auths\":{{\"registry.example.com\":{{\"auth\":\"{docker}\"}}}}}}\n"),
        ),
        (
            ".kube/config",
            format!(
                "apiVersion: v1\nkind: Config\nusers:\n- name: ml\n  user:\n    token: {kube}\n"
            ),
        ),
        (
            ".pypirc",
            format!("[pypi]\nusername = __token__\npassword = {pypi}\n"),
        ),
    ];
    debug_assert_eq!(files.len(), HONEYTOKENS.len());
    for (rel, content) in files {
        let path = home.join(rel);
        let parent = path.parent().expect("relative paths have a parent");
        fs::create_dir_all(parent)?;
        fs::write(&path, content)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    }
    // A home that looks used.
    fs::write(
        home.join(".bash_history"),
        "nvidia-smi\npip install -r requirements.txt\npython train.py\n",
    )?;
    fs::create_dir_all(home.join("models"))?;
    Ok(home)
}

fn pem(kind: &str, body: &str) -> String {
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {kind}-----\n{}\n-----END {kind}-----\n",
        lines.join("\n")
    )
}

/// Random characters from the kernel's generator.
struct Random(Vec<u8>, usize);

impl Random {
    fn new() -> io::Result<Self> {
        let mut bytes = vec![0u8; 8192];
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Random(bytes, 0))
    }

    fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| {
                let b = self.0[self.1 % self.0.len()];
                self.1 += 1;
                alphabet[b as usize % alphabet.len()] as char
            })
            .collect()
    }

    fn upper_alnum(&mut self, n: usize) -> String {
        self.pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", n)
    }

    fn alnum(&mut self, n: usize) -> String {
        self.pick(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            n,
        )
    }

    fn base64ish(&mut self, n: usize) -> String {
        self.pick(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            n,
        )
    }
}
