//! A job's control channel: a pipe on which the program under watch (the scan harness) says
//! which phase it is in, with the monotonic time the kernel stamps events with, and what went
//! wrong if something did.
//!
//! Ordering is what makes the phases trustworthy: the harness writes a phase marker *before*
//! it starts the phase, so every record of that phase in the ring buffer was written after the
//! marker. Draining the pipe before judging a batch of records is therefore enough to know the
//! phase of every event in the batch.
//!
//! Who wrote a marker is the other half. A job with a [`Gate`] runs only trusted code (the
//! interpreter, the frameworks' imports) until monitor opens the gate, and says so with
//! [`ControlMessage::Ready`]: what it wrote until then is its own. From the gate on, the
//! artifact's code may run in the same process, and can write to the pipe as the harness can.
//! So the load phase begins when monitor opens the gate, by monitor's clock, and everything
//! the job writes afterwards is a claim: phase markers are checked against the one order the
//! harness writes them in, each at most once, and one out of that order is not followed but
//! kept as a [`Violation`] (a finding: the artifact forged it, or silenced the harness). The
//! rules that judge by phase cover every phase after the gate alike, so a forged marker that
//! happens to be in order relabels events and changes no verdict.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;

use monitor_rules::Phase;

/// The longest line accepted; the rest of a longer one is dropped (the job does not get to
/// make us buffer without bound).
const MAX_LINE: usize = 64 * 1024;

/// A job's messages read at most, in number and in bytes; later lines are read (the writer
/// never blocks) but neither parsed nor kept, only counted ([`ControlReader::dropped`]). The
/// harness itself sends at most a few thousand (its audit hook stops at 500 per event kind);
/// a payload that writes to the pipe gets no further, so it can cost the daemon neither memory
/// nor time, and the job's report says that messages were dropped.
pub const MAX_MESSAGES: u64 = 20_000;
pub const MAX_MESSAGE_BYTES: u64 = 8 << 20;

/// One line of the control protocol: a JSON object tagged by `kind`, with `t`, the
/// CLOCK_MONOTONIC time in nanoseconds when the harness wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The job enters `phase`.
    Phase { phase: Phase, t: u64 },
    /// The artifact was loaded into an object of this Python type.
    Loaded {
        #[serde(rename = "type")]
        type_name: String,
        t: u64,
    },
    /// A step failed. `error` is the exception's type, `missing` names an uninstalled module.
    Error {
        phase: Phase,
        error: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missing: Option<String>,
        t: u64,
    },
    /// Interpreter-level evidence from a Python audit hook (`--audit`).
    Audit {
        event: String,
        args: String,
        /// What rules match on (see `AuditRecord::subject`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        #[serde(default)]
        pid: u32,
        t: u64,
    },
    /// Anything else the harness wants in the report.
    Note { message: String, t: u64 },
    /// The job waits at its gate: everything it does before is trusted code (a job with a
    /// [`Gate`] and a control pipe writes this last before the gate, which opens only then).
    Ready { t: u64 },
}

/// A pipe whose write end is handed to the job.
#[derive(Debug)]
pub struct ControlPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl ControlPipe {
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(ControlPipe { read, write })
    }

    /// The descriptor number the job writes to: pass it on the job's command line.
    pub fn job_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Splits into the reader and the write end, which the spawner keeps open across exec in
    /// the child only (see [`inherit_in_child`]) and closes in the parent after the spawn.
    pub fn split(self) -> io::Result<(ControlReader, OwnedFd)> {
        Ok((ControlReader::new(self.read)?, self.write))
    }
}

/// A pipe the job waits on before it touches what it was given: the harness starts, and
/// imports its frameworks, while the probes that are to watch the load may still be loading,
/// and goes on to load the artifact only once a byte arrives. End of file (monitor gave up or
/// died) means "do not load".
#[derive(Debug)]
pub struct Gate {
    read: OwnedFd,
    write: OwnedFd,
}

impl Gate {
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Gate { read, write })
    }

    /// The descriptor number the job waits on: pass it on the job's command line.
    pub fn job_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The read end, for the spawner to keep open across exec in the child only (see
    /// [`inherit_in_child`]) and close after the spawn; and the end that opens the gate.
    pub fn split(self) -> (OwnedFd, GateOpener) {
        (self.read, GateOpener(self.write))
    }
}

/// Lets the job through its [`Gate`]. Dropped unused, it closes the gate for good.
#[derive(Debug)]
pub struct GateOpener(OwnedFd);

impl GateOpener {
    pub fn open(self) -> io::Result<()> {
        match nix::unistd::write(&self.0, b"1") {
            Ok(1) => Ok(()),
            Ok(_) => Err(io::Error::other("short write to the job's gate")),
            // Nobody holds the read end: the job ended before its gate (its imports failed,
            // say), and its own report says why.
            Err(nix::errno::Errno::EPIPE) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Clears close-on-exec on `fd`, between fork and exec, so that only this child inherits it.
pub fn inherit_in_child(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl is async-signal-safe and touches only the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads control messages.
#[derive(Debug)]
pub struct ControlReader {
    rx: pipe::Receiver,
    partial: Vec<u8>,
    eof: bool,
    /// Lines that were not valid messages.
    pub garbled: u64,
    /// Lines read past [`MAX_MESSAGES`] or [`MAX_MESSAGE_BYTES`], not parsed.
    dropped: u64,
    /// Lines parsed, and their bytes.
    read: u64,
    read_bytes: u64,
}

impl ControlReader {
    fn new(read: OwnedFd) -> io::Result<Self> {
        Ok(ControlReader {
            rx: pipe::Receiver::from_owned_fd(read)?,
            partial: Vec::new(),
            eof: false,
            garbled: 0,
            dropped: 0,
            read: 0,
            read_bytes: 0,
        })
    }

    /// Waits until there is something to read (or the writers are gone).
    pub async fn readable(&self) -> io::Result<()> {
        self.rx.readable().await
    }

    /// Whether every writer has closed the pipe.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Lines dropped unread once the job had sent its share (see [`MAX_MESSAGES`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Reads whatever is in the pipe now, without waiting, appending complete messages to
    /// `out`.
    pub fn drain_now(&mut self, out: &mut Vec<ControlMessage>) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while !self.eof {
            match self.rx.try_read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.take_lines(&buf[..n], out),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn take_lines(&mut self, mut bytes: &[u8], out: &mut Vec<ControlMessage>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if self.partial.len() < MAX_LINE {
                let room = MAX_LINE - self.partial.len();
                self.partial.extend_from_slice(&bytes[..end.min(room)]);
            }
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.partial);
            if self.read >= MAX_MESSAGES
                || self.read_bytes.saturating_add(line.len() as u64) > MAX_MESSAGE_BYTES
            {
                self.dropped += 1;
                continue;
            }
            self.read += 1;
            self.read_bytes += line.len() as u64;
            match serde_json::from_slice::<ControlMessage>(&line) {
                Ok(msg) => out.push(msg),
                Err(_) => self.garbled += 1,
            }
        }
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the kernel's records
/// (`bpf_ktime_get_ns`) and of the harness's markers.
pub fn now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A message from the job that broke the protocol: a phase marker out of order or repeated,
/// a second `loaded`, a `ready` after the gate. Evidence that something besides the harness
/// wrote to the pipe, or that the harness was kept from writing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// What was wrong, in words.
    pub what: String,
    /// The message as received.
    pub message: String,
    /// When monitor read it (CLOCK_MONOTONIC ns): the job's own `t` is its claim.
    pub read_ns: u64,
}

/// Where the harness is in the one order it reports in, after its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// The gate is open; its `load` marker comes next.
    Gate,
    Loading,
    /// The load ended (`loaded`, or an error of the load phase).
    Loaded,
    Exercising,
    Lingering,
    TornDown,
}

/// When each phase of a job began, in the kernel's monotonic time, and what it said out of
/// order.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    starts: Vec<(Phase, u64)>,
    /// `None` until the job's gate opens (or always, for a job without one).
    step: Option<Step>,
    violations: Vec<Violation>,
}

impl Timeline {
    /// Records that `phase` began at `t`, as a job without a gate says it: phases only move
    /// forward and in time, anything else is ignored.
    pub fn enter(&mut self, phase: Phase, t: u64) {
        let forward = self
            .starts
            .last()
            .is_none_or(|&(last, start)| t >= start && rank(phase) > rank(last));
        if forward {
            self.starts.push((phase, t));
        }
    }

    /// monitor opened the job's gate at `t`: the load phase begins, by monitor's own clock,
    /// and what the job says from now on is checked (see [`Timeline::message`]).
    pub fn gate_opened(&mut self, t: u64) {
        if self.step.is_none() {
            self.starts.push((Phase::Load, t));
            self.step = Some(Step::Gate);
        }
    }

    /// Takes message `msg` of a gated job, read at `read_ns`. Before the gate only the set-up
    /// is reported (trusted); after it, each message must be the next the harness writes, or
    /// it is a [`Violation`] and changes nothing.
    pub fn message(&mut self, msg: &ControlMessage, read_ns: u64) {
        let Some(step) = self.step else {
            match msg {
                ControlMessage::Phase {
                    phase: Phase::Setup,
                    t,
                } if self.starts.is_empty() => self.starts.push((Phase::Setup, (*t).min(read_ns))),
                ControlMessage::Phase { .. } => {
                    self.violation("a phase marker before the gate opened", msg, read_ns)
                }
                _ => {}
            }
            return;
        };
        let next = match msg {
            ControlMessage::Phase { phase, .. } => match (step, phase) {
                (Step::Gate, Phase::Load) => Some(Step::Loading),
                (Step::Loaded, Phase::Exercise) => Some(Step::Exercising),
                (Step::Loaded | Step::Exercising, Phase::Linger) => Some(Step::Lingering),
                (Step::Loaded | Step::Exercising | Step::Lingering, Phase::Teardown) => {
                    Some(Step::TornDown)
                }
                _ => None,
            },
            ControlMessage::Loaded { .. } => (step == Step::Loading).then_some(Step::Loaded),
            ControlMessage::Error { phase, .. } => match (step, phase) {
                (Step::Loading, Phase::Load) => Some(Step::Loaded),
                (Step::Exercising, Phase::Exercise) => Some(Step::Exercising),
                _ => None,
            },
            ControlMessage::Ready { .. } => None,
            ControlMessage::Audit { .. } | ControlMessage::Note { .. } => Some(step),
        };
        let Some(next) = next else {
            let what = match msg {
                ControlMessage::Ready { .. } => "`ready` after the gate opened".to_string(),
                ControlMessage::Phase { phase, .. } => {
                    format!("phase `{phase}` out of order ({})", step.describe())
                }
                ControlMessage::Loaded { .. } => {
                    format!("`loaded` out of order ({})", step.describe())
                }
                _ => format!("an error report out of order ({})", step.describe()),
            };
            self.violation(&what, msg, read_ns);
            return;
        };
        self.step = Some(next);
        if let ControlMessage::Phase { phase, t } = msg
            && *phase != Phase::Load
        {
            // The job's clock is its claim: kept between the last phase's start and now.
            let last = self.starts.last().map_or(0, |&(_, start)| start);
            self.starts
                .push((*phase, (*t).clamp(last, read_ns.max(last))));
        }
    }

    fn violation(&mut self, what: &str, msg: &ControlMessage, read_ns: u64) {
        self.violations.push(Violation {
            what: what.to_string(),
            message: serde_json::to_string(msg).unwrap_or_default(),
            read_ns,
        });
    }

    /// The messages that broke the protocol.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The phase at time `t`: everything before the first marker is set-up (the interpreter
    /// starting, before the harness could say anything).
    pub fn phase_at(&self, t: u64) -> Phase {
        self.starts
            .iter()
            .rev()
            .find(|&&(_, start)| start <= t)
            .map_or(Phase::Setup, |&(phase, _)| phase)
    }

    /// The phases in the order they began, with their start times.
    pub fn starts(&self) -> &[(Phase, u64)] {
        &self.starts
    }

    /// The last phase the job reached.
    pub fn last(&self) -> Option<Phase> {
        self.starts.last().map(|&(p, _)| p)
    }
}

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::Gate => "the load marker was due",
            Step::Loading => "the load was under way",
            Step::Loaded => "the load had ended",
            Step::Exercising => "the model was being exercised",
            Step::Lingering => "the loader was lingering",
            Step::TornDown => "the teardown had begun",
        }
    }
}

fn rank(phase: Phase) -> u8 {
    match phase {
        Phase::Setup => 0,
        Phase::Load => 1,
        Phase::Exercise => 2,
        Phase::Linger => 3,
        Phase::Teardown => 4,
        Phase::Run => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_lets_its_job_through_with_one_byte_or_closes_for_good() {
        let (job, opener) = Gate::new().unwrap().split();
        opener.open().unwrap();
        let mut byte = [0u8; 2];
        assert_eq!(nix::unistd::read(&job, &mut byte).unwrap(), 1);
        assert_eq!(&byte[..1], b"1");
        // The opener is gone: end of file, never a second byte.
        assert_eq!(nix::unistd::read(&job, &mut byte).unwrap(), 0);

        let (job, opener) = Gate::new().unwrap().split();
        drop(opener);
        assert_eq!(
            nix::unistd::read(&job, &mut byte).unwrap(),
            0,
            "dropped: closed"
        );
    }

    #[test]
    fn opening_the_gate_of_a_job_that_is_gone_is_no_error() {
        let (job, opener) = Gate::new().unwrap().split();
        drop(job);
        opener
            .open()
            .expect("nobody to let through is not a failure");
    }

    #[test]
    fn the_phase_of_a_time_is_the_last_phase_begun_before_it() {
        let mut t = Timeline::default();
        assert_eq!(t.phase_at(5), Phase::Setup);
        t.enter(Phase::Setup, 10);
        t.enter(Phase::Load, 20);
        t.enter(Phase::Teardown, 30);
        t.enter(Phase::Exercise, 25); // back in time: ignored
        t.enter(Phase::Setup, 40); // back to the unjudged phase: ignored
        assert_eq!(t.phase_at(19), Phase::Setup);
        assert_eq!(t.phase_at(20), Phase::Load);
        assert_eq!(t.phase_at(29), Phase::Load);
        assert_eq!(t.phase_at(31), Phase::Teardown);
        assert_eq!(t.last(), Some(Phase::Teardown));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn messages_split_across_reads_are_reassembled() {
        let pipe = ControlPipe::new().unwrap();
        let (mut reader, write) = pipe.split().unwrap();
        let mut w = std::fs::File::from(write);
        use std::io::Write as _;
        w.write_all(br#"{"kind":"phase","phase":"load","t":7}"#)
            .unwrap();
        let mut out = Vec::new();
        reader.readable().await.unwrap();
        reader.drain_now(&mut out).unwrap();
        assert!(out.is_empty(), "no newline yet");
        w.write_all(b"\nnot json\n{\"kind\":\"loaded\",\"type\":\"builtins.dict\",\"t\":9}\n")
            .unwrap();
        drop(w);
        reader.readable().await.unwrap();
        reader.drain_now(&mut out).unwrap();
        assert_eq!(
            out,
            vec![
                ControlMessage::Phase {
                    phase: Phase::Load,
                    t: 7
                },
                ControlMessage::Loaded {
                    type_name: "builtins.dict".into(),
                    t: 9
                }
            ]
        );
        assert_eq!(reader.garbled, 1);
        assert!(reader.at_eof());
    }

    fn phase(phase: Phase, t: u64) -> ControlMessage {
        ControlMessage::Phase { phase, t }
    }

    fn loaded(t: u64) -> ControlMessage {
        ControlMessage::Loaded {
            type_name: "builtins.dict".into(),
            t,
        }
    }

    #[test]
    fn the_load_begins_at_the_gate_and_markers_after_it_keep_the_harness_order() {
        let mut t = Timeline::default();
        t.message(&phase(Phase::Setup, 10), 11);
        t.message(&ControlMessage::Ready { t: 12 }, 13);
        t.gate_opened(20);
        assert_eq!(t.phase_at(19), Phase::Setup);
        assert_eq!(
            t.phase_at(20),
            Phase::Load,
            "monitor's clock, not the job's"
        );
        for (msg, read) in [
            (phase(Phase::Load, 21), 22),
            (loaded(30), 31),
            (phase(Phase::Exercise, 40), 41),
            (phase(Phase::Linger, 50), 51),
            (phase(Phase::Teardown, 60), 61),
        ] {
            t.message(&msg, read);
        }
        assert!(t.violations().is_empty(), "{:?}", t.violations());
        let phases: Vec<Phase> = t.starts().iter().map(|&(p, _)| p).collect();
        assert_eq!(
            phases,
            [
                Phase::Setup,
                Phase::Load,
                Phase::Exercise,
                Phase::Linger,
                Phase::Teardown
            ]
        );
        assert_eq!(t.phase_at(45), Phase::Exercise);
    }

    #[test]
    fn a_forged_marker_is_a_violation_and_so_is_the_genuine_one_it_displaced() {
        let mut t = Timeline::default();
        t.message(&phase(Phase::Setup, 10), 11);
        t.gate_opened(20);
        t.message(&phase(Phase::Load, 21), 22);
        // The payload declares the teardown during the load: out of order, not followed.
        t.message(&phase(Phase::Teardown, 25), 26);
        assert_eq!(t.phase_at(30), Phase::Load);
        // It forges the rest in order: followed (labels only), and the harness's own markers
        // are then out of order.
        t.message(&loaded(27), 28);
        t.message(&phase(Phase::Teardown, 29), 30);
        t.message(&loaded(40), 41);
        t.message(&phase(Phase::Teardown, 50), 51);
        let what: Vec<&str> = t.violations().iter().map(|v| v.what.as_str()).collect();
        assert_eq!(what.len(), 3, "{what:?}");
        assert!(what[0].contains("teardown"), "{what:?}");
        assert!(what[1].contains("loaded"), "{what:?}");
        assert_eq!(t.violations()[0].read_ns, 26);
        // Back to the unjudged set-up, a `ready` after the gate, a `run`: violations too.
        t.message(&phase(Phase::Setup, 60), 61);
        t.message(&ControlMessage::Ready { t: 62 }, 63);
        t.message(&phase(Phase::Run, 64), 65);
        assert_eq!(t.violations().len(), 6);
        assert_eq!(t.last(), Some(Phase::Teardown));
    }

    #[test]
    fn a_claimed_time_stays_between_the_last_start_and_now() {
        let mut t = Timeline::default();
        t.gate_opened(100);
        t.message(&phase(Phase::Load, 1), 101);
        t.message(&loaded(102), 103);
        // In the past (before the gate), and in the future: clamped.
        t.message(&phase(Phase::Linger, 5), 110);
        t.message(&phase(Phase::Teardown, u64::MAX), 120);
        assert_eq!(
            t.starts(),
            [
                (Phase::Load, 100),
                (Phase::Linger, 100),
                (Phase::Teardown, 120)
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_job_flooding_its_pipe_is_read_to_the_end_but_kept_to_its_share() {
        let pipe = ControlPipe::new().unwrap();
        let (mut reader, write) = pipe.split().unwrap();
        let line = format!(
            "{{\"kind\":\"note\",\"message\":\"{}\",\"t\":1}}\n",
            "x".repeat(60_000)
        );
        let lines = 400u64;
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            let mut w = std::fs::File::from(write);
            for _ in 0..lines {
                w.write_all(line.as_bytes()).unwrap();
            }
        });
        let mut out = Vec::new();
        while !reader.at_eof() {
            reader.readable().await.unwrap();
            reader.drain_now(&mut out).unwrap();
            out.clear();
        }
        writer.join().unwrap();
        let kept = MAX_MESSAGE_BYTES / 60_030;
        assert!(reader.dropped() >= lines - kept - 1, "{}", reader.dropped());
        assert!(reader.dropped() < lines);
    }
}
