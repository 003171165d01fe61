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
//! - [`config`] — the TOML configuration and its `PETREL_*` overrides;
//! - [`metrics`] — Prometheus metrics (`/metrics`).
//!
//! [`Gateway::load`] binds every socket and connects to the leaf; [`Gateway::run`]
//! serves until the shutdown token is cancelled, then drains connections.

pub mod config;
pub mod connection;
pub mod directory;
pub mod hub;
pub mod listeners;
pub mod metrics;
pub mod outbox;
pub mod provision;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use petrel_core::auth::Authenticator;
use petrel_core::session::SessionConfig;
use petrel_storage::EdgeStore;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use config::Config;
use connection::Shared;
use hub::{CatchUp, JetStream, Live};
use listeners::{http, quic, websocket};

/// Where the gateway actually listens (ports resolved when the config said 0).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BoundAddrs {
    /// QUIC and WebTransport (UDP).
    pub quic: SocketAddr,
    /// WebSocket/TLS (TCP).
    pub websocket: SocketAddr,
    /// Plain WebSocket (TCP), when configured.
    pub websocket_plain: Option<SocketAddr>,
    /// HTTP (TCP).
    pub http: SocketAddr,
}

/// A loaded gateway, sockets bound, ready to run.
pub struct Gateway {
    shared: Arc<Shared>,
    quic: quinn::Endpoint,
    ws: TcpListener,
    ws_tls: tokio_rustls::TlsAcceptor,
    ws_plain: Option<TcpListener>,
    http: TcpListener,
    limit: Arc<Semaphore>,
    addrs: BoundAddrs,
    certs: Arc<tls::CertStore>,
    web: http::WebState,
    nats: async_nats::Client,
    store: Arc<EdgeStore>,
    storage: config::StorageSection,
    forwarding: outbox::Forwarding,
    reconnects: tokio::sync::mpsc::UnboundedReceiver<()>,
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

        let certs = tls::CertStore::new(cfg.tls.source()?).context("TLS certificate")?;

        std::fs::create_dir_all(&cfg.storage.path).with_context(|| {
            format!("creating storage directory {}", cfg.storage.path.display())
        })?;
        let store = Arc::new(
            EdgeStore::open(&cfg.storage.path)
                .with_context(|| format!("opening edge cache {}", cfg.storage.path.display()))?,
        );

        // Reconnections to the leaf are reported so that connections re-check what
        // they missed while the link was down.
        let (reconnected, reconnects) = tokio::sync::mpsc::unbounded_channel();
        let nats = async_nats::ConnectOptions::new()
            .name(format!("petrel-gateway {}", cfg.gateway.id))
            .event_callback(move |event| {
                let reconnected = reconnected.clone();
                async move {
                    if let async_nats::Event::Connected = event {
                        let _ = reconnected.send(());
                    }
                }
            })
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(cfg.nats.url.as_str())
            .await
            .with_context(|| format!("connecting to NATS at {}", cfg.nats.url))?;
        let mut metrics = metrics::Metrics::new();
        let jetstream = Arc::new(JetStream::new(
            nats.clone(),
            &cfg.nats.domain,
            Duration::from_secs(cfg.nats.publish_timeout_secs),
            metrics.publish_latency.clone(),
        ));
        let catchup = Arc::new(CatchUp::new(jetstream.clone(), store.clone()));
        let live = Arc::new(Live::new(jetstream.clone(), store.clone()));
        let (outbox, forwarding) = outbox::outbox(
            store.clone(),
            jetstream.clone(),
            live.clone(),
            outbox::OutboxConfig {
                forwarder: petrel_core::outbox::ForwarderConfig {
                    window: cfg.nats.max_inflight_publishes,
                    queue_after: Duration::from_millis(cfg.nats.queue_after_ms),
                    retry_min: Duration::from_millis(250.min(cfg.nats.retry_max_ms)),
                    retry_max: Duration::from_millis(cfg.nats.retry_max_ms),
                },
                max_messages: cfg.storage.outbox_max_messages,
                max_bytes: cfg.storage.outbox_max_bytes,
                duplicate_window: provision::DUPLICATE_WINDOW,
            },
        )?;

        let quic_tls =
            certs.server_config(&[petrel_proto::ALPN_QUIC, listeners::webtransport::ALPN_H3])?;
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls)
            .context("QUIC TLS config")?;
        let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_cfg.transport_config(Arc::new(quic::transport_config(cfg.limits.idle_timeout())));
        let quic = quinn::Endpoint::server(server_cfg, cfg.listen.quic)
            .with_context(|| format!("binding QUIC on udp {}", cfg.listen.quic))?;
        let ws = TcpListener::bind(cfg.listen.websocket)
            .await
            .with_context(|| format!("binding WebSocket on tcp {}", cfg.listen.websocket))?;
        let ws_plain = match cfg.listen.websocket_plain {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding plain WebSocket on tcp {addr}"))?,
            ),
            None => None,
        };
        let http = TcpListener::bind(cfg.listen.http)
            .await
            .with_context(|| format!("binding HTTP on tcp {}", cfg.listen.http))?;
        let ws_tls =
            tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config(&[b"http/1.1"])?));
        let addrs = BoundAddrs {
            quic: quic.local_addr()?,
            websocket: ws.local_addr()?,
            websocket_plain: ws_plain.as_ref().map(|l| l.local_addr()).transpose()?,
            http: http.local_addr()?,
        };

        let web = http::WebState {
            certs: certs.clone(),
            dev_secret: if cfg.web.dev_tokens {
                hs_secret.clone()
            } else {
                None
            },
            static_dir: cfg.web.static_dir.clone(),
            quic_port: addrs.quic.port(),
            websocket_port: addrs.websocket.port(),
            websocket_plain_port: addrs.websocket_plain.map(|a| a.port()),
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
        let groups = directory::Directory::new(cfg.redis.url.as_deref())?;
        let presence = Arc::new(directory::Presence::new(
            groups.clone(),
            nats.clone(),
            cfg.gateway.id.clone(),
            Duration::from_secs(cfg.redis.presence_heartbeat_secs.max(1)),
        ));
        metrics.register_collector(metrics::GatewayCollector {
            jetstream: jetstream.clone(),
            catchup: catchup.clone(),
            live: live.clone(),
            outbox: outbox.stats.clone(),
        });
        let shared = Arc::new(Shared {
            metrics: Arc::new(metrics),
            session,
            groups,
            presence,
            auth,
            jetstream,
            catchup,
            live,
            outbox,
            send_queue_frames: cfg.limits.send_queue_frames,
            send_queue_bytes: cfg.limits.send_queue_bytes.max(1),
            idle_timeout: cfg.limits.idle_timeout(),
            write_timeout: Duration::from_secs(cfg.limits.write_timeout_secs.max(1)),
            connections: AtomicU64::new(0),
            datagrams_in: AtomicU64::new(0),
            datagrams_out: AtomicU64::new(0),
        });
        Ok(Self {
            shared,
            quic,
            ws,
            ws_tls,
            ws_plain,
            http,
            limit: Arc::new(Semaphore::new(cfg.limits.max_connections)),
            addrs,
            certs,
            web,
            nats,
            store,
            storage: cfg.storage.clone(),
            forwarding,
            reconnects,
        })
    }

    /// Waits until the connection to the leaf is up (what `/readyz` reports), at most
    /// `timeout`; returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.shared.jetstream.connected() {
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

    /// SHA-256 (hex) of the certificate served now.
    pub fn cert_sha256(&self) -> String {
        self.certs.hashes().current
    }

    /// The certificate store (current and next hashes, PEM).
    pub fn certs(&self) -> Arc<tls::CertStore> {
        self.certs.clone()
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
            Some(self.ws_tls),
            self.shared.clone(),
            self.limit.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let ws_plain = async {
            if let Some(listener) = self.ws_plain {
                let (shared, limit) = (self.shared.clone(), self.limit.clone());
                websocket::serve(
                    listener,
                    None,
                    shared,
                    limit,
                    tracker.clone(),
                    shutdown.clone(),
                )
                .await;
            }
        };
        let router = http::router(self.web, self.shared.clone());
        let http = axum::serve(self.http, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let certs = self.certs.clone().maintain(shutdown.clone());
        let trim = trim_cache(self.store.clone(), self.storage.clone(), shutdown.clone());
        // The forwarder outlives the listeners: connections draining may still send.
        let forwarding_done = CancellationToken::new();
        let forwarding = tokio::spawn(self.forwarding.run(forwarding_done.clone()));
        let resync =
            resync_on_reconnect(self.shared.live.clone(), self.reconnects, shutdown.clone());
        let watch_groups =
            watch_group_changes(self.nats.clone(), self.shared.clone(), shutdown.clone());
        let heartbeat = self.shared.presence.heartbeat(shutdown.clone());
        let (_, _, _, _, served, _, _, _, _) = tokio::join!(
            heartbeat,
            quic,
            ws,
            ws_plain,
            async { http.await },
            certs,
            trim,
            resync,
            watch_groups
        );
        served.context("HTTP server")?;
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after 10 s of drain; closing anyway");
        }
        forwarding_done.cancel();
        let _ = forwarding.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.quic.wait_idle()).await;
        self.shared.live.shutdown().await;
        // Bounded: with the leaf gone, a flush would wait for a reconnection forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.nats.flush()).await;
        info!("gateway stopped");
        Ok(())
    }
}

/// Follows `group.changed.*`: tells the connections here that may be affected (those
/// receiving the group now, and those of its members now) to re-read their groups.
async fn watch_group_changes(
    nats: async_nats::Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    if !shared.groups.configured() {
        return;
    }
    let mut sub = match nats
        .subscribe(petrel_core::subject::GROUP_CHANGED_ALL)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow group changes; membership is read at connect only");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(group) = petrel_core::subject::changed_group(msg.subject.as_str()) else {
            continue;
        };
        shared
            .live
            .signal_groups_changed(&hub::LiveKey::Group(group.clone()));
        match shared.groups.members(&group).await {
            Ok(members) => {
                for u in members {
                    shared.live.signal_groups_changed(&hub::LiveKey::User(u));
                }
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "reading the members of a changed group failed")
            }
        }
    }
}

/// After the leaf connection comes back, every connection re-checks its subjects:
/// live messages re-published while it was down never arrived.
async fn resync_on_reconnect(
    live: Arc<Live>,
    mut reconnects: tokio::sync::mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = reconnects.recv() => match r {
                Some(()) => {
                    info!("connected to the leaf; connections re-check what they missed");
                    live.resync_all();
                }
                None => return,
            },
        }
    }
}

/// Trims the edge cache's `recent` column family by count per subject and by age,
/// every `trim_every_secs`, until `shutdown`.
async fn trim_cache(
    store: Arc<EdgeStore>,
    cfg: config::StorageSection,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(cfg.trim_every_secs.max(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now_ms = petrel_core::time::unix_ms();
        let older_than = now_ms.saturating_sub(cfg.recent_max_age_secs.saturating_mul(1000));
        let store = store.clone();
        let per_subject = cfg.recent_per_subject;
        match tokio::task::spawn_blocking(move || store.trim_recent(per_subject, older_than)).await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(removed = n, "trimmed the edge cache"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trimming the edge cache failed"),
            Err(e) => tracing::warn!(error = %e, "trim task failed"),
        }
    }
}

/// Sleeps until `at`; never wakes for `None` (a `select!` branch that is off).
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
