//! The event loop: the only code that does I/O. One `mio::Poll`, one thread.
//!
//! Each iteration: wait for readiness or the next timer deadline; accept; read and hand the
//! bytes to the connection's state machine (or, for API requests, to the application's routes);
//! move hub deliveries into the subscribers' queues; expire timers; flush every connection with
//! output (one `send`/`sendmsg` per socket, so all the publishes of an iteration leave together).
//!
//! Tokens are slab keys. A readiness event that arrives for a key reused within the same batch
//! reaches the new connection, which finds nothing to read: events are hints, and every handler
//! tolerates a spurious one. Subscriber ids add a generation to the key, so an id never names a
//! later connection.

mod accept;
mod memory;
mod procfs;
mod socket;
mod sys;

use std::io::Read;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::app::summary::{self, StatsLog};
use crate::app::tick::{self, DemoTick};
use crate::app::{Action, App, Gauges, Messages, Published, Requester};
use crate::config::{Config, millis};
use crate::conn::http::HttpConn;
use crate::conn::outbound::Run;
use crate::conn::ws::{CloseReason, Ctx, Push, Session};
use crate::conn::{Connection, Settings, Status};
use crate::error::ServerError;
use crate::hub::{HistoryLimits, Hub, SubscriberId};
use crate::stats::Stats;
use crate::timer::{TimerHandle, TimerWheel};
use crate::wire::frame::Shared;
use accept::{Accepting, Port};
use memory::MemoryReturn;
use socket::{SocketWriter, interrupted, would_block};

const WS_LISTENER: Token = Token(usize::MAX - 1);
const API_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Bytes read per `read` call (one shared buffer for the whole loop).
const READ_CHUNK: usize = 64 * 1024;
/// Bytes one connection may feed per readiness event before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
/// Kernel accept queue for connection bursts (capped by net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// Grace for flushing close frames on shutdown.
const SHUTDOWN_GRACE_MS: u64 = 3_000;
/// Refill-and-write rounds of a replay per service; a socket that takes more than this is
/// serviced again in the next iteration, so one replay cannot hold up the loop.
const REPLAY_ROUNDS: usize = 16;

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

/// What a timer is for. Small: the wheel keeps one per connection.
enum Timeout {
    Conn {
        key: u32,
        generation: u32,
    },
    /// The demo publisher (it knows when it is due).
    Tick,
    ResumeAccept,
    ShutdownDeadline,
    ReleaseMemory,
    /// The oldest held message's time to live passes.
    HistoryExpiry,
    /// The authentication-failure log's window ends with lines suppressed.
    AuthLogWindow,
    /// The `--stats-log-interval` summary line is due.
    StatsLog,
}

enum Kind {
    Ws(Session),
    /// Boxed: API connections are few, WebSocket sessions many; keep the slab entry small.
    Http(Box<HttpConn>),
}

impl Kind {
    /// The one dispatch over the connection kinds.
    fn conn(&mut self) -> &mut dyn Connection {
        match self {
            Kind::Ws(session) => session,
            Kind::Http(http) => &mut **http,
        }
    }
}

struct Conn {
    socket: TcpStream,
    generation: u32,
    kind: Kind,
    timer: Option<TimerHandle>,
    /// Queued in `dirty` for a flush at the end of the iteration.
    dirty: bool,
    /// The peer closed its side.
    eof: bool,
    /// We closed our side after the last byte went out.
    write_closed: bool,
    /// Registered for writability: only while output waits on a full socket buffer, so a fast
    /// reader's acknowledgements do not wake the loop after every write.
    wants_write: bool,
    /// Listed in `spare_rings`: its drained queue keeps the ring of its last burst.
    ring_listed: bool,
    /// Not read while its replies wait unread beyond the cap; `service` resumes it.
    read_paused: bool,
}

impl Conn {
    /// Offers a push to a WebSocket session. A queue too full for it is written to the socket
    /// first, so a fast reader is never mistaken for a slow one.
    fn offer(
        &mut self,
        topic: &str,
        frame: &Shared,
        settings: &Settings,
        stats: &mut Stats,
        now_ms: u64,
    ) -> Push {
        if matches!(&self.kind, Kind::Ws(session) if !session.has_room(frame.len(), settings)) {
            stats.bytes_written += self.flush(now_ms) as u64;
        }
        match &mut self.kind {
            Kind::Ws(session) => session.push(topic, frame, settings, stats, now_ms),
            Kind::Http(_) => Push::NotOpen,
        }
    }

    /// Offers a run of pushes to a WebSocket session as one entry, writing a queue too full for
    /// it first. `None`: it does not fit, and each push is to be offered on its own.
    fn offer_run(
        &mut self,
        topic: &str,
        run: &Rc<Run>,
        settings: &Settings,
        stats: &mut Stats,
        now_ms: u64,
    ) -> Option<Push> {
        if matches!(&self.kind, Kind::Ws(session) if !session.has_room_for_run(run, settings)) {
            stats.bytes_written += self.flush(now_ms) as u64;
        }
        match &mut self.kind {
            Kind::Ws(session) => session.push_run(topic, run, settings, stats),
            Kind::Http(_) => Some(Push::NotOpen),
        }
    }

    /// Writes what the queue holds and the socket takes; returns the bytes written.
    fn flush(&mut self, now_ms: u64) -> usize {
        let conn = self.kind.conn();
        let Some(out) = conn.outbound() else {
            return 0;
        };
        if out.is_empty() || self.write_closed {
            return 0;
        }
        let written = match out.write_to(&mut SocketWriter::new(&self.socket)) {
            Ok(n) => n,
            Err(e) => {
                debug!("connection #{}: write failed: {e}", self.generation);
                self.eof = true;
                0
            }
        };
        conn.on_written(written, now_ms);
        written
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before 1970: every claim has expired).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, millis)
}

/// A random value from the OS (through std's hash seeds), so epochs differ between runs.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    hasher.finish()
}

/// Slab keys stay below 2^32: the connection cap is far smaller.
fn subscriber_id(key: usize, generation: u32) -> SubscriberId {
    SubscriberId::new(generation, key as u32)
}

fn split_id(id: SubscriberId) -> (usize, u32) {
    (id.slot() as usize, id.sequence())
}

/// The connection a subscriber id names, with its key, unless it has gone.
fn subscriber_conn(conns: &mut Slab<Conn>, id: SubscriberId) -> Option<(usize, &mut Conn)> {
    let (key, generation) = split_id(id);
    conns
        .get_mut(key)
        .filter(|conn| conn.generation == generation)
        .map(|conn| (key, conn))
}

pub struct Server {
    poll: Poll,
    ws_listener: TcpListener,
    api_listener: Option<TcpListener>,
    ws_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    shutdown: ShutdownHandle,
    config: Config,
    accepting: Accepting,
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
            ws_listener,
            api_listener,
            ws_addr,
            api_addr,
            shutdown,
            accepting: Accepting::new(config.max_connections, nodelay_inherited, deferred_accept),
            config,
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
        let capacity = self.config.max_connections.min(1 << 20);
        info!(
            "wspush listening on ws://{}{} (api: {})",
            self.ws_addr,
            self.config.path,
            self.api_addr.map_or("off".into(), |a| a.to_string()),
        );
        let mut event_loop = Loop {
            poll: self.poll,
            ws_listener: Some(self.ws_listener),
            api_listener: self.api_listener,
            shutdown: self.shutdown,
            started: Instant::now(),
            now_ms: 0,
            unix_ms: unix_ms(),
            conns: Slab::with_capacity(capacity),
            next_generation: 0,
            hub: Hub::with_history(
                HistoryLimits {
                    size: self.config.history_size,
                    ttl_ms: millis(self.config.history_ttl),
                    memory: self.config.history_memory,
                },
                random_seed(),
            ),
            history_timer: None,
            app: App::new(&self.config),
            settings: Settings::from_config(&self.config),
            timers: TimerWheel::with_capacity(capacity),
            scratch: BytesMut::new(),
            dirty: Vec::new(),
            more_to_read: Vec::new(),
            spare_rings: Vec::new(),
            accepting: self.accepting,
            shutting_down: false,
            tick: self.config.tick.as_ref().map(|(t, i)| DemoTick::new(t, *i)),
            stats_log: self
                .config
                .stats_log_interval
                .map(|interval| StatsLog::new(millis(interval), 0)),
            memory: MemoryReturn::default(),
        };
        event_loop.run()
    }
}

struct Loop {
    poll: Poll,
    ws_listener: Option<TcpListener>,
    api_listener: Option<TcpListener>,
    shutdown: ShutdownHandle,
    started: Instant,
    now_ms: u64,
    /// The wall clock, read with `now_ms` once per iteration: claims expire in Unix time.
    unix_ms: u64,
    conns: Slab<Conn>,
    next_generation: u32,
    hub: Hub,
    app: App,
    settings: Settings,
    timers: TimerWheel<Timeout>,
    /// The loop's one read buffer; a read hands connections a zero-copy slice of it.
    scratch: BytesMut,
    /// Connections with output to flush at the end of the iteration.
    dirty: Vec<(usize, u32)>,
    /// Connections that used their read budget and still have input.
    more_to_read: Vec<(usize, u32)>,
    /// Connections whose drained queue kept its ring: released unless the next iteration
    /// pushes to them again (a flood reuses one ring instead of allocating one per iteration).
    spare_rings: Vec<(usize, u32)>,
    accepting: Accepting,
    shutting_down: bool,
    tick: Option<DemoTick>,
    /// `--stats-log-interval`: its timer is armed only when it is on.
    stats_log: Option<StatsLog>,
    memory: MemoryReturn,
    /// Armed at the oldest held message's expiry while the history holds any.
    history_timer: Option<TimerHandle>,
}

impl Loop {
    fn run(&mut self) -> Result<(), ServerError> {
        if let Some(tick) = &self.tick {
            self.timers.insert(tick.due_ms, Timeout::Tick);
        }
        if let Some(stats_log) = &self.stats_log {
            self.timers.insert(stats_log.due_ms, Timeout::StatsLog);
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
            self.unix_ms = unix_ms();
            for event in events.iter() {
                match event.token() {
                    WS_LISTENER => self.accept(Port::WebSocket),
                    API_LISTENER => self.accept(Port::Api),
                    WAKER => {
                        if self.shutdown.requested.load(Ordering::SeqCst) {
                            self.begin_shutdown();
                        }
                    }
                    Token(key) if self.conns.contains(key) => {
                        let hangup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hangup {
                            self.read(key, hangup);
                        }
                        self.service(key);
                    }
                    Token(_) => {}
                }
            }
            for (key, generation) in std::mem::take(&mut self.more_to_read) {
                if self.is_current(key, generation) {
                    self.read(key, false);
                    self.service(key);
                }
            }
            self.expire_timers();
            self.flush_dirty();
            if let Some(at) = self.memory.schedule(self.now_ms, self.hub.ended()) {
                self.timers.insert(at, Timeout::ReleaseMemory);
            }
            if let Some(at) = self.app.auth_log.timer_wanted() {
                self.timers.insert(at, Timeout::AuthLogWindow);
            }
            if self.shutting_down && self.conns.is_empty() {
                self.app.auth_log.flush(self.now_ms);
                info!("shutdown complete");
                return Ok(());
            }
        }
    }

    fn is_current(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation)
    }

    /// Sleep until the next timer deadline, or not at all when work is pending.
    fn poll_timeout(&self) -> Option<Duration> {
        // Spare rings: one more turn releases them if no burst follows, instead of keeping
        // them through a long sleep.
        if !self.more_to_read.is_empty() || !self.dirty.is_empty() || !self.spare_rings.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = millis(self.started.elapsed());
        self.timers
            .next_deadline()
            .map(|d| Duration::from_millis(d.saturating_sub(now)))
    }

    /// Reads until the socket would block or the read budget is spent, feeding the connection.
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
            if conn.kind.conn().input_blocked(&self.settings) {
                // Its input stays in the kernel (TCP pushes back) until it reads its replies.
                conn.read_paused = true;
                return;
            }
            if budget == 0 {
                self.more_to_read.push((key, conn.generation));
                return;
            }
            self.scratch.reserve(READ_CHUNK);
            self.scratch.resize(READ_CHUNK, 0);
            let n = match conn.socket.read(&mut self.scratch[..]) {
                Ok(n) => n,
                Err(e) if would_block(&e) => return,
                Err(e) if interrupted(&e) => continue,
                Err(e) => {
                    debug!("connection #{}: read failed: {e}", conn.generation);
                    0
                }
            };
            // EOF, or a read error: nothing more will arrive either way.
            if n == 0 {
                conn.eof = true;
                if let Kind::Ws(session) = &mut conn.kind {
                    session.on_eof(self.now_ms);
                }
                return;
            }
            budget = budget.saturating_sub(n);
            let input = self.scratch.split_to(n).freeze();
            let Conn { socket, kind, .. } = conn;
            match kind {
                Kind::Ws(session) => {
                    let mut ctx = Ctx {
                        hub: &mut self.hub,
                        settings: &self.settings,
                        stats: &mut self.app.stats,
                        routes: &self.app.ws_port,
                        access: &self.app.ws_port.subscribe,
                        now_ms: self.now_ms,
                        unix_ms: self.unix_ms,
                        auth_log: &mut self.app.auth_log,
                        peer: &|| socket.peer_addr().ok(),
                    };
                    session.on_input(input, &mut ctx);
                }
                Kind::Http(_) => self.api_input(key, &input),
            }
            if n < READ_CHUNK && !hangup {
                // A short read drained the socket; edge-triggered readiness reports the next
                // arrival, so the read that would only say EAGAIN is skipped.
                return;
            }
        }
    }

    /// API requests, top-down: parse, route, carry out (publish), respond.
    fn api_input(&mut self, key: usize, input: &[u8]) {
        let Some(Conn {
            kind: Kind::Http(http),
            generation,
            ..
        }) = self.conns.get_mut(key)
        else {
            return;
        };
        let requests = http.on_input(input, self.now_ms);
        let generation = *generation;
        let name = ApiConnectionName(generation);
        for request in &requests {
            let from = Requester {
                connection: &name,
                // Only a log line asks for it (a system call).
                peer: &|| self.conns.get(key).and_then(|c| c.socket.peer_addr().ok()),
                now_ms: self.now_ms,
            };
            let response = match self.app.route(request, &from) {
                Action::Respond(response) => response,
                Action::Publish(publish) => {
                    let reached = self.publish_messages(&publish.messages);
                    self.app.published(&publish, &reached)
                }
                Action::History(query) => self
                    .app
                    .history_response(&query, self.hub.stream(query.topic)),
                Action::Stats {
                    format,
                    keep_alive,
                    head_only,
                } => {
                    let prefixes = self
                        .app
                        .topic_prefixes
                        .figures(self.hub.topic_subscribers());
                    self.app.stats_response(
                        self.gauges(),
                        procfs::read(),
                        &prefixes,
                        format,
                        keep_alive,
                        head_only,
                    )
                }
            };
            let response = self.app.for_origin(request, response);
            // A publish may have closed other connections, never this one.
            if let Some(Conn {
                kind: Kind::Http(http),
                ..
            }) = self.conns.get_mut(key)
            {
                http.respond(response);
            }
        }
        if let Some(Conn {
            kind: Kind::Http(http),
            ..
        }) = self.conns.get_mut(key)
        {
            http.after_requests();
        }
    }

    /// Publishes a request's messages in order. Consecutive messages to one topic go out as
    /// one run (see [`Loop::publish_run`]); the others one by one.
    fn publish_messages(&mut self, messages: &Messages<'_>) -> Vec<Published> {
        let mut reached = Vec::with_capacity(messages.len());
        // One clock reading per run: each one ends where the next starts.
        let mut start = Instant::now();
        for run in messages.chunk_by(|(a, _), (b, _)| a == b) {
            let topic = &run[0].0;
            if let [(_, data)] = run {
                reached.push(self.publish(topic, data.get()));
            } else {
                let data = run.iter().map(|(_, data)| data.get());
                reached.extend(self.publish_run(topic, data));
            }
            let end = Instant::now();
            let per_message = (end - start) / run.len() as u32;
            for _ in run {
                self.app.stats.fanout.observe(per_message);
            }
            start = end;
        }
        reached
    }

    /// Publishes consecutive messages to one topic. Each subscriber gets them as one shared
    /// [`Run`] entry in its queue, so a burst costs it one entry, not one per message; a queue
    /// without room for all of them gets them one by one, under the slow-consumer policy.
    fn publish_run<'d>(
        &mut self,
        topic: &str,
        messages: impl Iterator<Item = &'d str>,
    ) -> Vec<Published> {
        let mut delivery = self.hub.publish_run(topic, messages, self.now_ms);
        let count = delivery.frames.len();
        self.app.stats.publishes += count as u64;
        let run = Rc::new(Run::new(std::mem::take(&mut delivery.frames)));
        // Subscribers that got the whole run, and per message those that got it on its own.
        let mut got_all = 0;
        let mut got_one: Vec<usize> = Vec::new();
        for id in delivery.subscribers() {
            let Some((key, conn)) = subscriber_conn(&mut self.conns, id) else {
                continue;
            };
            let mut queued = false;
            match conn.offer_run(
                topic,
                &run,
                &self.settings,
                &mut self.app.stats,
                self.now_ms,
            ) {
                Some(outcome) => {
                    got_all += usize::from(matches!(outcome, Push::Queued | Push::Deferred));
                    queued = outcome == Push::Queued;
                }
                None => {
                    got_one.resize(count, 0);
                    for (i, frame) in run.frames().iter().enumerate() {
                        let outcome = conn.offer(
                            topic,
                            frame,
                            &self.settings,
                            &mut self.app.stats,
                            self.now_ms,
                        );
                        got_one[i] += usize::from(outcome == Push::Queued);
                        queued |= matches!(outcome, Push::Queued | Push::Closed);
                    }
                }
            }
            if queued && !conn.dirty {
                conn.dirty = true;
                self.dirty.push((key, conn.generation));
            }
        }
        let reached: Vec<Published> = (0..count)
            .map(|i| Published {
                subscribers: got_all + got_one.get(i).copied().unwrap_or(0),
                position: delivery.positions[i],
            })
            .collect();
        if !self.app.topic_prefixes.is_empty() {
            for published in &reached {
                self.app
                    .topic_prefixes
                    .on_publish(topic, published.subscribers);
            }
        }
        self.arm_history_timer();
        reached
    }

    /// Publishes `data_json` to `topic`: the hub frames it once and names the subscribers,
    /// each gets the shared frame in its queue. Returns how many got it (a subscriber whose
    /// replay of the topic is running gets it from the history) and the publish's position.
    ///
    /// Output is normally flushed once per iteration, after all publishes; a queue too full for
    /// the frame is written to its socket first, so a fast reader is never mistaken for a slow
    /// one.
    fn publish(&mut self, topic: &str, data_json: &str) -> Published {
        self.app.stats.publishes += 1;
        let delivery = self.hub.publish(topic, data_json, self.now_ms);
        let mut reached = 0;
        for id in delivery.subscribers() {
            let Some((key, conn)) = subscriber_conn(&mut self.conns, id) else {
                continue;
            };
            let outcome = conn.offer(
                topic,
                &delivery.frame,
                &self.settings,
                &mut self.app.stats,
                self.now_ms,
            );
            reached += usize::from(matches!(outcome, Push::Queued | Push::Deferred));
            if matches!(outcome, Push::Queued | Push::Closed) && !conn.dirty {
                conn.dirty = true;
                self.dirty.push((key, conn.generation));
            }
        }
        let position = delivery.position;
        if !self.app.topic_prefixes.is_empty() {
            self.app.topic_prefixes.on_publish(topic, reached);
        }
        self.arm_history_timer();
        Published {
            subscribers: reached,
            position,
        }
    }

    /// Arms the history's one timer when it holds messages and none is armed. The oldest
    /// message only gets younger, so an armed timer never needs to move earlier.
    fn arm_history_timer(&mut self) {
        if self.history_timer.is_none()
            && let Some(at) = self.hub.next_history_expiry()
        {
            self.history_timer = Some(self.timers.insert(at, Timeout::HistoryExpiry));
        }
    }

    /// Writes a replaying session's queue and refills it from the history until the socket
    /// stops taking bytes or the replay is done. Returns the bytes written.
    fn pace_replay(&mut self, key: usize) -> usize {
        let now = self.now_ms;
        let mut written = 0;
        for _ in 0..REPLAY_ROUNDS {
            let Some(conn) = self.conns.get_mut(key) else {
                return written;
            };
            let Kind::Ws(session) = &mut conn.kind else {
                return written;
            };
            if !session.is_replaying()
                || session.continue_replay(&self.hub, &self.settings, &mut self.app.stats) == 0
            {
                return written;
            }
            let wrote = conn.flush(now);
            written += wrote;
            if wrote == 0 || conn.kind.conn().has_output() {
                // The socket is full: its writability resumes the replay.
                return written;
            }
        }
        // The socket took every round: go on in the next iteration.
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push((key, conn.generation));
        }
        written
    }

    /// Flushes output, advances closing connections, removes finished ones, re-arms timers.
    fn service(&mut self, key: usize) {
        let now = self.now_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut written = conn.flush(now);
        if matches!(&conn.kind, Kind::Ws(session) if session.is_replaying()) {
            // The queue drained (or has room): the replay goes on.
            written += self.pace_replay(key);
        }
        self.app.stats.bytes_written += written as u64;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.read_paused && !conn.kind.conn().input_blocked(&self.settings) {
            // Edge-triggered: what arrived meanwhile raises no new event, so read it now.
            conn.read_paused = false;
            self.more_to_read.push((key, conn.generation));
        }
        if !conn.ring_listed
            && conn
                .kind
                .conn()
                .outbound()
                .is_some_and(|out| out.has_spare_ring())
        {
            conn.ring_listed = true;
            self.spare_rings.push((key, conn.generation));
        }
        let eof = conn.eof;
        let status = conn.kind.conn().status(eof);
        if status != Status::Dead {
            self.update_interest(key);
        }
        match status {
            Status::Dead => self.remove(key),
            Status::Finishing => {
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                if !conn.kind.conn().has_output() && !conn.write_closed {
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
        let pending = !conn.write_closed && conn.kind.conn().has_output();
        if pending != conn.wants_write {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self
                .poll
                .registry()
                .reregister(&mut conn.socket, Token(key), interest)
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
    /// A timer that fires early is cheap: the connection re-checks and it is re-armed.
    fn sync_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = conn.kind.conn().next_deadline(&self.settings);
        if let Some(handle) = conn.timer {
            if self
                .timers
                .deadline(handle)
                .is_some_and(|at| at <= deadline)
            {
                return;
            }
            self.timers.cancel(handle);
        }
        let handle = self.timers.insert(
            deadline,
            Timeout::Conn {
                // Slab keys of live connections fit: at most `--max-connections` + 256.
                key: key as u32,
                generation: conn.generation,
            },
        );
        conn.timer = Some(handle);
    }

    fn expire_timers(&mut self) {
        let now = millis(self.started.elapsed());
        self.now_ms = now;
        while let Some((_, timeout)) = self.timers.poll(now) {
            match timeout {
                Timeout::Conn { key, generation } => {
                    let key = key as usize;
                    let Some(conn) = self.conns.get_mut(key) else {
                        continue;
                    };
                    if conn.generation != generation {
                        continue;
                    }
                    conn.timer = None;
                    conn.kind.conn().on_timer(
                        &self.settings,
                        &mut self.app.stats,
                        &mut self.hub,
                        &mut self.app.auth_log,
                        now,
                    );
                    self.service(key);
                }
                Timeout::Tick => {
                    if let Some(mut tick) = self.tick.take() {
                        if !self.shutting_down {
                            let start = Instant::now();
                            let reached = self.publish(&tick.topic, tick::DATA).subscribers;
                            self.app.stats.fanout.observe(start.elapsed());
                            self.app.stats.tick_publishes += 1;
                            debug!("tick: pushed to {reached} subscribers of {}", tick.topic);
                            self.timers.insert(tick.advance(now), Timeout::Tick);
                        }
                        self.tick = Some(tick);
                    }
                }
                Timeout::ResumeAccept => {
                    self.accepting.paused = false;
                    self.accept(Port::WebSocket);
                    self.accept(Port::Api);
                }
                Timeout::HistoryExpiry => {
                    self.history_timer = None;
                    self.hub.expire_history(now);
                    self.arm_history_timer();
                }
                Timeout::AuthLogWindow => self.app.auth_log.on_timer(now),
                Timeout::StatsLog => {
                    let gauges = self.gauges();
                    if let Some(stats_log) = &mut self.stats_log {
                        let line =
                            stats_log.summary(now, &self.app.stats, &gauges, procfs::rss_bytes());
                        summary::log(&line);
                        self.timers.insert(stats_log.due_ms, Timeout::StatsLog);
                    }
                }
                Timeout::ReleaseMemory => {
                    sys::release_free_memory();
                    self.memory.released(now, self.hub.ended());
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

    /// Frees the spare rings of connections that got nothing to send in this iteration.
    fn release_spare_rings(&mut self) {
        for (key, generation) in std::mem::take(&mut self.spare_rings) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            if conn.dirty {
                // Its ring holds this iteration's pushes: still in use.
                self.spare_rings.push((key, generation));
                continue;
            }
            conn.ring_listed = false;
            if let Some(out) = conn.kind.conn().outbound() {
                out.release_spare_ring();
            }
        }
    }

    fn flush_dirty(&mut self) {
        self.release_spare_rings();
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
        self.memory.on_removed();
        debug!("connection #{}: closed", conn.generation);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if let Some(handle) = conn.timer {
            self.timers.cancel(handle);
        }
        match conn.kind {
            Kind::Ws(mut session) => {
                let id = session.id();
                self.hub
                    .remove_subscriber(session.subscriptions_mut(), id, |_| {});
                self.accepting.ws_count -= 1;
            }
            Kind::Http(_) => {
                self.accepting.api_count -= 1;
                let keys = &mut self.accepting.api_keys;
                if let Some(at) = keys.iter().position(|&k| k == key) {
                    keys.swap_remove(at);
                }
            }
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
                Kind::Http(http) => http.close_after_flush(),
            }
            self.service(key);
        }
        self.timers
            .insert(self.now_ms + SHUTDOWN_GRACE_MS, Timeout::ShutdownDeadline);
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            connections: self.accepting.ws_count,
            api_connections: self.accepting.api_count,
            topics: self.hub.topic_count(),
            subscriptions: self.hub.subscription_count(),
            uptime_secs: self.now_ms / 1000,
            history_messages: self.hub.history().map_or(0, |h| h.messages()),
            history_bytes: self.hub.history().map_or(0, |h| h.bytes()),
            history_evictions: self.hub.history().map_or(0, |h| h.evictions()),
        }
    }
}

/// "API connection #N" in log lines, formatted only when a line is written.
struct ApiConnectionName<T>(T);

impl<T: std::fmt::Display> std::fmt::Display for ApiConnectionName<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "API connection #{}", self.0)
    }
}
