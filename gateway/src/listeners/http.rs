//! The HTTP listener (plain HTTP; keep it on a private interface or behind the edge's
//! TLS proxy):
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | process is up |
//! | `/readyz` | connected to the leaf; connection and subscription counts |
//! | `/metrics` | Prometheus metrics (OpenMetrics text; see `metrics`) |
//! | `/cert-hashes` | SHA-256 of the current and next certificate, for WebTransport `serverCertificateHashes` (CORS open) |
//! | `/client-config` | the WebTransport and WebSocket URLs of this edge, built from `web.public_host` (CORS open) |
//! | `/dev/token?user=U[&device=D][&ttl=SECS]` | a token signed with the HS256 secret — only with `web.dev_tokens`, only to loopback peers, no CORS |
//! | everything else | files of `web.static_dir` (the demo page and SDK bundle), if set |
//!
//! Bounded like every other listener: headers must arrive within
//! `web.header_timeout_secs` (also for the next request on a kept-alive connection), a
//! connection lives at most `web.max_connection_secs`, at most `web.max_connections`
//! are open (more are answered 503), and no route reads a request body.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::websocket;
use super::webtransport::PATH as WEBTRANSPORT_PATH;
use crate::connection::Shared;
use crate::tls::CertStore;

/// What the HTTP handlers need.
#[derive(Debug, Clone)]
pub struct WebState {
    /// Served certificate (for `/cert-hashes`).
    pub certs: Arc<CertStore>,
    /// HS256 secret for `/dev/token`; `None` disables the route.
    pub dev_secret: Option<Vec<u8>>,
    /// Longest validity of a dev token (the gateway's own token lifetime limit).
    pub dev_token_max_ttl: Duration,
    /// The VAPID public key in `/client-config`.
    pub vapid_public_key: Option<String>,
    /// Host name in the URLs of `/client-config`.
    pub public_host: String,
    /// Directory served for other paths.
    pub static_dir: Option<PathBuf>,
    /// Bound QUIC/WebTransport port.
    pub quic_port: u16,
    /// Bound WebSocket port.
    pub websocket_port: u16,
    /// Bound plain WebSocket port, if any.
    pub websocket_plain_port: Option<u16>,
    /// Bound HTTP port.
    pub http_port: u16,
}

#[derive(Clone)]
struct AppState {
    web: Arc<WebState>,
    shared: Arc<Shared>,
}

/// The router for the HTTP listener.
pub fn router(web: WebState, shared: Arc<Shared>) -> Router {
    let static_dir = web.static_dir.clone();
    let state = AppState {
        web: Arc::new(web),
        shared,
    };
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/cert-hashes", get(cert_hashes))
        .route("/client-config", get(client_config))
        .route("/dev/token", get(dev_token))
        .with_state(state);
    if let Some(dir) = static_dir {
        router = router.fallback_service(tower_http::services::ServeDir::new(dir));
    }
    router
}

/// Prometheus scrape (OpenMetrics text).
async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.shared.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    let conns = s.shared.connections.load(Ordering::Relaxed);
    let subs = s.shared.live.live_subscriptions();
    let groups = s.shared.live.group_subscriptions();
    let overflows = s.shared.live.live_overflows();
    let f = &s.shared.catchup.counters;
    let (cache, hub, cache_errors) = (
        f.from_cache.load(Ordering::Relaxed),
        f.from_hub.load(Ordering::Relaxed),
        f.cache_errors.load(Ordering::Relaxed),
    );
    let o = &s.shared.outbox.stats;
    let counters = format!(
        "connections={conns} live_subscriptions={subs} group_subscriptions={groups} \
         live_overflows={overflows} \
         fetched_from_cache={cache} fetched_from_hub={hub} cache_errors={cache_errors} \
         outbox_depth={} sends_queued={} outbox_retries={} outbox_found_stored={} \
         outbox_corrupt={} outbox_refused={} datagrams_in={} datagrams_out={}\n",
        o.depth.load(Ordering::Relaxed),
        o.queued.load(Ordering::Relaxed),
        o.retries.load(Ordering::Relaxed),
        o.found_stored.load(Ordering::Relaxed),
        o.corrupt.load(Ordering::Relaxed),
        o.refused.load(Ordering::Relaxed),
        s.shared.datagrams_in.load(Ordering::Relaxed),
        s.shared.datagrams_out.load(Ordering::Relaxed),
    );
    // Not ready without the leaf (a load balancer should prefer edges linked to the
    // hub), though sends are still accepted into the outbox meanwhile.
    if s.shared.jetstream.connected() {
        (StatusCode::OK, format!("ready {counters}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not connected to NATS {counters}"),
        )
    }
}

/// Pages on other origins fetch the hashes too; they are public by nature.
fn cors(mut r: Response) -> Response {
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn cert_hashes(State(s): State<AppState>) -> Response {
    cors(Json(s.web.certs.hashes()).into_response())
}

/// `/client-config`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientConfig {
    /// WebTransport URL.
    pub webtransport: String,
    /// WebSocket URL.
    pub websocket: String,
    /// Plain WebSocket URL (`ws://`), when the gateway has that listener.
    pub websocket_plain: Option<String>,
    /// Where the certificate hashes are.
    pub cert_hashes: String,
    /// The push service's VAPID public key (base64url), for Web Push subscriptions;
    /// absent when none is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapid_public_key: Option<String>,
}

async fn client_config(State(s): State<AppState>) -> Response {
    let web = &s.web;
    let host = &web.public_host;
    cors(
        Json(ClientConfig {
            webtransport: format!("https://{host}:{}{WEBTRANSPORT_PATH}", web.quic_port),
            websocket: format!("wss://{host}:{}{}", web.websocket_port, websocket::PATH),
            websocket_plain: web
                .websocket_plain_port
                .map(|p| format!("ws://{host}:{p}{}", websocket::PATH)),
            cert_hashes: format!("http://{host}:{}/cert-hashes", web.http_port),
            vapid_public_key: web.vapid_public_key.clone(),
        })
        .into_response(),
    )
}

#[derive(Deserialize)]
struct TokenQuery {
    user: String,
    device: Option<String>,
    /// Validity in seconds (default 12 h, at most a day).
    ttl: Option<u64>,
}

async fn dev_token(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let Some(secret) = &s.web.dev_secret else {
        return (
            StatusCode::NOT_FOUND,
            "dev tokens are disabled (web.dev_tokens = false)\n",
        )
            .into_response();
    };
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "dev tokens are given to loopback clients only\n",
        )
            .into_response();
    }
    let max = s.web.dev_token_max_ttl.as_secs().clamp(1, 24 * 3600);
    let ttl = Duration::from_secs(q.ttl.unwrap_or(12 * 3600).clamp(1, max));
    // No CORS: a page on another origin must not be able to read a token.
    match petrel_core::auth::mint_dev_token(secret, &q.user, q.device.as_deref(), ttl) {
        Ok(token) => {
            let mut r = Json(serde_json::json!({ "token": token, "user": q.user })).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The HTTP listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Longest a connection stays open.
    pub max_connection: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` within `limits` until `shutdown`; then lets the
/// requests in progress finish (at most a few seconds).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP connection limit reached; answering 503");
            tracker.spawn(refuse(stream));
            continue;
        };
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _slot = slot;
            serve_connection(stream, peer, router, limits, shutdown).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

/// One HTTP/1.1 connection: its requests carry the peer's address (for `/dev/token`).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.cancelled() => None,
        _ = tokio::time::sleep(limits.max_connection) => None,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(2), conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// Answers 503 to a connection over the limit and closes it, without reading it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let busy =
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(busy)).await;
}
