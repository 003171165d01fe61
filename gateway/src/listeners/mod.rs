//! Where clients come in. Each listener accepts its connections, bounded by the
//! gateway's connection limit and the handshake timeout, and hands each to a
//! [`crate::connection::Connection`]:
//!
//! - [`quic`] — the UDP endpoint: native QUIC and, by ALPN, [`webtransport`];
//! - [`websocket`] — WebSocket over TLS, and plain WebSocket behind a proxy;
//! - [`http`] — health, readiness, metrics, certificate hashes, dev tokens, the demo
//!   page (no client connections).

pub mod http;
pub mod quic;
pub mod websocket;
pub mod webtransport;
