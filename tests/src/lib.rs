//! End-to-end test harness: the [`Topology`] of `petrel_devkit` (a real hub, Redis,
//! and edges of leaf nats-server plus in-process gateway, on free ports) configured
//! for tests, and helpers the tests share: waiting for messages, the `petrel` binary,
//! a gateway run as its own process, a token issuer publishing a key set
//! ([`issuer`]), the chaos harness ([`chaos`]) and the push rig ([`push`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use petrel_client::{Connection, Endpoint, TransportKind, Trust};
use petrel_gateway::Config;

pub mod chaos;
pub mod issuer;
pub mod push;

pub use petrel_devkit::{Edge, RawSession, Topology, TopologyBuilder, metric_sample};

/// The dev secret every test topology uses.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// What every test edge changes in the `petrel dev` config: a 2 s handshake timeout,
/// a send burst that lets the ordering test pipeline 1,000 sends, and per-source
/// connection budgets that do not mind every test client coming from 127.0.0.1 (rate
/// limits and budgets have their own tests).
pub fn test_config(cfg: &mut Config) {
    cfg.limits.handshake_timeout_secs = 2;
    cfg.limits.send_burst = 2_000;
    cfg.limits.per_source_unauthenticated = 10_000;
    cfg.limits.per_source_connects_per_sec = 100_000;
    cfg.limits.per_source_connect_burst = 100_000;
    cfg.limits.user_send_rate_per_sec = 100_000;
    cfg.limits.user_send_burst = 100_000;
}

/// Starting test topologies.
pub trait TestTopology: Sized {
    /// A hub and `edges` edges with the test config.
    fn start(edges: usize) -> impl Future<Output = anyhow::Result<Self>>;
    /// Likewise, `customize` changing each edge's config after the test config (it
    /// gets the edge's directory too).
    fn start_with(
        edges: usize,
        customize: impl Fn(&mut Config, &Path) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> impl Future<Output = anyhow::Result<Self>>;
}

impl TestTopology for Topology {
    async fn start(edges: usize) -> anyhow::Result<Self> {
        Self::start_with(edges, |_, _| Ok(())).await
    }

    async fn start_with(
        edges: usize,
        customize: impl Fn(&mut Config, &Path) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        // Gateway logs on the test's output when RUST_LOG is set (shown for failures).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        TopologyBuilder::new(edges, SECRET.as_bytes())
            .customize(move |cfg, dir| {
                test_config(cfg);
                customize(cfg, dir)
            })
            .start()
            .await
    }
}

/// Waits for the next message event, failing after `secs`.
pub async fn next_message(
    client: &mut Connection,
    secs: u64,
) -> anyhow::Result<petrel_client::Message> {
    match tokio::time::timeout(Duration::from_secs(secs), client.next_event()).await {
        Ok(Some(petrel_client::Event::Message(m))) => Ok(m),
        Ok(Some(other)) => anyhow::bail!("expected a message, got {other:?}"),
        Ok(None) => anyhow::bail!("connection closed"),
        Err(_) => anyhow::bail!("no message within {secs} s"),
    }
}

/// The next typing event (from, group, typing) within `ms`, skipping other events.
pub async fn next_typing(c: &mut Connection, ms: u64) -> Option<(String, Option<String>, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(petrel_client::Event::Typing {
                from,
                group,
                typing,
            })) => return Some((from, group, typing)),
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// The next presence state (user, state) within `ms`, skipping other events.
pub async fn next_presence(c: &mut Connection, ms: u64) -> Option<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(petrel_client::Event::Presence { user, state })) => {
                return Some((user, state));
            }
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// Like [`next_message`] but skips messages on other subjects (e.g. the sender's own copies).
pub async fn next_message_on(
    client: &mut Connection,
    subject: &str,
    secs: u64,
) -> anyhow::Result<petrel_client::Message> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs()
            .max(1);
        let m = next_message(client, left).await?;
        if m.subject == subject {
            return Ok(m);
        }
    }
}

/// Waits for `Connected` on a reconnecting client, at most `within`, failing on
/// anything that says it will not come (a final `Disconnected`, the client stopping).
pub async fn until_connected(
    c: &mut petrel_client::Client,
    within: Duration,
) -> anyhow::Result<()> {
    use petrel_client::Event;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(Event::Connected { .. })) => return Ok(()),
            Ok(Some(Event::Disconnected {
                retry_in: None,
                reason,
            })) => anyhow::bail!("stopped: {reason}"),
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("client stopped"),
            Err(_) => anyhow::bail!("not connected within {within:?}"),
        }
    }
}

/// The `petrel` binary built alongside the tests (`target/<profile>/petrel`).
pub fn petrel_bin() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    // The test runs as target/<profile>/deps/<name>-<hash>.
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("petrel"))
        .context("locating the target directory")?;
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bin petrel` (the test command does)",
        bin.display()
    );
    Ok(bin)
}

/// A gateway run as its own `petrel gateway` process, on fixed ports so that it can
/// be killed and started again where clients expect it, with a certificate kept in
/// files so its hash survives the restart.
pub struct GatewayProcess {
    child: Option<tokio::process::Child>,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    /// QUIC address.
    pub quic: std::net::SocketAddr,
    /// WebSocket/TLS address.
    pub websocket: std::net::SocketAddr,
    /// HTTP address.
    pub http: std::net::SocketAddr,
    cert_sha256: String,
}

impl GatewayProcess {
    /// Writes a config in `dir` for the leaf at `leaf_url` (admitting the users of
    /// `leaf_auth`) and starts the gateway; `env` adds `PETREL_*` overrides.
    pub async fn start(
        dir: &Path,
        leaf_url: &str,
        leaf_auth: &petrel_devkit::nats::LeafAuth,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        petrel_devkit::dev::write_secret(dir, SECRET.as_bytes())?;
        let config =
            petrel_devkit::dev::write_gateway_config(dir, "edgep", leaf_url, leaf_auth, None)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let cert_sha256 = petrel_gateway::tls::write_dev_cert(&cert, &key, 7)?;
        let quic = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.local_addr()?
        };
        let websocket =
            std::net::SocketAddr::from(([127, 0, 0, 1], petrel_devkit::process::free_port()?));
        let http =
            std::net::SocketAddr::from(([127, 0, 0, 1], petrel_devkit::process::free_port()?));
        let mut all: Vec<(String, String)> = vec![
            ("PETREL_LISTEN_QUIC".into(), quic.to_string()),
            ("PETREL_LISTEN_WEBSOCKET".into(), websocket.to_string()),
            ("PETREL_LISTEN_HTTP".into(), http.to_string()),
            ("PETREL_TLS_SELF_SIGNED".into(), "false".into()),
            ("PETREL_TLS_CERT".into(), cert.display().to_string()),
            ("PETREL_TLS_KEY".into(), key.display().to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut g = Self {
            child: None,
            dir: dir.to_path_buf(),
            config,
            env: all,
            quic,
            websocket,
            http,
            cert_sha256,
        };
        g.spawn().await?;
        Ok(g)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.spawn_until("/readyz").await
    }

    /// Starts it and waits for `path` to answer 200: `/readyz` (linked to the hub) or
    /// `/healthz` (serving at all).
    async fn spawn_until(&mut self, path: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))?;
        let mut cmd = tokio::process::Command::new(petrel_bin()?);
        cmd.arg("gateway")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PETREL_LOG", "info,async_nats=warn,quinn=warn")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        petrel_devkit::process::guard(&mut cmd);
        let mut child = cmd.spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
                anyhow::bail!("petrel gateway exited with {status}:\n{log}");
            }
            if let Ok((200, _)) = petrel_devkit::http_get(&self.http.to_string(), path).await {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "petrel gateway: {path} not 200 within 30 s (see {}/gateway.log)",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the gateway again with the same config, ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// Starts the gateway again while the hub is away: ready to serve (`/healthz`), not
    /// linked to the hub.
    pub async fn restart_unready(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn_until("/healthz").await
    }

    /// The endpoint for `transport`.
    pub fn endpoint(&self, transport: TransportKind) -> Endpoint {
        Endpoint {
            transport,
            address: match transport {
                TransportKind::Quic => self.quic.to_string(),
                TransportKind::WebSocket => format!("wss://{}/ws", self.websocket),
            },
            trust: Trust::from_hex_sha256(&self.cert_sha256).unwrap_or(Trust::CertSha256([0; 32])),
            server_name: Some("localhost".into()),
            connect_timeout: Duration::from_secs(10),
            local_ip: None,
        }
    }

    /// The SHA-256 of its certificate, hex (what `petrel client --cert-sha256` pins).
    pub fn cert_sha256(&self) -> &str {
        &self.cert_sha256
    }

    /// A `name=value` counter from `/readyz`.
    pub async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let (_, body) = petrel_devkit::http_get(&self.http.to_string(), "/readyz").await?;
        petrel_devkit::readyz_counter(&body, name)
    }
}

/// Every series name an OpenMetrics `text` can have: its families (`# TYPE name kind`)
/// and what they add (`_total` for counters; `_bucket`, `_sum`, `_count` for
/// histograms).
pub fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut known = std::collections::BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            known.insert(name.to_string());
            match kind {
                "counter" => {
                    known.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        known.insert(format!("{name}{s}"));
                    }
                }
                _ => {}
            }
        }
    }
    known
}

/// The metric names starting with `prefix` that `text` (alert rules, a dashboard) uses.
pub fn names_used(text: &str, prefix: &str) -> Vec<String> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The message service for `topo` (a PostgreSQL of its own and a worker in this
/// process), in a new temporary directory (dropped after the service).
pub async fn message_service(
    topo: &Topology,
) -> anyhow::Result<(petrel_devkit::messages::MessageService, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let svc = petrel_devkit::messages::MessageService::start(
        &dir.path().join("messages"),
        &topo.hub.admin_urls().join(","),
        topo.redis.as_ref().map(|r| r.url.as_str()),
        "",
    )
    .await?;
    Ok((svc, dir))
}
