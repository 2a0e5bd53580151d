//! A connection's ordered outbound queue: the only path from the server to a socket.
//!
//! A push frame is one [`Shared`] allocation whose reference every subscriber's queue holds. The
//! loop is one thread, so sharing costs a plain increment rather than an atomic one, and a queue
//! entry is one pointer: in a flood, where a subscriber gets hundreds of pushes per iteration,
//! storing the entries is most of the server's own work (see BENCHMARKS.md). The queue counts
//! its bytes against a cap the caller enforces, and writes with one vectored write per call, so
//! the frames of several publishes leave in one syscall.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

pub use crate::wire::frame::Shared;

/// At most this many frames go into one vectored write (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// The ring a burst starts with: a flood of small pushes grows it a few times, not ten.
const RING_START: usize = 32;
/// What a queued frame costs beyond its bytes: its ring slot, and for a reply of the
/// connection's own its allocation (two small heap blocks). Counted against the cap for every
/// frame, so many tiny frames cannot hold more memory than the cap says.
pub const FRAME_OVERHEAD: usize = 40;

/// One queued frame: a thin reference (8 bytes per queue entry), so a flood that queues
/// hundreds of frames per subscriber per iteration touches little memory. A push shares one
/// allocation between every queue; a reply of the connection's own is counted once.
#[derive(Clone, Debug)]
pub struct Chunk(Shared);

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Shared> for Chunk {
    fn from(frame: Shared) -> Self {
        Chunk(frame)
    }
}

impl From<Vec<u8>> for Chunk {
    fn from(bytes: Vec<u8>) -> Self {
        Chunk(Shared::new(bytes.into_boxed_slice()))
    }
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Self {
        // Without a copy when the bytes are a whole unique allocation (most replies are).
        Chunk::from(Vec::from(bytes))
    }
}

#[derive(Debug, Default)]
pub struct OutQueue {
    /// The oldest frame. Kept inline so the common case, one pending frame, allocates nothing
    /// (an idle connection holds no ring buffer). Invariant: `head` is `None` only when `rest` is
    /// empty.
    head: Option<Chunk>,
    /// Boxed: allocated only while more than one frame waits (a burst), so an idle connection
    /// carries one pointer for it instead of a 32-byte ring header.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Chunk>>>,
    /// Bytes not yet written (the front frame may be partly written).
    queued: usize,
    /// Bytes of the front frame already written: it must go out whole or the stream breaks.
    front_written: usize,
    /// The newest frame is a Pong that has not started to go out: the next Pong replaces it
    /// (RFC 6455 §5.5.3 lets a server answer only the most recent Ping), so a Ping flood
    /// queues one Pong, not one per Ping.
    pong_at_tail: bool,
}

impl OutQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, frame: impl Into<Chunk>) {
        let frame = frame.into();
        let len = frame.bytes().len();
        if len == 0 {
            return;
        }
        self.pong_at_tail = false;
        self.queued += len;
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest
                .get_or_insert_with(|| Box::new(VecDeque::with_capacity(RING_START)))
                .push_back(frame);
        }
    }

    /// Queues a Pong frame, replacing a queued Pong that has not started to go out.
    pub fn push_pong(&mut self, pong: &[u8]) {
        // Only the front frame can be partly written.
        let tail_untouched = self.frame_count() > 1 || self.front_written == 0;
        let tail = self
            .rest
            .as_mut()
            .and_then(|rest| rest.back_mut())
            .or(self.head.as_mut());
        if let (true, true, Some(tail)) = (self.pong_at_tail, tail_untouched, tail) {
            self.queued = self.queued - tail.bytes().len() + pong.len();
            *tail = Chunk::from(pong.to_vec());
            return;
        }
        self.push(pong.to_vec());
        self.pong_at_tail = true;
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Unwritten bytes.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// What the queue holds, counted against the outbound cap: the unwritten bytes plus
    /// [`FRAME_OVERHEAD`] per frame.
    pub fn charged_bytes(&self) -> usize {
        self.queued + self.frame_count() * FRAME_OVERHEAD
    }

    /// The queue is empty but keeps the ring of its last burst (for the next one: a flood
    /// refills it every iteration). The caller releases it with [`OutQueue::release_spare_ring`]
    /// once bursts stop, so an idle connection holds no ring.
    pub fn has_spare_ring(&self) -> bool {
        self.head.is_none() && self.rest.is_some()
    }

    pub fn release_spare_ring(&mut self) {
        if self.head.is_none() {
            self.rest = None;
        }
    }

    fn frame_count(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    /// The unwritten bytes of each frame, in order.
    fn pending(&self) -> impl Iterator<Item = &[u8]> {
        let front = self.head.iter().map(|f| &f.bytes()[self.front_written..]);
        front.chain(
            self.rest
                .iter()
                .flat_map(|rest| rest.iter().map(Chunk::bytes)),
        )
    }

    /// Drops every frame that has not started to go out, keeping a partly written front frame so
    /// the byte stream stays well formed. Returns how many frames were dropped.
    pub fn discard_unsent(&mut self) -> usize {
        let queued = self.rest.as_ref().map_or(0, |rest| rest.len());
        let partial = self.front_written > 0;
        let dropped = queued + usize::from(self.head.is_some() && !partial);
        self.rest = None;
        self.pong_at_tail = false;
        if !partial {
            self.head = None;
        }
        self.queued = self
            .head
            .as_ref()
            .map_or(0, |f| f.bytes().len() - self.front_written);
        dropped
    }

    /// Writes as much as the writer takes, in vectored writes, until the queue is empty or the
    /// writer would block. Returns the number of bytes written; `WouldBlock` is not an error.
    pub fn write_to<W: Write>(&mut self, writer: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while let Some(head) = &self.head {
            let attempt = if self.rest.as_ref().is_none_or(|rest| rest.is_empty()) {
                // One frame (the common case of a fan-out): a plain write, no iovec array.
                writer.write(&head.bytes()[self.front_written..])
            } else {
                // A burst: every frame of it in one call (allocated per call, not per frame).
                let count = self.frame_count().min(MAX_IOVECS);
                let mut slices = Vec::with_capacity(count);
                slices.extend(self.pending().take(count).map(IoSlice::new));
                writer.write_vectored(&slices)
            };
            let written = match attempt {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(written);
            total += written;
        }
        Ok(total)
    }

    fn consume(&mut self, mut n: usize) {
        if n == self.queued {
            // Everything went out (the usual case): release the frames in one sweep.
            self.head = None;
            if let Some(rest) = &mut self.rest {
                rest.clear();
            }
            self.queued = 0;
            self.front_written = 0;
            self.pong_at_tail = false;
            return;
        }
        self.queued -= n;
        while n > 0 {
            let Some(front) = &self.head else {
                return;
            };
            let left = front.bytes().len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.head = self.rest.as_mut().and_then(|rest| rest.pop_front());
            self.front_written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `budget` bytes, then blocks.
    struct Throttled {
        out: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Write for Throttled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.budget {
                    break;
                }
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shared_frames_are_written_in_order_with_one_call() {
        let shared = Shared::new(Box::from(&b"shared"[..]));
        let mut q = OutQueue::new();
        q.push(Bytes::from_static(b"a"));
        q.push(shared.clone());
        q.push(Bytes::from_static(b"z"));
        assert_eq!(q.queued_bytes(), 8);
        let mut w = Throttled {
            out: vec![],
            budget: 100,
            calls: 0,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), 8);
        assert_eq!(w.out, b"asharedz");
        assert_eq!(w.calls, 1);
        assert!(q.is_empty());
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::new();
        for f in [&b"hello "[..], b"wide ", b"world"] {
            q.push(Bytes::copy_from_slice(f));
        }
        let mut w = Throttled {
            out: vec![],
            budget: 8,
            calls: 0,
        };
        assert_eq!(q.write_to(&mut w).unwrap(), 8);
        assert_eq!(q.queued_bytes(), 8);
        w.budget = 3;
        q.write_to(&mut w).unwrap();
        w.budget = 100;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, b"hello wide world");
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn discard_keeps_a_partly_written_front() {
        let mut q = OutQueue::new();
        q.push(Bytes::from_static(b"0123456789"));
        q.push(Bytes::from_static(b"abc"));
        let mut w = Throttled {
            out: vec![],
            budget: 4,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.discard_unsent(), 1);
        assert_eq!(q.queued_bytes(), 6);
        let mut q2 = OutQueue::new();
        q2.push(Bytes::from_static(b"x"));
        q2.push(Bytes::from_static(b"y"));
        assert_eq!(q2.discard_unsent(), 2);
        assert!(q2.is_empty());
    }

    #[test]
    fn a_ping_flood_queues_one_pong() {
        let mut q = OutQueue::new();
        q.push(Bytes::from_static(b"reply"));
        for i in 0..10_000u16 {
            q.push_pong(&[0x8a, 2, (i >> 8) as u8, i as u8]);
        }
        assert_eq!(q.frame_count(), 2);
        assert_eq!(q.queued_bytes(), 9);
        assert_eq!(q.charged_bytes(), 9 + 2 * FRAME_OVERHEAD);
        // Another frame after the pong: the next pong is queued behind it, in order.
        q.push(Bytes::from_static(b"x"));
        q.push_pong(&[0x8a, 0]);
        let mut w = Throttled {
            out: vec![],
            budget: 100,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, b"reply\x8a\x02\x27\x0fx\x8a\x00");
    }

    #[test]
    fn a_pong_that_started_to_go_out_is_not_replaced() {
        let mut q = OutQueue::new();
        q.push_pong(&[0x8a, 1, b'a']);
        let mut w = Throttled {
            out: vec![],
            budget: 1,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        q.push_pong(&[0x8a, 1, b'b']);
        w.budget = 100;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, b"\x8a\x01a\x8a\x01b");
    }

    #[test]
    fn more_frames_than_iovecs() {
        let mut q = OutQueue::new();
        for _ in 0..(MAX_IOVECS * 3 + 5) {
            q.push(Bytes::from_static(b"ab"));
        }
        let mut w = Throttled {
            out: vec![],
            budget: usize::MAX / 2,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out.len(), (MAX_IOVECS * 3 + 5) * 2);
        assert_eq!(w.calls, 4);
    }
}
