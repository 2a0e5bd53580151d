//! `wspush-bench`: the load generator. One thread, one mio poll loop, raw WebSocket framing, so
//! the generator is not the bottleneck: pin it to the other core with `taskset -c 1`.
//!
//! Scenarios (see BENCHMARKS.md): `connect`, `fanout`, `flood`, `notify`, `slow`, `churn`,
//! `storm`, `keepalive`.
//! Each prints a summary, and with `--json` one JSON line. `yardstick` is not a scenario but
//! the minimal server the scenarios also run against (`yardstick.rs`).

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};
use wspush::config::{parse_duration, parse_size};
use wspush::wire::frame::{self, Opcode};

mod yardstick;

const HANDSHAKE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const API: Token = Token(usize::MAX - 1);

struct Opts {
    scenario: String,
    ws: SocketAddr,
    api: SocketAddr,
    pid: Option<u32>,
    n: usize,
    concurrency: usize,
    messages: usize,
    rate: f64,
    duration: Duration,
    payload: usize,
    stuck: usize,
    cycles: usize,
    warmup: usize,
    json: bool,
    /// The yardstick's pushes carry no positions (as wspush's with `--history-size 0`).
    no_positions: bool,
}

fn usage() -> &'static str {
    "usage: wspush-bench SCENARIO [--ws ADDR] [--api ADDR] [--server-pid PID] [-n N] [--concurrency C]
       [--messages M] [--rate R] [--duration 10s] [--payload 100] [--stuck K] [--cycles 5] [--warmup 20] [--json]
scenarios: connect | fanout | flood | notify | slow | churn | storm | keepalive
       wspush-bench yardstick [--ws ADDR] [--api ADDR] [--no-positions]
                 (the minimal reference server; port 0 allowed; its pushes carry positions as
                 wspush's do with history on, unless --no-positions: as with --history-size 0)
defaults: --ws 127.0.0.1:8091 --api 127.0.0.1:8092 -n 1000 --concurrency 256 --messages 100
          --rate 10 --duration 10s --payload 100 --stuck 10 --cycles 5 --warmup 20
--warmup: messages published at --rate before fanout and slow measure (reported separately):
          Linux ACKs the first 16 segments of a new connection at once (quick-ACK mode), which
          makes the first pushes to fresh connections cost the server more than later ones
notify:   client i subscribes to user-<i>; --messages publishes round-robin over the topics, in
          batch requests of 100 lines, at --rate messages per second (--rate/100 requests/s)
storm:    -n clients come back at once --messages behind on topic `storm` and resume from
          history, while --stuck K other subscribers get a fan-out at --rate (their p99)
keepalive: -n subscribers silent for --duration, answering the server's Pings; the server's
          wake-ups (voluntary context switches) and CPU per second"
}

fn parse_opts() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().ok_or(usage())?;
    let mut o = Opts {
        scenario,
        ws: "127.0.0.1:8091".parse().map_err(|_| "addr")?,
        api: "127.0.0.1:8092".parse().map_err(|_| "addr")?,
        pid: None,
        n: 1000,
        concurrency: 256,
        messages: 100,
        rate: 10.0,
        duration: Duration::from_secs(10),
        payload: 100,
        stuck: 10,
        cycles: 5,
        warmup: 20,
        json: false,
        no_positions: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|_| format!("bad number {v}"));
        match flag.as_str() {
            "--ws" => o.ws = value()?.parse().map_err(|_| "bad --ws")?,
            "--api" => o.api = value()?.parse().map_err(|_| "bad --api")?,
            "--server-pid" => o.pid = Some(value()?.parse().map_err(|_| "bad pid")?),
            "-n" => o.n = num(value()?)?,
            "--concurrency" => o.concurrency = num(value()?)?.max(1),
            "--messages" => o.messages = num(value()?)?,
            "--rate" => o.rate = value()?.parse().map_err(|_| "bad rate")?,
            "--duration" => o.duration = parse_duration(&value()?).ok_or("bad duration")?,
            "--payload" => o.payload = parse_size(&value()?).ok_or("bad size")?,
            "--stuck" => o.stuck = num(value()?)?,
            "--warmup" => o.warmup = num(value()?)?,
            "--cycles" => o.cycles = num(value()?)?,
            "--json" => o.json = true,
            "--no-positions" => o.no_positions = true,
            _ => return Err(format!("unknown flag {flag}\n{}", usage())),
        }
    }
    Ok(o)
}

// ---- /proc readings -------------------------------------------------------------------------

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// User and system CPU seconds of a process (all its threads), from `/proc/PID/stat`.
fn cpu_times(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? as f64 / hz, ticks(12)? as f64 / hz))
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// The server's CPU over a measured window, taken the same way in `fanout`, `flood` and
/// `notify` and for any server (wspush or the yardstick): `start` just before the first
/// measured publish, `finish` just after the last expected push arrived (or the wait for it
/// timed out), divided by the pushes received in between. `/proc/PID/stat` counts in clock
/// ticks (10 ms), so windows should hold seconds of server CPU. This kernel has no IRQ time
/// accounting, so softirq work done on the server's core (on loopback: the receiving side of
/// TCP for the server's sends) is charged to the server.
struct ServerCpu {
    pid: Option<u32>,
    start: Option<(f64, f64)>,
}

struct CpuFigures {
    ns_per_delivery: Option<f64>,
    /// User time / (user + system).
    user_share: Option<f64>,
    secs: Option<f64>,
}

impl ServerCpu {
    fn start(pid: Option<u32>) -> ServerCpu {
        ServerCpu {
            pid,
            start: pid.and_then(cpu_times),
        }
    }

    fn finish(&self, deliveries: u64) -> CpuFigures {
        let end = self.pid.and_then(cpu_times);
        let spent = end.zip(self.start).map(|(z, a)| (z.0 - a.0, z.1 - a.1));
        CpuFigures {
            ns_per_delivery: spent.map(|(u, s)| (u + s) * 1e9 / deliveries.max(1) as f64),
            user_share: spent.and_then(|(u, s)| (u + s > 0.0).then(|| u / (u + s))),
            secs: spent.map(|(u, s)| u + s),
        }
    }
}

impl CpuFigures {
    fn text(&self) -> String {
        match (self.ns_per_delivery, self.user_share) {
            (Some(ns), Some(user)) => format!(
                "{ns:.0} ns/delivery ({:.0} deliveries per CPU-second, {:.0} % of it user space)",
                1e9 / ns,
                user * 100.0
            ),
            (Some(ns), None) => format!("{ns:.0} ns/delivery"),
            _ => "?".into(),
        }
    }
}

fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

// ---- raw WebSocket client connections -----------------------------------------------------------

#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Connecting,
    Upgrading,
    Subscribing,
    Ready,
    /// The server ended the connection.
    Closed,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    buf: Vec<u8>,
    /// Stuck clients never read after subscribing.
    stuck: bool,
    frames: u64,
}

/// A client text frame, masked with a key derived from `seed` (the project's one frame codec).
fn masked_text(payload: &[u8], seed: u32) -> Vec<u8> {
    frame::masked(
        Opcode::Text,
        payload,
        seed.wrapping_mul(2_654_435_761).to_be_bytes(),
    )
}

struct Bench {
    poll: Poll,
    conns: Vec<Conn>,
    ready: usize,
    failed: usize,
    /// Connections the server ended (EOF or a Close frame) after they were ready.
    closed: usize,
    /// Protocol Pings received.
    pings: u64,
    /// Answer Pings with a Pong (keepalive). The other scenarios leave them unanswered, as they
    /// always did, so that their figures stay comparable with the yardstick's, which never pings.
    answer_pings: bool,
    started: Instant,
    /// Latencies (ns) of pushes carrying a `"t":` timestamp, and per-message last arrival.
    latencies: Vec<u64>,
    last_arrival: std::collections::HashMap<u64, (u64, u64)>,
    parse_timestamps: bool,
    /// Connection i subscribes to `user-<i>` (notify) instead of `bench`.
    own_topics: bool,
    /// Connections from this index on send this subscribe instead (storm's resumers).
    resume: Option<(usize, String)>,
    read_buf: Vec<u8>,
    events: Events,
}

impl Bench {
    fn new() -> io::Result<Bench> {
        Ok(Bench {
            poll: Poll::new()?,
            conns: Vec::new(),
            ready: 0,
            failed: 0,
            closed: 0,
            pings: 0,
            answer_pings: false,
            started: Instant::now(),
            latencies: Vec::new(),
            last_arrival: Default::default(),
            parse_timestamps: false,
            own_topics: false,
            resume: None,
            read_buf: vec![0; 256 * 1024],
            events: Events::with_capacity(4096),
        })
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn open(&mut self, ws: SocketAddr, stuck: bool) -> io::Result<()> {
        // Past ~28,000 connections one destination address runs out of ephemeral ports: spread
        // over 127.0.0.x (the server must then listen on 0.0.0.0).
        let mut addr = ws;
        if let SocketAddr::V4(v4) = &mut addr
            && v4.ip().is_loopback()
        {
            let spread = (self.conns.len() / 25_000) as u8;
            v4.set_ip(std::net::Ipv4Addr::new(
                127,
                0,
                0,
                v4.ip().octets()[3].wrapping_add(spread),
            ));
        }
        let mut stream = TcpStream::connect(addr)?;
        let token = Token(self.conns.len());
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.push(Conn {
            stream,
            phase: Phase::Connecting,
            buf: Vec::new(),
            stuck,
            frames: 0,
        });
        Ok(())
    }

    /// Runs the loop until `done` or the timeout; returns false on timeout.
    fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut Bench) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        // Reused: connect_all calls this once per finished connection.
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let finished = loop {
            if done(self) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            if self.poll.poll(&mut events, Some(wait)).is_err() {
                continue;
            }
            for ev in events.iter() {
                if ev.token() != API {
                    self.on_event(ev.token().0);
                }
            }
        };
        self.events = events;
        finished
    }

    fn on_event(&mut self, i: usize) {
        let now_ns = self.now_ns();
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Connecting {
            // Writing is the connection check: a socket still connecting says EAGAIN (wait for
            // the next event), a refused one its error. No `getpeername` per connection.
            match c.stream.write(HANDSHAKE) {
                Ok(n) if n == HANDSHAKE.len() => c.phase = Phase::Upgrading,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                _ => {
                    self.failed += 1;
                    c.phase = Phase::Ready;
                }
            }
            // Nothing can be there to read before the server has seen the request.
            return;
        }
        if c.phase == Phase::Closed || (c.stuck && c.phase == Phase::Ready) {
            return;
        }
        loop {
            match c.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    if c.phase == Phase::Ready {
                        self.closed += 1;
                    }
                    c.phase = Phase::Closed;
                    return;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&self.read_buf[..n]);
                    // A short read emptied the socket: the next arrival raises a new event on
                    // Linux, so the read that would only say EAGAIN is skipped (half the syscalls).
                    if n < self.read_buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        if c.phase == Phase::Upgrading {
            let Some(end) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            c.buf.drain(..end + 4);
            let resume = self.resume.as_ref().filter(|(first, _)| i >= *first);
            let sub = if let Some((_, message)) = resume {
                masked_text(message.as_bytes(), i as u32)
            } else if self.own_topics {
                masked_text(format!(r#"{{"topics":["user-{i}"]}}"#).as_bytes(), i as u32)
            } else {
                masked_text(br#"{"topics":["bench"]}"#, i as u32)
            };
            if c.stream.write_all(&sub).is_err() {
                self.failed += 1;
                return;
            }
            c.phase = Phase::Subscribing;
        }
        let parse = self.parse_timestamps;
        let (mut count, mut acked, mut pings, mut close) = (0u64, false, 0u64, false);
        let latencies = &mut self.latencies;
        let last = &mut self.last_arrival;
        let used = frame::split_frames(&c.buf, |op, payload| {
            match op {
                0x9 => pings += 1,
                0x8 => close = true,
                _ => {}
            }
            if op != 1 {
                return;
            }
            if payload.starts_with(br#"{"cmd":"subscribed""#) {
                acked = true;
                return;
            }
            count += 1;
            if parse && let Some(t) = timestamp(payload) {
                latencies.push(now_ns.saturating_sub(t));
                let e = last.entry(t).or_insert((u64::MAX, 0));
                *e = (e.0.min(now_ns), e.1.max(now_ns));
            }
        });
        c.buf.drain(..used);
        c.frames += count;
        self.pings += pings;
        // Browsers and libraries answer a Ping by themselves (only the latest needs an answer).
        if pings > 0 && self.answer_pings {
            let pong = frame::masked(Opcode::Pong, b"", (i as u32).to_be_bytes());
            if c.stream.write_all(&pong).is_err() {
                self.failed += 1;
            }
        }
        if close {
            if c.phase == Phase::Ready {
                self.closed += 1;
            }
            c.phase = Phase::Closed;
        }
        if acked && c.phase == Phase::Subscribing {
            c.phase = Phase::Ready;
            self.ready += 1;
        }
    }

    /// Room for `receipts` latencies, its pages touched now, so the vector does not grow (copy
    /// megabytes, fault in fresh pages) in the middle of a measured fan-out.
    fn expect_receipts(&mut self, receipts: u64) {
        let receipts = usize::try_from(receipts).unwrap_or(usize::MAX);
        self.latencies.clear();
        self.latencies.resize(receipts, 0);
        self.latencies.clear();
    }

    fn total_frames(&self) -> u64 {
        self.conns.iter().map(|c| c.frames).sum()
    }

    /// Opens `n` subscribers, at most `concurrency` handshaking at once; returns the seconds it took.
    fn connect_all(
        &mut self,
        ws: SocketAddr,
        n: usize,
        concurrency: usize,
        stuck: usize,
    ) -> Result<f64, String> {
        let t0 = Instant::now();
        let mut opened = 0;
        while self.ready + self.failed < n {
            while opened < n && opened - (self.ready + self.failed) < concurrency {
                if let Err(e) = self.open(ws, opened < stuck) {
                    return Err(if e.raw_os_error() == Some(24) {
                        format!("hit the open-file limit after {opened} connections (ulimit -n)")
                    } else {
                        format!("connect failed after {opened}: {e}")
                    });
                }
                opened += 1;
            }
            let target = (self.ready + self.failed + 1).min(n);
            if !self.run_until(Duration::from_secs(30), |b| b.ready + b.failed >= target) {
                return Err(format!("stalled at {} ready of {n}", self.ready));
            }
        }
        if self.failed > 0 {
            return Err(format!("{} connections failed", self.failed));
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

/// The `"t":<ns>` timestamp the generator put in a push's data.
fn timestamp(payload: &[u8]) -> Option<u64> {
    let at = payload.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

// ---- the API publisher -----------------------------------------------------------------------

/// A keep-alive, pipelining API connection (blocking writes, non-blocking response counting).
struct Publisher {
    stream: std::net::TcpStream,
    pending: usize,
    buf: Vec<u8>,
}

impl Publisher {
    fn new(api: SocketAddr) -> io::Result<Publisher> {
        let stream = std::net::TcpStream::connect(api)?;
        stream.set_nodelay(true)?;
        Ok(Publisher {
            stream,
            pending: 0,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, path: &str, body: &[u8]) -> io::Result<()> {
        let content_type = publish_content_type(path);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        self.pending += 1;
        Ok(())
    }

    /// Reads responses; returns how many are still outstanding.
    fn collect(&mut self, block: bool) -> io::Result<usize> {
        self.stream.set_nonblocking(!block)?;
        let mut chunk = [0u8; 16 * 1024];
        while self.pending > 0 {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            // Each response is a head with Content-Length and a small body.
            while let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(io::Error::other(format!(
                        "API said: {}",
                        head.lines().next().unwrap_or("")
                    )));
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() < end + 4 + len {
                    break;
                }
                self.buf.drain(..end + 4 + len);
                self.pending -= 1;
            }
        }
        self.stream.set_nonblocking(false)?;
        Ok(self.pending)
    }
}

/// Publishes `count` timestamped messages at `--rate` per second while receiving pushes;
/// `after_each` runs after every publish.
fn publish_paced(
    o: &Opts,
    b: &mut Bench,
    publisher: &mut Publisher,
    count: usize,
    mut after_each: impl FnMut(&mut Bench),
) -> Result<(), String> {
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    let pad = "x".repeat(o.payload.saturating_sub(30));
    let start = Instant::now();
    for m in 0..count {
        let due = start + interval * m as u32;
        b.run_until(due.saturating_duration_since(Instant::now()), |_| false);
        let body = format!("{{\"t\":{},\"p\":\"{pad}\"}}", b.now_ns());
        publisher
            .send("/publish?topic=bench", body.as_bytes())
            .map_err(|e| e.to_string())?;
        publisher.collect(false).map_err(|e| e.to_string())?;
        after_each(b);
    }
    Ok(())
}

/// Publishes `--warmup` messages at `--rate` to the fresh connections, waits for all of them
/// (`receivers` each), and clears the latency records so the measurement starts in the steady
/// state. Returns the warm-up's p99 in ms, which is reported beside the measurement.
fn warm_up(
    o: &Opts,
    b: &mut Bench,
    publisher: &mut Publisher,
    receivers: u64,
) -> Result<Option<f64>, String> {
    if o.warmup == 0 {
        return Ok(None);
    }
    let expected = b.total_frames() + o.warmup as u64 * receivers;
    b.expect_receipts(o.warmup as u64 * receivers);
    publish_paced(o, b, publisher, o.warmup, |_| {})?;
    b.run_until(Duration::from_secs(10), |b| b.total_frames() >= expected);
    publisher.collect(true).map_err(|e| e.to_string())?;
    if b.total_frames() < expected {
        return Err(format!(
            "warm-up: {} pushes missing",
            expected - b.total_frames()
        ));
    }
    let mut lat = std::mem::take(&mut b.latencies);
    lat.sort_unstable();
    b.last_arrival.clear();
    Ok(Some(percentile(&lat, 0.99)))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

fn report(o: &Opts, text: String, value: Value) {
    if o.json {
        println!("{}", json!({ "scenario": o.scenario, "result": value }));
    } else {
        println!("{text}");
    }
}

// ---- scenarios -------------------------------------------------------------------------------

fn connect(o: &Opts) -> Result<(), String> {
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    let rss_before = o.pid.and_then(rss_kib);
    let own_pid = std::process::id();
    let cpu_before = (o.pid.and_then(cpu_secs), cpu_secs(own_pid));
    let secs = b.connect_all(o.ws, o.n, o.concurrency, 0)?;
    let cpu_after = (o.pid.and_then(cpu_secs), cpu_secs(own_pid));
    let rate = o.n as f64 / secs;
    // CPU per connection tells which side limits the rate: a side near `secs / n` is saturated.
    let per_conn_us = |a: Option<f64>, z: Option<f64>| Some((z? - a?) * 1e6 / o.n as f64);
    let server_us = per_conn_us(cpu_before.0, cpu_after.0);
    let generator_us = per_conn_us(cpu_before.1, cpu_after.1);
    // Idle for a moment so deferred work (freed handshake buffers) settles.
    b.run_until(Duration::from_secs(2), |_| false);
    let rss_after = o.pid.and_then(rss_kib);
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(z)) => Some((z.saturating_sub(a)) as f64 * 1024.0 / o.n as f64),
        _ => None,
    };
    report(
        o,
        format!(
            "connect: {} connections (concurrency {}) in {secs:.2} s = {rate:.0}/s; CPU per connection: server {} us, generator {} us (wall {:.1} us); server RSS {:?} -> {:?} KiB = {} B per idle subscribed connection",
            o.n,
            o.concurrency,
            server_us.map_or("?".into(), |u| format!("{u:.1}")),
            generator_us.map_or("?".into(), |u| format!("{u:.1}")),
            secs * 1e6 / o.n as f64,
            rss_before,
            rss_after,
            per_conn.map_or("?".into(), |p| format!("{p:.0}"))
        ),
        json!({ "connections": o.n, "per_sec": rate, "server_cpu_us_per_conn": server_us, "generator_cpu_us_per_conn": generator_us, "rss_before_kib": rss_before, "rss_after_kib": rss_after, "bytes_per_conn": per_conn }),
    );
    Ok(())
}

fn fanout(o: &Opts) -> Result<(), String> {
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    b.connect_all(o.ws, o.n, o.concurrency, 0)?;
    b.parse_timestamps = true;
    let mut publisher = Publisher::new(o.api).map_err(|e| e.to_string())?;
    let warmup_p99 = warm_up(o, &mut b, &mut publisher, o.n as u64)?;
    let base = b.total_frames();
    let expected = (o.messages * o.n) as u64;
    b.expect_receipts(expected);
    let cpu = ServerCpu::start(o.pid);
    publish_paced(o, &mut b, &mut publisher, o.messages, |_| {})?;
    b.run_until(Duration::from_secs(10), |b| {
        b.total_frames() - base >= expected
    });
    let delivered = b.total_frames() - base;
    let cpu = cpu.finish(delivered);
    publisher.collect(true).map_err(|e| e.to_string())?;
    let mut lat = std::mem::take(&mut b.latencies);
    lat.sort_unstable();
    // Fan-out time: publish to the last subscriber's receipt, per message (median).
    let mut spans: Vec<u64> = b
        .last_arrival
        .iter()
        .map(|(t, (_, last))| last - t)
        .collect();
    // Publish to the first receipt, per message: how long a message waited behind others.
    let mut waits: Vec<u64> = b
        .last_arrival
        .iter()
        .map(|(t, (first, _))| first - t)
        .collect();
    // Every message's fan-out in publish order, to tell a slow stretch from a steady cost.
    let mut by_publish: Vec<(u64, u64)> = b
        .last_arrival
        .iter()
        .map(|(t, (_, l))| (*t, l - t))
        .collect();
    by_publish.sort_unstable();
    let spans_in_order: Vec<f64> = by_publish
        .iter()
        .map(|(_, s)| (*s as f64 / 1e4).round() / 1e2)
        .collect();
    waits.sort_unstable();
    spans.sort_unstable();
    let fanout_ms = percentile(&spans, 0.5);
    let (p50, p90, p99, p999, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        percentile(&lat, 1.0),
    );
    report(
        o,
        format!(
            "fanout: {} subscribers x {} messages at {}/s, {} B: delivered {delivered}/{expected} (loss {}); latency ms p50 {p50:.2} p90 {p90:.2} p99 {p99:.2} p99.9 {p999:.2} max {max:.2}; median full fan-out {fanout_ms:.2} ms (slowest {:.2}); wait before the first receipt p99 {:.2} ms; server CPU {}; warm-up ({} messages) p99 {}",
            o.n,
            o.messages,
            o.rate,
            o.payload,
            expected.saturating_sub(delivered),
            percentile(&spans, 1.0),
            percentile(&waits, 0.99),
            cpu.text(),
            o.warmup,
            warmup_p99.map_or("-".into(), |p| format!("{p:.2} ms")),
        ),
        json!({ "subscribers": o.n, "messages": o.messages, "delivered": delivered, "expected": expected,
                "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "p999_ms": p999, "max_ms": max,
                "fanout_ms": fanout_ms, "fanout_max_ms": percentile(&spans, 1.0), "fanouts_ms": spans_in_order,
                "wait_p99_ms": percentile(&waits, 0.99), "cpu_ns_per_delivery": cpu.ns_per_delivery,
                "cpu_user_share": cpu.user_share, "server_cpu_secs": cpu.secs,
                "warmup_messages": o.warmup, "warmup_p99_ms": warmup_p99 }),
    );
    Ok(())
}

fn flood(o: &Opts) -> Result<(), String> {
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    b.connect_all(o.ws, o.n, o.concurrency, 0)?;
    let mut publisher = Publisher::new(o.api).map_err(|e| e.to_string())?;
    let data = format!("\"{}\"", "f".repeat(o.payload.saturating_sub(2)));
    let line = format!("{{\"topic\":\"bench\",\"data\":{data}}}\n");
    let batch = line.repeat(100);
    let cpu = ServerCpu::start(o.pid);
    let start = Instant::now();
    let mut published = 0u64;
    while start.elapsed() < o.duration {
        // Keep a few batches in flight (pipelining), and keep reading pushes meanwhile.
        while publisher.pending < 4 {
            publisher
                .send("/publish", batch.as_bytes())
                .map_err(|e| e.to_string())?;
            published += 100;
        }
        publisher.collect(false).map_err(|e| e.to_string())?;
        b.run_until(Duration::from_millis(1), |_| false);
    }
    publisher.collect(true).map_err(|e| e.to_string())?;
    let expected = published * o.n as u64;
    b.run_until(Duration::from_secs(20), |b| b.total_frames() >= expected);
    let elapsed = start.elapsed().as_secs_f64();
    let delivered = b.total_frames();
    let cpu = cpu.finish(delivered);
    let per_sec = delivered as f64 / elapsed;
    report(
        o,
        format!(
            "flood: {} subscribers, {published} publishes of {} B in {elapsed:.1} s: {delivered}/{expected} delivered (loss {}), {:.0} deliveries/s; server CPU {}",
            o.n,
            o.payload,
            expected.saturating_sub(delivered),
            per_sec,
            cpu.text()
        ),
        json!({ "subscribers": o.n, "published": published, "delivered": delivered, "expected": expected,
                "deliveries_per_sec": per_sec, "cpu_ns_per_delivery": cpu.ns_per_delivery,
                "cpu_user_share": cpu.user_share, "server_cpu_secs": cpu.secs }),
    );
    Ok(())
}

/// The API wants JSON for one message (`?topic=`), NDJSON for a batch.
fn publish_content_type(path: &str) -> &'static str {
    if path.contains("topic=") {
        "application/json"
    } else {
        "application/x-ndjson"
    }
}

/// One blocking publish (`Connection: close`); returns the response body.
fn api_call(api: SocketAddr, path: &str, body: &str) -> Result<String, String> {
    let content_type = publish_content_type(path);
    let mut s = std::net::TcpStream::connect(api).map_err(|e| e.to_string())?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).map_err(|e| e.to_string())?;
    match raw.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("{path}: {raw}")),
    }
}

/// `--stuck` subscribers of `bench` (the bystanders) and `-n` resumers of `storm`. The resumers
/// are away while `--messages` are published to `storm`; then all of them reconnect at once
/// (concurrency `-n`) and resume with `since` from the position before those messages. Measures
/// the time until every resumer has all of them (replayed from history), and the bystanders'
/// push latency, published at `--rate` during the storm. Needs history of at least `--messages`.
fn storm(o: &Opts) -> Result<(), String> {
    let bystanders = o.stuck;
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    b.parse_timestamps = true;
    b.connect_all(o.ws, bystanders, o.concurrency, 0)?;
    let mut publisher = Publisher::new(o.api).map_err(|e| e.to_string())?;
    // The position the resumers saw last: the reply to one publish before they went away.
    let reply: Value = serde_json::from_str(&api_call(o.api, "/publish?topic=storm", "0")?)
        .map_err(|e| e.to_string())?;
    let (Some(offset), Some(epoch)) = (reply["offset"].as_u64(), reply["epoch"].as_str()) else {
        return Err(format!(
            "no position in the publish reply (history off?): {reply}"
        ));
    };
    let mut batch = String::new();
    for m in 0..o.messages {
        batch.push_str(&format!("{{\"topic\":\"storm\",\"data\":{m}}}\n"));
    }
    api_call(o.api, "/publish", &batch)?;
    let since = json!({"cmd": "subscribe", "topics": ["storm"],
                       "since": {"storm": {"offset": offset, "epoch": epoch}}});
    b.resume = Some((bystanders, since.to_string()));
    // The bystanders' latency without a storm, one second at --rate, as the yardstick.
    let calm = (o.rate as usize).max(1);
    b.expect_receipts((calm * bystanders) as u64);
    publish_paced(o, &mut b, &mut publisher, calm, |_| {})?;
    publisher.collect(true).map_err(|e| e.to_string())?;
    let calm_expected = (calm * bystanders) as u64;
    b.run_until(Duration::from_secs(5), |b| {
        b.total_frames() >= calm_expected
    });
    let mut calm_lat = std::mem::take(&mut b.latencies);
    calm_lat.sort_unstable();
    let calm_p99 = percentile(&calm_lat, 0.99);
    b.last_arrival.clear();
    let cpu = ServerCpu::start(o.pid);
    let t0 = Instant::now();
    for _ in 0..o.n {
        b.open(o.ws, false).map_err(|e| e.to_string())?;
    }
    let wanted = o.messages as u64;
    let caught_up = |b: &Bench| b.conns[bystanders..].iter().all(|c| c.frames >= wanted);
    // Bystander pushes at --rate until every resumer has caught up (at most 30 s).
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    let mut published = 0u64;
    let mut storm_secs = None;
    while t0.elapsed() < Duration::from_secs(30) {
        let body = format!("{{\"t\":{},\"p\":\"x\"}}", b.now_ns());
        publisher
            .send("/publish?topic=bench", body.as_bytes())
            .map_err(|e| e.to_string())?;
        published += 1;
        publisher.collect(false).map_err(|e| e.to_string())?;
        let due = Instant::now() + interval;
        b.run_until(due.saturating_duration_since(Instant::now()), |b| {
            storm_secs.is_none() && caught_up(b)
        });
        if storm_secs.is_none() && caught_up(&b) {
            storm_secs = Some(t0.elapsed().as_secs_f64());
        }
        if storm_secs.is_some() {
            break;
        }
    }
    publisher.collect(true).map_err(|e| e.to_string())?;
    let expected = published * bystanders as u64;
    b.run_until(Duration::from_secs(5), |b| {
        b.conns[..bystanders].iter().map(|c| c.frames).sum::<u64>() >= expected
    });
    let replayed: u64 = b.conns[bystanders..].iter().map(|c| c.frames).sum();
    let cpu = cpu.finish(replayed.max(1));
    let mut lat = std::mem::take(&mut b.latencies);
    lat.sort_unstable();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let Some(secs) = storm_secs else {
        return Err(format!(
            "not caught up in 30 s: {replayed} of {} replayed pushes",
            wanted * o.n as u64
        ));
    };
    report(
        o,
        format!(
            "storm: {} clients resumed {} messages each in {secs:.2} s ({replayed} replayed); {bystanders} bystanders at {}/s meanwhile: latency ms p50 {p50:.2} p99 {p99:.2} ({} receipts; p99 {calm_p99:.2} before the storm); server CPU {:.2} s",
            o.n,
            o.messages,
            o.rate,
            lat.len(),
            cpu.secs.unwrap_or(f64::NAN),
        ),
        json!({ "resumers": o.n, "behind": o.messages, "caught_up_secs": secs, "replayed": replayed,
                "bystanders": bystanders, "p50_ms": p50, "p99_ms": p99, "receipts": lat.len(),
                "calm_p99_ms": calm_p99,
                "server_cpu_secs": cpu.secs }),
    );
    Ok(())
}

/// N clients, client i subscribed to `user-<i>` alone; `--messages` publishes round-robin over
/// those topics in batch requests of 100 lines (`NOTIFY_LINES`), each line to the next client,
/// paced at `--rate` messages per second. Every push has one subscriber, so each delivery costs
/// the server one send of its own (a client's pushes are `-n / --rate` seconds apart). The
/// clients never ping: against wspush (heartbeat interval + timeout: 20 s by default) the run
/// must end within 20 s of connecting, or the server closes them and counts as loss.
fn notify(o: &Opts) -> Result<(), String> {
    use std::fmt::Write as _;
    const NOTIFY_LINES: usize = 100;
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    b.own_topics = true;
    let rss_before = o.pid.and_then(rss_kib);
    b.connect_all(o.ws, o.n, o.concurrency, 0)?;
    // Idle for a moment, as `connect` does, before the memory reading.
    b.run_until(Duration::from_secs(2), |_| false);
    let rss_connected = o.pid.and_then(rss_kib);
    b.parse_timestamps = true;
    let expected = o.messages as u64;
    b.expect_receipts(expected);
    let mut publisher = Publisher::new(o.api).map_err(|e| e.to_string())?;
    let pad = "x".repeat(o.payload.saturating_sub(30));
    let interval = Duration::from_secs_f64(NOTIFY_LINES as f64 / o.rate.max(0.001));
    let mut body = String::new();
    let cpu = ServerCpu::start(o.pid);
    let start = Instant::now();
    for (request, first) in (0..o.messages).step_by(NOTIFY_LINES).enumerate() {
        let due = start + interval * request as u32;
        b.run_until(due.saturating_duration_since(Instant::now()), |_| false);
        body.clear();
        let t = b.now_ns();
        for m in first..(first + NOTIFY_LINES).min(o.messages) {
            let _ = writeln!(
                body,
                r#"{{"topic":"user-{}","data":{{"t":{t},"p":"{pad}"}}}}"#,
                m % o.n.max(1)
            );
        }
        publisher
            .send("/publish", body.as_bytes())
            .map_err(|e| e.to_string())?;
        publisher.collect(false).map_err(|e| e.to_string())?;
    }
    b.run_until(Duration::from_secs(10), |b| b.total_frames() >= expected);
    let delivered = b.total_frames();
    let cpu = cpu.finish(delivered);
    let elapsed = start.elapsed().as_secs_f64();
    publisher.collect(true).map_err(|e| e.to_string())?;
    let rss_end = o.pid.and_then(rss_kib);
    // Client i is owed one push per round, plus one for i < messages % n.
    let n = o.n.max(1);
    let misrouted: u64 = b
        .conns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let owed = (o.messages / n + usize::from(i < o.messages % n)) as u64;
            c.frames.saturating_sub(owed)
        })
        .sum();
    let mut lat = std::mem::take(&mut b.latencies);
    lat.sort_unstable();
    let per_conn = |z: Option<u64>| {
        let (a, z) = (rss_before?, z?);
        Some(z.saturating_sub(a) as f64 * 1024.0 / o.n as f64)
    };
    let (bytes_per_conn, bytes_per_conn_after) = (per_conn(rss_connected), per_conn(rss_end));
    let bytes = |b: Option<f64>| b.map_or("?".into(), |b| format!("{b:.0} B"));
    report(
        o,
        format!(
            "notify: {} clients on a topic each, {} messages of {} B at {}/s in batches of {NOTIFY_LINES} ({elapsed:.1} s): delivered {delivered}/{expected} (loss {}, misrouted {misrouted}); latency ms p50 {:.2} p99 {:.2} max {:.2}; server CPU {}; server RSS {rss_before:?} -> {rss_connected:?} KiB connected ({} per connection) -> {rss_end:?} KiB after the messages ({})",
            o.n,
            o.messages,
            o.payload,
            o.rate,
            expected.saturating_sub(delivered),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0),
            cpu.text(),
            bytes(bytes_per_conn),
            bytes(bytes_per_conn_after),
        ),
        json!({ "clients": o.n, "messages": o.messages, "delivered": delivered, "expected": expected,
                "misrouted": misrouted, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
                "max_ms": percentile(&lat, 1.0), "cpu_ns_per_delivery": cpu.ns_per_delivery,
                "cpu_user_share": cpu.user_share, "server_cpu_secs": cpu.secs,
                "rss_before_kib": rss_before, "rss_connected_kib": rss_connected, "rss_after_kib": rss_end,
                "bytes_per_conn": bytes_per_conn, "bytes_per_conn_after_messages": bytes_per_conn_after }),
    );
    Ok(())
}

fn slow(o: &Opts) -> Result<(), String> {
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    b.connect_all(o.ws, o.n, o.concurrency, o.stuck)?;
    b.parse_timestamps = true;
    let mut publisher = Publisher::new(o.api).map_err(|e| e.to_string())?;
    let healthy = (o.n - o.stuck) as u64;
    let warmup_p99 = warm_up(o, &mut b, &mut publisher, healthy)?;
    // Stuck connections read nothing, so every frame counted is a healthy one.
    let base = b.total_frames();
    let mut peak_rss = 0;
    let expected = o.messages as u64 * healthy;
    b.expect_receipts(expected);
    publish_paced(o, &mut b, &mut publisher, o.messages, |_| {
        peak_rss = peak_rss.max(o.pid.and_then(rss_kib).unwrap_or(0));
    })?;
    b.run_until(Duration::from_secs(10), |b| {
        b.total_frames() - base >= expected
    });
    let delivered = b.total_frames() - base;
    let mut lat = std::mem::take(&mut b.latencies);
    lat.sort_unstable();
    let p99 = percentile(&lat, 0.99);
    report(
        o,
        format!(
            "slow: {} subscribers, {} stuck, {} messages of {} B: healthy got {delivered}/{expected} (loss {}), p50 {:.2} ms p99 {p99:.2} ms max {:.2} ms; server peak RSS {peak_rss} KiB; warm-up ({} messages) p99 {}",
            o.n,
            o.stuck,
            o.messages,
            o.payload,
            expected.saturating_sub(delivered),
            percentile(&lat, 0.5),
            percentile(&lat, 1.0),
            o.warmup,
            warmup_p99.map_or("-".into(), |p| format!("{p:.2} ms")),
        ),
        json!({ "subscribers": o.n, "stuck": o.stuck, "delivered": delivered, "expected": expected, "p99_ms": p99,
                "peak_rss_kib": peak_rss, "warmup_messages": o.warmup, "warmup_p99_ms": warmup_p99 }),
    );
    Ok(())
}

/// The server's voluntary context switches so far: on an otherwise idle loop, the times it
/// slept in `epoll_wait` and woke up.
fn voluntary_switches(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// N subscribers that send nothing for `--duration`, answering the server's Pings: what
/// keeping idle connections alive costs the server (wake-ups and CPU per second).
fn keepalive(o: &Opts) -> Result<(), String> {
    let pid = o.pid.ok_or("keepalive needs --server-pid")?;
    let mut b = Bench::new().map_err(|e| e.to_string())?;
    b.answer_pings = true;
    b.connect_all(o.ws, o.n, o.concurrency, 0)?;
    let (switches0, cpu0, t0) = (voluntary_switches(pid), cpu_secs(pid), Instant::now());
    b.run_until(o.duration, |b| b.closed > 0);
    let secs = t0.elapsed().as_secs_f64();
    let (switches1, cpu1) = (voluntary_switches(pid), cpu_secs(pid));
    let wakeups = switches0
        .zip(switches1)
        .map(|(a, z)| z.saturating_sub(a) as f64 / secs);
    let cpu_ms = cpu0.zip(cpu1).map(|(a, z)| (z - a) * 1e3 / secs);
    let pings_per_sec = b.pings as f64 / secs;
    report(
        o,
        format!(
            "keepalive: {} connections for {secs:.1} s: {} Pings received ({pings_per_sec:.0}/s), {} closed by the server; server wake-ups {}/s, CPU {} ms/s",
            o.n,
            b.pings,
            b.closed,
            wakeups.map_or("?".into(), |w| format!("{w:.1}")),
            cpu_ms.map_or("?".into(), |c| format!("{c:.2}")),
        ),
        json!({ "connections": o.n, "secs": secs, "pings": b.pings, "pings_per_sec": pings_per_sec,
                "closed": b.closed, "server_wakeups_per_sec": wakeups, "server_cpu_ms_per_sec": cpu_ms }),
    );
    if b.closed > 0 {
        return Err(format!(
            "{} connections were closed while idle answering Pings",
            b.closed
        ));
    }
    Ok(())
}

fn churn(o: &Opts) -> Result<(), String> {
    let pid = o.pid.ok_or("churn needs --server-pid")?;
    let (rss0, fd0) = (rss_kib(pid), fd_count(pid));
    let mut rows = Vec::new();
    for cycle in 0..o.cycles {
        let mut b = Bench::new().map_err(|e| e.to_string())?;
        b.connect_all(o.ws, o.n, o.concurrency, 0)?;
        drop(b);
        // Let the server see the disconnects.
        let t0 = Instant::now();
        while fd_count(pid) != fd0 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The server returns freed memory at most once a second after a wave of disconnects.
        std::thread::sleep(Duration::from_millis(1200));
        rows.push((cycle, rss_kib(pid), fd_count(pid)));
    }
    let (_, rss_end, fd_end) = rows.last().copied().unwrap_or((0, None, None));
    // The first cycle warms the allocator; a leak shows as growth from there on.
    let rss_first = rows.first().and_then(|r| r.1);
    report(
        o,
        format!(
            "churn: {} cycles of {} connections: RSS {rss0:?} (cold) / {rss_first:?} (after cycle 1) -> {rss_end:?} KiB, descriptors {fd0:?} -> {fd_end:?} (per cycle: {:?})",
            o.cycles,
            o.n,
            rows.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>()
        ),
        json!({ "cycles": o.cycles, "connections": o.n, "rss_before_kib": rss0, "rss_first_cycle_kib": rss_first,
                "rss_after_kib": rss_end, "fds_before": fd0, "fds_after": fd_end }),
    );
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the resulting soft limit.
fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        ..lim
    };
    // SAFETY: `raised` is a valid rlimit for the duration of the call.
    if lim.rlim_cur < lim.rlim_max && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
    {
        return Ok(raised.rlim_cur);
    }
    Ok(lim.rlim_cur)
}

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Ok(limit) = raise_fd_limit()
        && (limit as usize) < opts.n + 64
    {
        eprintln!(
            "wspush-bench: open-file limit {limit} is too low for -n {}",
            opts.n
        );
    }
    let result = match opts.scenario.as_str() {
        "connect" => connect(&opts),
        "fanout" => fanout(&opts),
        "flood" => flood(&opts),
        "slow" => slow(&opts),
        "churn" => churn(&opts),
        "notify" => notify(&opts),
        "storm" => storm(&opts),
        "keepalive" => keepalive(&opts),
        "yardstick" => {
            yardstick::run(opts.ws, opts.api, !opts.no_positions).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown scenario {other}\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wspush-bench {}: {e}", opts.scenario);
            ExitCode::FAILURE
        }
    }
}
