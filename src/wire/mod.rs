//! Bytes ⇄ values, no I/O and no state beyond one connection's parse: the WebSocket frame codec,
//! the JSON messages, HTTP/1.1 heads and responses, and the opening handshake.
//!
//! Knows nothing of topics, connections or the server; every other layer builds on it.

pub mod frame;
pub mod handshake;
pub mod http;
pub mod message;
