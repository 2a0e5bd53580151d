//! Hostile and broken clients against the real server: each gets its error or close code, and a
//! well-behaved control client keeps being served throughout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const HANDSHAKE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A subscriber that must keep getting pushes while others misbehave.
fn control_still_served(server: &TestServer, control: &mut Client) {
    let reply = server.publish("control", "42");
    assert_eq!(reply["subscribers"], 1, "{reply}");
    assert_eq!(next_json(control)["data"], 42);
}

fn short_timeouts() -> wspush::Config {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(800);
    config
}

#[test]
fn slowloris_during_the_handshake_is_dropped_on_time() {
    let server = TestServer::with(short_timeouts());
    let mut control = subscriber(&server, &["control"]);
    let mut s = TcpStream::connect(server.ws).unwrap();
    let started = Instant::now();
    // One byte every 100 ms: the request would take 15 s to arrive.
    let mut dropped = false;
    for &b in HANDSHAKE {
        if s.write_all(&[b]).is_err() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // the attacker's pace
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !dropped {
        assert!(read_until_closed(&mut s).is_empty());
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "kept for {:?}",
        started.elapsed()
    );
    control_still_served(&server, &mut control);
}

#[test]
fn slowloris_after_the_handshake_without_subscribing_is_closed() {
    let server = TestServer::with(short_timeouts());
    let mut control = subscriber(&server, &["control"]);
    let mut raw = raw_upgrade(&server);
    let frame = masked_frame(0x81, br#"{"topics":["x"]}"#);
    let started = Instant::now();
    for b in frame.iter().take(frame.len() - 1) {
        if raw.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // the attacker's pace
    }
    let (op, payload) = read_raw_frame(&mut raw);
    assert_eq!((op, close_code(&payload)), (8, 1008));
    control_still_served(&server, &mut control);
}

#[cfg(target_os = "linux")]
#[test]
fn silent_connections_take_no_session_and_are_closed_in_the_end() {
    let mut config = short_timeouts();
    config.max_connections = 3;
    let server = TestServer::with(config);
    let mut control = subscriber(&server, &["control"]);
    // TCP_DEFER_ACCEPT: the kernel holds connections that have sent nothing, so these do not
    // use up the 3 sessions.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(server.ws).unwrap())
        .collect();
    let mut newcomer = subscriber(&server, &["other"]);
    assert_nothing_pending(&mut newcomer);
    control_still_served(&server, &mut control);
    // Past the deferral (the handshake timeout, rounded up to whole seconds) they are accepted:
    // one takes the free session until its handshake timeout, the others get a 503.
    for s in &mut silent {
        let reply = read_until_closed(s);
        assert!(
            reply.is_empty() || reply.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(10),
        "silent clients kept for {held:?}"
    );
    control_still_served(&server, &mut control);
}

#[test]
fn half_finished_handshakes_up_to_the_cap_then_recovery() {
    let mut config = short_timeouts();
    config.max_connections = 20;
    let server = TestServer::with(config);
    let mut control = subscriber(&server, &["control"]);
    let half: Vec<TcpStream> = (0..19)
        .map(|_| {
            let mut s = TcpStream::connect(server.ws).unwrap();
            s.write_all(&HANDSHAKE[..40]).unwrap();
            s
        })
        .collect();
    // Over the cap: refused with 503, cleanly (a reset could destroy the reply).
    let mut extra = TcpStream::connect(server.ws).unwrap();
    extra.write_all(HANDSHAKE).unwrap();
    let reply = read_until_closed_cleanly(&mut extra);
    assert!(
        reply.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    control_still_served(&server, &mut control);
    // The half-open ones time out; then newcomers get in.
    for mut s in half {
        assert!(read_until_closed(&mut s).is_empty());
    }
    let mut newcomer = subscriber(&server, &["other"]);
    assert_nothing_pending(&mut newcomer);
    control_still_served(&server, &mut control);
}

#[test]
fn a_request_split_over_many_segments_still_upgrades() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut s = TcpStream::connect(server.ws).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    for piece in HANDSHAKE.chunks(17) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(5)); // separate segments, separate reads
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455's example key and its accept value.
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    s.write_all(&masked_frame(0x81, br#"{"topics":["split"]}"#))
        .unwrap();
    let (op, payload) = read_raw_frame(&mut s);
    assert_eq!(op, 1);
    assert!(payload.starts_with(br#"{"cmd":"subscribed""#));
    control_still_served(&server, &mut control);
}

#[test]
fn oversized_requests_get_431() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut many_headers = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..1000 {
        many_headers.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(90)).as_bytes());
    }
    // Few headers, but over 16 KiB and not finished.
    let mut one_huge_header = b"GET /ws HTTP/1.1\r\nHost: x\r\nCookie: ".to_vec();
    one_huge_header.extend_from_slice(&[b'c'; 17 * 1024]);
    for req in [many_headers, one_huge_header] {
        let mut s = TcpStream::connect(server.ws).unwrap();
        // The server may answer and close before everything is written.
        let _ = s.write_all(&req);
        let reply = read_until_closed(&mut s);
        assert!(
            reply.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        );
    }
    control_still_served(&server, &mut control);
}

#[test]
fn handshake_with_a_body_after_it_is_rejected() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut s = TcpStream::connect(server.ws).unwrap();
    let mut req = HANDSHAKE.to_vec();
    req.extend_from_slice(b"unexpected body bytes");
    s.write_all(&req).unwrap();
    let reply = read_until_closed(&mut s);
    assert!(
        reply.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    control_still_served(&server, &mut control);
}

#[test]
fn invalid_utf8_split_across_fragments_gets_1007() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut raw = raw_upgrade(&server);
    // "κ" is CE BA; send CE at the end of the first fragment and an invalid continuation next.
    raw.write_all(&masked_frame(0x01, b"abc\xce")).unwrap();
    raw.write_all(&masked_frame(0x80, b"\x41def")).unwrap();
    let (op, payload) = read_raw_frame(&mut raw);
    assert_eq!((op, close_code(&payload)), (8, 1007));
    control_still_served(&server, &mut control);
}

#[test]
fn ten_thousand_topics_and_hostile_names_are_refused() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut ws = subscriber(&server, &["ok"]);
    // 5,000 names fit in one 64 KiB message: refused by the per-connection topic cap.
    let many: Vec<String> = (0..5_000).map(|i| format!("t{i}")).collect();
    send_json(&mut ws, json!({ "topics": many }));
    let reply = next_json(&mut ws);
    assert_eq!(reply["cmd"], "error");
    assert!(
        reply["error"].as_str().unwrap().contains("too many topics"),
        "{reply}"
    );
    for name in [
        "",
        "../../etc/passwd\u{0}",
        "a b",
        "<script>",
        &"x".repeat(10_000),
        "\u{202e}evil",
    ] {
        send_json(&mut ws, json!({ "topics": [name] }));
        let reply = next_json(&mut ws);
        assert_eq!(reply["cmd"], "error", "{name:?}");
        assert!(
            reply.to_string().len() < 400,
            "errors do not echo huge input back"
        );
    }
    let stats = server.stats();
    assert_eq!(
        (stats["topics"].as_u64(), stats["subscriptions"].as_u64()),
        (Some(2), Some(2))
    );
    // 10,000 names do not fit in a message at all: 1009.
    let many: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
    send_json(&mut ws, json!({ "topics": many }));
    assert_eq!(
        expect_close(&mut ws),
        tungstenite::protocol::frame::coding::CloseCode::Size
    );
    control_still_served(&server, &mut control);
}

#[test]
fn pipelined_api_requests_with_bad_bodies() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let req = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
            publish_content_type(path),
            body.len()
        )
    };
    let pipelined = [
        req("/publish?topic=control", "1"),
        req("/publish?topic=control", "{broken"),
        req("/publish", "{\"topic\":\"control\",\"data\":2}\nnot json\n"),
        req("/publish?topic=control", "3"),
        "POST /publish?topic=control HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"
            .to_string(),
        req("/publish?topic=control", "4"),
    ]
    .concat();
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let statuses: Vec<&str> = raw
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &raw[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400", "400", "200", "400"], "{raw}");
    // The valid ones were published, in order; the batch with a bad line published nothing.
    assert_eq!(next_json(&mut control)["data"], 1);
    assert_eq!(next_json(&mut control)["data"], 3);
    assert_nothing_pending(&mut control);
}

#[test]
fn a_client_that_never_reads_while_megabytes_are_pushed() {
    let mut config = test_config();
    config.outbound_cap = 128 * 1024;
    let server = TestServer::with(config);
    let mut control = subscriber(&server, &["control"]);
    let mut sink = subscriber(&server, &["big"]);
    let payload = format!("\"{}\"", "z".repeat(60_000));
    for _ in 0..200 {
        // 12 MB in all, far beyond socket buffers and the cap.
        server.publish("big", &payload);
        if server.stats()["slow_consumer_closes"] == 1 {
            break;
        }
    }
    assert_eq!(server.stats()["slow_consumer_closes"], 1);
    control_still_served(&server, &mut control);
    assert_eq!(
        expect_close(&mut sink),
        tungstenite::protocol::frame::coding::CloseCode::Again
    );
}

#[test]
fn origin_allow_list_and_client_token() {
    let mut config = test_config();
    config.allowed_origins = vec!["https://app.example".into()];
    config.client_token = Some("tok3n".into());
    let server = TestServer::with(config);
    let attempt = |path: &str, origin: Option<&str>| -> u16 {
        let stream = TcpStream::connect(server.ws).unwrap();
        stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}{path}",
            server.ws
        ))
        .unwrap();
        if let Some(o) = origin {
            request.headers_mut().insert("Origin", o.parse().unwrap());
        }
        match tungstenite::client(request, stream) {
            Ok(_) => 101,
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                r.status().as_u16()
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(attempt("/ws?token=tok3n", Some("https://app.example")), 101);
    assert_eq!(attempt("/ws?token=tok3n", None), 101);
    assert_eq!(
        attempt("/ws?token=tok3n", Some("https://evil.example")),
        403
    );
    assert_eq!(attempt("/ws?token=wrong", Some("https://app.example")), 401);
    // No token at the upgrade: accepted, the first message must bring it (tests/first_message.rs).
    assert_eq!(attempt("/ws", None), 101);
}

#[test]
fn api_client_that_pipelines_without_reading_is_dropped() {
    let server = TestServer::start();
    let mut control = subscriber(&server, &["control"]);
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_write_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let request = b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    // ~10 MB of responses would pile up; the server drops the connection instead.
    let mut dropped = false;
    for _ in 0..200 {
        if s.write_all(&request).is_err() {
            dropped = true;
            break;
        }
    }
    if !dropped {
        s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink); // EOF or reset once the server gave up
        assert!(
            sink.len() < 4 * 1024 * 1024,
            "the server buffered {} bytes of answers",
            sink.len()
        );
    }
    assert_eq!(
        server.stats()["api_connections"],
        1,
        "only the stats request's own connection"
    );
    control_still_served(&server, &mut control);
}

/// One raw request on a fresh connection; the whole response as text.
fn raw_api(server: &TestServer, request: &str) -> String {
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

/// What `fetch('http://127.0.0.1:8092/publish?topic=o', {method: 'POST', mode: 'no-cors',
/// body: '"x"'})` from a page of another origin sends: refused, and nothing is published.
#[test]
fn a_web_page_of_another_origin_cannot_publish() {
    let mut config = test_config();
    config.api_allowed_origins = vec!["https://admin.example".to_owned()];
    let server = TestServer::with(config);
    let mut sub = subscriber(&server, &["o"]);
    let page = |origin: &str, content_type: &str| {
        format!(
            "POST /publish?topic=o HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n\
             Content-Type: {content_type}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\"x\""
        )
    };
    let reply = raw_api(
        &server,
        &page("http://evil.example", "text/plain;charset=UTF-8"),
    );
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let reply = raw_api(&server, &page("http://evil.example", "application/json"));
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    assert!(!reply.contains("Access-Control-Allow-Origin"), "{reply}");
    // A preflight from that page is refused too, so the browser never sends the request.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /publish?topic=o HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        )
    };
    let reply = raw_api(&server, &preflight("http://evil.example"));
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    // Without a browser's Origin, a simple content type is still refused.
    let (status, body) = http(
        server.api,
        "POST",
        "/publish?topic=o",
        "\"x\"",
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(status, 415, "{body}");
    let (status, body) = http(
        server.api,
        "POST",
        "/publish",
        "{\"topic\":\"o\",\"data\":1}\n",
        &[("Content-Type", "application/json")],
    );
    assert_eq!(status, 415, "a batch is NDJSON: {body}");
    // The listed origin gets its preflight and its answer.
    let reply = raw_api(&server, &preflight("https://admin.example"));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("Access-Control-Allow-Origin: https://admin.example\r\n"));
    assert!(reply.contains("Access-Control-Allow-Headers: Authorization, Content-Type\r\n"));
    let reply = raw_api(
        &server,
        &page("https://admin.example", "application/json; charset=utf-8"),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("Access-Control-Allow-Origin: https://admin.example\r\n"));
    // The only push that arrived is the allowed one.
    let push = next_json(&mut sub);
    assert_eq!(push["data"], "x");
    assert_nothing_pending(&mut sub);
}

/// Error texts say what was expected, not the names of the server's internal types.
#[test]
fn error_messages_do_not_leak_internal_type_names() {
    let server = TestServer::start();
    for body in [
        "1\n",
        "{\"topic\":\"a\"}\n",
        "[1,2]\n",
        "{\"topic\":5,\"data\":1}\n",
    ] {
        let (status, reply) = http(server.api, "POST", "/publish", body, &[]);
        assert_eq!(status, 400, "{reply}");
        assert!(
            !reply.contains("struct") && !reply.contains("BatchLine"),
            "{body:?}: {reply}"
        );
        assert!(
            reply.contains(r#"{\"topic\":\"T\",\"data\":<JSON>}"#),
            "{reply}"
        );
    }
    let mut ws = connect(&server);
    for message in [json!([1]), json!("subscribe"), json!({"topics": 5})] {
        send_json(&mut ws, message.clone());
        let reply = next_json(&mut ws);
        let text = reply["error"].as_str().unwrap_or_default();
        assert!(
            !text.is_empty() && !text.contains("struct") && !text.contains("RawClientMessage"),
            "{message}: {reply}"
        );
    }
}

/// 256 connections that each trickle a request (the old idle timer restarted on every byte):
/// the API stays available, and the trickling requests get 408 at their deadline.
#[test]
fn slow_api_clients_cannot_hold_the_api_full() {
    let mut config = test_config();
    config.api_request_timeout = Duration::from_millis(1500);
    let server = TestServer::with(config);
    let mut sub = subscriber(&server, &["t"]);
    let mut slow: Vec<TcpStream> = (0..256)
        .map(|_| {
            let mut s = TcpStream::connect(server.api).unwrap();
            s.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
            s.write_all(b"POST /publish?topic=t HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Every slot is taken, yet a new request is served (the longest-waiting slot made room).
    let (status, body) = http(server.api, "POST", "/publish?topic=t", "1", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_json(&mut sub)["data"], 1);
    assert!(server.stats()["api_evictions"].as_u64() >= Some(1));
    // A byte every 200 ms does not keep a request alive past its deadline.
    let started = Instant::now();
    let trickler = slow.last_mut().unwrap();
    let mut reply = Vec::new();
    for &b in b"X-Slow: 0123456789abcdefghijklmnopqrstuvwxyz\r\nX-Slower: 0123456789\r\n" {
        if trickler.write_all(&[b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200)); // the slow client's pace
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let _ = trickler.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "kept for {:?}",
        started.elapsed()
    );
    assert!(server.stats()["api_request_timeouts"].as_u64() >= Some(1));
}
