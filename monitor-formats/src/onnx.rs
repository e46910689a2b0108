//! ONNX models, validated natively against the few messages of onnx.proto that matter: a
//! ModelProto with its graph, nodes (their operator domains), tensors (where their data
//! lives) and the subgraphs of control-flow nodes. Nothing is loaded: an ONNX file holds no
//! code, only operators a runtime implements, and data, which may live in files beside it.
//!
//! Field numbers (onnx.proto3): ModelProto ir_version 1, producer_name 2, graph 7,
//! opset_import 8, functions 25; GraphProto node 1, initializer 5, sparse_initializer 15;
//! NodeProto op_type 4, attribute 5, domain 7; AttributeProto t 5, g 6, tensors 10,
//! graphs 11; TensorProto external_data 13, data_location 14; StringStringEntryProto key 1,
//! value 2; FunctionProto node 7, domain 10; SparseTensorProto values 1, indices 2.

use std::collections::BTreeSet;

use serde::Serialize;

use super::proto::{self, ProtoError, Value};

/// Operator domains ONNX Runtime ships (the default domain is "" or "ai.onnx").
const SHIPPED_DOMAINS: &[&str] = &[
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.training",
    "ai.onnx.preview.training",
    "com.microsoft",
    "com.microsoft.nchwc",
    "com.microsoft.experimental",
    "com.microsoft.mlfeaturizers",
    "com.microsoft.dml",
    "org.pytorch.aten",
];

/// Graphs inside graphs (If, Loop, Scan bodies) followed this deep.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub ir_version: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub producer: String,
    pub nodes: usize,
    pub initializers: usize,
    /// Operator domains used that ONNX Runtime does not ship and the model does not define
    /// itself (as local functions).
    pub custom_domains: Vec<String>,
    /// Where tensors stored outside the file are read from (`location`, as written).
    pub external_data: Vec<String>,
}

#[derive(Default)]
struct Walk {
    nodes: usize,
    initializers: usize,
    domains: BTreeSet<String>,
    function_domains: BTreeSet<String>,
    external: BTreeSet<String>,
}

/// Whether `head` could start an ONNX model: field 1 (ir_version) as a varint comes first
/// in every writer's output.
pub fn looks_like(head: &[u8]) -> bool {
    head.first() == Some(&0x08) && head.get(1).is_some_and(|&v| (1..=64).contains(&v))
}

/// Validates a whole ONNX model.
pub fn check(data: &[u8]) -> Result<Summary, String> {
    let mut walk = Walk::default();
    let mut ir_version = None;
    let mut producer = String::new();
    let mut graph = false;
    for field in proto::fields(data) {
        let (number, value) = field.map_err(|e| e.to_string())?;
        match number {
            1 => ir_version = Some(value.varint().map_err(|e| e.to_string())?),
            2 => producer = value.text().map_err(|e| e.to_string())?.to_string(),
            7 => {
                graph = true;
                walk.graph(value.bytes().map_err(|e| e.to_string())?, 0)
                    .map_err(|e| format!("in the graph: {e}"))?;
            }
            8 => {
                check_message(value).map_err(|e| format!("in an opset import: {e}"))?;
            }
            25 => walk
                .function(value.bytes().map_err(|e| e.to_string())?)
                .map_err(|e| format!("in a local function: {e}"))?,
            _ => {}
        }
    }
    let ir_version = ir_version.ok_or("no ir_version")?;
    if !graph {
        return Err("no graph".into());
    }
    let custom_domains = walk
        .domains
        .iter()
        .filter(|d| !SHIPPED_DOMAINS.contains(&d.as_str()) && !walk.function_domains.contains(*d))
        .cloned()
        .collect();
    Ok(Summary {
        ir_version,
        producer,
        nodes: walk.nodes,
        initializers: walk.initializers,
        custom_domains,
        external_data: walk.external.into_iter().collect(),
    })
}

fn check_message(value: Value<'_>) -> Result<(), ProtoError> {
    let bytes = value.bytes()?;
    for field in proto::fields(bytes) {
        field?;
    }
    Ok(())
}

impl Walk {
    fn graph(&mut self, data: &[u8], depth: usize) -> Result<(), ProtoError> {
        if depth > MAX_DEPTH {
            return Err(ProtoError::TooDeep);
        }
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                1 => self.node(value.bytes()?, depth)?,
                5 => {
                    self.initializers += 1;
                    self.tensor(value.bytes()?)?;
                }
                15 => {
                    self.initializers += 1;
                    for field in proto::fields(value.bytes()?) {
                        let (n, v) = field?;
                        if n == 1 || n == 2 {
                            self.tensor(v.bytes()?)?;
                        }
                    }
                }
                2 | 10 => {
                    value.text()?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn node(&mut self, data: &[u8], depth: usize) -> Result<(), ProtoError> {
        self.nodes += 1;
        let mut domain = String::new();
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                4 => {
                    value.text()?;
                }
                7 => domain = value.text()?.to_string(),
                5 => self.attribute(value.bytes()?, depth)?,
                _ => {}
            }
        }
        self.domains.insert(domain);
        Ok(())
    }

    fn attribute(&mut self, data: &[u8], depth: usize) -> Result<(), ProtoError> {
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                5 | 10 => self.tensor(value.bytes()?)?,
                6 | 11 => self.graph(value.bytes()?, depth + 1)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn tensor(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        let mut external = false;
        let mut location = None;
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                14 => external = value.varint()? == 1,
                13 => {
                    let mut key = "";
                    let mut val = "";
                    for entry in proto::fields(value.bytes()?) {
                        match entry? {
                            (1, v) => key = v.text()?,
                            (2, v) => val = v.text()?,
                            _ => {}
                        }
                    }
                    if key == "location" {
                        location = Some(val.to_string());
                    }
                }
                _ => {}
            }
        }
        if let Some(location) = location.filter(|_| external) {
            self.external.insert(location);
        }
        Ok(())
    }

    fn function(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                7 => self.node(value.bytes()?, 1)?,
                10 => {
                    self.function_domains.insert(value.text()?.to_string());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether an external data location leaves the model's directory: absolute, or climbing
/// out with `..`.
pub fn leaves_directory(location: &str) -> bool {
    if location.starts_with('/') || location.starts_with('\\') || location.contains(':') {
        return true;
    }
    let mut depth = 0i32;
    for part in location.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Small files of this format built in memory, for tests here and in the crates above
/// (feature `samples`).
#[cfg(any(test, feature = "samples"))]
pub mod tests {
    #[cfg(test)]
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn field(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(number) << 3 | 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// A model of one node (`op` in `domain`) and one initializer stored at `location`.
    pub fn model(op: &str, domain: &str, location: Option<&str>) -> Vec<u8> {
        let mut node = Vec::new();
        field(1, b"x", &mut node);
        field(2, b"y", &mut node);
        field(4, op.as_bytes(), &mut node);
        field(7, domain.as_bytes(), &mut node);
        let mut tensor = Vec::new();
        field(8, b"w", &mut tensor);
        if let Some(location) = location {
            let mut entry = Vec::new();
            field(1, b"location", &mut entry);
            field(2, location.as_bytes(), &mut entry);
            field(13, &entry, &mut tensor);
            tensor.extend_from_slice(&[14 << 3, 1]);
        }
        let mut graph = Vec::new();
        field(1, &node, &mut graph);
        field(2, b"g", &mut graph);
        field(5, &tensor, &mut graph);
        let mut model = vec![0x08, 0x08];
        field(2, b"test", &mut model);
        field(7, &graph, &mut model);
        model
    }

    #[test]
    fn a_model_is_summarised() {
        let s = check(&model("Relu", "", None)).unwrap();
        assert_eq!(s.ir_version, 8);
        assert_eq!(s.nodes, 1);
        assert!(s.custom_domains.is_empty() && s.external_data.is_empty());
        let s = check(&model("Evil", "com.example.ops", Some("../../etc/passwd"))).unwrap();
        assert_eq!(s.custom_domains, ["com.example.ops"]);
        assert_eq!(s.external_data, ["../../etc/passwd"]);
    }

    #[test]
    fn damage_and_other_content_are_refused() {
        let m = model("Relu", "", None);
        assert!(check(&m[..m.len() - 3]).is_err());
        assert!(check(b"\x08\x07").is_err(), "no graph");
        assert!(check(b"hello world").is_err());
    }

    #[test]
    fn locations_that_leave_the_directory() {
        for out in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "C:\\x",
            "\\\\host\\share",
        ] {
            assert!(leaves_directory(out), "{out}");
        }
        for inside in ["weights.bin", "data/w.bin", "a/../b.bin", "./w"] {
            assert!(!leaves_directory(inside), "{inside}");
        }
    }
}
