//! Operator logs of the `wspush` binary at debug level: no token and no client payload in them,
//! failed authentications at info with the client's address (the forwarded one only from a
//! `--trusted-proxy`), their rate limit, and the `--stats-log-interval` summary line.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

const BIN: &str = env!("CARGO_BIN_EXE_wspush");

const CLIENT_TOKEN: &str = "CLIENT-SECRET-c1c1c1";
const API_TOKEN: &str = "API-SECRET-a9a9a9";
const SUBSCRIBE_SECRET: &str = "SUBSCRIBE-SECRET-5e5e5e5e5e";

/// A server started with `args` on loopback ports, at debug level.
struct Run {
    server: KillOnDrop,
    /// The log's lines, read by a thread so that a line that never comes fails the test
    /// (after `SAFETY_TIMEOUT`) instead of hanging it.
    stderr: mpsc::Receiver<String>,
    ws: SocketAddr,
    api: SocketAddr,
}

impl Run {
    fn start(args: &[&str]) -> Run {
        let mut command = Command::new(BIN);
        command
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(["--no-tick", "--log-level", "debug"])
            .args(args)
            .env_remove("JOURNAL_STREAM");
        for (var, _) in std::env::vars() {
            if var.starts_with("WSPUSH_") {
                command.env_remove(var);
            }
        }
        let (server, stderr, ready) = start_until_listening(&mut command);
        // A JSON line carries the text in `msg`.
        let ready = serde_json::from_str::<Value>(&ready)
            .ok()
            .and_then(|line| Some(line["msg"].as_str()?.to_owned()))
            .unwrap_or(ready);
        let (ws, api) = listening_addrs(&ready);
        let (lines, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Run {
            server,
            stderr: receiver,
            ws,
            api: api.expect(&ready),
        }
    }

    /// Stops the server (SIGTERM) and returns the rest of its log.
    fn finish(mut self) -> String {
        let pid = self.server.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut log = String::new();
        loop {
            match self.stderr.recv_timeout(SAFETY_TIMEOUT) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the server did not exit"),
            }
        }
        assert!(self.server.0.wait().unwrap().success());
        log
    }
}

/// An upgrade with these extra headers; the HTTP status of a refusal, or the open socket.
fn upgrade(
    ws: SocketAddr,
    query: &str,
    headers: &[(&'static str, &str)],
) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let mut request = format!("ws://{ws}/ws{query}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(ws).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// Reads text frames until one is a JSON object (skipping nothing else).
fn next_message(ws: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut tungstenite::WebSocket<TcpStream>, text: &str) {
    ws.send(Message::text(text)).unwrap();
}

/// Waits for the server's close of `ws` and returns its code.
fn close_code(ws: &mut tungstenite::WebSocket<TcpStream>) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code.into(),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// The info lines that report failed authentications.
fn failure_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("authentication failed"))
        .collect()
}

fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
}

#[test]
fn debug_logs_hold_no_token_or_payload_and_name_forwarded_clients() {
    let run = Run::start(&[
        "--client-token",
        CLIENT_TOKEN,
        "--api-token",
        API_TOKEN,
        "--subscribe-secret",
        SUBSCRIBE_SECRET,
        "--private-prefix",
        "private-",
        "--trusted-proxy",
        "10.0.0.0/8,127.0.0.1",
    ]);
    let via = |client: &str| format!("198.51.100.99, {client}, 10.1.2.3");

    // A wrong token in the URL, and one in the header: 401 at the upgrade. The left-most
    // X-Forwarded-For entry, which the client wrote itself, is passed over.
    let forwarded = via("203.0.113.1");
    assert_eq!(
        upgrade(
            run.ws,
            "?token=WRONG-URL-TOKEN-MARK",
            &[("X-Forwarded-For", &forwarded)]
        )
        .err(),
        Some(401)
    );
    let forwarded = via("203.0.113.2");
    assert_eq!(
        upgrade(
            run.ws,
            "",
            &[
                ("X-Forwarded-For", &forwarded),
                ("Authorization", "Bearer WRONG-HEADER-TOKEN-MARK"),
            ]
        )
        .err(),
        Some(401)
    );

    // A wrong token in the first message: 1008. X-Real-IP alone names the client.
    let real_ip = [("X-Real-IP", "203.0.113.3")];
    let mut awaiting = upgrade(run.ws, "", &real_ip).unwrap();
    send(
        &mut awaiting,
        &json!({"cmd": "auth", "token": "WRONG-MESSAGE-TOKEN-MARK"}).to_string(),
    );
    assert_eq!(close_code(&mut awaiting), 1008);

    // A wrong API token: 401.
    let (status, _) = http(
        run.api,
        "POST",
        "/publish?topic=news",
        r#"{"x":"API-PAYLOAD-MARK"}"#,
        &[
            ("Authorization", "Bearer WRONG-API-TOKEN-MARK"),
            ("X-Forwarded-For", "203.0.113.4"),
        ],
    );
    assert_eq!(status, 401);

    // An authenticated client: payloads and bad requests carrying markers.
    let bearer = format!("Bearer {CLIENT_TOKEN}");
    let mut good = upgrade(
        run.ws,
        "",
        &[
            ("Authorization", bearer.as_str()),
            ("X-Forwarded-For", "198.51.100.7"),
        ],
    )
    .unwrap();
    send(&mut good, r#"{"topics":["news"]}"#);
    assert_eq!(next_message(&mut good)["cmd"], "subscribed");
    let api_bearer = format!("Bearer {API_TOKEN}");
    let (status, _) = http(
        run.api,
        "POST",
        "/publish?topic=news",
        r#"{"secret":"PUSH-PAYLOAD-MARK"}"#,
        &[("Authorization", api_bearer.as_str())],
    );
    assert_eq!(status, 200);
    assert_eq!(
        next_message(&mut good)["data"]["secret"],
        "PUSH-PAYLOAD-MARK"
    );
    for bad in [
        r#"{"topics":["BAD-JSON-MARK""#,
        r#"{"topics":["a"],"recent":"TYPE-ERROR-MARK"}"#,
        r#"{"cmd":"COMMAND-MARK"}"#,
        r#"{"topics":["TOPIC MARK with spaces"]}"#,
        r#"{"topics":["private-CLAIMED-TOPIC-MARK"],"claims":["CLAIM-MARK.c2ln"]}"#,
        r#"{"cmd":"auth","token":"LATE-TOKEN-MARK"}"#,
    ] {
        send(&mut good, bad);
        assert_eq!(next_message(&mut good)["cmd"], "error", "{bad}");
    }
    for body in [r#"{"x": BAD-BODY-MARK"#, "\"BATCH-MARK\"\n"] {
        let (status, _) = http(
            run.api,
            "POST",
            if body.starts_with('{') {
                "/publish?topic=news"
            } else {
                "/publish"
            },
            body,
            &[("Authorization", api_bearer.as_str())],
        );
        assert_eq!(status, 400, "{body}");
    }
    good.close(None).unwrap();
    let log = run.finish();

    for secret in [CLIENT_TOKEN, API_TOKEN, SUBSCRIBE_SECRET] {
        assert!(!log.contains(secret), "a token is in the log:\n{log}");
    }
    assert!(!log.contains("MARK"), "client data is in the log:\n{log}");
    assert!(log.contains("DEBUG"), "the run logged at debug:\n{log}");

    let failures = failure_lines(&log);
    assert_eq!(failures.len(), 4, "{log}");
    for line in &failures {
        assert!(line.contains(" INFO "), "{line}");
    }
    let failures = failures.join("\n");
    let upgrade_url = line_with(&failures, "from 203.0.113.1 (via 127.0.0.1:");
    assert!(upgrade_url.contains("kind=client_token_upgrade status=401 path=/ws"));
    let upgrade_header = line_with(&failures, "from 203.0.113.2 (via 127.0.0.1:");
    assert!(upgrade_header.contains("kind=client_token_upgrade"));
    let message = line_with(&failures, "from 203.0.113.3 (via 127.0.0.1:");
    assert!(
        message.contains("kind=client_token_message close=1008"),
        "{message}"
    );
    let api = line_with(&failures, "from 203.0.113.4 (via 127.0.0.1:");
    assert!(
        api.contains("kind=api_token status=401 path=/publish"),
        "{api}"
    );
    // The connect line at debug names the forwarded client too.
    let connected = line_with(&log, "connected from 198.51.100.7 (via 127.0.0.1:");
    assert!(connected.contains("DEBUG"), "{connected}");
    // Bad requests are described without their contents.
    assert!(log.contains("bad request: claim refused: "), "{log}");
    assert!(log.contains("bad request: unknown command"), "{log}");
}

#[test]
fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let run = Run::start(&[
        "--client-token",
        CLIENT_TOKEN,
        "--api-token",
        API_TOKEN,
        "--trusted-proxy",
        "10.0.0.0/8",
    ]);
    assert_eq!(
        upgrade(
            run.ws,
            "",
            &[
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Real-IP", "203.0.113.8"),
                ("Authorization", "Bearer wrong"),
            ]
        )
        .err(),
        Some(401)
    );
    let (status, _) = http(
        run.api,
        "GET",
        "/stats",
        "",
        &[("X-Forwarded-For", "203.0.113.9")],
    );
    assert_eq!(status, 401);
    let log = run.finish();
    let failures = failure_lines(&log);
    assert_eq!(failures.len(), 2, "{log}");
    for line in failures {
        assert!(line.contains(" from 127.0.0.1:"), "{line}");
        assert!(
            !line.contains("203.0.113"),
            "a spoofed address was believed: {line}"
        );
        assert!(!line.contains("via"), "{line}");
    }
    assert!(line_with(&log, "kind=api_token").contains("path=/stats"));
}

#[test]
fn failed_authentications_are_rate_limited() {
    let run = Run::start(&["--api-token", API_TOKEN]);
    const ATTEMPTS: usize = 25;
    for _ in 0..ATTEMPTS {
        let (status, _) = http(run.api, "GET", "/metrics", "", &[]);
        assert_eq!(status, 401);
    }
    let log = run.finish();
    let logged = failure_lines(&log).len();
    // However the attempts fall into 10-second windows, each logs at most 10 and counts the
    // rest; the count of the last window is reported at shutdown.
    let suppressed: usize = log
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("INFO  [wspush::oplog] ")?;
            let (count, _) = rest.split_once(" similar authentication")?;
            count.parse::<usize>().ok()
        })
        .sum();
    assert!(logged < ATTEMPTS, "{logged} lines:\n{log}");
    assert_eq!(logged + suppressed, ATTEMPTS, "{log}");
}

/// The next log line of `run` from target `wspush::stats`.
fn next_stats_line(run: &mut Run) -> String {
    loop {
        let line = run
            .stderr
            .recv_timeout(SAFETY_TIMEOUT)
            .expect("no summary line in time");
        if line.contains("wspush::stats") {
            return line;
        }
    }
}

#[test]
fn stats_summary_lines_in_text_and_json() {
    let mut run = Run::start(&["--stats-log-interval", "1s", "--log-level", "info"]);
    let mut subscriber = upgrade(run.ws, "", &[]).unwrap();
    send(&mut subscriber, r#"{"topics":["a","b"]}"#);
    assert_eq!(next_message(&mut subscriber)["cmd"], "subscribed");
    let (status, _) = http(run.api, "POST", "/publish?topic=a", "1", &[]);
    assert_eq!(status, 200);
    next_message(&mut subscriber);
    // The first line may have come before the publish; one after it shows the subscriber.
    let line = loop {
        let line = next_stats_line(&mut run);
        if line.contains("subscriptions=2") {
            break line;
        }
    };
    assert!(
        line.contains("INFO  [wspush::stats] stats: interval=1s connections=1 "),
        "{line}"
    );
    assert!(
        line.contains(" topics=2 ") && line.contains(" rss="),
        "{line}"
    );
    drop(run.finish());

    let mut run = Run::start(&[
        "--stats-log-interval",
        "1",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]);
    let mut subscriber = upgrade(run.ws, "", &[]).unwrap();
    send(&mut subscriber, r#"{"topics":["a"]}"#);
    assert_eq!(next_message(&mut subscriber)["cmd"], "subscribed");
    let (status, _) = http(run.api, "POST", "/publish?topic=a", "1", &[]);
    assert_eq!(status, 200);
    next_message(&mut subscriber);
    let mut publishes = 0;
    let value = loop {
        let line = next_stats_line(&mut run);
        let value: Value = serde_json::from_str(&line).expect(&line);
        publishes += value["publishes_api"].as_u64().expect(&line);
        if value["subscriptions"] == 1 && publishes == 1 {
            break value;
        }
        assert!(
            publishes <= 1,
            "a publish counted twice: deltas, not totals: {line}"
        );
    };
    assert_eq!(value["connections"], 1);
    assert_eq!(value["target"], "wspush::stats");
    assert!(value["rss_bytes"].as_u64().unwrap() > 0);
    assert!(value["msg"].as_str().unwrap().starts_with("stats: "));
    drop(run.finish());
}

#[test]
fn bad_trusted_proxy_ranges_are_refused_at_start() {
    for bad in ["10.0.0.0/33", "::/129", "proxy.example", "10.0.0.0/x"] {
        let out = Command::new(BIN)
            .args(["--trusted-proxy", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--trusted-proxy") && stderr.contains(bad),
            "{stderr}"
        );
    }
    let out = Command::new(BIN)
        .env("WSPUSH_STATS_LOG_INTERVAL", "100ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WSPUSH_STATS_LOG_INTERVAL"));
}
