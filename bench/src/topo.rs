//! The system under test: a `petrel dev` topology (hub, one leaf and gateway per edge,
//! redis) that the bench starts as a child process of the same `petrel` binary, or
//! one already running (`--dev DIR`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use petrel_client::{Endpoint, TransportKind, Trust};
use petrel_devkit::dev::{self, EdgeEndpoints, Endpoints};

/// A topology to measure.
pub struct Target {
    /// Its endpoints.
    pub endpoints: Endpoints,
    /// The `petrel dev` directory.
    pub dir: PathBuf,
    secret: Vec<u8>,
    child: Option<tokio::process::Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Target {
    /// Starts `petrel dev --edges N` in a fresh directory and waits until it is ready.
    pub async fn spawn(
        edges: usize,
        hub_nodes: usize,
        sync_interval: &str,
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("petrel-bench-")
            .tempdir()
            .context("creating a directory for the bench topology")?;
        let dir = tmp.path().to_path_buf();
        let exe = std::env::current_exe().context("locating the petrel binary")?;
        let log = std::fs::File::create(dir.join("dev.log"))?;
        let mut cmd = tokio::process::Command::new(exe);
        // Killed with us, however we end (a bench interrupted with Ctrl-C or killed
        // must not leave a topology running).
        petrel_devkit::process::guard(&mut cmd);
        let child = cmd
            .arg("dev")
            .arg("--dir")
            .arg(&dir)
            .arg("--edges")
            .arg(edges.to_string())
            .arg("--hub-nodes")
            .arg(hub_nodes.to_string())
            .arg("--sync-interval")
            .arg(sync_interval)
            .env("PETREL_LOG", "warn")
            // The per-connection send rate limit (100/s) protects a gateway from one
            // abusive client; load generators send from few connections on purpose.
            .env("PETREL_LIMITS_SEND_RATE_PER_SEC", "1000000")
            .env("PETREL_LIMITS_SEND_BURST", "1000000")
            // Likewise the per-source connection budgets: the bench's thousands of
            // clients come from a handful of loopback addresses.
            .env("PETREL_LIMITS_PER_SOURCE_UNAUTHENTICATED", "1000000")
            .env("PETREL_LIMITS_PER_SOURCE_CONNECTS_PER_SEC", "1000000")
            .env("PETREL_LIMITS_PER_SOURCE_CONNECT_BURST", "1000000")
            .env("PETREL_LIMITS_USER_SEND_RATE_PER_SEC", "1000000")
            .env("PETREL_LIMITS_USER_SEND_BURST", "1000000")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting petrel dev")?;
        let mut t = Self {
            endpoints: wait_endpoints(&dir, Duration::from_secs(60)).await?,
            secret: Vec::new(),
            dir,
            child: Some(child),
            _tmp: Some(tmp),
        };
        t.secret = dev::read_secret(&t.dir)?;
        if t.edges().len() < edges {
            anyhow::bail!("petrel dev started {} edges, not {edges}", t.edges().len());
        }
        Ok(t)
    }

    /// A `petrel dev` already running in `dir`.
    pub fn existing(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            endpoints: Endpoints::read(dir)?,
            secret: dev::read_secret(dir)?,
            dir: dir.to_path_buf(),
            child: None,
            _tmp: None,
        })
    }

    /// Every edge.
    pub fn edges(&self) -> Vec<EdgeEndpoints> {
        if self.endpoints.edges.is_empty() {
            let e = &self.endpoints;
            vec![EdgeEndpoints {
                gateway_id: e.gateway_id.clone(),
                quic: e.quic.clone(),
                websocket: e.websocket.clone(),
                websocket_plain: e.websocket_plain.clone(),
                http: e.http.clone(),
                nats_leaf: e.nats_leaf.clone(),
                cert_sha256: e.cert_sha256.clone(),
            }]
        } else {
            self.endpoints.edges.clone()
        }
    }

    /// Edge `i`, or the last one when there are fewer.
    pub fn edge(&self, i: usize) -> EdgeEndpoints {
        let mut edges = self.edges();
        // Never empty: a topology has at least its first edge.
        let last = edges.len().saturating_sub(1);
        edges.swap_remove(i.min(last))
    }

    /// A token for `user`, valid a day.
    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        let ttl = Duration::from_secs(24 * 3600);
        Ok(petrel_core::auth::mint_dev_token(
            &self.secret,
            user,
            None,
            ttl,
        )?)
    }

    /// How to reach edge `edge` over `transport`, from `local_ip`.
    pub fn endpoint(
        &self,
        edge: usize,
        transport: TransportKind,
        local_ip: Option<IpAddr>,
    ) -> anyhow::Result<Endpoint> {
        let e = self.edge(edge);
        Ok(Endpoint {
            transport,
            address: match transport {
                TransportKind::Quic => e.quic.clone(),
                TransportKind::WebSocket => e.websocket.clone(),
            },
            trust: Trust::from_hex_sha256(&e.cert_sha256)?,
            server_name: Some("localhost".into()),
            connect_timeout: Duration::from_secs(20),
            local_ip,
        })
    }

    /// Process id of the gateways (the `petrel dev` process).
    pub fn gateway_pid(&self) -> u32 {
        self.endpoints.pid
    }

    /// `/metrics` of edge `edge`.
    pub async fn metrics(&self, edge: usize) -> anyhow::Result<String> {
        let e = self.edge(edge);
        let addr = e.http.trim_start_matches("http://").to_string();
        Ok(petrel_devkit::http_get(&addr, "/metrics").await?.1)
    }

    /// A Prometheus sample of edge `edge` (`name{labels}` exactly as encoded).
    pub async fn metric(&self, edge: usize, series: &str) -> anyhow::Result<f64> {
        let text = self.metrics(edge).await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                if k == series { v.parse().ok() } else { None }
            })
            .unwrap_or(0.0))
    }

    /// Stops a topology this bench started (SIGTERM, then waits).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: signalling our own child process.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

async fn wait_endpoints(dir: &Path, limit: Duration) -> anyhow::Result<Endpoints> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(e) = Endpoints::read(dir) {
            return Ok(e);
        }
        if tokio::time::Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
            anyhow::bail!("petrel dev was not ready within {limit:?}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resident memory of process `pid`, bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Kernel socket memory (bytes) by protocol from `/proc/net/sockstat` (`TCP`, `UDP`).
pub fn socket_memory() -> std::collections::BTreeMap<String, u64> {
    let page = 4096u64;
    let mut out = std::collections::BTreeMap::new();
    if let Ok(s) = std::fs::read_to_string("/proc/net/sockstat") {
        for l in s.lines() {
            let mut parts = l.split_whitespace();
            let Some(proto) = parts.next() else { continue };
            let fields: Vec<&str> = parts.collect();
            if let Some(i) = fields.iter().position(|f| *f == "mem")
                && let Some(v) = fields.get(i + 1).and_then(|v| v.parse::<u64>().ok())
            {
                out.insert(proto.trim_end_matches(':').to_string(), v * page);
            }
        }
    }
    out
}

/// Raises this process's open-file limit to its hard limit (many connections).
pub fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
    r.rlim_cur
}

/// The `i`-th of `n` loopback source addresses (127.0.0.2 …), `None` for `n` = 0.
pub fn source_ip(i: usize, n: usize) -> Option<IpAddr> {
    if n == 0 {
        return None;
    }
    let k = (i % n) as u32 + 2;
    Some(IpAddr::V4(std::net::Ipv4Addr::from(
        (127u32 << 24) | (k & 0x00ff_ffff),
    )))
}
