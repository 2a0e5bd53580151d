//! One WebSocket connection's state, without I/O.
//!
//! The server feeds the bytes it read (`on_input`), tells the session what it wrote
//! (`on_written`) and when its deadline passed (`on_timer`); the session answers through its
//! outbound queue, the one path for every byte to the socket: the handshake response,
//! tungstenite's pong and close frames, our replies and the shared push frames.
//!
//! The upgrade request is parsed by [`crate::wire::handshake`], usually straight from the
//! server's read buffer (a request split over several reads is collected, up to 16 KiB), and
//! routed by the application's [`WsRoutes`]. tungstenite parses the frames. It reads from
//! and writes to a `Stream` made for each call of the input the server handed over and the
//! session's [`OutQueue`]; it never touches the socket, so its buffers stay small (no 128 KiB
//! read buffer per connection). Its frame context (~340 bytes) exists only while a client
//! message is being read: between messages an open session holds nothing but its queue.
//!
//! Private topics: the application's [`TopicAccess`] decides which topics of a subscribe need
//! a claim and whether the claims sent cover them. The session remembers when each private
//! subscription's claim expires and ends it then (its deadline is one of the session's timer
//! deadlines); a session without private topics holds one empty pointer for it.
//!
//! Authentication in the first message: a session the route table upgraded without a client
//! token (`WsRoute::UpgradeAwaitingAuth`) reads nothing but `{"cmd":"auth","token":..}` until
//! the token is right; anything else, a wrong token, or no `auth` by the setup deadline closes
//! it with 1008. No subscription can exist before, so nothing is delivered to it. The state is
//! one bit of that deadline ([`Setup`]): no byte per session.
//!
//! Recovery (history on): a subscribe with `since` or `recent` starts a paced replay of the
//! topic's history, one cursor per replaying subscription (boxed, absent otherwise). The session
//! queues what fits under its outbound cap and the server calls [`Session::continue_replay`]
//! as the socket drains. Live pushes for a topic under replay are skipped: they are in the
//! history, and the cursor reaches them, so nothing is queued twice.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use log::{Level, debug, log_enabled, trace};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketContext};

use super::outbound::{FRAME_OVERHEAD, Run};
use super::{CONTROL_SLACK, Connection, OutQueue, Settings, Status, WriteStall};
use crate::config::SlowConsumerPolicy;
use crate::hub::{self, Epoch, Hub, SubscriberId, Subscriptions};
use crate::oplog::{AuthFailure, AuthFailureKind, AuthLog};
use crate::stats::Stats;
use crate::wire::forwarded::{ClientAddr, Forwarding};
use crate::wire::frame::{self, FrameBoundary, Opcode, Shared};
use crate::wire::handshake;
use crate::wire::http::{self, HttpError};
use crate::wire::message::{self, ClientMessage, RequestError, Resume, StreamAck};

/// How long a closing connection may take to acknowledge our close before it is dropped.
const CLOSE_LINGER_MS: u64 = 2_000;

/// What a request on the WebSocket port gets: the application's route table, asked once the
/// request's head has arrived.
pub trait WsRoutes {
    fn route(&self, head: &http::Head<'_, '_>) -> WsRoute;

    /// Whether `token`, from the `auth` message of a session upgraded with
    /// [`WsRoute::UpgradeAwaitingAuth`], is the client token (compared in constant time). A
    /// route table that never answers so needs no token.
    fn token_matches(&self, _token: &str) -> bool {
        false
    }
}

pub enum WsRoute {
    /// Become a WebSocket session; this is the 101 response.
    Upgrade(Vec<u8>),
    /// Become a WebSocket session that must send the client token in its first message
    /// ([`WsRoutes::token_matches`]) before anything else; this is the 101 response.
    UpgradeAwaitingAuth(Vec<u8>),
    /// Answer with this error and close.
    Refuse(HttpError),
    /// A plain HTTP request the port serves (the demo page, the client module): send this
    /// complete response and close. Not a handshake failure.
    Respond(Vec<u8>),
}

/// Which topics a session may subscribe to: the application's policy, asked for every
/// subscribe with the claims that came with it.
pub trait TopicAccess {
    /// The grants of the private topics among `topics` (none when all are public), or the
    /// refusal of the first private topic no valid claim covers. `unix_ms`: the wall clock.
    fn authorize(
        &self,
        topics: &[Cow<'_, str>],
        claims: &[Cow<'_, str>],
        unix_ms: u64,
    ) -> Result<Vec<Grant>, RequestError>;
}

/// A private topic of a subscribe, covered by a claim until `expires_unix_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its index in the subscribe's `topics`.
    pub topic: usize,
    pub expires_unix_ms: u64,
}

/// The stream tungstenite reads from and writes to: the input the server handed over and the
/// session's outbound queue. Built for each call, so an idle session stores neither.
struct Stream<'a> {
    input: &'a mut Bytes,
    out: &'a mut OutQueue,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input.split_to(n));
        Ok(n)
    }
}

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tungstenite writes each frame as soon as it is made (no write buffer), so one call
        // is one frame; a Pong may replace the one still waiting.
        if frame::is_single_pong(buf) {
            self.out.push_pong(buf);
        } else {
            self.out.push(buf.to_vec());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Phase {
    /// Nothing has arrived yet. A request that arrives whole (the usual case) is answered from
    /// the server's read buffer, without a copy.
    Accepted,
    /// Part of the request has arrived; the rest is awaited (at most 16 KiB in all).
    Handshaking(Vec<u8>),
    Open(OpenWs),
    /// Our last bytes (a close frame or an HTTP error) are queued: flush them, half-close, and
    /// wait briefly for the peer's EOF so the close is not lost to a TCP reset.
    Finishing {
        out: Box<OutQueue>,
        deadline_ms: u64,
    },
    /// Transient while a handshake step owns the state.
    Gone,
}

/// An open WebSocket session.
struct OpenWs {
    out: OutQueue,
    /// tungstenite's frame context, kept only while it holds state: a partial frame, a
    /// fragmented message, or a close handshake under way. Otherwise it is created when input
    /// arrives and dropped after it, so an idle connection does not pay for it.
    reading: Option<Box<WebSocketContext>>,
}

impl OpenWs {
    /// False once a close was sent (tungstenite then holds the context).
    fn can_write(&self) -> bool {
        self.reading.as_ref().is_none_or(|ws| ws.can_write())
    }
}

/// The result of offering a push to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full: the push was dropped (`--slow-consumer drop`).
    Dropped,
    /// The queue was full: the session is closing with 1013.
    Closed,
    /// The topic's replay is still running: its cursor will send this push from the history.
    Deferred,
    /// Not an open WebSocket (handshaking or closing).
    NotOpen,
}

/// Why the server closes a session; each maps to a close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Protocol,
    BinaryData,
    BadUtf8,
    TooBig,
    SubscribeTimeout,
    HeartbeatTimeout,
    SlowConsumer,
    ShuttingDown,
    Internal,
    /// Awaiting its `auth` message, the session got another message.
    AuthRequired,
    WrongToken,
    /// No `auth` message by the setup deadline.
    AuthTimeout,
}

impl CloseReason {
    pub fn code(self) -> CloseCode {
        match self {
            Self::Protocol => CloseCode::Protocol,
            Self::BinaryData => CloseCode::Unsupported,
            Self::BadUtf8 => CloseCode::Invalid,
            Self::TooBig => CloseCode::Size,
            Self::SubscribeTimeout
            | Self::HeartbeatTimeout
            | Self::AuthRequired
            | Self::WrongToken
            | Self::AuthTimeout => CloseCode::Policy,
            Self::SlowConsumer => CloseCode::Again,
            Self::ShuttingDown => CloseCode::Away,
            Self::Internal => CloseCode::Error,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Protocol => "protocol error",
            Self::BinaryData => "binary messages are not supported",
            Self::BadUtf8 => "invalid UTF-8",
            Self::TooBig => "message too big",
            Self::SubscribeTimeout => "no subscription in time",
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::SlowConsumer => "outbound queue full",
            Self::ShuttingDown => "server shutting down",
            Self::Internal => "internal error",
            Self::AuthRequired => "authentication required",
            Self::WrongToken => "wrong client token",
            Self::AuthTimeout => "authentication timeout",
        }
    }
}

/// Everything a session may touch besides itself while it handles input.
pub struct Ctx<'a> {
    pub hub: &'a mut Hub,
    pub settings: &'a Settings,
    pub stats: &'a mut Stats,
    pub routes: &'a dyn WsRoutes,
    pub access: &'a dyn TopicAccess,
    /// The loop's monotonic clock.
    pub now_ms: u64,
    /// The wall clock (Unix time), read with `now_ms`: claims expire in Unix time.
    pub unix_ms: u64,
    /// Failed authentications are logged here (rate-limited).
    pub auth_log: &'a mut AuthLog,
    /// The TCP peer's address, asked only when a log line needs it (a system call).
    pub peer: &'a dyn Fn() -> Option<SocketAddr>,
}

/// The private subscriptions of a session and when their claims expire.
#[derive(Debug, Default)]
struct PrivateTopics {
    /// (topic, expiry on the monotonic clock); a handful at most, so a `Vec`.
    expiries: Vec<(Box<str>, u64)>,
    /// The earliest expiry, kept for `next_deadline`.
    next_expiry_ms: u64,
}

impl PrivateTopics {
    /// Records a grant; a topic already held keeps the later of its two expiries, so a stale
    /// claim sent again never shortens a subscription.
    fn extend(&mut self, topic: &str, expires_ms: u64) {
        match self.expiries.iter_mut().find(|(t, _)| &**t == topic) {
            Some((_, expiry)) => *expiry = (*expiry).max(expires_ms),
            None => self.expiries.push((topic.into(), expires_ms)),
        }
        self.refresh();
    }

    fn remove(&mut self, topic: &str) {
        self.expiries.retain(|(t, _)| &**t != topic);
        self.refresh();
    }

    /// Removes and returns the topics expired at `now_ms`.
    fn take_expired(&mut self, now_ms: u64) -> Vec<Box<str>> {
        let mut expired = Vec::new();
        self.expiries.retain_mut(|(topic, expiry)| {
            let keep = *expiry > now_ms;
            if !keep {
                expired.push(std::mem::take(topic));
            }
            keep
        });
        self.refresh();
        expired
    }

    fn refresh(&mut self) {
        self.next_expiry_ms = self
            .expiries
            .iter()
            .map(|&(_, expiry)| expiry)
            .min()
            .unwrap_or(u64::MAX);
    }
}

/// A replaying subscription: the next offset of its stream to queue.
#[derive(Debug)]
struct Cursor {
    topic: std::rc::Rc<str>,
    epoch: Epoch,
    next: u64,
}

/// What few sessions need, in one box so the others carry one pointer for both.
#[derive(Debug, Default)]
struct Rare {
    /// Present while the session holds private topics.
    private: Option<PrivateTopics>,
    /// The running replays (empty: every subscription is live).
    replays: Vec<Cursor>,
    /// Where a session awaiting its `auth` message comes from, for the failure's log line
    /// (the forwarding headers are gone by then); dropped once it is authenticated. Boxed:
    /// sessions with private topics do not carry it.
    awaiting_auth_from: Option<Box<ClientAddr>>,
}

pub struct Session {
    phase: Phase,
    id: SubscriberId,
    subscriptions: Subscriptions,
    /// Boxed and absent until a private topic is subscribed or a replay starts: 8 bytes for
    /// everyone else.
    rare: Option<Box<Rare>>,
    /// When the handshake (and the authentication) and the first subscribe must be done by.
    setup: Setup,
    liveness: Liveness,
    stall: WriteStall,
    boundary: FrameBoundary,
}

/// The setup deadline, from the accept: the handshake, the `auth` message if the session awaits
/// one, and the first subscribe must be done by it (`--handshake-timeout`); never once
/// subscribed. The top bit: the session awaits its `auth` message (loop times never reach it).
#[derive(Clone, Copy, Debug)]
struct Setup(u64);

impl Setup {
    const AWAITING_AUTH: u64 = 1 << 63;
    /// Subscribed: no deadline (and not awaiting authentication).
    const NEVER: u64 = !Self::AWAITING_AUTH;

    fn by(deadline_ms: u64) -> Self {
        Setup(deadline_ms.min(Self::NEVER))
    }

    fn deadline_ms(self) -> u64 {
        self.0 & Self::NEVER
    }

    fn awaiting_auth(self) -> bool {
        self.0 & Self::AWAITING_AUTH != 0
    }

    fn await_auth(&mut self) {
        self.0 |= Self::AWAITING_AUTH;
    }

    fn authenticated(&mut self) {
        self.0 &= Self::NEVER;
    }

    fn subscribed(&mut self) {
        self.0 = Self::NEVER;
    }
}

/// When the client was last heard from, and whether the server has pinged it since: a client
/// silent for the heartbeat interval gets a protocol Ping (browsers and WebSocket libraries
/// answer it by themselves), and one silent for interval + timeout is closed.
#[derive(Clone, Copy, Debug)]
struct Liveness(u64);

impl Liveness {
    /// Set once the Ping went out; clear again at the next input. Loop times never reach it.
    const PINGED: u64 = 1 << 63;

    fn new(now_ms: u64) -> Self {
        Liveness(now_ms)
    }

    fn heard(&mut self, now_ms: u64) {
        self.0 = now_ms;
    }

    fn last_input_ms(self) -> u64 {
        self.0 & !Self::PINGED
    }

    fn pinged(self) -> bool {
        self.0 & Self::PINGED != 0
    }

    fn mark_pinged(&mut self) {
        self.0 |= Self::PINGED;
    }

    /// The next thing due: the Ping at the interval (if one `may_ping` now), then the close at
    /// interval + timeout.
    fn deadline(self, s: &Settings, may_ping: bool) -> u64 {
        if self.pinged() || s.echo || !may_ping {
            self.last_input_ms() + s.idle_limit_ms
        } else {
            self.last_input_ms() + s.heartbeat_interval_ms
        }
    }
}

impl Session {
    pub fn new(id: SubscriberId, now_ms: u64, settings: &Settings) -> Self {
        Session {
            phase: Phase::Accepted,
            id,
            subscriptions: Subscriptions::default(),
            rare: None,
            setup: Setup::by(now_ms.saturating_add(settings.handshake_timeout_ms)),
            liveness: Liveness::new(now_ms),
            stall: WriteStall::default(),
            boundary: FrameBoundary::default(),
        }
    }

    pub fn id(&self) -> SubscriberId {
        self.id
    }

    /// The session's topics, for the hub to drop when the connection goes.
    pub fn subscriptions_mut(&mut self) -> &mut Subscriptions {
        &mut self.subscriptions
    }

    fn phase_status(&self) -> Status {
        match self.phase {
            Phase::Accepted | Phase::Handshaking(_) | Phase::Open(_) => Status::Live,
            Phase::Finishing { .. } => Status::Finishing,
            Phase::Gone => Status::Dead,
        }
    }

    /// Bytes read from the socket. All of `input` is consumed.
    pub fn on_input(&mut self, mut input: Bytes, ctx: &mut Ctx<'_>) {
        self.liveness.heard(ctx.now_ms);
        match &mut self.phase {
            Phase::Accepted | Phase::Handshaking(_) => self.on_request_bytes(&input, ctx),
            Phase::Open(open) => {
                self.boundary.feed(&input);
                let mut ws = match open.reading.take() {
                    Some(ws) => *ws,
                    None => WebSocketContext::new(Role::Server, Some(ctx.settings.ws_config)),
                };
                self.read_messages(&mut ws, &mut input, ctx);
                if let Phase::Open(open) = &mut self.phase {
                    let idle = self.boundary.is_clean() && ws.can_read() && ws.can_write();
                    if !idle {
                        open.reading = Some(Box::new(ws));
                    }
                }
            }
            // Closing: whatever the peer still sends is not for us any more.
            Phase::Finishing { .. } | Phase::Gone => {}
        }
    }

    /// The peer closed its side of the TCP connection: nothing more can arrive. Whatever is
    /// queued (say, the reply to its close frame) is still flushed.
    pub fn on_eof(&mut self, now_ms: u64) {
        match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Open(OpenWs { out, .. }) if !out.is_empty() => {
                self.phase = Phase::Finishing {
                    out: Box::new(out),
                    deadline_ms: now_ms + CLOSE_LINGER_MS,
                };
            }
            Phase::Finishing { out, deadline_ms } if !out.is_empty() => {
                self.phase = Phase::Finishing { out, deadline_ms };
            }
            _ => {}
        }
    }

    /// Upgrade request bytes: answer with 101 once the request is whole, or with an HTTP error.
    fn on_request_bytes(&mut self, input: &[u8], ctx: &mut Ctx<'_>) {
        let mut received = match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Accepted => None,
            Phase::Handshaking(received) => Some(received),
            _ => return,
        };
        let request = match &mut received {
            Some(buffer) => {
                buffer.extend_from_slice(input);
                &buffer[..]
            }
            None => input,
        };
        // A head ends on a LF: without a new one it cannot be complete, so a request trickling
        // in costs a parse per line, not per read.
        let continued = request.len() > input.len();
        if continued && !input.contains(&b'\n') && request.len() <= handshake::MAX_HEAD_BYTES {
            self.phase = Phase::Handshaking(received.unwrap_or_default());
            return;
        }
        let mut slots = [httparse::EMPTY_HEADER; http::MAX_HEADER_SLOTS];
        // Refuses heads over the limit, complete or not.
        let answer = match handshake::parse_request_head(request, &mut slots) {
            Ok(None) => {
                self.phase = Phase::Handshaking(received.unwrap_or_else(|| input.to_vec()));
                return;
            }
            Ok(Some(head)) => match self.log_connected(&head, ctx.routes.route(&head), ctx) {
                // A valid client waits for our 101 before it sends anything else.
                WsRoute::Upgrade(_) | WsRoute::UpgradeAwaitingAuth(_)
                    if head.len < request.len() =>
                {
                    Err(HttpError {
                        status: 400,
                        message: "data after the upgrade request",
                    })
                }
                WsRoute::Upgrade(response) => Ok((response, false)),
                WsRoute::UpgradeAwaitingAuth(response) => Ok((response, true)),
                WsRoute::Refuse(e) => Err(e),
                // Answered with `Connection: close`: whatever follows the head (a pipelined
                // request) is not read.
                WsRoute::Respond(response) => {
                    debug!("session {}: plain HTTP request answered", self.id);
                    self.finish_with(response, ctx.now_ms);
                    return;
                }
            },
            Err(e) => Err(e),
        };
        match answer {
            Ok((response, awaiting_auth)) => {
                debug!("session {}: handshake done", self.id);
                if awaiting_auth {
                    self.setup.await_auth();
                }
                let mut out = OutQueue::new();
                out.push(response);
                self.phase = Phase::Open(OpenWs { out, reading: None });
            }
            Err(HttpError { status, message }) => {
                ctx.stats.handshake_failures += 1;
                // Only the client-token check refuses with 401 (logged by `log_connected`).
                ctx.stats.client_token_failures += u64::from(status == 401);
                debug!(
                    "session {}: handshake refused ({status}): {message}",
                    self.id
                );
                self.finish_with(http::error_response(status, message), ctx.now_ms);
            }
        }
    }

    /// Logs where a request whose head arrived comes from (at debug), and a refused client token
    /// (at info, rate-limited); remembers the address of a session that must authenticate in
    /// its first message. The forwarding headers are read only here, from the head in place.
    fn log_connected(
        &mut self,
        head: &http::Head<'_, '_>,
        route: WsRoute,
        ctx: &mut Ctx<'_>,
    ) -> WsRoute {
        let refused_token = matches!(&route, WsRoute::Refuse(e) if e.status == 401);
        let awaiting_auth = matches!(route, WsRoute::UpgradeAwaitingAuth(_));
        if !(refused_token || awaiting_auth || log_enabled!(Level::Debug)) {
            return route;
        }
        let forwarding = if ctx.settings.trusted_proxies.is_empty() {
            Forwarding::default()
        } else {
            Forwarding::from_headers(head.headers)
        };
        let client = forwarding.client(&ctx.settings.trusted_proxies, (ctx.peer)());
        debug!("session {}: connected from {client}", self.id);
        if refused_token {
            ctx.auth_log.failed(
                ctx.now_ms,
                &AuthFailure {
                    kind: AuthFailureKind::UpgradeToken,
                    connection: &format_args!("session {}", self.id),
                    client,
                    // The route refuses a token only on `--path`, so this is the server's own
                    // path, byte for byte (the query, which may hold the token, is left out).
                    path: head.path_and_query().0,
                },
            );
        }
        if awaiting_auth {
            self.rare.get_or_insert_default().awaiting_auth_from = Some(Box::new(client));
        }
        route
    }

    /// Logs a failed `auth` message (or its absence), with the address kept at the upgrade.
    fn log_auth_failure(
        &mut self,
        kind: AuthFailureKind,
        auth_log: &mut AuthLog,
        now_ms: u64,
        peer: Option<&dyn Fn() -> Option<SocketAddr>>,
    ) {
        let kept = self
            .rare
            .as_mut()
            .and_then(|rare| rare.awaiting_auth_from.take());
        self.tidy_rare();
        let client = kept.map_or_else(
            || ClientAddr {
                peer: peer.and_then(|peer| peer()),
                forwarded: None,
            },
            |kept| *kept,
        );
        auth_log.failed(
            now_ms,
            &AuthFailure {
                kind,
                connection: &format_args!("session {}", self.id),
                client,
                path: "(first message)",
            },
        );
    }

    /// Queues the HTTP response that ends a connection which never became a WebSocket.
    fn finish_with(&mut self, response: impl Into<super::outbound::Chunk>, now_ms: u64) {
        let mut out = OutQueue::new();
        out.push(response);
        self.phase = Phase::Finishing {
            out: Box::new(out),
            deadline_ms: now_ms + CLOSE_LINGER_MS,
        };
    }

    fn read_messages(&mut self, ws: &mut WebSocketContext, input: &mut Bytes, ctx: &mut Ctx<'_>) {
        loop {
            let Phase::Open(open) = &mut self.phase else {
                return;
            };
            if open.out.charged_bytes() > ctx.settings.outbound_cap + CONTROL_SLACK {
                // Replies to what this client sends pile up faster than it reads them.
                ctx.stats.slow_consumer_closes += 1;
                return self.close_with(Some(ws), CloseReason::SlowConsumer, ctx.now_ms);
            }
            let mut stream = Stream {
                input,
                out: &mut open.out,
            };
            match ws.read(&mut stream) {
                Ok(Message::Text(text)) => self.on_text(text, ctx),
                Ok(Message::Binary(_)) if self.setup.awaiting_auth() => {
                    ctx.stats.auth_failures += 1;
                    self.log_auth_failure(
                        AuthFailureKind::MessageMissing,
                        ctx.auth_log,
                        ctx.now_ms,
                        Some(ctx.peer),
                    );
                    return self.close_with(Some(ws), CloseReason::AuthRequired, ctx.now_ms);
                }
                Ok(Message::Binary(data)) if ctx.settings.echo => {
                    self.send(frame::frame(Opcode::Binary, &data), ctx);
                }
                Ok(Message::Binary(_)) => {
                    return self.close_with(Some(ws), CloseReason::BinaryData, ctx.now_ms);
                }
                // tungstenite queued the pong / close reply; flushed below.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.finish(ctx.now_ms);
                }
                Err(err) => {
                    debug!("session {}: {err}", self.id);
                    let reason = match err {
                        tungstenite::Error::Capacity(_) => CloseReason::TooBig,
                        tungstenite::Error::Utf8(_) => CloseReason::BadUtf8,
                        tungstenite::Error::Protocol(_) => CloseReason::Protocol,
                        _ => CloseReason::Internal,
                    };
                    ctx.stats.protocol_closes += 1;
                    return self.close_with(Some(ws), reason, ctx.now_ms);
                }
            }
        }
        self.flush_control(ws, ctx);
    }

    /// Moves tungstenite's pending pong or close reply into the queue.
    fn flush_control(&mut self, ws: &mut WebSocketContext, ctx: &mut Ctx<'_>) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        let mut nothing = Bytes::new();
        let mut stream = Stream {
            input: &mut nothing,
            out: &mut open.out,
        };
        match ws.flush(&mut stream) {
            Ok(()) => {
                if open.out.charged_bytes() > ctx.settings.outbound_cap + CONTROL_SLACK {
                    // A client that floods pings and never reads.
                    ctx.stats.slow_consumer_closes += 1;
                    self.close_with(Some(ws), CloseReason::SlowConsumer, ctx.now_ms);
                }
            }
            Err(_) => self.finish(ctx.now_ms),
        }
    }

    fn on_text(&mut self, text: Utf8Bytes, ctx: &mut Ctx<'_>) {
        if self.setup.awaiting_auth() {
            return self.authenticate(&text, ctx);
        }
        if ctx.settings.echo {
            return self.send(frame::frame(Opcode::Text, text.as_bytes()), ctx);
        }
        let reply = match message::parse_client_message(&text) {
            Ok(ClientMessage::Subscribe {
                topics,
                claims,
                since,
                recent,
            }) => {
                let reply = self.subscribe(&topics, &claims, &since, recent, ctx);
                if let Ok(ack) = reply {
                    // The ack first, then what the new cursors can queue at once.
                    self.send(ack, ctx);
                    self.continue_replay(ctx.hub, ctx.settings, ctx.stats);
                    return;
                }
                reply
            }
            Ok(ClientMessage::Unsubscribe(topics)) => {
                for topic in &topics {
                    ctx.hub.unsubscribe(&mut self.subscriptions, self.id, topic);
                    self.forget_private(topic);
                    self.forget_replay(topic);
                }
                Ok(message::encode_ack(false, &topics))
            }
            Ok(ClientMessage::Ping) => Ok(message::pong_frame()),
            Ok(ClientMessage::Pong) => return,
            Ok(ClientMessage::Auth { .. }) => Err(RequestError::UnexpectedAuth),
            Err(e) => Err(e),
        };
        let frame = reply.unwrap_or_else(|e| {
            ctx.stats.bad_requests += 1;
            if matches!(e, RequestError::ClaimRefused { .. }) {
                ctx.stats.claims_refused += 1;
            }
            // Client data (topic names, commands) only at trace; private-topic claim refusals
            // are per-subscribe errors, at debug like the others.
            debug!("session {}: bad request: {}", self.id, e.kind());
            trace!("session {}: bad request: {e}", self.id);
            message::encode_request_error(&e)
        });
        self.send(frame, ctx);
    }

    /// The first message of a session awaiting authentication: the right token makes it an
    /// ordinary session (what follows in the same input is read as usual); anything else
    /// closes it.
    fn authenticate(&mut self, text: &str, ctx: &mut Ctx<'_>) {
        let reason = match message::parse_client_message(text) {
            Ok(ClientMessage::Auth { token }) if ctx.routes.token_matches(&token) => {
                debug!("session {}: authenticated", self.id);
                self.setup.authenticated();
                if let Some(rare) = &mut self.rare {
                    rare.awaiting_auth_from = None;
                    self.tidy_rare();
                }
                return self.send(message::authenticated_frame(), ctx);
            }
            Ok(ClientMessage::Auth { .. }) => CloseReason::WrongToken,
            _ => CloseReason::AuthRequired,
        };
        ctx.stats.auth_failures += 1;
        let kind = match reason {
            CloseReason::WrongToken => AuthFailureKind::MessageToken,
            _ => AuthFailureKind::MessageMissing,
        };
        self.log_auth_failure(kind, ctx.auth_log, ctx.now_ms, Some(ctx.peer));
        // No frame context is held between messages, and this one is complete.
        self.close(reason, ctx.now_ms);
    }

    /// All or nothing: a request with one bad topic, or one private topic without a valid
    /// claim, subscribes to none of them.
    fn subscribe(
        &mut self,
        topics: &[Cow<'_, str>],
        claims: &[Cow<'_, str>],
        since: &[(Cow<'_, str>, Resume<'_>)],
        recent: Option<u64>,
        ctx: &mut Ctx<'_>,
    ) -> Result<Bytes, RequestError> {
        for topic in topics {
            message::validate_topic(topic, ctx.settings.topic_rules)?;
        }
        let grants = ctx.access.authorize(topics, claims, ctx.unix_ms)?;
        let mut new: Vec<&str> = topics
            .iter()
            .map(|t| &**t)
            .filter(|t| !self.subscriptions.contains(t))
            .collect();
        new.sort_unstable();
        new.dedup();
        if self.subscriptions.len() + new.len() > ctx.settings.max_topics {
            return Err(RequestError::TooManyTopics {
                max: ctx.settings.max_topics,
            });
        }
        for &topic in &new {
            ctx.hub.subscribe(&mut self.subscriptions, self.id, topic);
        }
        let ack = match ctx.hub.history() {
            Some(_) => self.acknowledge_streams(topics, &new, since, recent, ctx),
            None => message::encode_ack(true, topics),
        };
        for grant in grants {
            let Some(topic) = topics.get(grant.topic) else {
                continue;
            };
            // The claim's Unix expiry, as a deadline on the loop's clock.
            let remaining_ms = grant.expires_unix_ms.saturating_sub(ctx.unix_ms);
            self.rare
                .get_or_insert_default()
                .private
                .get_or_insert_default()
                .extend(topic, ctx.now_ms.saturating_add(remaining_ms));
        }
        self.setup.subscribed();
        Ok(ack)
    }

    /// The acknowledgement with each topic's stream (history on), starting the replays that
    /// `since` and `recent` ask for on the topics this subscribe added (`new`, sorted).
    fn acknowledge_streams(
        &mut self,
        topics: &[Cow<'_, str>],
        new: &[&str],
        since: &[(Cow<'_, str>, Resume<'_>)],
        recent: Option<u64>,
        ctx: &mut Ctx<'_>,
    ) -> Bytes {
        // Each ack's epoch beside it: the stream views that give them do not outlive the loop.
        let mut acks: Vec<(Epoch, StreamAck<'_>)> = Vec::with_capacity(topics.len());
        for topic in topics {
            if acks.iter().any(|(_, a)| a.topic == &**topic) {
                continue;
            }
            // Every subscribed topic has a stream while history is on.
            let Some(stream) = ctx.hub.stream(topic) else {
                continue;
            };
            let resume = since.iter().find(|(t, _)| t == topic).map(|(_, r)| r);
            let plan = if new.binary_search(&&**topic).is_err() {
                // Already subscribed on this connection: `since` and `recent` are ignored.
                Plan::live()
            } else if let Some(resume) = resume {
                Plan::resume(&stream, resume)
            } else if let Some(count) = recent {
                Plan::recent(&stream, count)
            } else {
                Plan::live()
            };
            match plan.recovered {
                Some(true) => ctx.stats.resumes_recovered += 1,
                Some(false) => ctx.stats.resumes_lost += 1,
                None => {}
            }
            if let Some(next) = plan.replay_from {
                ctx.stats.replays += 1;
                self.rare.get_or_insert_default().replays.push(Cursor {
                    topic: std::rc::Rc::clone(stream.name()),
                    epoch: stream.epoch(),
                    next,
                });
            }
            acks.push((
                stream.epoch(),
                StreamAck {
                    topic,
                    epoch: "",
                    offset: stream.last(),
                    recovered: plan.recovered,
                    from: plan.from,
                },
            ));
        }
        let acks: Vec<StreamAck<'_>> = acks
            .iter()
            .map(|(epoch, ack)| StreamAck {
                epoch: epoch.as_str(),
                ..*ack
            })
            .collect();
        message::encode_subscribed_streams(topics, &acks)
    }

    /// Whether a replay is running (the server then calls [`Session::continue_replay`] when
    /// the socket drains).
    pub fn is_replaying(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|rare| !rare.replays.is_empty())
    }

    /// Queues the replays' next messages from the history while they fit under the outbound
    /// cap; a cursor that reaches its stream's end is done (the subscription is live again).
    /// A cursor overtaken by eviction sends `continuity_lost` and goes on from the oldest held.
    /// Returns how many frames it queued.
    pub fn continue_replay(&mut self, hub: &Hub, settings: &Settings, stats: &mut Stats) -> usize {
        let (Phase::Open(open), Some(rare)) = (&mut self.phase, self.rare.as_deref_mut()) else {
            return 0;
        };
        if !open.can_write() || rare.replays.is_empty() {
            return 0;
        }
        let mut queued = 0;
        rare.replays.retain_mut(|cursor| {
            let Some(stream) = hub.stream(&cursor.topic) else {
                return false;
            };
            if stream.epoch() != cursor.epoch {
                // Cannot happen while subscribed (the stream lives on); stop rather than mix.
                return false;
            }
            let resume_at = stream.first_held().unwrap_or(stream.last() + 1);
            if cursor.next < resume_at {
                stats.continuity_lost += 1;
                open.out.push(message::encode_continuity_lost(
                    &cursor.topic,
                    cursor.epoch.as_str(),
                    resume_at,
                ));
                cursor.next = resume_at;
            }
            while cursor.next <= stream.last() {
                let Some(frame) = stream.frame(cursor.next) else {
                    return false;
                };
                // Half the cap: live pushes of the session's other topics still fit beside
                // the replay, so a replay never makes them close the session (1013).
                if !fits(&open.out, frame.len(), settings.outbound_cap / 2) {
                    return true;
                }
                open.out.push(Shared::clone(frame));
                stats.deliveries += 1;
                queued += 1;
                cursor.next += 1;
            }
            false
        });
        self.tidy_rare();
        queued
    }

    /// The private topics, if the session holds any.
    fn private(&self) -> Option<&PrivateTopics> {
        self.rare.as_ref()?.private.as_ref()
    }

    /// Frees what no longer holds anything.
    fn tidy_rare(&mut self) {
        let Some(rare) = &mut self.rare else {
            return;
        };
        if rare.private.as_ref().is_some_and(|p| p.expiries.is_empty()) {
            rare.private = None;
        }
        if rare.private.is_none() && rare.replays.is_empty() && rare.awaiting_auth_from.is_none() {
            self.rare = None;
        }
    }

    fn forget_replay(&mut self, topic: &str) {
        if let Some(rare) = &mut self.rare {
            rare.replays.retain(|cursor| &*cursor.topic != topic);
            self.tidy_rare();
        }
    }

    fn forget_private(&mut self, topic: &str) {
        if let Some(private) = self.rare.as_mut().and_then(|rare| rare.private.as_mut()) {
            private.remove(topic);
            self.tidy_rare();
        }
    }

    /// Ends the private subscriptions whose claims have expired, and tells the client.
    fn expire_claims(&mut self, hub: &mut Hub, settings: &Settings, stats: &mut Stats, now: u64) {
        let Some(private) = self.rare.as_mut().and_then(|rare| rare.private.as_mut()) else {
            return;
        };
        if private.next_expiry_ms > now {
            return;
        }
        let expired = private.take_expired(now);
        self.tidy_rare();
        for topic in &expired {
            hub.unsubscribe(&mut self.subscriptions, self.id, topic);
            self.forget_replay(topic);
        }
        stats.claim_expirations += expired.len() as u64;
        debug!("session {}: {} claims expired", self.id, expired.len());
        trace!("session {}: claims expired: {expired:?}", self.id);
        self.queue_reply(
            message::encode_claims_expired(&expired),
            settings,
            stats,
            now,
        );
    }

    /// Queues a protocol Ping (empty, unmasked: the server's side).
    fn queue_ping(&mut self) {
        if let Phase::Open(open) = &mut self.phase {
            open.out.push(Bytes::from_static(&[0x89, 0x00]));
        }
    }

    /// Queues a reply of our own (pong, ack, error, echo).
    fn send(&mut self, frame: Bytes, ctx: &mut Ctx<'_>) {
        self.queue_reply(frame, ctx.settings, ctx.stats, ctx.now_ms);
    }

    fn queue_reply(&mut self, frame: Bytes, settings: &Settings, stats: &mut Stats, now: u64) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        if !open.can_write() {
            return;
        }
        if !fits(&open.out, frame.len(), settings.outbound_cap) {
            stats.slow_consumer_closes += 1;
            return self.close(CloseReason::SlowConsumer, now);
        }
        open.out.push(frame);
    }

    /// Whether a push of `len` bytes fits the queue now; when it does not, the server writes
    /// the socket first, and then [`Session::push`] applies the slow-consumer policy.
    pub fn has_room(&self, len: usize, settings: &Settings) -> bool {
        match &self.phase {
            Phase::Open(open) => fits(&open.out, len, settings.outbound_cap),
            _ => true,
        }
    }

    /// Queues a shared push frame of `topic`; a full queue triggers the slow-consumer policy.
    pub fn push(
        &mut self,
        topic: &str,
        frame: &Shared,
        settings: &Settings,
        stats: &mut Stats,
        now_ms: u64,
    ) -> Push {
        if let Some(rare) = &self.rare
            && rare.replays.iter().any(|cursor| &*cursor.topic == topic)
        {
            return Push::Deferred;
        }
        let Phase::Open(open) = &mut self.phase else {
            return Push::NotOpen;
        };
        if !open.can_write() {
            return Push::NotOpen;
        }
        if fits(&open.out, frame.len(), settings.outbound_cap) {
            open.out.push(frame.clone());
            stats.deliveries += 1;
            return Push::Queued;
        }
        match settings.slow_consumer {
            SlowConsumerPolicy::Drop => {
                stats.dropped += 1;
                Push::Dropped
            }
            SlowConsumerPolicy::Close => {
                stats.slow_consumer_closes += 1;
                self.close(CloseReason::SlowConsumer, now_ms);
                Push::Closed
            }
        }
    }

    /// Queues a run of shared push frames of `topic` as one entry, when all of it fits.
    /// `None`: it does not, and the caller offers the frames one by one to [`Session::push`],
    /// whose slow-consumer policy decides for each.
    pub fn push_run(
        &mut self,
        topic: &str,
        run: &Rc<Run>,
        settings: &Settings,
        stats: &mut Stats,
    ) -> Option<Push> {
        if let Some(rare) = &self.rare
            && rare.replays.iter().any(|cursor| &*cursor.topic == topic)
        {
            return Some(Push::Deferred);
        }
        let Phase::Open(open) = &mut self.phase else {
            return Some(Push::NotOpen);
        };
        if !open.can_write() {
            return Some(Push::NotOpen);
        }
        if !run_fits(&open.out, run, settings.outbound_cap) {
            return None;
        }
        open.out.push(Rc::clone(run));
        stats.deliveries += run.frames().len() as u64;
        Some(Push::Queued)
    }

    /// Whether a run fits the queue now (see [`Session::has_room`]).
    pub fn has_room_for_run(&self, run: &Run, settings: &Settings) -> bool {
        match &self.phase {
            Phase::Open(open) => run_fits(&open.out, run, settings.outbound_cap),
            _ => true,
        }
    }

    /// Sends a close frame (after dropping queued frames that have not started, when the
    /// queue is what overflowed) and moves to `Finishing`.
    pub fn close(&mut self, reason: CloseReason, now_ms: u64) {
        self.close_with(None, reason, now_ms);
    }

    /// [`Session::close`] with the frame context in use, if a message is being read.
    fn close_with(
        &mut self,
        reading: Option<&mut WebSocketContext>,
        reason: CloseReason,
        now_ms: u64,
    ) {
        match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Open(OpenWs {
                mut out,
                reading: mut kept,
            }) => {
                debug!("session {}: closing: {}", self.id, reason.text());
                if reason == CloseReason::SlowConsumer {
                    out.discard_unsent();
                }
                match reading.or(kept.as_deref_mut()) {
                    // tungstenite's state matters (it may have sent or answered a close).
                    // Err: it already considers the connection closed, nothing to add.
                    Some(ws) => {
                        let frame = CloseFrame {
                            code: reason.code(),
                            reason: reason.text().into(),
                        };
                        let mut nothing = Bytes::new();
                        let mut stream = Stream {
                            input: &mut nothing,
                            out: &mut out,
                        };
                        let _ = ws.close(&mut stream, Some(frame));
                    }
                    // Between messages the connection is open both ways: a plain close frame.
                    None => out.push(frame::close_frame(reason.code().into(), reason.text())),
                }
                self.phase = Phase::Finishing {
                    out: Box::new(out),
                    deadline_ms: now_ms + CLOSE_LINGER_MS,
                };
            }
            // Not a WebSocket yet: just drop it.
            Phase::Accepted | Phase::Handshaking(_) | Phase::Gone => {}
            finishing @ Phase::Finishing { .. } => self.phase = finishing,
        }
    }

    /// The close handshake completed (or tungstenite gave up): flush and finish.
    fn finish(&mut self, now_ms: u64) {
        if let Phase::Open(OpenWs { out, .. }) = std::mem::replace(&mut self.phase, Phase::Gone) {
            self.phase = Phase::Finishing {
                out: Box::new(out),
                deadline_ms: now_ms + CLOSE_LINGER_MS,
            };
        }
    }
}

/// What a new subscription of a topic gets from its stream: the ack's fields and where its
/// replay starts, if it has one.
struct Plan {
    recovered: Option<bool>,
    from: Option<u64>,
    replay_from: Option<u64>,
}

impl Plan {
    fn live() -> Plan {
        Plan {
            recovered: None,
            from: None,
            replay_from: None,
        }
    }

    /// `since`: everything after it, when the stream is the same and still holds it all.
    fn resume(stream: &hub::Stream<'_>, resume: &Resume<'_>) -> Plan {
        let last = stream.last();
        let lost = |from: u64| Plan {
            recovered: Some(false),
            from: Some(from),
            replay_from: (from <= last).then_some(from),
        };
        let oldest = stream.first_held().unwrap_or(last + 1);
        if resume.epoch != stream.epoch().as_str() || resume.offset > last {
            // Another stream (or a position this one never had): every message it holds is newer
            // than anything the client saw, so all of them are replayed.
            return lost(oldest);
        }
        let wanted = resume.offset + 1;
        match stream.first_held() {
            _ if wanted > last => Plan {
                recovered: Some(true),
                from: None,
                replay_from: None,
            },
            Some(first) if first <= wanted => Plan {
                recovered: Some(true),
                from: None,
                replay_from: Some(wanted),
            },
            _ => lost(oldest),
        }
    }

    /// `recent: count`: the last `count` held messages, then live.
    fn recent(stream: &hub::Stream<'_>, count: u64) -> Plan {
        let last = stream.last();
        let first = stream.first_held().unwrap_or(last + 1);
        let from = (last + 1).saturating_sub(count).max(first);
        Plan {
            recovered: None,
            from: Some(from),
            replay_from: (from <= last).then_some(from),
        }
    }
}

/// An empty queue takes any frame, so one large publish never closes everyone.
fn fits(out: &OutQueue, len: usize, cap: usize) -> bool {
    out.is_empty() || out.charged_bytes() + len + FRAME_OVERHEAD <= cap
}

/// Unlike a single frame, a run is not let into an empty queue past the cap: frame by frame,
/// the first one always is, and the policy decides for the rest.
fn run_fits(out: &OutQueue, run: &Run, cap: usize) -> bool {
    out.charged_bytes() + run.charge() <= cap
}

impl Connection for Session {
    fn outbound(&mut self) -> Option<&mut OutQueue> {
        match &mut self.phase {
            Phase::Open(open) => Some(&mut open.out),
            Phase::Finishing { out, .. } => Some(&mut **out),
            Phase::Accepted | Phase::Handshaking(_) | Phase::Gone => None,
        }
    }

    fn input_blocked(&self, settings: &Settings) -> bool {
        match &self.phase {
            Phase::Open(open) => open.out.charged_bytes() > settings.outbound_cap,
            _ => false,
        }
    }

    fn on_written(&mut self, written: usize, now_ms: u64) {
        let empty = !self.has_output();
        self.stall.on_written(written, empty, now_ms);
    }

    fn next_deadline(&self, settings: &Settings) -> u64 {
        let deadline = match &self.phase {
            Phase::Accepted | Phase::Handshaking(_) => self.setup.deadline_ms(),
            Phase::Open(open) => {
                let idle = self.liveness.deadline(settings, open.can_write());
                let claims = self.private().map_or(u64::MAX, |p| p.next_expiry_ms);
                // Echo sessions need no subscribe, but still the `auth` when awaited.
                if settings.echo && !self.setup.awaiting_auth() {
                    idle
                } else {
                    idle.min(self.setup.deadline_ms()).min(claims)
                }
            }
            Phase::Finishing { deadline_ms, .. } => *deadline_ms,
            Phase::Gone => 0,
        };
        deadline.min(self.stall.deadline(settings.write_timeout_ms))
    }

    fn on_timer(
        &mut self,
        s: &Settings,
        stats: &mut Stats,
        hub: &mut Hub,
        auth_log: &mut AuthLog,
        now: u64,
    ) {
        if self.stall.expired(now, s.write_timeout_ms) {
            stats.write_timeouts += 1;
            debug!("session {}: write timeout", self.id);
            self.phase = Phase::Gone;
            return;
        }
        if let Phase::Open(_) = self.phase {
            self.expire_claims(hub, s, stats, now);
        }
        match &self.phase {
            Phase::Accepted | Phase::Handshaking(_) if now >= self.setup.deadline_ms() => {
                stats.handshake_timeouts += 1;
                self.phase = Phase::Gone;
            }
            Phase::Open(_) if self.setup.awaiting_auth() && now >= self.setup.deadline_ms() => {
                stats.auth_failures += 1;
                self.log_auth_failure(AuthFailureKind::MessageTimeout, auth_log, now, None);
                self.close(CloseReason::AuthTimeout, now);
            }
            Phase::Open(_) if now >= self.liveness.last_input_ms() + s.idle_limit_ms => {
                stats.heartbeat_timeouts += 1;
                self.close(CloseReason::HeartbeatTimeout, now);
            }
            Phase::Open(open)
                if !s.echo
                    && open.can_write()
                    && !self.liveness.pinged()
                    && now >= self.liveness.last_input_ms() + s.heartbeat_interval_ms =>
            {
                self.liveness.mark_pinged();
                stats.pings_sent += 1;
                self.queue_ping();
            }
            Phase::Open(_) if !s.echo && now >= self.setup.deadline_ms() => {
                stats.handshake_timeouts += 1;
                self.close(CloseReason::SubscribeTimeout, now);
            }
            Phase::Finishing { deadline_ms, .. } if now >= *deadline_ms => self.phase = Phase::Gone,
            _ => {}
        }
    }

    fn status(&mut self, eof: bool) -> Status {
        match self.phase_status() {
            _ if eof && !self.has_output() => Status::Dead,
            Status::Finishing if eof => Status::Dead,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::wire::message::ClaimRefusal;

    /// The wall clock when the loop's clock reads 0.
    const UNIX_AT_START_MS: u64 = 1_700_000_000_000;

    struct UpgradeAll;

    impl WsRoutes for UpgradeAll {
        fn route(&self, head: &http::Head<'_, '_>) -> WsRoute {
            match handshake::upgrade_request(head) {
                Ok(request) => WsRoute::Upgrade(handshake::accept_response(request.key)),
                Err(e) => WsRoute::Refuse(e),
            }
        }
    }

    /// Upgrades every request into a session awaiting its `auth`; the token is `t0k`.
    struct TokenInMessage;

    impl WsRoutes for TokenInMessage {
        fn route(&self, head: &http::Head<'_, '_>) -> WsRoute {
            match UpgradeAll.route(head) {
                WsRoute::Upgrade(response) => WsRoute::UpgradeAwaitingAuth(response),
                other => other,
            }
        }

        fn token_matches(&self, token: &str) -> bool {
            token == "t0k"
        }
    }

    /// Topics starting with `p-` are private; the first claim is the Unix ms it grants them
    /// until (the signature is the application's business, not the session's).
    struct ClaimIsExpiry;

    impl TopicAccess for ClaimIsExpiry {
        fn authorize(
            &self,
            topics: &[Cow<'_, str>],
            claims: &[Cow<'_, str>],
            _unix_ms: u64,
        ) -> Result<Vec<Grant>, RequestError> {
            let expiry = claims.first().and_then(|c| c.parse().ok());
            topics
                .iter()
                .enumerate()
                .filter(|(_, t)| t.starts_with("p-"))
                .map(|(index, topic)| match expiry {
                    Some(expires_unix_ms) => Ok(Grant {
                        topic: index,
                        expires_unix_ms,
                    }),
                    None => Err(RequestError::ClaimRefused {
                        topic: topic.to_string(),
                        reason: ClaimRefusal::Missing,
                    }),
                })
                .collect()
        }
    }

    struct Harness {
        session: Session,
        hub: Hub,
        stats: Stats,
        settings: Settings,
        routes: &'static dyn WsRoutes,
        auth_log: AuthLog,
    }

    impl Harness {
        fn open() -> Harness {
            Self::open_with(Hub::new(), Config::default())
        }

        /// A session over a hub with history (seed 0: the first stream's epoch is 00000000).
        fn open_with_history(size: usize, outbound_cap: usize) -> Harness {
            let limits = crate::hub::HistoryLimits {
                size,
                ttl_ms: 60_000,
                memory: 1 << 20,
            };
            let config = Config {
                outbound_cap,
                ..Config::default()
            };
            Self::open_with(Hub::with_history(limits, 0), config)
        }

        fn open_with(hub: Hub, config: Config) -> Harness {
            Self::open_routed(hub, config, &UpgradeAll)
        }

        /// A session upgraded at 0 that awaits its `auth` message (token `t0k`).
        fn awaiting_auth(config: Config) -> Harness {
            let h = Self::open_routed(Hub::new(), config, &TokenInMessage);
            assert!(h.session.setup.awaiting_auth());
            h
        }

        fn open_routed(hub: Hub, config: Config, routes: &'static dyn WsRoutes) -> Harness {
            let settings = Settings::from_config(&config);
            let mut harness = Harness {
                session: Session::new(SubscriberId(1), 0, &settings),
                hub,
                stats: Stats::default(),
                settings,
                routes,
                auth_log: AuthLog::default(),
            };
            let key = handshake::client_key([7; 16]);
            harness.input(&handshake::client_request("x", "/ws", &key), 0);
            harness.output();
            harness
        }

        fn input(&mut self, bytes: &[u8], now_ms: u64) {
            let mut ctx = Ctx {
                hub: &mut self.hub,
                settings: &self.settings,
                stats: &mut self.stats,
                routes: self.routes,
                access: &ClaimIsExpiry,
                now_ms,
                unix_ms: UNIX_AT_START_MS + now_ms,
                auth_log: &mut self.auth_log,
                peer: &|| None,
            };
            self.session
                .on_input(Bytes::copy_from_slice(bytes), &mut ctx);
        }

        fn send(&mut self, json: serde_json::Value, now_ms: u64) {
            let text = json.to_string();
            self.input(
                &frame::masked(Opcode::Text, text.as_bytes(), [1, 2, 3, 4]),
                now_ms,
            );
        }

        fn timer(&mut self, now_ms: u64) {
            self.session.on_timer(
                &self.settings,
                &mut self.stats,
                &mut self.hub,
                &mut self.auth_log,
                now_ms,
            );
        }

        /// The bytes queued so far, as they would go out.
        fn raw_output(&mut self) -> Vec<u8> {
            let mut bytes = Vec::new();
            if let Some(out) = self.session.outbound() {
                let _ = out.write_to(&mut bytes);
            }
            bytes
        }

        /// The text messages queued so far, as JSON.
        fn output(&mut self) -> Vec<serde_json::Value> {
            let mut bytes = Vec::new();
            if let Some(out) = self.session.outbound() {
                let _ = out.write_to(&mut bytes);
            }
            let mut texts = Vec::new();
            frame::split_frames(&bytes, |_, payload| {
                texts.push(serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null))
            });
            texts
        }

        fn subscribers(&self, topic: &str) -> usize {
            self.hub.subscriber_count(topic)
        }

        /// Publishes through the hub and offers the push to the session if it is a member, as
        /// the server does (`NotOpen` when it is not).
        fn publish(&mut self, topic: &str, data: &str) -> Push {
            let delivery = self.hub.publish(topic, data, 0);
            let member = delivery.subscribers().any(|id| id == self.session.id());
            let frame = delivery.frame;
            if !member {
                return Push::NotOpen;
            }
            self.session
                .push(topic, &frame, &self.settings, &mut self.stats, 0)
        }

        /// The socket drained: the replay goes on.
        fn drained(&mut self) -> usize {
            self.session
                .continue_replay(&self.hub, &self.settings, &mut self.stats)
        }
    }

    /// The offsets of the pushes among `messages`.
    fn offsets(messages: &[serde_json::Value]) -> Vec<u64> {
        messages
            .iter()
            .filter(|m| m["cmd"] == "push")
            .filter_map(|m| m["offset"].as_u64())
            .collect()
    }

    #[test]
    fn a_resume_replays_what_was_missed_paced_by_the_cap_then_goes_live() {
        let mut h = Harness::open_with_history(100, 4096);
        let data = format!("\"{}\"", "x".repeat(500));
        for _ in 0..30 {
            h.publish("t", &data);
        }
        h.send(
            serde_json::json!({"topics":["t"],"since":{"t":{"offset":3,"epoch":"00000000"}}}),
            0,
        );
        let first = h.output();
        assert_eq!(
            first[0]["streams"]["t"],
            serde_json::json!({"epoch":"00000000","offset":30,"recovered":true})
        );
        let mut got = offsets(&first);
        assert!(
            got.len() < 10,
            "paced: half the 4 KiB cap, not all 27 at once"
        );
        // Live publishes while the replay runs are not queued twice: the cursor sends them.
        assert_eq!(h.publish("t", &data), Push::Deferred);
        while h.session.is_replaying() {
            assert!(h.drained() > 0);
            got.extend(offsets(&h.output()));
        }
        assert_eq!(got, (4..=31).collect::<Vec<_>>());
        assert!(h.session.rare.is_none(), "the cursor is freed");
        assert_eq!(h.publish("t", "1"), Push::Queued);
        assert_eq!(offsets(&h.output()), [32]);
        assert_eq!((h.stats.replays, h.stats.resumes_recovered), (1, 1));
    }

    #[test]
    fn eviction_overtaking_a_replay_sends_continuity_lost() {
        let mut h = Harness::open_with_history(10, 4096);
        let data = format!("\"{}\"", "x".repeat(1000));
        for _ in 0..10 {
            h.publish("t", &data);
        }
        h.send(serde_json::json!({"topics":["t"],"recent":10}), 0);
        let first = h.output();
        assert_eq!(first[0]["streams"]["t"]["from"], 1);
        let mut got = offsets(&first);
        // Ten more while the client reads nothing: offsets up to 10 leave the history.
        for _ in 0..10 {
            assert_eq!(h.publish("t", &data), Push::Deferred);
        }
        h.drained();
        let next = h.output();
        let lost = next.iter().find(|m| m["cmd"] == "continuity_lost");
        assert_eq!(
            lost,
            Some(
                &serde_json::json!({"cmd":"continuity_lost","topic":"t","epoch":"00000000","from":11})
            )
        );
        got.extend(offsets(&next));
        while h.session.is_replaying() {
            h.drained();
            got.extend(offsets(&h.output()));
        }
        let resumed = got.iter().position(|&o| o == 11).unwrap_or(usize::MAX);
        assert_eq!(got[resumed..], (11..=20).collect::<Vec<_>>());
        assert_eq!(h.stats.continuity_lost, 1);
    }

    #[test]
    fn since_and_recent_are_ignored_for_a_topic_already_subscribed() {
        let mut h = Harness::open_with_history(100, 64 * 1024);
        h.send(serde_json::json!({"topics":["t"]}), 0);
        h.publish("t", "1");
        h.output();
        h.send(
            serde_json::json!({"topics":["t","u"],"recent":5,"since":{"t":{"offset":0,"epoch":"00000000"}}}),
            0,
        );
        let out = h.output();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0]["streams"]["t"]["offset"], 1);
        assert!(out[0]["streams"]["t"].get("recovered").is_none());
        assert_eq!(out[0]["streams"]["u"]["from"], 1);
        assert!(!h.session.is_replaying());
    }

    #[test]
    fn a_private_subscription_ends_when_its_claim_expires() {
        let mut h = Harness::open();
        let claim = (UNIX_AT_START_MS + 5_000).to_string();
        h.send(
            serde_json::json!({"cmd":"subscribe","topics":["p-1","news"],"claims":[claim]}),
            100,
        );
        assert_eq!(h.output()[0]["cmd"], "subscribed");
        assert_eq!(h.session.next_deadline(&h.settings), 5_000);
        h.timer(4_999);
        assert!(h.output().is_empty());
        assert_eq!(h.subscribers("p-1"), 1);
        h.timer(5_000);
        assert_eq!(
            h.output(),
            [serde_json::json!({"cmd":"unsubscribed","topics":["p-1"],"reason":"claim expired"})]
        );
        assert_eq!((h.subscribers("p-1"), h.subscribers("news")), (0, 1));
        assert!(h.session.rare.is_none(), "the expiries are freed");
        assert_eq!(h.stats.claim_expirations, 1);
        // Back to the heartbeat deadline only (its Ping first).
        assert_eq!(
            h.session.next_deadline(&h.settings),
            100 + h.settings.heartbeat_interval_ms
        );
    }

    #[test]
    fn a_silent_client_is_pinged_at_the_interval_and_closed_after_the_timeout() {
        let mut h = Harness::open();
        h.send(serde_json::json!({"topics":["news"]}), 0);
        assert_eq!(h.output()[0]["cmd"], "subscribed");
        let interval = h.settings.heartbeat_interval_ms;
        assert_eq!(h.session.next_deadline(&h.settings), interval);
        h.timer(interval);
        assert_eq!(h.stats.pings_sent, 1);
        assert_eq!(h.raw_output(), [0x89, 0x00], "an empty protocol Ping");
        // Once: the next deadline is the close.
        assert_eq!(
            h.session.next_deadline(&h.settings),
            h.settings.idle_limit_ms
        );
        h.timer(interval + 1);
        assert_eq!(h.stats.pings_sent, 1);
        // Any input (here a Pong frame) counts: the next Ping is an interval after it.
        h.input(
            &frame::masked(Opcode::Pong, b"", [1, 2, 3, 4]),
            interval + 5,
        );
        assert_eq!(h.session.next_deadline(&h.settings), 2 * interval + 5);
        h.timer(2 * interval + 5);
        assert_eq!(h.stats.pings_sent, 2);
        let _ = h.raw_output();
        h.timer(interval + 5 + h.settings.idle_limit_ms);
        assert_eq!(h.stats.heartbeat_timeouts, 1);
    }

    #[test]
    fn a_fresh_claim_extends_and_a_stale_one_does_not_shorten() {
        let mut h = Harness::open();
        let claim = |ms: u64| (UNIX_AT_START_MS + ms).to_string();
        h.send(
            serde_json::json!({"topics":["p-1"],"claims":[claim(5_000)]}),
            0,
        );
        h.send(
            serde_json::json!({"topics":["p-1"],"claims":[claim(9_000)]}),
            3_000,
        );
        h.send(
            serde_json::json!({"topics":["p-1"],"claims":[claim(4_000)]}),
            3_500,
        );
        assert_eq!(h.output().len(), 3);
        assert_eq!(h.subscribers("p-1"), 1, "re-subscribing adds no member");
        assert_eq!(h.session.next_deadline(&h.settings), 9_000);
        h.timer(5_000);
        assert!(h.output().is_empty());
        h.send(
            serde_json::json!({"cmd":"unsubscribe","topics":["p-1"]}),
            6_000,
        );
        assert_eq!(h.output()[0]["cmd"], "unsubscribed");
        assert!(h.session.rare.is_none());
        assert_eq!(
            h.session.next_deadline(&h.settings),
            6_000 + h.settings.heartbeat_interval_ms
        );
    }

    #[test]
    fn a_refused_claim_subscribes_nothing() {
        let mut h = Harness::open();
        h.send(serde_json::json!({"topics":["news","p-1"]}), 0);
        let reply = h.output();
        assert_eq!(reply[0]["reason"], "missing_claim", "{reply:?}");
        assert_eq!(reply[0]["topic"], "p-1");
        assert_eq!((h.subscribers("news"), h.subscribers("p-1")), (0, 0));
        assert_eq!((h.stats.claims_refused, h.stats.bad_requests), (1, 1));
    }

    /// The close frame among what was queued: (code, reason).
    fn close_of(bytes: &[u8]) -> Option<(u16, String)> {
        let mut close = None;
        frame::split_frames(bytes, |opcode, payload| {
            if opcode == Opcode::Close as u8 && payload.len() >= 2 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                close = Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        });
        close
    }

    fn text_frame(json: serde_json::Value) -> Vec<u8> {
        frame::masked(Opcode::Text, json.to_string().as_bytes(), [1, 2, 3, 4])
    }

    #[test]
    fn the_right_token_first_then_an_ordinary_session_even_pipelined() {
        let mut h = Harness::awaiting_auth(Config::default());
        // auth and subscribe in one read: processed in order.
        let mut input = text_frame(serde_json::json!({"cmd":"auth","token":"t0k"}));
        input.extend(text_frame(
            serde_json::json!({"cmd":"subscribe","topics":["news"]}),
        ));
        h.input(&input, 10);
        let out = h.output();
        assert_eq!(out[0], serde_json::json!({"cmd":"authenticated"}));
        assert_eq!(out[1]["cmd"], "subscribed", "{out:?}");
        assert_eq!(h.subscribers("news"), 1);
        assert_eq!(h.publish("news", "1"), Push::Queued);
        assert_eq!(h.output()[0]["cmd"], "push");
        // A second auth is answered with an error; the session stays.
        h.send(serde_json::json!({"cmd":"auth","token":"t0k"}), 20);
        let out = h.output();
        assert_eq!(out[0]["cmd"], "error", "{out:?}");
        assert!(matches!(h.session.status(false), Status::Live));
        assert_eq!((h.stats.auth_failures, h.stats.bad_requests), (0, 1));
    }

    #[test]
    fn before_the_token_anything_else_closes_with_1008() {
        let cases: [(&[u8], &str); 5] = [
            (
                &text_frame(serde_json::json!({"cmd":"subscribe","topics":["news"]})),
                "authentication required",
            ),
            (
                &text_frame(serde_json::json!({"cmd":"ping"})),
                "authentication required",
            ),
            (
                &frame::masked(Opcode::Binary, b"t0k", [1, 2, 3, 4]),
                "authentication required",
            ),
            (
                &text_frame(serde_json::json!({"cmd":"auth"})),
                "authentication required",
            ),
            (
                &text_frame(serde_json::json!({"cmd":"auth","token":"t0K"})),
                "wrong client token",
            ),
        ];
        for (input, reason) in cases {
            let mut h = Harness::awaiting_auth(Config::default());
            // Whatever follows in the same read is not read any more.
            let mut input = input.to_vec();
            input.extend(text_frame(serde_json::json!({"cmd":"auth","token":"t0k"})));
            h.input(&input, 10);
            let bytes = h.raw_output();
            assert_eq!(close_of(&bytes), Some((1008, reason.to_owned())));
            assert!(!bytes.windows(13).any(|w| w == b"authenticated"));
            assert_eq!(h.subscribers("news"), 0);
            assert!(matches!(h.session.status(false), Status::Finishing));
            assert_eq!(h.stats.auth_failures, 1);
        }
    }

    #[test]
    fn no_token_by_the_setup_deadline_closes_with_1008() {
        let config = Config::default();
        let mut h = Harness::awaiting_auth(config);
        let timeout = h.settings.handshake_timeout_ms;
        // Measured from the accept, as the handshake's own deadline; Pings answered meanwhile.
        assert_eq!(h.session.next_deadline(&h.settings), timeout);
        h.input(&frame::masked(Opcode::Ping, b"hi", [1, 2, 3, 4]), 5);
        assert_eq!(h.raw_output(), [0x8a, 0x02, b'h', b'i'], "a Pong");
        assert_eq!(h.session.next_deadline(&h.settings), timeout);
        h.timer(timeout - 1);
        assert!(h.raw_output().is_empty());
        h.timer(timeout);
        assert_eq!(
            close_of(&h.raw_output()),
            Some((1008, "authentication timeout".to_owned()))
        );
        assert_eq!((h.stats.auth_failures, h.stats.handshake_timeouts), (1, 0));
    }

    #[test]
    fn echo_sessions_await_the_token_too() {
        let config = Config {
            echo: true,
            ..Config::default()
        };
        let mut h = Harness::awaiting_auth(config.clone());
        assert_eq!(
            h.session.next_deadline(&h.settings),
            h.settings.handshake_timeout_ms
        );
        h.input(&frame::masked(Opcode::Text, b"hello", [1, 2, 3, 4]), 1);
        assert_eq!(
            close_of(&h.raw_output()),
            Some((1008, "authentication required".to_owned()))
        );
        let mut h = Harness::awaiting_auth(config);
        h.send(serde_json::json!({"cmd":"auth","token":"t0k"}), 1);
        h.input(&frame::masked(Opcode::Text, b"hello", [1, 2, 3, 4]), 2);
        let mut texts = Vec::new();
        frame::split_frames(&h.raw_output(), |_, p| texts.push(p.to_vec()));
        assert_eq!(
            texts,
            [br#"{"cmd":"authenticated"}"#.to_vec(), b"hello".to_vec()]
        );
        // Authenticated: no setup deadline in echo mode.
        assert!(h.session.next_deadline(&h.settings) > h.settings.handshake_timeout_ms);
    }

    #[test]
    fn without_a_token_required_auth_is_an_error_reply() {
        let mut h = Harness::open();
        h.send(serde_json::json!({"cmd":"auth","token":"t0k"}), 1);
        let out = h.output();
        assert_eq!(out[0]["cmd"], "error");
        assert!(
            out[0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("no authentication expected")),
            "{out:?}"
        );
        h.send(serde_json::json!({"topics":["news"]}), 2);
        assert_eq!(h.output()[0]["cmd"], "subscribed");
        assert_eq!(h.stats.auth_failures, 0);
    }

    #[test]
    fn private_topics_cost_other_sessions_one_pointer() {
        assert_eq!(size_of::<Option<Box<Rare>>>(), 8);
        // 128 bytes before private topics existed.
        assert!(size_of::<Session>() <= 136, "{}", size_of::<Session>());
        eprintln!(
            "SIZES session={} rare={}",
            size_of::<Session>(),
            size_of::<Rare>()
        );
    }
}
