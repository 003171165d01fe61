//! The HTTP listener (plain HTTP; keep it on a private interface or behind the edge's
//! TLS proxy):
//!
//! | path | what |
//! |---|---|
//! | `/healthz` | process is up |
//! | `/readyz` | connected to the leaf; connection and subscription counts |
//! | `/metrics` | Prometheus metrics (OpenMetrics text; see `metrics`) |
//! | `/cert-hashes` | SHA-256 of the current and next certificate, for WebTransport `serverCertificateHashes` (CORS open) |
//! | `/client-config` | the WebTransport and WebSocket URLs for the host the page was loaded from |
//! | `/dev/token?user=U[&device=D][&ttl=SECS]` | a token signed with the HS256 secret — only with `web.dev_tokens` |
//! | everything else | files of `web.static_dir` (the demo page and SDK bundle), if set |

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

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
    /// Directory served for other paths.
    pub static_dir: Option<PathBuf>,
    /// Bound QUIC/WebTransport port.
    pub quic_port: u16,
    /// Bound WebSocket port.
    pub websocket_port: u16,
    /// Bound plain WebSocket port, if any.
    pub websocket_plain_port: Option<u16>,
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
}

async fn client_config(State(s): State<AppState>, headers: HeaderMap) -> Response {
    // The host the page used to reach us, without its port: the listeners share it.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map(|a| a.host().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let http_host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    cors(
        Json(ClientConfig {
            webtransport: format!("https://{host}:{}{WEBTRANSPORT_PATH}", s.web.quic_port),
            websocket: format!("wss://{host}:{}{}", s.web.websocket_port, websocket::PATH),
            websocket_plain: s
                .web
                .websocket_plain_port
                .map(|p| format!("ws://{host}:{p}{}", websocket::PATH)),
            cert_hashes: format!("http://{http_host}/cert-hashes"),
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

async fn dev_token(State(s): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    let Some(secret) = &s.web.dev_secret else {
        return (
            StatusCode::NOT_FOUND,
            "dev tokens are disabled (web.dev_tokens = false)\n",
        )
            .into_response();
    };
    match petrel_core::auth::mint_dev_token(
        secret,
        &q.user,
        q.device.as_deref(),
        Duration::from_secs(q.ttl.unwrap_or(12 * 3600).clamp(1, 24 * 3600)),
    ) {
        Ok(token) => {
            cors(Json(serde_json::json!({ "token": token, "user": q.user })).into_response())
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}
