//! What a release binary asks of the machine it runs on, read from its ELF file: its
//! architecture and the glibc symbol versions it needs (`.gnu.version_r`). A binary linked
//! against a newer glibc than [`crate::cross::GLIBC`] fails to start on older distributions
//! ("version `GLIBC_2.34' not found"): the release check refuses it.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use object::{Endianness, elf::FileHeader64, read::elf::FileHeader as _};

/// A glibc symbol version, `GLIBC_2.28` as (2, 28, 0).
pub type GlibcVersion = (u32, u32, u32);

/// What one binary needs: its ELF machine and every `GLIBC_*` version it references
/// (`GLIBC_PRIVATE` too, which no other glibc build promises).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub machine: u16,
    pub glibc: Vec<GlibcVersion>,
    pub private: bool,
}

impl Needs {
    pub fn newest_glibc(&self) -> Option<GlibcVersion> {
        self.glibc.iter().copied().max()
    }
}

/// `GLIBC_2.28` → (2, 28, 0); other version names → None.
pub fn parse_glibc(name: &str) -> Option<GlibcVersion> {
    let mut parts = name.strip_prefix("GLIBC_")?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    parts.next().is_none().then_some((major, minor, patch))
}

/// Reads a 64-bit ELF file's machine and version needs.
pub fn read(data: &[u8]) -> Result<Needs> {
    let header = FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    let mut needs = Needs {
        machine: header.e_machine(endian),
        ..Needs::default()
    };
    let Some((mut files, link)) = sections.gnu_verneed(endian, data)? else {
        return Ok(needs);
    };
    let strings = sections.strings(endian, data, link)?;
    while let Some((_file, mut versions)) = files.next()? {
        while let Some(version) = versions.next()? {
            let name = String::from_utf8_lossy(version.name(endian, strings)?);
            if name == "GLIBC_PRIVATE" {
                needs.private = true;
            } else if let Some(v) = parse_glibc(&name) {
                needs.glibc.push(v);
            }
        }
    }
    needs.glibc.sort();
    needs.glibc.dedup();
    Ok(needs)
}

/// Fails unless the binary at `path` is for `machine` and needs no glibc newer than `max`.
pub fn check(path: &Path, machine: u16, max: (u32, u32)) -> Result<Needs> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let needs = read(&data).with_context(|| format!("reading {}", path.display()))?;
    if needs.machine != machine {
        bail!(
            "{} is for ELF machine {}, not {machine}",
            path.display(),
            needs.machine
        );
    }
    if needs.private {
        bail!("{} needs GLIBC_PRIVATE symbols", path.display());
    }
    let too_new: Vec<String> = needs
        .glibc
        .iter()
        .filter(|v| (v.0, v.1) > max)
        .map(|(a, b, c)| {
            format!(
                "GLIBC_{a}.{b}{}",
                if *c > 0 {
                    format!(".{c}")
                } else {
                    String::new()
                }
            )
        })
        .collect();
    if !too_new.is_empty() {
        bail!(
            "{} needs {} (newer than glibc {}.{}): it would not start on older distributions",
            path.display(),
            too_new.join(", "),
            max.0,
            max.1
        );
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_version_names() {
        assert_eq!(parse_glibc("GLIBC_2.28"), Some((2, 28, 0)));
        assert_eq!(parse_glibc("GLIBC_2.2.5"), Some((2, 2, 5)));
        assert_eq!(parse_glibc("GLIBC_PRIVATE"), None);
        assert_eq!(parse_glibc("GCC_3.0"), None);
        assert_eq!(parse_glibc("GLIBC_2.28.1.1"), None);
        assert!((2, 34) > (2, 28) && (2, 3) < (2, 28), "compared as numbers");
    }

    /// xtask itself is linked against this machine's glibc (Debian 12: 2.36), so it needs
    /// versions above 2.28 (`__libc_start_main@GLIBC_2.34`): the check must refuse it.
    #[test]
    fn a_binary_linked_against_this_glibc_is_refused() {
        let me = std::env::current_exe().unwrap();
        let needs = read(&std::fs::read(&me).unwrap()).unwrap();
        assert!(needs.newest_glibc() > Some((2, 28, 0)), "{needs:?}");
        let err = check(&me, needs.machine, (2, 28)).unwrap_err().to_string();
        assert!(err.contains("newer than glibc 2.28"), "{err}");
        check(&me, needs.machine, (99, 0)).unwrap();
        assert!(
            check(&me, needs.machine + 1, (99, 0)).is_err(),
            "wrong machine"
        );
    }
}
