//! `cargo xtask dist --packages`: the `monitor` .deb and .rpm, one package holding monitord,
//! monitorctl and monitor-sandbox.
//!
//! Made by cargo-deb and cargo-generate-rpm (from crates.io, at pinned versions, installed the
//! first time packages are asked for) from the release binaries already built. The file list
//! is `[package.metadata.deb] assets` in monitor-daemon/Cargo.toml; cargo-generate-rpm is
//! handed the same list. What the list names under `target/release/monitor-package/` is
//! generated here first: the default configuration (as the tarball has it), the systemd unit
//! with the packages' paths, the manual pages (gzipped, as both distributions keep them) and
//! monitorctl's shell completions. Both packages are then listed (`dpkg-deb -c`, `rpm -qlp`)
//! and checked against what a node needs.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, root, run};

const CARGO_DEB_VERSION: &str = "3.8.0";
const CARGO_GENERATE_RPM_VERSION: &str = "0.21.1";

/// The crate whose Cargo.toml holds the packages' metadata.
const METADATA_CRATE: &str = "monitor-daemon";

/// Where the generated files are staged: under target/release/, which both tools resolve to
/// the build's own directory.
const STAGE: &str = "target/release/monitor-package";

/// Where the packages are written.
const OUT: &str = "target/dist/packages";

/// Files a node needs from the package, as both package formats must list them.
pub const EXPECTED: [&str; 17] = [
    "/usr/bin/monitord",
    "/usr/bin/monitorctl",
    "/usr/bin/monitor-sandbox",
    "/etc/monitor/monitord.toml",
    "/usr/lib/systemd/system/monitord.service",
    "/usr/share/man/man1/monitorctl.1.gz",
    "/usr/share/man/man1/monitorctl-scan.1.gz",
    "/usr/share/man/man1/monitorctl-watch-add.1.gz",
    "/usr/share/man/man8/monitord.8.gz",
    "/usr/share/bash-completion/completions/monitorctl",
    "/usr/share/zsh/vendor-completions/_monitorctl",
    "/usr/share/fish/vendor_completions.d/monitorctl.fish",
    "/usr/share/monitor/rules/default.yaml",
    "/usr/share/monitor/grafana-monitor.json",
    "/usr/share/monitor/kubernetes/monitord-daemonset.yaml",
    "/usr/share/doc/monitor/README.md",
    "/usr/share/doc/monitor/api.yaml",
];

/// The configuration file, kept across upgrades by both package managers.
const CONFFILE: &str = "/etc/monitor/monitord.toml";

/// Which packages to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formats {
    /// The .deb alone: what `cargo xtask test` installs (cargo-generate-rpm takes minutes to
    /// install on a fresh machine, and the .rpm is installed nowhere here).
    Deb,
    DebAndRpm,
}

/// Makes the packages from the release binaries in target/release, and checks them; returns
/// the .deb.
pub fn build(formats: Formats) -> Result<PathBuf> {
    tools(formats)?;
    let root = root();
    let bin_dir = root.join("target/release");
    stage(&bin_dir, &root.join(STAGE))?;
    let out = root.join(OUT);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let crate_dir = root.join(METADATA_CRATE);
    run(cargo()
        .args([
            "deb",
            "--no-build",
            "--quiet",
            "-p",
            METADATA_CRATE,
            "--output",
        ])
        .arg(&out))?;
    let deb = only_file(&out, "deb")?;
    let deb_files = check_deb(&deb)?;
    let mut rpm = None;
    if formats == Formats::DebAndRpm {
        let assets = deb_assets(&crate_dir.join("Cargo.toml"))?;
        let status = cargo()
            .args(["generate-rpm", "-p", METADATA_CRATE, "-o"])
            .arg(&out)
            .arg("--set-metadata")
            .arg(rpm_assets(&assets, &crate_dir))
            .current_dir(&root)
            .status()
            .context("running cargo generate-rpm")?;
        if !status.success() {
            bail!("cargo generate-rpm failed: {status}");
        }
        let path = only_file(&out, "rpm")?;
        check_rpm(&path, &deb_files)?;
        rpm = Some(path);
    }
    for path in std::iter::once(&deb).chain(&rpm) {
        println!(
            "dist: {} ({} KiB)",
            path.display(),
            fs::metadata(path)?.len() / 1024
        );
    }
    Ok(deb)
}

/// cargo-deb and cargo-generate-rpm at their pinned versions, unless installed already.
fn tools(formats: Formats) -> Result<()> {
    let mut tools = vec![("cargo-deb", "deb", CARGO_DEB_VERSION)];
    if formats == Formats::DebAndRpm {
        tools.push((
            "cargo-generate-rpm",
            "generate-rpm",
            CARGO_GENERATE_RPM_VERSION,
        ));
        // The .rpm is listed with the distribution's own tool (Debian's `rpm` reads it).
        crate::setup::debian_package("rpm", "/usr/bin/rpm")?;
    }
    for (tool, subcommand, version) in tools {
        let installed = cargo()
            .args([subcommand, "--version"])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version)
            });
        if installed {
            continue;
        }
        println!("dist: installing {tool} {version} (once; a few minutes)");
        run(cargo().args(["install", tool, "--version", version, "--locked"]))?;
    }
    Ok(())
}

/// Writes what the asset list names under [`STAGE`].
fn stage(bin_dir: &Path, stage: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage.join("completions"))?;
    fs::create_dir_all(root().join("target/dist"))?;
    fs::write(
        stage.join("monitord.toml"),
        crate::dist::default_config(crate::cross::Arch::host(), &bin_dir.join("monitord"))?,
    )?;
    let unit = fs::read_to_string(root().join("dist/monitord.service"))?;
    fs::write(stage.join("monitord.service"), packaged_unit(&unit)?)?;
    let man = stage.join("man");
    crate::dist::man_pages(crate::cross::Arch::host(), bin_dir, &man)?;
    for page in crate::dist::walk(&man)? {
        let gz = PathBuf::from(format!("{}.gz", page.display()));
        fs::write(&gz, gzip(&fs::read(&page)?)?)?;
        fs::remove_file(&page)?;
    }
    for (shell, file) in [
        ("bash", "monitorctl.bash"),
        ("zsh", "_monitorctl"),
        ("fish", "monitorctl.fish"),
    ] {
        let out = Command::new(bin_dir.join("monitorctl"))
            .args(["completions", shell])
            .output()
            .context("running monitorctl completions")?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("monitorctl completions {shell} failed: {}", out.status);
        }
        fs::write(stage.join("completions").join(file), out.stdout)?;
    }
    Ok(())
}

/// dist/monitord.service as the packages install it: the binaries in /usr/bin, not in
/// /usr/local/bin where the tarball's instructions put them.
fn packaged_unit(unit: &str) -> Result<String> {
    let packaged = unit.replace("/usr/local/bin/", "/usr/bin/");
    let exec = packaged
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("dist/monitord.service has no ExecStart")?;
    if !exec.starts_with("/usr/bin/monitord ") && exec != "/usr/bin/monitord" {
        bail!("dist/monitord.service: ExecStart={exec} is not the packaged /usr/bin/monitord");
    }
    Ok(packaged)
}

/// gzip as `gzip -n` does (no name, no time): the same bytes every build.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// One asset of `[package.metadata.deb] assets`: source, destination, mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Asset(String, String, String);

/// The asset list, from `cargo metadata` (the manifest as cargo reads it).
fn deb_assets(manifest: &Path) -> Result<Vec<Asset>> {
    let out = cargo()
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let package = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == METADATA_CRATE))
        .context("cargo metadata does not list the metadata crate")?;
    serde_json::from_value(package["metadata"]["deb"]["assets"].clone())
        .context("[package.metadata.deb] assets: not a list of [source, destination, mode]")
}

/// The same assets in cargo-generate-rpm's terms, as TOML for `--set-metadata`: sources
/// relative to `crate_dir` as cargo-deb reads them made absolute (target/release/ stays: both
/// tools resolve it to the build's directory), destinations absolute, and the configuration
/// file marked `noreplace` (an edited one is kept).
fn rpm_assets(assets: &[Asset], crate_dir: &Path) -> String {
    let mut toml = String::from("assets = [\n");
    for Asset(source, dest, mode) in assets {
        let source = match source.starts_with("target/release/") {
            true => source.clone(),
            false => crate_dir.join(source).display().to_string(),
        };
        let dest = format!("/{dest}");
        let config = if dest == CONFFILE {
            ", config = \"noreplace\""
        } else {
            ""
        };
        // Destinations ending in / take the source's file name, in both tools.
        toml.push_str(&format!(
            "  {{ source = {source:?}, dest = {dest:?}, mode = {mode:?}{config} }},\n"
        ));
    }
    toml.push(']');
    toml
}

fn only_file(dir: &Path, ext: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one .{ext} in {}, found {found:?}", dir.display()),
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The files of a `dpkg-deb -c` listing (directories left out), as absolute paths.
fn deb_files(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('l'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// Fails unless `files` holds every [`EXPECTED`] file.
fn expect_files(format: &str, files: &BTreeSet<String>) -> Result<()> {
    let missing: Vec<&str> = EXPECTED
        .iter()
        .copied()
        .filter(|f| !files.contains(*f))
        .collect();
    ensure!(
        missing.is_empty(),
        "the .{format} lacks {missing:?}; it holds {files:?}"
    );
    Ok(())
}

/// What the .deb must hold and say; returns its files.
fn check_deb(deb: &Path) -> Result<BTreeSet<String>> {
    let files = deb_files(&output(Command::new("dpkg-deb").arg("-c").arg(deb))?);
    expect_files("deb", &files)?;
    let field = |name: &str| output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    let depends = field("Depends")?;
    ensure!(
        depends.contains("bubblewrap"),
        "the .deb does not depend on bubblewrap: Depends: {depends}"
    );
    ensure!(
        field("Recommends")?.contains("python3"),
        "the .deb does not recommend python3"
    );
    let conffiles = output(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"))?;
    ensure!(
        conffiles.lines().map(str::trim).eq([CONFFILE]),
        "the .deb's conffiles are {conffiles:?}, not {CONFFILE}"
    );
    println!(
        "dist: the .deb holds {} files; conffile {CONFFILE}; Depends: {}",
        files.len(),
        depends.trim()
    );
    Ok(files)
}

/// What the .rpm must hold and say: the .deb's files (but Debian's copyright file).
fn check_rpm(rpm: &Path, deb_files: &BTreeSet<String>) -> Result<()> {
    let files: BTreeSet<String> = output(Command::new("rpm").arg("-qlp").arg(rpm))?
        .lines()
        .map(str::to_owned)
        .collect();
    expect_files("rpm", &files)?;
    let deb_only: Vec<_> = deb_files
        .difference(&files)
        .filter(|f| *f != "/usr/share/doc/monitor/copyright")
        .collect();
    let rpm_only: Vec<_> = files.difference(deb_files).collect();
    ensure!(
        deb_only.is_empty() && rpm_only.is_empty(),
        "the packages differ: only in the .deb {deb_only:?}, only in the .rpm {rpm_only:?}"
    );
    let requires = output(Command::new("rpm").arg("-qpR").arg(rpm))?;
    ensure!(
        requires.lines().any(|l| l.trim() == "bubblewrap"),
        "the .rpm does not require bubblewrap: {requires}"
    );
    let config = output(Command::new("rpm").arg("-qpc").arg(rpm))?;
    ensure!(
        config.lines().map(str::trim).eq([CONFFILE]),
        "the .rpm's configuration files are {config:?}, not {CONFFILE}"
    );
    println!("dist: the .rpm holds the .deb's files; configuration {CONFFILE} (noreplace)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_starts_the_packaged_monitord() {
        let unit = fs::read_to_string(root().join("dist/monitord.service")).unwrap();
        let packaged = packaged_unit(&unit).unwrap();
        assert!(packaged.contains("\nExecStart=/usr/bin/monitord "));
        assert!(!packaged.contains("/usr/local/"));
        assert!(packaged_unit("[Service]\nExecStart=/opt/monitord\n").is_err());
        assert!(packaged_unit("[Service]\n").is_err());
    }

    #[test]
    fn the_rpm_gets_the_debs_assets_with_its_conffile_kept() {
        let assets = deb_assets(&root().join(METADATA_CRATE).join("Cargo.toml")).unwrap();
        assert!(assets.iter().any(|a| a.1 == "etc/monitor/monitord.toml"));
        let toml = rpm_assets(&assets, Path::new("/w/crate"));
        assert_eq!(toml.matches("source = ").count(), assets.len());
        assert_eq!(toml.matches("config = \"noreplace\"").count(), 1);
        assert!(toml.contains(
            "dest = \"/etc/monitor/monitord.toml\", mode = \"644\", config = \"noreplace\""
        ));
        assert!(toml.contains(
            "{ source = \"target/release/monitord\", dest = \"/usr/bin/\", mode = \"755\" }"
        ));
        assert!(toml.contains("source = \"/w/crate/../README.md\""));
    }

    #[test]
    fn a_deb_listing_gives_its_files() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-12-04 08:00 ./usr/bin/
-rwxr-xr-x 0/0         1464488 2026-12-04 08:00 ./usr/bin/monitord
lrwxrwxrwx 0/0               0 2026-12-04 08:00 ./usr/bin/x -> monitord
-rw-r--r-- 0/0             100 2026-12-04 08:00 ./etc/monitor/monitord.toml
";
        assert_eq!(
            deb_files(listing).into_iter().collect::<Vec<_>>(),
            [
                "/etc/monitor/monitord.toml",
                "/usr/bin/monitord",
                "/usr/bin/x"
            ]
        );
    }
}
