//! One WebSocket connection's state, without I/O.
//!
//! The loop feeds the bytes it read (`on_input`), tells the session what it wrote
//! (`on_written`) and when its deadline passed (`on_timer`); the session answers through its
//! outbound queue, the one path for every byte to the socket: the handshake response,
//! tungstenite's pong and close frames, our replies and the shared push frames.
//!
//! The upgrade request is parsed by [`crate::handshake`], usually straight from the loop's read
//! buffer (a request split over several reads is collected, up to 16 KiB). tungstenite parses the
//! frames. It reads from and writes to [`SessionIo`], a stream made of the input the loop handed
//! over and the session's [`OutQueue`]; it never touches the socket, so its buffers stay small
//! (no 128 KiB read buffer per connection). Its frame context (~340 bytes) exists only while a
//! client message is being read: between messages an open session holds nothing but its queue.

use std::io::{self, Read, Write};
use std::rc::Rc;

use bytes::Bytes;
use log::debug;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::broker::{Broker, SubscriberId};
use crate::config::{Config, SlowConsumerPolicy, millis};
use crate::handshake::{self, Rejection, UpgradeRequest};
use crate::outbound::OutQueue;
use crate::protocol::{self, ClientMessage, Opcode, RequestError, TopicRules};
use crate::stats::Stats;

/// How long a closing connection may take to acknowledge our close before it is dropped.
const CLOSE_LINGER_MS: u64 = 2_000;
/// Control frames tungstenite queues on its own (pongs, close replies) may overshoot the
/// outbound cap by this much before the session counts as overloaded.
const CONTROL_SLACK: usize = 16 * 1024;

/// Per-session settings derived once from [`Config`].
#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub idle_limit_ms: u64,
    pub write_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub outbound_cap: usize,
    pub slow_consumer: SlowConsumerPolicy,
    pub max_topics: usize,
    pub topic_rules: TopicRules,
    pub echo: bool,
    pub ws_config: WebSocketConfig,
}

impl SessionSettings {
    pub fn from_config(config: &Config) -> Self {
        // read_buffer_size 0: tungstenite allocates no read buffer up front; it grows per frame.
        // write_buffer_size 0: every frame it writes goes straight into our queue.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(0)
            .write_buffer_size(0)
            .max_write_buffer_size(config.outbound_cap + CONTROL_SLACK)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        SessionSettings {
            idle_limit_ms: config.idle_limit_ms(),
            write_timeout_ms: millis(config.write_timeout),
            handshake_timeout_ms: millis(config.handshake_timeout),
            outbound_cap: config.outbound_cap,
            slow_consumer: config.slow_consumer,
            max_topics: config.max_topics_per_connection,
            topic_rules: TopicRules {
                max_len: config.max_topic_length,
            },
            echo: config.echo,
            ws_config,
        }
    }
}

/// Decides at the handshake whether a request may become a WebSocket session.
#[derive(Debug, Default)]
pub struct HandshakePolicy {
    pub path: String,
    /// Browser origins allowed to connect (exact `scheme://host[:port]`, case-insensitive). Empty:
    /// any. Requests without an `Origin` header (non-browser clients) are not affected: the
    /// check protects browsers from cross-site use, it does not authenticate.
    pub allowed_origins: Vec<String>,
    /// Required client token, given as `?token=` in the URL (browsers cannot set headers on a
    /// WebSocket) or as `Authorization: Bearer`.
    pub client_token: Option<String>,
}

impl HandshakePolicy {
    pub fn from_config(config: &Config) -> Self {
        HandshakePolicy {
            path: config.path.clone(),
            allowed_origins: config.allowed_origins.clone(),
            client_token: config.client_token.clone(),
        }
    }

    /// The HTTP status that rejects `request`, if any.
    pub fn check(&self, request: &UpgradeRequest<'_>) -> Result<(), Rejection> {
        let refuse = |status, message| Err(Rejection { status, message });
        if request.path != self.path {
            return refuse(404, "no WebSocket endpoint at this path");
        }
        if !self.allowed_origins.is_empty()
            && let Some(origin) = request.origin
            && !self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
        {
            return refuse(403, "origin not allowed");
        }
        if let Some(expected) = &self.client_token {
            let from_query = request
                .query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
            let from_header = request.authorization.and_then(crate::auth::bearer_token);
            let presented = from_query.or(from_header).unwrap_or("");
            if !crate::auth::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                return refuse(401, "missing or wrong client token");
            }
        }
        Ok(())
    }
}

/// The stream tungstenite reads from and writes to: the loop's input and our outbound queue.
#[derive(Debug, Default)]
pub struct SessionIo {
    input: Bytes,
    pub out: OutQueue,
}

impl Read for SessionIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input.split_to(n));
        Ok(n)
    }
}

impl Write for SessionIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push(Bytes::copy_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Follows client frame boundaries in the raw input (headers only), so the session knows when
/// tungstenite holds neither a partial frame nor a fragmented message.
#[derive(Debug, Default)]
struct FrameBoundary {
    header: [u8; 14],
    have: u8,
    fragmented: bool,
    payload_left: u64,
}

impl FrameBoundary {
    fn feed(&mut self, mut input: &[u8]) {
        while let Some((&byte, rest)) = input.split_first() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(input.len() as u64);
                self.payload_left -= n;
                input = &input[n as usize..];
                continue;
            }
            self.header[usize::from(self.have)] = byte;
            self.have += 1;
            input = rest;
            if self.have >= 2 && usize::from(self.have) == self.header_len() {
                self.header_done();
            }
        }
    }

    fn header_len(&self) -> usize {
        let second = self.header[1];
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
    }

    fn header_done(&mut self) {
        let (first, second) = (self.header[0], self.header[1]);
        self.payload_left = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        };
        // Data frames (continuation, text, binary) open or close a fragmented message;
        // control frames may come in between and change nothing.
        if first & 0x0f < 8 {
            self.fragmented = first & 0x80 == 0;
        }
        self.have = 0;
    }

    fn is_clean(&self) -> bool {
        self.have == 0 && self.payload_left == 0 && !self.fragmented
    }
}

enum Phase {
    /// Nothing has arrived yet. A request that arrives whole (the usual case) is answered from
    /// the loop's read buffer, without a copy.
    Accepted(Rc<HandshakePolicy>),
    /// Part of the request has arrived; the rest is awaited (at most 16 KiB in all).
    Handshaking(Box<PartialRequest>),
    Open(OpenWs),
    /// Our last bytes (a close frame or an HTTP error) are queued: flush them, half-close, and
    /// wait briefly for the peer's EOF so the close is not lost to a TCP reset.
    Finishing {
        io: Box<SessionIo>,
        deadline_ms: u64,
    },
    /// Transient while a handshake step owns the state.
    Gone,
}

struct PartialRequest {
    policy: Rc<HandshakePolicy>,
    received: Vec<u8>,
}

/// An open WebSocket session.
struct OpenWs {
    io: SessionIo,
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
    /// The queue is at its cap; nothing was done.
    Full,
    /// The queue stayed full: the push was dropped (`--slow-consumer drop`).
    Dropped,
    /// The queue stayed full: the session is closing with 1013.
    Closed,
    /// Not an open WebSocket (handshaking or closing).
    NotOpen,
}

/// What the loop should do with the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Live,
    /// Flush the queue, then half-close and discard input until EOF or the linger deadline.
    Finishing,
    /// Drop the connection now.
    Dead,
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
}

impl CloseReason {
    pub fn code(self) -> CloseCode {
        match self {
            Self::Protocol => CloseCode::Protocol,
            Self::BinaryData => CloseCode::Unsupported,
            Self::BadUtf8 => CloseCode::Invalid,
            Self::TooBig => CloseCode::Size,
            Self::SubscribeTimeout | Self::HeartbeatTimeout => CloseCode::Policy,
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
        }
    }
}

/// Everything a session may touch besides itself.
pub struct Ctx<'a> {
    pub broker: &'a mut Broker,
    pub settings: &'a SessionSettings,
    pub stats: &'a mut Stats,
    pub now_ms: u64,
}

pub struct Session {
    phase: Phase,
    id: SubscriberId,
    created_ms: u64,
    last_input_ms: u64,
    /// Set while the queue is non-empty: when the last write progress happened.
    stall_since_ms: Option<u64>,
    subscribed: bool,
    boundary: FrameBoundary,
}

impl Session {
    pub fn new(id: SubscriberId, now_ms: u64, policy: Rc<HandshakePolicy>) -> Self {
        Session {
            phase: Phase::Accepted(policy),
            id,
            created_ms: now_ms,
            last_input_ms: now_ms,
            stall_since_ms: None,
            subscribed: false,
            boundary: FrameBoundary::default(),
        }
    }

    pub fn id(&self) -> SubscriberId {
        self.id
    }

    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_) | Phase::Open(_) => Status::Live,
            Phase::Finishing { .. } => Status::Finishing,
            Phase::Gone => Status::Dead,
        }
    }

    /// The queue the loop writes to the socket.
    pub fn outbound(&mut self) -> Option<&mut OutQueue> {
        match &mut self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_) => None,
            Phase::Open(open) => Some(&mut open.io.out),
            Phase::Finishing { io, .. } => Some(&mut io.out),
            Phase::Gone => None,
        }
    }

    pub fn has_output(&mut self) -> bool {
        self.outbound().is_some_and(|q| !q.is_empty())
    }

    /// Bytes read from the socket. All of `input` is consumed.
    pub fn on_input(&mut self, input: Bytes, ctx: &mut Ctx<'_>) {
        self.last_input_ms = ctx.now_ms;
        match &mut self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_) => self.on_request_bytes(&input, ctx),
            Phase::Open(open) => {
                self.boundary.feed(&input);
                open.io.input = input;
                let mut ws = match open.reading.take() {
                    Some(ws) => *ws,
                    None => WebSocketContext::new(Role::Server, Some(ctx.settings.ws_config)),
                };
                self.read_messages(&mut ws, ctx);
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
        if let Some(io) = self.io_mut() {
            io.input = Bytes::new();
        }
    }

    fn io_mut(&mut self) -> Option<&mut SessionIo> {
        match &mut self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_) => None,
            Phase::Open(open) => Some(&mut open.io),
            Phase::Finishing { io, .. } => Some(&mut **io),
            Phase::Gone => None,
        }
    }

    /// The peer closed its side of the TCP connection: nothing more can arrive. Whatever is
    /// queued (say, the reply to its close frame) is still flushed.
    pub fn on_eof(&mut self, now_ms: u64) {
        match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Open(OpenWs { io, .. }) if !io.out.is_empty() => {
                self.phase = Phase::Finishing {
                    io: Box::new(io),
                    deadline_ms: now_ms + CLOSE_LINGER_MS,
                };
            }
            Phase::Finishing { io, deadline_ms } if !io.out.is_empty() => {
                self.phase = Phase::Finishing { io, deadline_ms };
            }
            _ => {}
        }
    }

    /// Upgrade request bytes: answer with 101 once the request is whole, or with an HTTP error.
    fn on_request_bytes(&mut self, input: &[u8], ctx: &mut Ctx<'_>) {
        let (policy, mut received) = match std::mem::replace(&mut self.phase, Phase::Gone) {
            Phase::Accepted(policy) => (policy, None),
            Phase::Handshaking(partial) => (partial.policy, Some(partial.received)),
            _ => return,
        };
        let request = match &mut received {
            Some(buffer) => {
                buffer.extend_from_slice(input);
                &buffer[..]
            }
            None => input,
        };
        let answer = match handshake::read_request(request) {
            Ok(None) if request.len() < handshake::MAX_HEAD_BYTES => {
                let received = received.unwrap_or_else(|| input.to_vec());
                self.phase = Phase::Handshaking(Box::new(PartialRequest { policy, received }));
                return;
            }
            Ok(None) => Err(Rejection {
                status: 431,
                message: "request header too large",
            }),
            // A valid client waits for our 101 before it sends anything else.
            Ok(Some((_, length))) if length < request.len() => Err(Rejection {
                status: 400,
                message: "data after the upgrade request",
            }),
            Ok(Some((request, _))) => policy
                .check(&request)
                .map(|()| handshake::accept_response(request.key)),
            Err(rejection) => Err(rejection),
        };
        match answer {
            Ok(response) => {
                debug!("session {:?}: handshake done", self.id);
                let mut io = SessionIo::default();
                io.out.push(Bytes::from(response));
                self.phase = Phase::Open(OpenWs { io, reading: None });
            }
            Err(Rejection { status, message }) => {
                ctx.stats.handshake_failures += 1;
                debug!(
                    "session {:?}: handshake refused ({status}): {message}",
                    self.id
                );
                let mut io = SessionIo::default();
                io.out.push(http_error(status, message));
                self.phase = Phase::Finishing {
                    io: Box::new(io),
                    deadline_ms: ctx.now_ms + CLOSE_LINGER_MS,
                };
            }
        }
    }

    fn read_messages(&mut self, ws: &mut WebSocketContext, ctx: &mut Ctx<'_>) {
        loop {
            let Phase::Open(open) = &mut self.phase else {
                return;
            };
            match ws.read(&mut open.io) {
                Ok(Message::Text(text)) => self.on_text(text, ctx),
                Ok(Message::Binary(data)) if ctx.settings.echo => {
                    self.send(protocol::frame(Opcode::Binary, &data), ctx);
                }
                Ok(Message::Binary(_)) => {
                    return self.close_with(Some(ws), CloseReason::BinaryData, ctx.now_ms);
                }
                // tungstenite queued the pong / close reply; flushed below.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.finish(ctx);
                }
                Err(err) => {
                    debug!("session {:?}: {err}", self.id);
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
        match ws.flush(&mut open.io) {
            Ok(()) => {
                if open.io.out.queued_bytes() > ctx.settings.outbound_cap + CONTROL_SLACK {
                    // A client that floods pings and never reads.
                    ctx.stats.slow_consumer_closes += 1;
                    self.close_with(Some(ws), CloseReason::SlowConsumer, ctx.now_ms);
                }
            }
            Err(_) => self.finish(ctx),
        }
    }

    fn on_text(&mut self, text: Utf8Bytes, ctx: &mut Ctx<'_>) {
        if ctx.settings.echo {
            return self.send(protocol::frame(Opcode::Text, text.as_bytes()), ctx);
        }
        let reply = match protocol::parse_client_message(&text) {
            Ok(ClientMessage::Subscribe(topics)) => self.subscribe(&topics, ctx),
            Ok(ClientMessage::Unsubscribe(topics)) => {
                for topic in &topics {
                    ctx.broker.unsubscribe(self.id, topic);
                }
                Ok(protocol::encode_ack(false, &topics))
            }
            Ok(ClientMessage::Ping) => Ok(protocol::pong_frame()),
            Ok(ClientMessage::Pong) => return,
            Err(e) => Err(e),
        };
        let frame = reply.unwrap_or_else(|e| {
            ctx.stats.bad_requests += 1;
            debug!("session {:?}: bad request: {e}", self.id);
            protocol::encode_error(&e.to_string())
        });
        self.send(frame, ctx);
    }

    /// All or nothing: a request with one bad topic subscribes to none of them.
    fn subscribe(
        &mut self,
        topics: &[std::borrow::Cow<'_, str>],
        ctx: &mut Ctx<'_>,
    ) -> Result<Bytes, RequestError> {
        for topic in topics {
            protocol::validate_topic(topic, ctx.settings.topic_rules)?;
        }
        let mut new: Vec<&str> = topics
            .iter()
            .map(|t| &**t)
            .filter(|t| !ctx.broker.is_subscribed(self.id, t))
            .collect();
        new.sort_unstable();
        new.dedup();
        if ctx.broker.topics_of(self.id) + new.len() > ctx.settings.max_topics {
            return Err(RequestError::TooManyTopics {
                max: ctx.settings.max_topics,
            });
        }
        for topic in new {
            ctx.broker.subscribe(self.id, topic);
        }
        self.subscribed = true;
        Ok(protocol::encode_ack(true, topics))
    }

    /// Queues a reply of our own (pong, ack, error, echo).
    fn send(&mut self, frame: Bytes, ctx: &mut Ctx<'_>) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        if !open.can_write() {
            return;
        }
        let out = &mut open.io.out;
        if !out.is_empty() && out.queued_bytes() + frame.len() > ctx.settings.outbound_cap {
            ctx.stats.slow_consumer_closes += 1;
            return self.close(CloseReason::SlowConsumer, ctx.now_ms);
        }
        out.push(frame);
    }

    /// Queues a shared push frame, unless the queue is full: then `Full` is returned and nothing
    /// happens, so the loop can flush the socket first and call [`Session::push_or_overflow`].
    pub fn push(&mut self, frame: &Bytes, settings: &SessionSettings, stats: &mut Stats) -> Push {
        let Phase::Open(open) = &mut self.phase else {
            return Push::NotOpen;
        };
        if !open.can_write() {
            return Push::NotOpen;
        }
        let out = &mut open.io.out;
        // An empty queue takes any frame, so one large publish never closes everyone.
        if !out.is_empty() && out.queued_bytes() + frame.len() > settings.outbound_cap {
            return Push::Full;
        }
        out.push(frame.clone());
        stats.deliveries += 1;
        Push::Queued
    }

    /// Like [`Session::push`], but a full queue triggers the slow-consumer policy.
    pub fn push_or_overflow(
        &mut self,
        frame: &Bytes,
        settings: &SessionSettings,
        stats: &mut Stats,
        now_ms: u64,
    ) -> Push {
        let outcome = self.push(frame, settings, stats);
        if outcome != Push::Full {
            return outcome;
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
                mut io,
                reading: kept,
            }) => {
                debug!("session {:?}: closing: {}", self.id, reason.text());
                if reason == CloseReason::SlowConsumer {
                    io.out.discard_unsent();
                }
                let mut kept = kept;
                match reading.or(kept.as_deref_mut()) {
                    // tungstenite's state matters (it may have sent or answered a close).
                    // Err: it already considers the connection closed, nothing to add.
                    Some(ws) => {
                        let frame = CloseFrame {
                            code: reason.code(),
                            reason: reason.text().into(),
                        };
                        let _ = ws.close(&mut io, Some(frame));
                    }
                    // Between messages the connection is open both ways: a plain close frame.
                    None => io
                        .out
                        .push(protocol::close_frame(reason.code().into(), reason.text())),
                }
                self.phase = Phase::Finishing {
                    io: Box::new(io),
                    deadline_ms: now_ms + CLOSE_LINGER_MS,
                };
            }
            // Not a WebSocket yet: just drop it.
            Phase::Accepted(_) | Phase::Handshaking(_) | Phase::Gone => {}
            finishing @ Phase::Finishing { .. } => self.phase = finishing,
        }
    }

    /// The close handshake completed (or tungstenite gave up): flush and finish.
    fn finish(&mut self, ctx: &mut Ctx<'_>) {
        if let Phase::Open(OpenWs { io, .. }) = std::mem::replace(&mut self.phase, Phase::Gone) {
            self.phase = Phase::Finishing {
                io: Box::new(io),
                deadline_ms: ctx.now_ms + CLOSE_LINGER_MS,
            };
        }
    }

    /// The loop wrote `written` bytes; the queue is now `empty` or not.
    pub fn on_written(&mut self, written: usize, now_ms: u64) {
        let empty = !self.has_output();
        self.stall_since_ms = match (empty, written > 0, self.stall_since_ms) {
            (true, _, _) => None,
            (false, true, _) | (false, false, None) => Some(now_ms),
            (false, false, since) => since,
        };
    }

    /// The earliest time this session needs `on_timer`.
    pub fn next_deadline(&self, settings: &SessionSettings) -> u64 {
        let mut deadline = match &self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_) => {
                self.created_ms + settings.handshake_timeout_ms
            }
            Phase::Open(_) => {
                let idle = self.last_input_ms + settings.idle_limit_ms;
                if self.subscribed || settings.echo {
                    idle
                } else {
                    idle.min(self.created_ms + settings.handshake_timeout_ms)
                }
            }
            Phase::Finishing { deadline_ms, .. } => *deadline_ms,
            Phase::Gone => 0,
        };
        if let Some(since) = self.stall_since_ms {
            deadline = deadline.min(since + settings.write_timeout_ms);
        }
        deadline
    }

    /// A deadline may have passed: time out whatever is due.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now_ms;
        let s = ctx.settings;
        if self
            .stall_since_ms
            .is_some_and(|since| now >= since + s.write_timeout_ms)
        {
            ctx.stats.write_timeouts += 1;
            debug!("session {:?}: write timeout", self.id);
            self.phase = Phase::Gone;
            return;
        }
        match &self.phase {
            Phase::Accepted(_) | Phase::Handshaking(_)
                if now >= self.created_ms + s.handshake_timeout_ms =>
            {
                ctx.stats.handshake_timeouts += 1;
                self.phase = Phase::Gone;
            }
            Phase::Open(_) if now >= self.last_input_ms + s.idle_limit_ms => {
                ctx.stats.heartbeat_timeouts += 1;
                self.close(CloseReason::HeartbeatTimeout, now);
            }
            Phase::Open(_)
                if !self.subscribed
                    && !s.echo
                    && now >= self.created_ms + s.handshake_timeout_ms =>
            {
                ctx.stats.handshake_timeouts += 1;
                self.close(CloseReason::SubscribeTimeout, now);
            }
            Phase::Finishing { deadline_ms, .. } if now >= *deadline_ms => self.phase = Phase::Gone,
            _ => {}
        }
    }
}

/// A complete HTTP error response that closes the connection.
pub fn http_error(status: u16, message: &str) -> Bytes {
    let reason = match status {
        404 => "Not Found",
        403 => "Forbidden",
        401 => "Unauthorized",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let body = serde_json::json!({ "error": message }).to_string();
    let extra = if status == 426 {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::FrameBoundary;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frame_boundaries_byte_by_byte() {
        // text(FIN), then a fragmented text with a ping in between, then a 300-byte binary.
        let frames = [
            (frame(0x81, b"hello"), true),
            (frame(0x01, b"part"), false),
            (frame(0x89, b"ping"), false),
            (frame(0x80, b"end"), true),
            (frame(0x82, &[7u8; 300]), true),
        ];
        let mut b = FrameBoundary::default();
        for (bytes, clean_after) in &frames {
            for (i, byte) in bytes.iter().enumerate() {
                b.feed(&[*byte]);
                if i + 1 < bytes.len() {
                    assert!(!b.is_clean(), "clean in the middle of a frame");
                }
            }
            assert_eq!(b.is_clean(), *clean_after);
        }
        let all: Vec<u8> = frames.iter().flat_map(|(f, _)| f.clone()).collect();
        let mut whole = FrameBoundary::default();
        whole.feed(&all);
        assert!(whole.is_clean());
    }
}
