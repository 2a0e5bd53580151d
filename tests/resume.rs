//! No push lost across outages: a publisher sends a numbered message every few milliseconds
//! while the subscriber's connection is cut in the ways connections end, and the subscriber
//! (the client library) reconnects and resumes from the server's history. Every message
//! published while history covered the outage arrives exactly once and in order; when history
//! cannot cover it, the subscriber is told where the stream continues.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proxy::CuttingProxy;
use common::*;
use wspush::client::{Client, ClientConfig, ContinuityReason, Event};
use wspush::config::SlowConsumerPolicy;

const TOPIC: &str = "numbers";
const WAIT: Duration = Duration::from_secs(15);

fn client_config(url: String) -> ClientConfig {
    ClientConfig {
        topics: vec![TOPIC.into()],
        ping_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..ClientConfig::new(url)
    }
}

/// What the subscriber got: the numbers in arrival order, and the losses it was told of.
#[derive(Default)]
struct Received {
    numbers: Vec<u64>,
    lost: Vec<(ContinuityReason, u64)>,
    disconnects: usize,
}

/// Reads events until `last` has arrived (or the wait is over).
fn receive_until(client: &Client, last: u64, got: &mut Received) {
    let deadline = Instant::now() + WAIT;
    while got.numbers.last() != Some(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left) {
            Ok(Event::Push { topic, data, .. }) if topic == TOPIC => {
                let value: serde_json::Value = serde_json::from_str(&data).expect("JSON");
                got.numbers
                    .push(value["n"].as_u64().expect("a numbered message"));
            }
            Ok(Event::ContinuityLost { reason, from, .. }) => got.lost.push((reason, from)),
            Ok(Event::Disconnected { .. }) => got.disconnects += 1,
            Ok(_) => {}
            Err(_) => panic!(
                "{last} never arrived; got {} numbers, last {:?}, losses {:?}",
                got.numbers.len(),
                got.numbers.last(),
                got.lost
            ),
        }
    }
}

fn wait_connected(client: &Client, got: &mut Received) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_timeout(left).expect("not connected in time") {
            Event::Connected => return,
            Event::Disconnected { .. } => got.disconnects += 1,
            _ => {}
        }
    }
}

/// Publishes `{"n":from}` to `{"n":to}` to the topic, one every `every`.
fn publish_numbers(api: SocketAddr, from: u64, to: u64, every: Duration) {
    for n in from..=to {
        let body = format!(r#"{{"n":{n}}}"#);
        let (status, reply) = http(api, "POST", &format!("/publish?topic={TOPIC}"), &body, &[]);
        assert_eq!(status, 200, "{reply}");
        std::thread::sleep(every); // the publisher's pace
    }
}

/// A subscriber behind a proxy that has stopped forwarding to it, on a server with a 16 KiB
/// outbound cap and a history large enough for everything the tests publish.
fn stalled_subscriber(policy: SlowConsumerPolicy) -> (TestServer, CuttingProxy, Client, Received) {
    let mut config = test_config();
    config.outbound_cap = 16 * 1024;
    config.slow_consumer = policy;
    config.history_size = 100_000;
    config.history_memory = 256 << 20;
    let server = TestServer::with(config);
    let proxy = CuttingProxy::to(server.ws);
    let client = Client::connect(client_config(proxy.url())).unwrap();
    let mut got = Received::default();
    wait_connected(&client, &mut got);
    proxy.pause_downstream(true);
    (server, proxy, client, got)
}

/// Publishes numbered 1 KiB messages in batches of 100 until the `/stats` counter `counter`
/// moves; returns the last number published.
fn publish_until(server: &TestServer, counter: &str) -> u64 {
    let pad = "x".repeat(1000);
    let mut last = 0u64;
    while server.stats()[counter] == 0 {
        assert!(last < 100_000, "{counter} still 0 after {last} messages");
        let batch: String = (last + 1..=last + 100)
            .map(|n| {
                format!("{{\"topic\":\"{TOPIC}\",\"data\":{{\"n\":{n},\"pad\":\"{pad}\"}}}}\n")
            })
            .collect();
        let (status, reply) = http(server.api, "POST", "/publish", &batch, &[]);
        assert_eq!(status, 200, "{reply}");
        last += 100;
    }
    last
}

fn assert_exactly_once_in_order(numbers: &[u64], from: u64, to: u64) {
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(
        numbers,
        &expected[..],
        "not every message exactly once, in order"
    );
}

/// The connection vanishes under both ends (no close frame), twice, while messages flow.
#[test]
fn a_vanished_connection_resumes_without_loss() {
    let server = TestServer::start();
    let proxy = CuttingProxy::to(server.ws);
    let client = Client::connect(client_config(proxy.url())).unwrap();
    let mut got = Received::default();
    wait_connected(&client, &mut got);
    let api = server.api;
    let publisher =
        std::thread::spawn(move || publish_numbers(api, 1, 300, Duration::from_millis(3)));
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(250)); // let messages flow before the cut
        proxy.cut();
    }
    publisher.join().unwrap();
    receive_until(&client, 300, &mut got);
    assert!(got.disconnects >= 2, "the cuts were not seen");
    assert!(got.lost.is_empty(), "{:?}", got.lost);
    assert_exactly_once_in_order(&got.numbers, 1, 300);
    assert!(server.stats()["resumes_recovered"].as_u64() >= Some(2));
    client.stop();
}

/// The client stops reading, the server closes it with 1013 at its outbound cap; reconnecting,
/// it gets back from history what the close discarded.
#[test]
fn a_slow_consumer_closed_with_1013_resumes_from_history() {
    let (server, proxy, client, mut got) = stalled_subscriber(SlowConsumerPolicy::Close);
    // 1 KiB messages until the socket buffers and the 16 KiB queue are full.
    let last = publish_until(&server, "slow_consumer_closes");
    proxy.pause_downstream(false);
    receive_until(&client, last, &mut got);
    assert!(got.lost.is_empty(), "{:?}", got.lost);
    assert_exactly_once_in_order(&got.numbers, 1, last);
    assert!(server.stats()["resumes_recovered"].as_u64() >= Some(1));
    client.stop();
}

/// The server restarts: its history is gone, the epoch changes, and the subscriber is told
/// where the new stream continues.
#[test]
fn after_a_server_restart_the_subscriber_is_told_the_stream_is_new() {
    let server = TestServer::start();
    let (ws, api) = (server.ws, server.api);
    let client = Client::connect(client_config(format!("ws://{ws}/ws"))).unwrap();
    let mut got = Received::default();
    wait_connected(&client, &mut got);
    publish_numbers(api, 1, 20, Duration::ZERO);
    receive_until(&client, 20, &mut got);
    drop(server); // a restart: the client sees 1001
    let mut config = test_config();
    config.listen = ws;
    config.api_listen = Some(api);
    let server = TestServer::with(config);
    wait_connected(&client, &mut got);
    publish_numbers(server.api, 21, 30, Duration::ZERO);
    receive_until(&client, 30, &mut got);
    assert_eq!(
        got.lost.first().map(|&(reason, _)| reason),
        Some(ContinuityReason::EpochChanged),
        "{:?}",
        got.lost
    );
    assert_exactly_once_in_order(&got.numbers, 1, 30);
    client.stop();
}

/// An outage longer than the history: the subscriber is told from where the stream continues,
/// gets the held messages from there, then the live ones.
#[test]
fn a_gap_longer_than_the_history_is_reported_with_its_position() {
    let mut config = test_config();
    config.history_size = 10;
    let server = TestServer::with(config);
    let proxy = CuttingProxy::to(server.ws);
    let mut cfg = client_config(proxy.url());
    // Long enough for the whole outage to be published before it comes back.
    cfg.backoff_initial = Duration::from_millis(500);
    let client = Client::connect(cfg).unwrap();
    let mut got = Received::default();
    wait_connected(&client, &mut got);
    publish_numbers(server.api, 1, 5, Duration::ZERO);
    receive_until(&client, 5, &mut got);
    proxy.cut();
    publish_numbers(server.api, 6, 55, Duration::ZERO);
    wait_connected(&client, &mut got);
    publish_numbers(server.api, 56, 60, Duration::ZERO);
    receive_until(&client, 60, &mut got);
    // History held 46..=55 when it came back: 6..=45 are lost, and it is told so.
    assert_eq!(got.lost, vec![(ContinuityReason::HistoryTooShort, 46)]);
    let mut expected: Vec<u64> = (1..=5).collect();
    expected.extend(46..=60);
    assert_eq!(got.numbers, expected);
    client.stop();
}

/// `--slow-consumer drop`: pushes that do not fit are dropped; the client sees the offsets
/// jump, says so, and fetches what it missed from history.
#[test]
fn dropped_pushes_are_fetched_back_from_history() {
    let (server, proxy, client, mut got) = stalled_subscriber(SlowConsumerPolicy::Drop);
    let last = publish_until(&server, "dropped");
    proxy.pause_downstream(false);
    // Paced: a push published while the queue is still full is dropped too, and the client
    // sees the jump only on one that gets through once it drains.
    publish_numbers(server.api, last + 1, last + 10, Duration::from_millis(100));
    receive_until(&client, last + 10, &mut got);
    assert!(
        got.lost
            .iter()
            .all(|(reason, _)| matches!(reason, ContinuityReason::OffsetJump { .. })),
        "{:?}",
        got.lost
    );
    assert!(!got.lost.is_empty(), "the jump was not reported");
    assert_exactly_once_in_order(&got.numbers, 1, last + 10);
    client.stop();
}
