//! Processes the browser tests start: the real `wspush` binary, client scripts, and the temporary
//! directories and logs they need. Each process is held by a guard that ends it by its pid, and
//! each keeps the tail of its output for failure messages.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{KillOnDrop, listening_addrs, publish_to, start_until_listening, stats_of};

/// The last lines of a process's output, shared with the thread that reads it.
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<VecDeque<String>>>);

impl LogTail {
    const KEEP: usize = 60;

    pub fn push(&self, line: String) {
        // Chromium without a session bus complains about it on every start; that says nothing.
        if line.contains(":ERROR:dbus/") {
            return;
        }
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == Self::KEEP {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Reads `source` line by line on a thread of its own until it ends, so the process never
    /// blocks on a full pipe.
    pub fn follow(source: impl Read + Send + 'static) -> LogTail {
        let tail = LogTail::default();
        let writer = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                writer.push(line);
            }
        });
        tail
    }

    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// A directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("wspush-{name}-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `target/browser-artifacts/`, next to the binaries Cargo built for this run.
pub fn artifacts_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_wspush"));
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/");
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

/// How long the liveness tests hold their connections: `WSPUSH_LIVENESS_SECS`, default 300.
pub fn liveness_duration() -> Duration {
    let secs = match std::env::var("WSPUSH_LIVENESS_SECS") {
        Ok(v) if !v.is_empty() => v.parse().expect("WSPUSH_LIVENESS_SECS: whole seconds"),
        _ => 300,
    };
    // Below interval + timeout (20 s by default) a dead connection would not yet be closed, and
    // the test would prove nothing.
    assert!(
        secs >= 30,
        "WSPUSH_LIVENESS_SECS={secs}: at least 30, past the 20 s heartbeat limit"
    );
    Duration::from_secs(secs)
}

/// The `wspush` binary on loopback ephemeral ports, its log kept.
pub struct ServerProcess {
    child: KillOnDrop,
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub log: LogTail,
}

impl ServerProcess {
    /// Starts the server with `extra` flags after the loopback listeners; the heartbeat stays
    /// at its defaults unless `extra` changes it.
    pub fn start(extra: &[&str]) -> ServerProcess {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerProcess::start_on(any_port, any_port, extra)
    }

    /// Starts the server listening on `ws` and `api` (a restart on the ports of an earlier one,
    /// or port 0 for any).
    pub fn start_on(ws: SocketAddr, api: SocketAddr, extra: &[&str]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wspush"));
        command
            .args(["--listen", &ws.to_string()])
            .args(["--api-listen", &api.to_string()])
            .args(extra);
        let (child, lines, ready) = start_until_listening(&mut command);
        let log = LogTail::default();
        let writer = log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| writer.push(l)));
        let (ws, api) = listening_addrs(&ready);
        ServerProcess {
            child,
            ws,
            api: api.expect(&ready),
            log,
        }
    }

    /// Stops the server as an operator does, with SIGTERM (it closes its sessions with 1001),
    /// and waits for it to exit, successfully.
    pub fn terminate(mut self) {
        let pid = self.child.0.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.as_ref().is_ok_and(|s| s.success()),
            "kill -TERM {pid}: {sent:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.0.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "the server exited with {status} on SIGTERM\n{}",
                        self.log.text()
                    );
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20)); // awaiting an exit, bounded
                }
                other => panic!(
                    "the server did not exit on SIGTERM: {other:?}\n{}",
                    self.log.text()
                ),
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub fn stats(&self) -> Value {
        stats_of(self.api)
    }

    /// `POST /publish?topic=`; returns the reply (`subscribers`, with history `offset`, `epoch`).
    pub fn publish(&self, topic: &str, data: &str) -> Value {
        publish_to(self.api, topic, data)
    }

    /// Asserts that no connection was closed for silence and that the server did ping.
    pub fn assert_heartbeat_kept_alive(&self, who: &str) {
        let stats = self.stats();
        assert_eq!(
            stats["heartbeat_timeouts"],
            0,
            "{who}: closed for silence; stats {stats}\nserver log:\n{}",
            self.log.text()
        );
        assert!(
            stats["pings_sent"].as_u64() > Some(0),
            "{who}: the server never pinged; stats {stats}"
        );
    }
}

/// A client script (Python, Node) that prints one line per event: `SUBSCRIBED`, `PUSH <json>`,
/// `CLOSED <code> <reason>`.
pub struct ScriptClient {
    name: String,
    child: KillOnDrop,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: LogTail,
    /// Other processes' logs shown when this client fails (the server's, nginx's).
    context: Vec<(String, LogTail)>,
}

impl ScriptClient {
    pub fn spawn(name: &str, command: &mut Command) -> ScriptClient {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {command:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = LogTail::follow(child.stderr.take().expect("piped stderr"));
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ScriptClient {
            name: name.to_owned(),
            child: KillOnDrop(child),
            lines,
            seen: Vec::new(),
            stderr,
            context: Vec::new(),
        }
    }

    /// Adds `log` to what a failure shows.
    pub fn show_on_failure(&mut self, name: &str, log: &LogTail) {
        self.context.push((name.to_owned(), log.clone()));
    }

    /// Waits up to `timeout` for a line equal to `want`; fails with everything the client said.
    pub fn expect_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => self.fail(&format!("no `{want}` in {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited before `{want}`"))
                }
            }
        }
    }

    /// Holds the connection for `duration`, failing at once if the client reports a close or
    /// exits; pushes and other lines are kept for the failure message.
    pub fn stay_connected(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("CLOSED") => {
                    self.seen.push(line);
                    self.fail("connection closed during the liveness period")
                }
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail("exited during the liveness period")
                }
            }
        }
        if let Ok(Some(status)) = self.child.0.try_wait() {
            self.fail(&format!("exited with {status}"));
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let status = self.child.0.try_wait().ok().flatten();
        let context = logs_text(&self.context);
        panic!(
            "{}: {what}; exit status {status:?}\nstdout:\n{}\nstderr:\n{}{context}",
            self.name,
            self.seen.join("\n"),
            self.stderr.text()
        );
    }
}

/// The Python for the `websockets` client: `WSPUSH_PYTHON`, default Debian's `/usr/bin/python3`
/// (where `python3-websockets` installs; a `python3` on the PATH may be another one).
pub fn python() -> String {
    std::env::var("WSPUSH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/bin/python3".to_owned())
}

/// `node` with Debian's `node-ws` (`/usr/share/nodejs`) on its module path.
pub fn node() -> Command {
    let mut command = Command::new("node");
    let debian = "/usr/share/nodejs";
    let path = match std::env::var("NODE_PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{debian}"),
        _ => debian.to_owned(),
    };
    command.env("NODE_PATH", path);
    command
}

/// A test helper script under `tests/`.
pub fn script(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(relative)
}

/// A page served over HTTP from loopback, as the real demo page is served by the server's own
/// port: Chromium lets a loopback page connect to loopback, not a `data:` page (see
/// tests/browser.rs).
pub struct PageServer {
    pub addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl PageServer {
    /// Serves `html` for every request until dropped.
    pub fn start(html: &'static str) -> PageServer {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the page server");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20)); // idle poll of a test helper
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                // Reads the request head (one read is enough for a browser's GET) and answers.
                let mut head = [0u8; 8192];
                let _ = stream.read(&mut head);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        PageServer { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The attached logs of a failing test, each under its name.
pub fn logs_text(logs: &[(String, LogTail)]) -> String {
    logs.iter()
        .map(|(name, log)| format!("\n{name}:\n{}", log.text()))
        .collect()
}
