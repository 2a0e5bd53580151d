//! Per-topic streams and their bounded history, sans-IO (time is passed in).
//!
//! A stream gives every publish to its topic a position: the stream's `epoch` and an `offset`
//! that starts at 1 and grows by one per publish. It keeps the last messages' push frames (the
//! same [`Shared`] allocation the subscribers' queues hold) within three bounds: messages per
//! topic, a time to live, and one memory cap over all topics. TTL and the memory cap both evict
//! the oldest message of all topics: a global age queue in publish order gives it in O(1), and
//! since time only moves forward its front is also the next message to expire (one timer, no
//! scans). Evicting a topic's oldest for the per-topic bound leaves its age entry behind; such
//! stale entries are skipped at the front and compacted away when they are the majority.
//!
//! A stream ends when it holds nothing and its topic has no subscribers; the next publish or
//! subscribe opens a new one with a new epoch, so a client never mistakes the new offsets for
//! the old ones.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use slab::Slab;

use crate::wire::frame::Shared;

/// What the history charges per held message beyond its frame bytes: the topic queue's slot
/// (the frame pointer) and the age queue's entry. Counted against `--history-memory`.
pub const ENTRY_OVERHEAD: usize = size_of::<Shared>() + size_of::<Aged>();

/// Stale age entries are compacted once there are more than this many and they outnumber the
/// live ones (amortised O(1) per eviction).
const COMPACT_MIN_STALE: usize = 1024;

/// The history's bounds; `size == 0` turns history and positions off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages held per topic.
    pub size: usize,
    pub ttl_ms: u64,
    /// Bytes held over all topics: frame bytes plus [`ENTRY_OVERHEAD`] per message.
    pub memory: usize,
}

/// A stream's identity: 8 base-36 characters, unique per stream in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch([u8; 8]);

const EPOCH_SPACE: u128 = 36u128.pow(8);
/// Coprime to 36, so `serial * EPOCH_STRIDE mod 36^8` visits every epoch once before repeating.
const EPOCH_STRIDE: u128 = 1_779_033_703;

impl Epoch {
    /// The epoch of the stream numbered `serial`, offset by the process's random `seed` so
    /// epochs of an earlier run of the server do not come back.
    fn derive(seed: u64, serial: u32) -> Epoch {
        let mut value = (u128::from(seed) + u128::from(serial) * EPOCH_STRIDE) % EPOCH_SPACE;
        let mut text = [b'0'; 8];
        for slot in text.iter_mut().rev() {
            let digit = (value % 36) as u8;
            *slot = if digit < 10 {
                b'0' + digit
            } else {
                b'a' + digit - 10
            };
            value /= 36;
        }
        Epoch(text)
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII digits and letters (see `derive`).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Where a message sits in its topic's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

/// The position of a publish about to be appended, with its stream's key (one index lookup
/// per publish, not two).
#[derive(Clone, Copy, Debug)]
pub struct NextPosition {
    key: u32,
    pub position: Position,
}

/// One topic's stream: its position and the frames it still holds.
#[derive(Debug)]
pub struct Stream {
    name: Rc<str>,
    /// Which stream of the process this is; tells a reused slab key's age entries apart.
    serial: u32,
    epoch: Epoch,
    /// The offset of the last publish (0: none yet).
    last: u64,
    /// The frames of offsets `last - held.len() + 1 ..= last`.
    held: VecDeque<Shared>,
    /// The topic has subscribers: the stream lives on when its history empties.
    subscribed: bool,
}

impl Stream {
    pub fn name(&self) -> &Rc<str> {
        &self.name
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn epoch_text(&self) -> &str {
        self.epoch.as_str()
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The oldest offset still held, if any.
    pub fn first_held(&self) -> Option<u64> {
        (!self.held.is_empty()).then(|| self.last + 1 - self.held.len() as u64)
    }

    pub fn frame(&self, offset: u64) -> Option<&Shared> {
        let first = self.first_held()?;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        self.held.get(index)
    }

    /// The held messages after `offset`, oldest first.
    pub fn after(&self, offset: u64) -> impl Iterator<Item = (u64, &Shared)> {
        let first = self.first_held().unwrap_or(self.last + 1);
        let skip =
            usize::try_from(offset.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        self.held
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, frame)| (first + i as u64, frame))
    }
}

/// A held message in publish order (over all topics): what TTL and the memory cap evict.
#[derive(Debug)]
struct Aged {
    stream: u32,
    serial: u32,
    offset: u64,
    expires_ms: u64,
}

#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    epoch_seed: u64,
    next_serial: u32,
    streams: Slab<Stream>,
    index: HashMap<Rc<str>, u32>,
    aged: VecDeque<Aged>,
    /// Age entries whose message the per-topic bound already evicted.
    stale: usize,
    messages: usize,
    bytes: usize,
    evictions: u64,
}

impl History {
    pub fn new(limits: HistoryLimits, epoch_seed: u64) -> History {
        History {
            limits,
            epoch_seed,
            next_serial: 0,
            streams: Slab::new(),
            index: HashMap::new(),
            aged: VecDeque::new(),
            stale: 0,
            messages: 0,
            bytes: 0,
            evictions: 0,
        }
    }

    pub fn stream(&self, topic: &str) -> Option<&Stream> {
        let key = *self.index.get(topic)?;
        self.streams.get(key as usize)
    }

    /// The stream of `topic`, opened (new epoch, offset 0) if it has none.
    fn open(&mut self, topic: &str) -> u32 {
        self.open_named(topic, None)
    }

    /// [`History::open`], sharing the index's name of the topic when the caller has one.
    fn open_named(&mut self, topic: &str, shared_name: Option<&Rc<str>>) -> u32 {
        if let Some(&key) = self.index.get(topic) {
            return key;
        }
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let name: Rc<str> = shared_name.map_or_else(|| Rc::from(topic), Rc::clone);
        let key = self.streams.insert(Stream {
            name: Rc::clone(&name),
            serial,
            epoch: Epoch::derive(self.epoch_seed, serial),
            last: 0,
            held: VecDeque::new(),
            subscribed: false,
        }) as u32;
        self.index.insert(name, key);
        key
    }

    /// The topic `name` got its first subscriber: its stream (opened now if absent) stays
    /// while it has subscribers.
    pub fn on_first_member(&mut self, name: &Rc<str>) {
        let key = self.open_named(name, Some(name));
        if let Some(stream) = self.streams.get_mut(key as usize) {
            stream.subscribed = true;
        }
    }

    /// The topic lost its last subscriber: its stream ends now if it holds nothing, else when
    /// its history is gone.
    pub fn on_last_member(&mut self, topic: &str) {
        let Some(&key) = self.index.get(topic) else {
            return;
        };
        if let Some(stream) = self.streams.get_mut(key as usize) {
            stream.subscribed = false;
        }
        self.end_if_unused(key);
    }

    /// The position the next publish to `topic` gets (opening its stream if needed), to be
    /// passed to [`History::append`] with its frame.
    pub fn next_position(&mut self, topic: &str) -> NextPosition {
        let key = self.open(topic);
        let position = match self.streams.get(key as usize) {
            Some(stream) => Position {
                epoch: stream.epoch,
                offset: stream.last + 1,
            },
            // `open` just returned the key: unreachable, and harmless if it were.
            None => Position {
                epoch: Epoch::derive(self.epoch_seed, 0),
                offset: 1,
            },
        };
        NextPosition { key, position }
    }

    /// Holds `frame` as the message at `next` (from [`History::next_position`]), then evicts
    /// what the bounds no longer allow.
    pub fn append(&mut self, next: NextPosition, frame: Shared, now_ms: u64) {
        let key = next.key;
        let Some(stream) = self.streams.get_mut(key as usize) else {
            return;
        };
        stream.last += 1;
        self.bytes += frame.len() + ENTRY_OVERHEAD;
        self.messages += 1;
        stream.held.push_back(frame);
        self.aged.push_back(Aged {
            stream: key,
            serial: stream.serial,
            offset: stream.last,
            expires_ms: now_ms.saturating_add(self.limits.ttl_ms),
        });
        if stream.held.len() > self.limits.size {
            self.evict_front(key);
            self.stale += 1;
        }
        while self.bytes > self.limits.memory && self.evict_oldest() {}
        self.trim_stale_front();
        self.compact();
    }

    /// Evicts every message whose time to live has passed at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        loop {
            self.trim_stale_front();
            match self.aged.front() {
                Some(aged) if aged.expires_ms <= now_ms => {
                    self.evict_oldest();
                }
                _ => return,
            }
        }
    }

    /// When the oldest held message expires.
    pub fn next_expiry(&self) -> Option<u64> {
        // The front is kept live by every mutation.
        self.aged.front().map(|aged| aged.expires_ms)
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Bytes charged against the memory cap.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages evicted (size, TTL, memory) since the start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Evicts the oldest message of all topics; false when nothing is held.
    fn evict_oldest(&mut self) -> bool {
        self.trim_stale_front();
        let Some(aged) = self.aged.pop_front() else {
            return false;
        };
        self.evict_front(aged.stream);
        true
    }

    /// Drops the oldest held message of the stream `key`.
    fn evict_front(&mut self, key: u32) {
        let Some(stream) = self.streams.get_mut(key as usize) else {
            return;
        };
        let Some(frame) = stream.held.pop_front() else {
            return;
        };
        self.bytes -= frame.len() + ENTRY_OVERHEAD;
        self.messages -= 1;
        self.evictions += 1;
        self.end_if_unused(key);
    }

    fn end_if_unused(&mut self, key: u32) {
        let unused = self
            .streams
            .get(key as usize)
            .is_some_and(|s| s.held.is_empty() && !s.subscribed);
        if unused {
            let stream = self.streams.remove(key as usize);
            self.index.remove(&stream.name);
            if self.streams.capacity() > 64 && self.streams.len() * 4 < self.streams.capacity() {
                self.streams.shrink_to_fit();
                self.index.shrink_to(self.index.len() * 2);
            }
        }
    }

    fn is_live(streams: &Slab<Stream>, aged: &Aged) -> bool {
        streams.get(aged.stream as usize).is_some_and(|s| {
            s.serial == aged.serial && s.first_held().is_some_and(|first| aged.offset >= first)
        })
    }

    fn trim_stale_front(&mut self) {
        while let Some(aged) = self.aged.front() {
            if Self::is_live(&self.streams, aged) {
                return;
            }
            self.aged.pop_front();
            self.stale = self.stale.saturating_sub(1);
        }
    }

    fn compact(&mut self) {
        if self.stale > COMPACT_MIN_STALE && self.stale * 2 > self.aged.len() {
            let streams = &self.streams;
            self.aged.retain(|aged| Self::is_live(streams, aged));
            self.stale = 0;
            if self.aged.capacity() > 2 * self.aged.len() + 64 {
                self.aged.shrink_to(self.aged.len() * 3 / 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: usize) -> Shared {
        Shared::new(vec![b'x'; bytes].into_boxed_slice())
    }

    fn history(size: usize, ttl_ms: u64, memory: usize) -> History {
        History::new(
            HistoryLimits {
                size,
                ttl_ms,
                memory,
            },
            12345,
        )
    }

    fn publish(h: &mut History, topic: &str, bytes: usize, now_ms: u64) -> Position {
        let next = h.next_position(topic);
        h.append(next, frame(bytes), now_ms);
        next.position
    }

    fn held(h: &History, topic: &str) -> Vec<u64> {
        h.stream(topic)
            .map(|s| s.after(0).map(|(o, _)| o).collect())
            .unwrap_or_default()
    }

    #[test]
    fn epochs_are_distinct_base36() {
        let epochs: std::collections::HashSet<Epoch> =
            (0..10_000).map(|n| Epoch::derive(u64::MAX, n)).collect();
        assert_eq!(epochs.len(), 10_000);
        let e = Epoch::derive(7, 3);
        assert_eq!(e.as_str().len(), 8);
        assert!(
            e.as_str()
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
    }

    #[test]
    fn offsets_grow_per_topic_and_the_size_bound_keeps_the_newest() {
        let mut h = history(3, 60_000, 1 << 20);
        let a1 = publish(&mut h, "a", 10, 0);
        let b1 = publish(&mut h, "b", 10, 0);
        assert_eq!((a1.offset, b1.offset), (1, 1));
        assert_ne!(a1.epoch, b1.epoch);
        for _ in 0..4 {
            publish(&mut h, "a", 10, 0);
        }
        let stream = h.stream("a").unwrap();
        assert_eq!((stream.last(), stream.first_held()), (5, Some(3)));
        assert_eq!(held(&h, "a"), [3, 4, 5]);
        assert_eq!(stream.after(3).map(|(o, _)| o).collect::<Vec<_>>(), [4, 5]);
        assert!(stream.frame(2).is_none() && stream.frame(5).is_some());
        assert_eq!((h.messages(), h.evictions()), (4, 2));
        assert_eq!(h.bytes(), 4 * (10 + ENTRY_OVERHEAD));
    }

    #[test]
    fn ttl_expires_oldest_first_and_ends_unsubscribed_streams() {
        let mut h = history(100, 1_000, 1 << 20);
        h.on_first_member(&Rc::from("kept"));
        let first = publish(&mut h, "gone", 10, 0);
        publish(&mut h, "kept", 10, 500);
        publish(&mut h, "gone", 10, 700);
        assert_eq!(h.next_expiry(), Some(1_000));
        h.expire(999);
        assert_eq!(h.messages(), 3);
        h.expire(1_000);
        assert_eq!(held(&h, "gone"), [2]);
        assert_eq!(h.next_expiry(), Some(1_500));
        h.expire(1_700);
        assert_eq!(h.messages(), 0);
        assert_eq!(h.next_expiry(), None);
        assert!(
            h.stream("gone").is_none(),
            "no history, no subscribers: ended"
        );
        let kept = h.stream("kept").unwrap();
        assert_eq!((kept.last(), kept.first_held()), (1, None));
        // A new stream for the ended topic: a new epoch, offsets from 1.
        let again = publish(&mut h, "gone", 10, 2_000);
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
        h.on_last_member("kept");
        assert!(h.stream("kept").is_none());
        assert_eq!(h.stream_count(), 1);
    }

    #[test]
    fn the_memory_cap_evicts_the_oldest_of_all_topics() {
        let per = 100 + ENTRY_OVERHEAD;
        let mut h = history(100, 60_000, 3 * per);
        publish(&mut h, "a", 100, 0);
        publish(&mut h, "b", 100, 1);
        publish(&mut h, "a", 100, 2);
        assert_eq!(h.bytes(), 3 * per);
        publish(&mut h, "c", 100, 3);
        assert_eq!(held(&h, "a"), [2]);
        assert_eq!(held(&h, "b"), [1]);
        publish(&mut h, "c", 100, 4);
        assert!(h.stream("b").is_none(), "b's only message went first");
        assert_eq!(held(&h, "a"), [2]);
        assert_eq!(held(&h, "c"), [1, 2]);
        assert_eq!((h.messages(), h.bytes(), h.evictions()), (3, 3 * per, 2));
        // A message over the whole cap is not held at all.
        publish(&mut h, "a", 10 * per, 5);
        assert_eq!(h.messages(), 0);
    }

    #[test]
    fn stale_age_entries_do_not_accumulate() {
        let mut h = history(2, 60_000, usize::MAX);
        for n in 0..100_000 {
            publish(&mut h, "hot", 1, n);
        }
        assert_eq!(h.messages(), 2);
        assert!(
            h.aged.len() <= 2 * COMPACT_MIN_STALE + 4,
            "{}",
            h.aged.len()
        );
        assert_eq!(h.next_expiry(), Some(99_998 + 60_000));
    }

    #[test]
    fn a_held_message_costs_its_frame_plus_32_bytes() {
        assert_eq!(ENTRY_OVERHEAD, 32);
        // A topic's stream, held even before its first publish (the ack names its epoch).
        assert!(size_of::<Stream>() <= 72, "{}", size_of::<Stream>());
        let mut h = history(10, 60_000, usize::MAX);
        publish(&mut h, "t", 57, 0);
        assert_eq!(h.bytes(), 57 + 32);
    }
}
