//! `petrel dev`: a whole local edge in one command — a [`crate::Topology`] in DIR with
//! a dev secret, self-signed certificates (rotated), dev tokens and the demo page on
//! each gateway's HTTP listener — and `DIR/endpoints.json` for the tools:
//!
//! ```json
//! {"quic": "127.0.0.1:PORT", "webtransport": "https://127.0.0.1:PORT/wt",
//!  "websocket": "wss://127.0.0.1:PORT/ws", "websocket_plain": "ws://127.0.0.1:PORT/ws",
//!  "http": "http://127.0.0.1:PORT",
//!  "nats_hub": "nats://…", "nats_hub_nodes": ["nats://…"],
//!  "hub_monitoring": ["http://127.0.0.1:PORT"], "nats_leaf": "nats://…",
//!  "cert_sha256": "hex", "gateway_id": "dev-edge", "pid": 123}
//! ```
//!
//! Everything lives under DIR, so two instances with different DIRs run side by side.

use std::path::{Path, PathBuf};

use anyhow::Context;
use petrel_gateway::listeners::{websocket, webtransport};
use petrel_gateway::tls;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::topology::TopologyBuilder;

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
    /// The first hub node's client URL, with the admin credentials in it
    /// (development only).
    pub nats_hub: String,
    /// Every hub node's client URL, with the admin credentials.
    #[serde(default)]
    pub nats_hub_nodes: Vec<String>,
    /// Every hub node's monitoring base URL (`/varz`, `/jsz`, `/healthz`).
    #[serde(default)]
    pub hub_monitoring: Vec<String>,
    /// Leaf client URL, with the gateway's credentials (development only).
    pub nats_leaf: String,
    /// Leaf client URL with the business services' credentials (`notif.*.*` and
    /// `group.changed.*` publish only).
    #[serde(default)]
    pub nats_leaf_services: Option<String>,
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
    /// The push worker and its fake providers (`petrel dev --push`).
    #[serde(default)]
    pub push: Option<PushEndpoints>,
    /// The message service and its PostgreSQL (unless `petrel dev --no-messages`).
    #[serde(default)]
    pub messages: Option<MessagesEndpoints>,
}

/// What `petrel dev` runs for the message service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessagesEndpoints {
    /// PostgreSQL (`postgres://petrel@127.0.0.1:PORT/postgres`, trust login on loopback).
    pub postgres: String,
    /// The in-process worker's config (`petrel messages --config` takes it too).
    pub config: PathBuf,
    /// The worker's `/metrics`.
    pub metrics: String,
}

/// What `petrel dev --push` runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushEndpoints {
    /// The fake providers' base URL (APNs, FCM, Web Push on one HTTPS port).
    pub providers: String,
    /// Where every push the fakes receive is appended (JSON lines).
    pub received: PathBuf,
    /// The in-process worker's config (`petrel push --config` takes it too).
    pub config: PathBuf,
    /// The worker's `/metrics`.
    pub metrics: String,
    /// The VAPID public key the gateways hand out in `/client-config`.
    pub vapid_public_key: String,
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
    match crate::http_get(addr, "/cert-hashes").await {
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

/// Writes `secret` as DIR's dev secret (readable by this user only).
pub fn write_secret(dir: &Path, secret: &[u8]) -> anyhow::Result<()> {
    tls::write_private(&secret_path(dir), secret)
}

/// DIR's dev secret, made (32 random bytes, hex) if it has none yet.
fn ensure_secret(dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(s) = read_secret(dir)
        && s.len() >= 32
    {
        return Ok(s);
    }
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes).into_bytes();
    write_secret(dir, &secret)?;
    Ok(secret)
}
/// Writes the gateway config used by `petrel dev` (also runnable with `petrel gateway`).
/// `web_dir` is served on the HTTP listener (the demo page).
pub fn write_gateway_config(
    dir: &Path,
    id: &str,
    leaf_url: &str,
    leaf_auth: &crate::nats::LeafAuth,
    web_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    tls::write_private(&dir.join("nats-password"), leaf_auth.gateway.as_bytes())?;
    let nats_user = crate::nats::GATEWAY_USER;
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
user = "{nats_user}"
password_file = "nats-password"
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

/// The gateway id of `petrel dev`'s edge `i`.
fn gateway_id(i: usize) -> String {
    match i {
        0 => "dev-edge".into(),
        i => format!("dev-edge-{i}"),
    }
}

/// The shape of a dev topology.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Edges (leaf + gateway each).
    pub edges: usize,
    /// Hub nodes (1, or a cluster).
    pub hub_nodes: usize,
    /// The hub's JetStream `sync_interval` (`always`, or a duration such as `2m`).
    pub sync_interval: String,
    /// Also run a push worker on local fake providers.
    pub push: bool,
    /// Run the message service (PostgreSQL and a worker).
    pub messages: bool,
}

/// Runs the dev topology in `dir` until `shutdown`, serving `web_dir` (the demo page)
/// on each gateway's HTTP listener.
pub async fn run(
    dir: &Path,
    web_dir: Option<&Path>,
    shape: Shape,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Shape {
        edges,
        hub_nodes,
        sync_interval,
        push,
        messages,
    } = shape;
    anyhow::ensure!((1..=16).contains(&edges), "--edges must be 1 to 16");
    anyhow::ensure!(
        (1..=7).contains(&hub_nodes),
        "--hub-nodes must be 1 to 7 (3 is the production cluster)"
    );
    anyhow::ensure!(
        sync_interval == "always"
            || (sync_interval.len() > 1
                && sync_interval.ends_with(['s', 'm', 'h'])
                && sync_interval[..sync_interval.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_digit())),
        "--sync-interval must be `always` or a duration such as 2m, 30s (got {sync_interval:?})"
    );
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
    let secret = ensure_secret(&dir)?;
    let serving_page = web_dir.is_some();
    let fakes = match push {
        true => Some(crate::push::FakeProviders::start(&dir.join("push"), true).await?),
        false => None,
    };
    let vapid = fakes.as_ref().map(|f| f.vapid_public_key.clone());
    let topo = TopologyBuilder::new(edges, &secret)
        .root(&dir)
        .web_dir(web_dir)
        .gateway_id(gateway_id)
        .hub_nodes(hub_nodes)
        .sync_interval(&sync_interval)
        .customize(move |cfg, _| {
            cfg.web.vapid_public_key = vapid.clone();
            Ok(())
        })
        .progress(true)
        .start()
        .await?;
    let mut endpoints = endpoints(&topo);
    let worker = match &fakes {
        Some(f) => {
            let (task, e) = start_push_worker(&dir, &topo, f, &shutdown).await?;
            endpoints.push = Some(e);
            Some(task)
        }
        None => None,
    };
    let mut message_service = match messages {
        true => {
            let m = crate::messages::MessageService::start(
                &dir.join("messages"),
                &topo.hub.admin_urls().join(","),
                topo.redis.as_ref().map(|r| r.url.as_str()),
                "",
            )
            .await
            .context("starting the message service")?;
            endpoints.messages = Some(MessagesEndpoints {
                postgres: m.postgres.url.clone(),
                config: m.config.clone(),
                metrics: m.metrics.clone(),
            });
            Some(m)
        }
        false => None,
    };
    let tmp = dir.join("endpoints.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&endpoints)?)?;
    std::fs::rename(&tmp, &endpoints_path)?;
    print_ready(&endpoints, serving_page, &endpoints_path);
    topo.run_until(shutdown.clone()).await;
    eprintln!("petrel dev: stopping…");
    shutdown.cancel();
    if let Some(w) = worker {
        match w.await {
            Ok(Err(e)) => eprintln!("petrel dev: the push worker ended: {e:#}"),
            Err(e) => eprintln!("petrel dev: the push worker ended: {e}"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(m) = message_service.as_mut()
        && let Err(e) = m.stop_worker().await
    {
        eprintln!("petrel dev: the message service ended: {e:#}");
    }
    drop(message_service);
    drop(fakes);
    let _ = std::fs::remove_file(&endpoints_path);
    let stopped = topo.shut_down().await;
    eprintln!("petrel dev: stopped");
    stopped
}

/// Starts a push worker in this process on the fake providers `fakes`.
async fn start_push_worker(
    dir: &Path,
    topo: &crate::Topology,
    fakes: &crate::push::FakeProviders,
    shutdown: &CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<anyhow::Result<()>>, PushEndpoints)> {
    let redis = topo
        .redis
        .as_ref()
        .map(|r| r.url.clone())
        .context("the push worker needs the topology's Redis")?;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], crate::process::free_port()?));
    let config = crate::push::write_push_config(
        &dir.join("push"),
        &topo.hub.admin_urls().join(","),
        None,
        &redis,
        metrics,
        fakes,
        "",
    )?;
    let cfg = petrel_push::PushConfig::load(&config)?;
    let task = tokio::spawn(petrel_push::run(cfg, shutdown.child_token()));
    Ok((
        task,
        PushEndpoints {
            providers: fakes.url.clone(),
            received: dir.join("push").join("received.jsonl"),
            config,
            metrics: format!("http://{metrics}/metrics"),
            vapid_public_key: fakes.vapid_public_key.clone(),
        },
    ))
}

/// What `endpoints.json` says of `topo`.
fn endpoints(topo: &crate::Topology) -> Endpoints {
    let edges: Vec<EdgeEndpoints> = topo
        .edges
        .iter()
        .map(|e| EdgeEndpoints {
            gateway_id: e.id.clone(),
            quic: e.addrs.quic.to_string(),
            websocket: format!("wss://{}{}", e.addrs.websocket, websocket::PATH),
            websocket_plain: e
                .addrs
                .websocket_plain
                .map(|a| format!("ws://{a}{}", websocket::PATH)),
            http: format!("http://{}", e.addrs.http),
            nats_leaf: e.leaf_url.clone(),
            cert_sha256: e.certs.hashes().current,
        })
        .collect();
    let first = edges[0].clone();
    Endpoints {
        webtransport: format!("https://{}{}", first.quic, webtransport::PATH),
        quic: first.quic,
        websocket: first.websocket,
        websocket_plain: first.websocket_plain,
        http: first.http,
        nats_hub: topo.hub.admin_urls().first().cloned().unwrap_or_default(),
        nats_hub_nodes: topo.hub.admin_urls(),
        hub_monitoring: topo.hub.monitoring_urls(),
        nats_leaf: first.nats_leaf,
        nats_leaf_services: topo.edges.first().map(|e| e.services_url.clone()),
        redis: topo.redis.as_ref().map(|r| r.url.clone()),
        cert_sha256: first.cert_sha256,
        gateway_id: first.gateway_id,
        pid: std::process::id(),
        edges,
        push: None,
        messages: None,
    }
}

/// `url` with its password left out (it is in endpoints.json).
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((_, host))) => match rest.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}@{host} (password in endpoints.json)"),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

fn print_ready(e: &Endpoints, serving_page: bool, path: &Path) {
    eprintln!(
        "petrel dev: ready\n  demo page  {}\n  quic       {}\n  webtransport {}\n  websocket  {} (plain: {})\n  http       {}\n  nats hub   {} ({} node(s), monitoring {})\n  nats leaf  {}\n  redis      {}\n  cert sha256 {}\n  endpoints  {}\nPress Ctrl-C to stop.",
        if serving_page {
            e.http.as_str()
        } else {
            "(none: pass --web-dir web/dist)"
        },
        e.quic,
        e.webtransport,
        e.websocket,
        e.websocket_plain.as_deref().unwrap_or("off"),
        e.http,
        without_password(&e.nats_hub),
        e.nats_hub_nodes.len(),
        e.hub_monitoring.join(" "),
        without_password(&e.nats_leaf),
        e.redis.as_deref().unwrap_or("off"),
        e.cert_sha256,
        path.display()
    );
    if let Some(p) = &e.push {
        eprintln!(
            "petrel dev: push worker on fake providers at {} (APNs, FCM, Web Push); received pushes in {}; metrics {}",
            p.providers,
            p.received.display(),
            p.metrics
        );
    }
    if let Some(m) = &e.messages {
        eprintln!(
            "petrel dev: message service on PostgreSQL {}; metrics {}",
            m.postgres, m.metrics
        );
    }
    if e.edges.len() > 1 {
        eprintln!(
            "petrel dev: {} edges, see `edges` in endpoints.json",
            e.edges.len()
        );
    }
}
