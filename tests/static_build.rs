//! A static build, run the way a small host runs it: `scripts/static.sh test` builds the musl
//! binaries and points `WSPUSH_STATIC_BIN` at one of them (and `WSPUSH_STATIC_RUNNER` at
//! `qemu-aarch64-static` for the aarch64 build). A native client must get the demo tick and an
//! API publish from it. Ignored by default: it needs those binaries.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, listening_addrs, start_until_listening};
use serde_json::{Value, json};
use tungstenite::Message;

#[test]
#[ignore = "needs a static build: scripts/static.sh test"]
fn static_binary_serves_the_tick_and_an_api_publish() {
    let bin = std::env::var("WSPUSH_STATIC_BIN").expect("WSPUSH_STATIC_BIN: the binary to run");
    let mut command = match std::env::var("WSPUSH_STATIC_RUNNER") {
        Ok(runner) if !runner.is_empty() => {
            let mut c = Command::new(runner);
            c.arg(&bin);
            c
        }
        _ => Command::new(&bin),
    };
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--tick-interval",
        "1s",
    ]);
    let (_server, _stderr, ready) = start_until_listening(&mut command);
    let (ws_addr, api) = listening_addrs(&ready);
    let api = api.expect("an API listener");

    let stream = TcpStream::connect(ws_addr).expect("connect");
    // Emulated, the server is slower than native: generous, but bounded.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let (mut ws, _) = tungstenite::client(format!("ws://{ws_addr}/ws"), stream).expect("handshake");
    let subscribe = json!({"topics": ["test-topic", "native"]}).to_string();
    ws.send(Message::text(subscribe)).expect("subscribe");
    let mut next = || -> Value {
        loop {
            match ws.read().expect("read") {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    };
    assert_eq!(next()["cmd"], "subscribed");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_tick = false;
    let mut saw_publish = false;
    let mut published = false;
    while !(saw_tick && saw_publish) {
        assert!(
            Instant::now() < deadline,
            "tick {saw_tick}, publish {saw_publish}"
        );
        if saw_tick && !published {
            let (status, body) = http(
                api,
                "POST",
                "/publish?topic=native",
                r#"{"from":"api"}"#,
                &[],
            );
            assert_eq!(status, 200, "{body}");
            published = true;
        }
        let push = next();
        assert_eq!(push["cmd"], "push", "{push}");
        match push["topic"].as_str() {
            Some("test-topic") => {
                assert_eq!(push["data"], "publish msg");
                saw_tick = true;
            }
            Some("native") => {
                assert_eq!(push["data"], json!({"from": "api"}));
                saw_publish = true;
            }
            _ => panic!("push on an unexpected topic: {push}"),
        }
    }
}
