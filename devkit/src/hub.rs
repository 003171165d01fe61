//! The hub: one JetStream server, or a cluster of N (domain `hub`), from the templates
//! in `deploy/nats/`, with TLS on every leaf and route link and a login for everyone.
//!
//! ```text
//! ROOT/ca/           the dev CA and each node's certificate (crate::ca)
//! ROOT/hub/nodeI/    node I's config, log, ports file and JetStream store
//! ```
//!
//! Client, leafnode and monitoring ports are chosen by each server (`-1`, read back
//! from its ports file); route ports cannot be, because every node's config must name
//! all the others before any of them runs (a JetStream cluster refuses to start
//! without its routes), so those are taken free from the OS just before the start.
//! A node restarted by a test comes back on the same ports and store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::ca::{DevCa, NodeCert};
use crate::nats::{NatsProcess, render};

const HUB_TEMPLATE: &str = include_str!("../../deploy/nats/hub.conf.tmpl");
const CLUSTER_TEMPLATE: &str = include_str!("../../deploy/nats/hub-cluster.conf.tmpl");

/// The user every edge's leaf node logs in to the hub as.
pub const EDGE_USER: &str = "petrel-edge";
/// The hub's admin user (provisioning, inspection, tests).
pub const ADMIN_USER: &str = "petrel-admin";

/// How long a hub may take to answer JetStream requests after a start.
const READY: Duration = Duration::from_secs(30);

/// The hub's passwords, made for one topology.
#[derive(Debug, Clone)]
pub struct HubAuth {
    /// Password of `petrel-edge` (leaf → hub).
    pub edge: String,
    /// Password of `petrel-admin`.
    pub admin: String,
    /// Password of the system account's user.
    pub sys: String,
}

impl HubAuth {
    /// Random passwords.
    pub fn random() -> Self {
        let pw = || hex::encode(rand::random::<[u8; 16]>());
        Self {
            edge: pw(),
            admin: pw(),
            sys: pw(),
        }
    }
}

/// How the hub is run.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Nodes in the cluster (1: a single server, no cluster block).
    pub nodes: usize,
    /// JetStream `sync_interval`: `always` (fsync before every acknowledgement) or a
    /// duration such as `2m` (JetStream's default).
    pub sync_interval: String,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            nodes: 1,
            sync_interval: "always".into(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    leaf: u16,
    http: u16,
}

struct Node {
    name: String,
    dir: PathBuf,
    cert: NodeCert,
    cluster_port: Option<u16>,
    ports: Option<Ports>,
    process: Option<NatsProcess>,
}

/// A running hub.
pub struct Hub {
    nodes: Vec<Node>,
    ca_file: PathBuf,
    auth: HubAuth,
    opts: HubOptions,
}

impl Hub {
    /// Starts `opts.nodes` nodes under `root` and waits until JetStream answers (for a
    /// cluster: a meta leader is elected).
    pub async fn start(root: &Path, opts: HubOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=7).contains(&opts.nodes),
            "a hub has 1 to 7 nodes, not {}",
            opts.nodes
        );
        let ca = DevCa::create(&root.join("ca"))?;
        let cluster_ports: Vec<Option<u16>> = if opts.nodes > 1 {
            (0..opts.nodes)
                .map(|_| crate::process::free_port().map(Some))
                .collect::<anyhow::Result<_>>()?
        } else {
            vec![None]
        };
        let mut nodes = Vec::with_capacity(opts.nodes);
        for (i, cluster_port) in cluster_ports.into_iter().enumerate() {
            let name = format!("hub-{i}");
            nodes.push(Node {
                cert: ca.issue(&name)?,
                dir: root.join("hub").join(format!("node{i}")),
                name,
                cluster_port,
                ports: None,
                process: None,
            });
        }
        let mut hub = Self {
            nodes,
            ca_file: ca.ca_file(),
            auth: HubAuth::random(),
            opts,
        };
        for i in 0..hub.nodes.len() {
            hub.spawn(i).await?;
        }
        hub.wait_ready(READY).await?;
        Ok(hub)
    }

    /// Starts node `i` (on its earlier ports, if it ran before).
    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let conf = self.config(i);
        let node = &self.nodes[i];
        let p = NatsProcess::start(&node.dir, &node.name, &conf).await?;
        let ports = Ports {
            client: p.client_port().context("hub client port")?,
            leaf: p.leafnode_port().context("hub leafnode port")?,
            http: p.monitoring_port().context("hub monitoring port")?,
        };
        let node = &mut self.nodes[i];
        node.ports = Some(ports);
        node.process = Some(p);
        Ok(())
    }

    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let port = |f: fn(&Ports) -> u16| node.ports.map_or("-1".into(), |p| f(&p).to_string());
        let (cert, key, ca) = (
            node.cert.cert.display().to_string(),
            node.cert.key.display().to_string(),
            self.ca_file.display().to_string(),
        );
        let cluster = match node.cluster_port {
            Some(cp) => {
                let routes: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.cluster_port)
                    .filter(|p| *p != cp)
                    .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                    .collect();
                render(
                    CLUSTER_TEMPLATE,
                    &[
                        ("CLUSTER_PORT", &cp.to_string()),
                        ("ROUTES", &routes.join(", ")),
                        ("CERT_FILE", &cert),
                        ("KEY_FILE", &key),
                        ("CA_FILE", &ca),
                    ],
                )
            }
            None => String::new(),
        };
        render(
            HUB_TEMPLATE,
            &[
                ("NAME", &node.name),
                ("PORT", &port(|p| p.client)),
                ("HTTP_PORT", &port(|p| p.http)),
                ("LEAF_PORT", &port(|p| p.leaf)),
                ("DIR", &node.dir.display().to_string()),
                ("SYNC_INTERVAL", &self.opts.sync_interval),
                ("MAX_FILE_STORE", "8GB"),
                ("CLUSTER", &cluster),
                ("EDGE_PASSWORD", &self.auth.edge),
                ("ADMIN_PASSWORD", &self.auth.admin),
                ("SYS_PASSWORD", &self.auth.sys),
                ("CERT_FILE", &cert),
                ("KEY_FILE", &key),
            ],
        )
    }

    /// Nodes in the hub.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the hub has no nodes (never: a hub has at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Replicas per stream on this hub: min(3, nodes).
    pub fn replicas(&self) -> usize {
        self.nodes.len().min(3)
    }

    /// The CA the hub's certificates are signed by.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The passwords.
    pub fn auth(&self) -> &HubAuth {
        &self.auth
    }

    /// The name of node `i` (its `server_name`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s process, while it runs.
    pub fn process(&self, i: usize) -> Option<&NatsProcess> {
        self.nodes[i].process.as_ref()
    }

    /// Every node's client URL (`nats://127.0.0.1:PORT`, no credentials).
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.ports.map(|p| format!("nats://127.0.0.1:{}", p.client)))
            .collect()
    }

    /// Every node's client URL with the admin credentials in it.
    pub fn admin_urls(&self) -> Vec<String> {
        self.client_urls()
            .iter()
            .map(|u| crate::nats::with_user(u, ADMIN_USER, &self.auth.admin))
            .collect()
    }

    /// Every node's monitoring base URL (`http://127.0.0.1:PORT`).
    pub fn monitoring_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.ports.map(|p| format!("http://127.0.0.1:{}", p.http)))
            .collect()
    }

    /// Every node's leafnode URL with the edge's credentials in it, as a leaf's remote
    /// lists them.
    pub fn leaf_remote_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.ports.map(|p| {
                    format!(
                        "nats-leaf://{EDGE_USER}:{}@127.0.0.1:{}",
                        self.auth.edge, p.leaf
                    )
                })
            })
            .collect()
    }

    /// An admin client, connected to every node it can reach.
    pub async fn admin_client(&self) -> anyhow::Result<async_nats::Client> {
        let addrs: Vec<async_nats::ServerAddr> = self
            .client_urls()
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()?;
        async_nats::ConnectOptions::with_user_and_password(
            ADMIN_USER.into(),
            self.auth.admin.clone(),
        )
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .context("connecting to the hub as admin")
    }

    /// Waits until JetStream answers through any node and, for a cluster, until the
    /// meta leader counts every running node as a current peer: before that, a
    /// replicated stream is refused with "no suitable peers for placement".
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        'answer: while started.elapsed() < timeout {
            for url in self.admin_urls() {
                match crate::nats::wait_jetstream(&url, "hub", Duration::from_secs(2)).await {
                    Ok(_) => break 'answer,
                    Err(e) => last = format!("{e:#}"),
                }
            }
        }
        if started.elapsed() >= timeout {
            anyhow::bail!("the hub's JetStream did not answer within {timeout:?}: {last}");
        }
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.process.is_some()).collect();
        if self.nodes.len() == 1 {
            return Ok(());
        }
        while started.elapsed() < timeout {
            match self.meta_peers_current(&running).await {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the hub's JetStream cluster did not form within {timeout:?}: {last}")
    }

    /// Whether one of `running` leads the meta group and reports every other one as a
    /// current, online peer (its `/jsz`).
    async fn meta_peers_current(&self, running: &[&Node]) -> anyhow::Result<()> {
        let mut last = anyhow::anyhow!("no node answered /jsz");
        for node in running {
            let Some(ports) = node.ports else { continue };
            let addr = format!("127.0.0.1:{}", ports.http);
            let jsz = match crate::http_get(&addr, "/jsz").await {
                Ok((200, body)) => body,
                Ok((s, body)) => {
                    last = anyhow::anyhow!("{}: /jsz {s} {body}", node.name);
                    continue;
                }
                Err(e) => {
                    last = e.context(format!("{}: /jsz", node.name));
                    continue;
                }
            };
            let v: serde_json::Value = serde_json::from_str(&jsz)
                .with_context(|| format!("{}: /jsz is not JSON", node.name))?;
            let meta = &v["meta_cluster"];
            if meta["leader"].as_str() != Some(node.name.as_str()) {
                continue;
            }
            let replicas = meta["replicas"].as_array().cloned().unwrap_or_default();
            let ready = running.iter().filter(|n| n.name != node.name).all(|n| {
                replicas.iter().any(|r| {
                    r["name"].as_str() == Some(n.name.as_str())
                        && r["current"].as_bool() == Some(true)
                        && r["offline"].as_bool() != Some(true)
                })
            });
            if ready {
                return Ok(());
            }
            last = anyhow::anyhow!("meta leader {} reports peers {replicas:?}", node.name);
        }
        Err(last)
    }

    /// Waits until node `i` reports itself healthy (`/healthz`: JetStream enabled and
    /// every stream and consumer on it current), as an operator waits before touching
    /// the next node in a rolling restart.
    pub async fn wait_healthy(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let ports = self.nodes[i].ports.context("node never started")?;
        let addr = format!("127.0.0.1:{}", ports.http);
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match crate::http_get(&addr, "/healthz").await {
                Ok((200, _)) => return Ok(()),
                Ok((s, body)) => last = format!("{s} {body}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("hub node {i} not healthy within {timeout:?}: {last}")
    }

    /// Stops node `i` (SIGTERM, then SIGKILL after 5 s); its store stays.
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.take() {
            p.stop().await;
        }
    }

    /// Kills node `i` with SIGKILL; its store stays (what it had not fsynced is lost).
    pub async fn kill_node(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.take() {
            p.kill().await;
        }
    }

    /// Starts node `i` again on its ports and store (it must be stopped).
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes[i].process.is_none(), "hub node {i} is running");
        self.spawn(i).await
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// The node that leads `stream` now, by index.
    pub async fn stream_leader(
        &self,
        client: &async_nats::Client,
        stream: &str,
    ) -> anyhow::Result<Option<usize>> {
        let js = async_nats::jetstream::with_domain(client.clone(), "hub");
        let mut s = js.get_stream(stream).await?;
        let info = s.info().await?;
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        Ok(leader.and_then(|l| self.nodes.iter().position(|n| n.name == l)))
    }

    /// Stops every node.
    pub async fn stop(self) {
        for n in self.nodes {
            if let Some(p) = n.process {
                p.stop().await;
            }
        }
    }
}
