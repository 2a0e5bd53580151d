//! Deterministic fuzzing, run as tests (stable Rust has no cargo-fuzz): the client-message
//! parser, the API's HTTP parser, the WebSocket upgrade-request parser, and the whole session
//! state machine fed arbitrary byte streams
//! interleaved with timer expiry, publishes and partial writes. Seeds come from the corpus in
//! `fuzz/corpus/`; mutations are reproducible (fixed PRNG seeds). `WSPUSH_FUZZ_ITERS` scales the
//! run (default keeps `cargo test` fast; the numbers in docs/CONFORMANCE.md used 1,000,000).

use std::io::{self, IoSlice, Write};
use std::path::Path;

use bytes::Bytes;
use wspush::app::WsPort;
use wspush::config::Config;
use wspush::conn::ws::{Ctx, Session};
use wspush::conn::{Connection, Settings, Status};
use wspush::hub::{HistoryLimits, Hub, SubscriberId};
use wspush::stats::Stats;
use wspush::wire::http::{HttpLimits, RequestParser};
use wspush::wire::{handshake, message as protocol};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("WSPUSH_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(dir);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&path)
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.sort();
    assert!(!seeds.is_empty(), "empty corpus {}", path.display());
    seeds
}

/// Classic byte-level mutations: flip, insert, delete, duplicate a slice, splice another seed.
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                out.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i).min(16);
                out.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i).min(64);
                let piece = out[i..i + n].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, piece);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(out.len() + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.below(len + 1);
                let interesting = [0x00u8, 0x7e, 0x7f, 0x80, 0xff, b'{', b'"', b'\r', b'\n'];
                out.insert(i, interesting[rng.below(interesting.len())]);
            }
        }
    }
    out
}

#[test]
fn fuzz_client_message_parser() {
    let seeds = corpus("client_message");
    let mut rng = Rng(0x5eed_0001);
    for i in 0..iterations(50_000) {
        let input = mutate(&mut rng, &seeds[i % seeds.len()], &seeds);
        if let Ok(text) = std::str::from_utf8(&input) {
            match protocol::parse_client_message(text) {
                Ok(
                    protocol::ClientMessage::Subscribe { topics: t, .. }
                    | protocol::ClientMessage::Unsubscribe(t),
                ) => {
                    assert!(!t.is_empty());
                    for topic in &t {
                        let _ = protocol::validate_topic(topic, protocol::TopicRules::default());
                    }
                }
                Ok(_) => {}
                Err(e) => assert!(e.to_string().len() < 512, "error text stays short"),
            }
        }
    }
}

#[test]
fn fuzz_http_request_parser() {
    let seeds = corpus("http");
    let limits = HttpLimits {
        max_head_bytes: 2048,
        max_body_bytes: 4096,
        ..HttpLimits::default()
    };
    let mut rng = Rng(0x5eed_0002);
    for i in 0..iterations(30_000) {
        let input = mutate(&mut rng, &seeds[i % seeds.len()], &seeds);
        let mut parser = RequestParser::new(limits);
        let mut rest = &input[..];
        'feed: while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(200));
            if parser.feed(&rest[..n]).is_err() {
                break;
            }
            rest = &rest[n..];
            loop {
                match parser.next_request() {
                    Ok(Some(req)) => assert!(req.body.len() <= limits.max_body_bytes),
                    Ok(None) => break,
                    Err(e) => {
                        assert!((400..=505).contains(&e.status));
                        break 'feed;
                    }
                }
            }
            let _ = parser.take_expect_continue();
        }
    }
}

#[test]
fn fuzz_upgrade_request_parser() {
    let seeds = corpus("handshake");
    let mut rng = Rng(0x5eed_0004);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..iterations(30_000) {
        let seed = &seeds[i % seeds.len()];
        let input = if rng.below(4) == 0 {
            seed.clone()
        } else {
            mutate(&mut rng, seed, &seeds)
        };
        match handshake::read_request(&input) {
            Ok(Some((request, length))) => {
                accepted += 1;
                assert!(length <= input.len());
                // The request alone parses the same, and its answer is a 101.
                let (again, _) = handshake::read_request(&input[..length]).unwrap().unwrap();
                assert_eq!(again, request);
                assert!(handshake::accept_response(request.key).starts_with(b"HTTP/1.1 101 "));
            }
            Ok(None) => {}
            Err(rejection) => {
                refused += 1;
                assert!(
                    [400, 405, 426, 431].contains(&rejection.status),
                    "{rejection:?}"
                );
            }
        }
    }
    // The mutations exercise both outcomes.
    assert!(
        accepted > 0 && refused > 0,
        "accepted {accepted}, refused {refused}"
    );
}

/// A socket that takes a random number of bytes per write.
struct FlakySink<'a> {
    rng: &'a mut Rng,
    taken: usize,
}

impl Write for FlakySink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        match self.rng.below(4) {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            _ => {
                let n = 1 + self.rng.below(total.max(1));
                self.taken += n.min(total);
                Ok(n.min(total))
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The wall clock of the fuzzed sessions at their start; the claims of the `private_*` seeds
/// were signed with `FUZZ_SECRET` to expire 20 to 90 s later.
const UNIX_EPOCH_MS: u64 = 1_700_000_000_000;
const FUZZ_SECRET: &str = "fuzz-secret-0123456789";

#[test]
fn fuzz_session_state_machine() {
    let seeds = corpus("session");
    let mut config = Config {
        max_message_size: 4096,
        outbound_cap: 8192,
        subscribe_secret: Some(FUZZ_SECRET.to_owned()),
        private_prefix: Some("private-".to_owned()),
        ..Config::default()
    };
    config.max_topics_per_connection = 8;
    let settings = Settings::from_config(&config);
    let routes = WsPort::from_config(&config);
    let payloads = ["1".to_owned(), format!("\"{}\"", "p".repeat(3000))];
    // Small bounds, so that eviction overtakes replays (continuity_lost) now and then.
    let limits = HistoryLimits {
        size: 6,
        ttl_ms: 20_000,
        memory: 16 * 1024,
    };
    let mut rng = Rng(0x5eed_0003);
    let (mut opened, mut subscribed, mut delivered, mut closed) = (0, 0, 0, 0);
    let (mut refused, mut expired, mut replays, mut lost) = (0, 0, 0, 0);
    for i in 0..iterations(4_000) {
        let seed = &seeds[i % seeds.len()];
        // Mostly keep the handshake intact so the frames behind it get exercised.
        let head_len = seed
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        let script = match rng.below(4) {
            0 => mutate(&mut rng, seed, &seeds),
            1 => seed.clone(),
            _ => [
                &seed[..head_len],
                &mutate(&mut rng, &seed[head_len..], &seeds)[..],
            ]
            .concat(),
        };
        // Seed 0: the first stream, "t" (published to here), has the epoch "00000000" that the
        // `resume_recent` seed resumes.
        let mut hub = Hub::with_history(limits, 0);
        // Big ones, so that a replay stalls at the cap and later publishes can overtake it.
        for _ in 0..5 {
            let _ = hub.publish("t", &payloads[1], 0);
        }
        let mut stats = Stats::default();
        let mut auth_log = wspush::oplog::AuthLog::default();
        let id = SubscriberId(7);
        let mut now = 0u64;
        let mut session = Session::new(id, now, &settings);
        let mut rest = &script[..];
        if script.starts_with(&seed[..head_len]) && head_len > 0 && rng.below(8) != 0 {
            // Real clients wait for the 101 before sending frames: deliver the request alone.
            let mut ctx = Ctx {
                hub: &mut hub,
                settings: &settings,
                stats: &mut stats,
                routes: &routes,
                access: &routes.subscribe,
                now_ms: now,
                unix_ms: UNIX_EPOCH_MS + now,
                auth_log: &mut auth_log,
                peer: &|| None,
            };
            session.on_input(Bytes::copy_from_slice(&script[..head_len]), &mut ctx);
            rest = &script[head_len..];
        }
        for _ in 0..200 {
            if session.status(false) == Status::Dead {
                break;
            }
            match rng.below(6) {
                // Bytes from the network, in random chunk sizes.
                0 | 1 if !rest.is_empty() => {
                    let n = 1 + rng.below(rest.len().min(300));
                    let mut ctx = Ctx {
                        hub: &mut hub,
                        settings: &settings,
                        stats: &mut stats,
                        routes: &routes,
                        access: &routes.subscribe,
                        now_ms: now,
                        unix_ms: UNIX_EPOCH_MS + now,
                        auth_log: &mut auth_log,
                        peer: &|| None,
                    };
                    session.on_input(Bytes::copy_from_slice(&rest[..n]), &mut ctx);
                    rest = &rest[n..];
                }
                // Time passes; maybe a deadline expires.
                2 => {
                    now += [1, 50, 1_000, 10_000, 30_000][rng.below(5)];
                    // As the server's timer wheel does: a deadline already past fires again
                    // (the Ping, then the close), a few rounds at most.
                    for _ in 0..4 {
                        if now < session.next_deadline(&settings) {
                            break;
                        }
                        session.on_timer(&settings, &mut stats, &mut hub, &mut auth_log, now);
                    }
                }
                // A publish (and now and then the TTL's expiry).
                3 => {
                    let topic = ["t", "u"][rng.below(2)];
                    let data = &payloads[rng.below(payloads.len())];
                    let delivery = hub.publish(topic, data, now);
                    // To members, as the server does; now and then to a non-member too, which
                    // the session must take in its stride.
                    let member = delivery.subscribers().any(|s| s == id);
                    let frame = delivery.frame;
                    if member || rng.below(4) == 0 {
                        let _ = session.push(topic, &frame, &settings, &mut stats, now);
                    }
                    hub.expire_history(now);
                }
                // The socket takes some bytes.
                4 => {
                    if let Some(out) = session.outbound() {
                        let mut sink = FlakySink {
                            rng: &mut rng,
                            taken: 0,
                        };
                        let written = out.write_to(&mut sink).unwrap_or(0);
                        session.on_written(written, now);
                        session.continue_replay(&hub, &settings, &mut stats);
                    }
                }
                _ => {
                    if rest.is_empty() {
                        session.on_eof(now);
                    }
                }
            }
            // Bounded memory whatever the input: the cap, plus one frame, plus control slack.
            if let Some(out) = session.outbound() {
                assert!(
                    out.queued_bytes() <= 8192 + 4096 + 16 * 1024 + 64,
                    "queue grew to {}",
                    out.queued_bytes()
                );
            }
            let topics = session.subscriptions_mut().len();
            assert!(topics <= 8);
            subscribed += usize::from(topics > 0);
        }
        opened += usize::from(stats.handshake_failures == 0);
        delivered += stats.deliveries;
        closed += stats.protocol_closes + stats.slow_consumer_closes + stats.heartbeat_timeouts;
        refused += stats.claims_refused;
        expired += stats.claim_expirations;
        replays += stats.replays;
        lost += stats.continuity_lost;
        assert!(hub.topic_count() <= 8);
        hub.remove_subscriber(session.subscriptions_mut(), id, |_| {});
        assert_eq!(hub.topic_count(), 0);
    }
    // The mutations must reach deep states, or the fuzzer proves little.
    eprintln!(
        "sessions: {opened} without handshake failure, {subscribed} steps subscribed, {delivered} deliveries, {closed} closes, {refused} claims refused, {expired} expired, {replays} replays, {lost} continuity lost"
    );
    assert!(subscribed > 0 && delivered > 0 && closed > 0);
    assert!(refused > 0 && expired > 0);
    assert!(replays > 0 && lost > 0);
}
