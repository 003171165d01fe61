//! Real processes for development, tests and benchmarks — never used by a production
//! gateway.
//!
//! Layout:
//! - [`process`] — guarded children (own process group, dead with their parent),
//!   free ports, readiness polling, a generic server process (the benchmarks' peers);
//! - [`nats`] — nats-server processes and leaf nodes from `deploy/nats/` templates;
//! - [`hub`] — the hub: one JetStream server or an N-node cluster, TLS and logins;
//! - [`ca`] — the dev CA that signs the hub nodes' certificates;
//! - [`redis`] — a redis-server on a unix socket;
//! - [`postgres`] — a PostgreSQL server initdb'd into its directory (as `postgres` when
//!   run as root);
//! - [`messages`] — the message service: PostgreSQL and an in-process worker;
//! - [`push`] — local stand-ins for APNs, FCM and Web Push speaking their protocols;
//! - [`topology`] — [`Topology`]: hub, Redis and edges (leaf + in-process gateway) in
//!   one directory, built by [`TopologyBuilder`] for `petrel dev`, tests and benches;
//! - [`clients`] — tokens, endpoints and connections to a topology's edges;
//! - [`dev`] — `petrel dev`: the dev topology, its secret and `endpoints.json`.

pub mod ca;
pub mod clients;
pub mod dev;
pub mod hub;
pub mod messages;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod push;
pub mod redis;
pub mod topology;

use std::time::Duration;

use anyhow::Context;

pub use clients::{RawSession, metric_sample};
pub use topology::{Edge, Topology, TopologyBuilder};

/// A minimal HTTP/1.1 GET for loopback tools and tests: returns the status and body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .context("response timed out")??;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP header")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_string()))
}

/// The `name=value` counter `name` of a `/readyz` body.
pub fn readyz_counter(body: &str, name: &str) -> anyhow::Result<u64> {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} in {body:?}"))
}
