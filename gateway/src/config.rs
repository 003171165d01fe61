//! Gateway configuration: a TOML file, overridable by `PETREL_{SECTION}_{KEY}`
//! environment variables (e.g. `PETREL_NATS_URL`, `PETREL_LIMITS_MAX_FRAME_BYTES`).
//! Unknown keys — in the file or in such a variable — are an error, so a typo never
//! silently falls back to a default. `deploy/gateway.example.toml` documents each key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of this gateway.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// Listen addresses.
    pub listen: ListenSection,
    /// TLS certificate and key.
    #[serde(default)]
    pub tls: TlsSection,
    /// The local NATS leaf node.
    #[serde(default)]
    pub nats: NatsSection,
    /// Token keys.
    pub auth: AuthSection,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Edge cache.
    #[serde(default)]
    pub storage: StorageSection,
    /// Static files and dev tokens on the HTTP listener.
    #[serde(default)]
    pub web: WebSection,
    /// Redis: group membership and presence.
    #[serde(default)]
    pub redis: RedisSection,
    /// What the gateway asks of the message service.
    #[serde(default)]
    pub messages: MessagesSection,
}

/// `[messages]`: the gateway's side of the message service (conversation lists,
/// archived history, amends).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesSection {
    /// Seconds after sending during which a sender may edit or recall a message.
    pub amend_window_secs: u64,
    /// Milliseconds to wait for the message service's answer before telling the client
    /// UNAVAILABLE (history from JetStream is still served without it).
    pub request_timeout_ms: u64,
}

impl Default for MessagesSection {
    fn default() -> Self {
        Self {
            amend_window_secs: 15 * 60,
            request_timeout_ms: 2000,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://host:port/db` or `redis+unix:///path/to/socket`. Unset: no groups,
    /// presence always unknown.
    pub url: Option<String>,
    /// Seconds between re-writes of this gateway's devices in the presence directory
    /// (a device of a crashed gateway ages out after three).
    pub presence_heartbeat_secs: u64,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            presence_heartbeat_secs: 20,
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Id of this edge (shown to clients, stored with messages).
    pub id: String,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            id: "petrel-edge".into(),
        }
    }
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// UDP address for native QUIC (ALPN `petrel/1`) and WebTransport (ALPN `h3`, path `/wt`).
    pub quic: SocketAddr,
    /// TCP address for WebSocket over TLS.
    pub websocket: SocketAddr,
    /// TCP address for plain WebSocket (no TLS): only behind a TLS-terminating proxy,
    /// or on loopback in development. Off when unset.
    #[serde(default)]
    pub websocket_plain: Option<SocketAddr>,
    /// TCP address for plain HTTP (health; keep it on a private interface).
    pub http: SocketAddr,
}

/// `[tls]`: either `cert` + `key` files, or `self_signed = true` (development).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Certificate chain, PEM (leaf first).
    pub cert: Option<PathBuf>,
    /// Private key, PEM.
    pub key: Option<PathBuf>,
    /// Seconds between checks of `cert`/`key` for a change (0 = never reload).
    pub reload_secs: u64,
    /// Generate a self-signed ECDSA P-256 certificate in memory and rotate it
    /// (development: browsers pin it by hash).
    pub self_signed: bool,
    /// Seconds each self-signed certificate is served before the next takes over.
    pub rotate_secs: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_secs: 30,
            self_signed: false,
            rotate_secs: 6 * 24 * 3600,
        }
    }
}

impl TlsSection {
    /// Where the served certificate comes from.
    pub fn source(&self) -> anyhow::Result<crate::tls::CertSource> {
        use crate::tls::CertSource;
        match (&self.cert, &self.key, self.self_signed) {
            (Some(cert), Some(key), false) => Ok(CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                reload: Duration::from_secs(self.reload_secs),
            }),
            (None, None, true) => {
                let max = crate::tls::MAX_ROTATE.as_secs();
                if self.rotate_secs == 0 || self.rotate_secs > max {
                    bail!(
                        "tls.rotate_secs must be between 1 and {max} (browsers refuse pinned certificates valid over 14 days)"
                    );
                }
                Ok(CertSource::SelfSigned {
                    rotate: Duration::from_secs(self.rotate_secs),
                })
            }
            (_, _, true) => bail!("tls: set either self_signed = true or cert and key, not both"),
            _ => bail!("tls: set cert and key (PEM files), or self_signed = true for development"),
        }
    }
}

/// `[web]`: what the HTTP listener serves besides health, and its bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Directory served at `/` (the demo page and the browser SDK bundle).
    pub static_dir: Option<PathBuf>,
    /// Mint tokens at `/dev/token?user=U` with the HS256 secret. Development only:
    /// anyone who reaches the HTTP port can then sign in as anyone, so it is refused
    /// unless `listen.http` is a loopback address, and answered only to loopback peers.
    pub dev_tokens: bool,
    /// The host name clients reach this edge by, for the URLs `/client-config` returns
    /// (never taken from the request). Unset: the QUIC listen address (`localhost`
    /// when that is unspecified).
    pub public_host: Option<String>,
    /// Seconds a client has to send a request's headers (also while a kept-alive
    /// connection waits for its next request).
    pub header_timeout_secs: u64,
    /// Longest one HTTP connection may stay open, whatever it does.
    pub max_connection_secs: u64,
    /// HTTP connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// The push service's VAPID public key (uncompressed P-256, base64url), handed to
    /// browsers in `/client-config` for `pushManager.subscribe`. `petrel push
    /// vapid-key` prints it for a key file.
    pub vapid_public_key: Option<String>,
}

impl Default for WebSection {
    fn default() -> Self {
        Self {
            vapid_public_key: None,
            static_dir: None,
            dev_tokens: false,
            public_host: None,
            header_timeout_secs: 10,
            max_connection_secs: 120,
            max_connections: 256,
        }
    }
}

/// `[nats]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// URL of the local leaf node.
    pub url: String,
    /// The gateway's user on the leaf (the leaf admits no anonymous client).
    pub user: Option<String>,
    /// Its password (prefer `password_file`, or `PETREL_NATS_PASSWORD`).
    pub password: Option<String>,
    /// File holding the password (takes precedence over `password`).
    pub password_file: Option<PathBuf>,
    /// JetStream domain of the hub.
    pub domain: String,
    /// Seconds to wait for the hub's publish acknowledgement before a try counts as
    /// failed and is retried.
    pub publish_timeout_secs: u64,
    /// Publishes in flight across the whole gateway.
    pub max_inflight_publishes: usize,
    /// Milliseconds a sender waits for STORED before it is answered QUEUED (durable
    /// at the edge, stored on the hub later).
    pub queue_after_ms: u64,
    /// Longest pause between retries while the hub is unreachable, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            user: None,
            password: None,
            password_file: None,
            domain: "hub".into(),
            publish_timeout_secs: 5,
            max_inflight_publishes: 4096,
            queue_after_ms: 1000,
            retry_max_ms: 5000,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// HS256 shared secret (development). At least 32 bytes.
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// File holding the HS256 secret (takes precedence over `hs256_secret`).
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// ES256 public key, PEM file (production).
    #[serde(default)]
    pub es256_public_key: Option<PathBuf>,
    /// URL of the token issuer's key set (JWKS). `https://`, or `http://` to a loopback
    /// address only. Keys are picked by the token's `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS document on disk, read again on the same schedule as a URL.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for `jwks_url`, besides the system's.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Seconds between refreshes of the key set.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
    /// Shortest time between two refreshes caused by tokens naming an unknown `kid`, so
    /// made-up kids cannot hammer the issuer.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_secs: u64,
    /// Clock skew allowed between the token issuer and the gateway (`exp`, `nbf`, `iat`).
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// The furthest a token's `exp` may be from now; longer-lived tokens are refused.
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime_secs: u64,
}

fn default_jwks_refresh() -> u64 {
    300
}

fn default_jwks_min_refetch() -> u64 {
    10
}

fn default_clock_skew() -> u64 {
    5
}

fn default_max_token_lifetime() -> u64 {
    24 * 3600
}

impl LimitsSection {
    /// The per-user bounds of this section.
    pub fn users(&self) -> crate::connection::admission::UserLimitsConfig {
        crate::connection::admission::UserLimitsConfig {
            max_connections: self.max_connections_per_user,
            send_rate: f64::from(self.user_send_rate_per_sec),
            send_burst: f64::from(self.user_send_burst.max(1)),
        }
    }

    /// The connection budgets of this section.
    pub fn admission(&self) -> crate::connection::admission::AdmissionConfig {
        crate::connection::admission::AdmissionConfig {
            max_connections: self.max_connections,
            max_unauthenticated: self.max_unauthenticated,
            per_source_unauthenticated: self.per_source_unauthenticated,
            per_source_rate: f64::from(self.per_source_connects_per_sec),
            per_source_burst: f64::from(self.per_source_connect_burst),
        }
    }
}

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySetSource {
    /// Fetched over HTTP(S).
    Url(url::Url),
    /// Read from a file.
    File(PathBuf),
}

impl AuthSection {
    /// The key set's source, if one is configured; a URL that is neither HTTPS nor
    /// plain HTTP to a loopback address is refused, since keys fetched in the clear
    /// could be swapped by anyone on the path.
    pub fn key_set_source(&self) -> anyhow::Result<Option<KeySetSource>> {
        match (&self.jwks_url, &self.jwks_file) {
            (Some(_), Some(_)) => bail!("auth: set jwks_url or jwks_file, not both"),
            (None, Some(path)) => Ok(Some(KeySetSource::File(path.clone()))),
            (None, None) => Ok(None),
            (Some(raw), None) => {
                let url = url::Url::parse(raw)
                    .map_err(|e| anyhow::anyhow!("auth.jwks_url {raw:?}: {e}"))?;
                let loopback = match url.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                match url.scheme() {
                    "https" => {}
                    "http" if loopback => {}
                    "http" => bail!(
                        "auth.jwks_url must be https:// (plain http only to a loopback address): {raw}"
                    ),
                    other => bail!("auth.jwks_url: scheme {other} is not http(s): {raw}"),
                }
                Ok(Some(KeySetSource::Url(url)))
            }
        }
    }

    /// The token time rules of this section.
    pub fn policy(&self) -> petrel_core::auth::TokenPolicy {
        petrel_core::auth::TokenPolicy {
            leeway_secs: self.clock_skew_secs,
            max_lifetime_secs: self.max_token_lifetime_secs,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest frame accepted from a client (bytes after the length prefix).
    pub max_frame_bytes: usize,
    /// Largest message content.
    pub max_content_bytes: usize,
    /// Seconds between accept and a valid Hello.
    pub handshake_timeout_secs: u64,
    /// Seconds without any frame or transport activity before a connection is dropped.
    pub idle_timeout_secs: u64,
    /// Sends one connection may have waiting for the hub.
    pub max_inflight_sends: usize,
    /// Average sends per second per connection (0 = unlimited); more are rejected
    /// with RATE_LIMITED.
    pub send_rate_per_sec: u32,
    /// Burst of sends allowed above the average rate.
    pub send_burst: u32,
    /// Live messages queued toward one connection; beyond it the connection catches
    /// up from the cache/hub instead.
    pub send_queue_frames: usize,
    /// Authenticated connections at once on this gateway.
    pub max_connections: usize,
    /// Connections at once that have not sent a valid Hello yet (a separate, smaller
    /// budget: sockets that never authenticate cannot take authenticated slots).
    pub max_unauthenticated: usize,
    /// Of those, from one source address.
    pub per_source_unauthenticated: usize,
    /// New connections per second from one source address, on average.
    pub per_source_connects_per_sec: u32,
    /// New connections from one source address in a burst above that rate.
    pub per_source_connect_burst: u32,
    /// Connections one user may have open on this gateway; a newer one is refused
    /// RATE_LIMITED.
    pub max_connections_per_user: usize,
    /// Sends per second of one user, all its connections on this gateway together
    /// (0 = unlimited).
    pub user_send_rate_per_sec: u32,
    /// Sends of one user in a burst above that rate.
    pub user_send_burst: u32,
    /// Bytes of live messages queued toward one connection; beyond it (or beyond
    /// `send_queue_frames`) the connection catches up from the cache/hub instead.
    pub send_queue_bytes: usize,
    /// Seconds one write to a client may block (it stopped reading) before its
    /// connection is closed with SLOW_CONSUMER.
    pub write_timeout_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_frame_bytes: petrel_proto::DEFAULT_MAX_FRAME_BYTES,
            max_content_bytes: 32 * 1024,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_inflight_sends: 64,
            send_rate_per_sec: 100,
            send_burst: 200,
            send_queue_frames: 1024,
            max_connections: 100_000,
            max_unauthenticated: 4096,
            per_source_unauthenticated: 32,
            per_source_connects_per_sec: 20,
            per_source_connect_burst: 100,
            max_connections_per_user: 32,
            user_send_rate_per_sec: 200,
            user_send_burst: 400,
            write_timeout_secs: 30,
            send_queue_bytes: 1024 * 1024,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// Directory of the RocksDB edge cache.
    pub path: PathBuf,
    /// Messages kept per subject in the `recent` cache (resumes within them are served
    /// by the edge).
    pub recent_per_subject: usize,
    /// Seconds a cached message is kept.
    pub recent_max_age_secs: u64,
    /// Seconds between trims of the cache.
    pub trim_every_secs: u64,
    /// Sends the outbox may hold while the hub is unreachable; more are refused.
    pub outbox_max_messages: usize,
    /// Payload bytes the outbox may hold while the hub is unreachable.
    pub outbox_max_bytes: usize,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("petrel-data"),
            recent_per_subject: 2000,
            recent_max_age_secs: 24 * 3600,
            trim_every_secs: 30,
            outbox_max_messages: 100_000,
            outbox_max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl LimitsSection {
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

const SECTIONS: &[&str] = &[
    "gateway", "listen", "tls", "nats", "auth", "limits", "storage", "web", "redis",
];

/// Applies `PETREL_{SECTION}_{KEY}` variables of `env` to the TOML `value`:
/// `sections` are the tables that may be overridden, nested ones dotted
/// (`push.apns` takes `PETREL_PUSH_APNS_KEY_ID`); the longest matching section wins.
/// A value that parses as a TOML scalar (number, bool) is taken as such, anything
/// else as a string. Variables of no listed section are ignored. Returns the names
/// applied, for error messages.
pub fn overlay_env<'e>(
    value: &mut toml::Table,
    env: &'e [(String, String)],
    sections: &[&str],
) -> anyhow::Result<Vec<&'e str>> {
    let mut sections: Vec<&str> = sections.to_vec();
    sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut applied = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix("PETREL_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = sections.iter().find_map(|s| {
            let key = rest.strip_prefix(&format!("{}_", s.replace('.', "_")))?;
            (!key.is_empty()).then_some((*s, key))
        }) else {
            continue;
        };
        let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table() && !v.is_array())
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut table = &mut *value;
        for part in section.split('.') {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let Some(t) = entry.as_table_mut() else {
                bail!("[{section}] is not a table");
            };
            table = t;
        }
        table.insert(key.to_string(), parsed);
        applied.push(name.as_str());
    }
    Ok(applied)
}

/// Reads the config file `path` and hands its text and the process environment to
/// `parse`; errors name the file.
pub fn load_with_env<T>(
    path: &Path,
    parse: impl FnOnce(&str, &[(String, String)]) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    parse(&text, &env).with_context(|| format!("in config {}", path.display()))
}

/// TOML `text` with the `PETREL_*` overrides of `env` for `sections`
/// ([`overlay_env`]) as a `T`; an invalid value says which overrides were applied.
pub fn parse_with_env<T: serde::de::DeserializeOwned>(
    text: &str,
    env: &[(String, String)],
    sections: &[&str],
) -> anyhow::Result<T> {
    let mut value: toml::Table = toml::from_str(text).context("invalid TOML")?;
    let applied = overlay_env(&mut value, env, sections)?;
    toml::Value::Table(value).try_into().with_context(|| {
        if applied.is_empty() {
            "invalid configuration".to_string()
        } else {
            format!(
                "invalid configuration (with overrides from {})",
                applied.join(", ")
            )
        }
    })
}

impl Config {
    /// Reads `path`, applies `PETREL_*` overrides from the process environment, and
    /// resolves relative paths against the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut cfg = load_with_env(path, Self::parse)?;
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        Ok(cfg)
    }

    /// Parses TOML text with overrides from `env` (pairs of name and value).
    pub fn parse(text: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let cfg: Config = parse_with_env(text, env, SECTIONS)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if petrel_core::UserId::parse(self.gateway.id.clone()).is_err() {
            bail!("gateway.id must match [A-Za-z0-9_-]{{1,64}}");
        }
        let l = &self.limits;
        if l.max_frame_bytes < 1024 || l.max_frame_bytes > 16 * 1024 * 1024 {
            bail!("limits.max_frame_bytes must be between 1 KiB and 16 MiB");
        }
        if l.max_content_bytes + 1024 > l.max_frame_bytes {
            bail!("limits.max_content_bytes must be at least 1 KiB below limits.max_frame_bytes");
        }
        if l.max_inflight_sends == 0 || l.send_queue_frames == 0 || l.max_connections == 0 {
            bail!("limits must be positive");
        }
        let n = &self.nats;
        if n.publish_timeout_secs == 0 || n.max_inflight_publishes == 0 || n.retry_max_ms == 0 {
            bail!(
                "nats.publish_timeout_secs, max_inflight_publishes and retry_max_ms must be positive"
            );
        }
        if self.storage.outbox_max_messages == 0 || self.storage.outbox_max_bytes == 0 {
            bail!("storage.outbox_max_messages and outbox_max_bytes must be positive");
        }
        self.tls.source()?;
        if self.web.dev_tokens
            && self.auth.hs256_secret.is_none()
            && self.auth.hs256_secret_file.is_none()
        {
            bail!(
                "web.dev_tokens needs an HS256 secret (auth.hs256_secret or auth.hs256_secret_file)"
            );
        }
        let key_set = self.auth.key_set_source()?;
        if self.auth.hs256_secret.is_none()
            && self.auth.hs256_secret_file.is_none()
            && self.auth.es256_public_key.is_none()
            && key_set.is_none()
        {
            bail!(
                "auth: set hs256_secret, hs256_secret_file, es256_public_key, jwks_url or jwks_file"
            );
        }
        if self.auth.jwks_refresh_secs == 0 || self.auth.jwks_min_refetch_secs == 0 {
            bail!("auth.jwks_refresh_secs and jwks_min_refetch_secs must be above 0");
        }
        if self.web.dev_tokens && !self.listen.http.ip().is_loopback() {
            bail!(
                "web.dev_tokens mints tokens for anyone who asks: it needs listen.http on a loopback address, not {}",
                self.listen.http
            );
        }
        if self.web.header_timeout_secs == 0
            || self.web.max_connection_secs == 0
            || self.web.max_connections == 0
        {
            bail!(
                "web.header_timeout_secs, max_connection_secs and max_connections must be above 0"
            );
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_unauthenticated == 0
            || l.per_source_unauthenticated == 0
            || l.per_source_connect_burst == 0
            || l.max_connections_per_user == 0
        {
            bail!(
                "limits.max_connections, max_unauthenticated, per_source_unauthenticated, per_source_connect_burst and max_connections_per_user must be above 0"
            );
        }
        if self.nats.user.is_some()
            && self.nats.password.is_none()
            && self.nats.password_file.is_none()
        {
            bail!("nats.user needs nats.password_file (or nats.password / PETREL_NATS_PASSWORD)");
        }
        if self.auth.max_token_lifetime_secs < 60 {
            bail!("auth.max_token_lifetime_secs must be at least 60");
        }
        if self.auth.clock_skew_secs > 300 {
            bail!("auth.clock_skew_secs must be at most 300 (5 minutes)");
        }
        Ok(())
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for p in [
            &mut self.tls.cert,
            &mut self.tls.key,
            &mut self.web.static_dir,
        ] {
            if let Some(p) = p.as_mut() {
                fix(p);
            }
        }
        fix(&mut self.storage.path);
        if let Some(p) = self.auth.hs256_secret_file.as_mut() {
            fix(p);
        }
        for p in [
            &mut self.auth.es256_public_key,
            &mut self.auth.jwks_file,
            &mut self.auth.jwks_ca_file,
        ] {
            if let Some(p) = p.as_mut() {
                fix(p);
            }
        }
        if let Some(p) = self.nats.password_file.as_mut() {
            fix(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [listen]
        quic = "127.0.0.1:0"
        websocket = "127.0.0.1:0"
        http = "127.0.0.1:0"
        [tls]
        cert = "cert.pem"
        key = "key.pem"
        [auth]
        hs256_secret = "0123456789abcdef0123456789abcdef"
    "#;

    #[test]
    fn defaults_and_env_overrides() {
        let env = vec![
            (
                "PETREL_NATS_URL".to_string(),
                "nats://10.0.0.1:4222".to_string(),
            ),
            (
                "PETREL_LIMITS_MAX_FRAME_BYTES".to_string(),
                "131072".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = Config::parse(BASE, &env).unwrap();
        assert_eq!(c.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(c.nats.domain, "hub");
        assert_eq!(c.limits.max_frame_bytes, 131072);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse(&format!("{BASE}\n[nats]\nurll = \"x\""), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("urll"), "{err:#}");
        let env = vec![("PETREL_LIMITS_MAX_FRAMES".to_string(), "1".to_string())];
        let err = format!("{:#}", Config::parse(BASE, &env).unwrap_err());
        assert!(
            err.contains("PETREL_LIMITS_MAX_FRAMES") && err.contains("max_frames"),
            "{err}"
        );
        assert!(Config::parse(&format!("{BASE}\n[bogus]\nx = 1"), &[]).is_err());
    }

    #[test]
    fn the_annotated_example_parses() {
        let text = include_str!("../../deploy/gateway.example.toml");
        Config::parse(text, &[]).unwrap();
    }

    #[test]
    fn tls_is_files_or_self_signed_never_both_or_neither() {
        let tail = "[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n";
        let listen = "[listen]\nquic = \"127.0.0.1:0\"\nwebsocket = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";
        let parse = |tls: &str| Config::parse(&format!("{listen}[tls]\n{tls}\n{tail}"), &[]);
        assert!(matches!(
            parse("self_signed = true").unwrap().tls.source().unwrap(),
            crate::tls::CertSource::SelfSigned { .. }
        ));
        for bad in [
            "",
            "cert = \"c.pem\"",
            "self_signed = true\ncert = \"c.pem\"\nkey = \"k.pem\"",
            "self_signed = true\nrotate_secs = 0",
            "self_signed = true\nrotate_secs = 1209600",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(format!("{err:#}").contains("tls"), "{bad:?}: {err:#}");
        }
        let no_secret = format!(
            "{listen}[tls]\nself_signed = true\n[auth]\nes256_public_key = \"k.pem\"\n[web]\ndev_tokens = true\n"
        );
        let err = Config::parse(&no_secret, &[]).unwrap_err();
        assert!(format!("{err:#}").contains("dev_tokens"), "{err:#}");
    }

    #[test]
    fn a_key_set_url_is_https_or_loopback_and_not_next_to_a_file() {
        let with = |extra: &str| {
            Config::parse(&format!("{BASE}{extra}"), &[]).map_err(|e| format!("{e:#}"))
        };
        for ok in [
            "jwks_url = \"https://auth.example.com/jwks.json\"",
            "jwks_url = \"http://127.0.0.1:8080/jwks.json\"",
            "jwks_url = \"http://[::1]:8080/jwks.json\"",
            "jwks_url = \"http://localhost/jwks.json\"",
            "jwks_file = \"jwks.json\"",
        ] {
            let c = with(ok).unwrap();
            assert!(c.auth.key_set_source().unwrap().is_some(), "{ok}");
        }
        for (bad, says) in [
            (
                "jwks_url = \"http://auth.example.com/jwks.json\"",
                "https://",
            ),
            (
                "jwks_url = \"ftp://auth.example.com/jwks.json\"",
                "scheme ftp",
            ),
            ("jwks_url = \"not a url\"", "jwks_url"),
            (
                "jwks_url = \"https://a.example/j\"\njwks_file = \"j.json\"",
                "not both",
            ),
            ("jwks_file = \"j.json\"\njwks_refresh_secs = 0", "above 0"),
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn dev_tokens_are_refused_off_loopback() {
        let dev = format!("{BASE}[web]\ndev_tokens = true\n");
        assert!(Config::parse(&dev, &[]).is_ok(), "loopback is fine");
        for http in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:8080"] {
            let env = vec![("PETREL_LISTEN_HTTP".to_string(), http.to_string())];
            let err = Config::parse(&dev, &env).unwrap_err();
            assert!(format!("{err:#}").contains("loopback"), "{http}: {err:#}");
        }
    }

    #[test]
    fn the_http_bounds_must_be_positive() {
        for key in [
            "header_timeout_secs",
            "max_connection_secs",
            "max_connections",
        ] {
            let bad = format!("{BASE}[web]\n{key} = 0\n");
            assert!(Config::parse(&bad, &[]).is_err(), "{key} = 0 accepted");
        }
    }
}
