//! wspush: a WebSocket publish/subscribe push server on one thread, built for density.
//!
//! # Layers
//! Top-down; each layer knows only the ones below it. Everything but [`server`] is sans-IO:
//! plain data structures and functions, tested without sockets, with time passed in as
//! milliseconds.
//! - [`server`]: the mio loop, the only code that does I/O: poll, accept, read, one dispatch
//!   over the connection kinds, moving hub deliveries into outbound queues, flush, expire.
//! - [`app`]: what requests mean: the API's route table, the WebSocket port's (the upgrade, the
//!   demo page and the browser client module), the upgrade policy (path, origin,
//!   client token) and the API token, which topics need a signed subscription claim (with its
//!   own SHA-256 and HMAC), the demo publisher, the counters of `/stats`.
//! - [`conn`]: per-connection state machines of one shape ([`conn::Connection`]): the WebSocket
//!   session (handshake, frames by tungstenite, client commands, slow-consumer policy) and the
//!   API's HTTP connection; the bounded outbound queue and the write-stall rule they share.
//! - [`hub`]: the pub/sub domain: topics, their members, and what a publish delivers (the push
//!   framed once, shared by every subscriber's queue); topic lifecycle for whoever mirrors it;
//!   per-topic streams with their positions and bounded history, for resumes.
//! - [`wire`]: bytes ⇄ values: the WebSocket frame codec, JSON messages, HTTP/1.1 heads and
//!   responses, the opening handshake (with the SHA-1 and base64 it needs), base64url, and the
//!   forwarding headers of trusted proxies (`--trusted-proxy`, for log lines).
//!
//! Beside the layers: [`config`] (settings, defaults, validation, flags and environment),
//! [`timer`] (a hierarchical timer wheel), [`oplog`] (rate-limited operator log lines, such as
//! failed authentications), [`stats`] (plain counters bumped by the layers above
//! the hub), and [`client`], a reconnecting client (heartbeat, backoff, resubscribe with claims
//! for private topics, resume after the last offset seen with lost continuity reported; push
//! data handed over as the raw JSON text sent) on one background thread, built on [`wire`].
//!
//! The library never installs a logger; it logs through the `log` facade. [`logger`] (feature
//! `cli`) is the binaries' one.
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

pub mod app;
pub mod client;
pub mod config;
pub mod conn;
pub mod error;
pub mod hub;
#[cfg(feature = "cli")]
pub mod logger;
pub mod oplog;
pub mod server;
pub mod stats;
pub mod timer;
pub mod wire;

pub use config::Config;
pub use error::ServerError;
pub use server::{Server, ShutdownHandle};
