//! `cargo xtask dist`: the release tarballs, `target/dist/monitor-<version>-<arch>-linux.tar.gz`
//! for x86_64 and aarch64, whose binaries run on glibc 2.28 and newer (see [`crate::cross`]).
//!
//! Everything sits under `monitor-<version>/` in the archive: `bin/` (monitord, monitorctl, monitor-sandbox),
//! `etc/monitor/monitord.toml` (the defaults, from `monitord --print-config`), `share/monitor/`
//! (the systemd unit, the default rules, the loader's requirements, the Grafana dashboard, the
//! Kubernetes manifests and Helm chart, the Dockerfile), `README.md`, `docs/`, and `SHA256SUMS` of every
//! other file in it. The archive is reproducible: entries in name order, owner root, mtime
//! `SOURCE_DATE_EPOCH` (0 without it). `target/dist/SHA256SUMS` holds the tarballs' own sums.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::{
    cross::{self, Arch},
    root,
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Which binaries a tarball is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binaries {
    /// `cargo xtask dist`'s build for an architecture, linked against glibc 2.28's symbols:
    /// checked to need no newer glibc.
    Release(Arch),
    /// This machine's `cargo build --release` (target/release), linked against its own glibc:
    /// what `cargo xtask test` packs and checks without a second build of the workspace.
    Host,
}

impl Binaries {
    pub fn arch(self) -> Arch {
        match self {
            Binaries::Release(arch) => arch,
            Binaries::Host => Arch::host(),
        }
    }

    fn dir(self) -> PathBuf {
        match self {
            Binaries::Release(arch) => arch.release_dir(),
            Binaries::Host => root().join("target/release"),
        }
    }

    /// The newest glibc they may need, where that is checked.
    fn max_glibc(self) -> Option<(u32, u32)> {
        matches!(self, Binaries::Release(_)).then_some(cross::GLIBC)
    }
}

/// What one file of the archive is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file of the workspace (relative to its root) or of the build.
    File(PathBuf),
    /// Bytes made here (the default configuration).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside `monitor-<version>/`.
    pub dest: String,
    pub source: Source,
    pub executable: bool,
}

fn file(dest: impl Into<String>, src: impl Into<PathBuf>) -> Entry {
    Entry {
        dest: dest.into(),
        source: Source::File(src.into()),
        executable: false,
    }
}

/// The release binaries, installed side by side: monitord and monitorctl start the sandbox
/// helper from the directory they are in.
pub const BINARIES: [&str; 3] = ["monitord", "monitorctl", "monitor-sandbox"];

/// Every file of the archive but SHA256SUMS, sorted by destination. `bin_dir` holds the
/// release binaries; `config` is the default configuration's text. Directories (docs/,
/// dist/kubernetes/) are walked, so a document added there ships without touching this list.
pub fn entries(root: &Path, bin_dir: &Path, config: Vec<u8>) -> Result<Vec<Entry>> {
    let mut list = Vec::new();
    for bin in BINARIES {
        list.push(Entry {
            executable: true,
            ..file(format!("bin/{bin}"), bin_dir.join(bin))
        });
    }
    list.push(Entry {
        dest: "etc/monitor/monitord.toml".into(),
        source: Source::Bytes(config),
        executable: false,
    });
    for (dest, src) in [
        ("share/monitor/monitord.service", "dist/monitord.service"),
        (
            "share/monitor/rules/default.yaml",
            "monitor-rules/src/default.yaml",
        ),
        (
            "share/monitor/loader/requirements.txt",
            "loader/requirements.txt",
        ),
        ("share/monitor/loader/pip_check.py", "loader/pip_check.py"),
        (
            "share/monitor/grafana-monitor.json",
            "dist/grafana-monitor.json",
        ),
        ("share/monitor/Dockerfile", "dist/Dockerfile"),
        ("README.md", "README.md"),
    ] {
        list.push(file(dest, root.join(src)));
    }
    for (dir, under) in [
        ("docs", "docs"),
        ("dist/kubernetes", "share/monitor/kubernetes"),
        ("dist/helm", "share/monitor/helm"),
    ] {
        for path in walk(&root.join(dir))? {
            let rel = path.strip_prefix(root.join(dir))?;
            list.push(file(format!("{under}/{}", rel.display()), path));
        }
    }
    for entry in &list {
        if let Source::File(path) = &entry.source
            && !path.is_file()
        {
            bail!("{} (for {}) is missing", path.display(), entry.dest);
        }
    }
    list.sort_by(|a, b| a.dest.cmp(&b.dest));
    if let Some(dup) = list.windows(2).find(|w| w[0].dest == w[1].dest) {
        bail!("{} is in the archive twice", dup[0].dest);
    }
    Ok(list)
}

/// The regular files under `dir`, recursively, in name order.
pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn contents(entry: &Entry) -> Result<Vec<u8>> {
    match &entry.source {
        Source::File(path) => fs::read(path).with_context(|| format!("reading {}", path.display())),
        Source::Bytes(bytes) => Ok(bytes.clone()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `sha256sum`'s format: `<hex>  <path>` a line, in the list's order.
pub fn sha256sums(files: &[(String, Vec<u8>)]) -> String {
    files
        .iter()
        .map(|(dest, bytes)| format!("{}  {dest}\n", sha256_hex(bytes)))
        .collect()
}

/// Writes the gzipped tarball of `files` (destination, bytes, executable) under `prefix/`.
pub fn write_tarball(out: &Path, prefix: &str, files: &[(String, Vec<u8>, bool)]) -> Result<()> {
    let mtime = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let tmp = out.with_extension("tmp");
    let gz = flate2::write::GzEncoder::new(
        fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        flate2::Compression::best(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut dirs = std::collections::BTreeSet::new();
    for (dest, _, _) in files {
        let mut dir = Path::new(dest.as_str());
        while let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(parent.to_owned());
            dir = parent;
        }
    }
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h
    };
    let mut top = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut top, format!("{prefix}/"), std::io::empty())?;
    for dir in dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(
            &mut h,
            format!("{prefix}/{}/", dir.display()),
            std::io::empty(),
        )?;
    }
    for (dest, bytes, executable) in files {
        let mode = if *executable { 0o755 } else { 0o644 };
        let mut h = header(tar::EntryType::Regular, mode, bytes.len() as u64);
        tar.append_data(&mut h, format!("{prefix}/{dest}"), bytes.as_slice())?;
    }
    let mut file = tar.into_inner()?.finish()?;
    file.flush()?;
    file.sync_all()?;
    fs::rename(&tmp, out)?;
    Ok(())
}

/// The default configuration: what `monitord --print-config` prints for an empty file (so a
/// configuration on this machine does not leak into the release).
pub(crate) fn default_config(arch: Arch, monitord: &Path) -> Result<Vec<u8>> {
    let empty = root().join(format!("target/dist/empty-{}.toml", arch.name()));
    fs::write(&empty, "")?;
    let out = arch
        .command(monitord)
        .args(["--print-config", "--config"])
        .arg(&empty)
        .output()
        .with_context(|| format!("running {}", monitord.display()))?;
    let _ = fs::remove_file(&empty);
    if !out.status.success() {
        bail!(
            "monitord --print-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut text = format!(
        "# monitord's configuration: every key with its default (`monitord --print-config`).\n\
         # Installed as /etc/monitor/monitord.toml; change what you need, delete the rest.\n\
         # monitor {VERSION}\n\n"
    )
    .into_bytes();
    text.extend_from_slice(&out.stdout);
    Ok(text)
}

/// Builds the release binaries of each of `arches`, writes their tarballs, checks them, and
/// checks the shipping files that cannot be run here ([`crate::dist_check`]).
pub fn run(arches: &[Arch]) -> Result<()> {
    build_and_verify(arches)?;
    crate::dist_check::run_checks(&Arch::host().release_dir().join("monitord"))
}

/// Builds, writes and verifies the tarball of each of `arches`; returns their paths.
pub fn build_and_verify(arches: &[Arch]) -> Result<Vec<PathBuf>> {
    cross::ensure_tools(arches)?;
    let mut tarballs = Vec::new();
    for &arch in arches {
        cross::build(arch)?;
        let binaries = Binaries::Release(arch);
        let tarball = write(binaries)?;
        verify(&tarball, binaries)?;
        tarballs.push(tarball);
    }
    Ok(tarballs)
}

/// Writes the tarball of `binaries`, already built; returns its path.
pub fn write(binaries: Binaries) -> Result<PathBuf> {
    let root = root();
    let out_dir = root.join("target/dist");
    fs::create_dir_all(&out_dir)?;
    let (arch, bin_dir) = (binaries.arch(), binaries.dir());
    let config = default_config(arch, &bin_dir.join("monitord"))?;
    let mut list = entries(&root, &bin_dir, config)?;
    list.extend(man_pages(
        arch,
        &bin_dir,
        &out_dir.join(format!("man-{}", arch.name())),
    )?);
    list.sort_by(|a, b| a.dest.cmp(&b.dest));
    let mut files = Vec::with_capacity(list.len() + 1);
    for entry in &list {
        files.push((entry.dest.clone(), contents(entry)?, entry.executable));
    }
    let sums = sha256sums(
        &files
            .iter()
            .map(|(d, b, _)| (d.clone(), b.clone()))
            .collect::<Vec<_>>(),
    );
    files.push(("SHA256SUMS".into(), sums.into_bytes(), false));
    let name = format!("monitor-{VERSION}-{}-linux", arch.name());
    let tarball = out_dir.join(format!("{name}.tar.gz"));
    write_tarball(&tarball, &prefix(), &files)?;
    let sum = sha256_hex(&fs::read(&tarball)?);
    record_sum(&out_dir.join("SHA256SUMS"), &format!("{name}.tar.gz"), &sum)?;
    println!(
        "dist: {} ({} files, {} KiB)\n      sha256 {sum} (target/dist/SHA256SUMS)",
        tarball.display(),
        files.len(),
        fs::metadata(&tarball)?.len() / 1024
    );
    Ok(tarball)
}

/// Puts `file`'s line into the `sha256sum` list at `sums`, keeping the other tarballs' lines.
fn record_sum(sums: &Path, file: &str, sum: &str) -> Result<()> {
    let old = fs::read_to_string(sums).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.split_once("  ").is_some_and(|(_, f)| f != file))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{sum}  {file}"));
    lines.sort_by_key(|l| l.split_once("  ").map(|(_, f)| f.to_owned()));
    fs::write(sums, lines.join("\n") + "\n")?;
    Ok(())
}

/// The manual pages, made by the binaries themselves: monitorctl's and each of its
/// subcommands' (section 1), monitord's (section 8), under `share/man/`.
pub(crate) fn man_pages(arch: Arch, bin_dir: &Path, dir: &Path) -> Result<Vec<Entry>> {
    let _ = fs::remove_dir_all(dir);
    let (man1, man8) = (dir.join("man1"), dir.join("man8"));
    fs::create_dir_all(&man8)?;
    let made = arch
        .command(&bin_dir.join("monitorctl"))
        .args(["man", "--out-dir"])
        .arg(&man1)
        .status()
        .context("running monitorctl man")?;
    if !made.success() {
        bail!("monitorctl man --out-dir failed: {made}");
    }
    let page = arch
        .command(&bin_dir.join("monitord"))
        .arg("--man")
        .output()
        .context("running monitord --man")?;
    if !page.status.success() || page.stdout.is_empty() {
        bail!("monitord --man failed: {}", page.status);
    }
    fs::write(man8.join("monitord.8"), page.stdout)?;
    let mut pages = Vec::new();
    for path in walk(dir)? {
        let rel = path.strip_prefix(dir)?.display().to_string();
        pages.push(file(format!("share/man/{rel}"), path));
    }
    Ok(pages)
}

/// The directory everything sits under in the archive.
fn prefix() -> String {
    format!("monitor-{VERSION}")
}

/// Unpacks the tarball as a user would and checks what is in it: SHA256SUMS covers every
/// other file and matches it, the binaries are for their architecture and (release builds)
/// need no glibc newer than [`cross::GLIBC`], they run (`--help`, under qemu-user for a
/// foreign architecture), and monitord accepts the configuration the archive installs.
pub fn verify(tarball: &Path, binaries: Binaries) -> Result<()> {
    let arch = binaries.arch();
    let dir = root().join(format!("target/dist/verify-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let gz = flate2::read::GzDecoder::new(fs::File::open(tarball)?);
    tar::Archive::new(gz)
        .unpack(&dir)
        .with_context(|| format!("unpacking {}", tarball.display()))?;
    let top = dir.join(prefix());
    let result = verify_unpacked(&top, binaries);
    let _ = fs::remove_dir_all(&dir);
    result?;
    let glibc = binaries
        .max_glibc()
        .map_or("this machine's glibc".to_owned(), |(a, b)| {
            format!("glibc <= {a}.{b}")
        });
    println!(
        "dist: verified {}: sums, binaries ({} ELF, {glibc}), configuration",
        tarball.display(),
        arch.name(),
    );
    Ok(())
}

fn verify_unpacked(top: &Path, binaries: Binaries) -> Result<()> {
    let arch = binaries.arch();
    let sums =
        fs::read_to_string(top.join("SHA256SUMS")).context("the archive has no SHA256SUMS")?;
    let mut listed = Vec::new();
    for line in sums.lines() {
        let (sum, path) = line
            .split_once("  ")
            .with_context(|| format!("SHA256SUMS: bad line {line:?}"))?;
        let actual = sha256_hex(
            &fs::read(top.join(path)).with_context(|| format!("{path} is listed but missing"))?,
        );
        if actual != sum {
            bail!("{path}: sha256 {actual}, SHA256SUMS says {sum}");
        }
        listed.push(path.to_owned());
    }
    let mut present: Vec<String> = walk(top)?
        .iter()
        .map(|p| p.strip_prefix(top).map(|r| r.display().to_string()))
        .collect::<Result<_, _>>()?;
    present.retain(|p| p != "SHA256SUMS");
    listed.sort();
    if present != listed {
        bail!("SHA256SUMS lists {listed:?}, the archive holds {present:?}");
    }
    for page in [
        "share/man/man1/monitorctl.1",
        "share/man/man1/monitorctl-scan.1",
        "share/man/man1/monitorctl-watch-add.1",
        "share/man/man8/monitord.8",
    ] {
        if !top.join(page).is_file() {
            bail!("{page} is missing from the archive");
        }
    }
    for bin in BINARIES {
        let path = top.join("bin").join(bin);
        // Without a glibc bound (this machine's build) only the architecture is checked.
        let needs = crate::elf_check::check(
            &path,
            arch.elf_machine(),
            binaries.max_glibc().unwrap_or((u32::MAX, 0)),
        )
        .with_context(|| format!("bin/{bin} of the {} archive", arch.name()))?;
        if let Some((major, minor, _)) = needs.newest_glibc() {
            println!(
                "dist:   bin/{bin} ({}): {} KiB, newest glibc symbol GLIBC_{major}.{minor}",
                arch.name(),
                fs::metadata(&path)?.len() / 1024
            );
        }
        let out = arch
            .command(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("running bin/{bin} from the archive"))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("bin/{bin} --help from the archive failed: {}", out.status);
        }
    }
    // What a user runs first, on the archive's own architecture (under qemu-user elsewhere).
    for (args, says) in [
        (&["--version"][..], format!("monitorctl {VERSION}")),
        (&["scan", "--help"], "Usage: monitorctl scan".to_owned()),
    ] {
        let out = arch
            .command(&top.join("bin/monitorctl"))
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains(&says) {
            bail!(
                "bin/monitorctl {} from the {} archive: {}: {text}",
                args.join(" "),
                arch.name(),
                out.status
            );
        }
    }
    let out = arch
        .command(&top.join("bin/monitord"))
        .arg("--print-config")
        .arg("--config")
        .arg(top.join("etc/monitor/monitord.toml"))
        .output()?;
    if !out.status.success() {
        bail!(
            "monitord refuses the archive's etc/monitor/monitord.toml: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_holds_what_a_node_needs_once_each() {
        let root = root();
        // The binaries are not built by unit tests: stand-ins.
        let bins = tempfile_dir();
        for bin in BINARIES {
            fs::write(bins.join(bin), b"\x7fELF").unwrap();
        }
        let list = entries(&root, &bins, b"state_dir = \"/x\"\n".to_vec()).unwrap();
        let dests: Vec<&str> = list.iter().map(|e| e.dest.as_str()).collect();
        for want in [
            "bin/monitord",
            "bin/monitorctl",
            "bin/monitor-sandbox",
            "etc/monitor/monitord.toml",
            "share/monitor/monitord.service",
            "share/monitor/rules/default.yaml",
            "share/monitor/loader/requirements.txt",
            "share/monitor/loader/pip_check.py",
            "share/monitor/grafana-monitor.json",
            "share/monitor/Dockerfile",
            "share/monitor/kubernetes/monitord-daemonset.yaml",
            "share/monitor/helm/monitor/Chart.yaml",
            "share/monitor/helm/monitor/templates/daemonset.yaml",
            "README.md",
            "docs/api.yaml",
        ] {
            assert!(dests.contains(&want), "{want} missing from {dests:?}");
        }
        let mut sorted = dests.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, dests, "sorted, no duplicates");
        let exec: Vec<&str> = list
            .iter()
            .filter(|e| e.executable)
            .map(|e| e.dest.as_str())
            .collect();
        assert_eq!(
            exec,
            ["bin/monitor-sandbox", "bin/monitorctl", "bin/monitord"]
        );
        assert!(entries(&root, &root.join("no-such-dir"), Vec::new()).is_err());
        fs::remove_dir_all(bins).unwrap();
    }

    #[test]
    fn each_tarball_keeps_its_own_line_in_the_sums() {
        let dir = tempfile_dir();
        let sums = dir.join("SHA256SUMS");
        record_sum(&sums, "m-x86_64-linux.tar.gz", "aa").unwrap();
        record_sum(&sums, "m-aarch64-linux.tar.gz", "bb").unwrap();
        record_sum(&sums, "m-x86_64-linux.tar.gz", "cc").unwrap();
        assert_eq!(
            fs::read_to_string(&sums).unwrap(),
            "bb  m-aarch64-linux.tar.gz\ncc  m-x86_64-linux.tar.gz\n"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tarball_and_sums_round_trip() {
        let dir = tempfile_dir();
        let files = vec![
            ("bin/a".to_string(), b"run".to_vec(), true),
            ("share/x/y.txt".to_string(), b"hello".to_vec(), false),
        ];
        let sums = sha256sums(&[("share/x/y.txt".into(), b"hello".to_vec())]);
        assert_eq!(
            sums,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  share/x/y.txt\n"
        );
        let out = dir.join("t.tar.gz");
        write_tarball(&out, "p-1", &files).unwrap();
        let gz = flate2::read::GzDecoder::new(fs::File::open(&out).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            seen.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("p-1/".to_string(), 0o755),
                ("p-1/bin/".to_string(), 0o755),
                ("p-1/share/".to_string(), 0o755),
                ("p-1/share/x/".to_string(), 0o755),
                ("p-1/bin/a".to_string(), 0o755),
                ("p-1/share/x/y.txt".to_string(), 0o644),
            ]
        );
        fs::remove_dir_all(dir).unwrap();
    }

    /// A fresh directory under target/ (xtask has no tempfile dependency).
    fn tempfile_dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = root().join(format!(
            "target/xtask-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
