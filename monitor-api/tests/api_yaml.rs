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

/// The fields of the object at `pointer` (a JSON pointer into the component schemas).
fn documented_at(spec: &Value, schema: &str, path: &[&str]) -> BTreeSet<String> {
    let mut node = &spec["components"]["schemas"][schema];
    for key in path {
        node = &node["properties"][*key];
    }
    node["properties"]
        .as_mapping()
        .unwrap_or_else(|| {
            panic!(
                "docs/api.yaml's {schema}.{} has no properties",
                path.join(".")
            )
        })
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_status_scan_and_watch_schemas_are_their_types() {
    use monitor_api::{
        ScanRecord, Status, Watch, WatchState,
        scans::StoredRequest,
        status::{
            CallerInfo, KernelCounters, LoaderEnv, ProbesStatus, Role, RunningScan, SyscallHooks,
            TamperingSeen,
        },
        watches::{Ended, Learning, Policy, Selector, WatchSpec, WatchSummary},
    };
    let spec = spec();
    let status = Status {
        version: "v".into(),
        kernel: "k".into(),
        caller: CallerInfo {
            uid: 0,
            role: Some(Role::Admin),
        },
        probes: ProbesStatus {
            attached: 1,
            syscall_hooks: SyscallHooks {
                state: monitor_engine::probes::HooksState::Attached,
                held_by: 1,
                detach_after_idle_ms: Some(1),
                why: "w".into(),
            },
            missing: vec![],
            tampering: vec![],
            checks_that_found_tampering: 0,
            last_tampering: Some(TamperingSeen {
                at: 1,
                problems: vec![],
            }),
            reattached: 0,
            counters: KernelCounters::Read(Default::default()),
            malformed_records: 0,
            unrouted_records: 0,
            subscriptions: 0,
        },
        queue_depth: 0,
        max_concurrent_scans: 1,
        running: vec![RunningScan {
            id: "s".into(),
            phase: monitor_rules::Phase::Load,
        }],
        watches_active: 0,
        loader_env: LoaderEnv {
            python: "/p".into(),
            present: true,
        },
        rules: 1,
    };
    same(&spec, "Status", fields(std::slice::from_ref(&status)));
    assert_eq!(
        documented_at(&spec, "Status", &["probes"]),
        fields(std::slice::from_ref(&status.probes)),
        "docs/api.yaml's Status.probes and monitor-api's ProbesStatus disagree"
    );
    assert_eq!(
        documented_at(&spec, "Status", &["probes", "syscall_hooks"]),
        fields(std::slice::from_ref(&status.probes.syscall_hooks)),
    );
    let read_back: Status = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
    assert_eq!(read_back, status);

    let scan = ScanRecord {
        id: "s".into(),
        status: ScanStatus::Running,
        request: StoredRequest {
            asked: ScanRequest::new("/m.pkl"),
            uploaded: false,
            owner: None,
        },
        verdict: Some("clean".into()),
        format: Some("pickle".into()),
        exit_code: Some(0),
        created_at: 1,
        finished_at: Some(2),
        report: Some(serde_json::json!({})),
        phase: Some(monitor_rules::Phase::Load),
    };
    same(&spec, "Scan", fields(std::slice::from_ref(&scan)));

    let watch = Watch {
        id: "w".into(),
        spec: WatchSpec {
            name: Some("n".into()),
            selector: Selector::Cgroup("/sys/fs/cgroup/a".into()),
            policy: Policy {
                kill_at: Some(Severity::High),
                kill_in_kernel: vec![],
                document: Some(String::new()),
            },
            load_window_ms: 1,
            load_grace_ms: 1,
            learning: Some(Learning {
                interrupted: true,
                ..Learning::starting_now(1)
            }),
        },
        created_at: 1,
        owner_uid: Some(0),
        builtin: false,
        state: WatchState::Ended,
        events: 1,
        findings: 1,
        kills: 1,
        discovered: 1,
        released: 1,
        gaps: 1,
        error: Some(String::new()),
        summary: Some(WatchSummary {
            ended: Ended::Stopped,
            events: 0,
            findings: 0,
            kills: 0,
            processes: 0,
            released: 0,
            gaps: 0,
            kernel_records: 0,
            dropped: 0,
            complete: true,
        }),
        // GET /v1/watches/{id}'s addition, documented there.
        recent_kills: None,
    };
    same(&spec, "Watch", fields(std::slice::from_ref(&watch)));
    assert_eq!(
        documented_at(&spec, "Watch", &["policy"]),
        fields(std::slice::from_ref(&watch.spec.policy)),
    );
    assert_eq!(
        documented_at(&spec, "Watch", &["learning"]),
        fields(std::slice::from_ref(watch.spec.learning.as_ref().unwrap())),
    );
    let read_back: Watch = serde_json::from_value(serde_json::to_value(&watch).unwrap()).unwrap();
    assert_eq!(read_back.spec.selector, watch.spec.selector);
    assert_eq!(read_back.summary, watch.summary);
}
