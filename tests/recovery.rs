//! Recovery end to end: positions on pushes and API replies, resume with `since`, `recent`,
//! paced replays past the outbound cap, `GET /history`, the history's expiry, and history off.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use wspush::Config;

/// Subscribes with `extra` fields merged into the request; returns the ack.
fn subscribe_with(ws: &mut Client, topics: &[&str], extra: Value) -> Value {
    let mut request = json!({ "cmd": "subscribe", "topics": topics });
    if let (Some(fields), Some(more)) = (request.as_object_mut(), extra.as_object()) {
        fields.extend(more.clone());
    }
    send_json(ws, request);
    let ack = next_json(ws);
    assert_eq!(ack["cmd"], "subscribed", "{ack}");
    ack
}

/// Reads `count` pushes and returns their (offset, data).
fn read_pushes(ws: &mut Client, count: usize) -> Vec<(u64, Value)> {
    (0..count)
        .map(|_| {
            let push = next_json(ws);
            assert_eq!(push["cmd"], "push", "{push}");
            (
                push["offset"].as_u64().expect("an offset"),
                push["data"].clone(),
            )
        })
        .collect()
}

fn offsets(pushes: &[(u64, Value)]) -> Vec<u64> {
    pushes.iter().map(|(offset, _)| *offset).collect()
}

fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let (status, body) = http(server.api, "GET", path, "", &[]);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn pushes_and_api_replies_carry_positions() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    let ack = subscribe_with(&mut ws, &["a"], json!({}));
    let epoch = ack["streams"]["a"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 8);
    assert_eq!(ack["streams"]["a"], json!({"epoch": epoch, "offset": 0}));
    let reply = server.publish("a", r#"{"n":1}"#);
    assert_eq!(
        reply,
        json!({"topic":"a","subscribers":1,"offset":1,"epoch":epoch})
    );
    assert_eq!(
        next_json(&mut ws),
        json!({"cmd":"push","topic":"a","data":{"n":1},"offset":1,"epoch":epoch})
    );
    let batch = "{\"topic\":\"a\",\"data\":2}\n{\"topic\":\"b\",\"data\":3}\n{\"topic\":\"a\",\"data\":4}\n";
    let (status, body) = http(server.api, "POST", "/publish", batch, &[]);
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["offsets"]["a"], json!({"offset":3,"epoch":epoch}));
    assert_eq!(reply["offsets"]["b"]["offset"], 1);
    assert_ne!(reply["offsets"]["b"]["epoch"], epoch.as_str());
    assert_eq!(offsets(&read_pushes(&mut ws, 2)), [2, 3]);
}

#[test]
fn a_resume_after_reconnect_recovers_every_missed_message_once_in_order() {
    let server = TestServer::with(Config {
        outbound_cap: 4096,
        ..test_config()
    });
    let mut ws = subscriber(&server, &["feed"]);
    for n in 1..=5 {
        server.publish("feed", &n.to_string());
    }
    let seen = read_pushes(&mut ws, 3);
    let (last_seen, epoch) = (seen[2].0, next_epoch(&server, "feed"));
    drop(ws);
    // Missed: 4 and 5, plus what is published while the client is away.
    let data = format!("\"{}\"", "m".repeat(200));
    for _ in 0..60 {
        server.publish("feed", &data);
    }
    let mut ws = connect(&server);
    let ack = subscribe_with(
        &mut ws,
        &["feed"],
        json!({"since": {"feed": {"offset": last_seen, "epoch": epoch}}}),
    );
    assert_eq!(
        ack["streams"]["feed"],
        json!({"epoch": epoch, "offset": 65, "recovered": true})
    );
    // Published while the replay goes out (the cap holds a handful of these at a time).
    for _ in 0..20 {
        server.publish("feed", "\"live\"");
    }
    let got = read_pushes(&mut ws, 82);
    assert_eq!(offsets(&got), (4..=85).collect::<Vec<_>>());
    assert_eq!(
        (got[0].1.clone(), got[81].1.clone()),
        (json!(4), json!("live"))
    );
    assert_nothing_pending(&mut ws);
    let stats = server.stats();
    assert_eq!(
        (stats["replays"].clone(), stats["resumes_recovered"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(stats["slow_consumer_closes"], 0);
}

/// The topic's epoch, from `GET /history`.
fn next_epoch(server: &TestServer, topic: &str) -> String {
    let (status, body) = get(server, &format!("/history?topic={topic}"));
    assert_eq!(status, 200, "{body}");
    body["epoch"].as_str().unwrap().to_owned()
}

#[test]
fn another_epoch_is_not_recovered_and_replays_everything_held() {
    let server = TestServer::start();
    for n in 1..=3 {
        server.publish("t", &n.to_string());
    }
    let mut ws = connect(&server);
    let ack = subscribe_with(
        &mut ws,
        &["t"],
        json!({"since": {"t": {"offset": 2, "epoch": "previous"}}}),
    );
    let entry = &ack["streams"]["t"];
    assert_eq!(
        (entry["recovered"].clone(), entry["from"].clone()),
        (json!(false), json!(1))
    );
    assert_eq!(entry["offset"], 3);
    // The current stream is newer than anything the client saw: all of it comes, then live.
    assert_eq!(offsets(&read_pushes(&mut ws, 3)), [1, 2, 3]);
    server.publish("t", "4");
    assert_eq!(offsets(&read_pushes(&mut ws, 1)), [4]);
    assert_nothing_pending(&mut ws);
    assert_eq!(server.stats()["resumes_lost"], 1);
}

#[test]
fn another_epoch_with_an_evicted_start_replays_from_the_oldest_held() {
    let server = TestServer::with(Config {
        history_size: 2,
        ..test_config()
    });
    for n in 1..=5 {
        server.publish("t", &n.to_string());
    }
    let mut ws = connect(&server);
    let ack = subscribe_with(
        &mut ws,
        &["t"],
        json!({"since": {"t": {"offset": 9, "epoch": "previous"}}}),
    );
    let entry = &ack["streams"]["t"];
    assert_eq!(
        (entry["recovered"].clone(), entry["from"].clone()),
        (json!(false), json!(4))
    );
    assert_eq!(offsets(&read_pushes(&mut ws, 2)), [4, 5]);
    assert_nothing_pending(&mut ws);
}

#[test]
fn a_gap_longer_than_the_history_replays_what_is_held() {
    let server = TestServer::with(Config {
        history_size: 5,
        ..test_config()
    });
    for n in 1..=20 {
        server.publish("t", &n.to_string());
    }
    let epoch = next_epoch(&server, "t");
    let mut ws = connect(&server);
    let ack = subscribe_with(
        &mut ws,
        &["t"],
        json!({"since": {"t": {"offset": 2, "epoch": epoch}}}),
    );
    assert_eq!(
        ack["streams"]["t"],
        json!({"epoch": epoch, "offset": 20, "recovered": false, "from": 16})
    );
    let got = read_pushes(&mut ws, 5);
    assert_eq!(offsets(&got), [16, 17, 18, 19, 20]);
    assert_eq!(got[0].1, json!(16));
    assert_nothing_pending(&mut ws);
}

#[test]
fn recent_replays_the_last_messages_held() {
    let server = TestServer::start();
    for n in 1..=10 {
        server.publish("t", &n.to_string());
    }
    server.publish("other", "1");
    let mut ws = connect(&server);
    let ack = subscribe_with(&mut ws, &["t", "other", "empty"], json!({"recent": 3}));
    assert_eq!(ack["streams"]["t"]["from"], 8);
    assert_eq!(ack["streams"]["other"]["from"], 1);
    assert_eq!(
        ack["streams"]["empty"],
        json!({"epoch": ack["streams"]["empty"]["epoch"], "offset": 0, "from": 1})
    );
    let mut got: Vec<(String, u64)> = (0..4)
        .map(|_| {
            let push = next_json(&mut ws);
            (
                push["topic"].as_str().unwrap().to_owned(),
                push["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("other".into(), 1),
            ("t".into(), 8),
            ("t".into(), 9),
            ("t".into(), 10)
        ]
    );
    assert_nothing_pending(&mut ws);
}

#[test]
fn a_replay_ten_times_the_outbound_cap_completes_without_a_close() {
    let server = TestServer::with(Config {
        outbound_cap: 4096,
        history_size: 1000,
        ..test_config()
    });
    let data = format!("\"{}\"", "r".repeat(100));
    for _ in 0..400 {
        server.publish("big", &data);
    }
    // 400 frames of ~160 B: over 10 × 4 KiB.
    let held = server.stats()["history_bytes"].as_u64().unwrap();
    assert!(held > 10 * 4096, "{held}");
    let mut ws = connect(&server);
    subscribe_with(&mut ws, &["big"], json!({"recent": 1000}));
    let got = read_pushes(&mut ws, 400);
    assert_eq!(offsets(&got), (1..=400).collect::<Vec<_>>());
    assert_nothing_pending(&mut ws);
    assert_eq!(server.stats()["slow_consumer_closes"], 0);
}

#[test]
fn history_over_the_api() {
    let server = TestServer::with(Config {
        history_size: 3,
        ..test_config()
    });
    assert_eq!(
        get(&server, "/history?topic=none"),
        (404, json!({"error": "no history for this topic"}))
    );
    for n in 1..=5 {
        server.publish("t", &format!(r#"{{"n":{n}}}"#));
    }
    let epoch = next_epoch(&server, "t");
    let (status, all) = get(&server, "/history?topic=t");
    assert_eq!(status, 200);
    assert_eq!(
        all,
        json!({"topic":"t","epoch":epoch,"offset":5,"complete":false,"messages":[
            {"offset":3,"data":{"n":3}},{"offset":4,"data":{"n":4}},{"offset":5,"data":{"n":5}}]})
    );
    let (_, since) = get(&server, "/history?topic=t&since=3");
    assert_eq!(since["complete"], true);
    assert_eq!(
        since["messages"],
        json!([{"offset":4,"data":{"n":4}},{"offset":5,"data":{"n":5}}])
    );
    assert_eq!(
        get(&server, "/history?topic=t&since=5").1["messages"],
        json!([])
    );
    assert_eq!(get(&server, "/history?topic=t&since=x").0, 400);
    assert_eq!(get(&server, "/history").0, 400);
}

#[test]
fn the_history_expires_by_its_ttl_and_the_stream_ends() {
    let server = TestServer::with(Config {
        history_ttl: Duration::from_millis(200),
        ..test_config()
    });
    let first = server.publish("t", "1");
    assert_eq!(server.stats()["history_messages"], 1);
    let deadline = Instant::now() + SAFETY_TIMEOUT;
    // The loop's timer evicts it; the API only observes (no sleep decides the outcome).
    while server.stats()["history_messages"] != 0 {
        assert!(Instant::now() < deadline, "the history never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = server.stats();
    assert_eq!(
        (
            stats["history_bytes"].clone(),
            stats["history_evictions"].clone()
        ),
        (json!(0), json!(1))
    );
    assert_eq!(
        get(&server, "/history?topic=t").0,
        404,
        "no history, no subscribers"
    );
    let again = server.publish("t", "2");
    assert_eq!(again["offset"], 1);
    assert_ne!(again["epoch"], first["epoch"], "a new stream");
}

#[test]
fn seed_clients_work_unchanged() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    send_json(&mut ws, json!({"topics": ["test-topic"]}));
    let ack = next_json(&mut ws);
    assert_eq!(
        (ack["cmd"].clone(), ack["topics"].clone()),
        (json!("subscribed"), json!(["test-topic"]))
    );
    server.publish("test-topic", r#""publish msg""#);
    let push = next_json(&mut ws);
    assert_eq!(
        (
            push["cmd"].clone(),
            push["topic"].clone(),
            push["data"].clone()
        ),
        (json!("push"), json!("test-topic"), json!("publish msg"))
    );
    send_json(&mut ws, json!({"cmd": "ping", "data": null}));
    assert_eq!(next_json(&mut ws), json!({"cmd": "pong"}));
}

#[test]
fn history_off_gives_the_seed_frames_exactly() {
    let server = TestServer::with(Config {
        history_size: 0,
        ..test_config()
    });
    let mut ws = raw_upgrade(&server);
    use std::io::Write;
    let subscribe = br#"{"topics":["a"],"since":{"a":{"offset":1,"epoch":"e"}},"recent":5}"#;
    ws.write_all(&masked_frame(0x81, subscribe)).unwrap();
    assert_eq!(
        read_raw_frame(&mut ws),
        (1, br#"{"cmd":"subscribed","topics":["a"]}"#.to_vec())
    );
    assert_eq!(
        server.publish("a", "1"),
        json!({"topic":"a","subscribers":1})
    );
    assert_eq!(
        read_raw_frame(&mut ws),
        (1, br#"{"cmd":"push","topic":"a","data":1}"#.to_vec())
    );
    let (status, body) = http(
        server.api,
        "POST",
        "/publish",
        "{\"topic\":\"a\",\"data\":2}\n",
        &[],
    );
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"published":1,"deliveries":1}))
    );
    assert_eq!(get(&server, "/history?topic=a").0, 404);
    let stats = server.stats();
    assert_eq!(
        (stats["history_messages"].clone(), stats["replays"].clone()),
        (json!(0), json!(0))
    );
}

#[test]
fn a_bad_since_is_an_error_and_subscribes_nothing() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    send_json(
        &mut ws,
        json!({"topics": ["a"], "since": {"a": {"offset": 1.5, "epoch": "e"}}}),
    );
    assert_eq!(next_json(&mut ws)["cmd"], "error");
    assert_eq!(server.stats()["subscriptions"], 0);
}
