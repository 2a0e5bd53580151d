//! Per-topic streams and their bounded history, sans-IO (time is passed in).
//!
//! A stream gives every publish to its topic a position: the stream's `epoch` and an `offset`
//! that starts at 1 and grows by one per publish. It keeps the last messages' push frames (the
//! same [`Shared`] allocation the subscribers' queues hold) within three bounds: messages per
//! topic, a time to live, and one memory cap over all topics.
//!
//! A stream lives in its topic's entry of the hub's index, so a publish finds the subscribers
//! and the stream with one lookup. A topic that is only subscribed keeps just its stream's
//! number (the epoch derives from it); the rest ([`Held`]) is allocated at its first publish.
//! TTL and the memory cap both evict the oldest message of all topics: a global age queue in
//! publish order ([`History`]) gives it in O(1), and since time only moves forward its front is
//! also the next message to expire (one timer, no scans). The held parts live in a slab owned
//! by the history, and an age entry is its topic's 4-byte key there, so an eviction looks no
//! name up; the expiry times are kept once per run of entries published in the same
//! millisecond (a publish request's messages share one). The
//! per-topic bound evicts a topic's oldest and leaves its age entry behind: a topic counts its
//! entries in the queue, and since a topic's stale entries are older than its live ones, an
//! entry is stale exactly when its topic has more entries than frames. Stale entries are
//! dropped at the front and compacted away when they are the majority.
//!
//! A stream ends when it holds nothing and its topic has no subscribers; the next publish or
//! subscribe opens a new one with a new epoch, so a client never mistakes the new offsets for
//! the old ones.

use std::collections::VecDeque;
use std::rc::Rc;

use slab::Slab;

use crate::wire::frame::Shared;

/// What the history charges per held message beyond its frame bytes, against
/// `--history-memory`: the two counts in the frame's heap block, the topic queue's slot (the
/// frame pointer), the age queue's entry, and a whole expiry run (the most a message can
/// need: one run per message when each is published in a millisecond of its own).
pub const ENTRY_OVERHEAD: usize =
    2 * size_of::<usize>() + size_of::<Shared>() + size_of::<HeldId>() + size_of::<ExpiryRun>();

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

const EPOCH_SPACE: u64 = 36u64.pow(8);
/// Coprime to 36, so `serial * EPOCH_STRIDE mod 36^8` visits every epoch once before repeating.
const EPOCH_STRIDE: u64 = 1_779_033_703;

impl Epoch {
    /// The epoch of the stream numbered `serial`, offset by the process's random `seed` so
    /// epochs of an earlier run of the server do not come back.
    fn derive(seed: u64, serial: u32) -> Epoch {
        // Both terms are below 2^42 and 2^63: no overflow in u64.
        let mut value =
            (seed % EPOCH_SPACE + u64::from(serial) * EPOCH_STRIDE % EPOCH_SPACE) % EPOCH_SPACE;
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

/// One topic's stream as readers see it: its position and the frames it still holds.
#[derive(Debug)]
pub struct Stream<'a> {
    name: &'a Rc<str>,
    epoch: Epoch,
    /// The offset of the last publish (0: none yet).
    last: u64,
    /// The frames of offsets `last - frames.len() + 1 ..= last`; `None` before any publish.
    frames: Option<&'a VecDeque<Shared>>,
}

impl<'a> Stream<'a> {
    /// The stream of the topic `name`, given its epoch and, once published to, its held part.
    pub(super) fn view(name: &'a Rc<str>, epoch: Epoch, held: Option<&'a Held>) -> Stream<'a> {
        Stream {
            name,
            epoch,
            last: held.map_or(0, |h| h.last),
            frames: held.map(|h| &h.frames),
        }
    }

    pub fn name(&self) -> &'a Rc<str> {
        self.name
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    fn held_count(&self) -> usize {
        self.frames.as_ref().map_or(0, |f| f.len())
    }

    /// The oldest offset still held, if any.
    pub fn first_held(&self) -> Option<u64> {
        let count = self.held_count();
        (count > 0).then(|| self.last + 1 - count as u64)
    }

    pub fn frame(&self, offset: u64) -> Option<&Shared> {
        let first = self.first_held()?;
        let index = usize::try_from(offset.checked_sub(first)?).ok()?;
        self.frames?.get(index)
    }

    /// The held messages after `offset`, oldest first.
    pub fn after(&self, offset: u64) -> impl Iterator<Item = (u64, &Shared)> {
        let first = self.first_held().unwrap_or(self.last + 1);
        let skip =
            usize::try_from(offset.saturating_add(1).saturating_sub(first)).unwrap_or(usize::MAX);
        self.frames
            .iter()
            .flat_map(|frames| frames.iter())
            .enumerate()
            .skip(skip)
            .map(move |(i, frame)| (first + i as u64, frame))
    }
}

/// A held part's key in the history's slab: what a topic's index entry and its age entries
/// name it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HeldId(u32);

/// What a topic's stream holds once published to (a topic that is only subscribed has none).
#[derive(Debug)]
pub(super) struct Held {
    /// The topic's name, for removing its index entry when the stream ends.
    name: Rc<str>,
    epoch: Epoch,
    last: u64,
    frames: VecDeque<Shared>,
    /// Age-queue entries naming this topic: one per held frame, plus one per frame the
    /// per-topic bound evicted (those are older, so they reach the front first).
    aged: u32,
}

impl Held {
    pub(super) fn new(name: Rc<str>, epoch: Epoch) -> Held {
        Held {
            name,
            epoch,
            last: 0,
            frames: VecDeque::new(),
            aged: 0,
        }
    }

    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The position the next publish gets.
    pub(super) fn next_position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.last + 1,
        }
    }

    /// Whether the topic has stale age entries (the oldest of its entries is one).
    fn has_stale(&self) -> bool {
        self.aged as usize > self.frames.len()
    }

    /// Whether the oldest of this topic's age entries is stale (more entries than frames: the
    /// per-topic bound evicted its frame); if so, it is no longer counted.
    fn take_stale(&mut self) -> bool {
        let stale = self.has_stale();
        if stale {
            self.aged -= 1;
        }
        stale
    }

    /// Nothing held and no age entry left: the stream may end.
    pub(super) fn is_spent(&self) -> bool {
        self.frames.is_empty() && self.aged == 0
    }
}

/// Consecutive age entries with the same expiry time: when, and how many.
#[derive(Debug)]
struct ExpiryRun {
    expires_ms: u64,
    entries: u64,
}

/// The held messages in publish order over all topics (what TTL and the memory cap evict),
/// each entry its topic's held part; expiry times run-length coded beside them.
#[derive(Debug, Default)]
struct AgeQueue {
    entries: VecDeque<HeldId>,
    /// Over all runs, `entries` entries in all.
    runs: VecDeque<ExpiryRun>,
}

impl AgeQueue {
    fn push_back(&mut self, held: HeldId, expires_ms: u64) {
        self.entries.push_back(held);
        match self.runs.back_mut() {
            Some(run) if run.expires_ms == expires_ms => run.entries += 1,
            _ => self.runs.push_back(ExpiryRun {
                expires_ms,
                entries: 1,
            }),
        }
    }

    fn front(&self) -> Option<HeldId> {
        self.entries.front().copied()
    }

    fn front_expiry(&self) -> Option<u64> {
        self.runs.front().map(|run| run.expires_ms)
    }

    fn pop_front(&mut self) -> Option<HeldId> {
        let held = self.entries.pop_front()?;
        match self.runs.front_mut() {
            Some(run) if run.entries > 1 => run.entries -= 1,
            _ => {
                self.runs.pop_front();
            }
        }
        Some(held)
    }

    /// Keeps the entries `keep` accepts, in order.
    fn retain(&mut self, mut keep: impl FnMut(HeldId) -> bool) {
        let mut runs = self.runs.iter_mut();
        let mut run = runs.next();
        let mut unvisited = run.as_ref().map_or(0, |r| r.entries);
        self.entries.retain(|&held| {
            while unvisited == 0 {
                match runs.next() {
                    Some(next) => {
                        unvisited = next.entries;
                        run = Some(next);
                    }
                    None => break,
                }
            }
            unvisited = unvisited.saturating_sub(1);
            let kept = keep(held);
            if !kept && let Some(run) = run.as_mut() {
                run.entries = run.entries.saturating_sub(1);
            }
            kept
        });
        self.runs.retain(|run| run.entries > 0);
        if self.entries.capacity() > 2 * self.entries.len() + 64 {
            self.entries.shrink_to(self.entries.len() * 3 / 2);
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Makes room for one more frame in a topic's ring: doubling, but never past the per-topic
/// bound, so a topic holding its full history has no unused slots.
fn reserve_one(frames: &mut VecDeque<Shared>, bound: usize) {
    let len = frames.len();
    if len == frames.capacity() {
        frames.reserve_exact(len.max(4).min(bound.saturating_sub(len).max(1)));
    }
}

/// The history's bounds, the streams' held parts, its age queue and its accounting; a stream's
/// position without history (epoch, last offset) lives in the hub's topic entry.
#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    epoch_seed: u64,
    next_serial: u32,
    /// The held part of every topic published to; an entry goes when its topic's does.
    held: Slab<Held>,
    aged: AgeQueue,
    /// Age entries whose message the per-topic bound already evicted.
    stale: usize,
    charged: Charged,
}

/// What the history holds against its memory cap, and what it let go.
#[derive(Debug, Default)]
struct Charged {
    messages: usize,
    bytes: usize,
    evictions: u64,
}

impl Charged {
    fn hold(&mut self, frame: &Shared) {
        self.messages += 1;
        self.bytes += frame.len() + ENTRY_OVERHEAD;
    }

    fn evict(&mut self, frame: &Shared) {
        self.messages -= 1;
        self.bytes -= frame.len() + ENTRY_OVERHEAD;
        self.evictions += 1;
    }
}

impl History {
    pub fn new(limits: HistoryLimits, epoch_seed: u64) -> History {
        History {
            limits,
            epoch_seed,
            next_serial: 0,
            held: Slab::new(),
            aged: AgeQueue::default(),
            stale: 0,
            charged: Charged::default(),
        }
    }

    /// Numbers a new stream.
    pub(super) fn open(&mut self) -> u32 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        serial
    }

    pub(super) fn epoch(&self, serial: u32) -> Epoch {
        Epoch::derive(self.epoch_seed, serial)
    }

    /// A held part for the topic `name` whose stream has `epoch`; `None` if the slab's keys
    /// no longer fit an id (2^32 topics held at once: the topic then goes without history).
    pub(super) fn hold(&mut self, name: Rc<str>, epoch: Epoch) -> Option<HeldId> {
        let entry = self.held.vacant_entry();
        let id = HeldId(u32::try_from(entry.key()).ok()?);
        entry.insert(Held::new(name, epoch));
        Some(id)
    }

    pub(super) fn held(&self, id: HeldId) -> Option<&Held> {
        self.held.get(id.0 as usize)
    }

    /// Frees the held part of a topic that left the index (it was spent, see
    /// [`Held::is_spent`]).
    pub(super) fn release(&mut self, id: HeldId) {
        self.held.try_remove(id.0 as usize);
    }

    /// Holds `frame` as the message at the next position of `id`, evicting the topic's oldest
    /// past the per-topic bound, then the oldest of all topics past the memory cap. Calls
    /// `spent` with each topic whose stream has nothing left; it answers whether the topic
    /// left the index, and if so its held part goes too.
    pub(super) fn append(
        &mut self,
        id: HeldId,
        frame: Shared,
        now_ms: u64,
        mut spent: impl FnMut(&Rc<str>) -> bool,
    ) {
        let Some(topic) = self.held.get_mut(id.0 as usize) else {
            return;
        };
        topic.last += 1;
        if topic.frames.len() >= self.limits.size
            && let Some(evicted) = topic.frames.pop_front()
        {
            // Its age entry stays until it reaches the front or a compaction.
            self.stale += 1;
            self.charged.evict(&evicted);
        }
        reserve_one(&mut topic.frames, self.limits.size);
        self.charged.hold(&frame);
        topic.frames.push_back(frame);
        topic.aged += 1;
        self.aged
            .push_back(id, now_ms.saturating_add(self.limits.ttl_ms));
        while self.charged.bytes > self.limits.memory && self.evict_oldest(&mut spent) {}
        self.trim_stale_front(&mut spent);
        if self.stale > COMPACT_MIN_STALE && self.stale * 2 > self.aged.len() {
            self.compact();
        }
    }

    /// Evicts every message whose time to live has passed at `now_ms`; `spent` as in
    /// [`History::append`].
    pub(super) fn expire(&mut self, now_ms: u64, mut spent: impl FnMut(&Rc<str>) -> bool) {
        while self
            .aged
            .front_expiry()
            .is_some_and(|expires_ms| expires_ms <= now_ms)
        {
            self.evict_oldest(&mut spent);
        }
        self.trim_stale_front(&mut spent);
    }

    /// Evicts the oldest message of all topics (and the stale age entries before it); false
    /// when nothing is held.
    fn evict_oldest(&mut self, spent: &mut impl FnMut(&Rc<str>) -> bool) -> bool {
        while let Some(id) = self.aged.pop_front() {
            let Some(topic) = self.held.get_mut(id.0 as usize) else {
                continue;
            };
            let live = !topic.take_stale();
            if live {
                topic.aged = topic.aged.saturating_sub(1);
                if let Some(frame) = topic.frames.pop_front() {
                    self.charged.evict(&frame);
                }
            } else {
                self.stale = self.stale.saturating_sub(1);
            }
            self.end_if_spent(id, spent);
            if live {
                return true;
            }
        }
        false
    }

    /// Drops stale entries at the front, so the front is the next message to expire.
    fn trim_stale_front(&mut self, spent: &mut impl FnMut(&Rc<str>) -> bool) {
        // No stale entry anywhere: the front is live, and its (likely cold) topic untouched.
        while self.stale > 0 {
            let Some(id) = self.aged.front() else {
                return;
            };
            let stale = self
                .held
                .get_mut(id.0 as usize)
                .is_none_or(Held::take_stale);
            if !stale {
                return;
            }
            self.stale -= 1;
            self.aged.pop_front();
            self.end_if_spent(id, spent);
        }
    }

    /// Asks the hub to end the topic of `id` if its stream has nothing left, and frees its
    /// held part when it did.
    fn end_if_spent(&mut self, id: HeldId, spent: &mut impl FnMut(&Rc<str>) -> bool) {
        let Some(topic) = self.held.get(id.0 as usize) else {
            return;
        };
        if topic.is_spent() && spent(&topic.name) {
            self.release(id);
        }
    }

    /// Drops every stale age entry (a topic's stale entries come before its live ones).
    fn compact(&mut self) {
        let held = &mut self.held;
        self.aged.retain(|id| {
            held.get_mut(id.0 as usize)
                .is_some_and(|topic| !topic.take_stale())
        });
        self.stale = 0;
    }

    /// When the oldest age entry expires (every mutation leaves the front live).
    pub fn next_expiry(&self) -> Option<u64> {
        self.aged.front_expiry()
    }

    pub fn messages(&self) -> usize {
        self.charged.messages
    }

    /// Bytes charged against the memory cap.
    pub fn bytes(&self) -> usize {
        self.charged.bytes
    }

    /// Messages evicted (size, TTL, memory) since the start.
    pub fn evictions(&self) -> u64 {
        self.charged.evictions
    }

    #[cfg(test)]
    pub(super) fn held_parts(&self) -> usize {
        self.held.len()
    }

    #[cfg(test)]
    pub(super) fn age_entries(&self) -> usize {
        let runs = &self.aged.runs;
        assert!(runs.iter().all(|run| run.entries > 0));
        assert!(
            runs.iter()
                .zip(runs.iter().skip(1))
                .all(|(a, b)| a.expires_ms < b.expires_ms)
        );
        assert!(
            self.aged
                .entries
                .iter()
                .all(|id| self.held.contains(id.0 as usize)),
            "every age entry names a held part"
        );
        let in_runs: u64 = runs.iter().map(|run| run.entries).sum();
        assert_eq!(
            in_runs,
            self.aged.len() as u64,
            "the runs cover the entries"
        );
        self.aged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, SubscriberId, Subscriptions};

    fn hub(size: usize, ttl_ms: u64, memory: usize) -> Hub {
        Hub::with_history(
            HistoryLimits {
                size,
                ttl_ms,
                memory,
            },
            12345,
        )
    }

    /// A push of `bytes` bytes of frame in all (the framing of `topic` and its position
    /// included), so the accounting below is exact.
    fn publish(h: &mut Hub, topic: &str, bytes: usize, now_ms: u64) -> Position {
        let mut extra = bytes.saturating_sub(frame_len(h, topic, 0));
        // A longer frame may need a longer header.
        extra -= frame_len(h, topic, extra).saturating_sub(bytes);
        let data = format!("\"{}\"", "x".repeat(extra));
        let delivery = h.publish(topic, &data, now_ms);
        assert!(
            bytes < 60 || delivery.frame.len() == bytes,
            "{}",
            delivery.frame.len()
        );
        delivery.position.expect("history on")
    }

    /// The frame length of a push of `extra` bytes of string to `topic` at its next offset.
    fn frame_len(h: &Hub, topic: &str, extra: usize) -> usize {
        let next = h.stream(topic).map_or(1, |s| s.last() + 1);
        let data = format!("\"{}\"", "x".repeat(extra));
        crate::wire::message::encode_push_at(topic, &data, next, "00000000").len()
    }

    fn held(h: &Hub, topic: &str) -> Vec<u64> {
        h.stream(topic)
            .map(|s| s.after(0).map(|(o, _)| o).collect())
            .unwrap_or_default()
    }

    fn charged(h: &Hub) -> (usize, usize, u64) {
        let history = h.history().expect("history on");
        (history.messages(), history.bytes(), history.evictions())
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
        assert_eq!(Epoch::derive(0, 0).as_str(), "00000000");
        // The last serial is still in range.
        assert_eq!(Epoch::derive(u64::MAX, u32::MAX).as_str().len(), 8);
    }

    #[test]
    fn offsets_grow_per_topic_and_the_size_bound_keeps_the_newest() {
        let mut h = hub(3, 60_000, 1 << 20);
        let a1 = publish(&mut h, "a", 80, 0);
        let b1 = publish(&mut h, "b", 80, 0);
        assert_eq!((a1.offset, b1.offset), (1, 1));
        assert_ne!(a1.epoch, b1.epoch);
        for _ in 0..4 {
            publish(&mut h, "a", 80, 0);
        }
        let stream = h.stream("a").unwrap();
        assert_eq!((stream.last(), stream.first_held()), (5, Some(3)));
        assert_eq!(held(&h, "a"), [3, 4, 5]);
        assert_eq!(stream.after(3).map(|(o, _)| o).collect::<Vec<_>>(), [4, 5]);
        assert!(stream.frame(2).is_none() && stream.frame(5).is_some());
        assert_eq!(charged(&h), (4, 4 * (80 + ENTRY_OVERHEAD), 2));
    }

    #[test]
    fn ttl_expires_oldest_first_and_ends_unsubscribed_streams() {
        let mut h = hub(100, 1_000, 1 << 20);
        let mut kept = Subscriptions::default();
        h.subscribe(&mut kept, SubscriberId(1), "kept");
        let first = publish(&mut h, "gone", 80, 0);
        publish(&mut h, "kept", 80, 500);
        publish(&mut h, "gone", 80, 700);
        assert_eq!(h.next_history_expiry(), Some(1_000));
        h.expire_history(999);
        assert_eq!(charged(&h).0, 3);
        h.expire_history(1_000);
        assert_eq!(held(&h, "gone"), [2]);
        assert_eq!(h.next_history_expiry(), Some(1_500));
        h.expire_history(1_700);
        assert_eq!(charged(&h).0, 0);
        assert_eq!(h.next_history_expiry(), None);
        assert!(
            h.stream("gone").is_none(),
            "no history, no subscribers: ended"
        );
        let kept_at = h.stream("kept").map(|s| (s.last(), s.first_held()));
        assert_eq!(kept_at, Some((1, None)));
        // A new stream for the ended topic: a new epoch, offsets from 1.
        let again = publish(&mut h, "gone", 80, 2_000);
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
        h.unsubscribe(&mut kept, SubscriberId(1), "kept");
        assert!(h.stream("kept").is_none());
        assert_eq!(h.stream_count(), 1);
    }

    #[test]
    fn the_memory_cap_evicts_the_oldest_of_all_topics() {
        let per = 100 + ENTRY_OVERHEAD;
        let mut h = hub(100, 60_000, 3 * per);
        publish(&mut h, "a", 100, 0);
        publish(&mut h, "b", 100, 1);
        publish(&mut h, "a", 100, 2);
        assert_eq!(charged(&h).1, 3 * per);
        publish(&mut h, "c", 100, 3);
        assert_eq!(held(&h, "a"), [2]);
        assert_eq!(held(&h, "b"), [1]);
        publish(&mut h, "c", 100, 4);
        assert!(h.stream("b").is_none(), "b's only message went first");
        assert_eq!(held(&h, "a"), [2]);
        assert_eq!(held(&h, "c"), [1, 2]);
        assert_eq!(charged(&h), (3, 3 * per, 2));
        // A message over the whole cap is not held at all.
        publish(&mut h, "a", 10 * per, 5);
        assert_eq!(charged(&h).0, 0);
        assert_eq!(h.stream_count(), 0, "nothing held, nobody subscribed");
    }

    #[test]
    fn stale_age_entries_do_not_accumulate() {
        let mut h = hub(2, 60_000, usize::MAX);
        // A cold topic's message at the front keeps the hot topic's stale entries from
        // being dropped there: only compaction bounds them.
        publish(&mut h, "cold", 80, 0);
        for n in 0..100_000 {
            publish(&mut h, "hot", 80, n);
        }
        assert_eq!(charged(&h).0, 3);
        let entries = h.history().map_or(0, History::age_entries);
        assert!(entries <= 2 * COMPACT_MIN_STALE + 4, "{entries}");
        assert_eq!(h.next_history_expiry(), Some(60_000));
        h.expire_history(60_000);
        assert_eq!(held(&h, "cold"), Vec::<u64>::new());
        assert_eq!(held(&h, "hot"), [99_999, 100_000]);
        assert_eq!(h.next_history_expiry(), Some(99_998 + 60_000));
        assert_eq!(h.history().map_or(0, History::age_entries), 2);
        // Without a cold front, stale entries go at the front as they appear.
        let mut h = hub(2, 60_000, usize::MAX);
        for n in 0..10_000 {
            publish(&mut h, "hot", 80, n);
        }
        assert_eq!(h.history().map_or(0, History::age_entries), 2);
    }

    #[test]
    fn a_held_message_is_charged_its_frame_plus_52_bytes() {
        assert_eq!(ENTRY_OVERHEAD, 52);
        assert!(size_of::<Held>() <= 72, "{}", size_of::<Held>());
        let mut h = hub(10, 60_000, usize::MAX);
        publish(&mut h, "t", 80, 0);
        assert_eq!(charged(&h).1, 80 + 52);
    }

    #[test]
    fn a_subscribed_topic_keeps_its_epoch_until_it_ends() {
        let mut h = hub(10, 1_000, usize::MAX);
        let mut a = Subscriptions::default();
        h.subscribe(&mut a, SubscriberId(1), "t");
        let acked = h.stream("t").map(|s| (s.epoch(), s.last(), s.first_held()));
        let position = publish(&mut h, "t", 80, 0);
        assert_eq!(acked, Some((position.epoch, 0, None)));
        // Unsubscribed with history: the stream stays, then ends with its last message.
        h.unsubscribe(&mut a, SubscriberId(1), "t");
        assert_eq!((h.topic_count(), h.stream_count()), (0, 1));
        h.subscribe(&mut a, SubscriberId(1), "t");
        assert_eq!(h.stream("t").map(|s| s.epoch()), Some(position.epoch));
        h.unsubscribe(&mut a, SubscriberId(1), "t");
        h.expire_history(1_000);
        assert_eq!(h.stream_count(), 0);
        h.subscribe(&mut a, SubscriberId(1), "t");
        assert_ne!(h.stream("t").map(|s| s.epoch()), Some(position.epoch));
    }

    /// Random subscribes, unsubscribes, publishes and expiries on a few topics with tight
    /// bounds, against a plain model: positions, what is held, the accounting, the next expiry
    /// and when streams end must all agree after every step.
    #[test]
    fn the_history_matches_a_model_under_random_operations() {
        struct Held {
            offset: u64,
            expires_ms: u64,
            bytes: usize,
        }
        #[derive(Default)]
        struct ModelTopic {
            /// `(epoch, last offset)` while the stream lives.
            stream: Option<(Epoch, u64)>,
            subscribers: Vec<u64>,
        }
        const TOPICS: [&str; 4] = ["a", "b", "c", "d"];
        let (size, ttl_ms) = (3, 50);
        let memory = 5 * (90 + ENTRY_OVERHEAD);
        let mut h = hub(size, ttl_ms, memory);
        let mut subs: Vec<Subscriptions> = (0..4).map(|_| Subscriptions::default()).collect();
        let mut model: Vec<ModelTopic> = (0..4).map(|_| ModelTopic::default()).collect();
        // Live messages over all topics in publish order: (topic, message).
        let mut held: VecDeque<(usize, Held)> = VecDeque::new();
        let mut epochs_seen: Vec<Epoch> = Vec::new();
        let mut now = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut evictions = 0u64;
        for step in 0..20_000 {
            let t = next(4) as usize;
            let who = next(4);
            match next(10) {
                0..=1 => {
                    let joined = h.subscribe(&mut subs[who as usize], SubscriberId(who), TOPICS[t]);
                    if joined != crate::hub::Joined::Already {
                        model[t].subscribers.push(who);
                    }
                }
                2..=3 => {
                    let left = h.unsubscribe(&mut subs[who as usize], SubscriberId(who), TOPICS[t]);
                    if left != crate::hub::Left::NotMember {
                        model[t].subscribers.retain(|&s| s != who);
                    }
                }
                4..=8 => {
                    let data = format!("\"{}\"", "x".repeat(next(120) as usize));
                    let delivery = h.publish(TOPICS[t], &data, now);
                    let bytes = delivery.frame.len() + ENTRY_OVERHEAD;
                    let position = delivery.position.expect("history on");
                    let (epoch, last) = model[t].stream.get_or_insert((position.epoch, 0));
                    assert_eq!(
                        position,
                        Position {
                            epoch: *epoch,
                            offset: *last + 1
                        },
                        "step {step}"
                    );
                    *last += 1;
                    let offset = *last;
                    held.push_back((
                        t,
                        Held {
                            offset,
                            expires_ms: now + ttl_ms,
                            bytes,
                        },
                    ));
                    if held.iter().filter(|(topic, _)| *topic == t).count() > size {
                        let oldest = held.iter().position(|(topic, _)| *topic == t);
                        held.remove(oldest.unwrap());
                        evictions += 1;
                    }
                    while held.iter().map(|(_, m)| m.bytes).sum::<usize>() > memory {
                        held.pop_front();
                        evictions += 1;
                    }
                }
                _ => {
                    now += next(30);
                    h.expire_history(now);
                    while held.front().is_some_and(|(_, m)| m.expires_ms <= now) {
                        held.pop_front();
                        evictions += 1;
                    }
                }
            }
            // Streams without subscribers or history end; a new one has a new epoch.
            for (t, topic) in model.iter_mut().enumerate() {
                let holds = held.iter().any(|(topic, _)| *topic == t);
                if topic.subscribers.is_empty() && !holds {
                    topic.stream = None;
                }
                if topic.stream.is_none() && !topic.subscribers.is_empty() {
                    let epoch = h.stream(TOPICS[t]).expect("subscribed").epoch();
                    topic.stream = Some((epoch, 0));
                }
                if let Some((epoch, _)) = topic.stream
                    && !epochs_seen.contains(&epoch)
                {
                    epochs_seen.push(epoch);
                }
            }
            for (t, topic) in model.iter().enumerate() {
                let stream = h.stream(TOPICS[t]);
                assert_eq!(
                    stream.map(|s| (s.epoch(), s.last())),
                    topic.stream,
                    "step {step}, topic {t}"
                );
                let offsets: Vec<u64> = held
                    .iter()
                    .filter(|(topic, _)| *topic == t)
                    .map(|(_, m)| m.offset)
                    .collect();
                assert_eq!(held_of(&h, TOPICS[t]), offsets, "step {step}, topic {t}");
                assert_eq!(h.subscriber_count(TOPICS[t]), topic.subscribers.len());
            }
            let bytes = held.iter().map(|(_, m)| m.bytes).sum::<usize>();
            assert_eq!(charged(&h), (held.len(), bytes, evictions), "step {step}");
            assert_eq!(
                h.next_history_expiry(),
                held.front().map(|(_, m)| m.expires_ms),
                "step {step}"
            );
            let live_streams = model.iter().filter(|m| m.stream.is_some()).count();
            assert_eq!(h.stream_count(), live_streams, "step {step}");
            if let Some(history) = h.history() {
                history.age_entries();
                let published = model
                    .iter()
                    .enumerate()
                    .filter(|(t, m)| {
                        m.stream.is_some() && h.stream(TOPICS[*t]).is_some_and(|s| s.last() > 0)
                    })
                    .count();
                assert_eq!(
                    history.held_parts(),
                    published,
                    "step {step}: one held part per stream published to"
                );
            }
        }
        // Streams came and went (each with an epoch of its own), and every bound was hit.
        assert!(epochs_seen.len() > 20, "{}", epochs_seen.len());
        assert!(evictions > 1_000, "{evictions}");
    }

    fn held_of(h: &Hub, topic: &str) -> Vec<u64> {
        held(h, topic)
    }
}
