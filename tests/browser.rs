//! Standard clients and a real browser against the `wspush` binary, directly and through nginx
//! with TLS. Every test is ignored by plain `cargo test` (they need Debian's `chromium`,
//! `nginx-light`, `node-ws` and `python3-websockets`, and minutes); `scripts/browser.sh` runs
//! them, in parallel, and `.ci/run` runs that.
//!
//! Liveness: Python `websockets` (with its own pings, and without), Node `ws` and Chromium hold
//! a subscription for `WSPUSH_LIVENESS_SECS` (default 300) with no application heartbeat, against
//! the server's default heartbeat (Ping after 10 s of silence, 1008 after 20 s), and then still
//! receive a publish. The opposite, a peer that answers nothing being closed at interval +
//! timeout, is `silent_peer_is_closed_at_the_default_heartbeat_limit` here with the defaults,
//! and `silent_client_is_closed_by_the_heartbeat` in tests/server.rs with short timers.
//!
//! The demo page end to end (through the `wspush.js` module, directly and through nginx, across
//! a cut and a restart): `demo_page.rs`.
//!
//! Screenshots of the Chromium pages go to `target/browser-artifacts/`.

mod common;

// Helpers in tests/browser/ (a crate root finds modules next to itself, hence the paths).
#[path = "browser/cdp.rs"]
mod cdp;
#[path = "browser/demo_page.rs"]
mod demo_page;
#[path = "browser/nginx.rs"]
mod nginx;
#[path = "browser/support.rs"]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use cdp::{Chromium, Page};
use common::{close_code, masked_frame, read_raw_frame, upgrade_stream};
use nginx::Nginx;
use support::{
    LogTail, PageServer, ScriptClient, ServerProcess, artifacts_dir, liveness_duration, node,
    python, script,
};

/// Time allowed for one step (a connect, a subscribe, a push) to show.
const STEP: Duration = Duration::from_secs(10);

// ---- standard clients ----

/// A script client subscribes, stays connected for the liveness period with no application
/// heartbeat, and then receives a publish on the same connection.
fn script_client_stays_connected(name: &str, command: impl FnOnce(&str, &str) -> Command) {
    let duration = liveness_duration();
    let server = ServerProcess::start(&["--no-tick"]);
    let topic = format!("live-{name}");
    let mut client = ScriptClient::spawn(name, &mut command(&server.ws_url(), &topic));
    client.show_on_failure("server log", &server.log);
    client.expect_line("SUBSCRIBED", STEP);
    client.stay_connected(duration);
    let data = json!({ "final": name }).to_string();
    server.publish(&topic, &data);
    client.expect_line(&format!("PUSH {data}"), STEP);
    server.assert_heartbeat_kept_alive(name);
}

#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn python_websockets_with_its_own_pings_stays_connected() {
    script_client_stays_connected("python-websockets", |url, topic| {
        let mut command = Command::new(python());
        command
            .arg(script("py/liveness_client.py"))
            .args([url, topic]);
        command
    });
}

/// `ping_interval=None`: only the server's Pings, answered by the library, keep it alive.
#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn python_websockets_without_pings_stays_connected() {
    script_client_stays_connected("python-websockets-no-ping", |url, topic| {
        let mut command = Command::new(python());
        command
            .arg(script("py/liveness_client.py"))
            .args([url, topic, "--no-ping"]);
        command
    });
}

/// Node's `ws` never pings by itself.
#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn node_ws_stays_connected() {
    script_client_stays_connected("node-ws", |url, topic| {
        let mut command = node();
        command
            .arg(script("js/liveness_client.js"))
            .args([url, topic]);
        command
    });
}

/// The defaults users get: a client that completes the handshake, subscribes and then answers
/// nothing gets an empty Ping after 10 s and 1008 at 20 s.
#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn silent_peer_is_closed_at_the_default_heartbeat_limit() {
    let server = ServerProcess::start(&["--no-tick"]);
    let mut raw = upgrade_stream(TcpStream::connect(server.ws).expect("connect"));
    raw.write_all(&masked_frame(0x81, br#"{"topics":["a"]}"#))
        .expect("send the subscribe");
    assert_eq!(read_raw_frame(&mut raw).0, 1, "the ack");
    let started = Instant::now();
    raw.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set_read_timeout");
    assert_eq!(read_raw_frame(&mut raw), (9, vec![]), "an empty Ping");
    let pinged = started.elapsed();
    let (opcode, payload) = read_raw_frame(&mut raw);
    let closed = started.elapsed();
    assert_eq!((opcode, close_code(&payload)), (8, 1008));
    // The timer wheel rounds deadlines up, never down; a second covers that and the scheduler.
    let within = |at: Duration, from: u64| {
        at >= Duration::from_millis(from * 1000 - 200) && at <= Duration::from_secs(from + 1)
    };
    assert!(within(pinged, 10), "pinged at {pinged:?}, not at 10 s");
    assert!(within(closed, 20), "closed at {closed:?}, not at 20 s");
    let stats = server.stats();
    assert_eq!(stats["heartbeat_timeouts"], 1, "{stats}");
    assert_eq!(stats["pings_sent"], 1, "{stats}");
}

// ---- Chromium ----

/// The page every browser test starts from, served from loopback by [`PageServer`]: from a
/// `data:` page, Chromium 156 fails WebSockets to loopback at once (1006, nothing reaches the
/// server), as its Local Network Access checks would. A server without `--allowed-origin`
/// accepts the page's origin.
const PAGE: &str =
    "<!doctype html><title>wspush test</title><h3>wspush browser test</h3><pre id=log></pre>";

/// Opens `url` from the page, sends `first` (a JSON array of messages) once open, and records
/// everything in `window.wspushTest`, shown on the page for the screenshot.
fn open_socket_script(url: &str, first: &Value) -> String {
    format!(
        r#"(() => {{
  const s = {{ url: {url}, open: false, authenticated: false, subscribed: false,
              pushCount: 0, pushes: [], other: [], errors: 0, close: null }};
  window.wspushTest = s;
  const log = document.getElementById('log');
  const render = () => {{
    log.textContent = JSON.stringify({{ ...s, pushes: undefined }}, null, 1) + '\nlast pushes:\n'
      + s.pushes.map(p => JSON.stringify(p)).join('\n');
  }};
  const ws = new WebSocket(s.url);
  window.wspushSocket = ws;
  ws.onopen = () => {{ s.open = true; for (const m of {first}) ws.send(JSON.stringify(m)); render(); }};
  ws.onmessage = (e) => {{
    const m = JSON.parse(e.data);
    if (m.cmd === 'subscribed') s.subscribed = true;
    else if (m.cmd === 'authenticated') s.authenticated = true;
    else if (m.cmd === 'push') {{
      s.pushCount += 1;
      s.pushes.push({{ topic: m.topic, data: m.data }});
      if (s.pushes.length > 12) s.pushes.shift();
    }} else s.other.push(m);
    render();
  }};
  ws.onerror = () => {{ s.errors += 1; render(); }};
  ws.onclose = (e) => {{ s.close = {{ code: e.code, reason: e.reason, clean: e.wasClean }}; render(); }};
  render();
  return true;
}})()"#,
        url = json!(url),
    )
}

/// A JavaScript condition: a push of `data` (JSON text) on `topic` has arrived.
fn pushed(topic: &str, data: &str) -> String {
    format!(
        "wspushTest.pushes.some(p => p.topic === {} && JSON.stringify(p.data) === {})",
        json!(topic),
        json!(data)
    )
}

/// One Chromium with one page, and the logs to show when it fails.
struct BrowserClient {
    name: String,
    /// Serves the test page of [`BrowserClient::open`]; the demo page comes from the server.
    _page_server: Option<PageServer>,
    chromium: Chromium,
    page: Page,
    /// A JavaScript expression whose value a failure shows (the page's state).
    state: &'static str,
    context: Vec<(String, LogTail)>,
}

impl BrowserClient {
    /// Chromium with a blank page; `state` is what a failure shows of the page.
    fn launch(name: &str, flags: &[&str], state: &'static str) -> BrowserClient {
        let chromium = Chromium::launch(name, flags);
        let page = chromium.new_page();
        BrowserClient {
            name: name.to_owned(),
            _page_server: None,
            chromium,
            page,
            state,
            context: Vec::new(),
        }
    }

    /// The test page holding one WebSocket to `url` that sends `first` once open.
    fn open(name: &str, flags: &[&str], url: &str, first: Value) -> BrowserClient {
        let mut client = BrowserClient::launch(name, flags, "JSON.stringify(window.wspushTest)");
        let page_server = PageServer::start(PAGE);
        client.navigate(&page_server.url());
        client._page_server = Some(page_server);
        if let Err(e) = client.page.evaluate(&open_socket_script(url, &first)) {
            client.fail(&format!("open the WebSocket: {e}"), "");
        }
        client
    }

    fn navigate(&mut self, url: &str) {
        if let Err(e) = self.page.navigate(url) {
            self.fail(&format!("navigate to {url}: {e}"), "");
        }
    }

    fn show_on_failure(&mut self, name: &str, log: &LogTail) {
        self.context.push((name.to_owned(), log.clone()));
    }

    /// Waits for `condition`; `more` adds to the failure message (nginx's logs).
    fn wait(&mut self, condition: &str, timeout: Duration, more: &str) {
        if let Err(e) = self.page.wait_for(condition, timeout) {
            self.fail(&e.to_string(), more);
        }
    }

    /// Holds the page's connection for `duration`, failing as soon as it closes.
    fn stay_connected(&mut self, duration: Duration, more: &str) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            match self.page.evaluate("wspushTest.close === null") {
                Ok(Value::Bool(true)) => {}
                Ok(_) => self.fail("closed during the liveness period", more),
                Err(e) => self.fail(&e.to_string(), more),
            }
            std::thread::sleep(Duration::from_secs(1)); // the check period, bounded above
        }
    }

    fn screenshot(&mut self) {
        let dir = artifacts_dir();
        match self.page.screenshot(&dir, &self.name) {
            Ok(path) => {
                let png = std::fs::read(&path).unwrap_or_default();
                assert!(
                    png.starts_with(b"\x89PNG\r\n\x1a\n"),
                    "{} is not a PNG",
                    path.display()
                );
                eprintln!("{}: screenshot {}", self.name, path.display());
            }
            Err(e) => self.fail(&format!("screenshot: {e}"), ""),
        }
    }

    fn fail(&mut self, what: &str, more: &str) -> ! {
        let state = self
            .page
            .evaluate(self.state)
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("({e})"));
        let context = support::logs_text(&self.context);
        panic!(
            "{}: {what}\npage state: {state}\nconsole:\n{}\nchromium stderr:\n{}{context}\n{more}",
            self.name,
            self.page.console(),
            self.chromium.stderr_tail()
        );
    }
}

/// Chromium with no application heartbeat: its network stack answers the server's Pings.
#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn chromium_stays_connected() {
    let duration = liveness_duration();
    let server = ServerProcess::start(&["--no-tick"]);
    let first = json!([{ "topics": ["live-chromium"] }]);
    let mut browser = BrowserClient::open("chromium-liveness", &[], &server.ws_url(), first);
    browser.show_on_failure("server log", &server.log);
    browser.wait("wspushTest.subscribed", STEP, "");
    browser.stay_connected(duration, "");
    let data = json!({ "final": "chromium" }).to_string();
    server.publish("live-chromium", &data);
    browser.wait(&pushed("live-chromium", &data), STEP, "");
    browser.screenshot();
    server.assert_heartbeat_kept_alive("chromium");
}

// ---- nginx with TLS ----

/// Chromium (`--ignore-certificate-errors`) and Python `websockets` (verification off) over
/// `wss://` through nginx configured by contrib/nginx-wspush.conf: both stay subscribed for the
/// liveness period and get the demo tick and an API publish; nginx logs both upgrades.
#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn nginx_tls_proxy_carries_chromium_and_python() {
    let duration = liveness_duration();
    // The demo tick stays on: "publish msg" to test-topic every 3 s.
    let server = ServerProcess::start(&[]);
    let nginx = Nginx::start("tls", server.ws);
    let url = nginx.wss_url("/ws");

    let first = json!([{ "topics": ["test-topic", "news"] }]);
    let flags = ["--ignore-certificate-errors"];
    let mut browser = BrowserClient::open("chromium-nginx-tls", &flags, &url, first);
    browser.show_on_failure("server log", &server.log);
    browser.wait("wspushTest.subscribed", STEP, &nginx.logs());
    let mut python_client = ScriptClient::spawn(
        "python-websockets-nginx-tls",
        Command::new(python())
            .arg(script("py/liveness_client.py"))
            .args([url.as_str(), "news"]),
    );
    python_client.show_on_failure("server log", &server.log);
    python_client.expect_line("SUBSCRIBED", STEP);

    browser.wait(
        &pushed("test-topic", r#""publish msg""#),
        STEP,
        &nginx.logs(),
    );
    // Both hold on together; the browser's check runs on this thread, Python's output is read
    // afterwards (a close would have ended it with a CLOSED line).
    browser.stay_connected(duration, &nginx.logs());
    python_client.stay_connected(Duration::ZERO);

    let data = json!({ "final": "through nginx" }).to_string();
    server.publish("news", &data);
    browser.wait(&pushed("news", &data), STEP, &nginx.logs());
    python_client.expect_line(&format!("PUSH {data}"), STEP);
    browser.screenshot();
    server.assert_heartbeat_kept_alive("clients behind nginx");

    // nginx writes an upgraded request's log line when the connection ends.
    drop(python_client);
    if let Err(e) = browser.page.evaluate("wspushSocket.close(1000); true") {
        browser.fail(&e.to_string(), &nginx.logs());
    }
    wait_for_upgrades_logged(&nginx, 2);
}

/// Waits until nginx's access log shows `count` answered upgrades of `/ws`.
fn wait_for_upgrades_logged(nginx: &Nginx, count: usize) {
    let deadline = Instant::now() + STEP;
    loop {
        let upgrades = nginx
            .access_log()
            .lines()
            .filter(|l| l.contains("\"GET /ws") && l.contains("\" 101 "))
            .count();
        if upgrades >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{upgrades} of {count} upgrades logged in {STEP:?}\n{}",
            nginx.logs()
        );
        std::thread::sleep(Duration::from_millis(100)); // polling a file, bounded above
    }
}

/// A token sent in the first message, not in the URL, stays out of nginx's access log (which
/// logs request lines, query strings included).
///
/// First-message authentication (`{"cmd":"auth","token":T}` answered `{"cmd":"authenticated"}`)
/// keeps the token out of the URL, so out of nginx's access log.
#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn first_message_auth_keeps_the_token_out_of_the_nginx_log() {
    const TOKEN: &str = "s3cret-client-token-7f3a";
    let server = ServerProcess::start(&["--no-tick", "--client-token", TOKEN]);
    let nginx = Nginx::start("auth", server.ws);
    let first = json!([{ "cmd": "auth", "token": TOKEN }, { "topics": ["news"] }]);
    let flags = ["--ignore-certificate-errors"];
    let mut browser =
        BrowserClient::open("chromium-nginx-auth", &flags, &nginx.wss_url("/ws"), first);
    browser.show_on_failure("server log", &server.log);
    browser.wait(
        "wspushTest.authenticated && wspushTest.subscribed",
        STEP,
        &nginx.logs(),
    );
    let data = json!({ "authenticated": true }).to_string();
    server.publish("news", &data);
    browser.wait(&pushed("news", &data), STEP, &nginx.logs());
    if let Err(e) = browser.page.evaluate("wspushSocket.close(1000); true") {
        browser.fail(&e.to_string(), &nginx.logs());
    }
    wait_for_upgrades_logged(&nginx, 1);
    assert!(
        !nginx.logs().contains(TOKEN),
        "the token reached nginx's logs:\n{}",
        nginx.logs()
    );
}

/// README shows the configuration the nginx tests run (not ignored: it needs no nginx).
#[test]
fn readme_shows_the_tested_nginx_config() {
    let readme = include_str!("../README.md");
    let block = readme
        .split_once("```nginx\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("README has an ```nginx block");
    assert_eq!(
        block,
        include_str!("../contrib/nginx-wspush.conf"),
        "README's nginx block differs from contrib/nginx-wspush.conf"
    );
}
