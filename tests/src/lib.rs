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
    /// The leaf nats-server (`None` while a test has it stopped).
    pub leaf: Option<NatsProcess>,
    leaf_port: u16,
    leaf_dir: std::path::PathBuf,
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
    /// The hub (`None` while a test has it stopped).
    pub hub: Option<NatsProcess>,
    hub_ports: (u16, u16),
    hub_leaf_url: String,
    /// redis-server (group membership), on a unix socket.
    pub redis: Option<petrel_gateway::redis_process::RedisProcess>,
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
        let hub_leaf_url = hub.leafnode_url.clone().context("hub leafnode url")?;
        let hub_ports = (
            hub.client_port().context("hub port")?,
            hub.leafnode_port().context("hub leafnode port")?,
        );
        let redis =
            petrel_gateway::redis_process::RedisProcess::start(&dir.path().join("redis")).await?;
        let mut topo = Self {
            redis: Some(redis),
            dir,
            hub: Some(hub),
            hub_ports,
            hub_leaf_url,
            hub_client,
            edges: Vec::new(),
        };
        for _ in 0..edges {
            topo.add_edge(&customize).await?;
        }
        Ok(topo)
    }

    /// Adds an edge (a leaf and an in-process gateway), `customize` changing its
    /// config; returns its index.
    pub async fn add_edge(
        &mut self,
        customize: impl Fn(&mut Config, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let i = self.edges.len();
        let edir = self.edge_dir(i);
        std::fs::create_dir_all(&edir)?;
        let leaf = self.start_edge_leaf(i, None).await?;
        let mut cfg = gateway_config(&edir, &format!("edge{i}"), &leaf.client_url)?;
        cfg.redis.url = self.redis.as_ref().map(|r| r.url.clone());
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
        self.edges.push(Edge {
            leaf_port: leaf.client_port().context("leaf port")?,
            leaf_dir: leaf.dir.clone(),
            leaf: Some(leaf),
            addrs,
            certs,
            shutdown,
            task,
        });
        Ok(i)
    }

    /// Directory of edge `i` (its gateway config, cache, leaf).
    pub fn edge_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("edge{i}"))
    }

    /// Starts edge `i`'s leaf (on `port`, or a free one) and waits until JetStream
    /// answers through it.
    async fn start_edge_leaf(&self, i: usize, port: Option<u16>) -> anyhow::Result<NatsProcess> {
        let leaf = NatsProcess::start_leaf(
            &self.edge_dir(i).join("leaf"),
            &format!("leaf{i}"),
            &self.hub_leaf_url,
            port,
        )
        .await?;
        wait_jetstream(&leaf.client_url, "hub", Duration::from_secs(30)).await?;
        Ok(leaf)
    }

    /// Starts a leaf for a gateway this test runs itself (e.g. as a process).
    pub async fn start_extra_leaf(&self, dir: &Path, name: &str) -> anyhow::Result<NatsProcess> {
        let leaf = NatsProcess::start_leaf(dir, name, &self.hub_leaf_url, None).await?;
        wait_jetstream(&leaf.client_url, "hub", Duration::from_secs(30)).await?;
        Ok(leaf)
    }

    /// The group directory on this topology's Redis, as the group service would use it.
    pub fn groups(&self) -> anyhow::Result<petrel_gateway::groups::Directory> {
        petrel_gateway::groups::Directory::new(self.redis.as_ref().map(|r| r.url.as_str()))
    }

    /// Adds (or removes) `user` to `group` and announces the change, as the
    /// application's group service does.
    pub async fn set_member(&self, group: &str, user: &str, member: bool) -> anyhow::Result<()> {
        let g = petrel_core::GroupId::parse(group)?;
        let u = petrel_core::UserId::parse(user)?;
        let dir = self.groups()?;
        if member {
            dir.add(&g, &u).await?;
        } else {
            dir.remove(&g, &u).await?;
        }
        petrel_gateway::groups::announce(&self.hub_client, &g).await
    }

    /// Kills redis-server (SIGKILL): its data is gone (no persistence), like a crash.
    pub async fn kill_redis(&mut self) {
        if let Some(r) = self.redis.take() {
            r.kill().await;
        }
    }

    /// Starts redis-server again on the same socket (empty).
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        self.redis = Some(
            petrel_gateway::redis_process::RedisProcess::start(&self.dir.path().join("redis"))
                .await?,
        );
        Ok(())
    }

    /// Stops the hub (SIGTERM); its JetStream data stays on disk.
    pub async fn stop_hub(&mut self) {
        if let Some(h) = self.hub.take() {
            h.stop().await;
        }
    }

    /// Starts the hub again on the same ports and data, and waits until JetStream
    /// answers.
    pub async fn restart_hub(&mut self) -> anyhow::Result<()> {
        let hub = NatsProcess::start_hub(&self.dir.path().join("hub"), "hub", Some(self.hub_ports))
            .await?;
        wait_jetstream(&hub.client_url, "hub", Duration::from_secs(30)).await?;
        self.hub = Some(hub);
        Ok(())
    }

    /// Stops edge `i`'s leaf (SIGTERM): the gateway loses its link to the hub.
    pub async fn stop_leaf(&mut self, i: usize) {
        if let Some(l) = self.edges[i].leaf.take() {
            l.stop().await;
        }
    }

    /// Starts edge `i`'s leaf again on the same port and waits until JetStream
    /// answers through it.
    pub async fn restart_leaf(&mut self, i: usize) -> anyhow::Result<()> {
        let e = &self.edges[i];
        let leaf = NatsProcess::start_leaf(
            &e.leaf_dir,
            &format!("leaf{i}"),
            &self.hub_leaf_url,
            Some(e.leaf_port),
        )
        .await?;
        wait_jetstream(&leaf.client_url, "hub", Duration::from_secs(30)).await?;
        self.edges[i].leaf = Some(leaf);
        Ok(())
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
            local_ip: None,
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
    /// its Welcome (for tests that then misbehave, e.g. never read again). It asks for
    /// delivery streams as the SDK does, and never reads those either.
    pub async fn raw_welcomed(
        &self,
        edge: usize,
        user: &str,
        device: &str,
    ) -> anyhow::Result<(petrel_client::RawReader, petrel_client::RawWriter)> {
        let r = self
            .raw_hello(edge, user, device, petrel_client::DEFAULT_DELIVERY_STREAMS)
            .await?;
        Ok((r.reader, r.writer))
    }

    /// A raw QUIC connection to `edge` that said Hello asking for `delivery_streams`
    /// and read its Welcome.
    pub async fn raw_hello(
        &self,
        edge: usize,
        user: &str,
        device: &str,
        delivery_streams: u32,
    ) -> anyhow::Result<RawSession> {
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
            delivery_streams,
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
                        if let Some(pb::server_frame::Kind::Welcome(welcome)) =
                            pb::ServerFrame::decode(f)?.kind
                        {
                            return Ok(RawSession {
                                reader,
                                writer,
                                welcome,
                                decoder,
                            });
                        }
                    }
                }
                Read::Closed(info) => anyhow::bail!("closed before Welcome: {info:?}"),
            }
        }
    }

    /// Polls `/metrics` of edge `edge` until the sample `series` (exact text, labels
    /// included) satisfies `ok`, at most 10 s; returns its last value.
    pub async fn wait_metric(
        &self,
        edge: usize,
        series: &str,
        ok: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = metric_sample(&self.http_get(edge, "/metrics").await?, series);
            match v {
                Some(v) if ok(v) => return Ok(v),
                _ if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("{series} is {v:?} after 10 s")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
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
            if let Some(l) = e.leaf {
                l.stop().await;
            }
        }
        if let Some(h) = self.hub {
            h.stop().await;
        }
        if let Some(r) = self.redis {
            r.kill().await;
        }
        self.dir
    }
}

/// A raw QUIC connection after Welcome (see [`Topology::raw_hello`]).
pub struct RawSession {
    /// The control stream, read side (and the connection, for delivery streams).
    pub reader: petrel_client::RawReader,
    /// The control stream, write side.
    pub writer: petrel_client::RawWriter,
    /// What Welcome said.
    pub welcome: petrel_proto::pb::Welcome,
    /// The control stream's decoder, holding whatever followed Welcome.
    pub decoder: petrel_proto::FrameDecoder,
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

/// The value of the sample `series` (`name{labels}`, exactly as encoded) in a
/// Prometheus/OpenMetrics text, if present.
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        if k == series { v.parse().ok() } else { None }
    })
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

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
    /// Writes a config in `dir` for the leaf at `leaf_url` and starts the gateway;
    /// `env` adds `PETREL_*` overrides.
    pub async fn start(dir: &Path, leaf_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dev::secret_path(dir), SECRET)?;
        let config = dev::write_gateway_config(dir, "edgep", leaf_url, None)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let cert_sha256 = petrel_gateway::tls::write_dev_cert(&cert, &key, 7)?;
        let quic = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.local_addr()?
        };
        let websocket = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
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
        petrel_gateway::nats_process::die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
                anyhow::bail!("petrel gateway exited with {status}:\n{log}");
            }
            if let Ok((200, _)) =
                petrel_gateway::web::http_get(&self.http.to_string(), "/readyz").await
            {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "petrel gateway not ready within 30 s (see {}/gateway.log)",
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

    /// A `name=value` counter from `/readyz`.
    pub async fn counter(&self, name: &str) -> anyhow::Result<u64> {
        let (_, body) = petrel_gateway::web::http_get(&self.http.to_string(), "/readyz").await?;
        body.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {name} in {body:?}"))
    }
}

impl Topology {
    /// Messages stored per subject of USER_MESSAGES matching `filter`.
    pub async fn subject_counts(
        &self,
        filter: &str,
    ) -> anyhow::Result<std::collections::HashMap<String, usize>> {
        use futures::TryStreamExt;
        let js = async_nats::jetstream::with_domain(self.hub_client.clone(), "hub");
        let stream = js.get_stream("USER_MESSAGES").await?;
        Ok(stream
            .info_with_subjects(filter)
            .await?
            .try_collect()
            .await?)
    }

    /// Polls `/readyz` counter `name` of edge `edge` until `ok(value)` or `secs` pass;
    /// returns the last value.
    pub async fn wait_counter(
        &self,
        edge: usize,
        name: &str,
        secs: u64,
        ok: impl Fn(u64) -> bool,
    ) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.counter(edge, name).await?;
            if ok(v) || tokio::time::Instant::now() >= deadline {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
