//! Detection of artifacts made by the real frameworks (testdata/, made by make_fixtures.py)
//! and of the ways input goes wrong.

use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/testdata")
        .join(name)
}

fn id_of(name: &str) -> &'static str {
    match detect(&fixture(name), &Limits::default()) {
        Ok(format) => format.id(),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn every_framework_format_is_recognised_by_content() {
    let expected = [
        ("protocol0.pkl", "pickle"),
        ("protocol1.pkl", "pickle"),
        ("protocol2.pkl", "pickle"),
        ("protocol3.pkl", "pickle"),
        ("protocol4.pkl", "pickle"),
        ("protocol5.pkl", "pickle"),
        ("two.pkl", "pickle"),
        ("dill.pkl", "dill"),
        ("cloudpickle.pkl", "cloudpickle"),
        ("plain.joblib", "joblib"),
        ("zlib.joblib", "joblib"),
        ("array.npy", "numpy"),
        ("arrays.npz", "numpy-archive"),
        ("state.pt", "torch-zip"),
        ("state-renamed.bin", "torch-zip"),
        ("legacy.pt", "torch-legacy"),
        ("dense.keras", "keras"),
        ("dense.h5", "hdf5"),
        ("tensors.safetensors", "safetensors"),
    ];
    for (name, id) in expected {
        assert_eq!(id_of(name), id, "{name}");
    }
}

#[test]
fn details_are_described() {
    let two = detect(&fixture("two.pkl"), &Limits::default()).unwrap();
    assert_eq!(two.describe(), "pickle (protocol 4, 2 pickles)");
    let zlib = detect(&fixture("zlib.joblib"), &Limits::default()).unwrap();
    assert_eq!(zlib.describe(), "joblib (zlib-compressed)");
    let st = detect(&fixture("tensors.safetensors"), &Limits::default()).unwrap();
    assert_eq!(st.loader(), None, "safetensors never runs");
    assert!(
        st.describe().starts_with("safetensors (2 tensors"),
        "{}",
        st.describe()
    );
}

#[test]
fn a_savedmodel_directory_and_a_directory_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let err = detect(dir.path(), &Limits::default()).unwrap_err();
    assert!(matches!(err, FormatError::NotASavedModel { .. }));
    assert!(err.to_string().contains("notes.txt"), "{err}");
    std::fs::write(dir.path().join("saved_model.pb"), "").unwrap();
    assert_eq!(
        detect(dir.path(), &Limits::default()).unwrap(),
        Format::SavedModel
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("empty"), b"").unwrap();
    std::fs::write(p("text"), b"just some notes\n").unwrap();
    std::os::unix::fs::symlink("/dev/null", p("device-link")).unwrap();
    let torch = std::fs::read(fixture("state.pt")).unwrap();
    std::fs::write(p("half.pt"), &torch[..torch.len() / 2]).unwrap();
    let st = std::fs::read(fixture("tensors.safetensors")).unwrap();
    std::fs::write(p("cut.safetensors"), &st[..st.len() - 3]).unwrap();

    // A damaged zip is still read for what it holds (the scan reports the damage as an input
    // error unless what it holds is a threat).
    let half = detect(&p("half.pt"), &Limits::default()).unwrap();
    assert!(half.loader().is_none(), "{half:?}");
    assert!(
        half.describe().contains("corrupt or truncated zip"),
        "{}",
        half.describe()
    );
    let cases: [(PathBuf, &str); 7] = [
        (p("missing"), "no such file"),
        (p("empty"), "empty"),
        (p("text"), "looks like text"),
        (p("device-link"), "character device"),
        ("/bin/true".into(), "ELF"),
        (p("cut.safetensors"), "malformed safetensors"),
        (fixture("state.pt"), "larger than the limit"),
    ];
    for (path, expected) in cases {
        let limits = if expected.contains("limit") {
            Limits { max_size: 10 }
        } else {
            Limits::default()
        };
        let err = detect(&path, &limits).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{path:?}: {err} (wanted {expected})"
        );
        assert!(err.starts_with(&path.display().to_string()), "{err}");
    }
}

#[test]
fn a_damaged_pickle_is_still_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pkl");
    let whole = std::fs::read(fixture("protocol4.pkl")).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 4]).unwrap();
    let format = detect(&path, &Limits::default()).unwrap();
    assert_eq!(format.loader(), Some("pickle"));
    assert!(
        format.describe().contains("damaged"),
        "{}",
        format.describe()
    );
}
