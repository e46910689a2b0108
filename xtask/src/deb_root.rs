//! The .deb as a new host gets it: installed with `dpkg -i` into a clean Debian root
//! (debootstrap, from the machine's Debian mirror), where the installed monitorctl scans a
//! malicious pickle and a clean one with Debian's python3.
//!
//! The root is made once and kept under target/debian-root/ (a second run takes seconds);
//! each run works on an overlay of it, so every install starts clean. The root is entered
//! with pivot_root in a mount namespace of its own, not chroot: the kernel lets no chrooted
//! process create a user namespace, and bubblewrap (the sandbox) needs one. /proc, /sys (with
//! tracefs, the BPF file system and cgroup2 under it) and /dev are the host's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::root;

/// The Debian release of the root.
const SUITE: &str = "bookworm";

const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Packages the root gets beside the .deb's Depends: the scan's Python (a pickle needs only
/// the standard library).
const EXTRA: [&str; 1] = ["python3"];

/// Enters the root and runs the command given after the four directories: the overlay's
/// lower, upper and work directories, and where to mount it.
const ENTER: &str = r#"set -eu
lower=$1 upper=$2 work=$3 root=$4
shift 4
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
for dir in proc sys dev; do mount --rbind "/$dir" "$root/$dir"; done
mkdir -p "$root/.host"
cd "$root"
pivot_root . .host
umount -l /.host
cd /
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
"#;

/// Installs `deb` into a clean root and scans from it; fails unless the malicious pickle is a
/// threat seen acting (exit code 1) and the clean one is clean (exit code 0), both with no
/// error.
pub fn install_and_scan(deb: &Path) -> Result<()> {
    crate::setup::debian_package("debootstrap", "/usr/sbin/debootstrap")?;
    let base = root().join("target/debian-root");
    let mut packages = depends(deb)?;
    packages.extend(EXTRA.map(String::from));
    packages.sort();
    packages.dedup();
    let lower = cached_root(&base, &packages)?;
    let run = Run::new(&base, lower)?;
    let result = run.install_and_scan(deb);
    run.remove();
    result
}

/// The package names of the .deb's Depends (the first of each alternative).
fn depends(deb: &Path) -> Result<Vec<String>> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg("Depends")
        .output()
        .context("running dpkg-deb")?;
    ensure!(out.status.success(), "dpkg-deb -f {} failed", deb.display());
    Ok(package_names(&String::from_utf8(out.stdout)?))
}

fn package_names(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|dep| dep.split('|').next())
        .filter_map(|dep| dep.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name).to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The main suite's mirror of an APT sources file, deb822 (`URIs:`) or one-line (`deb URL
/// SUITE ...`).
fn mirror_of(sources: &str) -> Option<String> {
    for stanza in sources.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
            && suites.split_whitespace().any(|s| s == SUITE)
            && field("Types:").is_none_or(|t| t.split_whitespace().any(|t| t == "deb"))
        {
            return uris.split_whitespace().next().map(String::from);
        }
    }
    sources.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("deb ")?.trim_start();
        // Options ([arch=amd64 signed-by=...]) come before the URL.
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let (url, suite) = (words.next()?, words.next()?);
        (suite == SUITE).then(|| url.to_owned())
    })
}

/// The machine's Debian mirror, from /etc/apt/sources.list and sources.list.d/.
fn mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .find_map(|text| mirror_of(&text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// A minimal Debian root holding `packages`, made once: remade when the list or the mirror
/// changes (its stamp says what it was made with).
fn cached_root(base: &Path, packages: &[String]) -> Result<PathBuf> {
    let dir = base.join(SUITE);
    let stamp_path = base.join(format!("{SUITE}.stamp"));
    let mirror = mirror();
    let stamp = format!("{SUITE} {mirror} {}\n", packages.join(","));
    if dir.is_dir() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(dir);
    }
    let tmp = base.join(format!("{SUITE}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(base)?;
    println!(
        "deb-root: debootstrap {SUITE} from {mirror} with {} (once; about two minutes)",
        packages.join(", ")
    );
    crate::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(packages.join(","))
            .arg(SUITE)
            .arg(&tmp)
            .arg(&mirror),
    )?;
    fs::rename(&tmp, &dir)?;
    fs::write(&stamp_path, stamp)?;
    Ok(dir)
}

/// One run's overlay on the cached root.
struct Run {
    lower: PathBuf,
    dir: PathBuf,
}

impl Run {
    fn new(base: &Path, lower: PathBuf) -> Result<Self> {
        // What an interrupted run left.
        for entry in fs::read_dir(base)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
            {
                let _ = fs::remove_dir_all(&path);
            }
        }
        let dir = base.join(format!("run-{}", std::process::id()));
        for sub in ["upper/tmp/monitor-test", "work", "root"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Run { lower, dir })
    }

    /// Runs `args` inside the root.
    fn exec(&self, args: &[&str]) -> Result<Output> {
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                ENTER,
                "enter",
            ])
            .arg(&self.lower)
            .arg(self.dir.join("upper"))
            .arg(self.dir.join("work"))
            .arg(self.dir.join("root"))
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in the Debian root"))
    }

    fn exec_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        if !out.status.success() {
            bail!(
                "{args:?} in the Debian root failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn install_and_scan(&self, deb: &Path) -> Result<()> {
        let inside = self.dir.join("upper/tmp/monitor-test");
        fs::copy(deb, inside.join("monitor.deb"))?;
        fs::copy(
            root().join("examples/malicious.pkl"),
            inside.join("malicious.pkl"),
        )?;
        // dpkg -i installs nothing else: the root holds the Depends or this fails.
        self.exec_ok(&["dpkg", "-i", "/tmp/monitor-test/monitor.deb"])?;
        self.exec_ok(&["getent", "group", "monitor"])
            .context("the package's postinst made no group monitor")?;
        self.exec_ok(&[
            "python3",
            "-c",
            "import pickle; pickle.dump({'weights': [0.5, 1.5]}, \
             open('/tmp/monitor-test/clean.pkl', 'wb'))",
        ])?;
        for (file, code, verdict) in [("malicious.pkl", 1, "malicious"), ("clean.pkl", 0, "clean")]
        {
            let path = format!("/tmp/monitor-test/{file}");
            let out = self.exec(&[
                "/usr/bin/monitorctl",
                "scan",
                "--local",
                "--format",
                "json",
                "--python",
                "/usr/bin/python3",
                &path,
            ])?;
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "the installed monitorctl's report on {file} is not JSON ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            judge(file, out.status.code(), &report, code, verdict)?;
            println!(
                "deb-root: the installed monitorctl scanned {file}: {verdict}, exit code {code}"
            );
        }
        Ok(())
    }

    fn remove(self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Checks a scan's exit code and report: the verdict, no error, and for a threat the
/// kernel's sight of the payload's program (not only the static reading of the bytes).
fn judge(
    file: &str,
    exit: Option<i32>,
    report: &serde_json::Value,
    code: i32,
    verdict: &str,
) -> Result<()> {
    ensure!(
        exit == Some(code) && report["verdict"] == verdict,
        "{file}: exit code {exit:?}, verdict {}; expected {code} and {verdict}",
        report["verdict"]
    );
    let errors = report["errors"].as_array().map_or(0, Vec::len);
    ensure!(
        errors == 0,
        "{file}: the scan had errors: {}",
        report["errors"]
    );
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    let seen_exec = findings
        .iter()
        .any(|f| f["source"] == "kernel" && f["rule"] == "exec.program");
    match code {
        1 => ensure!(
            seen_exec,
            "{file}: no program run by the payload was seen: {findings:?}"
        ),
        _ => ensure!(
            findings.is_empty(),
            "{file}: findings on a clean pickle: {findings:?}"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_become_package_names() {
        assert_eq!(
            package_names("bubblewrap, libc6 (>= 2.34), python3:any | python3.11\n"),
            ["bubblewrap", "libc6", "python3"]
        );
        assert!(package_names("").is_empty());
    }

    #[test]
    fn the_mirror_is_read_from_either_sources_format() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n\
                      Suites: bookworm-security\n";
        assert_eq!(
            mirror_of(deb822).as_deref(),
            Some("http://mirror.example/debian")
        );
        let security_first = "Types: deb\nURIs: http://s.example/\nSuites: bookworm-security\n\n\
                              Types: deb-src\nURIs: http://src.example/\nSuites: bookworm\n\n\
                              Types: deb\nURIs: http://m.example/\nSuites: bookworm\n";
        assert_eq!(
            mirror_of(security_first).as_deref(),
            Some("http://m.example/")
        );
        let one_line = "# deb http://old.example/ bookworm main\n\
                        deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_of(one_line).as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_of("deb http://m.example/debian bookworm main\n").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(mirror_of("deb http://m.example/debian trixie main\n"), None);
    }

    #[test]
    fn a_threat_needs_its_program_seen_and_a_clean_scan_no_finding() {
        let exec = serde_json::json!({"source": "kernel", "rule": "exec.program"});
        let static_only = serde_json::json!({"source": "static", "rule": "static.exec"});
        let report = |verdict: &str, findings: Vec<serde_json::Value>, errors: Vec<&str>| serde_json::json!({"verdict": verdict, "findings": findings, "errors": errors});
        // (what the installed monitorctl exited with and reported, what the test wanted,
        // whether that passes)
        let cases = [
            (
                Some(1),
                report("malicious", vec![exec.clone()], vec![]),
                1,
                "malicious",
                true,
            ),
            // Only the bytes' reading: the sandbox or the probes did not work.
            (
                Some(1),
                report("malicious", vec![static_only], vec![]),
                1,
                "malicious",
                false,
            ),
            (
                Some(1),
                report("malicious", vec![exec.clone()], vec!["bwrap"]),
                1,
                "malicious",
                false,
            ),
            (
                Some(2),
                report("malicious", vec![exec.clone()], vec![]),
                1,
                "malicious",
                false,
            ),
            (Some(0), report("clean", vec![], vec![]), 0, "clean", true),
            (
                Some(0),
                report("clean", vec![exec], vec![]),
                0,
                "clean",
                false,
            ),
        ];
        for (i, (exit, report, code, verdict, passes)) in cases.iter().enumerate() {
            assert_eq!(
                judge("m.pkl", *exit, report, *code, verdict).is_ok(),
                *passes,
                "case {i}: {report}"
            );
        }
    }
}
