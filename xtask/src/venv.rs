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

    /// Builds the environment afresh (removing an old one), checks it with `pip check`, then
    /// writes the stamp. `before_stamp` runs in between (permissions, say).
    pub fn rebuild(&self, before_stamp: impl FnOnce() -> Result<()>) -> Result<()> {
        let requirements = self.read_requirements()?;
        system_python(self.label)?;
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing the old {}", self.dir.display()))?;
        }
        fs::create_dir_all(self.dir.parent().unwrap_or(Path::new("/")))
            .with_context(|| format!("creating the parent of {}", self.dir.display()))?;
        run(Command::new(SYSTEM_PYTHON)
            .arg("-m")
            .arg("venv")
            .arg(&self.dir))?;
        let pip = |args: &[&str]| {
            let mut cmd = Command::new(self.python());
            cmd.args(["-m", "pip", "--disable-pip-version-check", "--no-input"]);
            cmd.args(args);
            cmd
        };
        run(pip(&["install", "--quiet", "--no-deps", "--requirement"]).arg(&self.requirements))?;
        run(&mut pip(&["check"]))?;
        before_stamp()?;
        let stamp = self.dir.join(self.stamp);
        fs::write(&stamp, &requirements).with_context(|| format!("writing {}", stamp.display()))
    }

    fn read_requirements(&self) -> Result<Vec<u8>> {
        fs::read(&self.requirements)
            .with_context(|| format!("reading {}", self.requirements.display()))
    }
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
