//! The demo publisher of the seed service: `"publish msg"` to one topic at a fixed interval.

use std::time::Duration;

use crate::config::millis;

/// The data every tick publishes (JSON), as the seed does.
pub const DATA: &str = "\"publish msg\"";

#[derive(Clone, Debug)]
pub struct DemoTick {
    pub topic: String,
    interval_ms: u64,
    /// When the next tick is due (the first one interval after start).
    pub due_ms: u64,
}

impl DemoTick {
    pub fn new(topic: &str, interval: Duration) -> Self {
        let interval_ms = millis(interval).max(1);
        DemoTick {
            topic: topic.to_owned(),
            interval_ms,
            due_ms: interval_ms,
        }
    }

    /// Moves on to the next tick, scheduled from the last one so it never drifts (but never in
    /// the past, after a stall); returns when it is due.
    pub fn advance(&mut self, now_ms: u64) -> u64 {
        self.due_ms = (self.due_ms + self.interval_ms).max(now_ms + 1);
        self.due_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_do_not_drift_or_pile_up() {
        let mut tick = DemoTick::new("t", Duration::from_secs(3));
        assert_eq!(tick.due_ms, 3_000);
        assert_eq!(tick.advance(3_004), 6_000);
        let late = tick.advance(12_500);
        assert_eq!(late, 12_501, "after a stall: one tick, not three");
    }
}
