//! A blocking-API push client with heartbeat and reconnect, on one background thread.
//!
//! The thread runs a small mio loop over one connection: it pings every `ping_interval`, treats
//! the connection as dead when nothing at all arrives within `heartbeat_timeout` of a ping (a
//! server that keeps TCP open but stops answering, or a path that silently drops packets), and
//! on any failure reconnects with exponential backoff and jitter, then resubscribes to every
//! topic. Callers receive [`Event`]s over a channel and change topics or stop through commands
//! that wake the loop at once (a `mio::Waker`); nothing polls on a short sleep.
//!
//! Pushes carry their data as the raw JSON text the server forwarded, never re-encoded, and a
//! message the client cannot decode is reported ([`Event::Undecodable`]), never dropped.
//!
//! Positions (a server with history on, docs/PROTOCOL.md): the client remembers the last
//! `(epoch, offset)` of each topic, from its pushes and from the subscribe acknowledgement, and
//! every resubscribe after a reconnect carries `since` for those topics, so the server replays
//! what was missed. A push is never handed over twice, nor out of order within an epoch (a
//! replay overlapping live pushes is cut by offset). What cannot be recovered is reported as
//! [`Event::ContinuityLost`] with a [`ContinuityReason`]: a resume the server could not satisfy
//! (new epoch, or history too short), the server's own `continuity_lost`, or an offset jump the
//! client saw itself (pushes dropped by `--slow-consumer drop`), after which it unsubscribes and
//! subscribes again with `since` to fill the gap from history. [`ClientConfig::recent`] asks
//! for the last K held messages on the first subscribe. Without history (or with an older
//! server) pushes carry no position and all of this is off.
//!
//! Client token ([`ClientConfig::token`], a server's `--client-token`): sent as
//! `Authorization: Bearer` with the upgrade by default, or, with [`TokenIn::Message`], as the
//! first message `{"cmd":"auth","token":..}` with the subscribe right behind it (no round trip).
//! Neither puts it in the URL, where proxies log it.
//!
//! Private topics: [`ClientConfig::claims`] go with every (re)subscribe. A refused claim
//! ([`Event::SubscribeRefused`]) and an expiry ([`Event::Unsubscribed`]) drop the topic from
//! the client's topics, so a stale claim never blocks the resubscribe of the others (the server
//! refuses a whole message for one bad claim); [`Client::set_claims`] renews.
//!
//! ```no_run
//! use wspush::client::{Client, ClientConfig, Event};
//!
//! let mut config = ClientConfig::new("ws://127.0.0.1:8091/ws");
//! config.topics = vec!["test-topic".into()];
//! let client = Client::connect(config).expect("valid config");
//! client.subscribe("orders/42");
//! for event in client.iter().take(3) {
//!     match event {
//!         // data: raw JSON text; offset, epoch: None without history on the server
//!         Event::Push { topic, data, offset, .. } => println!("{topic} {offset:?}: {data}"),
//!         Event::ContinuityLost { topic, from, reason, .. } => {
//!             eprintln!("{topic}: messages lost, continuing at {from} ({reason})")
//!         }
//!         _ => {}
//!     }
//! }
//! client.stop();
//! ```

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Deserialize;
use serde_json::value::RawValue;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocket};

use crate::wire::handshake;

mod continuity;

use continuity::{Continuity, StreamAck, Verdict};

/// Client settings; every default follows the seed's client or improves on it.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `ws://host:port/path`.
    pub url: String,
    pub topics: Vec<String>,
    /// Signed claims for private topics (`PAYLOAD.SIG`, docs/PROTOCOL.md "Private topics"),
    /// sent with every subscribe and resubscribe; none by default. Replace them while running
    /// with [`Client::set_claims`].
    pub claims: Vec<String>,
    /// `{"cmd":"ping"}` every this long (10 s, as the seed).
    pub ping_interval: Duration,
    /// After a ping, the connection is dead if nothing arrives within this (10 s).
    pub heartbeat_timeout: Duration,
    /// A write that cannot complete within this kills the connection (10 s, the seed's deadline).
    pub write_timeout: Duration,
    /// TCP connect plus WebSocket handshake (10 s).
    pub connect_timeout: Duration,
    /// First reconnect delay (3 s, the seed's fixed delay), doubled per failure with ±20 % jitter.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (30 s).
    pub backoff_max: Duration,
    /// Ask the server to replay the last K messages it holds of each topic before the live ones
    /// (`"recent":K`), on the client's first subscribe only: after a reconnect the client
    /// resumes where it was instead (`since`). None by default.
    pub recent: Option<u64>,
    /// The server's client token (`--client-token`), none by default.
    pub token: Option<String>,
    /// How the token travels ([`TokenIn::Header`] by default).
    pub token_in: TokenIn,
}

/// Where [`ClientConfig::token`] goes. Both keep it out of the URL (and so out of proxies'
/// access logs); the header is checked before the 101, the message after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenIn {
    /// `Authorization: Bearer <token>` in the upgrade request: a wrong token is a 401 and the
    /// session never opens. The token must be visible ASCII.
    #[default]
    Header,
    /// `{"cmd":"auth","token":..}` as the first message of every connection (the way browsers
    /// must use, since they cannot set headers on a WebSocket); a wrong one closes with 1008.
    Message,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            topics: vec!["test-topic".into()],
            claims: Vec::new(),
            ping_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(3),
            backoff_max: Duration::from_secs(30),
            recent: None,
            token: None,
            token_in: TokenIn::Header,
        }
    }
}

/// What the client reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Connected and (re)subscribed to every topic.
    Connected,
    /// A published message. `data` is the raw JSON text the server forwarded, byte for byte:
    /// values serde_json's `Value` cannot hold (a lone surrogate `"\ud800"`, `1e400`, nesting
    /// past 128 levels) arrive too. Parse it with `serde_json::from_str` when that suits.
    ///
    /// `offset` and `epoch`: the push's place in the topic's stream, from a server with history
    /// on (`None` otherwise). Within one epoch offsets only grow: the client never hands over an
    /// offset at or below the last one of the same epoch (replays overlapping live pushes are
    /// dropped), and a gap is either filled from the server's history or reported first as
    /// [`Event::ContinuityLost`].
    Push {
        topic: String,
        data: String,
        offset: Option<u64>,
        epoch: Option<String>,
    },
    /// Pushes of `topic` are missing: the next one handed over is at `from` in `epoch`, and
    /// those between the last one received and `from` will not come. The exception is
    /// [`ContinuityReason::OffsetJump`], reported as soon as the gap is seen: there `from` is
    /// the first missing offset, which the client is fetching from the server's history; if the
    /// history no longer holds it, a second report says where delivery really continues.
    ContinuityLost {
        topic: String,
        epoch: String,
        from: u64,
        reason: ContinuityReason,
    },
    /// The connection failed or closed; the next attempt comes after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
    /// The server answered a request with `{"cmd":"error"}`.
    ServerError(String),
    /// A subscribe was refused for `topic`'s claim (`reason`: `missing_claim`,
    /// `malformed_claim`, `bad_signature`, `claim_expired`, `wrong_topic`, or a newer code;
    /// `error`: the server's text). The server subscribes all of a message or nothing, so the
    /// client drops `topic` from its topics and, if this refused its first subscribe after a
    /// (re)connect, subscribes the others again without it.
    SubscribeRefused {
        topic: String,
        reason: String,
        error: String,
    },
    /// The server ended these subscriptions itself (`reason`: `claim expired`); the connection
    /// and other topics stay. The client drops them from its topics: to renew, call
    /// [`Client::set_claims`] with a fresh claim and [`Client::subscribe`] again.
    Unsubscribed { topics: Vec<String>, reason: String },
    /// A server message this client could not decode (not JSON, or not the shape of its
    /// `cmd`); reported rather than dropped. `text` is the message as received.
    Undecodable { text: String, error: String },
}

/// Why [`Event::ContinuityLost`] was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContinuityReason {
    /// A resume after a reconnect found a new stream (the server restarted, or the topic's
    /// stream ended meanwhile): nothing of the old one can be replayed.
    EpochChanged,
    /// A resume found the stream, but its history no longer holds everything after the last
    /// push received: what it holds is replayed from `from`.
    HistoryTooShort,
    /// The server's `continuity_lost` message: its replay was overtaken by eviction.
    ServerReported,
    /// The client saw offset `received` where it expected `from` (the server dropped pushes,
    /// e.g. `--slow-consumer drop`). The client resubscribes resuming at `from - 1`, so the
    /// missing pushes may still come from history; if not, a `HistoryTooShort` (or
    /// `EpochChanged`) report follows with where delivery really continues.
    OffsetJump { received: u64 },
}

impl fmt::Display for ContinuityReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EpochChanged => f.write_str("the stream's epoch changed"),
            Self::HistoryTooShort => f.write_str("the server's history no longer holds the gap"),
            Self::ServerReported => f.write_str("reported by the server"),
            Self::OffsetJump { received } => {
                write!(
                    f,
                    "offset jump (received {received}); resuming from history"
                )
            }
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    InvalidUrl(String),
    /// A scheme other than `ws://`: `wss://` (TLS) and `http(s)://` are not spoken here.
    UnsupportedScheme(String),
    /// A token that cannot go in a header ([`TokenIn::Header`]): empty, or not visible ASCII.
    InvalidToken,
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(why) => write!(f, "invalid server URL: {why}"),
            Self::UnsupportedScheme(scheme) if scheme == "wss" => f.write_str(
                "wss:// (TLS) is not supported: use a plain ws://host:port/path URL, \
                 or put a TLS-terminating proxy in front and connect to it with ws://",
            ),
            Self::UnsupportedScheme(scheme) => write!(
                f,
                "{scheme}:// is not supported: use a plain ws://host:port/path URL \
                 (wss:// needs a TLS-terminating proxy)"
            ),
            Self::InvalidToken => f.write_str(
                "the client token cannot go in an Authorization header (empty, or not visible \
                 ASCII): send it in the first message instead",
            ),
            Self::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Host, port and path of a `ws://` URL (or a bare `host:port`, as the seed's `-r`).
pub fn parse_url(url: &str) -> Result<(String, u16, String), ClientError> {
    let rest = match url.split_once("://") {
        // Schemes are case-insensitive (RFC 3986 §3.1).
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => rest,
        Some((scheme, _)) => return Err(ClientError::UnsupportedScheme(scheme.to_lowercase())),
        None => url,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: expected host:port")))?;
    let port = port
        .parse()
        .map_err(|_| ClientError::InvalidUrl(format!("{url}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ClientError::InvalidUrl(format!("{url}: empty host")));
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// How a connection ended, as far as the reconnect delay cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// A failure: connect refused, timeout, a reset, any close other than those below.
    Failed,
    /// Closed with 1013 (try again later).
    Overloaded,
    /// Closed with 1001 (the server is shutting down, typically to restart).
    GoingAway,
}

/// Reconnect delays: exponential with jitter, capped; sans-IO (randomness passed in).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The delay before the next attempt. `jitter` is uniform in [0, 1). After
    /// [`Ended::Overloaded`] (close 1013) one step is skipped so an overloaded server is not hit
    /// at once; after [`Ended::GoingAway`] (close 1001) the schedule starts over.
    pub fn next_delay(&mut self, jitter: f64, ended: Ended) -> Duration {
        match ended {
            Ended::Failed => {}
            Ended::Overloaded => self.failures = self.failures.max(1),
            // A server that says it is going away is restarting, not failing: earlier failures
            // say nothing about when it is back, so growing the delay (12 s, 24 s after a second
            // restart) only keeps clients away longer. Failures to reach it grow again from here.
            Ended::GoingAway => self.failures = 0,
        }
        let base = self.initial.saturating_mul(1 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        base.mul_f64(factor).min(self.max)
    }

    /// A healthy connection: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    SetClaims(Vec<String>),
    Stop,
}

/// A running client. Dropping it stops the background thread.
pub struct Client {
    events: Receiver<Event>,
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

impl Client {
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        parse_url(&config.url)?;
        if let (Some(token), TokenIn::Header) = (&config.token, config.token_in)
            && !handshake::is_header_token(token)
        {
            return Err(ClientError::InvalidToken);
        }
        let poll = Poll::new().map_err(ClientError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ClientError::Io)?);
        let (event_tx, events) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel();
        let worker = Worker {
            topics: config.topics.iter().cloned().collect(),
            continuity: Continuity::default(),
            recent_pending: config.recent.is_some(),
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            config,
            poll,
            events: event_tx,
            commands: command_rx,
            rng: RandomState::new().build_hasher().finish() | 1,
            stopping: false,
        };
        let thread = std::thread::Builder::new()
            .name("wspush-client".into())
            .spawn(move || worker.run())
            .map_err(ClientError::Io)?;
        Ok(Client {
            events,
            commands,
            waker,
            thread: Some(thread),
        })
    }

    /// The next event; `None` once the client has stopped.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.iter()
    }

    fn command(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Adds a topic now and on every reconnect.
    pub fn subscribe(&self, topic: &str) {
        self.command(Command::Subscribe(topic.to_owned()));
    }

    pub fn unsubscribe(&self, topic: &str) {
        self.command(Command::Unsubscribe(topic.to_owned()));
    }

    /// Replaces the claims sent with subscribes from now on. When connected, every topic is
    /// subscribed again with them at once, which extends private subscriptions before their
    /// old claims expire (the server keeps the later expiry).
    pub fn set_claims(&self, claims: Vec<String>) {
        self.command(Command::SetClaims(claims));
    }

    /// Closes the connection with 1000 and waits for the thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.command(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Why a connection ended.
struct Ending {
    reason: String,
    kind: Ended,
    healthy: bool,
}

struct Worker {
    config: ClientConfig,
    topics: BTreeSet<String>,
    continuity: Continuity,
    /// `recent` still goes with the first subscribe (until one is acknowledged).
    recent_pending: bool,
    backoff: Backoff,
    poll: Poll,
    events: Sender<Event>,
    commands: Receiver<Command>,
    rng: u64,
    stopping: bool,
}

impl Worker {
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn jitter(&mut self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A fresh handshake key: RFC 6455 wants a random nonce; it guards against caches, not
    /// attackers, so the worker's generator (seeded from the OS) is enough.
    fn handshake_key(&mut self) -> String {
        let mut random = [0u8; 16];
        random[..8].copy_from_slice(&self.next_random().to_le_bytes());
        random[8..].copy_from_slice(&self.next_random().to_le_bytes());
        handshake::client_key(random)
    }

    fn run(mut self) {
        while !self.stopping {
            let ended = self.connection();
            if self.stopping {
                break;
            }
            if ended.healthy {
                self.backoff.reset();
            }
            let jitter = self.jitter();
            let delay = self.backoff.next_delay(jitter, ended.kind);
            warn!("disconnected: {}; reconnecting in {delay:?}", ended.reason);
            if self
                .events
                .send(Event::Disconnected {
                    reason: ended.reason,
                    retry_in: delay,
                })
                .is_err()
            {
                return; // nobody listens any more
            }
            self.wait(delay);
        }
    }

    /// Sleeps for `delay`, but wakes at once for commands.
    fn wait(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut events = Events::with_capacity(4);
        while !self.stopping {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let _ = self.poll.poll(&mut events, Some(until - now));
            self.drain_commands(None);
        }
    }

    /// Applies caller commands; writes (un)subscribe requests when connected.
    fn drain_commands(&mut self, mut ws: Option<&mut WebSocket<TcpStream>>) {
        while let Ok(command) = self.commands.try_recv() {
            let request = match command {
                Command::Stop => {
                    self.stopping = true;
                    if let Some(ws) = ws.as_deref_mut() {
                        let _ = ws.close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "client stopped".into(),
                        }));
                    }
                    continue;
                }
                Command::Subscribe(t) => {
                    let request = self.subscribe_request(Some("subscribe"), [&t], None, None);
                    if !self.topics.contains(&t) {
                        // A topic subscribed anew starts live (see `forget`).
                        self.continuity.forget(&t);
                    }
                    self.topics.insert(t);
                    request
                }
                Command::Unsubscribe(t) => {
                    self.topics.remove(&t);
                    self.continuity.forget(&t);
                    // An unsubscribe needs no claim.
                    serde_json::json!({ "cmd": "unsubscribe", "topics": [t] }).to_string()
                }
                Command::SetClaims(claims) => {
                    self.config.claims = claims;
                    if self.topics.is_empty() {
                        continue;
                    }
                    // Subscribed already: a `since` would be ignored.
                    self.subscribe_request(Some("subscribe"), &self.topics, None, None)
                }
            };
            if let Some(ws) = ws.as_deref_mut() {
                let _ = ws.write(Message::text(request));
                let _ = ws.flush();
            }
        }
    }

    /// A subscribe for `topics` with the configured claims (the key only when there are claims,
    /// so that without them the message stays the seed's). `cmd: None` is the seed's form.
    /// `since` and `recent`: see [`Worker::resubscribe_request`].
    fn subscribe_request<'t>(
        &self,
        cmd: Option<&str>,
        topics: impl IntoIterator<Item = &'t String>,
        since: Option<serde_json::Value>,
        recent: Option<u64>,
    ) -> String {
        let topics: Vec<&String> = topics.into_iter().collect();
        let mut request = serde_json::json!({ "topics": topics });
        if let Some(cmd) = cmd {
            request["cmd"] = cmd.into();
        }
        if !self.config.claims.is_empty() {
            request["claims"] = self.config.claims.clone().into();
        }
        if let Some(since) = since {
            request["since"] = since;
        }
        if let Some(recent) = recent {
            request["recent"] = recent.into();
        }
        request.to_string()
    }

    /// The first subscribe of a connection: every topic, resuming those with a position, and
    /// `recent` until a first subscribe has been acknowledged (a refused or unanswered one did
    /// not take effect).
    fn resubscribe_request(&mut self) -> String {
        let since = self.continuity.since(&self.topics);
        let recent = self.config.recent.filter(|_| self.recent_pending);
        self.subscribe_request(None, &self.topics, since, recent)
    }

    /// The address, the `Host` header and the path.
    fn resolve(&self) -> Result<(SocketAddr, String, String), String> {
        let (host, port, path) = parse_url(&self.config.url).map_err(|e| e.to_string())?;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("no address for {host}"))?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok((addr, authority, path))
    }

    /// One connection, from connect to failure.
    fn connection(&mut self) -> Ending {
        let fail = |reason: String| Ending {
            reason,
            kind: Ended::Failed,
            healthy: false,
        };
        let (addr, authority, path) = match self.resolve() {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        info!("connecting to ws://{authority}{path}");
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return fail(format!("connect: {e}")),
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            SOCKET,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return fail(format!("register: {e}"));
        }
        let key = self.handshake_key();
        let request = match (&self.config.token, self.config.token_in) {
            (Some(token), TokenIn::Header) => {
                handshake::client_request_with_bearer(&authority, &path, &key, token)
            }
            _ => handshake::client_request(&authority, &path, &key),
        };
        let result = self.drive(stream, &request, &key);
        result.unwrap_or_else(fail)
    }

    fn drive(
        &mut self,
        mut stream: TcpStream,
        request: &[u8],
        key: &str,
    ) -> Result<Ending, String> {
        let mut events = Events::with_capacity(16);
        let connect_deadline = Instant::now() + self.config.connect_timeout;
        // Non-blocking connect: wait for writability, then check the socket error.
        loop {
            if self.stopping {
                return Err("stopped".into());
            }
            let now = Instant::now();
            if now >= connect_deadline {
                return Err("connect timeout".into());
            }
            self.poll
                .poll(&mut events, Some(connect_deadline - now))
                .map_err(|e| e.to_string())?;
            self.drain_commands(None);
            if events
                .iter()
                .any(|e| e.token() == SOCKET && (e.is_writable() || e.is_error()))
            {
                if let Ok(Some(e)) | Err(e) = stream.take_error() {
                    return Err(format!("connect: {e}"));
                }
                if stream.peer_addr().is_ok() {
                    break;
                }
            }
        }
        let (mut written, mut received) = (0, Vec::new());
        let leftover = loop {
            while written < request.len() {
                match stream.write(&request[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("handshake: {e}")),
                }
            }
            if written == request.len() {
                read_available(&mut stream, &mut received)
                    .map_err(|e| format!("handshake: {e}"))?;
                match handshake::read_response(&received, key) {
                    Ok(Some(length)) => break received.split_off(length),
                    Ok(None) => {}
                    Err(e) => return Err(format!("handshake: {e}")),
                }
            }
            let now = Instant::now();
            if now >= connect_deadline || self.stopping {
                return Err("handshake timeout".into());
            }
            self.poll
                .poll(&mut events, Some(connect_deadline - now))
                .map_err(|e| e.to_string())?;
            self.drain_commands(None);
        };
        // Frames the server sent right behind its 101 are not lost.
        let mut ws = WebSocket::from_partially_read(stream, leftover, Role::Client, None);
        self.continuity.new_connection();
        if let (Some(token), TokenIn::Message) = (&self.config.token, self.config.token_in) {
            // The subscribe follows at once: the server reads it after the token.
            let auth = serde_json::json!({ "cmd": "auth", "token": token }).to_string();
            ws.write(Message::text(auth))
                .or_else(would_block)
                .map_err(|e| format!("auth: {e}"))?;
        }
        let subscribe = self.resubscribe_request();
        ws.send(Message::text(subscribe))
            .or_else(would_block)
            .map_err(|e| format!("subscribe: {e}"))?;
        self.session(ws, &mut events)
    }

    /// The connected phase: heartbeat, pushes, commands.
    fn session(
        &mut self,
        mut ws: WebSocket<TcpStream>,
        events: &mut Events,
    ) -> Result<Ending, String> {
        let started = Instant::now();
        let mut subscribed = false;
        let mut next_ping = Instant::now() + self.config.ping_interval;
        // Set when a ping is out and nothing has arrived since.
        let mut awaiting_since: Option<Instant> = None;
        let mut write_stalled_since: Option<Instant> = None;
        let healthy_after = self.config.ping_interval * 2;
        loop {
            let healthy = subscribed && started.elapsed() >= healthy_after;
            let ended = |reason: String, kind| {
                Ok(Ending {
                    reason,
                    kind,
                    healthy,
                })
            };
            let now = Instant::now();
            if let Some(since) = awaiting_since
                && now >= since + self.config.heartbeat_timeout
            {
                return ended(
                    format!(
                        "no answer within {:?} of a ping",
                        self.config.heartbeat_timeout
                    ),
                    Ended::Failed,
                );
            }
            if let Some(since) = write_stalled_since
                && now >= since + self.config.write_timeout
            {
                return ended("write timeout".into(), Ended::Failed);
            }
            if now >= next_ping {
                debug!("ping");
                let _ = ws.write(Message::text(r#"{"cmd":"ping"}"#));
                next_ping = now + self.config.ping_interval;
                awaiting_since.get_or_insert(now);
            }
            match ws.flush() {
                Ok(()) => write_stalled_since = None,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    write_stalled_since.get_or_insert(now);
                }
                Err(tungstenite::Error::ConnectionClosed) => {
                    return ended("closed".into(), Ended::Failed);
                }
                Err(e) => return ended(format!("write: {e}"), Ended::Failed),
            }
            // Sleep until the next thing due.
            let mut due = next_ping;
            if let Some(since) = awaiting_since {
                due = due.min(since + self.config.heartbeat_timeout);
            }
            if let Some(since) = write_stalled_since {
                due = due.min(since + self.config.write_timeout);
            }
            self.poll
                .poll(events, Some(due.saturating_duration_since(Instant::now())))
                .map_err(|e| e.to_string())?;
            self.drain_commands(Some(&mut ws));
            loop {
                match ws.read() {
                    Ok(msg) => {
                        awaiting_since = None; // anything at all is a sign of life
                        match msg {
                            Message::Text(text)
                                if self.on_text(&text, &mut subscribed, &mut ws) =>
                            {
                                return ended("the event receiver is gone".into(), Ended::Failed);
                            }
                            Message::Close(frame) => {
                                let (code, why) = frame
                                    .map_or((CloseCode::Status, String::new()), |f| {
                                        (f.code, f.reason.to_string())
                                    });
                                let kind = match code {
                                    CloseCode::Again => Ended::Overloaded,
                                    CloseCode::Away => Ended::GoingAway,
                                    _ => Ended::Failed,
                                };
                                return ended(
                                    format!("server closed: {} {why}", u16::from(code)),
                                    kind,
                                );
                            }
                            _ => {}
                        }
                    }
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        break;
                    }
                    Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    ) => {
                        return ended("closed".into(), Ended::Failed);
                    }
                    Err(e) => return ended(format!("read: {e}"), Ended::Failed),
                }
            }
            if self.stopping {
                let _ = ws.flush();
                return ended("stopped".into(), Ended::Failed);
            }
        }
    }

    /// Handles one server message; returns true if the caller has gone away.
    fn on_text(
        &mut self,
        text: &str,
        subscribed: &mut bool,
        ws: &mut WebSocket<TcpStream>,
    ) -> bool {
        let event = match decode(text) {
            Ok(Incoming::Push {
                topic,
                data,
                offset,
                epoch,
            }) => {
                let push = |epoch: Option<String>| Event::Push {
                    topic: topic.clone(),
                    data,
                    offset,
                    epoch,
                };
                // Pushes still in flight after an unsubscribe leave no position behind.
                let verdict = if self.topics.contains(&topic) {
                    self.continuity.on_push(&topic, offset, epoch.as_deref())
                } else {
                    Verdict::Deliver
                };
                match verdict {
                    Verdict::Deliver => push(epoch),
                    Verdict::Skip => {
                        debug!("{topic}: offset {offset:?} dropped (a duplicate or superseded)");
                        return false;
                    }
                    Verdict::DeliverAfter(lost) => {
                        warn!("{topic}: {lost:?}");
                        if self.events.send(lost).is_err() {
                            return true;
                        }
                        push(epoch)
                    }
                    Verdict::Resubscribe(lost, at) => {
                        warn!(
                            "{topic}: {lost:?}; resubscribing after offset {}",
                            at.offset
                        );
                        // The server ignores a `since` for a topic it has subscribed already.
                        let unsubscribe =
                            serde_json::json!({ "cmd": "unsubscribe", "topics": [topic] });
                        let since = serde_json::json!({
                            &topic: { "offset": at.offset, "epoch": at.epoch }
                        });
                        let subscribe =
                            self.subscribe_request(Some("subscribe"), [&topic], Some(since), None);
                        let _ = ws.write(Message::text(unsubscribe.to_string()));
                        let _ = ws.write(Message::text(subscribe));
                        lost
                    }
                }
            }
            Ok(Incoming::Subscribed { topics, streams }) => {
                let losses = self.continuity.on_subscribed(&topics, streams.as_ref());
                if !*subscribed {
                    *subscribed = true;
                    self.recent_pending = false;
                    info!("subscribed to {topics:?}");
                    if self.events.send(Event::Connected).is_err() {
                        return true;
                    }
                }
                for lost in losses {
                    warn!("{lost:?}");
                    if self.events.send(lost).is_err() {
                        return true;
                    }
                }
                return false;
            }
            Ok(Incoming::ContinuityLost { topic, epoch, from }) => {
                match self.continuity.on_continuity_lost(&topic, &epoch, from) {
                    Some(lost) => {
                        warn!("{lost:?}");
                        lost
                    }
                    None => return false,
                }
            }
            Ok(Incoming::Error {
                error,
                refused: Some((topic, reason)),
            }) => {
                debug!("subscribe refused for {topic:?}: {reason}");
                // Resubscribing with the same claim would be refused again, and with it every
                // other topic of the message.
                self.topics.remove(&topic);
                self.continuity.forget(&topic);
                if !*subscribed && !self.topics.is_empty() {
                    let request = self.resubscribe_request();
                    let _ = ws.write(Message::text(request));
                }
                Event::SubscribeRefused {
                    topic,
                    reason,
                    error,
                }
            }
            Ok(Incoming::Error { error, .. }) => Event::ServerError(error),
            Ok(Incoming::Unsubscribed {
                topics,
                reason: Some(reason),
            }) => {
                debug!("the server ended {topics:?}: {reason}");
                for topic in &topics {
                    self.topics.remove(topic);
                    self.continuity.forget(topic);
                }
                Event::Unsubscribed { topics, reason }
            }
            Ok(Incoming::Unsubscribed {
                topics,
                reason: None,
            }) => {
                self.continuity.on_unsubscribed(&topics);
                return false;
            }
            Ok(Incoming::Other) => return false,
            Err(error) => {
                debug!("undecodable message from the server: {error}");
                Event::Undecodable {
                    text: text.to_owned(),
                    error: error.to_string(),
                }
            }
        };
        self.events.send(event).is_err()
    }
}

/// The fields of any server message the client looks at. `data` is kept as raw text: serde_json
/// checks it exactly as the server's API did before forwarding it (`RawValue`, no depth limit,
/// no number range, no surrogate pairing), so whatever the server accepted decodes here.
#[derive(Deserialize)]
struct ServerMessage<'a> {
    #[serde(borrow, default)]
    cmd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    // Not `Option<&RawValue>`: that reads `"data":null` as a missing field.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    streams: Option<HashMap<String, StreamAck>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A decoded server message.
#[derive(Debug, PartialEq)]
enum Incoming {
    Push {
        topic: String,
        data: String,
        offset: Option<u64>,
        epoch: Option<String>,
    },
    Subscribed {
        topics: Vec<String>,
        streams: Option<HashMap<String, StreamAck>>,
    },
    ContinuityLost {
        topic: String,
        epoch: String,
        from: u64,
    },
    /// `reason` only when the server ended them itself (our own unsubscribes have none).
    Unsubscribed {
        topics: Vec<String>,
        reason: Option<String>,
    },
    /// `refused`: the topic and the code, when a claim was refused.
    Error {
        error: String,
        refused: Option<(String, String)>,
    },
    /// Pongs, acknowledgements and commands of newer servers: nothing to report.
    Other,
}

/// Why a server message could not be decoded.
#[derive(Debug)]
enum DecodeError {
    Json(serde_json::Error),
    /// A known `cmd` without a field it must have.
    Missing {
        cmd: &'static str,
        field: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "not a JSON object: {e}"),
            Self::Missing { cmd, field } => write!(f, "a {cmd:?} message without {field:?}"),
        }
    }
}

fn decode(text: &str) -> Result<Incoming, DecodeError> {
    let message: ServerMessage<'_> = serde_json::from_str(text).map_err(DecodeError::Json)?;
    let missing = |cmd, field| DecodeError::Missing { cmd, field };
    Ok(match message.cmd.as_deref() {
        Some("push") => Incoming::Push {
            topic: message.topic.ok_or(missing("push", "topic"))?.into_owned(),
            data: message
                .data
                .ok_or(missing("push", "data"))?
                .get()
                .to_owned(),
            offset: message.offset,
            epoch: message.epoch.map(Cow::into_owned),
        },
        Some("subscribed") => Incoming::Subscribed {
            topics: message.topics.unwrap_or_default(),
            streams: message.streams,
        },
        Some("continuity_lost") => {
            let missing = |field| missing("continuity_lost", field);
            Incoming::ContinuityLost {
                topic: message.topic.ok_or(missing("topic"))?.into_owned(),
                epoch: message.epoch.ok_or(missing("epoch"))?.into_owned(),
                from: message.from.ok_or(missing("from"))?,
            }
        }
        Some("unsubscribed") => Incoming::Unsubscribed {
            topics: message.topics.unwrap_or_default(),
            reason: message.reason.map(Cow::into_owned),
        },
        Some("error") => Incoming::Error {
            error: message.error.unwrap_or_default().into_owned(),
            refused: message
                .topic
                .zip(message.reason)
                .map(|(t, r)| (t.into_owned(), r.into_owned())),
        },
        _ => Incoming::Other,
    })
}

/// Reads what the socket has, up to a little past the largest response we accept; EOF before
/// the handshake completed is an error.
fn read_available(stream: &mut TcpStream, into: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    while into.len() <= handshake::MAX_HEAD_BYTES {
        match stream.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn would_block(e: tungstenite::Error) -> Result<(), tungstenite::Error> {
    match e {
        tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("127.0.0.1:8091").unwrap(),
            ("127.0.0.1".into(), 8091, "/ws".into())
        );
        assert_eq!(
            parse_url("ws://example.com:80/push").unwrap(),
            ("example.com".into(), 80, "/push".into())
        );
        assert_eq!(parse_url("ws://[::1]:9/ws").unwrap().0, "::1");
        assert_eq!(parse_url("WS://h:1").unwrap().2, "/ws");
        for (url, scheme) in [
            ("wss://x:1/ws", "wss"),
            ("WSS://x:1/ws", "wss"),
            ("http://x:1/ws", "http"),
            ("https://x:1/ws", "https"),
        ] {
            match parse_url(url) {
                Err(ClientError::UnsupportedScheme(s)) => assert_eq!(s, scheme, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let wss = ClientError::UnsupportedScheme("wss".into()).to_string();
        assert!(wss.contains("TLS") && wss.contains("ws://"), "{wss}");
        assert!(parse_url("nohost").is_err());
        assert!(parse_url("h:notaport").is_err());
    }

    #[test]
    fn pushes_keep_their_data_verbatim() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for data in [r#""\ud800""#, "1e400", &deep, "null", r#"{"a": [1, 2.50]}"#] {
            let text = format!(r#"{{"cmd":"push","topic":"t\"/x","data":{data}}}"#);
            assert_eq!(
                decode(&text).unwrap(),
                Incoming::Push {
                    topic: "t\"/x".into(),
                    data: data.into(),
                    offset: None,
                    epoch: None,
                }
            );
        }
    }

    #[test]
    fn what_cannot_be_decoded_is_an_error_not_nothing() {
        for text in [
            "not json",
            "[1]",
            r#"{"cmd":"push","data":1}"#,
            r#"{"cmd":"push","topic":"t"}"#,
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
        assert_eq!(decode(r#"{"cmd":"pong"}"#).unwrap(), Incoming::Other);
        assert_eq!(
            decode(r#"{"cmd":"error","error":"e","topic":"p-1","reason":"claim_expired"}"#)
                .unwrap(),
            Incoming::Error {
                error: "e".into(),
                refused: Some(("p-1".into(), "claim_expired".into()))
            }
        );
        assert_eq!(
            decode(r#"{"cmd":"unsubscribed","topics":["p-1"],"reason":"claim expired"}"#).unwrap(),
            Incoming::Unsubscribed {
                topics: vec!["p-1".into()],
                reason: Some("claim expired".into())
            }
        );
        assert_eq!(
            decode(r#"{"cmd":"new","x":[{}]}"#).unwrap(),
            Incoming::Other
        );
    }

    #[test]
    fn positions_decode_and_bad_ones_are_reported() {
        assert_eq!(
            decode(r#"{"cmd":"push","topic":"a","data":[1],"offset":42,"epoch":"k3"}"#).unwrap(),
            Incoming::Push {
                topic: "a".into(),
                data: "[1]".into(),
                offset: Some(42),
                epoch: Some("k3".into()),
            }
        );
        let ack = r#"{"cmd":"subscribed","topics":["a","b"],"streams":{"a":{"epoch":"E","offset":45,"recovered":true},"b":{"epoch":"F","offset":7,"recovered":false,"from":3}}}"#;
        let Incoming::Subscribed { topics, streams } = decode(ack).unwrap() else {
            panic!("not an ack");
        };
        assert_eq!(topics, ["a", "b"]);
        let b = &streams.unwrap()["b"];
        assert_eq!((b.offset, b.recovered, b.from), (7, Some(false), Some(3)));
        assert_eq!(
            decode(r#"{"cmd":"continuity_lost","topic":"a","epoch":"E","from":58}"#).unwrap(),
            Incoming::ContinuityLost {
                topic: "a".into(),
                epoch: "E".into(),
                from: 58
            }
        );
        for text in [
            r#"{"cmd":"push","topic":"a","data":1,"offset":-1,"epoch":"E"}"#,
            r#"{"cmd":"push","topic":"a","data":1,"offset":1,"epoch":7}"#,
            r#"{"cmd":"subscribed","topics":["a"],"streams":{"a":{"offset":1}}}"#,
            r#"{"cmd":"continuity_lost","topic":"a","epoch":"E"}"#,
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let mut b = Backoff::new(Duration::from_secs(3), Duration::from_secs(30));
        let first = b.next_delay(0.5, Ended::Failed);
        assert_eq!(first, Duration::from_secs(3));
        let delays: Vec<Duration> = (0..10)
            .map(|i| b.next_delay((i % 3) as f64 / 3.0, Ended::Failed))
            .collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(
            delays[0] >= Duration::from_millis(4800) && delays[0] <= Duration::from_millis(7200)
        );
        assert_eq!(delays[9], Duration::from_secs(30));
        b.reset();
        let low = b.next_delay(0.0, Ended::Failed);
        assert_eq!(low, Duration::from_millis(2400));
        b.reset();
        assert!(
            b.next_delay(0.5, Ended::Overloaded) >= Duration::from_secs(6),
            "1013 backs off harder"
        );
    }

    #[test]
    fn a_server_going_away_is_retried_at_the_initial_delay_every_time() {
        let (initial, max) = (Duration::from_secs(3), Duration::from_secs(30));
        let in_initial = |d: Duration| d >= initial.mul_f64(0.8) && d <= initial.mul_f64(1.2);
        let mut b = Backoff::new(initial, max);
        // The observed sequence: 1001, the restarted server not up yet twice, it comes back,
        // a second 1001 soon after (the connection never got healthy). That second 1001 once
        // waited 12.8 s (the third doubling); it must wait the initial delay, as README says.
        let mut schedule = vec![b.next_delay(0.9, Ended::GoingAway)];
        schedule.push(b.next_delay(0.9, Ended::Failed));
        schedule.push(b.next_delay(0.9, Ended::Failed));
        schedule.push(b.next_delay(0.9, Ended::GoingAway));
        schedule.push(b.next_delay(0.9, Ended::GoingAway));
        schedule.push(b.next_delay(0.9, Ended::Failed));
        assert!(in_initial(schedule[0]), "{schedule:?}");
        assert!(
            schedule[1] > initial * 3 / 2 && schedule[2] > initial * 3,
            "{schedule:?}"
        );
        assert!(
            in_initial(schedule[3]) && in_initial(schedule[4]),
            "{schedule:?}"
        );
        // Not reachable after the restart: growth starts again from the initial delay.
        assert_eq!(schedule[5], schedule[1], "{schedule:?}");
        for jitter in [0.0, 0.5, 0.999] {
            let mut b = Backoff::new(initial, max);
            for _ in 0..8 {
                b.next_delay(jitter, Ended::Failed);
            }
            assert!(
                in_initial(b.next_delay(jitter, Ended::GoingAway)),
                "{jitter}"
            );
        }
    }
}
