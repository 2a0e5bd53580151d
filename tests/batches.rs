//! Batch publishes: consecutive messages to one topic go to each subscriber as one shared run
//! (BENCHMARKS.md). What a subscriber sees must not tell: every push in publish order, across
//! topics too, and the reply counts exactly who got what.

mod common;

use common::*;
use serde_json::Value;
use wspush::config::SlowConsumerPolicy;

fn batch(lines: &[(&str, Value)]) -> String {
    lines
        .iter()
        .map(|(topic, data)| format!("{}\n", serde_json::json!({"topic": topic, "data": data})))
        .collect()
}

fn publish_batch(server: &TestServer, body: &str) -> Value {
    let (status, reply) = http(server.api, "POST", "/publish", body, &[]);
    assert_eq!(status, 200, "{reply}");
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn runs_of_one_topic_keep_publish_order_across_topics() {
    let server = TestServer::start();
    let mut both = subscriber(&server, &["a", "b"]);
    let mut only_a = subscriber(&server, &["a"]);
    let order = ["a", "a", "a", "b", "b", "a", "b", "a", "a"];
    let lines: Vec<(&str, Value)> = order
        .iter()
        .enumerate()
        .map(|(i, topic)| (*topic, serde_json::json!(i)))
        .collect();
    let reply = publish_batch(&server, &batch(&lines));
    assert_eq!(reply["published"], 9, "{reply}");
    // `both` gets all 9, `only_a` the 6 of a.
    assert_eq!(reply["deliveries"], 15, "{reply}");
    assert_eq!(reply["offsets"]["a"]["offset"], 6, "{reply}");
    assert_eq!(reply["offsets"]["b"]["offset"], 3, "{reply}");
    let mut offsets = std::collections::HashMap::new();
    for (i, topic) in order.iter().enumerate() {
        let push = next_json(&mut both);
        assert_eq!(
            (push["topic"].as_str(), &push["data"]),
            (Some(*topic), &serde_json::json!(i))
        );
        let offset = offsets.entry(*topic).or_insert(0);
        *offset += 1;
        assert_eq!(push["offset"], *offset, "{push}");
    }
    for (i, _) in order.iter().enumerate().filter(|(_, t)| **t == "a") {
        assert_eq!(next_json(&mut only_a)["data"], i);
    }
    assert_nothing_pending(&mut both);
    assert_nothing_pending(&mut only_a);
    assert_eq!(server.stats()["deliveries"], 15);
}

/// A run far bigger than the outbound cap: it cannot be queued whole, so its pushes are offered
/// one by one, the socket written whenever the queue is full; a reader that keeps up loses none.
#[test]
fn a_run_bigger_than_the_cap_reaches_a_fast_reader_whole() {
    let mut config = test_config();
    config.outbound_cap = 1024;
    config.slow_consumer = SlowConsumerPolicy::Drop;
    let server = TestServer::with(config);
    let mut reader = subscriber(&server, &["big"]);
    let payload = "z".repeat(300);
    let lines: Vec<(&str, Value)> = (0..200)
        .map(|i| ("big", serde_json::json!(format!("{i} {payload}"))))
        .collect();
    let body = batch(&lines);
    let fast_reader = std::thread::spawn(move || {
        for i in 0..200 {
            let push = next_json(&mut reader);
            let data = push["data"].as_str().unwrap_or_default().to_owned();
            assert!(data.starts_with(&format!("{i} ")), "push {i}: {push}");
        }
        reader
    });
    let reply = publish_batch(&server, &body);
    let mut reader = fast_reader.join().expect("every push, in order");
    assert_nothing_pending(&mut reader);
    assert_eq!(reply["deliveries"], 200, "{reply}");
    assert_eq!(server.stats()["dropped"], 0);
}

/// A subscriber that never reads, under `--slow-consumer drop`: each push of a run is kept or
/// dropped on its own, and the reply counts exactly the kept ones.
#[test]
fn the_reply_counts_what_a_stuck_subscriber_kept_of_a_run() {
    let mut config = test_config();
    config.outbound_cap = 32 * 1024;
    config.slow_consumer = SlowConsumerPolicy::Drop;
    let server = TestServer::with(config);
    let _stuck = subscriber(&server, &["jam"]);
    let payload = "j".repeat(4000);
    let lines: Vec<(&str, Value)> = (0..200)
        .map(|_| ("jam", serde_json::json!(payload)))
        .collect();
    let body = batch(&lines);
    let mut delivered = 0;
    for _ in 0..10 {
        delivered += publish_batch(&server, &body)["deliveries"]
            .as_u64()
            .unwrap();
    }
    let stats = server.stats();
    assert!(stats["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(
        delivered + stats["dropped"].as_u64().unwrap(),
        2000,
        "{stats}"
    );
    assert_eq!(stats["deliveries"].as_u64(), Some(delivered), "{stats}");
}
