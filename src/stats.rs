//! Counters reported by `GET /stats` and `GET /metrics`. Plain integers bumped on the loop
//! thread. What each one is called in those reports (and its help text) is declared once, in
//! [`crate::app::metrics`].

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// WebSocket connections accepted (handshakes included).
    pub accepted: u64,
    /// Connections refused because `--max-connections` was reached.
    pub refused_over_capacity: u64,
    /// Handshakes that failed (bad request, wrong path, garbage).
    pub handshake_failures: u64,
    /// Publishes accepted (API, batch lines and the demo tick).
    pub publishes: u64,
    /// The demo tick's publishes (also in `publishes`).
    pub tick_publishes: u64,
    /// Push frames queued to subscribers.
    pub deliveries: u64,
    /// Bytes written to WebSocket clients.
    pub bytes_written: u64,
    /// Pushes dropped because a subscriber's queue was full (`--slow-consumer drop`).
    pub dropped: u64,
    /// Sessions closed with 1013 because their queue was full (`--slow-consumer close`).
    pub slow_consumer_closes: u64,
    pub heartbeat_timeouts: u64,
    /// Protocol Pings sent to clients silent for the heartbeat interval.
    pub pings_sent: u64,
    pub write_timeouts: u64,
    /// Connections that did not finish the handshake and first subscribe in time.
    pub handshake_timeouts: u64,
    /// Sessions awaiting the client token in their first message closed with 1008: a wrong
    /// token, another message first, or no `auth` in time (not in `handshake_timeouts`).
    pub auth_failures: u64,
    /// Client requests answered with an `error` message.
    pub bad_requests: u64,
    /// Subscribes refused because a private topic had no valid claim (also in `bad_requests`).
    pub claims_refused: u64,
    /// Handshakes refused for a wrong client token (also in `handshake_failures`).
    pub client_token_failures: u64,
    /// API requests refused for a missing or wrong bearer token (also in `api_errors`).
    pub api_token_failures: u64,
    /// Private subscriptions the server ended because their claim expired.
    pub claim_expirations: u64,
    /// Sessions closed for a protocol violation (1002, 1003, 1007, 1009).
    pub protocol_closes: u64,
    pub api_requests: u64,
    pub api_errors: u64,
    /// API requests not complete within their deadline (answered with 408).
    pub api_request_timeouts: u64,
    /// API connections closed at the API's connection cap to admit a new one.
    pub api_evictions: u64,
    /// Replays of history started (`since` or `recent` in a subscribe).
    pub replays: u64,
    /// Resumes (`since`) whose every missed message was replayed.
    pub resumes_recovered: u64,
    /// Resumes that could not recover everything (another epoch, or history too short).
    pub resumes_lost: u64,
    /// `continuity_lost` messages sent: eviction overtook a replay.
    pub continuity_lost: u64,
    /// Fan-out time per publish (`/stats` shows its count, sum and maximum).
    #[serde(skip)]
    pub fanout: Histogram,
}

/// Upper bounds of the fan-out histogram's buckets, in nanoseconds (10 us to 1 s; one more bucket
/// holds the rest). Fixed: Prometheus can only aggregate histograms with the same buckets.
pub const FANOUT_BOUNDS_NS: [u64; 12] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Time per publish from its start to all its frames being queued: counts per bucket (not
/// cumulative; renderers add them up), the sum and the largest.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// `counts[i]`: observations at most `FANOUT_BOUNDS_NS[i]` and above the bound before;
    /// the last one: above every bound.
    pub counts: [u64; FANOUT_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = FANOUT_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(FANOUT_BOUNDS_NS.len());
        self.counts[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}
