//! A TCP proxy in front of the server that the tests control: it drops every connection at once
//! (a network cut: both ends see TCP end, no close frame); while its gate is closed it closes
//! each new connection as soon as it is accepted, so a reconnecting client cannot get through
//! until the test has done what must happen while it is away; and it can stop forwarding the
//! server's bytes (a client that stopped reading).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct CuttingProxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    pairs: Arc<Mutex<Vec<(TcpStream, TcpStream)>>>,
}

impl CuttingProxy {
    /// Listens on a loopback port and forwards each connection to `upstream`; the gate is open.
    pub fn to(upstream: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("local_addr");
        let open = Arc::new(AtomicBool::new(true));
        let paused = Arc::new(AtomicBool::new(false));
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let (gate, pause, list) = (open.clone(), paused.clone(), pairs.clone());
        // The thread ends with the test process; a dropped proxy only cuts what it carries.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !gate.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                // The server may be down (restarting): the client sees its attempt fail.
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let clones = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                );
                let (Ok(client_reader), Ok(server_reader), Ok(client_kept), Ok(server_kept)) =
                    clones
                else {
                    continue;
                };
                list.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((client_kept, server_kept));
                pipe(client_reader, server, None);
                pipe(server_reader, client, Some(pause.clone()));
            }
        });
        CuttingProxy {
            addr,
            open,
            paused,
            pairs,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Drops every connection carried so far.
    pub fn cut(&self) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        for (client, server) in pairs.drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Closed: new connections are closed at once (connections already carried go on).
    pub fn set_gate_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }

    /// Paused: the server's bytes are not forwarded (they wait in the proxy, not in the
    /// client's kernel buffer).
    pub fn pause_downstream(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.set_gate_open(false);
        self.cut();
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends; `paused` holds the copy
/// while set.
fn pipe(mut from: TcpStream, mut to: TcpStream, paused: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while paused.as_ref().is_some_and(|p| p.load(Ordering::SeqCst)) {
                std::thread::sleep(Duration::from_millis(5));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
