//! Debian's nginx with TLS in front of the server, configured by `contrib/nginx-wspush.conf` (the
//! file README shows) with only its listen address, upstream and certificate paths substituted,
//! and a self-signed certificate that `openssl` makes for each test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{LogTail, TempDir};

const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The documented configuration.
const CONTRIB: &str = include_str!("../../contrib/nginx-wspush.conf");

/// A running nginx in a prefix directory of its own; ended by its pid on drop.
pub struct Nginx {
    child: std::process::Child,
    pub addr: SocketAddr,
    stderr: LogTail,
    prefix: TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port, proxying to the WebSocket listener `upstream`.
    pub fn start(name: &str, upstream: SocketAddr) -> Nginx {
        let prefix = TempDir::new(&format!("nginx-{name}"));
        let dir = prefix.path().to_owned();
        let (cert, key) = self_signed_certificate(&dir);
        let addr = free_loopback_port();
        let site = substitute(
            CONTRIB,
            &[
                ("listen 443 ssl;", &format!("listen {addr} ssl;")),
                ("server 127.0.0.1:8091;", &format!("server {upstream};")),
                (
                    "/etc/ssl/certs/push.example.com.pem",
                    &cert.display().to_string(),
                ),
                (
                    "/etc/ssl/private/push.example.com.key",
                    &key.display().to_string(),
                ),
            ],
        );
        std::fs::write(dir.join("wspush.conf"), site).expect("write wspush.conf");
        std::fs::write(dir.join("nginx.conf"), main_config(&dir)).expect("write nginx.conf");
        let mut child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            // Where errors go before the configuration's error_log is read.
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx (install Debian's nginx-light): {e}"));
        let stderr = LogTail::follow(child.stderr.take().expect("piped stderr"));
        let mut nginx = Nginx {
            child,
            addr,
            stderr,
            prefix,
        };
        nginx.wait_until_listening();
        nginx
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}\n{}", self.logs());
            }
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50)); // polling a port, bounded above
        }
        panic!(
            "nginx not listening on {} in {START_TIMEOUT:?}\n{}",
            self.addr,
            self.logs()
        );
    }

    pub fn wss_url(&self, path: &str) -> String {
        format!("wss://{}{path}", self.addr)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.path().join("access.log")).unwrap_or_default()
    }

    /// The error log, the access log and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let error_log =
            std::fs::read_to_string(self.prefix.path().join("error.log")).unwrap_or_default();
        format!(
            "nginx error.log:\n{error_log}\nnginx access.log:\n{}\nnginx stderr:\n{}",
            self.access_log(),
            self.stderr.text()
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn nginx_binary() -> String {
    std::env::var("WSPUSH_NGINX")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "/usr/sbin/nginx".to_owned())
}

/// Replaces each `from` of the documented file, which must occur exactly once, so a change to
/// the file that the test would silently not apply fails here.
fn substitute(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert_eq!(
            out.matches(from).count(),
            1,
            "contrib/nginx-wspush.conf must contain `{from}` once"
        );
        out = out.replace(from, to);
    }
    out
}

/// The test-only frame around the documented file: foreground, one process as the invoking
/// user (no switch to `nobody`), and every path (pid, logs, temp dirs) in the prefix.
fn main_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/wspush.conf;
}}
"
    )
}

/// `openssl req -x509`: a P-256 key and a one-day certificate for localhost and 127.0.0.1.
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

/// A loopback port nothing listens on right now (nginx takes a port from its configuration,
/// not port 0).
fn free_loopback_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}
