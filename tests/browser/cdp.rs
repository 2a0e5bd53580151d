//! Headless Chromium driven over the DevTools protocol (CDP), with no driver download: Debian's
//! `chromium` writes the port of its debugging endpoint into `DevToolsActivePort` in a fresh
//! profile directory, `PUT /json/new` opens a page, and the page's WebSocket takes CDP commands
//! (`{"id","method","params"}` in, the result with the same `id` back, events in between).
//!
//! Reusable by page tests: [`Chromium::launch`], [`Chromium::new_page`], then
//! [`Page::navigate`], [`Page::evaluate`], [`Page::wait_for`], [`Page::type_into`],
//! [`Page::click`], [`Page::screenshot`], and [`Page::problems`] for what the console reported.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::support::{LogTail, TempDir};

/// How long Chromium may take to start and to answer one command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The flags every test browser gets: headless, no sandbox (tests may run as root), and none of
/// the background traffic (updates, sync, QUIC probes) that would leave loopback.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
];

#[derive(Debug)]
pub enum CdpError {
    /// The debugging connection failed.
    Transport(String),
    /// Chromium answered the command with an error object.
    Remote(Value),
    /// A script threw (`Runtime.evaluate`'s `exceptionDetails`).
    Script(Value),
    Timeout(String),
}

impl fmt::Display for CdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CdpError::Transport(e) => write!(f, "CDP transport: {e}"),
            CdpError::Remote(e) => write!(f, "CDP error: {e}"),
            CdpError::Script(e) => write!(f, "script threw: {e}"),
            CdpError::Timeout(what) => write!(f, "CDP timeout: {what}"),
        }
    }
}

/// A running Chromium with its own profile; ended (by pid) and its profile removed on drop.
pub struct Chromium {
    child: std::process::Child,
    debug: SocketAddr,
    stderr: LogTail,
    // Removed after the process has ended: fields drop after `Drop::drop`.
    profile: TempDir,
}

impl Chromium {
    /// Starts `WSPUSH_CHROMIUM` (default `chromium`) with the test flags and `extra`.
    pub fn launch(name: &str, extra: &[&str]) -> Chromium {
        let profile = TempDir::new(&format!("chromium-{name}"));
        let binary = std::env::var("WSPUSH_CHROMIUM")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "chromium".to_owned());
        let mut child = Command::new(&binary)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install Debian's chromium): {e}"));
        let stderr = LogTail::follow(child.stderr.take().expect("piped stderr"));
        let mut chromium = Chromium {
            child,
            debug: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            profile,
        };
        chromium.debug = chromium.wait_for_debug_port();
        chromium
    }

    /// `DevToolsActivePort` holds the port and the browser endpoint's path, one per line; it
    /// may be seen half-written, so only a file with both lines counts.
    fn wait_for_debug_port(&mut self) -> SocketAddr {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited with {status}:\n{}", self.stderr.text());
            }
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(_path)) = (lines.next(), lines.next())
                && let Ok(port) = port.trim().parse::<u16>()
            {
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
            std::thread::sleep(Duration::from_millis(50)); // polling a file, bounded above
        }
        panic!(
            "chromium wrote no {} in {START_TIMEOUT:?}:\n{}",
            file.display(),
            self.stderr.text()
        );
    }

    /// The last lines Chromium wrote to stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        self.stderr.text()
    }

    /// Opens a new page on `about:blank` and connects to its debugging WebSocket.
    pub fn new_page(&self) -> Page {
        let body = self
            .debug_http("PUT", "/json/new?about:blank")
            .unwrap_or_else(|e| panic!("/json/new: {e}\nchromium:\n{}", self.stderr_tail()));
        let target: Value = serde_json::from_str(&body).expect("/json/new answers JSON");
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no webSocketDebuggerUrl in {target}"));
        let stream = TcpStream::connect(self.debug).expect("connect to the page target");
        // A busy machine (the whole suite in parallel) can take Chromium well past the short
        // read timeout of the page loop to answer the handshake: a timeout there is no answer.
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("set_read_timeout");
        let (ws, _) = tungstenite::client(url, stream).expect("CDP WebSocket handshake");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        Page {
            ws,
            next_id: 0,
            console: Vec::new(),
        }
    }

    /// One request to the debugging port's HTTP side. Chromium refuses a `Host` that is not an
    /// IP address or `localhost`, so it names the address.
    fn debug_http(&self, method: &str, path: &str) -> Result<String, CdpError> {
        let io = |e: std::io::Error| CdpError::Transport(e.to_string());
        let mut stream = TcpStream::connect(self.debug).map_err(io)?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.debug
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        // Chromium keeps the connection open despite `Connection: close`: the body ends at its
        // Content-Length.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .ok_or_else(|| CdpError::Transport(format!("no Content-Length: {head}")))?;
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(CdpError::Transport(format!("unexpected answer: {text}")));
                }
                if body.len() >= length {
                    return Ok(body.to_owned());
                }
            }
            match stream.read(&mut buf).map_err(io)? {
                0 => return Err(CdpError::Transport(format!("closed early: {text}"))),
                n => raw.extend_from_slice(&buf[..n]),
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first: the browser then ends its renderer and zygote processes itself.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// One page's debugging session.
pub struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// `console.*` output, uncaught exceptions and the browser's own messages (network
    /// failures, CSP violations), once `Runtime` and `Log` are enabled.
    console: Vec<ConsoleEntry>,
}

/// One line of what the page's console showed.
#[derive(Clone, Debug)]
pub struct ConsoleEntry {
    /// `console.error` and the like: the method (`log`, `error`, `warning`, ...); the
    /// browser's messages: `log:` and their source (`network`, `security`, `violation`, ...);
    /// an uncaught exception: `exception`.
    pub origin: String,
    /// `error`, `warning`, `info`, `verbose` (an exception is an `error`).
    pub level: String,
    pub text: String,
}

impl fmt::Display for ConsoleEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.origin, self.level, self.text)
    }
}

impl Page {
    /// Sends a command and waits for its result; events that arrive meanwhile are kept only
    /// for console output.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CdpError> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(command.to_string()))
            .map_err(|e| CdpError::Transport(e.to_string()))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while Instant::now() < deadline {
            let text = match self.ws.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(CdpError::Transport(e.to_string())),
            };
            let message: Value = serde_json::from_str(&text)
                .map_err(|e| CdpError::Transport(format!("bad JSON from chromium: {e}")))?;
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    return Err(CdpError::Remote(error.clone()));
                }
                return Ok(message["result"].clone());
            }
            self.keep_event(&message);
        }
        Err(CdpError::Timeout(format!(
            "{method} after {COMMAND_TIMEOUT:?}"
        )))
    }

    fn keep_event(&mut self, event: &Value) {
        let params = &event["params"];
        let text = |v: &Value| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        };
        let entry = match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let kind = text(&params["type"]);
                let level = match kind.as_str() {
                    "error" | "assert" => "error",
                    "warning" => "warning",
                    _ => "info",
                };
                ConsoleEntry {
                    origin: kind,
                    level: level.to_owned(),
                    text: params["args"].to_string(),
                }
            }
            Some("Runtime.exceptionThrown") => ConsoleEntry {
                origin: "exception".to_owned(),
                level: "error".to_owned(),
                text: params["exceptionDetails"].to_string(),
            },
            Some("Log.entryAdded") => ConsoleEntry {
                origin: format!("log:{}", text(&params["entry"]["source"])),
                level: text(&params["entry"]["level"]),
                text: text(&params["entry"]["text"]),
            },
            _ => return,
        };
        if self.console.len() < 200 {
            self.console.push(entry);
        }
    }

    /// Console lines, exceptions and browser messages seen so far.
    pub fn console(&self) -> String {
        let lines: Vec<String> = self.console.iter().map(|e| e.to_string()).collect();
        lines.join("\n")
    }

    /// Errors and warnings the console showed so far, after a command has collected the
    /// events that were waiting.
    pub fn problems(&mut self) -> Result<Vec<ConsoleEntry>, CdpError> {
        self.evaluate("true")?;
        Ok(self
            .console
            .iter()
            .filter(|e| e.level == "error" || e.level == "warning")
            .cloned()
            .collect())
    }

    /// Runs `source` in every document this page loads from now on, before the document's own
    /// scripts (not subject to its Content-Security-Policy).
    pub fn run_before_scripts(&mut self, source: &str) -> Result<(), CdpError> {
        self.call("Page.enable", json!({}))?;
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": source }),
        )?;
        Ok(())
    }

    /// Enables console events, then loads `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) -> Result<(), CdpError> {
        self.call("Runtime.enable", json!({}))?;
        self.call("Log.enable", json!({}))?;
        self.call("Page.enable", json!({}))?;
        let result = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = result.get("errorText") {
            return Err(CdpError::Remote(error.clone()));
        }
        let loaded = "document.readyState === 'complete'";
        self.wait_for(loaded, Duration::from_secs(10))
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value as JSON.
    pub fn evaluate(&mut self, expression: &str) -> Result<Value, CdpError> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(CdpError::Script(details.clone()));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `condition` (a JavaScript expression) every 100 ms until it is `true`.
    pub fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<(), CdpError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.evaluate(condition)? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CdpError::Timeout(format!(
                    "`{condition}` after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100)); // the poll period, bounded above
        }
    }

    /// The centre of the element `selector` names, scrolled into view, in CSS pixels of the
    /// viewport.
    fn centre_of(&mut self, selector: &str) -> Result<(f64, f64), CdpError> {
        let script = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null;
               e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect();
               return [r.left + r.width / 2, r.top + r.height / 2]; }})()",
            json!(selector)
        );
        let centre = self.evaluate(&script)?;
        match (centre[0].as_f64(), centre[1].as_f64()) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(CdpError::Script(json!(format!("no element {selector}")))),
        }
    }

    /// Clicks the element `selector` names with the mouse, as a user would (press and release
    /// at its centre), so the page sees real pointer events.
    pub fn click(&mut self, selector: &str) -> Result<(), CdpError> {
        let (x, y) = self.centre_of(selector)?;
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )?;
        }
        Ok(())
    }

    /// Clicks into the input `selector` names, selects what it holds and types `text` over it
    /// (`Input.insertText`: the input events a keyboard would cause).
    pub fn type_into(&mut self, selector: &str, text: &str) -> Result<(), CdpError> {
        self.click(selector)?;
        self.evaluate(&format!(
            "document.querySelector({}).select()",
            json!(selector)
        ))?;
        self.call("Input.insertText", json!({ "text": text }))?;
        Ok(())
    }

    /// Saves a PNG of the page as `dir/name.png` and returns its path.
    pub fn screenshot(&mut self, dir: &Path, name: &str) -> Result<PathBuf, CdpError> {
        let result = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = result["data"]
            .as_str()
            .ok_or_else(|| CdpError::Remote(result.clone()))?;
        let png = decode_base64(data)
            .ok_or_else(|| CdpError::Transport("screenshot is not base64".to_owned()))?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| CdpError::Transport(e.to_string()))?;
        Ok(path)
    }
}

/// Standard-alphabet base64 with padding (what CDP sends); `None` on any other input.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, quad) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - padding] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * padding as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

/// RFC 4648 §10's vectors, and what must be refused.
#[test]
fn decode_base64_vectors() {
    let vectors = [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
    ];
    for (encoded, plain) in vectors {
        assert_eq!(
            decode_base64(encoded).as_deref(),
            Some(plain.as_bytes()),
            "{encoded}"
        );
    }
    assert_eq!(
        decode_base64("+/+/").as_deref(),
        Some(&[0xfb, 0xff, 0xbf][..])
    );
    for bad in ["Zg=", "Zg==Zm9v", "Z===", "Zm9-", "Zm9_"] {
        assert_eq!(decode_base64(bad), None, "{bad}");
    }
}
