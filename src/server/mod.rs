//! The event loop: the only code that touches sockets. One `mio::Poll`, one thread.
//!
//! Each iteration: wait for readiness or the next timer deadline, then accept, read, expire
//! timers, and flush the sessions that have output (one vectored write per socket, so all the
//! publishes of an iteration leave together). Everything else lives in sans-IO modules.

mod api;
mod sys;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::broker::{Broker, SubscriberId};
use crate::config::{Config, millis};
use crate::error::ServerError;
use crate::protocol;
use crate::session::{CloseReason, Ctx, HandshakePolicy, Push, Session, SessionSettings, Status};
use crate::stats::Stats;
use crate::timer::{TimerHandle, TimerWheel};

const WS_LISTENER: Token = Token(usize::MAX - 1);
const API_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Bytes read per `read` call (one shared buffer for the whole loop).
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may feed per readiness event before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Kernel accept queue for connection bursts (capped by net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// Back-off before accepting again when the process is out of descriptors.
const ACCEPT_PAUSE_MS: u64 = 100;
/// Grace for flushing close frames on shutdown.
const SHUTDOWN_GRACE_MS: u64 = 3_000;
/// API connections: idle keep-alive limit, and how many may be open at once.
const API_IDLE_MS: u64 = 60_000;
const MAX_API_CONNECTIONS: usize = 256;

/// Stops a running server from any thread (or a signal handler): the loop closes every client
/// with 1001, flushes for a bounded time and returns from [`Server::run`].
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // A failed wake only delays shutdown until the next event or timer.
        let _ = self.waker.wake();
    }
}

enum Timeout {
    Conn {
        key: usize,
        generation: u32,
    },
    /// The demo publisher, due at this time (the next one is scheduled from it, so it never drifts).
    Tick {
        due_ms: u64,
    },
    ResumeAccept,
    ShutdownDeadline,
    ReleaseMemory,
}

enum Kind {
    Ws(Session),
    /// Boxed: API connections are few, WebSocket sessions many; keep the slab entry small.
    Api(Box<api::ApiConn>),
}

struct Conn {
    socket: TcpStream,
    generation: u32,
    kind: Kind,
    timer: Option<(TimerHandle, u64)>,
    /// Queued in `dirty` for a flush at the end of the iteration.
    dirty: bool,
    /// The peer closed its side.
    eof: bool,
    /// We closed our side after the last byte went out.
    write_closed: bool,
    /// Registered for writability: only while output waits on a full socket buffer, so a fast
    /// reader's acknowledgements do not wake the loop after every write.
    wants_write: bool,
}

fn token_of(key: usize, generation: u32) -> Token {
    Token((generation as usize) << 32 | key)
}

fn split_token(token: Token) -> (usize, u32) {
    (token.0 & 0xFFFF_FFFF, (token.0 >> 32) as u32)
}

/// Rate limits a class of log lines so a misbehaving peer cannot flood the log.
#[derive(Default)]
struct LogLimiter {
    window_start_ms: u64,
    in_window: u32,
    suppressed: u32,
}

impl LogLimiter {
    const WINDOW_MS: u64 = 10_000;
    const PER_WINDOW: u32 = 10;

    fn allow(&mut self, now_ms: u64) -> bool {
        if now_ms >= self.window_start_ms + Self::WINDOW_MS {
            if self.suppressed > 0 {
                warn!("{} similar log lines suppressed", self.suppressed);
            }
            *self = LogLimiter {
                window_start_ms: now_ms,
                ..Default::default()
            };
        }
        self.in_window += 1;
        let allowed = self.in_window <= Self::PER_WINDOW;
        if !allowed {
            self.suppressed += 1;
        }
        allowed
    }
}

pub struct Server {
    poll: Poll,
    ws_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    ws_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    shutdown: ShutdownHandle,
    config: Config,
    /// Accepted sockets inherit TCP_NODELAY from the listeners.
    nodelay_inherited: bool,
    /// The WebSocket listener has TCP_DEFER_ACCEPT.
    deferred_accept: bool,
}

impl Server {
    /// Binds the listeners (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let poll = Poll::new()?;
        let bind = |addr: SocketAddr| -> Result<TcpListener, ServerError> {
            let listener =
                TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
            if let Err(e) = sys::set_backlog(&listener, LISTEN_BACKLOG) {
                warn!("could not raise the listen backlog: {e}");
            }
            Ok(listener)
        };
        let mut ws_listener = bind(config.listen)?;
        let mut nodelay_inherited = sys::set_listener_nodelay(&ws_listener);
        let deferred_accept = sys::set_defer_accept(
            &ws_listener,
            config.handshake_timeout.as_secs().max(1) as u32,
        );
        let ws_addr = ws_listener.local_addr()?;
        poll.registry()
            .register(&mut ws_listener, WS_LISTENER, Interest::READABLE)?;
        let (api_listener, api_addr) = match config.api_listen {
            Some(addr) => {
                let mut l = bind(addr)?;
                nodelay_inherited &= sys::set_listener_nodelay(&l);
                let local = l.local_addr()?;
                poll.registry()
                    .register(&mut l, API_LISTENER, Interest::READABLE)?;
                (Some(l), Some(local))
            }
            None => (None, None),
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let shutdown = ShutdownHandle {
            requested: Arc::new(AtomicBool::new(false)),
            waker,
        };
        Ok(Server {
            poll,
            ws_listener: Some(ws_listener),
            api_listener,
            ws_addr,
            api_addr,
            shutdown,
            config,
            nodelay_inherited,
            deferred_accept,
        })
    }

    /// The WebSocket listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The API listener's address, if the API is on.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Runs the loop until shutdown is requested and the clients are closed.
    pub fn run(self) -> Result<(), ServerError> {
        let Server {
            poll,
            ws_listener,
            api_listener,
            shutdown,
            config,
            nodelay_inherited,
            deferred_accept,
            ..
        } = self;
        let settings = SessionSettings::from_config(&config);
        let policy = Rc::new(HandshakePolicy::from_config(&config));
        let mut event_loop = Loop {
            poll,
            ws_listener,
            api_listener,
            shutdown,
            started: Instant::now(),
            now_ms: 0,
            conns: Slab::with_capacity(config.max_connections.min(1 << 20)),
            ws_count: 0,
            api_count: 0,
            next_generation: 0,
            broker: Broker::new(),
            timers: TimerWheel::with_capacity(config.max_connections.min(1 << 20)),
            stats: Stats::default(),
            settings,
            policy,
            scratch: BytesMut::new(),
            dirty: Vec::new(),
            more_to_read: Vec::new(),
            accept_paused: false,
            shutting_down: false,
            tick: None,
            accept_log: LogLimiter::default(),
            nodelay_inherited,
            deferred_accept,
            removed_since_trim: 0,
            last_trim_ms: 0,
            trim_scheduled: false,
            config,
        };
        event_loop.run()
    }
}

struct Loop {
    poll: Poll,
    ws_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    shutdown: ShutdownHandle,
    config: Config,
    started: Instant,
    now_ms: u64,
    conns: Slab<Conn>,
    ws_count: usize,
    api_count: usize,
    next_generation: u32,
    broker: Broker,
    timers: TimerWheel<Timeout>,
    stats: Stats,
    settings: SessionSettings,
    policy: Rc<HandshakePolicy>,
    /// The loop's one read buffer; a read hands sessions a zero-copy slice of it.
    scratch: BytesMut,
    /// Connections with output to flush at the end of the iteration.
    dirty: Vec<(usize, u32)>,
    /// Connections that used their read budget and still have input.
    more_to_read: Vec<(usize, u32)>,
    accept_paused: bool,
    shutting_down: bool,
    /// The demo publisher: topic, its pre-encoded push frame, interval, next due time.
    tick: Option<(String, Bytes, u64)>,
    accept_log: LogLimiter,
    /// Accepted sockets already have TCP_NODELAY (from the listener).
    nodelay_inherited: bool,
    /// Accepted WebSocket connections usually have their request waiting (TCP_DEFER_ACCEPT).
    deferred_accept: bool,
    /// Connections closed since freed memory was last returned to the OS.
    removed_since_trim: usize,
    last_trim_ms: u64,
    trim_scheduled: bool,
}

/// After this many connections have gone, return freed memory to the OS (at most once a second).
const TRIM_AFTER_REMOVALS: usize = 1024;

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

impl Loop {
    fn run(&mut self) -> Result<(), ServerError> {
        info!(
            "wspush listening on ws://{}{} (api: {})",
            self.ws_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or("?".into(), |a| a.to_string()),
            self.config.path,
            self.api_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .map_or("off".into(), |a| a.to_string()),
        );
        if let Some((topic, interval)) = self.config.tick.clone() {
            let frame = protocol::encode_push(&topic, "\"publish msg\"");
            let interval = millis(interval);
            self.tick = Some((topic, frame, interval));
            self.timers
                .insert(interval, Timeout::Tick { due_ms: interval });
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if interrupted(&e) {
                    continue;
                }
                return Err(e.into());
            }
            self.now_ms = millis(self.started.elapsed());
            for event in events.iter() {
                match event.token() {
                    WS_LISTENER => self.accept_ws(),
                    API_LISTENER => self.accept_api(),
                    WAKER => {
                        if self.shutdown.requested.load(Ordering::SeqCst) {
                            self.begin_shutdown();
                        }
                    }
                    token => {
                        let (key, generation) = split_token(token);
                        // A stale event for a key reused within this batch carries the old
                        // generation and is ignored.
                        if self
                            .conns
                            .get(key)
                            .is_some_and(|c| c.generation == generation)
                        {
                            let hangup = event.is_read_closed() || event.is_error();
                            if event.is_readable() || hangup {
                                self.read(key, hangup);
                            }
                            self.service(key);
                        }
                    }
                }
            }
            for (key, generation) in std::mem::take(&mut self.more_to_read) {
                if self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.generation == generation)
                {
                    self.read(key, false);
                    self.service(key);
                }
            }
            self.expire_timers();
            self.flush_dirty();
            if self.removed_since_trim >= TRIM_AFTER_REMOVALS && !self.trim_scheduled {
                // At most once a second, and always after the last wave of a burst.
                self.trim_scheduled = true;
                let at = self.now_ms.max(self.last_trim_ms + 1000);
                self.timers.insert(at, Timeout::ReleaseMemory);
            }
            if self.shutting_down && self.conns.is_empty() {
                info!("shutdown complete");
                return Ok(());
            }
        }
    }

    /// Sleep until the next timer deadline, or not at all when work is pending.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.more_to_read.is_empty() || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = millis(self.started.elapsed());
        self.timers
            .next_deadline()
            .map(|d| Duration::from_millis(d.saturating_sub(now)))
    }

    fn accept_ws(&mut self) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(listener) = &self.ws_listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => {
                    if self.ws_count >= self.config.max_connections {
                        self.stats.refused_over_capacity += 1;
                        if self.accept_log.allow(self.now_ms) {
                            warn!(
                                "refusing {peer}: {} connections (--max-connections)",
                                self.ws_count
                            );
                        }
                        refuse(socket);
                        continue;
                    }
                    if !self.nodelay_inherited {
                        // Pushes are small: never hold them back waiting for an ACK (Nagle).
                        let _ = socket.set_nodelay(true);
                    }
                    if let Some(key) = self.register(socket, |id, now, this| {
                        Kind::Ws(Session::new(id, now, Rc::clone(&this.policy)))
                    }) {
                        self.ws_count += 1;
                        self.stats.accepted += 1;
                        if self.deferred_accept {
                            // The request is most likely here already; reading it now saves
                            // a readiness event (epoll does not report a drained socket).
                            self.read(key, false);
                            self.service(key);
                        } else {
                            self.sync_timer(key);
                        }
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => {}
                Err(e) => return self.accept_failed(e),
            }
        }
    }

    fn accept_api(&mut self) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(listener) = &self.api_listener else {
                return;
            };
            match listener.accept() {
                Ok((socket, _)) => {
                    if self.api_count >= MAX_API_CONNECTIONS {
                        refuse(socket);
                        continue;
                    }
                    if !self.nodelay_inherited {
                        // Pushes are small: never hold them back waiting for an ACK (Nagle).
                        let _ = socket.set_nodelay(true);
                    }
                    let limits = api::limits(&self.config);
                    if let Some(key) = self.register(socket, |_, now, _| {
                        Kind::Api(Box::new(api::ApiConn::new(limits, now + API_IDLE_MS)))
                    }) {
                        self.api_count += 1;
                        self.sync_timer(key);
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => {}
                Err(e) => return self.accept_failed(e),
            }
        }
    }

    fn accept_failed(&mut self, e: io::Error) {
        if self.accept_log.allow(self.now_ms) {
            warn!("accept failed: {e}");
        }
        if sys::out_of_resources(&e) && !self.accept_paused {
            // Edge-triggered: nothing would wake us for the connections already queued, and
            // retrying now would fail the same way. Both listeners pause; one timer resumes them.
            self.accept_paused = true;
            self.timers
                .insert(self.now_ms + ACCEPT_PAUSE_MS, Timeout::ResumeAccept);
        }
        // Other errors (ECONNABORTED, ...) concern one connection; the next event retries.
    }

    fn register(
        &mut self,
        mut socket: TcpStream,
        make: impl FnOnce(SubscriberId, u64, &Loop) -> Kind,
    ) -> Option<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.next_generation = (self.next_generation + 1) & 0x7FFF_FFFF;
        let generation = self.next_generation;
        let token = token_of(key, generation);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
        {
            warn!("register failed: {e}");
            return None;
        }
        let kind = make(SubscriberId(token.0 as u64), self.now_ms, self);
        self.conns.insert(Conn {
            socket,
            generation,
            kind,
            timer: None,
            dirty: false,
            eof: false,
            write_closed: false,
            wants_write: false,
        });
        Some(key)
    }

    /// Reads until the socket would block or the read budget is spent, feeding the session.
    /// `hangup`: the peer closed its side, so read on to the EOF even after a short read.
    fn read(&mut self, key: usize, hangup: bool) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.eof {
                return;
            }
            if budget == 0 {
                self.more_to_read.push((key, conn.generation));
                return;
            }
            self.scratch.reserve(READ_CHUNK);
            self.scratch.resize(READ_CHUNK, 0);
            let n = match conn.socket.read(&mut self.scratch[..]) {
                Ok(0) => {
                    conn.eof = true;
                    if let Kind::Ws(session) = &mut conn.kind {
                        session.on_eof(self.now_ms);
                    }
                    return;
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                Err(e) => {
                    debug!("read failed: {e}");
                    conn.eof = true;
                    if let Kind::Ws(session) = &mut conn.kind {
                        session.on_eof(self.now_ms);
                    }
                    return;
                }
            };
            budget = budget.saturating_sub(n);
            let input = self.scratch.split_to(n).freeze();
            match &mut conn.kind {
                Kind::Ws(session) => {
                    let mut ctx = Ctx {
                        broker: &mut self.broker,
                        settings: &self.settings,
                        stats: &mut self.stats,
                        now_ms: self.now_ms,
                    };
                    session.on_input(input, &mut ctx);
                }
                Kind::Api(_) => self.api_input(key, input),
            }
            if n < READ_CHUNK && !hangup {
                // A short read drained the socket; edge-triggered readiness reports the next
                // arrival, so the read that would only say EAGAIN is skipped.
                return;
            }
        }
    }

    fn api_input(&mut self, key: usize, input: Bytes) {
        let requests = match self.conns.get_mut(key) {
            Some(Conn {
                kind: Kind::Api(conn),
                ..
            }) => conn.feed(&input, self.now_ms + API_IDLE_MS),
            _ => return,
        };
        for request in requests {
            let authorized = api::authorized(&request, self.config.api_token.as_deref());
            let response = api::handle(request, authorized, &mut ApiTarget { event_loop: self });
            if let Some(Conn {
                kind: Kind::Api(conn),
                ..
            }) = self.conns.get_mut(key)
            {
                conn.respond(response);
            }
        }
        if let Some(Conn {
            kind: Kind::Api(conn),
            ..
        }) = self.conns.get_mut(key)
        {
            conn.after_requests();
        }
    }

    /// Flushes output, advances closing connections, removes finished ones, re-arms timers.
    fn service(&mut self, key: usize) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (status, written) = match &mut conn.kind {
            Kind::Ws(session) => {
                let mut written = 0;
                if let Some(out) = session.outbound()
                    && !out.is_empty()
                    && !conn.write_closed
                {
                    match out.write_to(&mut conn.socket) {
                        Ok(n) => written = n,
                        Err(e) => {
                            debug!("write failed: {e}");
                            conn.eof = true;
                        }
                    }
                    session.on_written(written, now);
                }
                let status = match session.status() {
                    _ if conn.eof && !session.has_output() => Status::Dead,
                    Status::Finishing if conn.eof => Status::Dead,
                    other => other,
                };
                (status, written)
            }
            Kind::Api(api_conn) => {
                let written = match api_conn.out.write_to(&mut conn.socket) {
                    Ok(n) => n,
                    Err(_) => {
                        conn.eof = true;
                        0
                    }
                };
                api_conn.on_written(written, now);
                (api_conn.status(conn.eof), written)
            }
        };
        self.stats.bytes_written += written as u64;
        if status != Status::Dead {
            self.update_interest(key);
        }
        match status {
            Status::Dead => self.remove(key),
            Status::Finishing => {
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                let drained = match &mut conn.kind {
                    Kind::Ws(s) => !s.has_output(),
                    Kind::Api(a) => a.out.is_empty(),
                };
                if drained && !conn.write_closed {
                    // Half-close so the peer sees our last frame before EOF; keep reading until
                    // its EOF (or the linger deadline) so unread input does not turn into a reset.
                    let _ = conn.socket.shutdown(Shutdown::Write);
                    conn.write_closed = true;
                }
                self.sync_timer(key);
            }
            Status::Live => self.sync_timer(key),
        }
    }

    /// Registers for writability exactly while output is stuck behind a full socket buffer.
    fn update_interest(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let pending = !conn.write_closed
            && match &mut conn.kind {
                Kind::Ws(s) => s.has_output(),
                Kind::Api(a) => !a.out.is_empty(),
            };
        if pending != conn.wants_write {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = token_of(key, conn.generation);
            match self
                .poll
                .registry()
                .reregister(&mut conn.socket, token, interest)
            {
                Ok(()) => conn.wants_write = pending,
                Err(e) => {
                    debug!("reregister failed: {e}");
                    conn.eof = true;
                }
            }
        }
    }

    /// Arms the connection's timer at its next deadline if the current one would fire late.
    /// A timer that fires early is cheap: the session re-checks and it is re-armed.
    fn sync_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = match &conn.kind {
            Kind::Ws(s) => s.next_deadline(&self.settings),
            Kind::Api(a) => a.deadline_ms(self.settings.write_timeout_ms),
        };
        if let Some((handle, at)) = conn.timer {
            if at <= deadline {
                return;
            }
            self.timers.cancel(handle);
        }
        let handle = self.timers.insert(
            deadline,
            Timeout::Conn {
                key,
                generation: conn.generation,
            },
        );
        conn.timer = Some((handle, deadline));
    }

    fn expire_timers(&mut self) {
        let now = millis(self.started.elapsed());
        self.now_ms = now;
        while let Some((_, timeout)) = self.timers.poll(now) {
            match timeout {
                Timeout::Conn { key, generation } => {
                    let Some(conn) = self.conns.get_mut(key) else {
                        continue;
                    };
                    if conn.generation != generation {
                        continue;
                    }
                    conn.timer = None;
                    match &mut conn.kind {
                        Kind::Ws(session) => {
                            let mut ctx = Ctx {
                                broker: &mut self.broker,
                                settings: &self.settings,
                                stats: &mut self.stats,
                                now_ms: now,
                            };
                            session.on_timer(&mut ctx);
                        }
                        Kind::Api(api_conn) => {
                            api_conn.on_timer(now, self.settings.write_timeout_ms)
                        }
                    }
                    self.service(key);
                }
                Timeout::Tick { due_ms } => {
                    if let Some((topic, frame, interval)) = self.tick.clone()
                        && !self.shutting_down
                    {
                        let reached = self.publish(&topic, &frame);
                        debug!("tick: pushed to {reached} subscribers of {topic}");
                        let next = (due_ms + interval).max(now + 1);
                        self.timers.insert(next, Timeout::Tick { due_ms: next });
                    }
                }
                Timeout::ResumeAccept => {
                    self.accept_paused = false;
                    self.accept_ws();
                    self.accept_api();
                }
                Timeout::ReleaseMemory => {
                    sys::release_free_memory();
                    self.removed_since_trim = 0;
                    self.last_trim_ms = now;
                    self.trim_scheduled = false;
                }
                Timeout::ShutdownDeadline => {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.remove(key);
                    }
                }
            }
        }
    }

    /// Hands one encoded frame to every subscriber of `topic`; returns how many got it.
    ///
    /// Output is normally flushed once per iteration, after all publishes; a queue that fills up
    /// before then is flushed on the spot, so a fast reader is never mistaken for a slow one.
    fn publish(&mut self, topic: &str, frame: &Bytes) -> usize {
        self.stats.publishes += 1;
        let mut reached = 0;
        for id in self.broker.subscribers(topic) {
            let (key, generation) = split_token(Token(id.0 as usize));
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            let Kind::Ws(session) = &mut conn.kind else {
                continue;
            };
            let mut outcome = session.push(frame, &self.settings, &mut self.stats);
            if outcome == Push::Full {
                if let Some(out) = session.outbound() {
                    let written = out.write_to(&mut conn.socket).unwrap_or(0);
                    self.stats.bytes_written += written as u64;
                    session.on_written(written, self.now_ms);
                }
                outcome =
                    session.push_or_overflow(frame, &self.settings, &mut self.stats, self.now_ms);
            }
            reached += usize::from(outcome == Push::Queued);
            if matches!(outcome, Push::Queued | Push::Closed) && !conn.dirty {
                conn.dirty = true;
                self.dirty.push((key, generation));
            }
        }
        reached
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &(key, generation) in &dirty {
            if let Some(conn) = self.conns.get_mut(key)
                && conn.generation == generation
            {
                conn.dirty = false;
                self.service(key);
            }
        }
        // Reuse the allocation next iteration.
        if self.dirty.is_empty() {
            self.dirty = dirty;
            self.dirty.clear();
        }
    }

    fn remove(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        self.removed_since_trim += 1;
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if let Some((handle, _)) = conn.timer {
            self.timers.cancel(handle);
        }
        match conn.kind {
            Kind::Ws(session) => {
                self.broker.remove_subscriber(session.id());
                self.ws_count -= 1;
            }
            Kind::Api(_) => self.api_count -= 1,
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        info!("shutting down: closing {} connections", self.conns.len());
        self.shutting_down = true;
        for listener in [self.ws_listener.take(), self.api_listener.take()]
            .into_iter()
            .flatten()
        {
            let mut listener = listener;
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match &mut conn.kind {
                Kind::Ws(session) => session.close(CloseReason::ShuttingDown, self.now_ms),
                Kind::Api(api_conn) => api_conn.close_after_flush(),
            }
            self.service(key);
        }
        self.timers
            .insert(self.now_ms + SHUTDOWN_GRACE_MS, Timeout::ShutdownDeadline);
    }

    fn gauges(&self) -> api::Gauges {
        api::Gauges {
            connections: self.ws_count,
            api_connections: self.api_count,
            topics: self.broker.topic_count(),
            subscriptions: self.broker.subscription_count(),
            uptime_secs: self.now_ms / 1000,
        }
    }
}

/// What API requests may do to the loop.
struct ApiTarget<'a> {
    event_loop: &'a mut Loop,
}

impl api::Target for ApiTarget<'_> {
    fn topic_rules(&self) -> protocol::TopicRules {
        self.event_loop.settings.topic_rules
    }
    fn publish(&mut self, topic: &str, frame: &Bytes) -> usize {
        self.event_loop.publish(topic, frame)
    }
    fn stats(&mut self) -> (Stats, api::Gauges) {
        (self.event_loop.stats.clone(), self.event_loop.gauges())
    }
    fn count_request(&mut self, error: bool) {
        self.event_loop.stats.api_requests += 1;
        self.event_loop.stats.api_errors += u64::from(error);
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
    let _ = socket.write(&crate::session::http_error(
        503,
        "server at connection capacity",
    ));
    let _ = socket.shutdown(Shutdown::Write);
}
