//! TensorFlow graphs (saved_model.pb): the ops of every node of every meta graph and of every
//! function in their libraries, and the string constants the nodes hold (a path a signature
//! reads). Decoded with the protobuf reader, by field number (tensorflow/core/protobuf and
//! framework): SavedModel meta_graphs 2; MetaGraphDef graph_def 2; GraphDef node 1, library 2;
//! FunctionDefLibrary function 1; FunctionDef signature 1 (OpDef name 1), node_def 3;
//! NodeDef name 1, op 2, attr 5 (entry key 1, value 2); AttrValue list 1, s 2, tensor 8;
//! ListValue s 2, tensor 8; TensorProto string_val 8.

use std::collections::BTreeSet;

use monitor_formats::proto::{self, ProtoError};

/// Strings kept (a graph may hold vocabularies of thousands).
const MAX_STRINGS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Graph {
    /// `(op, where)`: each op once, with the first node (and function) it was seen in.
    pub ops: Vec<(String, String)>,
    /// Text constants that look like paths.
    pub paths: BTreeSet<String>,
}

pub fn read_saved_model(data: &[u8]) -> Result<Graph, ProtoError> {
    let mut graph = Graph::default();
    for field in proto::fields(data) {
        let (number, value) = field?;
        if number == 2 {
            for field in proto::fields(value.bytes()?) {
                let (number, value) = field?;
                if number == 2 {
                    graph.graph_def(value.bytes()?)?;
                }
            }
        }
    }
    Ok(graph)
}

impl Graph {
    fn graph_def(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                1 => self.node(value.bytes()?, "graph")?,
                2 => {
                    for field in proto::fields(value.bytes()?) {
                        let (number, value) = field?;
                        if number == 1 {
                            self.function(value.bytes()?)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn function(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        let mut name = String::from("function");
        let mut nodes = Vec::new();
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                1 => {
                    for field in proto::fields(value.bytes()?) {
                        if let (1, v) = field? {
                            name = v.text()?.to_string();
                        }
                    }
                }
                3 => nodes.push(value.bytes()?),
                _ => {}
            }
        }
        for node in nodes {
            self.node(node, &name)?;
        }
        Ok(())
    }

    fn node(&mut self, data: &[u8], within: &str) -> Result<(), ProtoError> {
        let mut name = "";
        let mut op = "";
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                1 => name = value.text()?,
                2 => op = value.text()?,
                5 => {
                    for entry in proto::fields(value.bytes()?) {
                        if let (2, v) = entry? {
                            self.attr(v.bytes()?)?;
                        }
                    }
                }
                _ => {}
            }
        }
        if !op.is_empty() && !self.ops.iter().any(|(o, _)| o == op) {
            self.ops
                .push((op.to_string(), format!("node {name} in {within}")));
        }
        Ok(())
    }

    fn attr(&mut self, data: &[u8]) -> Result<(), ProtoError> {
        for field in proto::fields(data) {
            let (number, value) = field?;
            match number {
                1 => self.attr(value.bytes()?)?,
                2 => self.string(value.bytes()?),
                8 => {
                    for field in proto::fields(value.bytes()?) {
                        if let (8, v) = field? {
                            self.string(v.bytes()?);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn string(&mut self, bytes: &[u8]) {
        if self.paths.len() >= MAX_STRINGS || bytes.len() > 4096 {
            return;
        }
        if let Ok(text) = std::str::from_utf8(bytes)
            && (text.starts_with('/') || text.starts_with('~'))
        {
            self.paths.insert(text.to_string());
        }
    }
}
