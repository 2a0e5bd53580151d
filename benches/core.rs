//! Micro-benchmarks of the sans-IO core, no sockets: `cargo bench`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wspush::conn::OutQueue;
use wspush::hub::{HistoryLimits, Hub, SubscriberId, Subscriptions};
use wspush::timer::TimerWheel;
use wspush::wire::{handshake, message as protocol};

/// One publish to 10,000 subscribers: look up the topic, frame the push once, hand the shared
/// frame to each queue. This is the per-delivery cost of the fan-out without the syscalls.
fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut hub = Hub::new();
    let mut subscriptions: Vec<Subscriptions> =
        (0..SUBSCRIBERS).map(|_| Subscriptions::default()).collect();
    for (i, s) in subscriptions.iter_mut().enumerate() {
        hub.subscribe(s, SubscriberId(i as u64), "bench");
    }
    let mut queues: Vec<OutQueue> = (0..SUBSCRIBERS).map(|_| OutQueue::new()).collect();
    let data = format!("\"{}\"", "x".repeat(98));
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("10k_subscribers_shared_frame", |b| {
        b.iter(|| {
            let delivery = hub.publish("bench", &data, 0);
            for id in delivery.subscribers() {
                queues[id.0 as usize].push(delivery.frame.clone());
            }
            // Drain so queues stay small (the socket write is not measured here).
            for q in &mut queues {
                let _ = q.write_to(&mut std::io::sink());
            }
        })
    });
    g.finish();
}

/// Publishes round-robin over 1,000 topics with history at the defaults (100 per topic, so
/// every publish also evicts the topic's oldest): framing with a position, holding, evicting.
fn hold(c: &mut Criterion) {
    const TOPICS: usize = 1_000;
    let mut hub = Hub::with_history(
        HistoryLimits {
            size: 100,
            ttl_ms: 300_000,
            memory: 64 << 20,
        },
        7,
    );
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("user-{t:04}")).collect();
    let data = format!("\"{}\"", "x".repeat(98));
    for _ in 0..100 {
        for topic in &topics {
            hub.publish(topic, &data, 0);
        }
    }
    let mut next = 0;
    c.bench_function("publish_held_1k_topics_full", |b| {
        b.iter(|| {
            next = (next + 1) % TOPICS;
            black_box(hub.publish(&topics[next], &data, 0).position)
        })
    });
}

fn encode(c: &mut Criterion) {
    let data = format!("{{\"price\":42,\"pad\":\"{}\"}}", "y".repeat(80));
    c.bench_function("encode_push_100B", |b| {
        b.iter(|| protocol::encode_push(black_box("prices/EURUSD"), black_box(&data)))
    });
}

fn timers(c: &mut Criterion) {
    c.bench_function("timer_insert_cancel", |b| {
        let mut wheel = TimerWheel::new();
        let mut t = 0u64;
        b.iter(|| {
            t += 1;
            let h = wheel.insert(t + 20_000, ());
            wheel.cancel(h)
        })
    });
    c.bench_function("timer_insert_expire_10k", |b| {
        b.iter_batched(
            || {
                let mut wheel = TimerWheel::with_capacity(10_000);
                for i in 0..10_000u64 {
                    wheel.insert(1 + (i * 7919) % 20_000, i);
                }
                wheel
            },
            |mut wheel| {
                let mut n = 0;
                while let Some(d) = wheel.next_deadline() {
                    while wheel.poll(d).is_some() {
                        n += 1;
                    }
                }
                n
            },
            BatchSize::LargeInput,
        )
    });
}

fn parse(c: &mut Criterion) {
    c.bench_function("parse_subscribe", |b| {
        b.iter(|| {
            protocol::parse_client_message(black_box(
                r#"{"cmd":"subscribe","topics":["a","b/c","test-topic"]}"#,
            ))
        })
    });
    c.bench_function("parse_seed_ping", |b| {
        b.iter(|| protocol::parse_client_message(black_box(r#"{"cmd":"ping","data":null}"#)))
    });
}

/// The server's whole user-space share of an upgrade: parse a browser's request (Chromium's
/// headers), SHA-1 its key, build the 101.
fn upgrade(c: &mut Criterion) {
    let request = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8091\r\nConnection: Upgrade\r\n\
Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) \
AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\n\
Origin: http://127.0.0.1:8091\r\nSec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    c.bench_function("upgrade_request_to_101", |b| {
        b.iter(|| match handshake::read_request(black_box(request)) {
            Ok(Some((req, _))) => handshake::accept_response(req.key),
            _ => unreachable!("the request is valid"),
        })
    });
}

criterion_group!(benches, fanout, hold, encode, timers, parse, upgrade);
criterion_main!(benches);
