//! Reads the ring buffer: waits for the kernel to signal data through epoll (tokio's
//! `AsyncFd`), then drains every available record. No polling with sleeps.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::decode::{DecodeError, Decoder, Record};

/// The single consumer of the `EVENTS` ring buffer.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    malformed: u64,
    last_error: Option<DecodeError>,
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
        })
    }

    /// Waits until at least one record is available, then decodes every available record
    /// into `out`. Returns how many were added.
    pub async fn read(&mut self, out: &mut Vec<Record>) -> io::Result<usize> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let n = drain(
                ring,
                &self.decoder,
                out,
                &mut self.malformed,
                &mut self.last_error,
            );
            guard.clear_ready();
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Decodes every record available now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Record>) -> usize {
        drain(
            self.ring.get_mut(),
            &self.decoder,
            out,
            &mut self.malformed,
            &mut self.last_error,
        )
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
