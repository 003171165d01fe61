//! `petrel dev`: a whole local edge in one command.
//!
//! Starts a hub nats-server (JetStream, domain `hub`) and a leaf node connected to it,
//! provisions the streams, writes a dev secret, starts the gateway in this process on
//! free ports (self-signed certificate, rotated; dev tokens and the demo page on the
//! HTTP listener) and writes `DIR/endpoints.json`:
//!
//! ```json
//! {"quic": "127.0.0.1:PORT", "webtransport": "https://127.0.0.1:PORT/wt",
//!  "websocket": "wss://127.0.0.1:PORT/ws", "websocket_plain": "ws://127.0.0.1:PORT/ws",
//!  "http": "http://127.0.0.1:PORT",
//!  "nats_hub": "nats://…", "nats_leaf": "nats://…",
//!  "cert_sha256": "hex", "gateway_id": "dev-edge", "pid": 123}
//! ```
//!
//! Everything lives under DIR, so two instances with different DIRs run side by side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use petrel_core::auth::{Claims, mint_hs256};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::nats_process::{NatsProcess, wait_jetstream};
use crate::{Config, Gateway, provision, tls};

/// `DIR/endpoints.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoints {
    /// Native QUIC, `host:port`.
    pub quic: String,
    /// WebTransport URL (same UDP port as QUIC).
    pub webtransport: String,
    /// WebSocket URL (TLS).
    pub websocket: String,
    /// Plain WebSocket URL (loopback, development).
    #[serde(default)]
    pub websocket_plain: Option<String>,
    /// Gateway HTTP base URL.
    pub http: String,
    /// Hub client URL.
    pub nats_hub: String,
    /// Leaf client URL.
    pub nats_leaf: String,
    /// redis-server URL (unix socket): group membership.
    #[serde(default)]
    pub redis: Option<String>,
    /// SHA-256 (hex) of the certificate served at start; it rotates (see
    /// `{http}/cert-hashes` for the current and next).
    pub cert_sha256: String,
    /// Gateway id.
    pub gateway_id: String,
    /// Process id of `petrel dev`.
    pub pid: u32,
    /// Every edge (`petrel dev --edges N`); the first is the one above.
    #[serde(default)]
    pub edges: Vec<EdgeEndpoints>,
}

/// One edge of a `petrel dev` topology: its leaf and gateway.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EdgeEndpoints {
    /// Gateway id.
    pub gateway_id: String,
    /// Native QUIC, `host:port`.
    pub quic: String,
    /// WebSocket URL (TLS).
    pub websocket: String,
    /// Plain WebSocket URL (loopback).
    pub websocket_plain: Option<String>,
    /// Gateway HTTP base URL.
    pub http: String,
    /// The edge's leaf client URL.
    pub nats_leaf: String,
    /// SHA-256 (hex) of its certificate at start.
    pub cert_sha256: String,
}

impl Endpoints {
    /// Reads `DIR/endpoints.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("endpoints.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is `petrel dev --dir {}` running?)",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// The hash of the certificate the dev gateway serves now (from `/cert-hashes`),
/// or the one in `endpoints.json` when that cannot be fetched.
pub async fn current_cert_sha256(ep: &Endpoints) -> String {
    let addr = ep.http.trim_start_matches("http://");
    match crate::web::http_get(addr, "/cert-hashes").await {
        Ok((200, body)) => serde_json::from_str::<tls::CertHashes>(&body)
            .map(|h| h.current)
            .unwrap_or_else(|_| ep.cert_sha256.clone()),
        _ => ep.cert_sha256.clone(),
    }
}

/// Path of the dev HS256 secret.
pub fn secret_path(dir: &Path) -> PathBuf {
    dir.join("dev-secret")
}

/// Reads the dev secret.
pub fn read_secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = secret_path(dir);
    let s = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading dev secret {} (run `petrel dev --dir {}` first)",
            path.display(),
            dir.display()
        )
    })?;
    Ok(s.trim().as_bytes().to_vec())
}

/// Mints a dev token for `user` (and `device`) valid `ttl`.
pub fn mint_token(
    secret: &[u8],
    user: &str,
    device: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    petrel_core::UserId::parse(user).context("--user")?;
    if let Some(d) = device {
        petrel_core::DeviceId::parse(d).context("--device")?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    mint_hs256(
        secret,
        &Claims {
            sub: user.to_string(),
            device: device.map(str::to_string),
            exp: now + ttl.as_secs(),
            iat: Some(now),
        },
    )
    .map_err(|e| anyhow::anyhow!("minting token: {e}"))
}

fn ensure_secret(dir: &Path) -> anyhow::Result<()> {
    let path = secret_path(dir);
    if read_secret(dir).map(|s| s.len() >= 32).unwrap_or(false) {
        return Ok(());
    }
    let bytes: [u8; 32] = rand::random();
    tls::write_private(&path, hex::encode(bytes).as_bytes())
}

/// Writes the gateway config used by `petrel dev` (also runnable with `petrel gateway`).
/// `web_dir` is served on the HTTP listener (the demo page).
pub fn write_gateway_config(
    dir: &Path,
    id: &str,
    leaf_url: &str,
    web_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let static_dir = match web_dir {
        Some(d) => format!("static_dir = {:?}\n", d.display().to_string()),
        None => String::new(),
    };
    let path = dir.join("gateway.toml");
    let text = format!(
        r#"# Written by `petrel dev`. Ports 0 = any free port; see endpoints.json for the real ones.
[gateway]
id = "{id}"

[listen]
quic = "127.0.0.1:0"
websocket = "127.0.0.1:0"
# Plain WebSocket on loopback: the browser fallback without trusting the dev certificate.
websocket_plain = "127.0.0.1:0"
http = "127.0.0.1:0"

[tls]
# Generated in memory; browsers pin it by hash (see /cert-hashes), so it is valid
# for less than 14 days and rotated before then.
self_signed = true

[nats]
url = "{leaf_url}"
domain = "hub"

[auth]
hs256_secret_file = "dev-secret"

[storage]
path = "edge-cache"

[web]
# Development only: /dev/token mints tokens for anyone who asks.
dev_tokens = true
{static_dir}"#
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs the dev topology until `shutdown`.
pub async fn run(
    dir: &Path,
    web_dir: Option<&Path>,
    edges: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=16).contains(&edges), "--edges must be 1 to 16");
    let web_dir = match web_dir {
        Some(d) => Some(
            d.canonicalize()
                .with_context(|| format!("--web-dir {}", d.display()))?,
        ),
        None => None,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let endpoints_path = dir.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints_path);

    eprintln!("petrel dev: starting hub nats-server (JetStream domain hub)…");
    let hub = NatsProcess::start_hub(&dir.join("hub"), "hub", None).await?;
    let hub_client = wait_jetstream(&hub.client_url, "hub", Duration::from_secs(20)).await?;
    let done = provision::provision(&hub_client, "hub", 1).await?;
    for p in &done {
        eprintln!("petrel dev: stream {} {}", p.stream, p.action);
    }
    let hub_leaf = hub
        .leafnode_url
        .clone()
        .context("hub has no leafnode port")?;
    eprintln!("petrel dev: starting redis-server…");
    let redis = crate::redis_process::RedisProcess::start(&dir.join("redis")).await?;
    ensure_secret(&dir)?;

    // Edge 0 lives in DIR itself (as it always has); more edges in DIR/edge-N.
    let mut leafs = Vec::new();
    let mut gateways = Vec::new();
    let mut edge_eps = Vec::new();
    for i in 0..edges {
        let (edge_dir, id) = if i == 0 {
            (dir.clone(), "dev-edge".to_string())
        } else {
            let d = dir.join(format!("edge-{i}"));
            std::fs::create_dir_all(&d)?;
            std::fs::copy(secret_path(&dir), secret_path(&d))?;
            (d, format!("dev-edge-{i}"))
        };
        eprintln!("petrel dev: starting leaf nats-server for {id}…");
        // Server names must differ: the hub tells leaf nodes apart by them.
        let leaf_name = if i == 0 {
            "leaf".to_string()
        } else {
            format!("leaf{i}")
        };
        let leaf =
            NatsProcess::start_leaf(&edge_dir.join("leaf"), &leaf_name, &hub_leaf, None).await?;
        wait_jetstream(&leaf.client_url, "hub", Duration::from_secs(20))
            .await
            .context("leaf node did not connect to the hub")?;
        let config_path =
            write_gateway_config(&edge_dir, &id, &leaf.client_url, web_dir.as_deref())?;
        let mut cfg = Config::load(&config_path)?;
        cfg.redis.url = Some(redis.url.clone());
        let gateway = Gateway::load(cfg).await?;
        if !gateway.wait_connected(Duration::from_secs(20)).await {
            anyhow::bail!(
                "the gateway did not connect to the leaf at {}",
                leaf.client_url
            );
        }
        let addrs = gateway.addrs();
        edge_eps.push(EdgeEndpoints {
            gateway_id: id,
            quic: addrs.quic.to_string(),
            websocket: format!("wss://{}/ws", addrs.websocket),
            websocket_plain: addrs.websocket_plain.map(|a| format!("ws://{a}/ws")),
            http: format!("http://{}", addrs.http),
            nats_leaf: leaf.client_url.clone(),
            cert_sha256: gateway.cert_sha256(),
        });
        leafs.push(leaf);
        gateways.push(gateway);
    }
    let first = edge_eps[0].clone();
    let endpoints = Endpoints {
        quic: first.quic.clone(),
        webtransport: format!("https://{}{}", first.quic, crate::quic::WEBTRANSPORT_PATH),
        websocket: first.websocket.clone(),
        websocket_plain: first.websocket_plain.clone(),
        http: first.http.clone(),
        nats_hub: hub.client_url.clone(),
        nats_leaf: first.nats_leaf.clone(),
        redis: Some(redis.url.clone()),
        cert_sha256: first.cert_sha256.clone(),
        gateway_id: first.gateway_id.clone(),
        pid: std::process::id(),
        edges: edge_eps,
    };
    let tmp = dir.join("endpoints.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&endpoints)?)?;
    std::fs::rename(&tmp, &endpoints_path)?;
    eprintln!(
        "petrel dev: ready\n  demo page  {}\n  quic       {}\n  webtransport {}\n  websocket  {} (plain: {})\n  http       {}\n  nats hub   {}\n  nats leaf  {}\n  redis      {}\n  cert sha256 {}\n  endpoints  {}\nPress Ctrl-C to stop.",
        if web_dir.is_some() {
            endpoints.http.clone()
        } else {
            "(none: pass --web-dir web/dist)".into()
        },
        endpoints.quic,
        endpoints.webtransport,
        endpoints.websocket,
        endpoints.websocket_plain.as_deref().unwrap_or("off"),
        endpoints.http,
        endpoints.nats_hub,
        endpoints.nats_leaf,
        redis.url,
        endpoints.cert_sha256,
        endpoints_path.display()
    );
    if edges > 1 {
        eprintln!("petrel dev: {edges} edges, see `edges` in endpoints.json");
    }
    let results =
        futures::future::join_all(gateways.into_iter().map(|g| g.run(shutdown.clone()))).await;
    let _ = std::fs::remove_file(&endpoints_path);
    for leaf in leafs {
        leaf.stop().await;
    }
    hub.stop().await;
    redis.kill().await;
    eprintln!("petrel dev: stopped");
    results.into_iter().collect()
}
