//! Keras model configurations (config.json of a .keras, the `model_config` attribute of an
//! .h5, keras_metadata.pb of a Keras SavedModel): the Lambda layers, whose Python bytecode
//! runs when the model is rebuilt or called, and the objects of classes Keras does not ship.
//! Read as JSON wherever it is stored; nothing is rebuilt.

use serde_json::Value;

/// What a configuration holds that runs code.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `(layer name, marshal'd bytecode)` of every Lambda layer that carries bytecode.
    pub lambdas: Vec<(String, Vec<u8>)>,
    /// `module.Class` of every object whose module is no Keras or TensorFlow one.
    pub custom_objects: Vec<String>,
}

/// Every model configuration in `bytes` (JSON objects that start `{"class_name"` or
/// `{"module"`), wherever they are stored in the file.
pub fn configs_in(bytes: &[u8]) -> Vec<Value> {
    let mut found = Vec::new();
    let mut at = 0usize;
    while found.len() < 64 {
        let Some(i) = find_object_start(&bytes[at..]) else {
            break;
        };
        let start = at + i;
        let mut stream = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                at = start + stream.byte_offset().max(1);
                found.push(value);
            }
            _ => at = start + 1,
        }
    }
    found
}

fn find_object_start(bytes: &[u8]) -> Option<usize> {
    const STARTS: [&[u8]; 2] = [b"{\"class_name\":", b"{\"module\":"];
    bytes
        .windows(14)
        .position(|w| STARTS.iter().any(|s| w.starts_with(s)))
}

/// The Lambda layers and custom objects of a configuration.
pub fn inspect(config: &Value) -> Config {
    let mut out = Config::default();
    walk(config, &mut out, 0);
    out
}

fn walk(value: &Value, out: &mut Config, depth: usize) {
    if depth > 256 {
        return;
    }
    match value {
        Value::Object(map) => {
            let class = map.get("class_name").and_then(Value::as_str);
            if class == Some("Lambda")
                && let Some(config) = map.get("config")
            {
                let name = config
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("lambda")
                    .to_string();
                if let Some(code) = lambda_code(config.get("function"))
                    && let Some(bytes) = decode(code)
                {
                    out.lambdas.push((name, bytes));
                }
            }
            if let (Some(class), Some(module)) = (class, map.get("module").and_then(Value::as_str))
                && !is_shipped(module)
            {
                let what = match (class, map.get("config").and_then(Value::as_str)) {
                    ("function", Some(function)) => format!("{module}.{function}"),
                    _ => format!("{module}.{class}"),
                };
                if !out.custom_objects.contains(&what) {
                    out.custom_objects.push(what);
                }
            }
            for v in map.values() {
                walk(v, out, depth + 1);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, out, depth + 1)),
        _ => {}
    }
}

/// Keras 3: `{"class_name": "__lambda__", "config": {"code": ...}}`; Keras 2 (.h5):
/// `[code, defaults, closure]` or the code alone, with `function_type: "lambda"`.
fn lambda_code(function: Option<&Value>) -> Option<&str> {
    match function? {
        Value::Object(f) => f.get("config")?.get("code")?.as_str(),
        Value::Array(parts) => parts.first()?.as_str(),
        Value::String(code) => Some(code),
        _ => None,
    }
}

fn decode(code: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
        .filter(|b| !b.is_empty())
}

fn is_shipped(module: &str) -> bool {
    ["keras", "tensorflow", "tf_keras", "builtins"]
        .iter()
        .any(|m| module == *m || module.starts_with(&format!("{m}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambdas_and_custom_objects_are_found_in_stored_json() {
        let stored = br#"junk\x00{"class_name": "Sequential", "config": {"layers": [
            {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "l1",
             "function": {"class_name": "__lambda__", "config": {"code": "4wEAAA==\n"}}}},
            {"module": "mylib.layers", "class_name": "Odd", "config": {}},
            {"module": "keras.layers", "class_name": "Dense", "config": {"activation":
             {"module": "__main__", "class_name": "function", "config": "swish2"}}}
        ]}} trailing"#;
        let configs = configs_in(stored);
        assert_eq!(configs.len(), 1);
        let found = inspect(&configs[0]);
        assert_eq!(found.lambdas.len(), 1);
        assert_eq!(found.lambdas[0].0, "l1");
        assert_eq!(
            found.custom_objects,
            ["mylib.layers.Odd", "__main__.swish2"]
        );
        let legacy = br#"{"class_name": "Lambda", "config": {"name": "l2", "function": ["4wEAAA==", null, null], "function_type": "lambda"}}"#;
        assert_eq!(inspect(&configs_in(legacy)[0]).lambdas[0].0, "l2");
    }
}
