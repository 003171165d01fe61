//! The Petrel edge gateway: the production server and nothing else (development
//! topologies live in `devkit/`, the command line in `cli/`).
//!
//! Layout — each folder a room; `docs/architecture.md` has the map and one message's
//! path through it:
//! - [`listeners`] — where clients come in: the UDP endpoint (native QUIC and
//!   WebTransport, by ALPN), WebSocket (TLS and plain), and the HTTP listener (health,
//!   metrics, certificate hashes, dev tokens, the demo page);
//! - [`connection`] — one client connection whatever its transport: the loop driving
//!   `petrel_core::session::Session`, one function per session action, delivery
//!   (batching, fetch pages, history), and the transport traits;
//! - [`hub`] — NATS through the local leaf: the JetStream API, catch-up (edge cache
//!   first, then the hub), live subscriptions and fan-out;
//! - [`outbox`] — store-and-forward: sends durable at the edge, forwarded to the hub in
//!   order until stored (QUEUED while the hub is away);
//! - [`directory`] — Redis: group membership and presence, with every key name;
//! - [`provision`] — the hub's streams, from `petrel_core::subject::stream_layouts`;
//! - [`tls`] — the served certificate: PEM files reloaded on change, or self-signed
//!   and rotated (development);
//! - [`jwks`] — the token issuer's key set: loaded, refreshed on a timer and on an
//!   unknown `kid`;
//! - [`config`] — the TOML configuration and its `PETREL_*` overrides;
//! - [`metrics`] — Prometheus metrics (`/metrics`);
//! - [`server`] — [`Gateway`]: wires the rooms together; [`Gateway::load`] binds every
//!   socket and connects to the leaf, [`Gateway::run`] serves until the shutdown token
//!   is cancelled, then drains connections.

pub mod config;
pub mod connection;
pub mod directory;
pub mod hub;
pub mod jwks;
pub mod listeners;
pub mod metrics;
pub mod outbox;
pub mod provision;
pub mod server;
pub mod tls;

pub use config::Config;
pub use server::{BoundAddrs, Gateway};

/// Sleeps until `at`; never wakes for `None` (a `select!` branch that is off).
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
