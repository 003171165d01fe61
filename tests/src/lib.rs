//! End-to-end test harness.
//!
//! [`Topology::start`] brings up a real hub nats-server (JetStream, domain `hub`), one
//! leaf nats-server per edge and one gateway per edge (in this process, on free ports,
//! with its own edge cache), all under a temporary directory. Readiness is polled,
//! never slept for. Tests then connect real clients over QUIC and WebSocket.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use petrel_client::{Client, ClientError, ConnectOptions, Endpoint, TransportKind, Trust};
use petrel_gateway::nats_process::{NatsProcess, wait_jetstream};
use petrel_gateway::{BoundAddrs, Config, Gateway, dev, provision};
use tokio_util::sync::CancellationToken;

/// The dev secret every test topology uses.
pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// One edge: a leaf node and a gateway.
pub struct Edge {
    /// The leaf nats-server.
    pub leaf: NatsProcess,
    /// Gateway addresses.
    pub addrs: BoundAddrs,
    /// The certificate the gateway serves (its hashes change on rotation/reload).
    pub certs: std::sync::Arc<petrel_gateway::tls::CertStore>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A hub with edges.
pub struct Topology {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// The hub.
    pub hub: NatsProcess,
    /// A client connected to the hub (for inspecting streams).
    pub hub_client: async_nats::Client,
    /// The edges.
    pub edges: Vec<Edge>,
}

/// Gateway config for a test edge: the `petrel dev` config with the test secret and a
/// 2 s handshake timeout.
pub fn gateway_config(dir: &Path, id: &str, leaf_url: &str) -> anyhow::Result<Config> {
    std::fs::write(dev::secret_path(dir), SECRET)?;
    let mut cfg = Config::load(&dev::write_gateway_config(dir, id, leaf_url, None)?)?;
    cfg.limits.handshake_timeout_secs = 2;
    // The ordering test pipelines 1,000 sends; rate limits have their own test.
    cfg.limits.send_burst = 2_000;
    Ok(cfg)
}

impl Topology {
    /// Starts a hub and `edges` edges.
    pub async fn start(edges: usize) -> anyhow::Result<Self> {
        Self::start_with(edges, |_, _| Ok(())).await
    }

    /// Starts a hub and `edges` edges, letting `customize` change each edge's config
    /// (it gets the edge's directory too).
    pub async fn start_with(
        edges: usize,
        customize: impl Fn(&mut Config, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        // Gateway logs on the test's output when RUST_LOG is set (shown for failures).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir()?;
        let hub = NatsProcess::start_hub(&dir.path().join("hub"), "hub", None).await?;
        let hub_client = wait_jetstream(&hub.client_url, "hub", Duration::from_secs(20)).await?;
        provision::provision(&hub_client, "hub", 1).await?;
        let hub_leaf = hub.leafnode_url.clone().context("hub leafnode url")?;
        let mut out = Vec::new();
        for i in 0..edges {
            let edir = dir.path().join(format!("edge{i}"));
            std::fs::create_dir_all(&edir)?;
            let leaf =
                NatsProcess::start_leaf(&edir.join("leaf"), &format!("leaf{i}"), &hub_leaf, None)
                    .await?;
            wait_jetstream(&leaf.client_url, "hub", Duration::from_secs(20)).await?;
            let mut cfg = gateway_config(&edir, &format!("edge{i}"), &leaf.client_url)?;
            customize(&mut cfg, &edir)?;
            let gw = Gateway::load(cfg).await?;
            anyhow::ensure!(
                gw.wait_connected(Duration::from_secs(20)).await,
                "gateway not connected to its leaf"
            );
            let addrs = gw.addrs();
            let certs = gw.certs();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(gw.run(shutdown.clone()));
            out.push(Edge {
                leaf,
                addrs,
                certs,
                shutdown,
                task,
            });
        }
        Ok(Self {
            dir,
            hub,
            hub_client,
            edges: out,
        })
    }

    /// A token for `user` signed with the test secret, valid an hour.
    pub fn token(&self, user: &str) -> String {
        dev::mint_token(SECRET.as_bytes(), user, None, Duration::from_secs(3600))
            .unwrap_or_default()
    }

    /// The endpoint of edge `edge` for `transport`.
    pub fn endpoint(&self, edge: usize, transport: TransportKind) -> Endpoint {
        let e = &self.edges[edge];
        Endpoint {
            transport,
            address: match transport {
                TransportKind::Quic => e.addrs.quic.to_string(),
                TransportKind::WebSocket => format!("wss://{}/ws", e.addrs.websocket),
            },
            trust: Trust::from_hex_sha256(&e.certs.hashes().current)
                .unwrap_or(Trust::CertSha256([0; 32])),
            server_name: Some("localhost".into()),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Connects `user`/`device` to `edge` over `transport` with a valid token.
    pub async fn connect(
        &self,
        edge: usize,
        transport: TransportKind,
        user: &str,
        device: &str,
    ) -> Result<Client, ClientError> {
        self.connect_with_token(edge, transport, &self.token(user), device)
            .await
    }

    /// Connects with an explicit token.
    pub async fn connect_with_token(
        &self,
        edge: usize,
        transport: TransportKind,
        token: &str,
        device: &str,
    ) -> Result<Client, ClientError> {
        Client::connect(ConnectOptions::new(
            self.endpoint(edge, transport),
            token,
            device,
        ))
        .await
    }

    /// A raw QUIC connection to `edge` for `user`/`device` that has said Hello and read
    /// its Welcome (for tests that then misbehave, e.g. never read again).
    pub async fn raw_welcomed(
        &self,
        edge: usize,
        user: &str,
        device: &str,
    ) -> anyhow::Result<(petrel_client::RawReader, petrel_client::RawWriter)> {
        use petrel_client::Read;
        use petrel_proto::{FrameDecoder, encode_frame, pb};
        use prost::Message as _;
        let (mut reader, mut writer) =
            petrel_client::connect_raw(&self.endpoint(edge, TransportKind::Quic)).await?;
        let hello = pb::Hello {
            token: self.token(user),
            device: device.into(),
            cursors: vec![],
            protocol_version: 1,
        };
        writer
            .write(encode_frame(&pb::ClientFrame {
                kind: Some(pb::client_frame::Kind::Hello(hello)),
            }))
            .await?;
        let mut decoder = FrameDecoder::new(1 << 22);
        loop {
            match reader.read().await? {
                Read::Data(d) => {
                    decoder.push(&d);
                    while let Some(f) = decoder.next_frame()? {
                        if let Some(pb::server_frame::Kind::Welcome(_)) =
                            pb::ServerFrame::decode(f)?.kind
                        {
                            return Ok((reader, writer));
                        }
                    }
                }
                Read::Closed(info) => anyhow::bail!("closed before Welcome: {info:?}"),
            }
        }
    }

    /// GET `path` on edge `edge`'s HTTP endpoint; returns the body.
    pub async fn http_get(&self, edge: usize, path: &str) -> anyhow::Result<String> {
        let addr = self.edges[edge].addrs.http.to_string();
        Ok(petrel_gateway::web::http_get(&addr, path).await?.1)
    }

    /// A `name=value` counter from edge `edge`'s `/readyz`.
    pub async fn counter(&self, edge: usize, name: &str) -> anyhow::Result<u64> {
        let body = self.http_get(edge, "/readyz").await?;
        body.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in {body:?}"))
    }

    /// Live subscriptions edge `edge` holds (from `/readyz`), polled until it equals
    /// `want` or 5 s pass.
    pub async fn wait_live_subscriptions(&self, edge: usize, want: u64) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let body = self.http_get(edge, "/readyz").await?;
            let n = body
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("live_subscriptions="))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow::anyhow!("no live_subscriptions in {body:?}"))?;
            if n == want || tokio::time::Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Messages stored in USER_MESSAGES.
    pub async fn stored_messages(&self) -> anyhow::Result<u64> {
        let js = async_nats::jetstream::with_domain(self.hub_client.clone(), "hub");
        let mut stream = js.get_stream("USER_MESSAGES").await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Stops gateways, leaves and hub; returns the directory so a test can inspect
    /// what they left on disk.
    pub async fn stop(self) -> tempfile::TempDir {
        for e in self.edges {
            e.shutdown.cancel();
            let _ = e.task.await;
            e.leaf.stop().await;
        }
        self.hub.stop().await;
        self.dir
    }
}

/// Waits for the next message event, failing after `secs`.
pub async fn next_message(
    client: &mut Client,
    secs: u64,
) -> anyhow::Result<petrel_client::Message> {
    match tokio::time::timeout(Duration::from_secs(secs), client.next_event()).await {
        Ok(Some(petrel_client::Event::Message(m))) => Ok(m),
        Ok(Some(other)) => anyhow::bail!("expected a message, got {other:?}"),
        Ok(None) => anyhow::bail!("connection closed"),
        Err(_) => anyhow::bail!("no message within {secs} s"),
    }
}

/// Like [`next_message`] but skips messages on other subjects (e.g. the sender's own copies).
pub async fn next_message_on(
    client: &mut Client,
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
