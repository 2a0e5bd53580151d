//! The demo page (`GET /`, src/app/static/: index.html, demo.js and the `wspush.js` module it
//! imports) in Chromium against the real server on loopback, directly and through nginx with
//! TLS. The page loads, connects, subscribes through its own form, and shows API publishes and
//! the demo tick. Its connection is then cut while the server stays up: it reconnects, resumes
//! and shows every message published meanwhile. Then the server restarts (a new epoch, history
//! gone) and messages are published before the page is back: it reports the lost continuity
//! and shows every message of the new stream from its offset 1. Throughout, each offset
//! appears exactly once and in order, and the console shows no error but the failed reconnect
//! attempts the test causes. The screenshot, taken at the end, shows the notices.
//!
//! A [`CuttingProxy`] carries the page's WebSocket (directly, or behind nginx): it makes the
//! cut, and its gate keeps the page away until the test has published what the page must
//! recover, which each publish reply confirms (`subscribers: 0`).

use std::time::{Duration, Instant};

use serde_json::json;

use super::{BrowserClient, STEP};
use crate::common::proxy::CuttingProxy;
use crate::nginx::Nginx;
use crate::support::ServerProcess;

/// The topic the test subscribes by typing it into the page.
const TOPIC: &str = "orders";
/// Messages published to [`TOPIC`] before the cut, and while the page is away.
const BEFORE: usize = 3;
const AWAY: usize = 4;

/// What a failure shows of the page.
const PAGE_STATE: &str = r#"JSON.stringify({
  state: document.getElementById('state').textContent,
  reconnects: document.getElementById('reconnects').textContent,
  topics: [...document.querySelectorAll('#topics li')].map(li => li.dataset.topic),
  notices: [...document.querySelectorAll('#notices li')].map(li => `${li.dataset.kind}: ${li.textContent}`),
  pushes: [...document.querySelectorAll('#pushes li')].slice(0, 40)
    .map(li => `${li.dataset.topic} #${li.dataset.offset} ${li.querySelector('.data')?.textContent}`),
  cspViolations: window.cspViolations,
}, null, 1)"#;

/// Installed before the page's scripts: records Content-Security-Policy violations.
const RECORD_CSP_VIOLATIONS: &str = "window.cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));";

#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// The page from the server's port, its WebSocket (`?url=`) through the proxy.
    Direct,
    /// Page and WebSocket from `https://` nginx (contrib/nginx-wspush.conf), whose upstream is
    /// the proxy.
    NginxTls,
}

#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn the_demo_page_shows_pushes_and_resumes_across_a_restart() {
    DemoPage::open(Route::Direct).run();
}

#[test]
#[ignore = "needs chromium/nginx: scripts/browser.sh"]
fn the_demo_page_resumes_across_a_restart_through_nginx_tls() {
    DemoPage::open(Route::NginxTls).run();
}

/// The page in Chromium, what it connects through, and what it must show of [`TOPIC`].
struct DemoPage {
    browser: BrowserClient,
    nginx: Option<Nginx>,
    proxy: CuttingProxy,
    /// `None` while it restarts.
    server: Option<ServerProcess>,
    /// `(offset, data)` of every publish to [`TOPIC`], in order: what `#pushes` must show.
    published: Vec<(String, String)>,
    /// The epoch of each of them.
    epochs: Vec<String>,
}

impl DemoPage {
    fn open(route: Route) -> DemoPage {
        // Defaults: history on, the demo tick to test-topic every 3 s.
        let server = ServerProcess::start(&[]);
        let proxy = CuttingProxy::to(server.ws);
        let nginx = (route == Route::NginxTls).then(|| Nginx::start("demo-page", proxy.addr));
        let (name, url) = match &nginx {
            None => (
                "demo-page",
                format!("http://{}/?url=ws://{}/ws", server.ws, proxy.addr),
            ),
            Some(nginx) => ("demo-page-nginx", format!("https://{}/", nginx.addr)),
        };
        // Tall enough for the screenshot to show the notices and the latest pushes.
        let mut flags = vec!["--window-size=1100,1400"];
        if nginx.is_some() {
            flags.push("--ignore-certificate-errors");
        }
        let mut browser = BrowserClient::launch(name, &flags, PAGE_STATE);
        browser.show_on_failure("server log", &server.log);
        if let Err(e) = browser.page.run_before_scripts(RECORD_CSP_VIOLATIONS) {
            browser.fail(&e.to_string(), "");
        }
        browser.navigate(&url);
        DemoPage {
            browser,
            nginx,
            proxy,
            server: Some(server),
            published: Vec::new(),
            epochs: Vec::new(),
        }
    }

    fn run(mut self) {
        self.loads_subscribes_and_shows_pushes();
        self.resumes_after_a_cut();
        self.shows_the_new_stream_after_a_restart();
        self.screenshot_and_console_check();
    }

    /// a) `#state` open; TOPIC typed into the form and subscribed; API publishes and the tick
    /// show.
    fn loads_subscribes_and_shows_pushes(&mut self) {
        self.wait("document.getElementById('state').dataset.state === 'open'");
        if let Err(e) = self.browser.page.type_into("#topic", TOPIC) {
            self.fail(&format!("type the topic: {e}"));
        }
        if let Err(e) = self.browser.page.click("#subscribe") {
            self.fail(&format!("click Subscribe: {e}"));
        }
        self.wait(&format!(
            "document.querySelector('#topics li[data-topic={}]') !== null",
            json!(TOPIC)
        ));
        // test-topic (the page's default) and TOPIC.
        self.wait_for_subscriptions(2);
        for _ in 0..BEFORE {
            self.publish(1);
        }
        self.expect_every_push();
        self.wait(&format!(
            "[...document.querySelectorAll('#pushes li[data-topic=\"test-topic\"]')]
               .some(li => li.querySelector('.data').textContent === {})",
            json!(r#""publish msg""#)
        ));
    }

    /// b) The connection is cut with the server up; what is published while the page is away
    /// arrives after its resume, then live pushes.
    fn resumes_after_a_cut(&mut self) {
        self.proxy.set_gate_open(false);
        self.proxy.cut();
        self.wait("document.getElementById('state').dataset.state === 'reconnecting'");
        self.wait_for_subscriptions(0);
        for _ in 0..AWAY {
            self.publish(0);
        }
        self.proxy.set_gate_open(true);
        self.wait(&notice("recovered", TOPIC));
        self.expect_every_push();
        self.expect_reconnects(1);
        self.publish(1);
        self.expect_every_push();
    }

    /// c) SIGTERM, a restart on the same ports, and publishes before the page is back: the page
    /// reports the lost continuity and shows the new stream from its offset 1.
    fn shows_the_new_stream_after_a_restart(&mut self) {
        self.proxy.set_gate_open(false);
        let old = self
            .server
            .take()
            .expect("the server runs until the restart");
        let (ws, api) = (old.ws, old.api);
        let closes = self.close_notices();
        old.terminate();
        // The 1001, then an attempt that fails while the server is away.
        self.wait(&format!(
            "document.querySelectorAll('#notices li[data-kind=\"close\"]').length >= {}",
            closes + 2
        ));
        let server = ServerProcess::start_on(ws, api, &[]);
        self.browser
            .show_on_failure("restarted server log", &server.log);
        self.server = Some(server);
        let first_after = self.published.len();
        for _ in 0..AWAY {
            self.publish(0);
        }
        let old_epoch = &self.epochs[first_after - 1];
        if self.epochs[first_after..].iter().any(|e| e == old_epoch) {
            self.fail(&format!("the restart kept epoch {old_epoch}"));
        }
        if self.published[first_after].0 != "1" {
            self.fail("the restarted stream does not start at offset 1");
        }
        self.proxy.set_gate_open(true);
        self.wait(&notice("continuitylost", TOPIC));
        let text = self.browser.page.evaluate(&format!(
            "document.querySelector('#notices li[data-kind=\"continuitylost\"][data-topic={}]').textContent",
            json!(TOPIC)
        ));
        match text {
            Ok(text)
                if text
                    .as_str()
                    .is_some_and(|t| t.ends_with("continuing at #1")) => {}
            other => self.fail(&format!("the continuity-lost notice: {other:?}")),
        }
        self.expect_every_push();
        self.expect_reconnects(2);
        self.publish(1);
        self.expect_every_push();
        for (kind, count) in [("recovered", 1), ("continuitylost", 1)] {
            let selector = format!(
                "#notices li[data-kind={}][data-topic={}]",
                json!(kind),
                json!(TOPIC)
            );
            let shown = self.browser.page.evaluate(&format!(
                "document.querySelectorAll({}).length",
                json!(selector)
            ));
            if !shown.as_ref().is_ok_and(|n| n == count) {
                self.fail(&format!("{selector}: {shown:?}, not {count}"));
            }
        }
    }

    /// The screenshot, and nothing in the console but the reconnect attempts the test made
    /// fail.
    fn screenshot_and_console_check(&mut self) {
        self.browser.screenshot();
        let problems = match self.browser.page.problems() {
            Ok(problems) => problems,
            Err(e) => self.fail(&e.to_string()),
        };
        let unexpected: Vec<String> = problems
            .iter()
            .filter(|p| {
                // Chromium logs each failed WebSocket attempt (refused, 502 from nginx).
                !(p.origin == "log:network"
                    && p.text.starts_with("WebSocket connection to ")
                    && p.text.contains(" failed"))
            })
            .map(|p| p.to_string())
            .collect();
        eprintln!(
            "{}: {} failed reconnect attempt(s) in the console, as caused",
            self.browser.name,
            problems.len() - unexpected.len()
        );
        if !unexpected.is_empty() {
            self.fail(&format!("console problems:\n{}", unexpected.join("\n")));
        }
        match self.browser.page.evaluate("window.cspViolations.length") {
            Ok(n) if n == 0 => {}
            other => self.fail(&format!("CSP violations: {other:?}")),
        }
    }

    fn server(&self) -> &ServerProcess {
        self.server
            .as_ref()
            .expect("used only while the server runs")
    }

    /// Publishes the next `{"n":N}` to TOPIC, which must reach `subscribers` sessions (0: the
    /// page is away and must get it through its resume).
    fn publish(&mut self, subscribers: u64) {
        let data = json!({ "n": self.published.len() + 1 }).to_string();
        let reply = self.server().publish(TOPIC, &data);
        if reply["subscribers"] != subscribers {
            self.fail(&format!(
                "publish {data}: {reply}, not {subscribers} subscribers"
            ));
        }
        let (Some(offset), Some(epoch)) = (reply["offset"].as_u64(), reply["epoch"].as_str())
        else {
            self.fail(&format!("publish {data}: no position in {reply}"))
        };
        self.epochs.push(epoch.to_owned());
        self.published.push((offset.to_string(), data));
    }

    /// Waits until `#pushes` holds as many pushes of TOPIC as were published, then checks they
    /// are exactly those, in order: no gap, no duplicate.
    fn expect_every_push(&mut self) {
        let count = self.published.len();
        self.wait(&format!(
            "document.querySelectorAll('#pushes li[data-topic={}]').length >= {count}",
            json!(TOPIC)
        ));
        let shown = self.browser.page.evaluate(&format!(
            "[...document.querySelectorAll('#pushes li[data-topic={}]')].reverse()
               .map(li => [li.dataset.offset, li.querySelector('.data').textContent])",
            json!(TOPIC)
        ));
        let expected = json!(self.published);
        match shown {
            Ok(shown) if shown == expected => {}
            other => self.fail(&format!(
                "#pushes of {TOPIC} (oldest first): {other:?}\nexpected {expected}"
            )),
        }
    }

    /// How many close notices `#notices` shows (one per connection or attempt that ended).
    fn close_notices(&mut self) -> u64 {
        let count = "document.querySelectorAll('#notices li[data-kind=\"close\"]').length";
        let shown = self.browser.page.evaluate(count);
        match shown.as_ref().ok().and_then(serde_json::Value::as_u64) {
            Some(n) => n,
            None => self.fail(&format!("{count}: {shown:?}")),
        }
    }

    fn expect_reconnects(&mut self, count: u64) {
        let shown = self
            .browser
            .page
            .evaluate("document.getElementById('reconnects').textContent");
        if !shown.as_ref().is_ok_and(|r| r == &json!(count.to_string())) {
            self.fail(&format!("#reconnects: {shown:?}, not {count}"));
        }
    }

    /// Waits until the server counts `count` subscriptions (it applies a subscribe the page
    /// sent, or a cut's close, on its own time).
    fn wait_for_subscriptions(&mut self, count: u64) {
        let deadline = Instant::now() + STEP;
        loop {
            let stats = self.server().stats();
            if stats["subscriptions"] == count {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("{count} subscriptions expected: {stats}"));
            }
            std::thread::sleep(Duration::from_millis(50)); // polling /stats, bounded above
        }
    }

    fn wait(&mut self, condition: &str) {
        let more = self.more();
        self.browser.wait(condition, STEP, &more);
    }

    fn fail(&mut self, what: &str) -> ! {
        let more = self.more();
        self.browser.fail(what, &more)
    }

    /// nginx's logs, when it is in the way.
    fn more(&self) -> String {
        self.nginx.as_ref().map(Nginx::logs).unwrap_or_default()
    }
}

/// A JavaScript condition: `#notices` shows a notice of `kind` about `topic`.
fn notice(kind: &str, topic: &str) -> String {
    format!(
        "document.querySelector('#notices li[data-kind={}][data-topic={}]') !== null",
        json!(kind),
        json!(topic)
    )
}
