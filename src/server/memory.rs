//! When to hand freed heap memory back to the OS: after a wave of disconnects, at most once a
//! second, and always after the last wave of a burst. The call itself is `sys::release_free_memory`.

/// After this many connections have gone, return freed memory.
const AFTER_REMOVALS: usize = 1024;
const MIN_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub(super) struct MemoryReturn {
    removed: usize,
    last_ms: u64,
    scheduled: bool,
}

impl MemoryReturn {
    pub(super) fn on_removed(&mut self) {
        self.removed += 1;
    }

    /// The time to schedule a release for, if one is due and none is scheduled.
    pub(super) fn schedule(&mut self, now_ms: u64) -> Option<u64> {
        if self.removed < AFTER_REMOVALS || self.scheduled {
            return None;
        }
        self.scheduled = true;
        Some(now_ms.max(self.last_ms + MIN_INTERVAL_MS))
    }

    pub(super) fn released(&mut self, now_ms: u64) {
        *self = MemoryReturn {
            last_ms: now_ms,
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
        for _ in 0..AFTER_REMOVALS - 1 {
            m.on_removed();
        }
        assert_eq!(m.schedule(10), None);
        m.on_removed();
        assert_eq!(m.schedule(10), Some(1_000));
        assert_eq!(m.schedule(20), None, "already scheduled");
        m.released(1_000);
        for _ in 0..AFTER_REMOVALS {
            m.on_removed();
        }
        assert_eq!(m.schedule(1_200), Some(2_000));
    }
}
