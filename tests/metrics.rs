//! `GET /metrics`: the server binary's Prometheus text, read by a real Prometheus parser
//! (`prometheus_client`'s, from PyPI, run with python3) and checked against `/stats` and the
//! traffic the test made.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::{
    KillOnDrop, SAFETY_TIMEOUT, listening_addrs, next_json, send_json, start_until_listening,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_wspush");
const API_TOKEN: &str = "metrics-api-token";
const CLIENT_TOKEN: &str = "metrics-client-token";
const BEARER: &str = "Bearer metrics-api-token";

fn start(extra: &[&str]) -> (KillOnDrop, SocketAddr, SocketAddr) {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .args(["--api-token", API_TOKEN, "--log-level", "info"])
        .args(extra);
    let (child, lines, ready) = start_until_listening(&mut command);
    // Drain the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let (ws, api) = listening_addrs(&ready);
    (child, ws, api.expect(&ready))
}

/// One request on a fresh connection: status, head (lower-cased) and body.
fn request(api: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(api).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect(&raw);
    let status = head.get(9..12).and_then(|s| s.parse().ok()).expect(head);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn publish(api: SocketAddr, path: &str, content_type: &str, body: &str) -> Value {
    let (status, body) = common::http(
        api,
        "POST",
        path,
        body,
        &[("Authorization", BEARER), ("Content-Type", content_type)],
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn stats(api: SocketAddr) -> Value {
    let (status, _, body) = request(api, "GET", "/stats", Some(BEARER));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A sample as the parser names it: (name, sorted labels).
type Series = (String, Vec<(String, String)>);

/// What the Prometheus parser made of a scrape.
struct Parsed {
    /// name -> (type, help)
    families: HashMap<String, (String, String)>,
    /// (sample name, labels) -> value
    samples: HashMap<Series, f64>,
    /// Sample order as parsed, for the histogram's buckets.
    order: Vec<(Series, f64)>,
}

impl Parsed {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        *self
            .samples
            .get(&(name.to_owned(), labels.clone()))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = [], []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append([family.name, family.type, family.documentation])
    for s in family.samples:
        samples.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps({"families": families, "samples": samples}))
"#;

/// Runs the text through `prometheus_client`'s parser (an error there fails the test).
fn parse(text: &str) -> Parsed {
    let mut python = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with `pip install prometheus_client`)");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = HashMap::new();
    for f in json["families"].as_array().unwrap() {
        let name = f[0].as_str().unwrap().to_owned();
        let entry = (f[1].as_str().unwrap().into(), f[2].as_str().unwrap().into());
        assert!(
            families.insert(name.clone(), entry).is_none(),
            "{name} twice"
        );
    }
    // Every family declared in the text is one family to the parser (none merged or lost).
    assert_eq!(
        families.len(),
        text.lines().filter(|l| l.starts_with("# TYPE ")).count()
    );
    let mut samples = HashMap::new();
    let mut order = Vec::new();
    for s in json["samples"].as_array().unwrap() {
        let name = s[0].as_str().unwrap().to_owned();
        let labels: Vec<(String, String)> = s[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv[0].as_str().unwrap().into(),
                    kv[1].as_str().unwrap().into(),
                )
            })
            .collect();
        let value = s[2].as_f64().unwrap();
        let key = (name.clone(), labels.clone());
        assert!(
            samples.insert(key, value).is_none(),
            "{name} {labels:?} twice"
        );
        order.push(((name, labels), value));
    }
    Parsed {
        families,
        samples,
        order,
    }
}

fn scrape(api: SocketAddr) -> (String, Parsed) {
    let (status, head, body) = request(api, "GET", "/metrics", Some(BEARER));
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    let parsed = parse(&body);
    (body, parsed)
}

type Client = tungstenite::WebSocket<TcpStream>;

fn subscriber(ws: SocketAddr, topics: &[&str]) -> Client {
    let stream = TcpStream::connect(ws).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let url = format!("ws://{ws}/ws?token={CLIENT_TOKEN}");
    let (mut client, _) = tungstenite::client(url, stream).expect("handshake");
    send_json(&mut client, serde_json::json!({ "topics": topics }));
    assert_eq!(next_json(&mut client)["cmd"], "subscribed");
    client
}

/// The next push to `topic`, skipping the tick's.
fn next_push_to(client: &mut Client, topic: &str) -> Value {
    for _ in 0..1_000 {
        let message = next_json(client);
        if message["topic"] == topic {
            return message;
        }
    }
    panic!("no push to {topic}");
}

#[test]
fn metrics_parse_and_match_the_traffic_and_stats() {
    let (_server, ws, api) = start(&[
        "--client-token",
        CLIENT_TOKEN,
        "--tick-topic",
        "tick",
        "--tick-interval",
        "100ms",
        "--metrics-topic-prefix",
        "news/,none/",
        "--metrics-topic-prefix",
        "news/sport",
    ]);
    let mut client = subscriber(ws, &["news/sport", "tick"]);
    // At least one tick is published before the scrape.
    next_push_to(&mut client, "tick");

    for n in 0..3 {
        publish(
            api,
            "/publish?topic=news/sport",
            "application/json",
            &n.to_string(),
        );
    }
    let batch = "{\"topic\":\"news/sport\",\"data\":3}\n{\"topic\":\"other\",\"data\":4}\n";
    publish(api, "/publish", "application/x-ndjson", batch);
    for n in 0..4 {
        assert_eq!(next_push_to(&mut client, "news/sport")["data"], n);
    }

    // A handshake with a wrong client token is refused with 401.
    let mut refused = TcpStream::connect(ws).unwrap();
    refused.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    refused
        .write_all(
            b"GET /ws?token=wrong HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let answer = common::read_until_closed(&mut refused);
    assert!(
        answer.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // /metrics wants the API token, as /stats does.
    let (status, head, _) = request(api, "GET", "/metrics", None);
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    let (text, m) = scrape(api);
    let s = stats(api);

    assert_eq!(m.get("wspush_publishes_total", &[("source", "api")]), 5.0);
    let ticks = m.get("wspush_publishes_total", &[("source", "tick")]);
    assert!(ticks >= 1.0, "{ticks}");
    // Ticks go on between the two requests: /stats is later, never behind.
    assert!(s["tick_publishes"].as_f64().unwrap() >= ticks);
    assert_eq!(
        s["publishes"].as_f64().unwrap() - s["tick_publishes"].as_f64().unwrap(),
        5.0,
        "/stats publishes: the API's and the tick's"
    );

    // One fan-out observation per publish; buckets cumulative up to +Inf = count.
    let count = m.get("wspush_fanout_seconds_count", &[]);
    assert_eq!(count, 5.0 + ticks);
    let buckets: Vec<(&str, f64)> = m
        .order
        .iter()
        .filter(|((name, _), _)| name == "wspush_fanout_seconds_bucket")
        .map(|((_, labels), v)| (labels[0].1.as_str(), *v))
        .collect();
    assert_eq!(buckets.len(), 13, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap(), &("+Inf", count));
    let sum = m.get("wspush_fanout_seconds_sum", &[]);
    assert!(sum > 0.0 && sum < count, "{sum}");
    assert_eq!(m.families["wspush_fanout_seconds"].0, "histogram");

    // Refusals and credentials by kind.
    assert_eq!(
        m.get("wspush_auth_failures_total", &[("kind", "client_token")]),
        1.0
    );
    assert_eq!(
        m.get("wspush_auth_failures_total", &[("kind", "api_token")]),
        1.0
    );
    assert_eq!(
        m.get("wspush_auth_failures_total", &[("kind", "claim")]),
        0.0
    );
    assert_eq!(
        m.get("wspush_refusals_total", &[("reason", "handshake")]),
        1.0
    );
    assert_eq!(
        m.get("wspush_refusals_total", &[("reason", "over_capacity")]),
        0.0
    );
    assert_eq!(
        m.get("wspush_timeouts_total", &[("kind", "heartbeat")]),
        0.0
    );

    // The same figures as /stats, where nothing moved between the two requests.
    for (name, labels, key) in [
        ("wspush_subscriptions", &[][..], "subscriptions"),
        ("wspush_topics", &[], "topics"),
        ("wspush_connections_accepted_total", &[], "accepted"),
        (
            "wspush_refusals_total",
            &[("reason", "handshake")],
            "handshake_failures",
        ),
        (
            "wspush_auth_failures_total",
            &[("kind", "client_token")],
            "client_token_failures",
        ),
        (
            "wspush_auth_failures_total",
            &[("kind", "api_token")],
            "api_token_failures",
        ),
        ("wspush_api_errors_total", &[], "api_errors"),
    ] {
        assert_eq!(
            m.get(name, labels),
            s[key].as_f64().unwrap(),
            "{name} vs {key}"
        );
    }
    // The refused connection may still linger for our EOF: at least the subscriber.
    assert!(m.get("wspush_connections", &[]) >= 1.0);
    assert_eq!(m.get("wspush_subscriptions", &[]), 2.0);
    // The /stats request itself is one more.
    assert_eq!(
        m.get("wspush_api_requests_total", &[]) + 1.0,
        s["api_requests"].as_f64().unwrap()
    );
    let deliveries = m.get("wspush_deliveries_total", &[]);
    assert!(deliveries >= 4.0 + ticks && deliveries <= s["deliveries"].as_f64().unwrap());
    // The prometheus_client parser strips `_total` from a counter family's name.
    assert_eq!(m.families["wspush_deliveries"].0, "counter");
    assert!(m.families["wspush_deliveries"].1.starts_with("Push frames"));

    // The server process's own figures.
    let rss = m.get("process_resident_memory_bytes", &[]);
    assert!(rss > 100_000.0 && rss < 1e9, "{rss}");
    let stats_rss = s["rss_bytes"].as_f64().unwrap();
    assert!(stats_rss > rss / 2.0 && stats_rss < rss * 2.0);
    let fds = m.get("process_open_fds", &[]);
    // Listeners, poll, waker, a session, this scrape's connection, stdio.
    assert!((6.0..100.0).contains(&fds), "{fds}");
    assert!(m.get("process_max_fds", &[]) >= fds);
    assert!(m.get("process_cpu_seconds_total", &[]) >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = m.get("process_start_time_seconds", &[]);
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );

    // Per configured prefix (news/ and none/ from one flag, news/sport from another).
    let prefix = |name: &str, p: &str| m.get(name, &[("prefix", p)]);
    assert_eq!(prefix("wspush_topic_publishes_total", "news/"), 4.0);
    assert_eq!(prefix("wspush_topic_publishes_total", "news/sport"), 4.0);
    assert_eq!(prefix("wspush_topic_publishes_total", "none/"), 0.0);
    assert_eq!(prefix("wspush_topic_deliveries_total", "news/"), 4.0);
    assert_eq!(prefix("wspush_topic_subscribers", "news/"), 1.0);
    assert_eq!(prefix("wspush_topic_subscribers", "none/"), 0.0);
    assert!(!text.contains("prefix=\"other"), "only configured prefixes");
}

#[test]
fn without_prefixes_no_topic_series_and_head_post_answer_as_for_stats() {
    let (_server, ws, api) = start(&["--no-tick"]);
    let mut client = subscriber_without_token(ws, &["a"]);
    publish(api, "/publish?topic=a", "application/json", "1");
    assert_eq!(next_json(&mut client)["data"], 1);

    let (text, m) = scrape(api);
    assert!(!text.contains("wspush_topic_"), "{text}");
    assert_eq!(m.get("wspush_publishes_total", &[("source", "tick")]), 0.0);
    assert_eq!(m.get("wspush_publishes_total", &[("source", "api")]), 1.0);
    assert_eq!(m.get("wspush_fanout_seconds_count", &[]), 1.0);

    let (status, head, body) = request(api, "HEAD", "/metrics", Some(BEARER));
    assert_eq!(status, 200);
    assert!(body.is_empty(), "HEAD: no body");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect(&head);
    assert!(length > 1_000, "{length}");

    let (status, head, _) = request(api, "POST", "/metrics", Some(BEARER));
    assert_eq!(status, 405);
    assert!(head.contains("allow: get"), "{head}");
}

fn subscriber_without_token(ws: SocketAddr, topics: &[&str]) -> Client {
    let stream = TcpStream::connect(ws).unwrap();
    stream.set_read_timeout(Some(SAFETY_TIMEOUT)).unwrap();
    let (mut client, _) = tungstenite::client(format!("ws://{ws}/ws"), stream).unwrap();
    send_json(&mut client, serde_json::json!({ "topics": topics }));
    assert_eq!(next_json(&mut client)["cmd"], "subscribed");
    client
}
