//! The nightly toolchain the kernel programs are built with (`-Z build-std=core`, bpf-linker
//! on its own LLVM), pinned in one place: `channel` of monitor-ebpf/rust-toolchain.toml.
//!
//! Shared, by `#[path]`, between monitor-engine/build.rs (which builds the programs) and xtask
//! (which installs rust-src and bpf-linker for that toolchain and lints the kernel crate), so
//! that both pick the same toolchain. Nothing is downloaded: the pinned toolchain is used when
//! rustup has it under its own name; else rustup's `nightly` when it is that same build (its
//! rustc's commit date is the pin's date); else the build stops and says what to install.

use std::{path::Path, process::Command};

/// Where the pin is, from the workspace's root.
pub const PIN_FILE: &str = "monitor-ebpf/rust-toolchain.toml";

/// The toolchain to build the kernel programs with, as rustup names it (`rustup run NAME`,
/// `cargo +NAME`), or why there is none. `workspace` is the workspace's root.
pub fn toolchain(workspace: &Path) -> Result<String, String> {
    let path = workspace.join(PIN_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let channel = channel(&text).ok_or_else(|| format!("{PIN_FILE} names no channel"))?;
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| format!("running rustup toolchain list: {e}"))?;
    let list = String::from_utf8_lossy(&list.stdout);
    resolve(channel, &list, |name| {
        // `rustup run`, not `rustc +NAME`: in a build script, the `rustc` on PATH may be the
        // toolchain's own binary rather than rustup's proxy.
        let out = Command::new("rustup")
            .args(["run", name, "rustc", "-vV"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

/// Picks the toolchain for the pinned `channel` from `rustup toolchain list`'s output;
/// `version` gives an installed toolchain's `rustc -vV`.
pub fn resolve(
    channel: &str,
    list: &str,
    version: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if installed(list, channel) {
        return Ok(channel.to_owned());
    }
    let install = format!("`rustup toolchain install {channel} --component rust-src`");
    let date = pinned_date(channel)
        .ok_or_else(|| format!("{PIN_FILE}: {channel:?} is not a dated nightly, nor installed"))?;
    if !installed(list, "nightly") {
        return Err(format!(
            "the kernel programs are built with {channel} ({PIN_FILE}), which is not installed: \
             {install}"
        ));
    }
    let found = version("nightly");
    match found.as_deref().and_then(commit_date) {
        Some(d) if d == date => Ok("nightly".to_owned()),
        other => Err(format!(
            "the kernel programs are built with {channel} ({PIN_FILE}); rustup's nightly is \
             from {}, another build: {install}",
            other.unwrap_or("an unknown date")
        )),
    }
}

/// Whether `rustup toolchain list` names `toolchain` (`nightly-2026-05-19` is listed as
/// `nightly-2026-05-19-x86_64-unknown-linux-gnu (default)`).
fn installed(list: &str, toolchain: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name == toolchain
                || name
                    .strip_prefix(toolchain)
                    .and_then(|rest| rest.strip_prefix('-'))
                    // A host triple follows, never a date's remainder (nightly-2026-05-19
                    // is not `nightly` of some host).
                    .is_some_and(|host| host.split('-').count() >= 3 && !starts_with_digit(host))
        })
}

fn starts_with_digit(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// `channel` of a rust-toolchain.toml's `[toolchain]`.
fn channel(toml: &str) -> Option<&str> {
    toml.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "channel").then(|| value.trim().trim_matches('"'))
    })
}

/// The date of a dated nightly: `nightly-2026-05-19` gives `2026-05-19`.
fn pinned_date(channel: &str) -> Option<&str> {
    let date = channel.strip_prefix("nightly-")?;
    let shaped = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped.then_some(date)
}

/// The commit date in `rustc -vV`'s output.
fn commit_date(verbose_version: &str) -> Option<&str> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("commit-date:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                        nightly-x86_64-unknown-linux-gnu\n\
                        1.95.0-x86_64-unknown-linux-gnu\n";
    const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                              commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\n\
                              commit-date: 2026-05-19\nhost: x86_64-unknown-linux-gnu\n";

    fn vv(name: &str) -> Option<String> {
        (name == "nightly").then(|| NIGHTLY_VV.to_owned())
    }

    #[test]
    fn the_pin_is_read_from_the_toolchain_file() {
        let toml =
            "# why\n[toolchain]\nchannel = \"nightly-2026-05-19\"\ncomponents = [\"rust-src\"]\n";
        assert_eq!(channel(toml), Some("nightly-2026-05-19"));
        assert_eq!(channel("[toolchain]\n"), None);
        assert_eq!(pinned_date("nightly-2026-05-19"), Some("2026-05-19"));
        assert_eq!(pinned_date("nightly"), None);
        assert_eq!(pinned_date("nightly-2026-5-19"), None);
        assert_eq!(pinned_date("stable"), None);
        assert_eq!(commit_date(NIGHTLY_VV), Some("2026-05-19"));
        assert_eq!(commit_date("rustc 1.95.0\n"), None);
    }

    #[test]
    fn the_pinned_toolchain_is_used_by_name_when_rustup_has_it() {
        let list = format!("{LIST}nightly-2026-05-19-x86_64-unknown-linux-gnu\n");
        assert_eq!(
            resolve("nightly-2026-05-19", &list, vv).as_deref(),
            Ok("nightly-2026-05-19")
        );
    }

    #[test]
    fn rustups_nightly_stands_in_only_when_it_is_the_pinned_build() {
        assert_eq!(
            resolve("nightly-2026-05-19", LIST, vv).as_deref(),
            Ok("nightly")
        );
        let newer = resolve("nightly-2026-05-18", LIST, vv).unwrap_err();
        assert!(newer.contains("from 2026-05-19"), "{newer}");
        assert!(
            newer.contains("rustup toolchain install nightly-2026-05-18 --component rust-src"),
            "{newer}"
        );
        let unknown = resolve("nightly-2026-05-19", LIST, |_| None).unwrap_err();
        assert!(unknown.contains("an unknown date"), "{unknown}");
        let none = resolve(
            "nightly-2026-05-19",
            "stable-x86_64-unknown-linux-gnu\n",
            vv,
        );
        assert!(none.unwrap_err().contains("not installed"));
        // A toolchain named like the pin's prefix is not the pin.
        assert!(!installed(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu\n",
            "nightly"
        ));
        assert!(installed(LIST, "nightly"));
        assert!(resolve("beta", LIST, vv).is_err());
    }
}
