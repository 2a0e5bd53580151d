//! The demo publisher of the seed service: `"publish msg"` to one topic at a fixed interval.

use std::time::Duration;

use crate::config::millis;

/// The data every tick publishes (JSON), as the seed does.
pub const DATA: &str = "\"publish msg\"";

#[derive(Clone, Debug)]
pub struct DemoTick {
    pub topic: String,
    pub interval_ms: u64,
}

impl DemoTick {
    pub fn new(topic: &str, interval: Duration) -> Self {
        DemoTick {
            topic: topic.to_owned(),
            interval_ms: millis(interval).max(1),
        }
    }

    /// The tick after the one due at `due_ms`, scheduled from it so it never drifts (but never
    /// in the past, after a stall).
    pub fn next_due(&self, due_ms: u64, now_ms: u64) -> u64 {
        (due_ms + self.interval_ms).max(now_ms + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_do_not_drift_or_pile_up() {
        let tick = DemoTick::new("t", Duration::from_secs(3));
        assert_eq!(tick.next_due(3_000, 3_004), 6_000);
        assert_eq!(
            tick.next_due(3_000, 9_500),
            9_501,
            "after a stall: one tick, not three"
        );
    }
}
