//! A hierarchical hashed timer wheel, sans-IO: time is passed in as milliseconds.
//!
//! Six levels of 64 slots; a slot of level `L` spans 64^L ms, so the wheel covers 2^36 ms
//! (about two years) at 1 ms resolution. A timer lives in the level given by the highest bit in
//! which its deadline differs from the wheel's current time, so every entry of a lower level is
//! due before every entry of a higher one, and within a level the slots are in time order. The
//! earliest slot is found with a rotate and `trailing_zeros` on each level's occupancy bitmap,
//! never by scanning slots.
//!
//! Entries sit in a slab and each slot is an intrusive doubly-linked list, so insert and cancel
//! are O(1). Handles carry a generation: a handle to a fired or cancelled timer never touches
//! the timer that later reuses its slab key.
//!
//! `next_deadline` reports a slot's smallest inserted deadline rather than the slot's start, so a
//! caller sleeping until then wakes once per due timer, not once per cascade between levels
//! (after a cancel it may wake early once; `poll` then returns nothing and the wheel moves on).

use std::num::NonZeroU32;

use slab::Slab;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const NIL: u32 = u32::MAX;
/// The wheel's range: deadlines must share the current time's aligned block of this size + 1.
const MAX_SPAN: u64 = (1 << (SLOT_BITS * LEVELS as u32)) - 1;

/// A scheduled timer: slab key plus generation. The generation is never zero, so an
/// `Option<TimerHandle>` (one per connection) takes no more room than the handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    key: u32,
    generation: NonZeroU32,
}

struct Entry<T> {
    value: T,
    deadline: u64,
    generation: NonZeroU32,
    prev: u32,
    next: u32,
    /// `level * SLOTS + slot`, or `READY` once due.
    place: u16,
}

const READY: u16 = u16::MAX;

#[derive(Clone, Copy)]
struct Slot {
    head: u32,
    /// Lower bound of the deadlines in the slot (exact unless an entry was cancelled).
    min_deadline: u64,
}

const EMPTY_SLOT: Slot = Slot {
    head: NIL,
    min_deadline: u64::MAX,
};

pub struct TimerWheel<T> {
    entries: Slab<Entry<T>>,
    slots: [[Slot; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Due entries not yet returned by `poll`, in deadline order.
    ready: std::collections::VecDeque<u32>,
    elapsed: u64,
    next_generation: NonZeroU32,
    /// Reused by `expire_slot` to sort due entries without allocating each time.
    due: Vec<(u64, u32)>,
}

impl<T> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerWheel<T> {
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Preallocates room for `n` timers.
    pub fn with_capacity(n: usize) -> Self {
        TimerWheel {
            entries: Slab::with_capacity(n),
            slots: [[EMPTY_SLOT; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            ready: std::collections::VecDeque::new(),
            elapsed: 0,
            next_generation: NonZeroU32::MIN,
            due: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Schedules `value` at `deadline_ms`. A deadline at or before the wheel's time fires on the
    /// next `poll`. The wheel spans aligned blocks of 2^36 ms (795 days) from time 0; a deadline
    /// past the end of the current block is clamped to its last millisecond (the server's timers
    /// are seconds to hours away, so this only matters after two years of uptime).
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerHandle {
        self.next_generation = self
            .next_generation
            .checked_add(1)
            .unwrap_or(NonZeroU32::MIN);
        let generation = self.next_generation;
        let deadline = deadline_ms.min(self.elapsed | MAX_SPAN);
        let key = self.entries.insert(Entry {
            value,
            deadline,
            generation,
            prev: NIL,
            next: NIL,
            place: READY,
        });
        let key = u32::try_from(key).unwrap_or(NIL);
        self.place(key);
        TimerHandle { key, generation }
    }

    /// Removes a pending timer and returns its value; `None` if it fired, was cancelled, or the
    /// handle is stale.
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        let entry = self.entries.get(handle.key as usize)?;
        if entry.generation != handle.generation {
            return None;
        }
        if entry.place == READY {
            self.ready.retain(|&k| k != handle.key);
        } else {
            self.unlink(handle.key);
        }
        Some(self.entries.remove(handle.key as usize).value)
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, handle: TimerHandle) -> Option<u64> {
        let entry = self.entries.get(handle.key as usize)?;
        (entry.generation == handle.generation).then_some(entry.deadline)
    }

    /// Pops one due timer (deadline <= `now_ms`), earliest first. Call until it returns `None`.
    pub fn poll(&mut self, now_ms: u64) -> Option<(TimerHandle, T)> {
        loop {
            if let Some(key) = self.ready.pop_front() {
                let entry = self.entries.remove(key as usize);
                return Some((
                    TimerHandle {
                        key,
                        generation: entry.generation,
                    },
                    entry.value,
                ));
            }
            match self.earliest_slot() {
                Some((level, slot, start)) if start <= now_ms => {
                    self.expire_slot(level, slot, start)
                }
                _ => {
                    self.elapsed = self.elapsed.max(now_ms);
                    return None;
                }
            }
        }
    }

    /// The earliest time `poll` can return something, or `None` if no timer is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(self.elapsed);
        }
        let (level, slot, start) = self.earliest_slot()?;
        Some(self.slots[level][slot].min_deadline.max(start))
    }

    /// The first occupied slot of the lowest non-empty level, with the time its range starts.
    fn earliest_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let shift = SLOT_BITS * level as u32;
        let current = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
        // Occupied slots are never behind the current one: rotate so it comes first.
        let slot = (self.occupied[level]
            .rotate_right(current as u32)
            .trailing_zeros() as usize
            + current)
            % SLOTS;
        let level_span = 1u64 << (shift + SLOT_BITS);
        let start = (self.elapsed & !(level_span - 1)) + ((slot as u64) << shift);
        Some((level, slot, start))
    }

    /// Moves time to the start of a due slot: due entries become ready, the others cascade down.
    fn expire_slot(&mut self, level: usize, slot: usize, start: u64) {
        self.elapsed = self.elapsed.max(start);
        let mut key = self.slots[level][slot].head;
        self.slots[level][slot] = EMPTY_SLOT;
        self.occupied[level] &= !(1 << slot);
        let mut due = std::mem::take(&mut self.due);
        while key != NIL {
            let entry = &mut self.entries[key as usize];
            let next = entry.next;
            entry.prev = NIL;
            entry.next = NIL;
            if entry.deadline <= self.elapsed {
                entry.place = READY;
                due.push((entry.deadline, key));
            } else {
                self.place(key);
            }
            key = next;
        }
        due.sort_unstable();
        self.ready.extend(due.drain(..).map(|(_, k)| k));
        self.due = due;
    }

    fn place(&mut self, key: u32) {
        let entry = &mut self.entries[key as usize];
        if entry.deadline <= self.elapsed {
            entry.place = READY;
            self.ready.push_back(key);
            return;
        }
        let significant =
            63 - ((self.elapsed ^ entry.deadline) | (SLOTS as u64 - 1)).leading_zeros();
        let level = (significant / SLOT_BITS) as usize;
        let slot = ((entry.deadline >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1);
        entry.place = (level * SLOTS + slot) as u16;
        let deadline = entry.deadline;
        let head = &mut self.slots[level][slot];
        entry.next = head.head;
        let old_head = head.head;
        head.head = key;
        head.min_deadline = head.min_deadline.min(deadline);
        if old_head != NIL {
            self.entries[old_head as usize].prev = key;
        }
        self.occupied[level] |= 1 << slot;
    }

    fn unlink(&mut self, key: u32) {
        let (prev, next, place) = {
            let e = &self.entries[key as usize];
            (e.prev, e.next, e.place as usize)
        };
        let (level, slot) = (place / SLOTS, place % SLOTS);
        if prev == NIL {
            self.slots[level][slot].head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.slots[level][slot].head == NIL {
            self.slots[level][slot] = EMPTY_SLOT;
            self.occupied[level] &= !(1 << slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Sleeps until each next deadline, like the server loop; returns (wake-ups, fired).
    fn run_until_empty<T>(wheel: &mut TimerWheel<T>) -> (usize, Vec<(u64, T)>) {
        let (mut wakeups, mut fired) = (0, Vec::new());
        while let Some(at) = wheel.next_deadline() {
            wakeups += 1;
            while let Some((_, v)) = wheel.poll(at) {
                fired.push((at, v));
            }
        }
        (wakeups, fired)
    }

    #[test]
    fn fires_exactly_at_the_deadline() {
        for deadline in [
            1, 63, 64, 65, 3_000, 4_095, 4_096, 10_000, 20_000, 262_143, 262_144, 5_000_000,
        ] {
            let mut wheel = TimerWheel::new();
            wheel.insert(deadline, ());
            assert!(wheel.poll(deadline - 1).is_none(), "{deadline} fired early");
            assert!(wheel.poll(deadline).is_some(), "{deadline} did not fire");
            assert!(wheel.is_empty());
        }
    }

    #[test]
    fn one_wakeup_per_deadline_no_cascade_wakeups() {
        for deadline in [3_000, 10_000, 20_000, 1_000_000] {
            let mut wheel = TimerWheel::new();
            wheel.insert(deadline, ());
            let (wakeups, fired) = run_until_empty(&mut wheel);
            assert_eq!((wakeups, fired.len(), fired[0].0), (1, 1, deadline));
        }
        let mut wheel = TimerWheel::new();
        let deadlines = [5u64, 700, 700, 3_000, 9_999, 20_000, 20_001, 86_400_000];
        for d in deadlines {
            wheel.insert(d, d);
        }
        let (wakeups, fired) = run_until_empty(&mut wheel);
        assert_eq!(wakeups, 7, "one wake-up per distinct deadline");
        assert!(fired.iter().all(|&(at, d)| at == d));
    }

    #[test]
    fn cancel_and_stale_handles() {
        let mut wheel = TimerWheel::new();
        let a = wheel.insert(100, "a");
        assert_eq!(wheel.deadline(a), Some(100));
        assert_eq!(wheel.cancel(a), Some("a"));
        assert_eq!(wheel.cancel(a), None);
        let b = wheel.insert(100, "b"); // reuses a's slab key
        assert_eq!(
            wheel.cancel(a),
            None,
            "a stale handle must not cancel the new timer"
        );
        assert_eq!(wheel.deadline(a), None);
        assert_eq!(wheel.poll(100), Some((b, "b")));
        assert_eq!(wheel.cancel(b), None, "fired timers cannot be cancelled");
        assert!(wheel.poll(1_000_000).is_none());
    }

    #[test]
    fn rearm_later() {
        let mut wheel = TimerWheel::new();
        let h = wheel.insert(1_000, 1);
        wheel.cancel(h);
        wheel.insert(5_000, 1);
        assert!(wheel.poll(4_999).is_none());
        assert_eq!(wheel.poll(5_000).map(|x| x.1), Some(1));
    }

    #[test]
    fn late_poll_returns_in_deadline_order() {
        let mut rng = Rng(42);
        let mut wheel = TimerWheel::new();
        for _ in 0..1_000 {
            let d = rng.next() % 10_000_000;
            wheel.insert(d, d);
        }
        let fired: Vec<u64> = std::iter::from_fn(|| wheel.poll(20_000_000).map(|x| x.1)).collect();
        assert_eq!(fired.len(), 1_000);
        assert!(fired.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn past_and_far_future_deadlines() {
        let mut wheel = TimerWheel::new();
        assert!(wheel.poll(500).is_none());
        wheel.insert(10, "past");
        assert_eq!(wheel.next_deadline(), Some(500));
        assert_eq!(wheel.poll(500).map(|x| x.1), Some("past"));
        let h = wheel.insert(u64::MAX, "far");
        assert_eq!(wheel.deadline(h), Some(MAX_SPAN));
        assert!(wheel.poll(1 << 40).is_some());
    }

    #[test]
    fn model_check_against_a_btreemap() {
        model_check(true);
        model_check(false);
    }

    fn model_check(with_cancels: bool) {
        let mut rng = Rng(0x1234_5678);
        let mut wheel = TimerWheel::new();
        let mut model: BTreeMap<(u64, u64), TimerHandle> = BTreeMap::new();
        let mut handles: Vec<(u64, u64, TimerHandle)> = Vec::new();
        let mut now = 0u64;
        let mut id = 0u64;
        for _ in 0..100_000 {
            match rng.next() % 10 {
                0..=4 => {
                    let span = [10, 100, 5_000, 300_000, 20_000_000][(rng.next() % 5) as usize];
                    let d = now + rng.next() % span;
                    id += 1;
                    let h = wheel.insert(d, id);
                    model.insert((d, id), h);
                    handles.push((d, id, h));
                }
                5 if with_cancels && !handles.is_empty() => {
                    let (d, i, h) = handles.swap_remove((rng.next() as usize) % handles.len());
                    let expected = model.remove(&(d, i)).map(|_| i);
                    assert_eq!(wheel.cancel(h), expected);
                }
                _ => {
                    let earliest = model.keys().next().map(|k| k.0);
                    let next = wheel.next_deadline();
                    match (earliest, next) {
                        (Some(e), Some(n)) => {
                            assert!(n <= e.max(now), "next_deadline {n} after the earliest {e}");
                            if !with_cancels {
                                assert_eq!(n, e.max(now), "an extra wake-up");
                            }
                        }
                        (None, _) => {}
                        (Some(e), None) => panic!("timer at {e} is lost"),
                    }
                    now += rng.next() % 2_000;
                    while let Some((_, v)) = wheel.poll(now) {
                        let (&(earliest, _), _) =
                            model.iter().next().expect("fired a timer the model lacks");
                        assert!(earliest <= now, "fired early");
                        // Ties may come in any order; the fired one must share the earliest deadline.
                        let key = model
                            .keys()
                            .find(|k| k.1 == v)
                            .copied()
                            .expect("unknown value");
                        assert_eq!(
                            key.0, earliest,
                            "out of order: {v} before deadline {earliest}"
                        );
                        model.remove(&key);
                    }
                    assert!(
                        model.keys().next().is_none_or(|k| k.0 > now),
                        "a due timer did not fire"
                    );
                }
            }
        }
    }
}
