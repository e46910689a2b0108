//! Reads the ring buffer: waits for the kernel to signal data through epoll (tokio's
//! `AsyncFd`), then drains every available record.
//!
//! The kernel programs do not wake the reader for every record (that cost a watched process
//! more than the capture itself): they wake it for the first record after a quiet spell and
//! when much is pending, and commit the rest silently, for at most
//! [`WAKEUP_INTERVAL_NS`](monitor_common::event::WAKEUP_INTERVAL_NS) after a wake-up. So after
//! every batch it finds, the reader looks once more [`READER_RECHECK_NS`] later, and again as
//! long as it finds records; an idle reader sleeps until the kernel wakes it. A record waits at
//! most about that long (2 ms) to be read.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use monitor_common::event::READER_RECHECK_NS;
use tokio::{io::unix::AsyncFd, time::Instant};

use crate::decode::{DecodeError, Decoder, Record};

/// How long after finding records the reader looks again, unwoken.
const RECHECK: Duration = Duration::from_nanos(READER_RECHECK_NS);

/// The single consumer of the `EVENTS` ring buffer.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    malformed: u64,
    last_error: Option<DecodeError>,
    /// When to look again without being woken: set while records may be committed silently.
    recheck_at: Option<Instant>,
}

impl Reader {
    /// The ring buffer, deregistered from tokio.
    pub fn into_ring(self) -> RingBuf<MapData> {
        self.ring.into_inner()
    }

    /// Must be called inside a tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its fd and closes it only when dropped, which happens
        // after AsyncFd deregisters it (AsyncFd owns the RingBuf).
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        Ok(Reader {
            ring,
            decoder: Decoder::default(),
            malformed: 0,
            last_error: None,
            recheck_at: None,
        })
    }

    /// Waits until at least one record is available, then decodes every available record
    /// into `out`. Returns how many were added.
    pub async fn read(&mut self, out: &mut Vec<Record>) -> io::Result<usize> {
        loop {
            // Woken by the kernel (`Some`), or the recheck after a batch came due (`None`).
            let woken = match self.recheck_at {
                Some(deadline) => tokio::select! {
                    guard = self.ring.readable_mut() => Some(guard?),
                    () = tokio::time::sleep_until(deadline) => None,
                },
                None => Some(self.ring.readable_mut().await?),
            };
            let n = match woken {
                Some(mut guard) => {
                    let n = drain(
                        guard.get_inner_mut(),
                        &self.decoder,
                        out,
                        &mut self.malformed,
                        &mut self.last_error,
                    );
                    guard.clear_ready();
                    n
                }
                None => {
                    let n = self.drain_now(out);
                    if n == 0 {
                        // Nothing was committed silently since: sleep until woken.
                        self.recheck_at = None;
                    }
                    n
                }
            };
            if n > 0 {
                self.found_records();
                return Ok(n);
            }
        }
    }

    /// Decodes every record available now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Record>) -> usize {
        let n = self.drain_now(out);
        if n > 0 {
            self.found_records();
        }
        n
    }

    fn drain_now(&mut self, out: &mut Vec<Record>) -> usize {
        drain(
            self.ring.get_mut(),
            &self.decoder,
            out,
            &mut self.malformed,
            &mut self.last_error,
        )
    }

    /// Records were found: more may follow without a wake-up, so look again soon. (Only a
    /// look that finds nothing ends the rechecks; an empty wake-up leaves them running.)
    fn found_records(&mut self) {
        self.recheck_at = Some(Instant::now() + RECHECK);
    }

    /// Records that could not be decoded (each also logged once as a warning).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Hands each available raw record to `f` without decoding (for benchmarks of the decoder
    /// itself). Returns how many there were.
    pub fn drain_raw(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        if n > 0 {
            self.found_records();
        }
        n
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &Decoder,
    out: &mut Vec<Record>,
    malformed: &mut u64,
    last_error: &mut Option<DecodeError>,
) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match decoder.decode(&item) {
            Ok(record) => {
                out.push(record);
                n += 1;
            }
            Err(e) => {
                *malformed += 1;
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "malformed ring buffer record");
                    *last_error = Some(e);
                }
            }
        }
    }
    n
}
