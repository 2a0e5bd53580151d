//! Bytes ⇄ values, no I/O and no state beyond one connection's parse: the WebSocket frame codec,
//! the JSON messages, HTTP/1.1 heads and responses, the opening handshake, the base64url of
//! subscription claims, and the forwarding headers of trusted proxies.
//!
//! Knows nothing of topics, connections or the server; every other layer builds on it.

pub mod base64url;
pub mod forwarded;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod message;
