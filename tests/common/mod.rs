//! Shared test helpers: a real server on 127.0.0.1:0 and real clients.
//!
//! Blocking reads carry a timeout only as a safety net so a broken server fails a test instead
//! of hanging it; no test sleeps to synchronise: ordering is awaited through the protocol (for
//! instance, "nothing else arrived" is proven by a ping whose pong comes next).

#![allow(dead_code)]

pub mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use wspush::{Config, Server, ShutdownHandle};

pub const SAFETY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub ws: SocketAddr,
    pub api: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<Result<(), wspush::ServerError>>>,
}

/// A config for tests: loopback, ephemeral ports, no tick unless asked for.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: Some("127.0.0.1:0".parse().unwrap()),
        tick: None,
        ..Config::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with(test_config())
    }

    pub fn with(config: Config) -> TestServer {
        let server = Server::bind(config).expect("bind");
        let ws = server.local_addr();
        let api = server.api_addr().expect("api on");
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            ws,
            api,
            handle,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    /// Requests shutdown and waits for the loop to return.
    pub fn stop(mut self) -> Result<(), wspush::ServerError> {
        self.handle.shutdown();
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    pub fn join(mut self) -> Result<(), wspush::ServerError> {
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
    }

    pub fn stats(&self) -> Value {
        stats_of(self.api)
    }

    pub fn publish(&self, topic: &str, data: &str) -> Value {
        publish_to(self.api, topic, data)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

pub type Client = WebSocket<TcpStream>;

pub fn connect(server: &TestServer) -> Client {
    let stream = TcpStream::connect(server.ws).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let (ws, _) = tungstenite::client(server.url(), stream).expect("handshake");
    ws
}

/// Connects and subscribes; waits for the acknowledgement.
pub fn subscriber(server: &TestServer, topics: &[&str]) -> Client {
    let mut ws = connect(server);
    send_json(&mut ws, serde_json::json!({ "topics": topics }));
    let ack = next_json(&mut ws);
    assert_eq!(ack["cmd"], "subscribed", "{ack}");
    ws
}

pub fn send_json(ws: &mut Client, value: Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

/// The next text message as JSON (control frames are skipped).
pub fn next_json(ws: &mut Client) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Proves that nothing is queued for this client: a ping's pong is the next message.
pub fn assert_nothing_pending(ws: &mut Client) {
    send_json(ws, serde_json::json!({"cmd": "ping"}));
    let next = next_json(ws);
    assert_eq!(
        next,
        serde_json::json!({"cmd": "pong"}),
        "expected nothing before the pong"
    );
}

/// Reads until the server's close frame and returns its code.
pub fn expect_close(ws: &mut Client) -> CloseCode {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// The Content-Type the API requires of a publish to `path`: JSON for `?topic=`, NDJSON for a
/// batch.
pub fn publish_content_type(path: &str) -> &'static str {
    if path.contains("topic=") {
        "application/json"
    } else {
        "application/x-ndjson"
    }
}

/// `GET /stats` of the API at `api`.
pub fn stats_of(api: SocketAddr) -> Value {
    let (status, body) = http(api, "GET", "/stats", "", &[]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats are JSON")
}

/// `POST /publish?topic=` to the API at `api` (the Content-Type comes from [`http`]); returns
/// the reply (`subscribers`, and with history on `offset` and `epoch`).
pub fn publish_to(api: SocketAddr, topic: &str, data: &str) -> Value {
    let (status, body) = http(api, "POST", &format!("/publish?topic={topic}"), data, &[]);
    assert_eq!(status, 200, "publish: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("publish reply {body:?}: {e}"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns status and body.
/// A POST without a Content-Type gets the one [`publish_content_type`] names.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if method == "POST" && !typed {
        req.push_str(&format!("Content-Type: {}\r\n", publish_content_type(path)));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reads a raw socket until EOF (or reset); returns what arrived.
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    read_to_close(stream, true)
}

/// Like [`read_until_closed`], but a reset fails: the server must close with a FIN.
pub fn read_until_closed_cleanly(stream: &mut TcpStream) -> Vec<u8> {
    read_to_close(stream, false)
}

fn read_to_close(stream: &mut TcpStream, reset_is_a_close: bool) -> Vec<u8> {
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if reset_is_a_close && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return out;
            }
            Err(e) => panic!(
                "socket not closed by the server: {e} (after {} bytes)",
                out.len()
            ),
        }
    }
}

/// A valid client handshake request for `/ws`.
pub const HANDSHAKE_REQUEST: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw, completed WebSocket handshake on a plain TcpStream (for hand-made frames).
pub fn raw_upgrade(server: &TestServer) -> TcpStream {
    upgrade_stream(TcpStream::connect(server.ws).unwrap())
}

/// Completes a WebSocket handshake on a connected stream, reading nothing past the 101.
pub fn upgrade_stream(mut stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    stream.write_all(HANDSHAKE_REQUEST).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Reads one server frame from a raw stream: (opcode, payload).
pub fn read_raw_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    (h[0] & 0x0f, payload)
}

/// The close code of a raw close frame payload.
pub fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

/// A masked client frame.
pub fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![first_byte];
    match payload.len() {
        0..=125 => f.push(0x80 | payload.len() as u8),
        126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Starts the server with its log piped; returns it, the rest of its log, and the line that
/// says where it listens.
pub fn start_until_listening(
    command: &mut std::process::Command,
) -> (
    KillOnDrop,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    String,
) {
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let child = KillOnDrop(child);
    let ready = loop {
        let line = lines.next().expect("server exited").unwrap();
        if line.contains("listening on") {
            break line;
        }
    };
    (child, lines, ready)
}

/// Ends the server if a test fails half-way, so no orphan outlives the test run.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The addresses in the server's "listening on ws://WS/ws (api: API)" line.
pub fn listening_addrs(ready: &str) -> (SocketAddr, Option<SocketAddr>) {
    let ws = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ws://")?.split('/').next()?.parse().ok())
        .expect(ready);
    let api = ready
        .split_whitespace()
        .find_map(|w| w.strip_suffix(')')?.parse().ok());
    (ws, api)
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect(field)
}
