//! The server's memory under inputs that used to amplify it, measured on the `wspush` binary
//! (its peak RSS, `VmHWM`, from /proc).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_wspush");

fn start(extra: &[&str]) -> (KillOnDrop, SocketAddr, SocketAddr) {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--no-tick", "--log-level", "info"])
        .args(extra);
    let (child, lines, ready) = start_until_listening(&mut command);
    // Drain the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let (ws, api) = listening_addrs(&ready);
    (child, ws, api.expect(&ready))
}

/// A TCP connection whose receive buffer is 4 KiB, set before `connect` so the window the
/// server sees is small from the start: the server's replies back up in its own queue.
fn connect_with_small_window(addr: SocketAddr) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected: {addr}")
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // `TcpStream`; the address struct is fully initialised and outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(set, 0);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let connected = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(connected, 0, "{}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// Upgrades `stream` and subscribes it to `topic`, reading only the 101 and the ack.
fn open_session(stream: TcpStream, topic: &str) -> TcpStream {
    let mut stream = upgrade_stream(stream);
    let subscribe = format!(r#"{{"topics":["{topic}"]}}"#);
    stream
        .write_all(&masked_frame(0x81, subscribe.as_bytes()))
        .unwrap();
    let (opcode, ack) = read_raw_frame(&mut stream);
    assert_eq!(opcode, 1, "{}", String::from_utf8_lossy(&ack));
    stream
}

/// Sends `frame` `count` times, in large writes; stops early (without failing) when the server
/// stops reading for 2 s: that is the push-back the test wants to allow.
fn flood(stream: &mut TcpStream, frame: &[u8], count: usize) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let per_write = (64 * 1024 / frame.len()).max(1);
    let chunk: Vec<u8> = frame.repeat(per_write);
    let mut sent = 0;
    while sent < count {
        let n = per_write.min(count - sent);
        if stream.write_all(&chunk[..n * frame.len()]).is_err() {
            break;
        }
        sent += n;
    }
    sent
}

/// Clients that flood `frame` and never read: the server's peak RSS may grow by at most
/// `budget_kib`, and a well-behaved subscriber is still served afterwards.
fn flood_without_reading(frame: &'static [u8], per_connection: usize, budget_kib: u64) {
    const CLIENTS: usize = 8;
    // The control client never pings; a debug build under a parallel test run may take longer
    // than the default 20 s of silence to read the flood.
    let (server, ws, api) = start(&["--heartbeat-interval", "120s"]);
    let pid = server.0.id();
    let control = open_session(TcpStream::connect(ws).unwrap(), "control");
    let mut flooders: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| open_session(connect_with_small_window(ws), &format!("flood-{i}")))
        .collect();
    let before = proc_status_kib(pid, "VmHWM");
    let threads: Vec<_> = flooders
        .iter_mut()
        .map(|s| s.try_clone().unwrap())
        .map(|mut s| std::thread::spawn(move || flood(&mut s, frame, per_connection)))
        .collect();
    let sent: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // Let the server read what is still in flight.
    std::thread::sleep(Duration::from_millis(500));
    let grown = proc_status_kib(pid, "VmHWM").saturating_sub(before);
    assert!(
        grown <= budget_kib,
        "peak RSS grew by {grown} KiB ({sent} frames from {CLIENTS} clients that never read)"
    );
    // The server is still responsive to others.
    let mut control = control;
    let (status, body) = http(api, "POST", "/publish?topic=control", "7", &[]);
    assert_eq!(status, 200, "{body}");
    let (opcode, push) = read_raw_frame(&mut control);
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&push).contains(r#""data":7"#));
    drop(flooders);
}

/// Empty Pings (`89 80 00 00 00 00`) by the million: at most one Pong per connection waits.
#[test]
fn a_flood_of_empty_pings_from_clients_that_never_read_stays_bounded() {
    const EMPTY_PING: &[u8] = &[0x89, 0x80, 0, 0, 0, 0];
    flood_without_reading(EMPTY_PING, 2_000_000, 2 * 1024);
}

/// Application pings: every one gets a reply, so the replies fill the queue to its cap; then
/// the server stops reading (or closes with 1013), and memory stays within the cap.
#[test]
fn a_flood_of_json_pings_from_clients_that_never_read_stays_bounded() {
    const JSON_PING: &[u8] = &[
        0x81, 0x8e, 0, 0, 0, 0, b'{', b'"', b'c', b'm', b'd', b'"', b':', b'"', b'p', b'i', b'n',
        b'g', b'"', b'}',
    ];
    // 8 × (256 KiB cap + 16 KiB slack) of replies at most (before the fix: 4 MiB and more).
    flood_without_reading(JSON_PING, 500_000, 3 * 1024);
}

/// 500 connections × 200 topics of their own (100,000 topics), then all leave: the topic index
/// shrinks and the freed heap goes back to the OS, though fewer connections left than a wave of
/// disconnects alone would need.
#[test]
fn memory_goes_back_after_many_topics_leave() {
    const CLIENTS: usize = 500;
    const TOPICS: usize = 200;
    let (server, ws, api) = start(&["--max-topics", "201"]);
    let pid = server.0.id();
    let idle = proc_status_kib(pid, "VmRSS");
    let sessions: Vec<TcpStream> = (0..CLIENTS)
        .map(|c| {
            let topics: Vec<String> = (0..TOPICS).map(|t| format!("\"u{c}-t{t}\"")).collect();
            let mut s = open_session(TcpStream::connect(ws).unwrap(), &format!("c{c}"));
            let subscribe = format!(r#"{{"topics":[{}]}}"#, topics.join(","));
            s.write_all(&masked_frame(0x81, subscribe.as_bytes()))
                .unwrap();
            s
        })
        .collect();
    let stats = |api| {
        let (status, body) = http(api, "GET", "/stats", "", &[]);
        assert_eq!(status, 200);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let wait_for = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = stats(api);
            if done(&s) {
                return;
            }
            assert!(std::time::Instant::now() < until, "{what}: {s}");
            std::thread::sleep(Duration::from_millis(50)); // polling the server's stats
        }
    };
    let expected = (CLIENTS * (TOPICS + 1)) as u64;
    wait_for("all subscribed", &|s| {
        s["topics"].as_u64() == Some(expected)
    });
    let full = proc_status_kib(pid, "VmRSS");
    assert!(
        full > idle + 8 * 1024,
        "the topics took {} KiB",
        full - idle
    );
    drop(sessions);
    wait_for("all gone", &|s| s["topics"].as_u64() == Some(0));
    // The release runs at most once a second; give it a few.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut now = proc_status_kib(pid, "VmRSS");
    while now > idle + (full - idle) / 4 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100)); // waiting for the server's release
        now = proc_status_kib(pid, "VmRSS");
    }
    assert!(
        now <= idle + (full - idle) / 4,
        "RSS {idle} KiB idle, {full} KiB with {expected} topics, still {now} KiB after they left"
    );
}
