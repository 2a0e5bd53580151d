//! The plain-HTTP answers of the WebSocket port: the demo page, its files and the client
//! module, their caching and policy headers, the refusals around them; and the module itself,
//! run in Node against the real server through a cut connection and a restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::proxy::CuttingProxy;
use common::*;
use serde_json::Value;

/// A response read to the server's close.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// How many responses arrived (a pipelined request must not get one).
    responses: usize,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, _) = text.split_once("\r\n\r\n").expect("a complete head");
    let at = head.len() + 4;
    Answer {
        status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head: head.to_owned(),
        body: raw[at..].to_vec(),
        responses: text.matches("HTTP/1.1 ").count(),
    }
}

/// Sends `request` as it is, then reads until the server closes.
fn raw(server: &TestServer, request: &str) -> Answer {
    let mut stream = TcpStream::connect(server.ws).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    parse(&read_until_closed_cleanly(&mut stream))
}

fn get(server: &TestServer, method: &str, path: &str, extra: &str) -> Answer {
    raw(
        server,
        &format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"),
    )
}

/// What Chromium sends for a page: keep-alive and many headers.
const CHROMIUM: &str = "GET / HTTP/1.1\r\nHost: 127.0.0.1:8091\r\nConnection: keep-alive\r\n\
Cache-Control: max-age=0\r\nsec-ch-ua: \"Chromium\";v=\"124\"\r\nsec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\nUpgrade-Insecure-Requests: 1\r\nUser-Agent: Mozilla/5.0 (X11; \
Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\nAccept: \
text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-User: ?1\r\nSec-Fetch-Dest: \
document\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n";

#[test]
fn the_page_is_served_with_its_policy_and_head_has_only_headers() {
    let server = TestServer::start();
    let page = raw(&server, CHROMIUM);
    assert_eq!(page.status, 200, "{}", page.head);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("connection"), Some("close"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let length: usize = page.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, page.body.len());
    let csp = page.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self';",
        "style-src 'self';",
        "connect-src 'self' ws: wss:",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = page.text();
    assert!(html.contains(r#"<script type="module" src="/demo.js"></script>"#));
    assert!(
        !html.contains("<script>") && !html.contains("<style"),
        "inline code"
    );
    for id in [r#"id="state""#, r#"id="pushes""#, r#"id="notices""#] {
        assert!(html.contains(id), "{id}");
    }
    let script = get(&server, "GET", "/demo.js", "");
    assert_eq!(script.status, 200);
    assert!(
        script
            .text()
            .contains(r#"import { WspushClient } from "/wspush.js";"#)
    );
    assert_eq!(get(&server, "GET", "/demo.css", "").status, 200);

    let head = get(&server, "HEAD", "/", "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD got a body");
    assert_eq!(head.header("content-length"), page.header("content-length"));
    assert_eq!(head.header("etag"), page.header("etag"));
    // HTTP/1.0 too (curl -0).
    let old = raw(&server, "GET / HTTP/1.0\r\n\r\n");
    assert_eq!((old.status, old.body.len()), (200, length));
    assert_eq!(server.stats()["handshake_failures"], 0);
}

/// The page's own parameters may hold a URL (`?url=ws://..`): still the page, not the endpoint.
#[test]
fn the_page_is_served_with_a_url_in_its_query() {
    let server = TestServer::start();
    let page = get(&server, "GET", "/?url=ws://127.0.0.1:9/ws&topic=a", "");
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(page.text().contains("<!doctype html>"));
    let endpoint = get(&server, "GET", "/ws?next=http://x/", "");
    assert_eq!(endpoint.status, 426, "{}", endpoint.head);
}

#[test]
fn the_module_is_javascript_and_revalidates_with_its_etag() {
    let server = TestServer::start();
    let module = get(&server, "GET", "/wspush.js", "");
    assert_eq!(module.status, 200);
    assert_eq!(
        module.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(module.text().contains("export class WspushClient"));
    let etag = module.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let fresh = get(
        &server,
        "GET",
        "/wspush.js",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(fresh.status, 304, "{}", fresh.head);
    assert!(fresh.body.is_empty());
    assert_eq!(fresh.header("etag"), Some(etag.as_str()));
    let stale = get(&server, "GET", "/wspush.js", "If-None-Match: \"0\"\r\n");
    assert_eq!(stale.status, 200);
    // Each file has its own tag.
    assert_ne!(
        get(&server, "HEAD", "/", "").header("etag"),
        Some(etag.as_str())
    );
}

#[test]
fn refusals_name_what_is_allowed() {
    let server = TestServer::start();
    for path in ["/", "/wspush.js"] {
        let post = get(&server, "POST", path, "Content-Length: 2\r\n\r\n{}");
        assert_eq!(post.status, 405, "{path}");
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
    }
    let plain = get(&server, "GET", "/ws", "");
    assert_eq!(plain.status, 426);
    assert_eq!(plain.header("upgrade"), Some("websocket"));
    let connection = plain.header("connection").unwrap().to_ascii_lowercase();
    assert!(
        connection.split(", ").any(|t| t == "upgrade"),
        "{connection}"
    );
    for path in ["/nope", "/favicon.ico", "/ws/"] {
        assert_eq!(get(&server, "GET", path, "").status, 404, "{path}");
    }
    // The 426 and the 404s are refused handshakes; the 405s are answers of the page's routes.
    assert_eq!(server.stats()["handshake_failures"], 4);
}

#[test]
fn no_demo_page_keeps_only_the_module() {
    let mut config = test_config();
    config.demo_page = false;
    let server = TestServer::with(config);
    for path in ["/", "/demo.js", "/demo.css"] {
        assert_eq!(get(&server, "GET", path, "").status, 404, "{path}");
    }
    assert_eq!(get(&server, "GET", "/wspush.js", "").status, 200);
}

#[test]
fn with_path_slash_the_upgrade_wins() {
    let mut config = test_config();
    config.path = "/".into();
    let server = TestServer::with(config);
    assert_eq!(get(&server, "GET", "/", "").status, 426);
    assert_eq!(get(&server, "GET", "/wspush.js", "").status, 200);
}

#[test]
fn a_request_in_pieces_is_answered_and_a_pipelined_one_is_not() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.ws).unwrap();
    stream.set_nodelay(true).unwrap();
    for piece in ["GE", "T /wspush.js HT", "TP/1.1\r\nHost: x\r", "\n", "\r\n"] {
        stream.write_all(piece.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // separate reads, most of the time
    }
    let answer = parse(&read_until_closed_cleanly(&mut stream));
    assert_eq!((answer.status, answer.responses), (200, 1));

    let two = "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /wspush.js HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw(&server, two);
    assert_eq!((answer.status, answer.responses), (200, 1));
    assert!(answer.text().contains("<!doctype html>"));
    assert!(
        !answer.text().contains("export class"),
        "the second was served"
    );
}

/// The Node script's JSON lines, and every one seen so far.
struct Script {
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Script {
    /// The next line `wanted` accepts, within 15 s.
    fn until(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {what} ({e}); the script said: {:#?}", self.seen));
            self.seen.push(line.clone());
            if line["event"] == "timeout" {
                panic!("the script timed out; it said: {:#?}", self.seen);
            }
            if wanted(&line) {
                return line;
            }
        }
    }

    fn push(&mut self, n: u64) -> Value {
        self.until(&format!("push {n}"), |l| {
            l["event"] == "push" && l["data"]["n"] == n
        })
    }
}

const TOPIC: &str = "numbers";

fn publish(api: SocketAddr, data: &str) {
    let (status, body) = http(api, "POST", &format!("/publish?topic={TOPIC}"), data, &[]);
    assert_eq!(status, 200, "{body}");
}

/// `src/app/static/wspush.js` in Node: pushes published while its connection was cut arrive
/// after the reconnect with no gap (the resume recovered), and a server restart is reported
/// as continuity lost with the new epoch.
#[test]
fn the_module_resumes_after_a_cut_and_reports_a_restart() {
    let server = TestServer::start();
    let (ws, api) = (server.ws, server.api);
    let proxy = CuttingProxy::to(ws);
    let version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node is needed for this test (.ci/run installs it)");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("node --version said {version:?}"));
    // Node 20 and 21 need the flag for a global WebSocket; older ones refuse it (and the script
    // falls back on node-ws), newer ones have it anyway.
    let flag = if (20..22).contains(&major) {
        "--experimental-websocket"
    } else {
        "--no-warnings"
    };
    let mut child = Command::new("node")
        .args([
            flag,
            "--no-warnings",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/module_test.mjs"),
            &format!("ws://{}/ws", proxy.addr),
            TOPIC,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (20 or later) is needed for this test");
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if tx.send(value).is_err() {
                return;
            }
        }
    });
    let mut script = Script {
        lines,
        seen: Vec::new(),
    };
    script.until("subscribed", |l| l["event"] == "subscribed");
    for n in 1..=3 {
        publish(api, &format!(r#"{{"n":{n}}}"#));
    }
    let first = script.push(3);
    let epoch = first["epoch"].as_str().unwrap().to_owned();

    // The connection vanishes; 4..=6 are published before the client is back (its first
    // retry waits at least 200 ms).
    proxy.cut();
    for n in 4..=6 {
        publish(api, &format!(r#"{{"n":{n}}}"#));
    }
    let recovered = script.until("recovered", |l| l["event"] == "recovered");
    assert_eq!(recovered["topic"], TOPIC);
    assert_eq!(recovered["from"], 4);
    script.push(6);
    publish(api, r#"{"n":7}"#);
    script.push(7);

    // A restart on the same ports: a new epoch, reported.
    drop(server);
    let mut config = test_config();
    config.listen = ws;
    config.api_listen = Some(api);
    let server = TestServer::with(config);
    let lost = script.until("continuity lost", |l| l["event"] == "continuitylost");
    assert_eq!(lost["reason"], "epoch_changed", "{lost}");
    assert_ne!(lost["epoch"], epoch.as_str());
    assert_eq!(lost["from"], 1);
    for n in 8..=9 {
        publish(server.api, &format!(r#"{{"n":{n}}}"#));
    }
    publish(server.api, r#"{"n":10,"end":true}"#);
    let done = script.until("done", |l| l["event"] == "done");
    assert_eq!(done["reconnects"], 2);

    let numbers: Vec<u64> = script
        .seen
        .iter()
        .filter(|l| l["event"] == "push")
        .map(|l| l["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=10).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    let offsets: Vec<u64> = script
        .seen
        .iter()
        .filter(|l| l["event"] == "push")
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]);
    let mut child = child;
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
