//! The static evidence of a scan (`artifact.globals`): the globals each pickle of an artifact
//! names, read without running anything, over the corpus's framework-made artifacts
//! (torch.save zip and legacy, joblib, NumPy object arrays, plain pickles). Evidence only: the
//! scans' verdicts are tested in corpus.rs and scan.rs. No kernel, no root.

use std::path::{Path, PathBuf};

use monitor_daemon::{
    rules::{RuleSet, Severity},
    scan::{
        format::{self, Limits},
        globals::{self, PickleGlobals},
    },
};

fn corpus(file: &str) -> PathBuf {
    let dir = std::env::var_os("MONITOR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/corpus"));
    let path = dir.join(file);
    assert!(
        path.exists(),
        "no {}: run `cargo xtask corpus` (cargo xtask test does)",
        path.display()
    );
    path
}

fn globals_of(file: &str) -> Vec<PickleGlobals> {
    let path = corpus(file);
    let format = format::detect(&path, &Limits::default()).expect("a format we know");
    globals::of(&path, &format, &RuleSet::defaults())
}

/// `source: module.name [rule]` for each global, to compare and to show in a failure.
fn listed(found: &[PickleGlobals]) -> Vec<String> {
    found
        .iter()
        .flat_map(|p| {
            p.globals.iter().map(move |g| {
                format!(
                    "{}: {}.{} [{}]",
                    p.source,
                    g.module,
                    g.name,
                    g.rule.as_deref().unwrap_or("-")
                )
            })
        })
        .collect()
}

fn flagged(found: &[PickleGlobals]) -> Vec<(String, String, Severity)> {
    found
        .iter()
        .flat_map(|p| {
            p.globals.iter().filter_map(|g| {
                Some((
                    format!("{}.{}", g.module, g.name),
                    g.rule.clone()?,
                    g.severity?,
                ))
            })
        })
        .collect()
}

#[test]
fn a_torch_zip_checkpoint_is_read_member_by_member() {
    let found = globals_of("benign/state_dict.pt");
    let all = listed(&found);
    assert!(
        found.iter().all(|p| p.source.ends_with("/data.pkl")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|g| g.contains("torch._utils._rebuild_tensor_v2 [-]")),
        "{all:?}"
    );
    assert!(flagged(&found).is_empty(), "{all:?}");

    let found = globals_of("malicious/os-system.pt");
    assert_eq!(
        flagged(&found),
        [(
            "posix.system".to_string(),
            "py.global-system".to_string(),
            Severity::High
        )],
        "{:?}",
        listed(&found)
    );
}

#[test]
fn a_torch_legacy_checkpoint_is_read_past_its_magic_number() {
    let found = globals_of("malicious/pdb-run.legacy.pt");
    let marked = flagged(&found);
    assert!(
        marked
            .iter()
            .any(|(g, rule, _)| g.starts_with("pdb.") && rule == "py.global-code"),
        "{:?}",
        listed(&found)
    );
    let benign = globals_of("benign/state_dict.legacy.pt");
    assert!(benign.len() > 1, "{:?}", listed(&benign));
    assert!(flagged(&benign).is_empty(), "{:?}", listed(&benign));
}

#[test]
fn joblib_and_numpy_object_arrays_carry_their_pickles_globals() {
    // joblib writes each array's raw bytes inside the pickle stream, after its wrapper: the
    // walk reads up to the first array and says so (this payload comes after it; the scan's
    // trace is what catches it).
    let found = globals_of("malicious/os-system.joblib");
    let all = listed(&found);
    assert!(
        all.iter()
            .any(|g| g.contains("joblib.numpy_pickle.NumpyArrayWrapper")),
        "{all:?}"
    );
    assert!(
        found[0]
            .incomplete
            .as_deref()
            .is_some_and(|w| w.contains("joblib")),
        "{found:?}"
    );
    let found = globals_of("malicious/popen.npy");
    assert!(
        flagged(&found).iter().any(|(g, _, _)| g == "os.popen"),
        "{:?}",
        listed(&found)
    );
    let found = globals_of("malicious/nested-pickle.npz");
    assert!(
        found.iter().any(|p| p.source.ends_with(".npy")),
        "{:?}",
        listed(&found)
    );
    assert!(!flagged(&found).is_empty(), "{:?}", listed(&found));
    // A plain numeric array holds no pickle at all.
    assert!(globals_of("benign/array.npy").is_empty());
    // Compressed joblib is said to be unread, not passed over in silence.
    let compressed = globals_of("malicious/ctypes-libc.zlib.joblib");
    assert!(
        compressed[0]
            .incomplete
            .as_deref()
            .is_some_and(|w| w.contains("zlib")),
        "{compressed:?}"
    );
}

#[test]
fn no_benign_artifact_names_a_global_the_rules_mark() {
    let dir = corpus("benign");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut read = 0;
    for name in names {
        let found = globals_of(&format!("benign/{name}"));
        read += usize::from(!found.is_empty());
        assert!(
            flagged(&found).is_empty(),
            "benign/{name}: {:?}",
            listed(&found)
        );
    }
    assert!(
        read >= 10,
        "only {read} benign artifacts had pickles to read"
    );
}

#[test]
fn several_pickles_in_one_file_are_told_apart() {
    let found = globals_of("malicious/second-of-two.pkl");
    assert!(found.len() >= 2, "{:?}", listed(&found));
    assert!(found[0].source == "pickle 1" && found[1].source == "pickle 2");
    assert!(
        flagged(&found[..1]).is_empty() && !flagged(&found[1..]).is_empty(),
        "the payload is in the second pickle: {:?}",
        listed(&found)
    );
}
