//! The server, end to end: real sockets on 127.0.0.1:0, real WebSocket clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

/// A message as a seed client reads it: without the positions history adds (`offset` and
/// `epoch` of a push, `streams` of an ack; tests/recovery.rs checks those).
fn seed_fields(mut message: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = message.as_object_mut() {
        for extra in ["offset", "epoch", "streams"] {
            fields.remove(extra);
        }
    }
    message
}

#[test]
fn subscribe_then_api_publish_pushes_to_the_subscriber() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["news"]);
    let reply = server.publish("news", r#"{"headline":"hi","n":1}"#);
    assert_eq!(reply["subscribers"], 1);
    let push = next_json(&mut ws);
    assert_eq!(
        seed_fields(push),
        json!({"cmd":"push","topic":"news","data":{"headline":"hi","n":1}})
    );
}

#[test]
fn publish_reaches_exactly_the_subscribers_of_the_topic() {
    let server = TestServer::start();
    let mut a1 = subscriber(&server, &["a"]);
    let mut a2 = subscriber(&server, &["a", "b"]);
    let mut b = subscriber(&server, &["b"]);
    assert_eq!(server.publish("a", "1")["subscribers"], 2);
    assert_eq!(server.publish("c", "3")["subscribers"], 0);
    assert_eq!(next_json(&mut a1)["data"], 1);
    assert_eq!(next_json(&mut a2)["data"], 1);
    assert_nothing_pending(&mut b);
    assert_eq!(server.publish("b", "2")["subscribers"], 2);
    assert_eq!(
        seed_fields(next_json(&mut a2)),
        json!({"cmd":"push","topic":"b","data":2})
    );
    assert_eq!(next_json(&mut b)["data"], 2);
    assert_nothing_pending(&mut a1);
}

#[test]
fn several_topics_in_order() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["x", "y"]);
    for i in 0..50 {
        server.publish(if i % 2 == 0 { "x" } else { "y" }, &i.to_string());
    }
    for i in 0..50 {
        let push = next_json(&mut ws);
        assert_eq!(push["data"], i);
        assert_eq!(push["topic"], if i % 2 == 0 { "x" } else { "y" });
    }
}

#[test]
fn app_ping_gets_pong_and_protocol_ping_gets_pong() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["t"]);
    send_json(&mut ws, json!({"cmd": "ping", "data": null}));
    assert_eq!(next_json(&mut ws), json!({"cmd": "pong"}));
    ws.send(Message::Ping(b"hello"[..].into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"hello"),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[test]
fn unsubscribe_stops_pushes() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["a", "b"]);
    send_json(&mut ws, json!({"cmd": "unsubscribe", "topics": ["a"]}));
    assert_eq!(
        next_json(&mut ws),
        json!({"cmd": "unsubscribed", "topics": ["a"]})
    );
    assert_eq!(server.publish("a", "1")["subscribers"], 0);
    assert_eq!(server.publish("b", "2")["subscribers"], 1);
    assert_eq!(next_json(&mut ws)["topic"], "b");
    let stats = server.stats();
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["topics"], 1);
}

#[test]
fn subscribe_command_form_and_later_additions() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["a"]);
    send_json(&mut ws, json!({"cmd": "subscribe", "topics": ["b"]}));
    assert_eq!(
        seed_fields(next_json(&mut ws)),
        json!({"cmd": "subscribed", "topics": ["b"]})
    );
    server.publish("b", "true");
    assert_eq!(next_json(&mut ws)["data"], true);
}

#[test]
fn bad_requests_get_error_replies_and_the_session_survives() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["a"]);
    for bad in [
        "not json",
        r#"{"cmd":"explode"}"#,
        r#"{"topics":["bad topic!"]}"#,
        r#"{"cmd":"subscribe"}"#,
    ] {
        ws.send(Message::text(bad)).unwrap();
        let reply = next_json(&mut ws);
        assert_eq!(reply["cmd"], "error", "{bad}: {reply}");
        assert!(reply["error"].as_str().unwrap().len() > 5);
    }
    server.publish("a", "1");
    assert_eq!(next_json(&mut ws)["data"], 1);
}

#[test]
fn too_many_topics_is_refused() {
    let mut config = test_config();
    config.max_topics_per_connection = 3;
    let server = TestServer::with(config);
    let mut ws = subscriber(&server, &["a", "b"]);
    send_json(&mut ws, json!({"topics": ["c", "d"]}));
    let reply = next_json(&mut ws);
    assert_eq!(reply["cmd"], "error");
    assert_eq!(server.stats()["subscriptions"], 2);
}

#[test]
fn the_tick_arrives() {
    let mut config = test_config();
    config.tick = Some(("test-topic".into(), Duration::from_millis(100)));
    let server = TestServer::with(config);
    let mut ws = subscriber(&server, &["test-topic"]);
    for _ in 0..3 {
        assert_eq!(
            seed_fields(next_json(&mut ws)),
            json!({"cmd":"push","topic":"test-topic","data":"publish msg"})
        );
    }
}

#[test]
fn seed_style_client_works_unchanged() {
    // The seed's Go client: subscribe without a command, ping as {"cmd":"ping","data":null},
    // and read {"cmd":..,"data":..} objects, ignoring the rest.
    let mut config = test_config();
    config.tick = Some(("test-topic".into(), Duration::from_millis(50)));
    let server = TestServer::with(config);
    let mut ws = connect(&server);
    ws.send(Message::text(r#"{"topics":["test-topic"]}"#))
        .unwrap();
    ws.send(Message::text(r#"{"cmd":"ping","data":null}"#))
        .unwrap();
    let (mut pushes, mut pongs) = (0, 0);
    while pushes < 2 || pongs < 1 {
        let msg = next_json(&mut ws);
        match msg["cmd"].as_str() {
            Some("push") => {
                assert_eq!(msg["data"], "publish msg");
                pushes += 1;
            }
            Some("pong") => pongs += 1,
            Some("subscribed") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A client that answers nothing: pinged at the interval, closed at interval + timeout.
#[test]
fn silent_client_is_closed_by_the_heartbeat() {
    let mut config = test_config();
    config.heartbeat_interval = Duration::from_millis(200);
    config.heartbeat_timeout = Duration::from_millis(200);
    let server = TestServer::with(config);
    let mut raw = raw_upgrade(&server);
    raw.write_all(&masked_frame(0x81, br#"{"topics":["a"]}"#))
        .unwrap();
    assert_eq!(read_raw_frame(&mut raw).0, 1, "the ack");
    let started = std::time::Instant::now();
    assert_eq!(read_raw_frame(&mut raw), (9, vec![]), "an empty Ping");
    let (opcode, payload) = read_raw_frame(&mut raw);
    assert_eq!((opcode, close_code(&payload)), (8, 1008));
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "closed early: {:?}",
        started.elapsed()
    );
    assert_eq!(server.stats()["heartbeat_timeouts"], 1);
    assert_eq!(server.stats()["pings_sent"], 1);
}

/// A client with no application heartbeat that answers protocol Pings (as browsers and
/// WebSocket libraries do by themselves) stays connected.
#[test]
fn a_client_answering_protocol_pings_stays_connected() {
    let mut config = test_config();
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_timeout = Duration::from_millis(100);
    let server = TestServer::with(config);
    let mut ws = subscriber(&server, &["a"]);
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = std::time::Instant::now();
    // Reading is all it does; tungstenite answers each Ping with a Pong on its own.
    while started.elapsed() < Duration::from_millis(800) {
        match ws.read() {
            Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(server.stats()["heartbeat_timeouts"], 0);
    assert!(server.stats()["pings_sent"].as_u64() >= Some(3));
}

#[test]
fn pinging_client_stays_connected_past_the_heartbeat_limit() {
    let mut config = test_config();
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_timeout = Duration::from_millis(100);
    let server = TestServer::with(config);
    let mut ws = subscriber(&server, &["a"]);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        send_json(&mut ws, json!({"cmd": "ping"}));
        assert_eq!(next_json(&mut ws)["cmd"], "pong");
        std::thread::sleep(Duration::from_millis(50)); // the client's ping cadence, not a sync
    }
    assert_eq!(server.stats()["heartbeat_timeouts"], 0);
}

#[test]
fn stuck_client_is_closed_while_a_fast_client_gets_everything() {
    let mut config = test_config();
    config.outbound_cap = 64 * 1024;
    let server = TestServer::with(config);
    let mut fast = subscriber(&server, &["flood"]);
    let mut stuck = subscriber(&server, &["flood"]);
    // 4,000 pushes of ~4 KiB (16 MB): far more than the stuck client's kernel buffers hold.
    let payload = format!("\"{}\"", "x".repeat(4000));
    let per_batch = 200;
    let batches = 20;
    let fast_reader = std::thread::spawn(move || {
        for i in 0..per_batch * batches {
            let push = next_json(&mut fast);
            assert_eq!(push["data"].as_str().map(str::len), Some(4000), "push {i}");
        }
        fast
    });
    for _ in 0..batches {
        let body: String = (0..per_batch)
            .map(|_| format!("{{\"topic\":\"flood\",\"data\":{payload}}}\n"))
            .collect();
        let (status, reply) = http(server.api, "POST", "/publish", &body, &[]);
        assert_eq!(status, 200, "{reply}");
    }
    let mut fast = fast_reader.join().expect("the fast client got every push");
    assert_nothing_pending(&mut fast);
    let stats = server.stats();
    assert_eq!(stats["slow_consumer_closes"], 1, "{stats}");
    // The stuck client finds the pushes that fitted, then the 1013 close.
    assert_eq!(expect_close(&mut stuck), CloseCode::Again);
}

#[test]
fn drop_policy_keeps_the_stuck_client_and_counts_drops() {
    let mut config = test_config();
    config.outbound_cap = 32 * 1024;
    config.slow_consumer = wspush::config::SlowConsumerPolicy::Drop;
    let server = TestServer::with(config);
    let _stuck = subscriber(&server, &["flood"]);
    let payload = format!("\"{}\"", "y".repeat(4000));
    for _ in 0..10 {
        let body: String = (0..200)
            .map(|_| format!("{{\"topic\":\"flood\",\"data\":{payload}}}\n"))
            .collect();
        http(server.api, "POST", "/publish", &body, &[]);
    }
    let stats = server.stats();
    assert!(stats["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["slow_consumer_closes"], 0);
    assert_eq!(stats["connections"], 1);
}

#[test]
fn oversize_message_gets_1009() {
    let mut config = test_config();
    config.max_message_size = 1024;
    let server = TestServer::with(config);
    let mut ws = subscriber(&server, &["a"]);
    ws.send(Message::text("x".repeat(2048))).unwrap();
    assert_eq!(expect_close(&mut ws), CloseCode::Size);
}

#[test]
fn huge_length_header_gets_1009_without_allocating() {
    let server = TestServer::start();
    let mut raw = raw_upgrade(&server);
    // A text frame header announcing 2 GB, and nothing after it.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(2u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    raw.write_all(&frame).unwrap();
    let (op, payload) = read_raw_frame(&mut raw);
    assert_eq!((op, close_code(&payload)), (8, 1009));
}

#[test]
fn binary_invalid_utf8_and_unmasked_frames_get_their_close_codes() {
    let server = TestServer::start();
    let cases: [(Vec<u8>, u16); 4] = [
        (masked_frame(0x82, b"\x01\x02"), 1003),
        (masked_frame(0x81, b"\xff\xfe"), 1007),
        (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked
        (masked_frame(0x09, b"fragmented ping"), 1002), // FIN clear on a control frame
    ];
    for (frame, code) in cases {
        let mut raw = raw_upgrade(&server);
        raw.write_all(&frame).unwrap();
        let (op, payload) = read_raw_frame(&mut raw);
        assert_eq!((op, close_code(&payload)), (8, code));
        read_until_closed(&mut raw);
    }
    // The server goes on serving.
    let mut ws = subscriber(&server, &["a"]);
    assert_nothing_pending(&mut ws);
}

#[test]
fn garbage_instead_of_a_handshake_gets_400_and_is_dropped() {
    let server = TestServer::start();
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .unwrap();
    let reply = read_until_closed(&mut s);
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let mut ws = subscriber(&server, &["a"]);
    assert_nothing_pending(&mut ws);
    assert_eq!(server.stats()["handshake_failures"], 1);
}

#[test]
fn handshake_on_another_path_gets_404() {
    let server = TestServer::start();
    let stream = TcpStream::connect(server.ws).unwrap();
    let url = format!("ws://{}/other", server.ws);
    match tungstenite::client(url, stream) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 404)
        }
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn plain_http_on_the_websocket_port_gets_426() {
    let server = TestServer::start();
    let (status, _) = http(server.ws, "GET", "/ws", "", &[]);
    assert_eq!(status, 426);
}

#[test]
fn slow_handshake_is_dropped() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::with(config);
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    let rest = read_until_closed(&mut s);
    assert!(rest.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(server.stats()["handshake_timeouts"], 1);
}

#[test]
fn connection_without_a_subscription_is_dropped_after_the_handshake_timeout() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::with(config);
    let mut ws = connect(&server);
    assert_eq!(expect_close(&mut ws), CloseCode::Policy);
}

#[test]
fn connection_cap_holds_and_frees_up() {
    let mut config = test_config();
    config.max_connections = 3;
    let server = TestServer::with(config);
    let mut clients: Vec<_> = (0..3).map(|_| subscriber(&server, &["a"])).collect();
    let mut extra = TcpStream::connect(server.ws).unwrap();
    extra.write_all(HANDSHAKE_REQUEST).unwrap();
    let reply = read_until_closed_cleanly(&mut extra);
    assert!(
        reply.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(server.stats()["refused_over_capacity"], 1);
    // One leaves; a newcomer gets in.
    let mut leaving = clients.pop().unwrap();
    leaving.close(None).unwrap();
    while leaving.read().is_ok() {}
    let mut newcomer = loop {
        // The server notices the departure on its own loop; retry until it has.
        let s = TcpStream::connect(server.ws).unwrap();
        s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
        if let Ok((ws, _)) = tungstenite::client(server.url(), s) {
            break ws;
        }
    };
    send_json(&mut newcomer, json!({"topics": ["a"]}));
    assert_eq!(next_json(&mut newcomer)["cmd"], "subscribed");
    for c in &mut clients {
        assert_nothing_pending(c);
    }
}

#[test]
fn shutdown_sends_1001_and_run_returns() {
    let server = TestServer::start();
    let mut a = subscriber(&server, &["a"]);
    let mut b = subscriber(&server, &["b"]);
    let handle = server.shutdown_handle();
    handle.shutdown();
    assert_eq!(expect_close(&mut a), CloseCode::Away);
    assert_eq!(expect_close(&mut b), CloseCode::Away);
    server.join().expect("clean exit");
}

#[test]
fn api_errors_are_json_4xx() {
    let server = TestServer::start();
    let cases = [
        ("POST", "/publish?topic=a", "{not json", 400),
        ("POST", "/publish?topic=bad%20topic", "1", 400),
        ("GET", "/publish?topic=a", "", 405),
        ("GET", "/nope", "", 404),
        ("POST", "/publish", "{\"topic\":\"a\"}\n", 400),
    ];
    for (method, path, body, want) in cases {
        let (status, reply) = http(server.api, method, path, body, &[]);
        assert_eq!(status, want, "{method} {path}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON error body");
        assert!(v["error"].is_string());
    }
    let (status, body) = http(server.api, "GET", "/healthz", "", &[]);
    assert_eq!((status, body.contains("ok")), (200, true));
}

#[test]
fn api_batch_publish_and_keep_alive_pipelining() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["a", "b"]);
    let batch = "{\"topic\":\"a\",\"data\":1}\n{\"topic\":\"b\",\"data\":[2]}\n{\"topic\":\"zzz\",\"data\":3}\n";
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let one = |path: &str, body: &str, close: bool| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n{body}",
            publish_content_type(path),
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    let pipelined = one("/publish", batch, false) + &one("/publish?topic=a", "\"x\"", true);
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
    assert!(
        raw.contains(r#""published":3"#) && raw.contains(r#""deliveries":2"#),
        "{raw}"
    );
    assert_eq!(next_json(&mut ws)["data"], 1);
    assert_eq!(next_json(&mut ws)["data"], json!([2]));
    assert_eq!(next_json(&mut ws)["data"], "x");
}

#[test]
fn api_token_is_enforced() {
    let mut config = test_config();
    config.api_token = Some("s3cret".into());
    let server = TestServer::with(config);
    let (status, _) = http(server.api, "POST", "/publish?topic=a", "1", &[]);
    assert_eq!(status, 401);
    let (status, _) = http(
        server.api,
        "POST",
        "/publish?topic=a",
        "1",
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(status, 401);
    let (status, _) = http(
        server.api,
        "POST",
        "/publish?topic=a",
        "1",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
    let (status, _) = http(server.api, "GET", "/healthz", "", &[]);
    assert_eq!(status, 200);
}

#[test]
fn stats_report_the_counters() {
    let server = TestServer::start();
    let mut ws = subscriber(&server, &["a"]);
    server.publish("a", "1");
    next_json(&mut ws);
    let stats = server.stats();
    for key in [
        "connections",
        "topics",
        "subscriptions",
        "publishes",
        "deliveries",
        "bytes_written",
        "dropped",
        "slow_consumer_closes",
        "heartbeat_timeouts",
        "write_timeouts",
        "uptime_secs",
    ] {
        assert!(stats.get(key).is_some(), "missing {key} in {stats}");
    }
    assert_eq!(
        (stats["connections"].as_u64(), stats["publishes"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(stats["deliveries"], 1);
}

#[test]
fn api_expect_continue_chunked_and_limits() {
    let mut config = test_config();
    config.api_max_body = 1024;
    let server = TestServer::with(config);
    let mut ws = subscriber(&server, &["a"]);
    // Expect: 100-continue, as curl sends for larger bodies.
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    s.write_all(
        b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"true").unwrap();
    assert_eq!(next_json(&mut ws)["data"], true);
    // A chunked body.
    s.write_all(b"POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n[1\r\n1\r\n]\r\n0\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 2, "{raw}");
    assert_eq!(next_json(&mut ws)["data"], json!([1]));
    // Too large: body and head.
    let (status, _) = http(
        server.api,
        "POST",
        "/publish?topic=a",
        &"1".repeat(2000),
        &[],
    );
    assert_eq!(status, 413);
    let (status, _) = http(
        server.api,
        "GET",
        "/stats",
        "",
        &[("X-Big", &"b".repeat(10_000))],
    );
    assert_eq!(status, 431);
}
