//! A connection's ordered outbound queue: the only path from the server to a socket.
//!
//! A push frame is one [`Shared`] allocation whose reference every subscriber's queue holds. The
//! loop is one thread, so sharing costs a plain increment rather than an atomic one. Consecutive
//! pushes of one topic from one publish request form a [`Run`], queued as one entry: in a flood,
//! where a subscriber gets hundreds of pushes per iteration, a queue then stores a few entries
//! instead of one per push, and nothing is counted up and down per push (see BENCHMARKS.md).
//! The queue counts its bytes against a cap the caller enforces, and writes with one vectored
//! write per call, so the frames of several publishes leave in one syscall.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use bytes::Bytes;

pub use crate::wire::frame::Shared;

/// At most this many frames go into one vectored write (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// The ring a burst starts with: entries are runs and replies, a few per iteration.
const RING_START: usize = 8;
/// What a queued frame costs beyond its bytes: its share of a ring slot, and for a reply of
/// the connection's own its heap block's counts and the allocator's header. Counted against the cap for
/// every frame, so many tiny frames cannot hold more memory than the cap says.
pub const FRAME_OVERHEAD: usize = 40;

/// Consecutive push frames of one topic, shared by every subscriber's queue as one entry.
#[derive(Debug)]
pub struct Run {
    frames: Vec<Shared>,
    bytes: usize,
}

impl Run {
    /// Empty frames are left out.
    pub fn new(mut frames: Vec<Shared>) -> Self {
        frames.retain(|f| !f.is_empty());
        let bytes = frames.iter().map(|f| f.len()).sum();
        Run { frames, bytes }
    }

    pub fn frames(&self) -> &[Shared] {
        &self.frames
    }

    /// The bytes of all its frames.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What queueing it is charged against the cap (see [`OutQueue::charged_bytes`]).
    pub fn charge(&self) -> usize {
        self.bytes + self.frames.len() * FRAME_OVERHEAD
    }
}

/// One queue entry: a frame, or a run of them. A push shares its allocation with every queue;
/// a reply of the connection's own is counted once.
#[derive(Clone, Debug)]
pub enum Chunk {
    Frame(Shared),
    Run(Rc<Run>),
}

impl Chunk {
    /// Its frames in order (a single frame is a run of one).
    fn frames(&self) -> &[Shared] {
        match self {
            Chunk::Frame(frame) => std::slice::from_ref(frame),
            Chunk::Run(run) => &run.frames,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Chunk::Frame(frame) => frame.len(),
            Chunk::Run(run) => run.bytes,
        }
    }
}

impl From<Shared> for Chunk {
    fn from(frame: Shared) -> Self {
        Chunk::Frame(frame)
    }
}

impl From<Vec<u8>> for Chunk {
    fn from(bytes: Vec<u8>) -> Self {
        Chunk::Frame(Shared::from(bytes))
    }
}

impl From<Bytes> for Chunk {
    fn from(bytes: Bytes) -> Self {
        // Without a copy when the bytes are a whole unique allocation (most replies are).
        Chunk::from(Vec::from(bytes))
    }
}

impl From<Rc<Run>> for Chunk {
    fn from(run: Rc<Run>) -> Self {
        Chunk::Run(run)
    }
}

#[derive(Debug, Default)]
pub struct OutQueue {
    /// The front frame, the only one that can be partly written. Kept inline so the common
    /// case, one pending frame, allocates nothing (an idle connection holds no ring buffer).
    /// `None` while nothing waits or while the front entry is a run that has not started.
    head: Option<Shared>,
    /// The entries after `head`. Boxed: allocated only while more than one entry waits (a
    /// burst), so an idle connection carries one pointer for it instead of a 32-byte ring header.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Chunk>>>,
    /// Bytes not yet written (the front frame may be partly written).
    queued: usize,
    /// Bytes of the front frame already written: it must go out whole or the stream breaks.
    front_written: usize,
    /// Frames not yet written whole.
    frames: u32,
    /// The newest frame is a Pong that has not started to go out: the next Pong replaces it
    /// (RFC 6455 §5.5.3 lets a server answer only the most recent Ping), so a Ping flood
    /// queues one Pong, not one per Ping.
    pong_at_tail: bool,
}

impl OutQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, entry: impl Into<Chunk>) {
        let entry = entry.into();
        // An empty frame would make a write of nothing; runs hold none (see `Run::new`).
        if entry.bytes() == 0 {
            return;
        }
        self.pong_at_tail = false;
        let was_empty = self.is_empty();
        self.queued += entry.bytes();
        self.frames += entry.frames().len() as u32;
        match entry {
            Chunk::Frame(frame) if was_empty => self.head = Some(frame),
            entry => self
                .rest
                .get_or_insert_with(|| Box::new(VecDeque::with_capacity(RING_START)))
                .push_back(entry),
        }
    }

    /// Queues a Pong frame, replacing a queued Pong that has not started to go out.
    pub fn push_pong(&mut self, pong: &[u8]) {
        if self.pong_at_tail {
            let in_rest = self.rest.as_mut().and_then(|rest| rest.back_mut());
            let tail = match in_rest {
                Some(Chunk::Frame(frame)) => Some(frame),
                Some(Chunk::Run(_)) => None,
                // Only the front frame can be partly written.
                None => self.head.as_mut().filter(|_| self.front_written == 0),
            };
            if let Some(tail) = tail {
                self.queued = self.queued - tail.len() + pong.len();
                *tail = Shared::from(pong);
                return;
            }
        }
        self.push(pong.to_vec());
        self.pong_at_tail = true;
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Unwritten bytes.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// What the queue holds, counted against the outbound cap: the unwritten bytes plus
    /// [`FRAME_OVERHEAD`] per frame.
    pub fn charged_bytes(&self) -> usize {
        self.queued + self.frames as usize * FRAME_OVERHEAD
    }

    /// The queue is empty but keeps the ring of its last burst (for the next one: a flood
    /// refills it every iteration). The caller releases it with [`OutQueue::release_spare_ring`]
    /// once bursts stop, so an idle connection holds no ring.
    pub fn has_spare_ring(&self) -> bool {
        self.is_empty() && self.rest.is_some()
    }

    pub fn release_spare_ring(&mut self) {
        if self.is_empty() {
            self.rest = None;
        }
    }

    /// The unwritten bytes of each frame, in order.
    fn pending(&self) -> impl Iterator<Item = &[u8]> {
        let front = self.head.iter().map(|f| &f[self.front_written..]);
        let rest = self.rest.iter().flat_map(|rest| {
            rest.iter()
                .flat_map(|entry| entry.frames().iter().map(|frame| &frame[..]))
        });
        front.chain(rest)
    }

    /// Drops every frame that has not started to go out, keeping a partly written front frame so
    /// the byte stream stays well formed. Returns how many frames were dropped.
    pub fn discard_unsent(&mut self) -> usize {
        if self.front_written == 0 {
            self.head = None;
        }
        let dropped = self.frames as usize - usize::from(self.head.is_some());
        self.rest = None;
        self.pong_at_tail = false;
        self.frames = u32::from(self.head.is_some());
        self.queued = self
            .head
            .as_ref()
            .map_or(0, |f| f.len() - self.front_written);
        dropped
    }

    /// Writes as much as the writer takes, in vectored writes, until the queue is empty or the
    /// writer would block. Returns the number of bytes written; `WouldBlock` is not an error.
    pub fn write_to<W: Write>(&mut self, writer: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let attempt = match &self.head {
                // One frame (the common case of a fan-out): a plain write, no iovec array.
                Some(head) if self.frames == 1 => writer.write(&head[self.front_written..]),
                // A burst: every frame of it in one call (allocated per call, not per frame).
                _ => {
                    let count = (self.frames as usize).min(MAX_IOVECS);
                    let mut slices = Vec::with_capacity(count);
                    slices.extend(self.pending().take(count).map(IoSlice::new));
                    writer.write_vectored(&slices)
                }
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
            // Everything went out (the usual case): release the entries in one sweep.
            self.head = None;
            if let Some(rest) = &mut self.rest {
                rest.clear();
            }
            self.queued = 0;
            self.frames = 0;
            self.front_written = 0;
            self.pong_at_tail = false;
            return;
        }
        self.queued -= n;
        while n > 0 {
            if let Some(head) = &self.head {
                let left = head.len() - self.front_written;
                if n < left {
                    self.front_written += n;
                    return;
                }
                n -= left;
                self.head = None;
                self.front_written = 0;
                self.frames -= 1;
            }
            let Some(rest) = self.rest.as_mut() else {
                return;
            };
            match rest.pop_front() {
                None => return,
                Some(Chunk::Frame(frame)) => self.head = Some(frame),
                Some(Chunk::Run(run)) if n >= run.bytes => {
                    n -= run.bytes;
                    self.frames -= run.frames.len() as u32;
                }
                Some(Chunk::Run(run)) => {
                    // Written in part: its frames go on one by one from the front.
                    for frame in run.frames[1..].iter().rev() {
                        rest.push_front(Chunk::Frame(Shared::clone(frame)));
                    }
                    self.head = Some(Shared::clone(&run.frames[0]));
                }
            }
        }
        if self.head.is_none()
            && let Some(Chunk::Frame(_)) = self.rest.as_ref().and_then(|rest| rest.front())
            && let Some(Chunk::Frame(frame)) = self.rest.as_mut().and_then(|rest| rest.pop_front())
        {
            self.head = Some(frame);
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
        let shared = Shared::from(&b"shared"[..]);
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
    fn one_pending_frame_allocates_no_ring() {
        let mut q = OutQueue::new();
        for _ in 0..3 {
            q.push(Shared::from(&b"push"[..]));
            assert!(
                q.head.is_some() && q.rest.is_none(),
                "the frame waits inline"
            );
            let mut w = Throttled {
                out: vec![],
                budget: 100,
                calls: 0,
            };
            assert_eq!(q.write_to(&mut w).unwrap(), 4);
            assert!(q.is_empty() && !q.has_spare_ring());
        }
        q.push(Shared::from(&b"one"[..]));
        q.push(Shared::from(&b"two"[..]));
        assert!(q.rest.is_some(), "a burst gets its ring");
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
        assert_eq!(q.frames, 2);
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

    fn run_of(frames: &[&[u8]]) -> Rc<Run> {
        Rc::new(Run::new(frames.iter().map(|f| Shared::from(*f)).collect()))
    }

    #[test]
    fn a_run_is_one_entry_and_goes_out_in_order_with_what_surrounds_it() {
        let run = run_of(&[b"one ", b"two ", b"three "]);
        let mut q = OutQueue::new();
        q.push(run.clone());
        q.push(Bytes::from_static(b"reply "));
        q.push(run);
        assert_eq!(q.frames, 7);
        assert_eq!(q.rest.as_ref().map(|r| r.len()), Some(3));
        assert_eq!(q.charged_bytes(), 34 + 7 * FRAME_OVERHEAD);
        let mut w = Throttled {
            out: vec![],
            budget: 100,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, b"one two three reply one two three ");
        assert_eq!(w.calls, 1);
        assert!(q.is_empty() && q.has_spare_ring());
    }

    #[test]
    fn a_run_written_in_part_goes_on_frame_by_frame() {
        let mut q = OutQueue::new();
        q.push(run_of(&[b"abc", b"defg", b"hi"]));
        q.push(Bytes::from_static(b"jk"));
        let mut out = Vec::new();
        // Every split point, one byte per write.
        for _ in 0..11 {
            let mut w = Throttled {
                out: vec![],
                budget: 1,
                calls: 0,
            };
            q.write_to(&mut w).unwrap();
            out.extend(w.out);
            assert_eq!(q.queued_bytes(), 11 - out.len());
        }
        assert_eq!(out, b"abcdefghijk");
        assert!(q.is_empty());
        assert_eq!(q.frames, 0);
    }

    #[test]
    fn discard_inside_a_run_keeps_only_the_partly_written_frame() {
        let mut q = OutQueue::new();
        q.push(run_of(&[b"0123", b"4567", b"89"]));
        q.push(run_of(&[b"ab", b"cd"]));
        let mut w = Throttled {
            out: vec![],
            budget: 6,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(q.discard_unsent(), 3);
        assert_eq!(q.queued_bytes(), 2);
        w.budget = 100;
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, b"01234567");
        assert!(q.is_empty());
    }

    #[test]
    fn a_pong_after_a_run_is_replaced_but_never_a_run() {
        let mut q = OutQueue::new();
        q.push_pong(&[0x8a, 1, b'a']);
        q.push(run_of(&[b"xy", b"z"]));
        q.push_pong(&[0x8a, 1, b'b']);
        q.push_pong(&[0x8a, 1, b'c']);
        assert_eq!(q.frames, 4);
        let mut w = Throttled {
            out: vec![],
            budget: 100,
            calls: 0,
        };
        q.write_to(&mut w).unwrap();
        assert_eq!(w.out, b"\x8a\x01axyz\x8a\x01c");
    }
}
