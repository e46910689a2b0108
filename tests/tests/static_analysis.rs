//! The static analysis of a scan (`artifact.globals`, `static_findings`): the globals each
//! pickle of an artifact names, read without running anything, over the corpus's
//! framework-made artifacts (torch.save zip and legacy, joblib plain and compressed, NumPy
//! object arrays, plain pickles, Keras, SavedModels), marked by the static rules. No kernel,
//! no root.

use std::path::{Path, PathBuf};

use monitor_formats::{self as format, Limits};
use monitor_rules::Severity;
use monitor_scan::static_analysis::{self, Analysis, PickleGlobals, StaticRules};

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

fn analysis_of(file: &str) -> Analysis {
    let path = corpus(file);
    let format = format::detect(&path, &Limits::default()).expect("a format we know");
    static_analysis::analyse(&path, &format, &StaticRules::defaults())
}

fn globals_of(file: &str) -> Vec<PickleGlobals> {
    analysis_of(file).pickles
}

/// The rules of the static findings of at least `at_least`.
fn findings_of(file: &str, at_least: Severity) -> Vec<String> {
    analysis_of(file)
        .findings
        .iter()
        .filter(|f| f.severity >= at_least)
        .map(|f| format!("{} {}: {}", f.rule, f.location, f.evidence))
        .collect()
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

/// The globals a rule of medium severity or above marks.
fn flagged(found: &[PickleGlobals]) -> Vec<(String, String, Severity)> {
    found
        .iter()
        .flat_map(|p| {
            p.globals
                .iter()
                .filter(|g| g.severity >= Some(Severity::Medium))
                .filter_map(|g| {
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
            "static.exec".to_string(),
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
            .any(|(g, rule, _)| g.starts_with("pdb.") && rule == "static.debugger"),
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
    // walk reads up to the first array and says so; the globals after it are swept for.
    let found = globals_of("malicious/os-system.joblib");
    let all = listed(&found);
    assert!(
        all.iter().any(|g| g.contains("posix.system [static.exec]")),
        "{all:?}"
    );
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
    // Compressed joblib is decompressed and read, whatever joblib compressed it with.
    for (file, global) in [
        ("malicious/ctypes-libc.zlib.joblib", "ctypes."),
        ("malicious/dropper.xz.joblib", "importlib."),
        ("malicious/fork-after-load.lzma.joblib", "importlib."),
        ("malicious/ssh-key-read.gzip.joblib", "io.open"),
    ] {
        let found = globals_of(file);
        assert!(
            flagged(&found)
                .iter()
                .any(|(g, _, _)| g.starts_with(global)),
            "{file}: {:?}",
            listed(&found)
        );
    }
}

#[test]
fn what_other_loaders_run_is_read_too() {
    // Keras Lambda bytecode, in .keras and .h5 alike.
    for file in [
        "malicious/lambda-predict.keras",
        "malicious/lambda-predict.h5",
    ] {
        let high = findings_of(file, Severity::High);
        assert!(
            high.iter()
                .any(|f| f.contains("Lambda layer") && f.contains("system")),
            "{file}: {high:?}"
        );
    }
    // SavedModel graphs: the op and the path.
    let high = findings_of("malicious/savedmodel-reads-ssh-key", Severity::High);
    assert!(high.iter().any(|f| f.contains(".ssh/id_rsa")), "{high:?}");
    let high = findings_of("malicious/savedmodel-writes-bashrc", Severity::High);
    assert!(high.iter().any(|f| f.contains("op WriteFile")), "{high:?}");
    // A pickle inside a pickle's data.
    let all = findings_of("malicious/nested-pickle.npz", Severity::Medium);
    assert!(
        all.iter().any(|f| f.starts_with("static.nested-pickle")),
        "{all:?}"
    );
    // Code pickled by value names what it will call.
    let high = findings_of("malicious/predict-runs-id.cloudpickle.pkl", Severity::High);
    assert!(high.iter().any(|f| f.contains("system")), "{high:?}");
}

#[test]
fn no_benign_artifact_has_a_static_finding_above_low() {
    let dir = corpus("benign");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let found = findings_of(&format!("benign/{name}"), Severity::Medium);
        assert!(found.is_empty(), "benign/{name}: {found:?}");
    }
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
