//! docs/api.yaml against the types: every schema of a request, reply or stream item names
//! exactly the fields its type has, so that the document a client is generated from and the
//! JSON monitord and monitorctl exchange cannot drift apart.

use std::collections::BTreeSet;

use monitor_api::{
    ErrorReply, LearnRequest, ScanAccepted, ScanRequest, ScanStatus, UploadQuery, WatchRequest,
    stream::{Content, Discovered, Gap, Opened, StreamEvent, StreamItem},
};
use monitor_rules::Severity;
use serde::Serialize;
use serde_yaml_ng::Value;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn documented(spec: &Value, schema: &str) -> BTreeSet<String> {
    let properties = &spec["components"]["schemas"][schema]["properties"];
    let names: BTreeSet<String> = properties
        .as_mapping()
        .unwrap_or_else(|| panic!("docs/api.yaml has no schema {schema} with properties"))
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    names
}

/// The keys of the JSON objects the samples serialize to, together.
fn fields<T: Serialize>(samples: &[T]) -> BTreeSet<String> {
    samples
        .iter()
        .flat_map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

#[track_caller]
fn same(spec: &Value, schema: &str, fields: BTreeSet<String>) {
    assert_eq!(
        documented(spec, schema),
        fields,
        "docs/api.yaml's {schema} (left) and monitor-api's type (right) disagree"
    );
}

#[test]
fn the_request_schemas_are_the_request_types() {
    let spec = spec();
    same(
        &spec,
        "ScanRequest",
        fields(&[ScanRequest {
            linger_ms: Some(1),
            fail_on: Some(Severity::High),
            timeout_secs: Some(1),
            ..ScanRequest::new("/m.pkl")
        }]),
    );
    same(
        &spec,
        "WatchRequest",
        fields(&[WatchRequest {
            name: Some("n".into()),
            cgroup: Some("a".into()),
            pid: Some(2),
            exe: Some("/e".into()),
            kill_at: Some(Severity::High),
            kill_in_kernel: Some(vec![]),
            load_window_ms: Some(1),
            load_grace_ms: Some(1),
            policy: Some(String::new()),
            learn_secs: Some(1),
        }]),
    );
    same(
        &spec,
        "LearnRequest",
        fields(&[LearnRequest { seconds: 1 }]),
    );
    // The upload's settings are its query's parameters.
    let upload = &spec["paths"]["/v1/scans/upload"]["post"]["parameters"];
    let query: BTreeSet<String> = upload
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|p| p["in"].as_str() == Some("query"))
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let upload_fields = fields(&[UploadQuery {
        name: Some("m".into()),
        exercise: true,
        audit: true,
        linger_ms: Some(1),
    }]);
    assert_eq!(query, upload_fields);
}

#[test]
fn the_reply_and_stream_schemas_are_the_reply_types() {
    let spec = spec();
    same(
        &spec,
        "ScanAccepted",
        fields(&[ScanAccepted {
            id: "x".into(),
            status: ScanStatus::Queued,
        }]),
    );
    same(&spec, "Error", fields(&[ErrorReply::new("c", "m")]));
    let events = [
        StreamEvent::Finding(serde_json::json!({})),
        StreamEvent::Kill(serde_json::json!({})),
        StreamEvent::Discovered(Discovered {
            pid: 1,
            comm: String::new(),
            time_ns: 0,
            path: None,
            opened: Opened {
                content: Content::Model,
                what: String::new(),
            },
        }),
        StreamEvent::Gap(Gap {
            pid: 1,
            comm: String::new(),
            path: String::new(),
        }),
        StreamEvent::Learned(serde_json::Value::Null),
    ];
    let items: Vec<StreamItem> = events
        .iter()
        .flat_map(|e| {
            [
                StreamItem::scan("s", e.clone()),
                StreamItem::watch("w", e.clone()),
            ]
        })
        .collect();
    same(&spec, "StreamItem", fields(&items));
    let discovered = &spec["components"]["schemas"]["StreamItem"]["properties"]["discovered"];
    let names: BTreeSet<String> = discovered["properties"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let StreamEvent::Discovered(d) = &events[2] else {
        unreachable!()
    };
    assert_eq!(names, fields(std::slice::from_ref(d)));
}
