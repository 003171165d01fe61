//! The push service's test rig: a 3-node hub, Redis and gateways, the fake providers
//! of `petrel_devkit::push`, and push workers in this process.

use std::path::PathBuf;
use std::time::Duration;

use petrel_client::{Connection, PushTarget, SendResult, TransportKind::*};
use petrel_devkit::push::{FakeProviders, Received, write_push_config};
use tokio_util::sync::CancellationToken;

use crate::{SECRET, Topology, TopologyBuilder, test_config};

/// Timings short enough for tests: wake after 600 ms, pushes to a device at least
/// 1 s apart, a dead worker's messages redelivered after 4 s.
pub const TIMINGS: &str = "grace_ms = 600\ncoalesce_ms = 1000\nack_wait_secs = 4\nretry_first_ms = 200\nretry_max_ms = 2000\nattempts = 3\npresence_heartbeat_secs = 1\n";

/// A 3-node hub, Redis and edges with the fake providers, for push workers.
pub struct Rig {
    /// The topology.
    pub topo: Topology,
    /// The providers' stand-ins.
    pub fakes: FakeProviders,
    /// Where worker configs and logs go.
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// Starts it with `edges` edges.
    pub async fn start(edges: usize) -> anyhow::Result<Self> {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir()?;
        let fakes = FakeProviders::start(&dir.path().join("fakes"), false).await?;
        let vapid = fakes.vapid_public_key.clone();
        let topo = TopologyBuilder::new(edges, SECRET.as_bytes())
            .hub_nodes(3)
            .customize(move |cfg, _| {
                test_config(cfg);
                cfg.redis.presence_heartbeat_secs = 1;
                cfg.web.vapid_public_key = Some(vapid.clone());
                Ok(())
            })
            .start()
            .await?;
        Ok(Self { topo, fakes, dir })
    }

    /// A worker config (its own metrics port) with `extra` `[push]` keys.
    pub fn config(
        &self,
        name: &str,
        extra: &str,
    ) -> anyhow::Result<(PathBuf, std::net::SocketAddr)> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let metrics =
            std::net::SocketAddr::from(([127, 0, 0, 1], petrel_devkit::process::free_port()?));
        let redis = self
            .topo
            .redis
            .as_ref()
            .map(|r| r.url.clone())
            .unwrap_or_default();
        let path = write_push_config(
            &dir,
            &self.topo.hub.admin_urls().join(","),
            None,
            &redis,
            metrics,
            &self.fakes,
            &with_timings(extra),
        )?;
        Ok((path, metrics))
    }

    /// A worker in this process until the returned token is cancelled.
    pub async fn worker(&self, extra: &str) -> anyhow::Result<CancellationToken> {
        let (path, metrics) = self.config("worker", extra)?;
        let cfg = petrel_push::PushConfig::load(&path)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(petrel_push::run(cfg, stop.clone()));
        let ready = wait_healthy(metrics);
        tokio::pin!(ready);
        tokio::select! {
            r = &mut ready => r?,
            ended = task => anyhow::bail!("the push worker ended at start: {:?}", ended.map(|r| r.map_err(|e| format!("{e:#}")))),
        }
        Ok(stop)
    }

    /// Connects `user`'s `device`, registers `target` and disconnects (the app is
    /// closed: the device is offline).
    pub async fn register(
        &self,
        user: &str,
        device: &str,
        target: PushTarget,
        preview: Option<bool>,
    ) -> anyhow::Result<()> {
        let c = self.topo.connect(0, Quic, user, device).await?;
        c.register_push(Some(target), "en-GB", preview).await?;
        c.close().await;
        Ok(())
    }
}

/// [`TIMINGS`] with the keys of `extra` replaced by its values.
fn with_timings(extra: &str) -> String {
    let keys: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut out: String = TIMINGS
        .lines()
        .filter(|l| {
            l.split_once('=')
                .is_none_or(|(k, _)| !keys.contains(&k.trim()))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(extra);
    out
}

/// Waits until a worker's metrics listener answers.
pub async fn wait_healthy(metrics: std::net::SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if scrape(metrics).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "push worker on {metrics} never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The worker's `/metrics` text.
pub async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    anyhow::ensure!(out.starts_with("HTTP/1.1 200"), "{out}");
    Ok(out)
}

/// An APNs target of the test app.
pub fn apns(token: &str) -> PushTarget {
    PushTarget::Apns {
        token: token.into(),
        topic: "com.example.petrel".into(),
        sandbox: false,
    }
}

/// An FCM target.
pub fn fcm(token: &str) -> PushTarget {
    PushTarget::Fcm {
        token: token.into(),
    }
}

/// A Web Push subscription made by the fake.
pub fn webpush(fakes: &FakeProviders, id: &str) -> PushTarget {
    let s = fakes.subscribe(id);
    PushTarget::WebPush {
        endpoint: s.endpoint,
        p256dh: s.p256dh,
        auth: s.auth,
    }
}

/// Sends and expects STORED.
pub async fn send(c: &Connection, to: &str, id: &str, text: &str) -> anyhow::Result<()> {
    match c.send(to, id, text.as_bytes().to_vec()).await? {
        SendResult::Stored { .. } => Ok(()),
        other => anyhow::bail!("{id}: {other:?}"),
    }
}

/// A request header the fake received.
pub fn header<'a>(r: &'a Received, h: &str) -> &'a str {
    r.headers.get(h).map(String::as_str).unwrap_or("")
}

/// The Web Push subscription id of a fake endpoint.
pub fn wp_id(t: &PushTarget) -> String {
    match t {
        PushTarget::WebPush { endpoint, .. } => {
            endpoint.rsplit('/').next().unwrap_or("").to_string()
        }
        _ => String::new(),
    }
}
