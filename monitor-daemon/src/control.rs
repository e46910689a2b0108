//! A job's control channel: a pipe on which the program under watch (the scan harness) says
//! which phase it is in, with the monotonic time the kernel stamps events with, and what went
//! wrong if something did.
//!
//! Ordering is what makes the phases trustworthy: the harness writes a phase marker *before*
//! it starts the phase, so every record of that phase in the ring buffer was written after the
//! marker. Draining the pipe before judging a batch of records is therefore enough to know the
//! phase of every event in the batch.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;

use crate::rules::Phase;

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

/// Reads control messages and keeps the phase timeline.
#[derive(Debug)]
pub struct ControlReader {
    rx: pipe::Receiver,
    partial: Vec<u8>,
    timeline: Timeline,
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
            timeline: Timeline::default(),
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

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Lines dropped unread once the job had sent its share (see [`MAX_MESSAGES`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Reads whatever is in the pipe now, without waiting, appending complete messages to
    /// `out` and recording phase changes in the timeline.
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
                Ok(msg) => {
                    if let ControlMessage::Phase { phase, t } = msg {
                        self.timeline.enter(phase, t);
                    }
                    out.push(msg);
                }
                Err(_) => self.garbled += 1,
            }
        }
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// When each phase began, in the kernel's monotonic time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    starts: Vec<(Phase, u64)>,
}

impl Timeline {
    /// Records that `phase` began at `t`. Phases only move forward (setup, load, exercise,
    /// teardown) and in time: the artifact's code runs in the harness's process and can write
    /// to the pipe too, so a marker that would move back (to the unjudged set-up, say) or
    /// back in time is ignored rather than trusted.
    pub fn enter(&mut self, phase: Phase, t: u64) {
        let forward = self
            .starts
            .last()
            .is_none_or(|&(last, start)| t >= start && rank(phase) > rank(last));
        if forward {
            self.starts.push((phase, t));
        }
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

fn rank(phase: Phase) -> u8 {
    match phase {
        Phase::Setup => 0,
        Phase::Load => 1,
        Phase::Exercise => 2,
        Phase::Teardown => 3,
        Phase::Run => 4,
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
        assert_eq!(reader.timeline().phase_at(8), Phase::Load);
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
