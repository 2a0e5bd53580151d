//! When to hand freed heap memory back to the OS: after a wave of departures (connections, or
//! topics and subscriptions ended) that freed enough, at most once a second; a smaller wave a
//! second after it, so what it freed does not stay mapped until the next one. The call itself
//! is `sys::release_free_memory`.

use crate::hub::Ended;

/// Return freed memory once departures are estimated to have freed this much.
const AFTER_FREED_BYTES: u64 = 1 << 20;
/// Estimated heap freed per departure (order of magnitude; see BENCHMARKS.md's memory
/// breakdown): a connection's session, a topic's name, entry and member list, a subscription's
/// member id and list slot.
const CONNECTION_BYTES: u64 = 256;
const TOPIC_BYTES: u64 = 96;
const SUBSCRIPTION_BYTES: u64 = 24;
/// A wave that freed less than [`AFTER_FREED_BYTES`] but at least this much is returned after
/// [`MIN_INTERVAL_MS`]: the later departures of its burst are returned with it.
const AFTER_FREED_BYTES_LATER: u64 = 64 << 10;
const MIN_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub(super) struct MemoryReturn {
    removed: u64,
    /// The hub's counts at the last release.
    ended_before: Ended,
    last_ms: u64,
    scheduled: bool,
}

impl MemoryReturn {
    pub(super) fn on_removed(&mut self) {
        self.removed += 1;
    }

    fn freed_estimate(&self, ended: Ended) -> u64 {
        self.removed * CONNECTION_BYTES
            + (ended.topics - self.ended_before.topics) * TOPIC_BYTES
            + (ended.subscriptions - self.ended_before.subscriptions) * SUBSCRIPTION_BYTES
    }

    /// The time to schedule a release for, if one is due and none is scheduled; `ended`: the
    /// hub's counts now.
    pub(super) fn schedule(&mut self, now_ms: u64, ended: Ended) -> Option<u64> {
        if self.scheduled {
            return None;
        }
        let freed = self.freed_estimate(ended);
        let at = if freed >= AFTER_FREED_BYTES {
            now_ms.max(self.last_ms + MIN_INTERVAL_MS)
        } else if freed >= AFTER_FREED_BYTES_LATER {
            (now_ms + MIN_INTERVAL_MS).max(self.last_ms + MIN_INTERVAL_MS)
        } else {
            return None;
        };
        self.scheduled = true;
        Some(at)
    }

    pub(super) fn released(&mut self, now_ms: u64, ended: Ended) {
        *self = MemoryReturn {
            last_ms: now_ms,
            ended_before: ended,
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_wave_and_at_most_once_a_second() {
        let mut m = MemoryReturn::default();
        let none = Ended::default();
        let wave = AFTER_FREED_BYTES / CONNECTION_BYTES;
        for _ in 0..wave {
            m.on_removed();
        }
        assert_eq!(m.schedule(10, none), Some(1_000));
        assert_eq!(m.schedule(20, none), None, "already scheduled");
        m.released(1_000, none);
        for _ in 0..wave {
            m.on_removed();
        }
        assert_eq!(m.schedule(1_200, none), Some(2_000));
    }

    #[test]
    fn a_few_connections_with_many_topics_count_as_a_wave() {
        let mut m = MemoryReturn::default();
        let mut ended = Ended::default();
        // 100 connections of 100 topics each: far fewer departures than a connection wave.
        for _ in 0..100 {
            m.on_removed();
            ended.topics += 100;
            ended.subscriptions += 100;
        }
        assert_eq!(m.schedule(5_000, ended), Some(5_000));
        m.released(5_000, ended);
        // What was released before does not count again.
        assert_eq!(m.schedule(9_000, ended), None);
    }

    #[test]
    fn a_smaller_wave_is_returned_a_second_later() {
        let mut m = MemoryReturn::default();
        let none = Ended::default();
        for _ in 0..AFTER_FREED_BYTES_LATER / CONNECTION_BYTES - 1 {
            m.on_removed();
        }
        assert_eq!(m.schedule(10, none), None, "too little to be worth a call");
        m.on_removed();
        assert_eq!(m.schedule(10, none), Some(1_010));
        // The rest of the burst joins the scheduled release.
        for _ in 0..AFTER_FREED_BYTES / CONNECTION_BYTES {
            m.on_removed();
        }
        assert_eq!(m.schedule(500, none), None, "already scheduled");
    }
}
