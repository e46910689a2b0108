//! Hostile files on which loading shows nothing here, scanned with the defaults (`monitorctl
//! scan FILE`, no flags): the static analysis makes them MALICIOUS, whatever the load did
//! (nothing, an error, a refusal). Each gave CLEAN or an error (exit 2) before the verdict took
//! the static evidence. And a file of a known code-free format (ONNX) is CLEAN with a reason.
//! Root: the scans load the artifacts under the kernel probes (one set for every case).

use std::{io::Write as _, path::Path, process::Command};

use monitor_engine::probes::ProbeConfig;
use monitor_scan::{
    LazyProbes, ScanReport, ScanSpec, scan, static_analysis::Observed, verdict::ExitCode,
};
use monitor_tests::{is_root, loader_python};

/// A pickle that calls `module.name(arg)` (protocol 0).
fn call(module: &str, name: &str, arg: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n(S'{arg}'\ntR.").into_bytes()
}

/// A zip of `(name, bytes)` members, stored.
fn zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut out);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in members {
            w.start_file(*name, stored).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap();
    }
    out.into_inner()
}

/// An HDF5 file as Keras 2 writes one, whose model has a Lambda layer (its bytecode names
/// `__import__` and `system`) but no weights, so that this Keras cannot rebuild it.
fn h5_with_lambda(path: &Path) {
    let script = r#"
import base64, json, marshal, sys, h5py
code = compile("lambda x: __import__('os').system('true') or x", "<x>", "eval").co_consts[0]
config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
    {"class_name": "Lambda", "config": {"name": "evil", "function_type": "lambda",
     "function": [base64.b64encode(marshal.dumps(code)).decode(), None, None],
     "output_shape_type": "raw", "arguments": {}}},
    {"class_name": "NoSuchLayer", "config": {"name": "broken"}}]}}
with h5py.File(sys.argv[1], "w") as f:
    f.attrs["model_config"] = json.dumps(config)
    f.attrs["keras_version"] = "2.15.0"
    f.attrs["backend"] = "tensorflow"
"#;
    let status = Command::new(loader_python())
        .args(["-c", script])
        .arg(path)
        .status()
        .expect("run the loader's python");
    assert!(status.success(), "writing the .h5");
}

/// A minimal ONNX model: one Relu node (hand-encoded ModelProto).
fn onnx_model() -> Vec<u8> {
    fn field(number: u8, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(number << 3 | 2);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    let mut node = Vec::new();
    field(1, b"x", &mut node);
    field(2, b"y", &mut node);
    field(4, b"Relu", &mut node);
    let mut graph = Vec::new();
    field(1, &node, &mut graph);
    field(2, b"g", &mut graph);
    let mut model = vec![0x08, 0x08];
    field(2, b"test", &mut model);
    field(7, &graph, &mut model);
    let mut opset = Vec::new();
    opset.extend_from_slice(&[0x10, 17]);
    field(8, &opset, &mut model);
    model
}

fn summary(report: &ScanReport) -> String {
    let statics: Vec<String> = report
        .static_findings
        .iter()
        .map(|f| {
            format!(
                "{} {} {}: {} ({:?})",
                f.severity, f.rule, f.location, f.evidence, f.observed
            )
        })
        .collect();
    let kernel: Vec<&str> = report.findings.iter().map(|f| f.rule.as_str()).collect();
    let errors: Vec<&str> = report.errors.iter().map(|e| e.message.as_str()).collect();
    format!(
        "verdict {:?}, exit {:?}\n  static: {statics:#?}\n  kernel: {kernel:?}\n  errors: {errors:?}\n  notes: {:?}",
        report.verdict, report.exit_code, report.notes
    )
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_files_that_do_nothing_here_are_malicious_by_default() {
    assert!(is_root(), "scans load eBPF programs: run the tests as root");
    let dir = tempfile::tempdir().unwrap();
    let mut second_stream = b"\x80\x04K\x01.".to_vec();
    second_stream.extend_from_slice(&call("builtins", "eval", "1+1"));
    // marshal'd code for some other Python: bytes this one refuses.
    let mut marshal = b"cmarshal\nloads\n(C\x08".to_vec();
    marshal.extend_from_slice(b"\xe3\xff\xff\xff\x00\x00\x00\x00");
    marshal.extend_from_slice(b"tR.");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // Only referenced: the unpickler returns the function, nothing runs.
        (
            "posix-referenced.pkl",
            b"cposix\nsystem\n.".to_vec(),
            "posix.system",
        ),
        // A Windows payload: ImportError on Linux.
        (
            "nt-system.pkl",
            call("nt", "system", "calc.exe"),
            "nt.system",
        ),
        ("marshal-other-python.pkl", marshal, "marshal.loads"),
        // eval of a constant in the second pickle: no syscall.
        ("eval-second-stream.pkl", second_stream, "builtins.eval"),
        ("pdb-run.pkl", call("pdb", "run", "1"), "pdb.run"),
        (
            "webbrowser.pkl",
            call("webbrowser", "open", "http://127.0.0.1:9/"),
            "webbrowser.open",
        ),
        // torch refuses a data.pkl at the archive's root.
        (
            "root-entries.pt",
            zip(&[
                ("data.pkl", &call("builtins", "eval", "1+1")),
                ("version", b"3\n"),
            ]),
            "builtins.eval",
        ),
    ];
    let mut probes = LazyProbes::new(ProbeConfig::default());
    let mut wrong = Vec::new();
    let mut check = |name: &str, report: &ScanReport, evidence: &str| {
        let named = report
            .static_findings
            .iter()
            .any(|f| f.evidence.contains(evidence) && f.observed != Observed::NotLoaded);
        eprintln!("{name}: {}", summary(report));
        if report.exit_code != ExitCode::Threat || !named {
            wrong.push(format!("{name}: {}", summary(report)));
        }
    };
    for (name, bytes, evidence) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let mut spec = ScanSpec::new(&path);
        spec.python = loader_python();
        let report = scan(&spec, &mut probes, |_| {}).await;
        check(name, &report, evidence);
    }
    let h5 = dir.path().join("lambda-unbuildable.h5");
    h5_with_lambda(&h5);
    let mut spec = ScanSpec::new(&h5);
    spec.python = loader_python();
    let report = scan(&spec, &mut probes, |_| {}).await;
    check("lambda-unbuildable.h5", &report, "system");
    assert!(wrong.is_empty(), "not malicious:\n{}", wrong.join("\n"));

    // A code-free format: clean, with the reason, nothing loaded.
    let onnx = dir.path().join("model.onnx");
    std::fs::write(&onnx, onnx_model()).unwrap();
    let mut spec = ScanSpec::new(&onnx);
    spec.python = loader_python();
    let report = scan(&spec, &mut probes, |_| {}).await;
    assert_eq!(report.exit_code, ExitCode::Clean, "{}", summary(&report));
    assert_eq!(report.artifact.format.as_deref(), Some("onnx"));
    assert!(
        report.notes.iter().any(|n| n.contains("holds no code")),
        "{}",
        summary(&report)
    );
    if let Some(probes) = probes.into_loaded().await {
        drop(probes);
    }
}
