//! Petrel's measuring instruments: the load generator behind `petrel bench` and the
//! weak-network impairment proxy behind `petrel impair`.
//!
//! Layout:
//! - [`topo`] — what a run measures: a `petrel dev` topology it starts itself (the
//!   gateways in that child process, so their memory and CPU are theirs alone), or one
//!   already running;
//! - [`scenario`] — the scenarios (`pairs`, `fanout`, `idle`, `resume`, `ingest`), each
//!   driving Rust SDK clients and producing a [`report::Report`];
//! - [`measure`] — what every measurement shares: progress, waiting for deliveries;
//! - [`hist`] — HdrHistogram latencies and their percentiles;
//! - [`report`] — one result per scenario and transport, printed or as JSON;
//! - [`peers`] — the same measurements of what users would pick instead (nats-server's
//!   WebSocket listener, Mosquitto over MQTT, raw async-nats), for `--compare`;
//! - [`impair`] — the UDP and TCP proxy that adds loss, delay, jitter, reordering, a
//!   bandwidth limit and address changes, seeded so a run can be repeated.
//!
//! Latency is measured inside this process: a message's content starts with the time
//! it was handed to the SDK (nanoseconds from a process-wide origin), and the receiving
//! client subtracts it from the time the SDK handed the message to the app.

pub mod hist;
pub mod impair;
pub mod measure;
pub mod peers;
pub mod report;
pub mod scenario;
pub mod topo;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// A message body of `size` bytes (at least 8) stamped with the time now.
pub fn stamped(size: usize) -> bytes::Bytes {
    let nanos = origin().elapsed().as_nanos() as u64;
    let mut b = vec![b'x'; size.max(8)];
    b[..8].copy_from_slice(&nanos.to_le_bytes());
    b.into()
}

/// How long ago a [`stamped`] body was made; `None` if it is not one.
pub fn age(content: &[u8]) -> Option<Duration> {
    let stamp = u64::from_le_bytes(content.get(..8)?.try_into().ok()?);
    let now = origin().elapsed().as_nanos() as u64;
    now.checked_sub(stamp).map(Duration::from_nanos)
}
