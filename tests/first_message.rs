//! The client token in the first message (`{"cmd":"auth","token":..}`) instead of the URL,
//! against the real server: what an unauthenticated session may and may not get, the 1008
//! closes, the upgrade-time token still working, and the client library's `TokenIn::Message`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;
use wspush::client::{self, ClientConfig, Event, TokenIn};

const TOKEN: &str = "s3cret-t0ken";

fn token_config() -> wspush::Config {
    let mut config = test_config();
    config.client_token = Some(TOKEN.into());
    config
}

fn token_server() -> TestServer {
    TestServer::with(token_config())
}

fn auth(token: &str) -> Value {
    json!({"cmd": "auth", "token": token})
}

/// A masked text frame of `value`.
fn text(value: &Value) -> Vec<u8> {
    masked_frame(0x81, value.to_string().as_bytes())
}

/// The next raw frame as JSON (a text frame is expected).
fn raw_json(stream: &mut TcpStream) -> Value {
    let (opcode, payload) = read_raw_frame(stream);
    assert_eq!(
        opcode, 1,
        "expected a text frame, got {opcode}: {payload:?}"
    );
    serde_json::from_slice(&payload).expect("server sent JSON")
}

/// Reads raw frames up to the close frame: (code, reason). Text frames before it fail.
fn raw_close(stream: &mut TcpStream) -> (u16, String) {
    loop {
        match read_raw_frame(stream) {
            (8, payload) => {
                return (
                    close_code(&payload),
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                );
            }
            (1, payload) => panic!(
                "a message before the close: {}",
                String::from_utf8_lossy(&payload)
            ),
            _ => continue,
        }
    }
}

/// A tungstenite client upgraded to `/ws` with no token at all.
fn unauthenticated(server: &TestServer) -> Client {
    connect(server)
}

#[test]
fn the_right_token_first_then_subscribe_then_a_publish_arrives() {
    let server = token_server();
    let mut ws = unauthenticated(&server);
    send_json(&mut ws, auth(TOKEN));
    assert_eq!(next_json(&mut ws), json!({"cmd": "authenticated"}));
    send_json(&mut ws, json!({"cmd": "subscribe", "topics": ["news"]}));
    assert_eq!(next_json(&mut ws)["cmd"], "subscribed");
    assert_eq!(server.publish("news", r#"{"n":1}"#)["subscribers"], 1);
    let push = next_json(&mut ws);
    assert_eq!(
        (&push["cmd"], &push["topic"], &push["data"]),
        (&json!("push"), &json!("news"), &json!({"n": 1})),
        "{push}"
    );
    // An ordinary session now: ping works, a second auth is an error reply, nothing closes.
    send_json(&mut ws, auth(TOKEN));
    let reply = next_json(&mut ws);
    assert_eq!(reply["cmd"], "error", "{reply}");
    assert_nothing_pending(&mut ws);
    assert_eq!(server.stats()["auth_failures"], 0);
}

#[test]
fn auth_and_subscribe_pipelined_in_one_write_work() {
    let server = token_server();
    let mut stream = raw_upgrade(&server);
    let mut both = text(&auth(TOKEN));
    both.extend(text(&json!({"cmd": "subscribe", "topics": ["news"]})));
    stream.write_all(&both).unwrap();
    assert_eq!(raw_json(&mut stream), json!({"cmd": "authenticated"}));
    assert_eq!(raw_json(&mut stream)["cmd"], "subscribed");
    assert_eq!(server.publish("news", "2")["subscribers"], 1);
    let push = raw_json(&mut stream);
    assert_eq!(
        (&push["cmd"], &push["topic"], &push["data"]),
        (&json!("push"), &json!("news"), &json!(2)),
        "{push}"
    );
}

#[test]
fn nothing_is_delivered_before_the_token() {
    let mut config = token_config();
    // The demo tick publishes all along, to a topic nobody may subscribe before the token.
    config.tick = Some(("test-topic".into(), Duration::from_millis(20)));
    let server = TestServer::with(config);
    let mut waiting = raw_upgrade(&server);
    // A publish while it waits reaches nobody.
    assert_eq!(server.publish("test-topic", "1")["subscribers"], 0);
    // Let ticks pass (each proven by an authenticated subscriber receiving it).
    let mut witness = unauthenticated(&server);
    send_json(&mut witness, auth(TOKEN));
    assert_eq!(next_json(&mut witness)["cmd"], "authenticated");
    send_json(&mut witness, json!({"topics": ["test-topic"]}));
    assert_eq!(next_json(&mut witness)["cmd"], "subscribed");
    for _ in 0..3 {
        assert_eq!(next_json(&mut witness)["cmd"], "push");
    }
    // Now the waiting client authenticates and pings: the first frames it ever receives are
    // the answers to those, so nothing was queued for it before.
    let mut both = text(&auth(TOKEN));
    both.extend(text(&json!({"cmd": "ping"})));
    waiting.write_all(&both).unwrap();
    assert_eq!(raw_json(&mut waiting), json!({"cmd": "authenticated"}));
    assert_eq!(raw_json(&mut waiting), json!({"cmd": "pong"}));
}

#[test]
fn a_subscribe_before_the_token_closes_with_1008_and_subscribes_nothing() {
    let server = token_server();
    for first in [
        json!({"cmd": "subscribe", "topics": ["news"]}),
        json!({"topics": ["news"]}),
        json!({"cmd": "ping"}),
    ] {
        let mut stream = raw_upgrade(&server);
        // The token right behind it comes too late: the connection is closing.
        let mut both = text(&first);
        both.extend(text(&auth(TOKEN)));
        stream.write_all(&both).unwrap();
        assert_eq!(
            raw_close(&mut stream),
            (1008, "authentication required".into()),
            "{first}"
        );
        assert_eq!(server.publish("news", "1")["subscribers"], 0);
    }
    // Binary counts as "anything else" too (not 1003).
    let mut stream = raw_upgrade(&server);
    stream
        .write_all(&masked_frame(0x82, TOKEN.as_bytes()))
        .unwrap();
    assert_eq!(
        raw_close(&mut stream),
        (1008, "authentication required".into())
    );
    assert_eq!(server.stats()["auth_failures"], 4);
}

#[test]
fn a_wrong_token_closes_with_1008() {
    let server = token_server();
    let mut ws = unauthenticated(&server);
    send_json(&mut ws, auth("s3cret-t0keN"));
    match ws.read().expect("read") {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason.as_str(), "wrong client token");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    assert_eq!(server.stats()["auth_failures"], 1);
}

#[test]
fn no_token_within_the_handshake_timeout_closes_with_1008() {
    let mut config = token_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::with(config);
    let started = Instant::now();
    let mut stream = raw_upgrade(&server);
    // A protocol Ping meanwhile is answered, and does not postpone the deadline.
    stream.write_all(&masked_frame(0x89, b"hi")).unwrap();
    assert_eq!(read_raw_frame(&mut stream), (0xA, b"hi".to_vec()));
    assert_eq!(
        raw_close(&mut stream),
        (1008, "authentication timeout".into())
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let stats = server.stats();
    assert_eq!(
        (&stats["auth_failures"], &stats["handshake_timeouts"]),
        (&json!(1), &json!(0))
    );
}

#[test]
fn a_token_at_the_upgrade_is_still_checked_there() {
    let server = token_server();
    let upgrade = |target: &str, header: &str| {
        let mut stream = TcpStream::connect(server.ws).unwrap();
        let good = std::str::from_utf8(HANDSHAKE_REQUEST).unwrap();
        let request = good
            .replacen("GET /ws ", &format!("GET {target} "), 1)
            .replacen("\r\n\r\n", &format!("\r\n{header}\r\n"), 1);
        stream.write_all(request.as_bytes()).unwrap();
        let (status, _) = parse_response(&read_until_closed(&mut stream));
        status
    };
    assert_eq!(upgrade("/ws?token=wrong", ""), 401);
    assert_eq!(upgrade("/ws", "Authorization: Bearer wrong\r\n"), 401);
    // The right token in the URL: an ordinary session at once, no auth message needed.
    let stream = TcpStream::connect(server.ws).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let url = format!("ws://{}/ws?token={TOKEN}", server.ws);
    let (mut ws, _) = tungstenite::client(url, stream).expect("handshake");
    send_json(&mut ws, json!({"topics": ["news"]}));
    assert_eq!(next_json(&mut ws)["cmd"], "subscribed");
    server.publish("news", "3");
    assert_eq!(next_json(&mut ws)["data"], 3);
    // Authenticated already: an auth now is an error reply, not a close.
    send_json(&mut ws, auth(TOKEN));
    assert_eq!(next_json(&mut ws)["cmd"], "error");
    assert_nothing_pending(&mut ws);
    assert_eq!(server.stats()["auth_failures"], 0);
}

#[test]
fn without_a_client_token_auth_is_an_error_reply() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    send_json(&mut ws, auth("anything"));
    let reply = next_json(&mut ws);
    assert_eq!(reply["cmd"], "error", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("no authentication expected")),
        "{reply}"
    );
    send_json(&mut ws, json!({"topics": ["news"]}));
    assert_eq!(next_json(&mut ws)["cmd"], "subscribed");
}

fn client_config(server: &TestServer, token: &str, token_in: TokenIn) -> ClientConfig {
    ClientConfig {
        topics: vec!["news".into()],
        token: Some(token.into()),
        token_in,
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        ..ClientConfig::new(server.url())
    }
}

/// Waits for `want` among the client's events (bounded by the safety timeout).
fn wait_for(client: &client::Client, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + SAFETY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = client.recv_timeout(left).expect("no such event in time");
        if want(&event) {
            return event;
        }
    }
}

#[test]
fn the_client_library_sends_the_token_in_either_place() {
    let server = token_server();
    for token_in in [TokenIn::Message, TokenIn::Header] {
        let client = client::Client::connect(client_config(&server, TOKEN, token_in)).unwrap();
        wait_for(&client, |e| *e == Event::Connected);
        assert_eq!(server.publish("news", "\"hi\"")["subscribers"], 1);
        let push = wait_for(&client, |e| matches!(e, Event::Push { .. }));
        assert!(
            matches!(&push, Event::Push { topic, data, .. } if topic == "news" && data == "\"hi\""),
            "{token_in:?}: {push:?}"
        );
        client.stop();
    }
    assert_eq!(server.stats()["auth_failures"], 0);
}

#[test]
fn the_client_library_reports_a_wrong_token_in_the_message() {
    let server = token_server();
    let client =
        client::Client::connect(client_config(&server, "wrong", TokenIn::Message)).unwrap();
    let event = wait_for(&client, |e| matches!(e, Event::Disconnected { .. }));
    match event {
        Event::Disconnected { reason, .. } => {
            assert!(reason.contains("1008 wrong client token"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    client.stop();
    // A token that cannot be a header value is refused before connecting.
    assert!(matches!(
        client::Client::connect(client_config(&server, "a\r\nb", TokenIn::Header)),
        Err(client::ClientError::InvalidToken)
    ));
}
