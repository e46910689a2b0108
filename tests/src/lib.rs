//! Helpers for the integration tests. The tests themselves are in tests/tests/.
//!
//! They load the real probes into the running kernel, so they need root.

use monitor_daemon::{
    probes::{ProbeConfig, Probes},
    run::{RunSpec, RunSummary},
    trace::{Event, SyscallEvent, What},
};

/// Runs `script` with bash under watch; returns every event and the summary.
pub async fn trace_bash(script: &str, config: &ProbeConfig) -> (Vec<Event>, RunSummary) {
    assert!(
        is_root(),
        "integration tests load eBPF programs: run them as root"
    );
    let spec = RunSpec {
        program: "bash".into(),
        args: vec!["-c".into(), script.into()],
        cwd: None,
    };
    let mut events = Vec::new();
    let mut probes = Probes::load(config).expect("loading the probes");
    let summary = monitor_daemon::run::run(&spec, &mut probes, |e| events.push(e.clone()))
        .await
        .expect("run under watch");
    (events, summary)
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The syscall events named `name`.
pub fn syscalls<'a>(
    events: &'a [Event],
    name: &'a str,
) -> impl Iterator<Item = (&'a Event, &'a SyscallEvent)> {
    events.iter().filter_map(move |e| match &e.what {
        What::Syscall(sc) if sc.name == name => Some((e, sc)),
        _ => None,
    })
}

/// The first `name` syscall whose argument `arg` is the string `value`.
pub fn find_with_str<'a>(
    events: &'a [Event],
    name: &'a str,
    arg: &str,
    value: &str,
) -> Option<(&'a Event, &'a SyscallEvent)> {
    syscalls(events, name).find(|(_, sc)| sc.arg(arg).and_then(|v| v.as_str()) == Some(value))
}
