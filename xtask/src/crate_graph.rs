//! `cargo xtask crate-graph`: the picture of the workspace's crates and what each depends on,
//! from `cargo metadata`, kept in README.md between two markers (a Mermaid flowchart, which
//! the forges render). A unit test fails when the README's picture is not the workspace's.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::root;

const BEGIN: &str = "<!-- crate-graph: begin (cargo xtask crate-graph) -->";
const END: &str = "<!-- crate-graph: end -->";

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    dependencies: Vec<Dependency>,
}

#[derive(Deserialize)]
struct Dependency {
    name: String,
    kind: Option<String>,
    /// Set for path dependencies: the workspace's own crates.
    path: Option<String>,
}

/// Each workspace crate and the workspace crates it links (normal dependencies only: build
/// and dev dependencies are not part of what a binary is made of).
fn graph() -> Result<BTreeMap<String, Vec<String>>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: Metadata = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let ours: Vec<&str> = meta.packages.iter().map(|p| p.name.as_str()).collect();
    let mut graph = BTreeMap::new();
    for package in &meta.packages {
        if matches!(package.name.as_str(), "xtask" | "monitor-tests") {
            continue;
        }
        let mut deps: Vec<String> = package
            .dependencies
            .iter()
            .filter(|d| d.kind.is_none() && d.path.is_some() && ours.contains(&d.name.as_str()))
            .map(|d| d.name.clone())
            .collect();
        deps.sort();
        deps.dedup();
        graph.insert(package.name.clone(), deps);
    }
    Ok(graph)
}

/// Whether `to` is reachable from `from` through the graph.
fn reaches(graph: &BTreeMap<String, Vec<String>>, from: &str, to: &str) -> bool {
    graph
        .get(from)
        .is_some_and(|deps| deps.iter().any(|d| d == to || reaches(graph, d, to)))
}

/// The picture, as the README holds it between the markers: an edge only where no longer
/// path says it already (`monitor-scan -> monitor-common` goes through the engine).
fn render(graph: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = format!("{BEGIN}\n```mermaid\nflowchart BT\n");
    for (name, deps) in graph {
        for dep in deps {
            let implied = deps
                .iter()
                .any(|other| other != dep && reaches(graph, other, dep));
            if implied {
                continue;
            }
            out.push_str(&format!("    {name} --> {dep}\n"));
        }
    }
    out.push_str(&format!("```\n{END}"));
    out
}

fn readme_with(readme: &str, picture: &str) -> Result<String> {
    let start = readme
        .find(BEGIN)
        .context("README.md has no crate-graph begin marker")?;
    let end = readme[start..]
        .find(END)
        .map(|i| start + i + END.len())
        .context("README.md has no crate-graph end marker")?;
    Ok(format!("{}{picture}{}", &readme[..start], &readme[end..]))
}

/// Rewrites the picture in README.md.
pub fn write() -> Result<()> {
    let path = root().join("README.md");
    let readme = fs::read_to_string(&path)?;
    let updated = readme_with(&readme, &render(&graph()?))?;
    if updated != readme {
        fs::write(&path, updated)?;
        println!("crate-graph: README.md updated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_pictures_the_crates_as_they_are() {
        let readme = fs::read_to_string(root().join("README.md")).unwrap();
        let picture = render(&graph().unwrap());
        assert_eq!(
            readme_with(&readme, &picture).unwrap(),
            readme,
            "README.md's crate graph is out of date: run `cargo xtask crate-graph`"
        );
    }

    #[test]
    fn the_binaries_link_no_more_than_their_floors() {
        // Everything monitorctl links, all the way down: no HTTP server, store or registry.
        let tree = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "tree",
                "-p",
                "monitor-cli",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--offline",
            ])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            tree.status.success(),
            "{}",
            String::from_utf8_lossy(&tree.stderr)
        );
        let tree = String::from_utf8(tree.stdout).unwrap();
        for server_side in [
            "axum ",
            "rusqlite ",
            "prometheus-client ",
            "monitor-daemon ",
        ] {
            assert!(
                !tree.lines().any(|l| l.starts_with(server_side)),
                "monitorctl links {server_side}"
            );
        }
        let graph = graph().unwrap();
        // monitorctl is a client and an embedded scanner: no HTTP server, store or registry.
        let cli = &graph["monitor-cli"];
        assert!(!cli.contains(&"monitor-daemon".to_string()), "{cli:?}");
        // The engine knows nothing of what is built on it.
        assert!(
            graph["monitor-engine"]
                .iter()
                .all(|d| d == "monitor-common"),
            "{:?}",
            graph["monitor-engine"]
        );
    }
}
