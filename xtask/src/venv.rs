//! A Python virtual environment on Debian's Python holding a full pinned freeze, installed
//! without resolving, and rebuilt only when its requirements file changes (a copy of it, the
//! stamp, is written last, so an interrupted install is redone).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::run;

pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Where an environment lives: `$var` when set (a test or a second checkout's own), else
/// `default`.
pub fn dir_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// One environment to keep installed.
pub struct PinnedVenv<'a> {
    pub dir: PathBuf,
    pub requirements: PathBuf,
    /// The stamp's file name inside `dir`.
    pub stamp: &'a str,
    /// Who says what is happening (`loader-env`, `compare`).
    pub label: &'a str,
}

impl PinnedVenv<'_> {
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin/python")
    }

    /// Whether the environment matches its requirements already.
    pub fn is_current(&self) -> Result<bool> {
        let wanted = self.read_requirements()?;
        Ok(self.python().is_file()
            && fs::read(self.dir.join(self.stamp)).is_ok_and(|s| s == wanted))
    }

    /// Builds the environment afresh beside the old one, checks it (`pip check`, but for the
    /// packages the requirements omit on purpose: loader/pip_check.py), writes the stamp, then
    /// puts it in the old one's place. Until that rename, the old environment serves scans
    /// as it did; an install that fails leaves it as it was. `before_stamp` runs before the
    /// stamp is written, on the new environment's directory (permissions, say).
    pub fn rebuild(&self, before_stamp: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let requirements = self.read_requirements()?;
        system_python(self.label)?;
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the parent of {}", self.dir.display()))?;
        let sibling = |suffix: &str| {
            let mut name = self.dir.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            parent.join(name)
        };
        let (new, old) = (sibling(".new"), sibling(".old"));
        for leftover in [&new, &old] {
            if leftover.exists() {
                fs::remove_dir_all(leftover)
                    .with_context(|| format!("removing {}", leftover.display()))?;
            }
        }
        run(Command::new(SYSTEM_PYTHON).arg("-m").arg("venv").arg(&new))?;
        let python = new.join("bin/python");
        run(Command::new(&python)
            .args(["-m", "pip", "--disable-pip-version-check", "--no-input"])
            .args(["install", "--quiet", "--no-deps", "--requirement"])
            .arg(&self.requirements))?;
        run(Command::new(&python)
            .arg(crate::root().join("loader/pip_check.py"))
            .arg(&self.requirements))?;
        retarget_scripts(&new, &self.dir)?;
        before_stamp(&new)?;
        let stamp = new.join(self.stamp);
        fs::write(&stamp, &requirements).with_context(|| format!("writing {}", stamp.display()))?;
        // A virtual environment run as `bin/python -m ...` does not care where it lives.
        if self.dir.exists() {
            fs::rename(&self.dir, &old)
                .with_context(|| format!("moving the old {} aside", self.dir.display()))?;
        }
        fs::rename(&new, &self.dir)
            .with_context(|| format!("moving {} into place", new.display()))?;
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }

    /// The environment's size on disk, in bytes (its files' blocks, as `du` counts them).
    pub fn size(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => {
                        walk(&e.path()) + e.metadata().map_or(0, |m| m.blocks() * 512)
                    }
                    Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.blocks() * 512),
                    _ => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }

    fn read_requirements(&self) -> Result<Vec<u8>> {
        fs::read(&self.requirements)
            .with_context(|| format!("reading {}", self.requirements.display()))
    }
}

/// Points the scripts pip wrote into `new/bin` (`pip`, `torchrun`, ...), whose `#!` line names
/// `new`'s interpreter, at `dir`'s, where the environment is about to be moved.
fn retarget_scripts(new: &Path, dir: &Path) -> Result<()> {
    let from = format!("#!{}/bin/", new.display());
    let to = format!("#!{}/bin/", dir.display());
    let bin = new.join("bin");
    for entry in fs::read_dir(&bin).with_context(|| format!("reading {}", bin.display()))? {
        let path = entry?.path();
        if path.is_symlink() || !path.is_file() {
            continue;
        }
        let Ok(text) = fs::read(&path) else { continue };
        if let Some(rest) = text.strip_prefix(from.as_bytes()) {
            let mut fixed = to.clone().into_bytes();
            fixed.extend_from_slice(rest);
            fs::write(&path, fixed).with_context(|| format!("rewriting {}", path.display()))?;
        }
    }
    Ok(())
}

/// Debian's Python with venv support, installed when missing.
fn system_python(label: &str) -> Result<()> {
    fn has_venv() -> bool {
        Command::new(SYSTEM_PYTHON)
            .args(["-c", "import ensurepip, venv"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
    if has_venv() {
        return Ok(());
    }
    println!("{label}: installing Debian's python3 and python3-venv");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get").args(["install", "-y", "-q", "python3", "python3-venv"]))?;
    if !has_venv() {
        bail!("{SYSTEM_PYTHON} still cannot create virtual environments");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_pointed_at_where_the_environment_moves() {
        let root = std::env::temp_dir().join(format!("monitor-venv-test-{}", std::process::id()));
        let new = root.join("env.new");
        let bin = new.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let script = bin.join("pip");
        fs::write(
            &script,
            format!("#!{}/bin/python3\nimport pip\n", new.display()),
        )
        .unwrap();
        fs::write(bin.join("other"), "#!/bin/sh\ntrue\n").unwrap();
        retarget_scripts(&new, &root.join("env")).unwrap();
        assert_eq!(
            fs::read_to_string(&script).unwrap(),
            format!("#!{}/bin/python3\nimport pip\n", root.join("env").display())
        );
        assert_eq!(
            fs::read_to_string(bin.join("other")).unwrap(),
            "#!/bin/sh\ntrue\n"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
