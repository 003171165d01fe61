//! Real nats-server processes from the templates in `deploy/nats/`: the leaf node of an
//! edge here, the hub's nodes in [`crate::hub`].
//!
//! Ports: the configs ask for port `-1` (any free port) and a `ports_file_dir`; we read
//! the ports file the server writes once it listens. No fixed ports, no races between
//! picking a port and binding it, and two topologies run side by side.
//!
//! Each is a guarded child ([`crate::process::guard`]): its own process group, dead
//! with us.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

const LEAF_TEMPLATE: &str = include_str!("../../deploy/nats/leaf.conf.tmpl");

/// The nats-server binary: `$NATS_SERVER_BIN` or `nats-server` on PATH. (Not a
/// `PETREL_*` variable: those are reserved for gateway config overrides, and
/// `PETREL_NATS_…` would be read as a `[nats]` key.)
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// The users a leaf admits (`deploy/nats/leaf.conf.tmpl`): the gateway's and the
/// business services'.
#[derive(Debug, Clone)]
pub struct LeafAuth {
    /// Password of `petrel-gateway`.
    pub gateway: String,
    /// Password of `petrel-services`.
    pub services: String,
}

/// The gateway's user on the leaf.
pub const GATEWAY_USER: &str = "petrel-gateway";
/// The business services' user on the leaf.
pub const SERVICES_USER: &str = "petrel-services";

impl LeafAuth {
    /// Random passwords.
    pub fn random() -> Self {
        let pw = || hex::encode(rand::random::<[u8; 16]>());
        Self {
            gateway: pw(),
            services: pw(),
        }
    }

    /// `url` (`nats://host:port`) with the gateway's credentials in it.
    pub fn gateway_url(&self, url: &str) -> String {
        with_user(url, GATEWAY_USER, &self.gateway)
    }

    /// `url` with the business services' credentials in it.
    pub fn services_url(&self, url: &str) -> String {
        with_user(url, SERVICES_USER, &self.services)
    }
}

/// Connects to `url`, using the user and password in it if it has them
/// (`nats://user:password@host:port`; async-nats does not read them from the URL).
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    let (options, addr) = login_options(url);
    options.connect(addr).await
}

pub use petrel_gateway::hub::login::login_options;

pub(crate) fn with_user(url: &str, user: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
        None => format!("nats://{user}:{password}@{url}"),
    }
}

/// A running nats-server.
#[derive(Debug)]
pub struct NatsProcess {
    child: Child,
    /// Its name.
    pub name: String,
    /// Client URL, `nats://127.0.0.1:PORT`.
    pub client_url: String,
    /// Leafnode URL (hub only), `nats-leaf://127.0.0.1:PORT`.
    pub leafnode_url: Option<String>,
    /// Monitoring base URL (hub only), `http://127.0.0.1:PORT`.
    pub monitoring_url: Option<String>,
    /// Its directory (config, log, data).
    pub dir: PathBuf,
}

/// `template` with each `{{KEY}}` replaced by its value.
pub(crate) fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

#[derive(serde::Deserialize)]
struct PortsFile {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    leafnode: Vec<String>,
    #[serde(default)]
    monitoring: Vec<String>,
}

impl NatsProcess {
    /// Starts a leaf node linked to every hub node in `hub_leaf_urls` (leafnode URLs
    /// with the edge's credentials) over TLS verified against `ca_file`, admitting
    /// only the users of `auth`.
    pub async fn start_leaf(
        dir: &Path,
        name: &str,
        hub_leaf_urls: &[String],
        ca_file: &Path,
        port: Option<u16>,
        auth: &LeafAuth,
    ) -> anyhow::Result<Self> {
        let urls: Vec<String> = hub_leaf_urls.iter().map(|u| format!("{u:?}")).collect();
        let p = port.map(|p| p.to_string()).unwrap_or("-1".into());
        let d = dir.to_string_lossy().to_string();
        let conf = render(
            LEAF_TEMPLATE,
            &[
                ("NAME", name),
                ("PORT", &p),
                ("DIR", &d),
                ("HUB_LEAF_URLS", &urls.join(", ")),
                ("CA_FILE", &ca_file.display().to_string()),
                ("GATEWAY_PASSWORD", &auth.gateway),
                ("SERVICES_PASSWORD", &auth.services),
            ],
        );
        Self::start(dir, name, &conf).await
    }

    /// Starts nats-server `name` with config `conf` in `dir` and waits until it
    /// reports its ports.
    pub async fn start(dir: &Path, name: &str, conf: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf_path = dir.join(format!("{name}.conf"));
        // It may hold passwords: readable by this user only.
        petrel_gateway::tls::write_private(&conf_path, conf.as_bytes())
            .with_context(|| format!("writing {}", conf_path.display()))?;
        // Old ports files from an earlier run would be read as ours.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".ports") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::process::guard(&mut cmd);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (install it with scripts/bootstrap.sh, or set NATS_SERVER_BIN)",
                nats_server_bin().display()
            )
        })?;
        let pid = child.id().unwrap_or(0);
        let ports_path = dir.join(format!(
            "{}_{pid}.ports",
            nats_server_bin()
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default()
        ));
        let started = Instant::now();
        let wants_leaf_port = conf.contains("leafnodes {\n  listen");
        let log_path = dir.join(format!("{name}.log"));
        let ports = loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("nats-server {name} exited with {status}:\n{log}");
            }
            if let Some(mut p) = read_ports(dir, pid, &ports_path) {
                if !wants_leaf_port {
                    break p;
                }
                // The ports file has no leafnode entry: read it from the log line
                // "Listening for leafnode connections on HOST:PORT".
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if let Some(addr) = log
                    .lines()
                    .find_map(|l| l.split("Listening for leafnode connections on ").nth(1))
                {
                    p.leafnode = vec![format!("nats-leaf://{}", addr.trim())];
                    break p;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "nats-server {name} did not report its ports within 20 s (see {}/{name}.log)",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client_url = ports
            .nats
            .first()
            .cloned()
            .context("ports file lists no client URL")?;
        Ok(Self {
            child,
            name: name.to_string(),
            client_url,
            leafnode_url: ports.leafnode.first().cloned(),
            monitoring_url: ports.monitoring.first().cloned(),
            dir: dir.to_path_buf(),
        })
    }

    /// Client port.
    pub fn client_port(&self) -> Option<u16> {
        self.client_url.rsplit(':').next()?.parse().ok()
    }

    /// Leafnode port (hub only).
    pub fn leafnode_port(&self) -> Option<u16> {
        self.leafnode_url.as_ref()?.rsplit(':').next()?.parse().ok()
    }

    /// Monitoring port (hub only).
    pub fn monitoring_port(&self) -> Option<u16> {
        self.monitoring_url
            .as_ref()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            crate::process::signal(pid, libc::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// Kills the server with SIGKILL and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn read_ports(dir: &Path, pid: u32, preferred: &Path) -> Option<PortsFile> {
    let text = std::fs::read_to_string(preferred).ok().or_else(|| {
        // The file is named after the executable; find it by pid if the name differs.
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            if n.ends_with(&format!("_{pid}.ports")) {
                std::fs::read_to_string(e.path()).ok()
            } else {
                None
            }
        })
    })?;
    let p: PortsFile = serde_json::from_str(&text).ok()?;
    if p.nats.is_empty() { None } else { Some(p) }
}

/// Waits until JetStream (domain `domain`) answers through `url` — for a leaf, this
/// also proves the leafnode link to the hub is up.
pub async fn wait_jetstream(
    url: &str,
    domain: &str,
    timeout: Duration,
) -> anyhow::Result<async_nats::Client> {
    let started = Instant::now();
    let mut last_err = String::new();
    while started.elapsed() < timeout {
        match connect(url).await {
            Ok(client) => {
                let js = async_nats::jetstream::with_domain(client.clone(), domain);
                match tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
                    Ok(Ok(_)) => return Ok(client),
                    Ok(Err(e)) => last_err = e.to_string(),
                    Err(_) => last_err = "timed out".into(),
                }
            }
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("JetStream domain {domain:?} not reachable through {url} within {timeout:?}: {last_err}")
}
