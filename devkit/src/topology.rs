//! A whole Petrel topology on one machine: a hub of one or more nats-servers
//! ([`crate::hub`]: JetStream, domain `hub`, streams provisioned with
//! replicas = min(3, nodes)), a redis-server, and edges — each a leaf nats-server and a
//! gateway running in this process — on free ports under one directory:
//!
//! ```text
//! ROOT/ca/           the dev CA and the hub nodes' certificates
//! ROOT/hub/nodeI/    hub node I's config, log and JetStream data
//! ROOT/redis/        redis-server's socket and log
//! ROOT/dev-secret    the HS256 secret dev tokens are signed with
//! ROOT/edgeN/        edge N: gateway.toml, dev-secret, nats-password, edge-cache/, leaf/
//! ```
//!
//! Every leaf admits only its two users (`deploy/nats/leaf.conf.tmpl`), with passwords
//! made for the topology ([`Topology::leaf_auth`]), and links to every hub node over
//! TLS as the hub's `petrel-edge` user.
//!
//! `petrel dev`, the end-to-end tests and the benchmarks all start theirs with
//! [`TopologyBuilder`]. Each step waits for readiness (ports files, JetStream answering
//! through the leaf, the gateway linked to its leaf), never for a fixed time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use petrel_gateway::{BoundAddrs, Config, Gateway, provision};
use tokio_util::sync::CancellationToken;

use crate::dev;
use crate::hub::{Hub, HubOptions};
use crate::nats::{LeafAuth, NatsProcess, wait_jetstream};
use crate::redis::RedisProcess;

/// How long a started server may take to become ready.
const READY: Duration = Duration::from_secs(30);

/// Changes an edge's gateway config before it starts (it gets the edge's directory).
pub type Customize = Box<dyn Fn(&mut Config, &Path) -> anyhow::Result<()> + Send + Sync>;

/// What a topology is made of; [`TopologyBuilder::start`] brings it up.
pub struct TopologyBuilder {
    root: Option<PathBuf>,
    edges: usize,
    secret: Vec<u8>,
    web_dir: Option<PathBuf>,
    gateway_id: fn(usize) -> String,
    customize: Customize,
    progress: bool,
    hub: HubOptions,
}

impl TopologyBuilder {
    /// `edges` edges in a new temporary directory, signed with `secret`.
    pub fn new(edges: usize, secret: &[u8]) -> Self {
        Self {
            root: None,
            edges,
            secret: secret.to_vec(),
            web_dir: None,
            gateway_id: |i| format!("edge{i}"),
            customize: Box::new(|_, _| Ok(())),
            progress: false,
            hub: HubOptions::default(),
        }
    }

    /// Runs the hub as a cluster of `n` nodes (1: a single server).
    pub fn hub_nodes(mut self, n: usize) -> Self {
        self.hub.nodes = n;
        self
    }

    /// The hub's JetStream `sync_interval` (`always`, the default, or e.g. `2m`).
    pub fn sync_interval(mut self, interval: &str) -> Self {
        self.hub.sync_interval = interval.into();
        self
    }

    /// Lives in `root` (kept after stop) instead of a temporary directory.
    pub fn root(mut self, root: &Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// Serves `dir` on each gateway's HTTP listener (the demo page).
    pub fn web_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.web_dir = dir;
        self
    }

    /// Names edge `i`'s gateway.
    pub fn gateway_id(mut self, id: fn(usize) -> String) -> Self {
        self.gateway_id = id;
        self
    }

    /// Changes each edge's gateway config before it starts.
    pub fn customize(
        mut self,
        f: impl Fn(&mut Config, &Path) -> anyhow::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.customize = Box::new(f);
        self
    }

    /// Says what starts, on stderr.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Starts the hub, Redis and every edge, each ready before the next.
    pub async fn start(self) -> anyhow::Result<Topology> {
        let (root, temp) = match &self.root {
            Some(r) => {
                std::fs::create_dir_all(r).with_context(|| format!("creating {}", r.display()))?;
                (r.canonicalize()?, None)
            }
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let say = |what: &str| {
            if self.progress {
                eprintln!("petrel dev: {what}");
            }
        };
        say(&format!(
            "starting the hub: {} nats-server node(s), JetStream domain hub, sync_interval {}…",
            self.hub.nodes, self.hub.sync_interval
        ));
        let hub = Hub::start(&root, self.hub.clone()).await?;
        let hub_client = hub.admin_client().await?;
        let limits = provision::StreamLimits::dev(hub.replicas());
        for p in provision::provision(&hub_client, "hub", &limits).await? {
            say(&format!(
                "stream {} {} (replicas {})",
                p.stream, p.action, limits.replicas
            ));
        }
        say("starting redis-server…");
        let redis = RedisProcess::start(&root.join("redis")).await?;
        dev::write_secret(&root, &self.secret)?;
        let edges = self.edges;
        let mut topo = Topology {
            root,
            _temp: temp,
            hub,
            redis: Some(redis),
            hub_client,
            leaf_auth: LeafAuth::random(),
            edges: Vec::new(),
            builder: self,
        };
        for _ in 0..edges {
            topo.add_edge().await?;
        }
        Ok(topo)
    }
}

/// One edge: a leaf node and a gateway.
pub struct Edge {
    /// The gateway's id.
    pub id: String,
    /// The leaf nats-server (`None` while a test has it stopped).
    pub leaf: Option<NatsProcess>,
    leaf_port: u16,
    leaf_dir: PathBuf,
    /// The leaf's client URL, with the gateway's credentials in it.
    pub leaf_url: String,
    /// The leaf's client URL, with the business services' credentials in it.
    pub services_url: String,
    /// The leaf's client URL, without credentials.
    pub leaf_plain_url: String,
    /// Gateway addresses.
    pub addrs: BoundAddrs,
    /// The certificate the gateway serves (its hashes change on rotation/reload).
    pub certs: std::sync::Arc<petrel_gateway::tls::CertStore>,
    shutdown: CancellationToken,
    /// Cancelled when the gateway's task has ended.
    ended: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A running topology.
pub struct Topology {
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The hub's nodes.
    pub hub: Hub,
    /// redis-server (groups, presence), on a unix socket.
    pub redis: Option<RedisProcess>,
    /// A client connected to the hub (for inspecting streams).
    pub hub_client: async_nats::Client,
    /// The edges.
    pub edges: Vec<Edge>,
    leaf_auth: LeafAuth,
    builder: TopologyBuilder,
}

impl Topology {
    /// The directory everything lives in.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The users every leaf admits.
    pub fn leaf_auth(&self) -> &LeafAuth {
        &self.leaf_auth
    }

    /// The dev secret tokens are signed with.
    pub fn secret(&self) -> &[u8] {
        &self.builder.secret
    }

    /// Directory of edge `i` (its gateway config, cache, leaf).
    pub fn edge_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("edge{i}"))
    }

    /// Adds an edge (a leaf and an in-process gateway); returns its index.
    pub async fn add_edge(&mut self) -> anyhow::Result<usize> {
        let i = self.edges.len();
        let id = (self.builder.gateway_id)(i);
        let edir = self.edge_dir(i);
        std::fs::create_dir_all(&edir)?;
        if self.builder.progress {
            eprintln!("petrel dev: starting leaf nats-server and gateway {id}…");
        }
        let leaf = self.start_leaf(i, None).await?;
        dev::write_secret(&edir, &self.builder.secret)?;
        let web_dir = self.builder.web_dir.as_deref();
        let path =
            dev::write_gateway_config(&edir, &id, &leaf.client_url, &self.leaf_auth, web_dir)?;
        let mut cfg = Config::load(&path)?;
        cfg.redis.url = self.redis.as_ref().map(|r| r.url.clone());
        (self.builder.customize)(&mut cfg, &edir)?;
        let gw = Gateway::load(cfg).await?;
        anyhow::ensure!(
            gw.wait_connected(READY).await,
            "gateway {id} did not connect to its leaf at {}",
            leaf.client_url
        );
        let (shutdown, ended) = (CancellationToken::new(), CancellationToken::new());
        let (addrs, certs) = (gw.addrs(), gw.certs());
        let task = tokio::spawn({
            let (shutdown, ended) = (shutdown.clone(), ended.clone());
            async move {
                let r = gw.run(shutdown).await;
                ended.cancel();
                r
            }
        });
        self.edges.push(Edge {
            id,
            leaf_port: leaf.client_port().context("leaf port")?,
            leaf_dir: leaf.dir.clone(),
            leaf_url: self.leaf_auth.gateway_url(&leaf.client_url),
            services_url: self.leaf_auth.services_url(&leaf.client_url),
            leaf_plain_url: leaf.client_url.clone(),
            leaf: Some(leaf),
            addrs,
            certs,
            shutdown,
            ended,
            task,
        });
        Ok(i)
    }

    /// Starts edge `i`'s leaf (on `port`, or a free one) and waits until JetStream
    /// answers through it. Leaf names differ: the hub tells leaf nodes apart by them.
    async fn start_leaf(&self, i: usize, port: Option<u16>) -> anyhow::Result<NatsProcess> {
        let dir = self.edge_dir(i).join("leaf");
        let name = format!("leaf{i}");
        let leaf = NatsProcess::start_leaf(
            &dir,
            &name,
            &self.hub.leaf_remote_urls(),
            self.hub.ca_file(),
            port,
            &self.leaf_auth,
        )
        .await?;
        wait_jetstream(&self.leaf_auth.gateway_url(&leaf.client_url), "hub", READY)
            .await
            .context("leaf node did not connect to the hub")?;
        Ok(leaf)
    }

    /// Starts a leaf for a gateway a test runs itself (e.g. as a process).
    pub async fn start_extra_leaf(&self, dir: &Path, name: &str) -> anyhow::Result<NatsProcess> {
        let leaf = NatsProcess::start_leaf(
            dir,
            name,
            &self.hub.leaf_remote_urls(),
            self.hub.ca_file(),
            None,
            &self.leaf_auth,
        )
        .await?;
        wait_jetstream(&self.leaf_auth.gateway_url(&leaf.client_url), "hub", READY).await?;
        Ok(leaf)
    }

    /// The group directory on this topology's Redis, as the group service would use it.
    pub fn groups(&self) -> anyhow::Result<petrel_gateway::directory::Directory> {
        petrel_gateway::directory::Directory::new(self.redis.as_ref().map(|r| r.url.as_str()))
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
        petrel_gateway::directory::announce(&self.hub_client, &g).await
    }

    /// Makes `a` and `b` contacts of each other (or, with `false`, no longer), as the
    /// application's contact service does.
    pub async fn set_contacts(&self, a: &str, b: &str, contacts: bool) -> anyhow::Result<()> {
        let (a, b) = (
            petrel_core::UserId::parse(a)?,
            petrel_core::UserId::parse(b)?,
        );
        let dir = self.groups()?;
        if contacts {
            dir.add_contacts(&a, &b).await?;
        } else {
            dir.remove_contacts(&a, &b).await?;
        }
        Ok(())
    }

    /// Kills redis-server (SIGKILL): its data is gone (no persistence), like a crash.
    pub async fn kill_redis(&mut self) {
        if let Some(r) = self.redis.take() {
            r.kill().await;
        }
    }

    /// Starts redis-server again on the same socket (empty).
    pub async fn restart_redis(&mut self) -> anyhow::Result<()> {
        self.redis = Some(RedisProcess::start(&self.root.join("redis")).await?);
        Ok(())
    }

    /// Stops every hub node (SIGTERM); their JetStream data stays on disk.
    pub async fn stop_hub(&mut self) {
        for i in 0..self.hub.len() {
            self.hub.stop_node(i).await;
        }
    }

    /// Starts every stopped hub node again on the same ports and data, and waits until
    /// JetStream answers.
    pub async fn restart_hub(&mut self) -> anyhow::Result<()> {
        for i in 0..self.hub.len() {
            if !self.hub.is_running(i) {
                self.hub.restart_node(i).await?;
            }
        }
        self.hub.wait_ready(READY).await
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
            &self.hub.leaf_remote_urls(),
            self.hub.ca_file(),
            Some(e.leaf_port),
            &self.leaf_auth,
        )
        .await?;
        wait_jetstream(&self.leaf_auth.gateway_url(&leaf.client_url), "hub", READY).await?;
        self.edges[i].leaf = Some(leaf);
        Ok(())
    }

    /// Waits for `shutdown`, or until a gateway stops by itself (an error: see its
    /// log; [`Topology::stop`] reports it).
    pub async fn run_until(&self, shutdown: CancellationToken) {
        let ended = futures::future::select_all(
            self.edges
                .iter()
                .map(|e| Box::pin(e.ended.cancelled()))
                .chain(std::iter::once(Box::pin(shutdown.cancelled()))),
        );
        ended.await;
    }

    /// Stops everything (see [`Topology::shut_down`]); a gateway's failure is logged.
    pub async fn stop(self) {
        if let Err(e) = self.shut_down().await {
            tracing::warn!(error = %format!("{e:#}"), "a gateway failed");
        }
    }

    /// Stops the gateways (draining their connections), then the leaves, the hub and
    /// Redis; a temporary directory is removed. Returns the first gateway's failure.
    pub async fn shut_down(self) -> anyhow::Result<()> {
        let mut failed = Ok(());
        for e in self.edges {
            e.shutdown.cancel();
            let r = match e.task.await {
                Ok(r) => r.with_context(|| format!("gateway {}", e.id)),
                Err(err) => Err(anyhow::anyhow!("gateway {} task: {err}", e.id)),
            };
            if failed.is_ok() {
                failed = r;
            }
            if let Some(l) = e.leaf {
                l.stop().await;
            }
        }
        self.hub.stop().await;
        if let Some(r) = self.redis {
            r.kill().await;
        }
        failed
    }
}
