//! The periodic one-line summary of `--stats-log-interval`, sans-IO: the server asks for a
//! line when its timer fires and logs it.
//!
//! Gauges (connections, subscriptions, topics, RSS) are the current values; counters are the
//! changes since the previous line (since start for the first), so a line reads as a rate
//! without subtracting two log lines; `/stats` and `/metrics` have the totals.

use std::fmt;

use log::info;

use super::Gauges;
use crate::stats::Stats;

/// The state between two summary lines.
#[derive(Debug)]
pub struct StatsLog {
    interval_ms: u64,
    /// When the next line is due, on the loop's clock.
    pub due_ms: u64,
    last: Stats,
    last_connections: usize,
    last_at_ms: u64,
}

/// One summary line: the figures of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub interval_ms: u64,
    pub connections: usize,
    /// Connections accepted and closed during the interval.
    pub opened: u64,
    pub closed: u64,
    pub subscriptions: usize,
    pub topics: usize,
    pub publishes_api: u64,
    pub publishes_tick: u64,
    pub deliveries: u64,
    pub dropped: u64,
    /// Closes by reason, in the interval.
    pub closes: Closes,
    pub auth_failures: u64,
    pub rss_bytes: Option<u64>,
}

/// Sessions the server closed, by reason (clients that left on their own are not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Closes {
    pub slow: u64,
    pub heartbeat: u64,
    pub write: u64,
    pub setup: u64,
    pub protocol: u64,
}

impl Closes {
    fn between(now: &Stats, last: &Stats) -> Closes {
        let d = |f: fn(&Stats) -> u64| f(now).saturating_sub(f(last));
        Closes {
            slow: d(|s| s.slow_consumer_closes),
            heartbeat: d(|s| s.heartbeat_timeouts),
            write: d(|s| s.write_timeouts),
            setup: d(|s| s.handshake_timeouts),
            protocol: d(|s| s.protocol_closes),
        }
    }
}

impl fmt::Display for Closes {
    /// The reasons that happened, `heartbeat:2,slow:1`; `0` when none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reasons = [
            ("slow", self.slow),
            ("heartbeat", self.heartbeat),
            ("write", self.write),
            ("setup", self.setup),
            ("protocol", self.protocol),
        ];
        let mut any = false;
        for (name, count) in reasons.into_iter().filter(|&(_, n)| n > 0) {
            if any {
                f.write_str(",")?;
            }
            write!(f, "{name}:{count}")?;
            any = true;
        }
        if !any {
            f.write_str("0")?;
        }
        Ok(())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stats: interval={}s connections={} opened={} closed={} subscriptions={} topics={} \
             publishes={} (api {}, tick {}) deliveries={} dropped={} closes={} auth_failures={}",
            self.interval_ms / 1000,
            self.connections,
            self.opened,
            self.closed,
            self.subscriptions,
            self.topics,
            self.publishes_api + self.publishes_tick,
            self.publishes_api,
            self.publishes_tick,
            self.deliveries,
            self.dropped,
            self.closes,
            self.auth_failures,
        )?;
        if let Some(rss) = self.rss_bytes {
            write!(f, " rss={:.1}MiB", rss as f64 / f64::from(1 << 20))?;
        }
        Ok(())
    }
}

impl StatsLog {
    /// The first line is due one interval after `now_ms`.
    pub fn new(interval_ms: u64, now_ms: u64) -> Self {
        StatsLog {
            interval_ms,
            due_ms: now_ms + interval_ms,
            last: Stats::default(),
            last_connections: 0,
            last_at_ms: now_ms,
        }
    }

    /// The figures since the last line; the next one is then due an interval after the one
    /// just due (a late timer does not shift the schedule, a very late one skips ahead).
    pub fn summary(
        &mut self,
        now_ms: u64,
        stats: &Stats,
        gauges: &Gauges,
        rss_bytes: Option<u64>,
    ) -> Summary {
        let last = &self.last;
        let d = |f: fn(&Stats) -> u64| f(stats).saturating_sub(f(last));
        let opened = d(|s| s.accepted);
        // Every accepted connection is open or closed: what is not open any more has closed.
        let closed =
            (self.last_connections as u64 + opened).saturating_sub(gauges.connections as u64);
        let publishes = d(|s| s.publishes);
        let publishes_tick = d(|s| s.tick_publishes);
        let summary = Summary {
            interval_ms: now_ms.saturating_sub(self.last_at_ms),
            connections: gauges.connections,
            opened,
            closed,
            subscriptions: gauges.subscriptions,
            topics: gauges.topics,
            publishes_api: publishes.saturating_sub(publishes_tick),
            publishes_tick,
            deliveries: d(|s| s.deliveries),
            dropped: d(|s| s.dropped),
            closes: Closes::between(stats, last),
            auth_failures: d(|s| s.auth_failures + s.client_token_failures + s.api_token_failures),
            rss_bytes,
        };
        self.last = stats.clone();
        self.last_connections = gauges.connections;
        self.last_at_ms = now_ms;
        self.due_ms += self.interval_ms;
        if self.due_ms <= now_ms {
            self.due_ms = now_ms + self.interval_ms;
        }
        summary
    }
}

/// Logs `summary` at info: the text above, and each figure as a structured field (the
/// binaries' logger puts them in the JSON object of `--log-format json`).
pub fn log(summary: &Summary) {
    let c = summary.closes;
    info!(
        target: "wspush::stats",
        interval_secs = summary.interval_ms / 1000,
        connections = summary.connections,
        opened = summary.opened,
        closed = summary.closed,
        subscriptions = summary.subscriptions,
        topics = summary.topics,
        publishes_api = summary.publishes_api,
        publishes_tick = summary.publishes_tick,
        deliveries = summary.deliveries,
        dropped = summary.dropped,
        closes_slow = c.slow,
        closes_heartbeat = c.heartbeat,
        closes_write = c.write,
        closes_setup = c.setup,
        closes_protocol = c.protocol,
        auth_failures = summary.auth_failures,
        rss_bytes = summary.rss_bytes;
        "{summary}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(connections: usize) -> Gauges {
        Gauges {
            connections,
            api_connections: 0,
            topics: 2,
            subscriptions: 3,
            uptime_secs: 0,
            history_messages: 0,
            history_bytes: 0,
            history_evictions: 0,
        }
    }

    #[test]
    fn counters_are_changes_since_the_last_line() {
        let mut log = StatsLog::new(60_000, 0);
        assert_eq!(log.due_ms, 60_000);
        let mut stats = Stats {
            accepted: 5,
            publishes: 30,
            tick_publishes: 20,
            deliveries: 100,
            heartbeat_timeouts: 1,
            ..Stats::default()
        };
        let first = log.summary(60_000, &stats, &gauges(4), Some(3 << 20));
        assert_eq!((first.opened, first.closed, first.connections), (5, 1, 4));
        assert_eq!((first.publishes_api, first.publishes_tick), (10, 20));
        assert_eq!(
            first.to_string(),
            "stats: interval=60s connections=4 opened=5 closed=1 subscriptions=3 topics=2 \
             publishes=30 (api 10, tick 20) deliveries=100 dropped=0 closes=heartbeat:1 \
             auth_failures=0 rss=3.0MiB"
        );
        assert_eq!(log.due_ms, 120_000);
        stats.accepted += 2;
        stats.deliveries += 7;
        stats.slow_consumer_closes += 2;
        stats.api_token_failures += 1;
        let second = log.summary(120_500, &stats, &gauges(3), None);
        assert_eq!((second.opened, second.closed), (2, 3));
        assert_eq!(second.deliveries, 7);
        assert_eq!(second.publishes_api + second.publishes_tick, 0);
        assert_eq!(second.auth_failures, 1);
        assert_eq!(second.closes.to_string(), "slow:2");
        assert!(!second.to_string().contains("rss"), "left out when unknown");
        // A late timer keeps the schedule; one later than an interval skips ahead.
        assert_eq!(log.due_ms, 180_000);
        log.summary(400_000, &stats, &gauges(3), None);
        assert_eq!(log.due_ms, 460_000);
        assert_eq!(Closes::default().to_string(), "0");
    }
}
