//! Soak: minutes of connection, subscription and publish churn at thousands of connections
//! against the release binary. Ignored by default; `scripts/soak.sh` runs it
//! (`WSPUSH_SOAK_SECS`, default 180).
//!
//! Afterwards: the server's RSS is within 10 % of its baseline (taken after 20 warm-up rounds, so
//! the allocator's steady state is the baseline, and every stream's history is full by then)
//! plus what the bounded history grew by, its open
//! descriptors equal the live connections plus its fixed ones, and every message published to
//! the healthy subscribers arrived.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{HANDSHAKE_REQUEST, http, masked_frame};
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

const HEALTHY: usize = 500;
const CHURN_PER_CYCLE: usize = 2_000;
const WARM_UP_ROUNDS: usize = 20;

struct ServerProcess {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_server() -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wspush"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--no-tick",
            "--max-connections",
            "5000",
            // Small enough that the warm-up fills every stream: bounded history is then part of
            // the baseline, and what grows after it is a leak.
            "--history-size",
            "10",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let addr = |prefix: &str| -> SocketAddr {
        let start = line.find(prefix).expect(&line) + prefix.len();
        let end = line[start..].find(['/', ')']).unwrap() + start;
        line[start..end].parse().unwrap()
    };
    let (ws, api) = (addr("ws://"), addr("api: "));
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    ServerProcess { child, ws, api }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn stats(api: SocketAddr) -> serde_json::Value {
    let (status, body) = http(api, "GET", "/stats", "", &[]);
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

/// A blocking client: handshake, subscribe, wait for the ack.
fn blocking_subscriber(addr: SocketAddr, topics: &[String]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(HANDSHAKE_REQUEST).unwrap();
    read_past_headers(&mut s);
    let sub = serde_json::json!({ "topics": topics }).to_string();
    s.write_all(&masked_frame(0x81, sub.as_bytes())).unwrap();
    let (_, ack) = common::read_raw_frame(&mut s);
    assert!(ack.starts_with(br#"{"cmd":"subscribed""#));
    s
}

fn read_past_headers(s: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
}

/// The healthy subscribers, on their own thread: count push frames until told the total.
fn healthy_subscribers(
    addr: SocketAddr,
    expected: std::sync::mpsc::Receiver<u64>,
) -> std::thread::JoinHandle<u64> {
    let streams: Vec<TcpStream> = (0..HEALTHY)
        .map(|_| blocking_subscriber(addr, &["soak".to_string()]))
        .collect();
    std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let mut conns: Vec<(MioStream, Vec<u8>, u64)> = streams
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true).unwrap();
                (MioStream::from_std(s), Vec::new(), 0)
            })
            .collect();
        for (i, (s, _, _)) in conns.iter_mut().enumerate() {
            poll.registry()
                .register(s, Token(i), Interest::READABLE)
                .unwrap();
        }
        let mut events = Events::with_capacity(1024);
        let mut target = None;
        let deadline_after_target = Duration::from_secs(30);
        let mut target_at = None;
        let mut buf = vec![0u8; 64 * 1024];
        let ping = masked_frame(0x89, b"alive");
        let mut last_ping = Instant::now();
        loop {
            // Like real clients, ping well within the server's heartbeat limit.
            if last_ping.elapsed() > Duration::from_secs(5) {
                for (s, _, _) in &mut conns {
                    s.write_all(&ping).unwrap();
                }
                last_ping = Instant::now();
            }
            if target.is_none() {
                target = expected.try_recv().ok();
                if target.is_some() {
                    target_at = Some(Instant::now());
                }
            }
            if let Some(t) = target
                && (conns.iter().all(|c| c.2 >= t)
                    || target_at.unwrap().elapsed() > deadline_after_target)
            {
                return conns.iter().map(|c| c.2).min().unwrap_or(0);
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for ev in events.iter() {
                let (s, pending, count) = &mut conns[ev.token().0];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => panic!("the server closed a healthy subscriber"),
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("healthy subscriber: {e}"),
                    }
                }
                // Count complete frames (server frames are unmasked, payload < 64 KiB here).
                let mut at = 0;
                while pending.len() >= at + 2 {
                    let (hdr, len) = match pending[at + 1] & 0x7f {
                        126 if pending.len() >= at + 4 => (
                            4,
                            u16::from_be_bytes([pending[at + 2], pending[at + 3]]) as usize,
                        ),
                        126 => break,
                        n => (2, n as usize),
                    };
                    if pending.len() < at + hdr + len {
                        break;
                    }
                    match pending[at] & 0x0f {
                        1 => *count += 1,
                        0xA => {} // pong
                        op => panic!("healthy subscriber got opcode {op}"),
                    }
                    at += hdr + len;
                }
                pending.drain(..at);
            }
        }
    })
}

#[test]
#[ignore = "minutes long: run scripts/soak.sh"]
fn soak_churn_leaves_no_leak_and_loses_nothing() {
    let secs: u64 = std::env::var("WSPUSH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let server = start_server();
    let pid = server.child.id();
    let fixed_fds = open_fds(pid);
    let (tx, rx) = std::sync::mpsc::channel();
    let healthy = healthy_subscribers(server.ws, rx);
    let mut published: u64 = 0;
    let publish = |topic: &str, n: usize| -> u64 {
        let body: String = (0..n)
            .map(|i| format!("{{\"topic\":\"{topic}\",\"data\":{{\"i\":{i}}}}}\n"))
            .collect();
        let (status, reply) = http(server.api, "POST", "/publish", &body, &[]);
        assert_eq!(status, 200, "{reply}");
        n as u64
    };
    let cycle = |round: usize| {
        // Churners: subscribe to a few of 50 topics, get some pushes, leave (half abruptly).
        let mut churners: Vec<TcpStream> = (0..CHURN_PER_CYCLE)
            .map(|i| {
                let topics = vec![
                    format!("c{}", (i + round) % 50),
                    format!("c{}", (i * 7 + round) % 50),
                ];
                blocking_subscriber(server.ws, &topics)
            })
            .collect();
        for t in 0..50 {
            publish(&format!("c{t}"), 2);
        }
        for (i, s) in churners.iter_mut().enumerate() {
            if i % 2 == 0 {
                let _ = s.write_all(&masked_frame(0x88, &1000u16.to_be_bytes()));
            }
        }
        drop(churners);
    };
    // Warm-up cycles (the allocator's steady state is the baseline, not a cold process).
    for round in 0..WARM_UP_ROUNDS {
        cycle(round);
    }
    published += publish("soak", 100);
    let settle = || {
        for _ in 0..200 {
            if stats(server.api)["connections"] == HEALTHY as u64 {
                // The server returns freed memory within a second of a wave of disconnects.
                std::thread::sleep(Duration::from_millis(1500));
                return;
            }
            std::thread::sleep(Duration::from_millis(50)); // the server drains closes on its own
        }
        panic!("churners never left: {}", stats(server.api));
    };
    settle();
    let baseline = rss_kib(pid);
    // History fills up to its bounds during the run: that memory is held by design.
    let history_at_baseline = stats(server.api)["history_bytes"].as_u64().unwrap_or(0);
    let started = Instant::now();
    let mut rounds = WARM_UP_ROUNDS;
    while started.elapsed() < Duration::from_secs(secs) {
        cycle(rounds);
        published += publish("soak", 200);
        rounds += 1;
        if rounds.is_multiple_of(20) {
            eprintln!("soak: round {rounds}, RSS {} KiB", rss_kib(pid));
        }
    }
    settle();
    let rss = rss_kib(pid);
    let fds = open_fds(pid);
    let s = stats(server.api);
    tx.send(published).unwrap();
    let min_received = healthy.join().expect("healthy subscribers thread");
    eprintln!(
        "soak: {rounds} rounds of {CHURN_PER_CYCLE} churners in {:?}; {published} pushes per healthy subscriber; \
         RSS {baseline} -> {rss} KiB; fds {fds} (fixed {fixed_fds} + {HEALTHY}); stats {s}",
        started.elapsed()
    );
    assert_eq!(
        min_received, published,
        "a healthy subscriber missed messages"
    );
    assert_eq!(fds, fixed_fds + HEALTHY, "descriptors leaked");
    // Each held byte costs up to about 1.5 in RSS (BENCHMARKS.md: 280 B for 209 charged).
    let history_growth_kib = s["history_bytes"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(history_at_baseline) as f64
        * 1.5
        / 1024.0;
    assert!(
        rss as f64 <= baseline as f64 * 1.10 + history_growth_kib,
        "RSS grew from {baseline} to {rss} KiB (history grew by {history_growth_kib:.0} KiB of RSS)"
    );
    assert_eq!(s["topics"], 1, "churners' topics were not removed");
}
