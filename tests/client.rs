//! The reconnecting client against the real server (and a fake one that never answers).

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;
use wspush::Config;
use wspush::app::claim::{self, Scope};
use wspush::app::sha256::HmacSha256;
use wspush::client::{Client, ClientConfig, ContinuityReason, Event};

const WAIT: Duration = Duration::from_secs(10);

fn fast_config(url: String) -> ClientConfig {
    ClientConfig {
        ping_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        ..ClientConfig::new(url)
    }
}

/// The next push (data as raw JSON text), skipping other events.
fn next_push(client: &Client) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left).expect("no push in time") {
            Event::Push { topic, data, .. } => return (topic, data),
            _ => continue,
        }
    }
}

fn wait_connected(client: &Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if client.recv_timeout(left).expect("not connected in time") == Event::Connected {
            return;
        }
    }
}

#[test]
fn receives_the_tick_and_api_publishes() {
    let mut config = test_config();
    config.tick = Some(("test-topic".into(), Duration::from_millis(100)));
    let server = TestServer::with(config);
    let mut cfg = fast_config(server.url());
    cfg.topics = vec!["test-topic".into(), "news".into()];
    let client = Client::connect(cfg).unwrap();
    wait_connected(&client);
    assert_eq!(
        next_push(&client),
        ("test-topic".into(), r#""publish msg""#.into())
    );
    server.publish("news", r#"{"n":1}"#);
    loop {
        let (topic, data) = next_push(&client);
        if topic == "news" {
            assert_eq!(data, r#"{"n":1}"#);
            break;
        }
    }
    client.stop();
}

#[test]
fn reconnects_and_resubscribes_after_a_server_restart() {
    let server = TestServer::start();
    let addr = server.ws;
    let client = Client::connect(fast_config(server.url())).unwrap();
    wait_connected(&client);
    client.subscribe("added-later");
    // The subscribe command is applied before the publish below is answered: await its effect.
    let deadline = Instant::now() + WAIT;
    while server.stats()["subscriptions"] != 2 {
        assert!(
            Instant::now() < deadline,
            "subscribe() never reached the server"
        );
        std::thread::yield_now();
    }
    drop(server); // stops the server: the client sees 1001
    let mut config = test_config();
    config.listen = addr;
    let server = TestServer::with(config);
    wait_connected(&client);
    assert_eq!(
        server.stats()["subscriptions"],
        2,
        "both topics resubscribed"
    );
    server.publish("added-later", "7");
    assert_eq!(next_push(&client), ("added-later".into(), "7".into()));
    client.unsubscribe("added-later");
    client.stop();
}

#[test]
fn after_a_server_restart_everything_published_since_arrives() {
    let server = TestServer::start();
    let addr = server.ws;
    let mut config = fast_config(server.url());
    // Long enough that the publishes below happen before the client is back.
    config.backoff_initial = Duration::from_secs(2);
    config.backoff_max = Duration::from_secs(2);
    config.topics = vec!["t".into()];
    let client = Client::connect(config).unwrap();
    wait_connected(&client);
    let epoch = server.publish("t", "1")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next_seen(&client), pushed("t", 1, &epoch));
    drop(server);
    let mut config = test_config();
    config.listen = addr;
    let server = TestServer::with(config);
    let epoch = server.publish("t", "1")["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    server.publish("t", "2");
    assert_eq!(
        server.stats()["connections"],
        0,
        "the client came back before the publishes"
    );
    assert_eq!(
        next_seen(&client),
        lost("t", &epoch, 1, ContinuityReason::EpochChanged)
    );
    assert_eq!(next_seen(&client), pushed("t", 1, &epoch));
    assert_eq!(next_seen(&client), pushed("t", 2, &epoch));
    server.publish("t", "3");
    assert_eq!(next_seen(&client), pushed("t", 3, &epoch));
    client.stop();
}

#[test]
fn a_server_that_never_answers_is_left_within_the_heartbeat_limit() {
    // Accepts the upgrade, then neither reads nor writes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let fake = std::thread::spawn(move || {
        let mut held = Vec::new();
        let mut accepted_at = Vec::new();
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            accepted_at.push(Instant::now());
            held.push(tungstenite::accept(stream).unwrap());
        }
        accepted_at[1] - accepted_at[0]
    });
    let client = Client::connect(fast_config(url)).unwrap();
    let gap = fake.join().unwrap();
    // ping 200 ms + no answer 300 ms + first backoff ~100 ms (+ scheduling slack)
    assert!(
        gap < Duration::from_millis(1500),
        "reconnected after {gap:?}"
    );
    assert!(
        gap >= Duration::from_millis(450),
        "gave up too early: {gap:?}"
    );
    client.stop();
}

#[test]
fn backoff_grows_while_the_server_is_down_and_stays_capped() {
    // A port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::connect(fast_config(format!("ws://127.0.0.1:{port}/ws"))).unwrap();
    let mut delays = Vec::new();
    while delays.len() < 7 {
        if let Event::Disconnected { retry_in, .. } = client.recv_timeout(WAIT).unwrap() {
            delays.push(retry_in);
        }
    }
    let cap = Duration::from_millis(800);
    assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
    assert!(delays[0] <= Duration::from_millis(120), "{delays:?}");
    assert!(delays[3] > delays[0] * 4, "{delays:?}");
    assert!(delays[6] >= cap.mul_f64(0.8), "{delays:?}");
    client.stop();
}

#[test]
fn the_binary_prints_pushes_like_the_seed() {
    let mut config = test_config();
    config.tick = Some(("test-topic".into(), Duration::from_millis(50)));
    let server = TestServer::with(config);
    let out = Command::new(env!("CARGO_BIN_EXE_wspush-client"))
        .args([
            "-r",
            &server.ws.to_string(),
            "--count",
            "2",
            "--log-level",
            "warn",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "test-topic \"publish msg\"\ntest-topic \"publish msg\"\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_wspush-client"))
        .args([
            "-r",
            &server.url(),
            "--json",
            "--count",
            "1",
            "-t",
            "test-topic",
        ])
        .output()
        .unwrap();
    let mut line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The stream position (history is on by default) comes with the seed's two fields.
    let position = line
        .as_object_mut()
        .map(|o| (o.remove("offset"), o.remove("epoch")));
    assert!(matches!(position, Some((Some(_), Some(_)))), "{line}");
    assert_eq!(line, json!({"topic": "test-topic", "data": "publish msg"}));
}

#[test]
fn stop_closes_the_connection() {
    let server = TestServer::start();
    let client = Client::connect(fast_config(server.url())).unwrap();
    wait_connected(&client);
    assert_eq!(server.stats()["connections"], 1);
    client.stop();
    let deadline = Instant::now() + WAIT;
    while server.stats()["connections"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the server still sees the client"
        );
        std::thread::yield_now();
    }
}

#[test]
fn the_binary_refuses_other_schemes_before_connecting() {
    // Nothing listens there: an attempt to connect would show up as a retry, not as exit 2.
    for (url, scheme) in [
        ("wss://127.0.0.1:18640/ws", "wss://"),
        ("https://127.0.0.1:18640/ws", "https://"),
        ("http://127.0.0.1:18640/ws", "http://"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wspush-client"))
            .args(["-r", url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(scheme), "{url}: {stderr}");
        assert!(stderr.contains("not supported"), "{url}: {stderr}");
        assert!(
            !stderr.contains("ws://wss") && !stderr.contains("connecting"),
            "{stderr}"
        );
        if scheme == "wss://" {
            assert!(stderr.contains("TLS"), "{stderr}");
        }
        assert!(out.stdout.is_empty());
    }
}

/// Values the API accepts and forwards verbatim, which serde_json's `Value` cannot hold.
fn unusual_values() -> Vec<String> {
    vec![
        r#""\ud800""#.to_owned(),
        "1e400".to_owned(),
        format!("{}{}", "[".repeat(200), "]".repeat(200)),
    ]
}

#[test]
fn pushes_arrive_verbatim_even_when_serde_json_values_cannot_hold_them() {
    let server = TestServer::start();
    let mut cfg = fast_config(server.url());
    cfg.topics = vec!["odd".into()];
    let client = Client::connect(cfg).unwrap();
    wait_connected(&client);
    for data in unusual_values() {
        assert_eq!(server.publish("odd", &data)["subscribers"], 1);
        assert_eq!(next_push(&client), ("odd".into(), data));
    }
    // And through the batch form of the API.
    let body = format!("{{\"topic\":\"odd\",\"data\":{}}}\n", unusual_values()[0]);
    let (status, reply) = http(server.api, "POST", "/publish", &body, &[]);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        next_push(&client),
        ("odd".into(), unusual_values()[0].clone())
    );
    client.stop();
}

#[test]
fn the_binary_prints_unusual_data_verbatim() {
    let server = TestServer::start();
    for json_mode in [false, true] {
        let child = Command::new(env!("CARGO_BIN_EXE_wspush-client"))
            .args(["-r", &server.url(), "-t", "odd", "--count", "3"])
            .args(json_mode.then_some("--json"))
            .args(["--log-level", "info"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Publish once the binary has subscribed.
        let deadline = Instant::now() + WAIT;
        while server.stats()["subscriptions"] != 1 {
            assert!(Instant::now() < deadline, "the binary never subscribed");
            std::thread::sleep(Duration::from_millis(10));
        }
        for data in unusual_values() {
            server.publish("odd", &data);
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<String> = unusual_values()
            .iter()
            .map(|d| match json_mode {
                false => format!("odd {d}"),
                true => format!("{{\"topic\":\"odd\",\"data\":{d},\"offset\":"),
            })
            .collect();
        let printed = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{printed}");
        for (line, want) in lines.iter().zip(&expected) {
            // With --json the stream position follows the data, which must be verbatim.
            assert!(
                line.starts_with(want.as_str()) && (json_mode || line.len() == want.len()),
                "{line:?} vs {want:?}"
            );
        }
        // The next run subscribes afresh.
        let deadline = Instant::now() + WAIT;
        while server.stats()["subscriptions"] != 0 {
            assert!(Instant::now() < deadline, "the binary is still subscribed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_message_that_is_not_json_is_reported_not_dropped() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let fake = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(stream).unwrap();
        let _subscribe = ws.read().unwrap();
        ws.send(tungstenite::Message::text("hello, not JSON"))
            .unwrap();
        ws
    });
    let client = Client::connect(fast_config(url)).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Event::Undecodable { text, error } = client.recv_timeout(left).unwrap() {
            assert_eq!(text, "hello, not JSON");
            assert!(!error.is_empty());
            break;
        }
    }
    drop(fake.join().unwrap());
    client.stop();
}

const SECRET: &str = "client-test-secret-0123456789";

fn private_config() -> Config {
    Config {
        subscribe_secret: Some(SECRET.to_owned()),
        private_prefix: Some("private-".to_owned()),
        ..test_config()
    }
}

/// A claim for `topic` that expires `ttl_secs` from now (0: already expired, the server has no
/// leeway).
fn topic_claim(topic: &str, ttl_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now.saturating_add_signed(ttl_secs);
    claim::sign(
        &HmacSha256::new(SECRET.as_bytes()),
        &Scope::Topic(topic.to_owned()),
        exp,
    )
}

/// The next event that is neither a push nor a (dis)connect.
fn next_notice(client: &Client) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left).expect("no event in time") {
            Event::Push { .. } | Event::Connected | Event::Disconnected { .. } => continue,
            other => return other,
        }
    }
}

#[test]
fn claims_subscribe_to_private_topics_and_expiry_is_reported() {
    let server = TestServer::with(private_config());
    let mut cfg = fast_config(server.url());
    cfg.topics = vec!["private-42".into(), "news".into()];
    // Expires within two seconds: the server ends the subscription then.
    cfg.claims = vec![topic_claim("private-42", 2)];
    let client = Client::connect(cfg).unwrap();
    wait_connected(&client);
    assert_eq!(server.publish("private-42", "1")["subscribers"], 1);
    assert_eq!(next_push(&client), ("private-42".into(), "1".into()));
    assert_eq!(
        next_notice(&client),
        Event::Unsubscribed {
            topics: vec!["private-42".into()],
            reason: "claim expired".into()
        }
    );
    assert_eq!(server.publish("private-42", "2")["subscribers"], 0);
    server.publish("news", "3");
    assert_eq!(next_push(&client), ("news".into(), "3".into()));
    client.stop();
}

#[test]
fn a_refused_claim_is_reported_and_the_other_topics_still_subscribe() {
    let server = TestServer::with(private_config());
    let mut cfg = fast_config(server.url());
    cfg.topics = vec!["private-7".into(), "news".into()];
    cfg.claims = vec![topic_claim("private-7", -10)];
    let client = Client::connect(cfg).unwrap();
    match next_notice(&client) {
        Event::SubscribeRefused {
            topic,
            reason,
            error,
        } => {
            assert_eq!(
                (topic.as_str(), reason.as_str()),
                ("private-7", "claim_expired")
            );
            assert!(error.contains("private-7"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    wait_connected(&client);
    assert_eq!(server.publish("news", "1")["subscribers"], 1);
    assert_eq!(next_push(&client), ("news".into(), "1".into()));
    assert_eq!(server.stats()["subscriptions"], 1);
    // A fresh claim and a subscribe bring the private topic in.
    client.set_claims(vec![topic_claim("private-7", 600)]);
    client.subscribe("private-7");
    let deadline = Instant::now() + WAIT;
    while server.stats()["subscriptions"] != 2 {
        assert!(Instant::now() < deadline, "private-7 never subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.publish("private-7", "2");
    assert_eq!(next_push(&client), ("private-7".into(), "2".into()));
    client.stop();
}

#[test]
fn the_binary_sends_claims_and_logs_refusals() {
    let server = TestServer::with(private_config());
    let (good, expired) = (topic_claim("private-1", 600), topic_claim("private-2", -10));
    let child = Command::new(env!("CARGO_BIN_EXE_wspush-client"))
        .args(["-r", &server.url(), "--count", "1", "--log-level", "warn"])
        .args(["-t", "private-1", "-t", "private-2"])
        .args(["--claim", &good, "--claim", &expired])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while server.stats()["subscriptions"] != 1 {
        assert!(Instant::now() < deadline, "the binary never subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.publish("private-1", r#"{"ok":true}"#);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "private-1 {\"ok\":true}\n"
    );
    assert!(
        stderr.contains("private-2") && stderr.contains("claim_expired"),
        "{stderr}"
    );
}

// The recovery protocol against a hand-written server: its acks, pushes and losses are exactly
// what docs say the server sends, so the client's side is checked alone.

/// A fake server's end of one connection.
struct FakeConn(tungstenite::WebSocket<std::net::TcpStream>);

impl FakeConn {
    fn accept(listener: &TcpListener) -> FakeConn {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        FakeConn(tungstenite::accept(stream).unwrap())
    }

    /// The client's next JSON message, pings skipped.
    fn read(&mut self) -> serde_json::Value {
        loop {
            if let tungstenite::Message::Text(text) = self.0.read().unwrap() {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message["cmd"] != "ping" {
                    return message;
                }
            }
        }
    }

    fn send(&mut self, message: serde_json::Value) {
        self.0
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
    }

    fn push(&mut self, topic: &str, offset: u64, epoch: &str) {
        self.send(json!({"cmd": "push", "topic": topic, "data": offset, "offset": offset, "epoch": epoch}));
    }

    /// Closes as a server shutting down does (1001).
    fn go_away(mut self) {
        use tungstenite::protocol::CloseFrame;
        use tungstenite::protocol::frame::coding::CloseCode;
        let _ = self.0.close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "restarting".into(),
        }));
        let _ = self.0.flush();
    }
}

/// A listener for a fake server and a client config for it: no heartbeat within a test, and a
/// quick reconnect.
fn fake_server(topics: &[&str]) -> (TcpListener, ClientConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let mut config = ClientConfig {
        ping_interval: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::new(url)
    };
    config.topics = topics.iter().map(|t| t.to_string()).collect();
    (listener, config)
}

/// The next push or lost continuity, as `(topic, offset)` or the event itself.
#[derive(Debug, PartialEq)]
enum Seen {
    Push(String, Option<u64>, Option<String>),
    Lost(Event),
}

fn next_seen(client: &Client) -> Seen {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left).expect("nothing in time") {
            Event::Push {
                topic,
                offset,
                epoch,
                data,
            } => {
                if let Some(offset) = offset {
                    assert_eq!(data, offset.to_string(), "the fake's data is the offset");
                }
                return Seen::Push(topic, offset, epoch);
            }
            lost @ Event::ContinuityLost { .. } => return Seen::Lost(lost),
            Event::Connected | Event::Disconnected { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn pushed(topic: &str, offset: u64, epoch: &str) -> Seen {
    Seen::Push(topic.into(), Some(offset), Some(epoch.into()))
}

fn lost(topic: &str, epoch: &str, from: u64, reason: ContinuityReason) -> Seen {
    Seen::Lost(Event::ContinuityLost {
        topic: topic.into(),
        epoch: epoch.into(),
        from,
        reason,
    })
}

#[test]
fn a_reconnect_resumes_every_topic_after_the_last_offset_seen() {
    let (listener, config) = fake_server(&["a", "b", "c", "old"]);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    let subscribe = conn.read();
    assert_eq!(subscribe["topics"], json!(["a", "b", "c", "old"]));
    assert!(
        subscribe.get("since").is_none() && subscribe.get("recent").is_none(),
        "{subscribe}"
    );
    // "old" has no stream (as from a server without history): it is never resumed.
    conn.send(
        json!({"cmd": "subscribed", "topics": ["a", "b", "c", "old"], "streams": {
            "a": {"epoch": "E1", "offset": 5},
            "b": {"epoch": "E2", "offset": 0},
            "c": {"epoch": "E3", "offset": 9},
        }}),
    );
    conn.push("a", 6, "E1");
    conn.push("a", 7, "E1");
    conn.push("b", 1, "E2");
    conn.send(json!({"cmd": "push", "topic": "old", "data": 1}));
    assert_eq!(next_seen(&client), pushed("a", 6, "E1"));
    assert_eq!(next_seen(&client), pushed("a", 7, "E1"));
    assert_eq!(next_seen(&client), pushed("b", 1, "E2"));
    assert_eq!(next_seen(&client), Seen::Push("old".into(), None, None));
    conn.go_away();

    let mut conn = FakeConn::accept(&listener);
    let subscribe = conn.read();
    assert_eq!(subscribe["topics"], json!(["a", "b", "c", "old"]));
    assert_eq!(
        subscribe["since"],
        json!({
            "a": {"offset": 7, "epoch": "E1"},
            "b": {"offset": 1, "epoch": "E2"},
            // Nothing pushed: resumed after the acknowledged offset.
            "c": {"offset": 9, "epoch": "E3"},
        })
    );
    assert!(subscribe.get("recent").is_none(), "{subscribe}");
    conn.send(
        json!({"cmd": "subscribed", "topics": ["a", "b", "c", "old"], "streams": {
            "a": {"epoch": "E1", "offset": 9, "recovered": true},
            "b": {"epoch": "E2", "offset": 1, "recovered": true},
            "c": {"epoch": "E3", "offset": 9, "recovered": true},
        }}),
    );
    // The replay, overlapping what was received: only new offsets are handed over.
    for offset in [7, 8, 8, 9, 6, 9, 10] {
        conn.push("a", offset, "E1");
    }
    for offset in [8, 9, 10] {
        assert_eq!(next_seen(&client), pushed("a", offset, "E1"));
    }
    conn.go_away();

    // And the third connection resumes from there.
    let mut conn = FakeConn::accept(&listener);
    assert_eq!(
        conn.read()["since"]["a"],
        json!({"offset": 10, "epoch": "E1"})
    );
    client.stop();
}

#[test]
fn an_unrecovered_resume_is_reported_with_its_reason() {
    let (listener, config) = fake_server(&["a", "b"]);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    conn.read();
    conn.send(
        json!({"cmd": "subscribed", "topics": ["a", "b"], "streams": {
            "a": {"epoch": "E1", "offset": 0},
            "b": {"epoch": "E2", "offset": 0},
        }}),
    );
    conn.push("a", 1, "E1");
    conn.push("b", 1, "E2");
    assert_eq!(next_seen(&client), pushed("a", 1, "E1"));
    assert_eq!(next_seen(&client), pushed("b", 1, "E2"));
    conn.go_away();

    let mut conn = FakeConn::accept(&listener);
    assert_eq!(
        conn.read()["since"],
        json!({"a": {"offset": 1, "epoch": "E1"}, "b": {"offset": 1, "epoch": "E2"}})
    );
    // a: the server restarted (a new epoch); b: its history starts at 5.
    conn.send(
        json!({"cmd": "subscribed", "topics": ["a", "b"], "streams": {
            "a": {"epoch": "N1", "offset": 3, "recovered": false, "from": 4},
            "b": {"epoch": "E2", "offset": 6, "recovered": false, "from": 5},
        }}),
    );
    assert_eq!(
        next_seen(&client),
        lost("a", "N1", 4, ContinuityReason::EpochChanged)
    );
    assert_eq!(
        next_seen(&client),
        lost("b", "E2", 5, ContinuityReason::HistoryTooShort)
    );
    conn.push("b", 4, "E2"); // before `from`: never handed over
    conn.push("b", 5, "E2");
    conn.push("b", 6, "E2");
    conn.push("a", 4, "N1");
    assert_eq!(next_seen(&client), pushed("b", 5, "E2"));
    assert_eq!(next_seen(&client), pushed("b", 6, "E2"));
    assert_eq!(next_seen(&client), pushed("a", 4, "N1"));
    conn.go_away();

    let mut conn = FakeConn::accept(&listener);
    assert_eq!(
        conn.read()["since"],
        json!({"a": {"offset": 4, "epoch": "N1"}, "b": {"offset": 6, "epoch": "E2"}})
    );
    client.stop();
}

#[test]
fn the_servers_continuity_lost_is_reported_and_delivery_goes_on_from_there() {
    let (listener, config) = fake_server(&["a"]);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    conn.read();
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {"a": {"epoch": "E", "offset": 0}}}));
    conn.push("a", 1, "E");
    conn.send(json!({"cmd": "continuity_lost", "topic": "a", "epoch": "E", "from": 5}));
    conn.push("a", 5, "E");
    conn.push("a", 6, "E");
    assert_eq!(next_seen(&client), pushed("a", 1, "E"));
    assert_eq!(
        next_seen(&client),
        lost("a", "E", 5, ContinuityReason::ServerReported)
    );
    assert_eq!(next_seen(&client), pushed("a", 5, "E"));
    assert_eq!(next_seen(&client), pushed("a", 6, "E"));
    // The jump to 5 was announced: no resubscribe went out before this one.
    client.subscribe("marker");
    assert_eq!(
        conn.read(),
        json!({"cmd": "subscribe", "topics": ["marker"]})
    );
    client.stop();
}

#[test]
fn an_offset_jump_resubscribes_with_since_and_hands_over_each_offset_once() {
    let (listener, config) = fake_server(&["a", "b"]);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    conn.read();
    conn.send(
        json!({"cmd": "subscribed", "topics": ["a", "b"], "streams": {
            "a": {"epoch": "E", "offset": 10},
            "b": {"epoch": "F", "offset": 0},
        }}),
    );
    conn.push("a", 11, "E");
    conn.push("a", 14, "E"); // 12 and 13 dropped by the server
    conn.push("a", 15, "E"); // still the old subscription: dropped, the replay brings it
    conn.push("b", 1, "F"); // other topics are not affected
    assert_eq!(next_seen(&client), pushed("a", 11, "E"));
    assert_eq!(
        next_seen(&client),
        lost("a", "E", 12, ContinuityReason::OffsetJump { received: 14 })
    );
    assert_eq!(next_seen(&client), pushed("b", 1, "F"));
    assert_eq!(conn.read(), json!({"cmd": "unsubscribe", "topics": ["a"]}));
    assert_eq!(
        conn.read(),
        json!({"cmd": "subscribe", "topics": ["a"], "since": {"a": {"offset": 11, "epoch": "E"}}})
    );
    conn.push("a", 16, "E"); // in flight before the server saw the unsubscribe
    conn.send(json!({"cmd": "unsubscribed", "topics": ["a"]}));
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {
        "a": {"epoch": "E", "offset": 16, "recovered": true},
    }}));
    for offset in [12, 13, 11, 14, 15, 13, 16, 17] {
        conn.push("a", offset, "E");
    }
    for offset in [12, 13, 14, 15, 16, 17] {
        assert_eq!(next_seen(&client), pushed("a", offset, "E"));
    }
    // Nothing else came or went out in between.
    client.subscribe("marker");
    assert_eq!(
        conn.read(),
        json!({"cmd": "subscribe", "topics": ["marker"]})
    );
    conn.push("b", 2, "F");
    assert_eq!(next_seen(&client), pushed("b", 2, "F"));
    client.stop();
}

#[test]
fn an_offset_jump_the_history_cannot_fill_is_reported_again_with_where_it_continues() {
    let (listener, config) = fake_server(&["a"]);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    conn.read();
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {"a": {"epoch": "E", "offset": 1}}}));
    conn.push("a", 2, "E");
    conn.push("a", 9, "E");
    assert_eq!(next_seen(&client), pushed("a", 2, "E"));
    assert_eq!(
        next_seen(&client),
        lost("a", "E", 3, ContinuityReason::OffsetJump { received: 9 })
    );
    assert_eq!(conn.read()["cmd"], "unsubscribe");
    assert_eq!(
        conn.read()["since"],
        json!({"a": {"offset": 2, "epoch": "E"}})
    );
    conn.send(json!({"cmd": "unsubscribed", "topics": ["a"]}));
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {
        "a": {"epoch": "E", "offset": 9, "recovered": false, "from": 7},
    }}));
    conn.push("a", 7, "E");
    assert_eq!(
        next_seen(&client),
        lost("a", "E", 7, ContinuityReason::HistoryTooShort)
    );
    assert_eq!(next_seen(&client), pushed("a", 7, "E"));
    client.stop();
}

#[test]
fn recent_goes_with_the_first_subscribe_only() {
    let (listener, mut config) = fake_server(&["a"]);
    config.recent = Some(3);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    let subscribe = conn.read();
    assert_eq!(subscribe["recent"], 3, "{subscribe}");
    assert!(subscribe.get("since").is_none(), "{subscribe}");
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {
        "a": {"epoch": "E", "offset": 10, "from": 8},
    }}));
    for offset in [8, 9, 10, 11] {
        conn.push("a", offset, "E");
        assert_eq!(next_seen(&client), pushed("a", offset, "E"));
    }
    // A topic added later gets neither.
    client.subscribe("b");
    assert_eq!(conn.read(), json!({"cmd": "subscribe", "topics": ["b"]}));
    conn.go_away();

    let mut conn = FakeConn::accept(&listener);
    let subscribe = conn.read();
    assert!(subscribe.get("recent").is_none(), "{subscribe}");
    assert_eq!(
        subscribe["since"],
        json!({"a": {"offset": 11, "epoch": "E"}})
    );
    client.stop();
}

#[test]
fn recent_is_sent_again_when_the_first_subscribe_was_never_acknowledged() {
    let (listener, mut config) = fake_server(&["a"]);
    config.recent = Some(2);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    assert_eq!(conn.read()["recent"], 2);
    conn.go_away();
    let mut conn = FakeConn::accept(&listener);
    assert_eq!(conn.read()["recent"], 2);
    client.stop();
}

#[test]
fn the_binary_prints_positions_with_json_and_logs_lost_continuity() {
    let (listener, _) = fake_server(&["a"]);
    let addr = listener.local_addr().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_wspush-client"))
        .args(["-r", &addr.to_string(), "-t", "a", "--json", "--count", "3"])
        .args(["--log-level", "warn", "--recent", "5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = FakeConn::accept(&listener);
    assert_eq!(conn.read()["recent"], 5);
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {"a": {"epoch": "E", "offset": 0}}}));
    conn.push("a", 1, "E");
    conn.send(json!({"cmd": "continuity_lost", "topic": "a", "epoch": "E", "from": 4}));
    conn.push("a", 4, "E");
    conn.send(json!({"cmd": "push", "topic": "a", "data": "no position"}));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"topic\":\"a\",\"data\":1,\"offset\":1,\"epoch\":\"E\"}\n\
         {\"topic\":\"a\",\"data\":4,\"offset\":4,\"epoch\":\"E\"}\n\
         {\"topic\":\"a\",\"data\":\"no position\"}\n"
    );
    assert!(
        stderr.contains("continuity lost on a (epoch E)")
            && stderr.contains("from offset 4")
            && stderr.contains("reported by the server"),
        "{stderr}"
    );
}

#[test]
fn a_topic_unsubscribed_and_subscribed_again_starts_live() {
    let (listener, config) = fake_server(&["a"]);
    let client = Client::connect(config).unwrap();
    let mut conn = FakeConn::accept(&listener);
    conn.read();
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {"a": {"epoch": "E", "offset": 0}}}));
    conn.push("a", 1, "E");
    assert_eq!(next_seen(&client), pushed("a", 1, "E"));
    client.unsubscribe("a");
    assert_eq!(conn.read(), json!({"cmd": "unsubscribe", "topics": ["a"]}));
    conn.push("a", 3, "E"); // in flight: handed over, but no position is kept
    conn.send(json!({"cmd": "unsubscribed", "topics": ["a"]}));
    assert_eq!(next_seen(&client), pushed("a", 3, "E"));
    client.subscribe("a");
    assert_eq!(conn.read(), json!({"cmd": "subscribe", "topics": ["a"]}));
    conn.send(json!({"cmd": "subscribed", "topics": ["a"], "streams": {"a": {"epoch": "E", "offset": 7}}}));
    conn.push("a", 8, "E");
    assert_eq!(next_seen(&client), pushed("a", 8, "E"));
    conn.go_away();
    let mut conn = FakeConn::accept(&listener);
    assert_eq!(
        conn.read()["since"],
        json!({"a": {"offset": 8, "epoch": "E"}})
    );
    client.stop();
}
