//! Per-connection state machines, sans-IO, all of one shape ([`Connection`]): the server hands
//! each the bytes it read (`on_input`, whose arguments depend on the kind), says what it wrote
//! (`on_written`) and when a deadline passed (`on_timer`); the connection answers through its
//! [`OutQueue`], the only path of bytes to its socket, and its [`Status`].
//!
//! - [`ws::Session`]: a connection on the WebSocket port, from the upgrade request to the close
//!   handshake; it applies its client's commands to the [`crate::hub`] and holds the
//!   slow-consumer policy.
//! - [`http::HttpConn`]: an HTTP/1.1 connection of the API; it yields parsed requests and
//!   queues the responses the application gives back.
//!
//! This layer knows [`crate::wire`] and [`crate::hub`]; what requests mean (routes, auth) is
//! the application's, passed in as values or through the [`ws::WsRoutes`] trait.

pub mod http;
pub mod outbound;
pub mod ws;

use tungstenite::protocol::WebSocketConfig;

use crate::config::{Config, SlowConsumerPolicy, millis};
use crate::hub::Hub;
use crate::oplog::AuthLog;
use crate::stats::Stats;
use crate::wire::forwarded::TrustedProxies;
use crate::wire::message::TopicRules;
pub use outbound::OutQueue;

/// Bytes control frames tungstenite queues on its own (pongs, close replies) may overshoot the
/// outbound cap before a session counts as overloaded.
const CONTROL_SLACK: usize = 16 * 1024;

/// What the server should do with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Live,
    /// Flush the queue, then half-close and discard input until EOF or the linger deadline.
    Finishing,
    /// Drop the connection now.
    Dead,
}

/// The shape every connection kind shares; the server drives all of them through it.
pub trait Connection {
    /// The queue the server writes to the socket, when there is one.
    fn outbound(&mut self) -> Option<&mut OutQueue>;
    /// The server wrote `written` bytes from the queue (0: the socket took nothing).
    fn on_written(&mut self, written: usize, now_ms: u64);
    /// The earliest time this connection needs `on_timer`.
    fn next_deadline(&self, settings: &Settings) -> u64;
    /// A deadline may have passed: time out whatever is due.
    /// The hub: a WebSocket session leaves the private topics whose claims expired.
    /// `auth_log`: a session whose `auth` message did not come in time logs it there.
    fn on_timer(
        &mut self,
        settings: &Settings,
        stats: &mut Stats,
        hub: &mut Hub,
        auth_log: &mut AuthLog,
        now_ms: u64,
    );
    /// `eof`: the peer closed its side, nothing more will arrive.
    fn status(&mut self, eof: bool) -> Status;
    /// The server stops reading while this holds (its replies wait unread beyond the cap), and
    /// reads again once the queue has drained below it.
    fn input_blocked(&self, _settings: &Settings) -> bool {
        false
    }

    fn has_output(&mut self) -> bool {
        self.outbound().is_some_and(|q| !q.is_empty())
    }
}

/// When a connection's pending output last made progress; the same write-timeout rule for
/// every kind.
#[derive(Clone, Copy, Debug)]
pub struct WriteStall {
    /// `NOT_STALLED` while nothing waits (a plain `u64`: one is kept per connection).
    since_ms: u64,
}

const NOT_STALLED: u64 = u64::MAX;

impl Default for WriteStall {
    fn default() -> Self {
        WriteStall {
            since_ms: NOT_STALLED,
        }
    }
}

impl WriteStall {
    pub fn on_written(&mut self, written: usize, queue_empty: bool, now_ms: u64) {
        if queue_empty {
            self.since_ms = NOT_STALLED;
        } else if written > 0 || self.since_ms == NOT_STALLED {
            self.since_ms = now_ms;
        }
    }

    /// When the connection times out unless its output moves; `u64::MAX` when nothing waits.
    pub fn deadline(&self, write_timeout_ms: u64) -> u64 {
        self.since_ms.saturating_add(write_timeout_ms)
    }

    pub fn expired(&self, now_ms: u64, write_timeout_ms: u64) -> bool {
        now_ms >= self.deadline(write_timeout_ms)
    }
}

/// The connection settings, derived once from [`Config`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// A client silent this long gets a protocol Ping.
    pub heartbeat_interval_ms: u64,
    /// A client silent this long (interval + timeout) is closed.
    pub idle_limit_ms: u64,
    pub write_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// An API connection idle this long between requests is closed.
    pub api_idle_ms: u64,
    /// Time from a request's first byte to its last; then 408 and close.
    pub api_request_ms: u64,
    pub outbound_cap: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub max_topics: usize,
    pub topic_rules: TopicRules,
    pub echo: bool,
    pub ws_config: WebSocketConfig,
    /// Proxies whose forwarding headers name the client in log lines (`--trusted-proxy`).
    pub trusted_proxies: TrustedProxies,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        // read_buffer_size 0: tungstenite allocates no read buffer up front; it grows per frame.
        // write_buffer_size 0: every frame it writes goes straight into our queue.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(0)
            .write_buffer_size(0)
            .max_write_buffer_size(config.outbound_cap + CONTROL_SLACK)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        Settings {
            heartbeat_interval_ms: millis(config.heartbeat_interval),
            idle_limit_ms: config.idle_limit_ms(),
            write_timeout_ms: millis(config.write_timeout),
            handshake_timeout_ms: millis(config.handshake_timeout),
            api_idle_ms: 60_000,
            api_request_ms: millis(config.api_request_timeout),
            outbound_cap: config.outbound_cap,
            slow_consumer: config.slow_consumer,
            max_topics: config.max_topics_per_connection,
            topic_rules: TopicRules {
                max_len: config.max_topic_length,
            },
            echo: config.echo,
            ws_config,
            trusted_proxies: TrustedProxies::new(config.trusted_proxies.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WriteStall;

    #[test]
    fn write_stall_restarts_on_progress_only() {
        let mut stall = WriteStall::default();
        assert_eq!(stall.deadline(100), u64::MAX);
        stall.on_written(0, false, 10);
        stall.on_written(0, false, 50);
        assert_eq!(
            stall.deadline(100),
            110,
            "no progress: the first stall counts"
        );
        stall.on_written(5, false, 60);
        assert!(!stall.expired(150, 100));
        assert!(stall.expired(160, 100));
        stall.on_written(5, true, 70);
        assert_eq!(stall.deadline(100), u64::MAX);
    }
}
