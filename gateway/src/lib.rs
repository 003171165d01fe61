//! The Petrel edge gateway.
//!
//! Layout:
//! - [`config`] — the TOML configuration and its `PETREL_*` overrides;
//! - [`conn`] — one client connection, transport-independent, driving
//!   `petrel_core::session::Session`;
//! - [`quic`], [`websocket`] — one module per transport, each turning accepted
//!   connections into byte readers/writers for [`conn`];
//! - [`hub`] — NATS: JetStream publishing, live subscriptions, fan-out;
//! - [`provision`] — the hub's streams;
//! - [`tls`] — certificates (PEM files, dev certificate);
//! - [`nats_process`], [`dev`] — real nats-server processes and the `petrel dev` topology;
//! - [`cli`] — the `petrel` command line.
//!
//! [`Gateway::load`] binds every socket and connects to the leaf; [`Gateway::run`]
//! serves until the shutdown token is cancelled, then drains connections.

pub mod cli;
pub mod config;
pub mod conn;
pub mod dev;
pub mod hub;
pub mod nats_process;
pub mod provision;
pub mod quic;
pub mod tls;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use petrel_core::auth::Authenticator;
use petrel_core::session::SessionConfig;
use petrel_storage::EdgeStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::Config;
use conn::Shared;
use hub::Hub;

/// Where the gateway actually listens (ports resolved when the config said 0).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BoundAddrs {
    /// QUIC (UDP).
    pub quic: SocketAddr,
    /// WebSocket/TLS (TCP).
    pub websocket: SocketAddr,
    /// HTTP (TCP).
    pub http: SocketAddr,
}

/// A loaded gateway, sockets bound, ready to run.
pub struct Gateway {
    shared: Arc<Shared>,
    quic: quinn::Endpoint,
    ws: TcpListener,
    ws_tls: tokio_rustls::TlsAcceptor,
    http: TcpListener,
    limit: Arc<Semaphore>,
    addrs: BoundAddrs,
    cert_sha256: String,
    nats: async_nats::Client,
}

impl Gateway {
    /// Opens the edge cache, connects to the leaf (retrying in the background if it is
    /// not up yet) and binds the listeners.
    pub async fn load(cfg: Config) -> anyhow::Result<Self> {
        let hs_secret = match (&cfg.auth.hs256_secret_file, &cfg.auth.hs256_secret) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading auth.hs256_secret_file {}", path.display()))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
            ),
            (None, Some(s)) => Some(s.as_bytes().to_vec()),
            (None, None) => None,
        };
        let es_key = match &cfg.auth.es256_public_key {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading auth.es256_public_key {}", path.display()))?,
            ),
            None => None,
        };
        let auth = Arc::new(
            Authenticator::new(hs_secret.as_deref(), es_key.as_deref()).context("auth keys")?,
        );

        let cert = tls::CertKey::load(&cfg.tls.cert, &cfg.tls.key)?;
        let cert_sha256 = cert.leaf_sha256_hex();

        std::fs::create_dir_all(&cfg.storage.path).with_context(|| {
            format!("creating storage directory {}", cfg.storage.path.display())
        })?;
        let store = Arc::new(
            EdgeStore::open(&cfg.storage.path)
                .with_context(|| format!("opening edge cache {}", cfg.storage.path.display()))?,
        );

        let nats = async_nats::ConnectOptions::new()
            .name(format!("petrel-gateway {}", cfg.gateway.id))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(cfg.nats.url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", cfg.nats.url))?;
        let hub = Arc::new(Hub::new(
            nats.clone(),
            &cfg.nats.domain,
            Duration::from_secs(cfg.nats.publish_timeout_secs),
            cfg.nats.max_inflight_publishes,
            store,
        ));

        let quic_tls = cert.server_config(&[petrel_proto::ALPN_QUIC])?;
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls)
            .context("QUIC TLS config")?;
        let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_cfg.transport_config(Arc::new(quic::transport_config(cfg.limits.idle_timeout())));
        let quic = quinn::Endpoint::server(server_cfg, cfg.listen.quic)
            .with_context(|| format!("binding QUIC on udp {}", cfg.listen.quic))?;
        let ws = TcpListener::bind(cfg.listen.websocket)
            .await
            .with_context(|| format!("binding WebSocket on tcp {}", cfg.listen.websocket))?;
        let http = TcpListener::bind(cfg.listen.http)
            .await
            .with_context(|| format!("binding HTTP on tcp {}", cfg.listen.http))?;
        let ws_tls = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config(&[b"http/1.1"])?));
        let addrs = BoundAddrs {
            quic: quic.local_addr()?,
            websocket: ws.local_addr()?,
            http: http.local_addr()?,
        };

        let session = Arc::new(SessionConfig {
            gateway_id: cfg.gateway.id.clone(),
            max_frame_bytes: cfg.limits.max_frame_bytes,
            max_content_bytes: cfg.limits.max_content_bytes,
            max_inflight_sends: cfg.limits.max_inflight_sends,
            send_rate_per_sec: cfg.limits.send_rate_per_sec,
            send_burst: cfg.limits.send_burst,
            handshake_timeout: cfg.limits.handshake_timeout(),
        });
        let shared = Arc::new(Shared {
            session,
            auth,
            hub,
            send_queue_frames: cfg.limits.send_queue_frames,
            idle_timeout: cfg.limits.idle_timeout(),
            connections: AtomicU64::new(0),
        });
        Ok(Self {
            shared,
            quic,
            ws,
            ws_tls,
            http,
            limit: Arc::new(Semaphore::new(cfg.limits.max_connections)),
            addrs,
            cert_sha256,
            nats,
        })
    }

    /// Waits until the connection to the leaf is up (what `/readyz` reports), at most
    /// `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.hub.connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// SHA-256 (hex) of the certificate served.
    pub fn cert_sha256(&self) -> &str {
        &self.cert_sha256
    }

    /// Serves until `shutdown` is cancelled; then tells every client to go away and
    /// waits (bounded) for their connections to end.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        info!(quic = %self.addrs.quic, websocket = %self.addrs.websocket, http = %self.addrs.http, "gateway listening");
        let quic = quic::serve(
            self.quic.clone(),
            self.shared.clone(),
            self.limit.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let ws = websocket::serve(
            self.ws,
            self.ws_tls,
            self.shared.clone(),
            self.limit.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .with_state(self.shared.clone());
        let http = axum::serve(self.http, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let (_, _, served) = tokio::join!(quic, ws, async { http.await });
        served.context("HTTP server")?;
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s of drain; closing anyway");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.quic.wait_idle()).await;
        self.shared.hub.shutdown().await;
        let _ = self.nats.flush().await;
        info!("gateway stopped");
        Ok(())
    }
}

async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let conns = shared
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    let subs = shared.hub.live_subscriptions();
    if shared.hub.connected() {
        (
            StatusCode::OK,
            format!("ready connections={conns} live_subscriptions={subs}\n"),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to NATS\n".into(),
        )
    }
}
