//! Prometheus metrics, served as OpenMetrics text at `/metrics` on the HTTP listener.
//!
//! One [`Metrics`] per gateway (a registry of its own, no global recorder: tests run
//! several gateways in one process). Events are counted where they happen (connections,
//! frames, sends, latencies); figures that already live elsewhere (outbox depth, leaf
//! link, cache reads, subscriptions) are read at scrape time by a [`Collector`], so
//! there is one source for `/readyz` and `/metrics`.
//!
//! Names follow Prometheus conventions: `petrel_…_total` for counters (the suffix is
//! added by the encoder), `_seconds` for durations, `_bytes` for sizes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `transport="quic|webtransport|websocket"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// Transport name.
    pub transport: &'static str,
}

/// A disconnect: transport and who ended it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisconnectLabels {
    /// Transport name.
    pub transport: &'static str,
    /// `client` (closed by the client), `gateway` (closed by the gateway with an error
    /// code), `lost` (the connection broke).
    pub reason: &'static str,
}

/// A send's outcome: `result` is stored, queued or rejected; `reason` the error code
/// for rejections (empty otherwise).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    /// stored | queued | rejected.
    pub result: &'static str,
    /// Error code name of a rejection, else "".
    pub reason: &'static str,
}

/// An error code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Error code name, e.g. `UNAUTHENTICATED`.
    pub code: &'static str,
}

/// What happened to a slow consumer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlowLabel {
    /// `catch_up` (its live queue overflowed; it catches up from the cache or hub) or
    /// `closed` (it stopped reading for the write timeout).
    pub action: &'static str,
}

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted (after the transport handshake).
    pub connects: Family<TransportLabel, Counter>,
    /// Connections ended.
    pub disconnects: Family<DisconnectLabels, Counter>,
    /// Open connections.
    pub connections: Family<TransportLabel, Gauge>,
    /// Frames decoded from clients.
    pub frames_in: Family<TransportLabel, Counter>,
    /// Frames written to clients (a batch of several counts each).
    pub frames_out: Family<TransportLabel, Counter>,
    /// Bytes read from clients (frame bytes, above the transport).
    pub bytes_in: Family<TransportLabel, Counter>,
    /// Bytes written to clients (frame bytes, above the transport).
    pub bytes_out: Family<TransportLabel, Counter>,
    /// Send outcomes as answered to clients.
    pub sends: Family<SendLabels, Counter>,
    /// Hub storage timestamp of a live message to its Deliver frame written.
    pub delivery_latency: Histogram,
    /// JetStream publish to its acknowledgement (each copy of a send).
    pub publish_latency: Histogram,
    /// Slow-consumer events.
    pub slow_consumers: Family<SlowLabel, Counter>,
    /// Connections refused at Hello for their token or ids.
    pub auth_failures: Family<CodeLabel, Counter>,
    /// Connection tasks that panicked (caught, the connection closed INTERNAL).
    pub connection_panics: Counter,
    /// Connections refused by the admission budgets, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Key-set (JWKS) loads, by why and how they went.
    pub key_set_refreshes: Family<RefreshLabels, Counter>,
    /// Usable keys in the current key set.
    pub key_set_keys: Gauge,
}

/// A key-set load.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `timer` or `unknown_kid`.
    pub trigger: &'static str,
    /// `ok` or `error` (the old set is kept).
    pub result: &'static str,
}

/// Why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unauthenticated_full`, `source_pending`, `source_rate`, `full`.
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every event metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("petrel");
        let m = Self {
            connects: Family::default(),
            disconnects: Family::default(),
            connections: Family::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            sends: Family::default(),
            // 100 µs … ~6.5 s, doubling.
            delivery_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            publish_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            slow_consumers: Family::default(),
            auth_failures: Family::default(),
            connection_panics: Counter::default(),
            connections_refused: Family::default(),
            key_set_refreshes: Family::default(),
            key_set_keys: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connects",
            "Client connections accepted",
            m.connects.clone(),
        );
        registry.register(
            "disconnects",
            "Client connections ended, by who ended them",
            m.disconnects.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "frames_received",
            "Frames decoded from clients",
            m.frames_in.clone(),
        );
        registry.register(
            "frames_sent",
            "Frames written to clients",
            m.frames_out.clone(),
        );
        registry.register_with_unit(
            "received",
            "Frame bytes read from clients",
            Unit::Bytes,
            m.bytes_in.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Frame bytes written to clients",
            Unit::Bytes,
            m.bytes_out.clone(),
        );
        registry.register(
            "sends",
            "Send results answered to clients (result: stored, queued, rejected; reason: the rejection's code)",
            m.sends.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "From the hub storing a message to its Deliver frame written to a client (live deliveries)",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        registry.register_with_unit(
            "jetstream_publish",
            "JetStream publish to acknowledgement, per copy",
            Unit::Seconds,
            m.publish_latency.clone(),
        );
        registry.register(
            "slow_consumers",
            "Slow-consumer events (catch_up: live queue overflowed; closed: stopped reading)",
            m.slow_consumers.clone(),
        );
        registry.register(
            "auth_failures",
            "Connections refused at Hello, by error code",
            m.auth_failures.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused by the admission budgets (unauthenticated_full, source_pending, source_rate: before Hello; full: at Hello)",
            m.connections_refused.clone(),
        );
        for r in crate::connection::admission::Refusal::ALL {
            let _ = m
                .connections_refused
                .get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        registry.register(
            "connection_panics",
            "Connection tasks that panicked (a bug: caught, logged, the client closed with INTERNAL)",
            m.connection_panics.clone(),
        );
        registry.register(
            "key_set_refreshes",
            "Loads of the token key set (JWKS) after start (trigger: timer, unknown_kid; result: ok, error — the old set is kept)",
            m.key_set_refreshes.clone(),
        );
        registry.register(
            "key_set_keys",
            "Usable signing keys in the current token key set (JWKS)",
            m.key_set_keys.clone(),
        );
        for trigger in ["timer", "unknown_kid"] {
            for result in ["ok", "error"] {
                let _ = m
                    .key_set_refreshes
                    .get_or_create(&RefreshLabels { trigger, result });
            }
        }
        // Series that exist from the start at 0, so rates and alerts work before the
        // first event.
        for transport in ["quic", "webtransport", "websocket"] {
            let l = TransportLabel { transport };
            let _ = m.connects.get_or_create(&l);
            let _ = m.connections.get_or_create(&l);
            let _ = m.transport(transport);
            for reason in ["client", "gateway", "lost"] {
                let _ = m
                    .disconnects
                    .get_or_create(&DisconnectLabels { transport, reason });
            }
        }
        for action in ["catch_up", "closed"] {
            let _ = m.slow_consumers.get_or_create(&SlowLabel { action });
        }
        for code in [
            petrel_core::ErrorCode::Unauthenticated,
            petrel_core::ErrorCode::TokenExpired,
            petrel_core::ErrorCode::InvalidId,
        ] {
            let _ = m.auth_failures.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        for result in ["stored", "queued"] {
            let _ = m.sends.get_or_create(&SendLabels { result, reason: "" });
        }
        Self { registry, ..m }
    }

    /// Adds figures read at scrape time.
    pub fn register_collector(&mut self, c: impl Collector) {
        self.registry.register_collector(Box::new(c));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The connection gauge and counters for one transport.
    pub fn transport(&self, transport: &'static str) -> TransportMetrics {
        let l = TransportLabel { transport };
        TransportMetrics {
            frames_in: self.frames_in.get_or_create(&l).clone(),
            frames_out: self.frames_out.get_or_create(&l).clone(),
            bytes_in: self.bytes_in.get_or_create(&l).clone(),
            bytes_out: self.bytes_out.get_or_create(&l).clone(),
        }
    }
}

/// Per-transport counters, looked up once per connection.
#[derive(Debug, Clone)]
pub struct TransportMetrics {
    /// Frames decoded.
    pub frames_in: Counter,
    /// Frames written.
    pub frames_out: Counter,
    /// Bytes read.
    pub bytes_in: Counter,
    /// Bytes written.
    pub bytes_out: Counter,
}

/// Figures that live in the hub wiring and the outbox, read at each scrape.
#[derive(Debug)]
pub struct GatewayCollector {
    /// NATS wiring (link state, subscriptions, fetch sources).
    pub jetstream: Arc<crate::hub::JetStream>,
    /// Catch-up counters.
    pub catchup: Arc<crate::hub::CatchUp>,
    /// Live subscriptions.
    pub live: Arc<crate::hub::Live>,
    /// The outbox counters.
    pub outbox: Arc<crate::outbox::OutboxStats>,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for GatewayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let o = &self.outbox;
        gauge(
            &mut enc,
            "leaf_connected",
            "1 while the gateway's NATS connection to its leaf node is up",
            i64::from(self.jetstream.connected()),
        )?;
        gauge(
            &mut enc,
            "outbox_depth",
            "Sends accepted at this edge and not yet stored on the hub",
            r(&o.depth) as i64,
        )?;
        counter(
            &mut enc,
            "outbox_retries",
            "Publishes of outbox entries retried",
            r(&o.retries),
        )?;
        counter(
            &mut enc,
            "outbox_refused",
            "Sends refused because the outbox was full",
            r(&o.refused),
        )?;
        let f = &self.catchup.counters;
        counter(
            &mut enc,
            "cache_hits",
            "Messages for resumes and holes served from the edge cache",
            r(&f.from_cache),
        )?;
        counter(
            &mut enc,
            "cache_misses",
            "Messages for resumes and holes fetched from the hub (not in the edge cache)",
            r(&f.from_hub),
        )?;
        counter(
            &mut enc,
            "cache_errors",
            "Corrupt or undecodable edge cache entries met (skipped)",
            r(&f.cache_errors),
        )?;
        gauge(
            &mut enc,
            "live_subscriptions",
            "Live subscriptions toward the leaf (users, groups, presence)",
            self.live.live_subscriptions() as i64,
        )?;
        gauge(
            &mut enc,
            "group_subscriptions",
            "Groups with a member connected here (one subscription each)",
            self.live.group_subscriptions() as i64,
        )?;
        counter(
            &mut enc,
            "live_overflows",
            "Live messages not queued to a connection whose queue was full",
            self.live.live_overflows(),
        )?;
        Ok(())
    }
}

/// Serves `/metrics` (OpenMetrics text from `encode`) and `/healthz` on `listener`
/// until `shutdown`: the services' (push, messages) own metrics endpoints.
pub async fn serve_text(
    listener: tokio::net::TcpListener,
    encode: impl Fn() -> String + Send + Sync + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let encode = std::sync::Arc::new(encode);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let encode = encode.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    anyhow::Context::context(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await,
        "serving metrics",
    )
}

/// Binds a service's metrics listener; `what` names the setting in errors.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    anyhow::Context::with_context(tokio::net::TcpListener::bind(addr).await, || {
        format!("binding {what} {addr}")
    })
}
