//! wspush: a WebSocket publish/subscribe push server on one thread, built for density.
//!
//! # Layout
//! Everything but [`server`] is sans-IO: plain data structures and functions, tested without
//! sockets, with time passed in as milliseconds.
//! - [`protocol`]: the JSON messages, topic rules, and framing of server messages. A push is
//!   encoded and framed once into `Bytes` that every subscriber's queue shares.
//! - [`broker`]: topic → subscribers. No I/O; topics vanish with their last subscriber.
//! - [`timer`]: a hierarchical timer wheel with generation-checked handles.
//! - [`outbound`]: a session's ordered, byte-counted outbound queue, flushed with `writev`.
//! - [`handshake`]: the WebSocket opening handshake, server and client side (with the SHA-1
//!   and base64 it needs).
//! - [`session`]: one WebSocket connection: handshake, frames (by tungstenite, over an
//!   in-memory stream), client commands, deadlines.
//! - [`http`]: HTTP/1.1 request parsing for the backend API.
//! - [`server`]: the mio loop, the only code that touches sockets: accept, read, write, expire.
//! - [`config`]: settings, defaults, validation and the command-line parser.
//! - [`client`]: a reconnecting client (heartbeat, backoff, resubscribe) on one background thread.
//!
//! The library never installs a logger; it logs through the `log` facade.
//!
//! # Example
//! ```no_run
//! use wspush::{Config, Server};
//!
//! let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
//! let server = Server::bind(config).expect("bind");
//! println!("ws://{}/ws", server.local_addr());
//! let stop = server.shutdown_handle(); // call stop.shutdown() from any thread
//! server.run().expect("server loop");
//! # drop(stop);
//! ```

pub mod auth;
pub mod broker;
pub mod client;
pub mod config;
pub mod error;
pub mod handshake;
pub mod http;
pub mod outbound;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stats;
pub mod timer;

pub use config::Config;
pub use error::ServerError;
pub use server::{Server, ShutdownHandle};
