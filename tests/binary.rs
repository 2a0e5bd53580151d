//! The `wspush` binary as a user runs it: flags, logs, the tick, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

const BIN: &str = env!("CARGO_BIN_EXE_wspush");

#[test]
fn help_lists_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--api-listen",
        "--path",
        "--tick-topic",
        "--tick-interval",
        "--no-tick",
        "--heartbeat-interval",
        "--heartbeat-timeout",
        "--write-timeout",
        "--max-connections",
        "--max-message-size",
        "--outbound-cap",
        "--api-token",
        "--log-level",
        "--trusted-proxy",
        "--stats-log-interval",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("0.0.0.0:8091") && help.contains("3s"));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let out = Command::new(BIN)
        .args(["--tick-interval", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tick-interval"));
    let out = Command::new(BIN)
        .args(["--api-listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a public API without a token must not start"
    );
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--tick-interval",
            "100ms",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    // "... listening on ws://127.0.0.1:PORT/ws (api: 127.0.0.1:PORT)"
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .expect(&line)
        .to_owned();
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
    ws.send(Message::text(r#"{"topics":["test-topic"]}"#))
        .unwrap();
    let mut pushes = 0;
    while pushes < 1 {
        if let Message::Text(t) = ws.read().unwrap() {
            pushes += usize::from(t.contains("publish msg"));
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => break frame.code,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, CloseCode::Away);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_descriptors_does_not_spin_and_recovers() {
    // 48 descriptors: the server's own few plus ~40 connections.
    let mut child = Command::new("prlimit")
        .args([
            "--nofile=48:48",
            BIN,
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--no-tick",
        ])
        .args(["--max-connections", "1000"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.contains("open-file limit"),
        "warns about the low limit: {first}"
    );
    let second = lines.next().unwrap().unwrap();
    let addr: std::net::SocketAddr = second
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ws://")?.strip_suffix("/ws")?.parse().ok())
        .expect(&second);
    // Keep draining the (rate-limited) log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    // A subscriber connected before the descriptors run out.
    let url = format!("ws://{addr}/ws");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut first, _) = tungstenite::client(url.as_str(), stream).unwrap();
    first
        .send(Message::text(r#"{"topics":["test-topic"]}"#))
        .unwrap();
    // Twice as many clients as descriptors; each sends a handshake and waits.
    let mut clients = Vec::new();
    for _ in 0..90 {
        let mut s = TcpStream::connect(addr).unwrap();
        use std::io::Write;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        clients.push(s);
    }
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2)); // a measurement window, not synchronisation
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 30,
        "the server burned {spent} ticks in 2 s while out of descriptors"
    );
    // Free the descriptors; the backlog is accepted and served again.
    drop(clients);
    let mut served = false;
    for _ in 0..100 {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Ok((mut ws, _)) = tungstenite::client(url.as_str(), s) {
            ws.send(Message::text(r#"{"topics":["a"]}"#)).unwrap();
            if let Ok(Message::Text(t)) = ws.read() {
                served = t.contains("subscribed");
                break;
            }
        }
    }
    assert!(served, "the server did not recover");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
}

/// The binary skips std's start-up (`#![no_main]`) and does its parts itself: a peer that
/// vanishes mid-push must not kill the process with SIGPIPE, and a closed stdin is reopened on
/// /dev/null so no socket can take descriptor 0.
#[test]
fn survives_vanished_peers_and_closed_stdin() {
    let mut command = Command::new("sh");
    command
        // The test harness ignores SIGPIPE and children inherit that: restore the default.
        .args([
            "-c",
            "exec env --default-signal=PIPE \"$0\" \"$@\" <&-",
            BIN,
        ])
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .arg("--no-tick");
    let (mut child, lines, ready) = common::start_until_listening(&mut command);
    let pid = child.0.id();
    std::thread::spawn(move || for _ in lines {});
    let addr = |prefix: &str, suffix: &str| -> std::net::SocketAddr {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
            .expect(&ready)
    };
    let (ws_addr, api_addr) = (addr("ws://", "/ws"), addr("", ")"));
    let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(fd0, std::path::Path::new("/dev/null"));
    // Started with SIGPIPE at its default (death); the server must have set it to ignored.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(ignored & (1 << (13 - 1)), 0, "SIGPIPE is not ignored");

    let url = format!("ws://{ws_addr}/ws");
    let subscribe = || {
        let stream = TcpStream::connect(ws_addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
        ws.send(Message::text(r#"{"topics":["t"]}"#)).unwrap();
        assert!(matches!(ws.read().unwrap(), Message::Text(t) if t.contains("subscribed")));
        ws
    };
    // Peers that disappear without a close frame while pushes keep coming: the server's
    // writes meet a reset connection (EPIPE).
    let vanishing: Vec<_> = (0..20).map(|_| subscribe()).collect();
    drop(vanishing);
    for i in 0..10 {
        let (status, _) = common::http(
            api_addr,
            "POST",
            "/publish",
            &format!(r#"{{"topic":"t","data":{i}}}"#),
            &[],
        );
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(10)); // spread the pushes over the resets
    }
    assert!(child.0.try_wait().unwrap().is_none(), "the server died");
    let mut survivor = subscribe();
    let (status, _) = common::http(
        api_addr,
        "POST",
        "/publish",
        r#"{"topic":"t","data":"ok"}"#,
        &[],
    );
    assert_eq!(status, 200);
    assert!(matches!(survivor.read().unwrap(), Message::Text(t) if t.contains("\"ok\"")));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(child.0.wait().unwrap().success());
}

/// Configuration from the environment alone, with the API token read from a file: the API
/// requires that token, and the token shows neither in the command line nor in the logs.
#[test]
fn configured_from_env_with_a_token_file() {
    const TOKEN: &str = "env-file-s3cret-7f3a";
    let token_file =
        std::env::temp_dir().join(format!("wspush-binary-token-{}", std::process::id()));
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut command = Command::new(BIN);
    command
        // Only what the test sets: a WSPUSH_* variable of the caller must not leak in.
        .env_clear()
        .env("WSPUSH_LISTEN", "127.0.0.1:0")
        .env("WSPUSH_API_LISTEN", "localhost:0")
        .env("WSPUSH_NO_TICK", "1")
        .env("WSPUSH_API_TOKEN_FILE", &token_file)
        .env("WSPUSH_LOG_LEVEL", "debug");
    let (mut child, lines, ready) = common::start_until_listening(&mut command);
    let pid = child.0.id();
    // Keep the rest of the log, to look for the token in it after the exit.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // The token is read at start; the file is not needed afterwards.
    std::fs::remove_file(&token_file).unwrap();
    let api: std::net::SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_suffix(')')?.parse().ok())
        .expect(&ready);
    assert!(api.ip().is_loopback(), "{ready}");

    let (status, _) = common::http(api, "GET", "/stats", "", &[]);
    assert_eq!(status, 401, "the API must require the token");
    let wrong = [("Authorization", "Bearer wrong")];
    assert_eq!(common::http(api, "GET", "/stats", "", &wrong).0, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = common::http(api, "GET", "/stats", "", &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!cmdline.is_empty());
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(TOKEN),
        "the token is visible in /proc/{pid}/cmdline"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(child.0.wait().unwrap().success());
    let log = log.join().unwrap();
    assert!(
        !ready.contains(TOKEN) && !log.iter().any(|l| l.contains(TOKEN)),
        "the token is in the log"
    );
}

#[test]
fn sighup_does_not_stop_the_server() {
    let (server, _stderr, ready) = common::start_until_listening(Command::new(BIN).args([
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--tick-interval",
        "100ms",
    ]));
    let (ws_addr, _) = common::listening_addrs(&ready);
    let stream = TcpStream::connect(ws_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{ws_addr}/ws"), stream).unwrap();
    ws.send(Message::text(r#"{"topics":["test-topic"]}"#))
        .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Ticks keep arriving after the signal: the process and this session are alive.
    let mut pushes = 0;
    while pushes < 5 {
        match ws.read() {
            Ok(Message::Text(t)) => pushes += usize::from(t.contains("publish msg")),
            Ok(_) => {}
            Err(e) => panic!("the session ended after SIGHUP: {e}"),
        }
    }
}

/// The first log line of a server started with `env` and `args` (it is ended at once).
fn first_log_line(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut command = Command::new(BIN);
    command
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied());
    let (_server, _stderr, ready) = common::start_until_listening(&mut command);
    ready
}

#[test]
fn logs_carry_utc_timestamps_except_under_journald_and_can_be_json() {
    let is_stamp = |s: &str| {
        s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.starts_with("20")
    };
    let text = first_log_line(&[], &[]);
    let (stamp, rest) = text.split_once(' ').expect(&text);
    assert!(is_stamp(stamp), "{text}");
    assert!(rest.starts_with("INFO  [wspush::server] "), "{text}");

    let journald = first_log_line(&[("JOURNAL_STREAM", "8:12345")], &[]);
    assert!(
        journald.starts_with("INFO  [wspush::server] "),
        "{journald}"
    );

    let json = first_log_line(&[("WSPUSH_LOG_FORMAT", "json")], &[]);
    let value: serde_json::Value = serde_json::from_str(&json).expect(&json);
    assert_eq!(value["level"], "INFO", "{json}");
    assert_eq!(value["target"], "wspush::server", "{json}");
    assert!(is_stamp(value["ts"].as_str().unwrap_or("")), "{json}");
    assert!(
        value["msg"]
            .as_str()
            .unwrap_or("")
            .contains("listening on ws://")
    );
}
