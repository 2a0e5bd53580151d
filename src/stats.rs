//! Counters reported by `GET /stats`. Plain integers bumped on the loop thread.

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
}
