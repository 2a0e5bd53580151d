//! Accepting connections on both listeners: the connection caps, pausing when the process is
//! out of descriptors, and refusing over the cap with a 503.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};

use log::{debug, trace, warn};
use mio::Interest;
use mio::net::TcpStream;

use super::{Conn, Kind, Loop, Timeout, interrupted, subscriber_id, sys, would_block};
use crate::conn::http::HttpConn;
use crate::conn::ws::Session;
use crate::oplog::{LogLimiter, Suppressed};
use crate::wire::http;

/// Back-off before accepting again when the process is out of descriptors.
const ACCEPT_PAUSE_MS: u64 = 100;
/// API connections that may be open at once.
const MAX_API_CONNECTIONS: usize = 256;

/// The accept side's state.
pub(super) struct Accepting {
    pub(super) ws_count: usize,
    pub(super) api_count: usize,
    /// Slab keys of the API connections (at most `MAX_API_CONNECTIONS`), to pick one to close
    /// at the cap without walking every connection.
    pub(super) api_keys: Vec<usize>,
    max_connections: usize,
    pub(super) paused: bool,
    /// Accepted sockets already have TCP_NODELAY (from the listener).
    nodelay_inherited: bool,
    /// Accepted WebSocket connections usually have their request waiting (TCP_DEFER_ACCEPT).
    deferred_accept: bool,
    log: LogLimiter,
}

impl Accepting {
    pub(super) fn new(
        max_connections: usize,
        nodelay_inherited: bool,
        deferred_accept: bool,
    ) -> Self {
        Accepting {
            ws_count: 0,
            api_count: 0,
            api_keys: Vec::new(),
            max_connections,
            paused: false,
            nodelay_inherited,
            deferred_accept,
            log: LogLimiter::new(10, 10_000),
        }
    }
}

/// The two listeners.
#[derive(Clone, Copy)]
pub(super) enum Port {
    WebSocket,
    Api,
}

impl Loop {
    /// Accepts every connection waiting on `port` (edge-triggered: until it would block).
    pub(super) fn accept(&mut self, port: Port) {
        while !self.accepting.paused {
            let listener = match port {
                Port::WebSocket => &self.ws_listener,
                Port::Api => &self.api_listener,
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => match port {
                    Port::WebSocket => self.admit_ws(socket, peer),
                    Port::Api => self.admit_api(socket, peer),
                },
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => {}
                Err(e) => return self.accept_failed(e),
            }
        }
    }

    fn admit_ws(&mut self, socket: TcpStream, peer: SocketAddr) {
        if self.accepting.ws_count >= self.accepting.max_connections {
            self.app.stats.refused_over_capacity += 1;
            if self.accepting.log.allow(self.now_ms, report_suppressed) {
                warn!(
                    "refusing {peer}: {} connections (--max-connections)",
                    self.accepting.ws_count
                );
            }
            return refuse(socket);
        }
        let Some(key) = self.register(socket, |key, generation, now, this| {
            Kind::Ws(Session::new(
                subscriber_id(key, generation),
                now,
                &this.settings,
            ))
        }) else {
            return;
        };
        self.accepting.ws_count += 1;
        self.app.stats.accepted += 1;
        // At debug the session names its client once the upgrade request is read (behind a
        // trusted proxy, the forwarded address).
        trace!(
            "session #{}: accepted from {peer}",
            self.conns[key].generation
        );
        if self.accepting.deferred_accept {
            // The request is most likely here already; reading it now saves a readiness
            // event (epoll does not report a drained socket).
            self.read(key, false);
            self.service(key);
        } else {
            self.sync_timer(key);
        }
    }

    fn admit_api(&mut self, socket: TcpStream, peer: SocketAddr) {
        if self.accepting.api_count >= MAX_API_CONNECTIONS {
            // Make room by closing the connection that has waited longest for (or on) a
            // request; only when every one has answers on their way is the newcomer refused.
            match self.longest_waiting_api_connection() {
                Some(key) => {
                    debug!("API at capacity: closing the connection waiting longest");
                    self.app.stats.api_evictions += 1;
                    self.remove(key);
                }
                None => return refuse(socket),
            }
        }
        let Some(key) = self.register(socket, |_, _, now, this| {
            Kind::Http(Box::new(HttpConn::new(this.app.api_limits(), now)))
        }) else {
            return;
        };
        self.accepting.api_count += 1;
        self.accepting.api_keys.push(key);
        debug!(
            "API connection #{}: connected from {peer}",
            self.conns[key].generation
        );
        self.sync_timer(key);
    }

    fn longest_waiting_api_connection(&self) -> Option<usize> {
        self.accepting
            .api_keys
            .iter()
            .filter_map(|&key| match &self.conns.get(key)?.kind {
                Kind::Http(http) => Some((http.waiting_since()?, key)),
                Kind::Ws(_) => None,
            })
            .min()
            .map(|(_, key)| key)
    }

    fn accept_failed(&mut self, e: io::Error) {
        if self.accepting.log.allow(self.now_ms, report_suppressed) {
            warn!("accept failed: {e}");
        }
        if sys::out_of_resources(&e) && !self.accepting.paused {
            // Edge-triggered: nothing would wake us for the connections already queued, and
            // retrying now would fail the same way. Both listeners pause; one timer resumes them.
            self.accepting.paused = true;
            self.timers
                .insert(self.now_ms + ACCEPT_PAUSE_MS, Timeout::ResumeAccept);
        }
        // Other errors (ECONNABORTED, ...) concern one connection; the next event retries.
    }

    fn register(
        &mut self,
        mut socket: TcpStream,
        make: impl FnOnce(usize, u32, u64, &Loop) -> Kind,
    ) -> Option<usize> {
        if !self.accepting.nodelay_inherited {
            // Pushes are small: never hold them back waiting for an ACK (Nagle).
            let _ = socket.set_nodelay(true);
        }
        let key = self.conns.vacant_key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut socket, mio::Token(key), Interest::READABLE)
        {
            warn!("register failed: {e}");
            return None;
        }
        // Ids grow in connection order (the hub's fan-out order); the top bit stays clear.
        self.next_generation = (self.next_generation + 1) & 0x7FFF_FFFF;
        let generation = self.next_generation;
        let kind = make(key, generation, self.now_ms, self);
        self.conns.insert(Conn {
            socket,
            generation,
            kind,
            timer: None,
            dirty: false,
            eof: false,
            write_closed: false,
            wants_write: false,
            ring_listed: false,
            read_paused: false,
        });
        Some(key)
    }
}

/// Turns away a connection over the cap with a short HTTP 503.
fn refuse(mut socket: TcpStream) {
    // Read what has arrived of the request first (with TCP_DEFER_ACCEPT, usually all of it):
    // closing over unread input sends a reset, which can destroy the 503 before it is read.
    let mut sink = [0u8; 1024];
    for _ in 0..8 {
        if !matches!(socket.read(&mut sink), Ok(n) if n == sink.len()) {
            break;
        }
    }
    let _ = socket.write(&http::error_response(503, "server at connection capacity"));
    let _ = socket.shutdown(Shutdown::Write);
}

/// The line for accept-side warnings a peer can provoke over and over (over capacity, accept
/// errors), which share one limiter.
fn report_suppressed(suppressed: Suppressed) {
    warn!(
        "{} similar accept warnings suppressed in the last {}s",
        suppressed.count,
        suppressed.secs()
    );
}
