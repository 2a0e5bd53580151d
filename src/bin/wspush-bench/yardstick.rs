//! `wspush-bench yardstick`: the minimal server wspush's CPU per delivery is compared with
//! (BENCHMARKS.md). One thread, one mio loop, wspush's protocol for what the generator uses, and
//! nothing else: no timers, limits, heartbeats, statistics or outbound queues.
//!
//! A publish is framed once with wspush's encoder, byte-identical to wspush's pushes: by default
//! with a position (`"offset":N,"epoch":"…"`, a counter per topic and a fixed 8-character
//! epoch) as wspush sends with history on, its default; with `--no-positions` without, as
//! wspush with `--history-size 0`. Its index is
//! appended to each subscriber's batch of this poll iteration (subscribers in subscription
//! order). At the end of the iteration each connection with a batch gets one syscall: `send` of
//! the frame if the batch is one frame, else `sendmsg` with an iovec per frame (no copy), both
//! MSG_NOSIGNAL. A send that does not take the whole batch drops the connection (said on
//! stderr): nothing is kept across iterations. Acks and pongs go in the batch, in order.
//!
//! Left out on purpose: topic validation, percent-decoding, unsubscribe, error replies (bad
//! client messages are ignored), WebSocket Ping, Close (drops the connection), fragments, client
//! frames over 64 KiB, `Connection: close`, chunked bodies, HTTP methods (any request to a publish
//! path publishes), `GET /stats`; topics stay forever.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, value::RawValue};
use slab::Slab;
use wspush::wire::frame::Shared;
use wspush::wire::handshake::{accept_response, read_request};
use wspush::wire::message::{
    ClientMessage, ReplyPosition, encode_ack, encode_batch_reply, encode_push, encode_push_at,
    parse_client_message, pong_frame,
};

/// The epoch of every topic: as long as wspush's (`hub::Epoch`), so the frames are as long.
const EPOCH: &str = "yardstck";

const WS: Token = Token(usize::MAX - 1);
const API: Token = Token(usize::MAX - 2);
/// Linux's IOV_MAX: at this many frames the iteration's batches go out early, so that no batch
/// needs more iovecs than one `sendmsg` takes.
const MAX_FRAMES: usize = 1024;

#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Upgrading,
    Ws,
    Api,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    /// An incomplete request or frame; empty (no allocation) between messages.
    input: Vec<u8>,
    /// Topic ids, to leave them on close.
    topics: Vec<u32>,
    /// This iteration's frames for this connection: indices into `Server::frames`.
    batch: Vec<u32>,
}

#[derive(Default)]
struct Server {
    conns: Slab<Conn>,
    topic_ids: HashMap<Box<str>, u32>,
    /// By topic id: the subscribers' connection keys, in subscription order.
    subscribers: Vec<Vec<u32>>,
    /// This iteration's frames, each stored once.
    frames: Vec<Shared>,
    /// Connections with a non-empty batch.
    dirty: Vec<u32>,
    iov: Vec<libc::iovec>,
    /// Pushes carry positions (wspush with history on).
    positions: bool,
    /// By topic id: the last offset given.
    offsets: Vec<u64>,
}

#[derive(serde::Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

pub fn run(ws: SocketAddr, api: SocketAddr, positions: bool) -> io::Result<()> {
    let (mut ws_listener, mut api_listener) = (TcpListener::bind(ws)?, TcpListener::bind(api)?);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut ws_listener, WS, Interest::READABLE)?;
    poll.registry()
        .register(&mut api_listener, API, Interest::READABLE)?;
    let (ws, api) = (ws_listener.local_addr()?, api_listener.local_addr()?);
    eprintln!("yardstick listening on ws://{ws} (api: {api})");
    let (mut s, mut events, mut scratch) = (
        Server {
            positions,
            ..Server::default()
        },
        Events::with_capacity(1024),
        vec![0; 65536],
    );
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            result => result?,
        }
        for ev in events.iter() {
            match ev.token() {
                WS => s.accept(&poll, &ws_listener, Kind::Upgrading),
                API => s.accept(&poll, &api_listener, Kind::Api),
                Token(key) => s.on_readable(key, &mut scratch),
            }
        }
        s.flush();
    }
}

impl Server {
    fn accept(&mut self, poll: &Poll, listener: &TcpListener, kind: Kind) {
        // Until WouldBlock (or out of descriptors: the next connection is a new event).
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let token = Token(entry.key());
            if poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
                .is_ok()
            {
                let (input, topics, batch) = (Vec::new(), Vec::new(), Vec::new());
                entry.insert(Conn {
                    stream,
                    kind,
                    input,
                    topics,
                    batch,
                });
            }
        }
    }

    fn on_readable(&mut self, key: usize, scratch: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (mut input, mut eof) = (std::mem::take(&mut conn.input), false);
        loop {
            match conn.stream.read(scratch) {
                Ok(0) => eof = true,
                Ok(n) => {
                    input.extend_from_slice(&scratch[..n]);
                    // A short read emptied the socket; the next arrival is a new edge.
                    if n == scratch.len() {
                        continue;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => eof = e.kind() != ErrorKind::WouldBlock,
            }
            break;
        }
        let used = match conn.kind {
            Kind::Api => self.api_input(key, &input),
            Kind::Upgrading | Kind::Ws => self.ws_input(key, &mut input),
        };
        match (used, self.conns.get_mut(key)) {
            (Some(used), Some(conn)) if !eof => {
                input.drain(..used);
                if !input.is_empty() {
                    conn.input = input;
                }
            }
            _ => self.close(key),
        }
    }

    /// Handles the upgrade request and the complete frames at the start of `input`; returns
    /// the bytes used, or None to drop the connection.
    fn ws_input(&mut self, key: usize, input: &mut [u8]) -> Option<usize> {
        let (conn, mut at) = (self.conns.get_mut(key)?, 0);
        if conn.kind == Kind::Upgrading {
            let (request, length) = match read_request(input) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Some(0),
                Err(_) => return None,
            };
            let response = accept_response(request.key);
            if request.path != "/ws" || conn.stream.write(&response).ok()? != response.len() {
                return None;
            }
            (conn.kind, at) = (Kind::Ws, length);
        }
        while let [b0, b1, rest @ ..] = &input[at..] {
            // Clients must mask; 127 (a 64-bit length) is over 64 KiB.
            let (op, head, len) = match (*b1 & 0x80 != 0, *b1 & 0x7f, rest) {
                (false, ..) | (_, 127, _) => return None,
                (_, 126, [hi, lo, ..]) => (*b0 & 0x0f, 4, u16::from_be_bytes([*hi, *lo]) as usize),
                (_, 126, _) => break,
                (_, n, _) => (*b0 & 0x0f, 2, n as usize),
            };
            let Some(frame) = input.get_mut(at + head..at + head + 4 + len) else {
                break;
            };
            let (mask, payload) = frame.split_at_mut(4);
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= mask[i % 4]);
            match op {
                1 => self.on_text(key, std::str::from_utf8(payload).ok()?),
                8 => return None,
                _ => {}
            }
            at += head + 4 + len;
        }
        Some(at)
    }

    fn on_text(&mut self, key: usize, text: &str) {
        let reply = match parse_client_message(text) {
            Ok(ClientMessage::Subscribe { topics, .. }) => {
                for topic in &topics {
                    self.subscribe(key, topic);
                }
                encode_ack(true, &topics)
            }
            Ok(ClientMessage::Ping) => pong_frame(),
            _ => return,
        };
        let frame = self.add_frame(Shared::from(&reply[..]));
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.batch.is_empty() {
                self.dirty.push(key as u32);
            }
            conn.batch.push(frame);
        }
    }

    fn subscribe(&mut self, key: usize, topic: &str) {
        let next = self.subscribers.len() as u32;
        let id = *self.topic_ids.entry(topic.into()).or_insert(next);
        if id == next {
            self.subscribers.push(Vec::new());
            self.offsets.push(0);
        }
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.topics.contains(&id)
        {
            conn.topics.push(id);
            self.subscribers[id as usize].push(key as u32);
        }
    }

    /// Stores a frame for this iteration; returns its index.
    fn add_frame(&mut self, frame: Shared) -> u32 {
        if self.frames.len() >= MAX_FRAMES {
            self.flush();
        }
        self.frames.push(frame);
        (self.frames.len() - 1) as u32
    }

    /// Frames a push of `data` to `topic` and appends it to the batch of every subscriber;
    /// returns how many, and the position given (with positions on).
    fn publish(&mut self, topic: &str, data: &str) -> (usize, Option<u64>) {
        let Some(&id) = self.topic_ids.get(topic) else {
            return (0, None);
        };
        if self.subscribers[id as usize].is_empty() {
            return (0, None);
        }
        let (frame, offset) = if self.positions {
            let offset = &mut self.offsets[id as usize];
            *offset += 1;
            (encode_push_at(topic, data, *offset, EPOCH), Some(*offset))
        } else {
            (encode_push(topic, data), None)
        };
        let frame = self.add_frame(frame);
        let subscribers = &self.subscribers[id as usize];
        for &key in subscribers {
            let conn = &mut self.conns[key as usize];
            if conn.batch.is_empty() {
                self.dirty.push(key);
            }
            conn.batch.push(frame);
        }
        (subscribers.len(), offset)
    }

    /// Answers the complete requests at the start of `input` in one write; returns the bytes
    /// used, or None to drop the connection.
    fn api_input(&mut self, key: usize, input: &[u8]) -> Option<usize> {
        let (mut at, mut out) = (0, Vec::new());
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            let httparse::Status::Complete(head) = request.parse(&input[at..]).ok()? else {
                break;
            };
            let length = match request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            {
                Some(h) => std::str::from_utf8(h.value).ok()?.trim().parse().ok()?,
                None => 0,
            };
            let Some(body) = input.get(at + head..at + head + length) else {
                break;
            };
            // The method is not checked: any request to a publish path publishes.
            let (status, reply) = self.publish_request(request.path.unwrap_or(""), body);
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{reply}",
                reply.len()
            );
            at += head + length;
        }
        let conn = self.conns.get_mut(key)?;
        (out.is_empty() || conn.stream.write(&out).ok()? == out.len()).then_some(at)
    }

    fn publish_request(&mut self, path: &str, body: &[u8]) -> (&'static str, String) {
        if let Some(topic) = path.strip_prefix("/publish?topic=") {
            let Ok(data) = serde_json::from_slice::<&RawValue>(body) else {
                return (
                    "400 Bad Request",
                    json!({ "error": "the body must be one JSON value" }).to_string(),
                );
            };
            let mut reply = json!({ "topic": topic });
            let (reached, offset) = self.publish(topic, data.get());
            reply["subscribers"] = json!(reached);
            if let Some(offset) = offset {
                reply["offset"] = json!(offset);
                reply["epoch"] = json!(EPOCH);
            }
            return ("200 OK", reply.to_string());
        }
        let text = std::str::from_utf8(body).unwrap_or("\0");
        let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let lines: Result<Vec<Line<'_>>, _> = lines.map(serde_json::from_str).collect();
        match lines {
            _ if path != "/publish" => (
                "404 Not Found",
                json!({ "error": "no such endpoint" }).to_string(),
            ),
            Err(_) => (
                "400 Bad Request",
                json!({ "error": "one {\"topic\":..,\"data\":..} per line" }).to_string(),
            ),
            Ok(lines) => {
                let (mut deliveries, mut positions) = (0, Vec::new());
                for line in &lines {
                    let (reached, offset) = self.publish(&line.topic, line.data.get());
                    deliveries += reached;
                    if let Some(offset) = offset {
                        positions.push(ReplyPosition {
                            topic: &line.topic,
                            offset,
                            epoch: EPOCH,
                        });
                    }
                }
                let reply = encode_batch_reply(lines.len(), deliveries, positions.into_iter());
                ("200 OK", reply)
            }
        }
    }

    /// One syscall per connection with a batch; a short or failed send drops the connection.
    fn flush(&mut self) {
        let (mut dirty, mut short) = (std::mem::take(&mut self.dirty), Vec::new());
        for &key in &dirty {
            let Some(conn) = self.conns.get_mut(key as usize) else {
                continue;
            };
            let fd = conn.stream.as_raw_fd();
            let (sent, total) = match conn.batch[..] {
                [] => continue, // listed twice: its key was reused this iteration
                [one] => {
                    let frame = &self.frames[one as usize];
                    // SAFETY: `frame` is valid for `frame.len()` bytes during the call.
                    let sent = unsafe {
                        libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_NOSIGNAL)
                    };
                    (sent, frame.len())
                }
                _ => {
                    self.iov.clear();
                    self.iov.extend(conn.batch.iter().map(|&i| libc::iovec {
                        iov_base: self.frames[i as usize].as_ptr() as *mut libc::c_void,
                        iov_len: self.frames[i as usize].len(),
                    }));
                    // SAFETY: an all-zero msghdr is valid (no name, no control data).
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    (msg.msg_iov, msg.msg_iovlen) = (self.iov.as_mut_ptr(), self.iov.len() as _);
                    // SAFETY: each iovec points into a frame in `self.frames`, alive and unchanged.
                    let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
                    (sent, self.iov.iter().map(|v| v.iov_len).sum())
                }
            };
            conn.batch.clear();
            if usize::try_from(sent).ok() != Some(total) {
                short.push((key, sent, total));
            }
        }
        for (key, sent, total) in short {
            eprintln!("yardstick: dropping connection {key}: sent {sent} of {total} bytes");
            self.close(key as usize);
        }
        self.frames.clear();
        dirty.clear();
        self.dirty = dirty;
    }

    fn close(&mut self, key: usize) {
        // Dropping the stream closes the socket, which also leaves the poll set.
        if let Some(conn) = self.conns.try_remove(key) {
            for id in conn.topics {
                self.subscribers[id as usize].retain(|&k| k as usize != key);
            }
        }
    }
}
