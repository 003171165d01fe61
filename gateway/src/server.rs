//! The gateway as a whole: the rooms wired together. [`Gateway::load`] reads the keys,
//! opens the edge cache, connects to the leaf and binds every listener;
//! [`Gateway::run`] serves until shutdown, then drains connections, the outbox and the
//! live subscriptions, in that order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use petrel_core::auth::Authenticator;
use petrel_core::session::SessionConfig;
use petrel_storage::EdgeStore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{self, Config};
use crate::connection::Shared;
use crate::connection::admission::Admission;
use crate::hub::{CatchUp, JetStream, Live, LiveKey};
use crate::listeners::{http, quic, websocket, webtransport};
use crate::{directory, metrics, outbox, provision, tls};

/// Longest the gateway waits for its connections to end at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// How often each edge asks the hub a question, to notice its return after an outage of
/// the leaf → hub link (see `Live::resync_when_hub_returns`).
const HUB_CHECK: Duration = Duration::from_secs(1);
/// Resumable TLS sessions the QUIC listener keeps (a few hundred bytes each): a client
/// whose session is still here reconnects in 0-RTT.
const QUIC_SESSION_CACHE: usize = 16_384;

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
    sockets: Sockets,
    admission: Arc<Admission>,
    certs: Arc<tls::CertStore>,
    web: http::WebState,
    http_limits: http::HttpLimits,
    nats: async_nats::Client,
    store: Arc<EdgeStore>,
    storage: config::StorageSection,
    forwarding: outbox::Forwarding,
    reconnects: mpsc::UnboundedReceiver<()>,
}

/// The bound listeners.
struct Sockets {
    quic: quinn::Endpoint,
    ws: TcpListener,
    ws_tls: tokio_rustls::TlsAcceptor,
    ws_plain: Option<TcpListener>,
    http: TcpListener,
    addrs: BoundAddrs,
}

impl Gateway {
    /// Opens the edge cache, connects to the leaf (retrying in the background if it is
    /// not up yet) and binds the listeners.
    pub async fn load(cfg: Config) -> anyhow::Result<Self> {
        let hs_secret = hs256_secret(&cfg.auth)?;
        let (auth, key_set) = authenticator(&cfg.auth, hs_secret.as_deref()).await?;
        let auth = Arc::new(auth);
        let certs = tls::CertStore::new(cfg.tls.source()?).context("TLS certificate")?;
        let store = open_store(&cfg.storage)?;
        let (nats, reconnects) = connect_leaf(&cfg).await?;
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
            outbox_config(&cfg),
        )?;
        let sockets = Sockets::bind(&cfg, &certs).await?;
        let web = http::WebState {
            certs: certs.clone(),
            dev_secret: hs_secret.filter(|_| cfg.web.dev_tokens),
            dev_token_max_ttl: Duration::from_secs(cfg.auth.max_token_lifetime_secs),
            public_host: public_host(&cfg),
            vapid_public_key: cfg.web.vapid_public_key.clone(),
            static_dir: cfg.web.static_dir.clone(),
            quic_port: sockets.addrs.quic.port(),
            websocket_port: sockets.addrs.websocket.port(),
            websocket_plain_port: sockets.addrs.websocket_plain.map(|a| a.port()),
            http_port: sockets.addrs.http.port(),
        };
        let groups = directory::Directory::new(cfg.redis.url.as_deref())?;
        let presence = Arc::new(directory::Presence::new(
            groups.clone(),
            nats.clone(),
            cfg.gateway.id.clone(),
            Duration::from_secs(cfg.redis.presence_heartbeat_secs.max(1)),
        ));
        let acks = Arc::new(directory::Acks::new(groups.clone()));
        let registry = Arc::new(crate::hub::PushRegistry::new(
            nats.clone(),
            &cfg.nats.domain,
            Duration::from_secs(cfg.nats.publish_timeout_secs),
        ));
        metrics.register_collector(metrics::GatewayCollector {
            jetstream: jetstream.clone(),
            catchup: catchup.clone(),
            live: live.clone(),
            outbox: outbox.stats.clone(),
        });
        let metrics = Arc::new(metrics);
        let key_set = key_set.map(|loader| {
            Arc::new(crate::jwks::KeySetRefresher::new(
                loader,
                auth.clone(),
                metrics.clone(),
                Duration::from_secs(cfg.auth.jwks_refresh_secs),
                Duration::from_secs(cfg.auth.jwks_min_refetch_secs),
            ))
        });
        let shared = Arc::new(Shared {
            metrics,
            key_set,
            session: Arc::new(session_config(&cfg)),
            groups,
            presence,
            acks,
            registry,
            messages: crate::hub::MessageService::new(
                nats.clone(),
                Duration::from_millis(cfg.messages.request_timeout_ms),
            ),
            users: crate::connection::admission::Users::new(cfg.limits.users()),
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
            sockets,
            admission: Admission::new(cfg.limits.admission()),
            certs,
            web,
            http_limits: http::HttpLimits {
                header_timeout: Duration::from_secs(cfg.web.header_timeout_secs),
                max_connection: Duration::from_secs(cfg.web.max_connection_secs),
                max_connections: cfg.web.max_connections,
            },
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
        self.sockets.addrs
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
    /// waits (bounded) for their connections to end, lets the outbox forwarder finish
    /// what it can, and ends the live subscriptions.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            shared,
            sockets,
            admission,
            certs,
            web,
            http_limits,
            nats,
            store,
            storage,
            forwarding,
            reconnects,
        } = self;
        let addrs = sockets.addrs;
        info!(quic = %addrs.quic, websocket = %addrs.websocket, http = %addrs.http, "gateway listening");
        let tracker = TaskTracker::new();
        let endpoint = sockets.quic.clone();
        // The forwarder outlives the listeners: connections draining may still send.
        let forwarding_done = CancellationToken::new();
        let forwarding = tokio::spawn(forwarding.run(forwarding_done.clone()));
        let serving = sockets.serve(&shared, (web, http_limits), &admission, &tracker, &shutdown);
        let background = async {
            tokio::join!(
                shared.presence.heartbeat(shutdown.clone()),
                shared.acks.run(shutdown.clone()),
                certs.clone().maintain(shutdown.clone()),
                crate::hub::catchup::trim_cache(store, trim_config(&storage), shutdown.clone()),
                shared
                    .live
                    .clone()
                    .resync_on_reconnect(reconnects, shutdown.clone()),
                shared
                    .live
                    .clone()
                    .resync_when_hub_returns(HUB_CHECK, shutdown.clone()),
                follow_group_changes(nats.clone(), shared.clone(), shutdown.clone()),
                refresh_key_set(shared.key_set.clone(), shutdown.clone()),
            )
        };
        tokio::join!(serving, background);
        tracker.close();
        if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
            warn!("connections still open after {DRAIN:?} of drain; closing anyway");
        }
        forwarding_done.cancel();
        let _ = forwarding.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        shared.live.shutdown().await;
        // Bounded: with the leaf gone, a flush would wait for a reconnection forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
        info!("gateway stopped");
        Ok(())
    }
}

impl Sockets {
    /// Binds every listener of `cfg`, serving `certs`.
    async fn bind(cfg: &Config, certs: &Arc<tls::CertStore>) -> anyhow::Result<Self> {
        let mut quic_tls =
            certs.server_config(&[petrel_proto::ALPN_QUIC, webtransport::ALPN_H3])?;
        // 0-RTT for resumed sessions (quinn takes all or nothing). Early data is read
        // only once the handshake has completed, so a replayed first flight never
        // reaches a connection: it cannot finish the handshake.
        quic_tls.max_early_data_size = u32::MAX;
        quic_tls.session_storage =
            rustls::server::ServerSessionMemoryCache::new(QUIC_SESSION_CACHE);
        let quic_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(quic_tls)
            .context("QUIC TLS config")?;
        let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(quic_crypto));
        server_cfg.transport_config(Arc::new(quic::transport_config(cfg.limits.idle_timeout())));
        let quic = quinn::Endpoint::server(server_cfg, cfg.listen.quic)
            .with_context(|| format!("binding QUIC on udp {}", cfg.listen.quic))?;
        let ws = bind_tcp(cfg.listen.websocket, "WebSocket").await?;
        let ws_plain = match cfg.listen.websocket_plain {
            Some(addr) => Some(bind_tcp(addr, "plain WebSocket").await?),
            None => None,
        };
        let http = bind_tcp(cfg.listen.http, "HTTP").await?;
        let ws_tls =
            tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config(&[b"http/1.1"])?));
        let addrs = BoundAddrs {
            quic: quic.local_addr()?,
            websocket: ws.local_addr()?,
            websocket_plain: ws_plain.as_ref().map(|l| l.local_addr()).transpose()?,
            http: http.local_addr()?,
        };
        Ok(Self {
            quic,
            ws,
            ws_tls,
            ws_plain,
            http,
            addrs,
        })
    }

    /// Accepts on every listener until `shutdown`; returns the HTTP server's result.
    async fn serve(
        self,
        shared: &Arc<Shared>,
        (web, http_limits): (http::WebState, http::HttpLimits),
        admission: &Arc<Admission>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let quic = quic::serve(
            self.quic,
            shared.clone(),
            admission.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let ws = websocket::serve(
            self.ws,
            Some(self.ws_tls),
            shared.clone(),
            admission.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let ws_plain = async {
            if let Some(listener) = self.ws_plain {
                let (shared, admission) = (shared.clone(), admission.clone());
                websocket::serve(
                    listener,
                    None,
                    shared,
                    admission,
                    tracker.clone(),
                    shutdown.clone(),
                )
                .await;
            }
        };
        let router = http::router(web, shared.clone());
        let http = http::serve(self.http, router, http_limits, shutdown.clone());
        tokio::join!(quic, ws, ws_plain, http);
    }
}

/// Keeps the token key set fresh, when there is one.
async fn refresh_key_set(
    refresher: Option<Arc<crate::jwks::KeySetRefresher>>,
    shutdown: CancellationToken,
) {
    if let Some(r) = refresher {
        r.run(shutdown).await;
    }
}

/// The host name in the URLs `/client-config` hands out: configured, or the QUIC
/// listen address (`localhost` when that is unspecified).
fn public_host(cfg: &Config) -> String {
    if let Some(h) = &cfg.web.public_host {
        return h.clone();
    }
    match cfg.listen.quic.ip() {
        ip if ip.is_unspecified() => "localhost".into(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on tcp {addr}"))
}

/// The HS256 secret, from its file or the config itself.
fn hs256_secret(auth: &config::AuthSection) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match (&auth.hs256_secret_file, &auth.hs256_secret) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading auth.hs256_secret_file {}", path.display()))?
                .trim()
                .as_bytes()
                .to_vec(),
        ),
        (None, Some(s)) => Some(s.as_bytes().to_vec()),
        (None, None) => None,
    })
}

/// Token verification with the configured keys, and the key set's loader when one is
/// configured (its first load done here: a gateway never starts unable to verify).
async fn authenticator(
    auth: &config::AuthSection,
    hs_secret: Option<&[u8]>,
) -> anyhow::Result<(Authenticator, Option<crate::jwks::KeySetLoader>)> {
    let es_key = match &auth.es256_public_key {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading auth.es256_public_key {}", path.display()))?,
        ),
        None => None,
    };
    let (loader, set) = match auth.key_set_source()? {
        Some(source) => {
            let loader = crate::jwks::KeySetLoader::new(source, auth.jwks_ca_file.as_deref())?;
            let set = loader.load_at_start().await?;
            (Some(loader), Some(set))
        }
        None => (None, None),
    };
    let authenticator = Authenticator::with_keys(hs_secret, es_key.as_deref(), set)
        .context("auth keys")?
        .with_policy(auth.policy());
    Ok((authenticator, loader))
}

fn open_store(cfg: &config::StorageSection) -> anyhow::Result<Arc<EdgeStore>> {
    std::fs::create_dir_all(&cfg.path)
        .with_context(|| format!("creating storage directory {}", cfg.path.display()))?;
    let store = EdgeStore::open(&cfg.path)
        .with_context(|| format!("opening edge cache {}", cfg.path.display()))?;
    Ok(Arc::new(store))
}

/// Connects to the leaf, retrying in the background if it is not up yet. Each
/// (re)connection is reported on the receiver, so that connections re-check what they
/// missed while the link was down.
async fn connect_leaf(
    cfg: &Config,
) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<()>)> {
    let (reconnected, reconnects) = mpsc::unbounded_channel();
    let options = match &cfg.nats.user {
        Some(user) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), nats_password(cfg)?)
        }
        None => async_nats::ConnectOptions::new(),
    };
    let nats = options
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
    Ok((nats, reconnects))
}

/// The leaf password, from its file or the config itself.
fn nats_password(cfg: &Config) -> anyhow::Result<String> {
    match (&cfg.nats.password_file, &cfg.nats.password) {
        (Some(path), _) => Ok(std::fs::read_to_string(path)
            .with_context(|| format!("reading nats.password_file {}", path.display()))?
            .trim()
            .to_string()),
        (None, Some(p)) => Ok(p.clone()),
        (None, None) => anyhow::bail!("nats.user is set but no password"),
    }
}

fn session_config(cfg: &Config) -> SessionConfig {
    SessionConfig {
        gateway_id: cfg.gateway.id.clone(),
        max_frame_bytes: cfg.limits.max_frame_bytes,
        max_content_bytes: cfg.limits.max_content_bytes,
        max_inflight_sends: cfg.limits.max_inflight_sends,
        send_rate_per_sec: cfg.limits.send_rate_per_sec,
        send_burst: cfg.limits.send_burst,
        handshake_timeout: cfg.limits.handshake_timeout(),
        amend_window: Duration::from_secs(cfg.messages.amend_window_secs),
    }
}

fn outbox_config(cfg: &Config) -> outbox::OutboxConfig {
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
    }
}

fn trim_config(cfg: &config::StorageSection) -> crate::hub::catchup::TrimConfig {
    crate::hub::catchup::TrimConfig {
        every: Duration::from_secs(cfg.trim_every_secs.max(1)),
        per_subject: cfg.recent_per_subject,
        max_age: Duration::from_secs(cfg.recent_max_age_secs),
    }
}

/// Follows `group.changed.*`: tells the connections here that may be affected (those
/// receiving the group now, and those of its members now) to re-read their groups.
async fn follow_group_changes(
    nats: async_nats::Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    if !shared.groups.configured() {
        return;
    }
    let mut sub = match nats
        .subscribe(petrel_core::subject::GROUP_CHANGED_ALL)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot follow group changes; membership is read at connect only");
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
            .signal_groups_changed(&LiveKey::Group(group.clone()));
        match shared.groups.members(&group).await {
            Ok(members) => {
                for u in members {
                    shared.live.signal_groups_changed(&LiveKey::User(u));
                }
            }
            Err(e) => warn!(%group, error = %e, "reading the members of a changed group failed"),
        }
    }
}
