//! The push service's configuration: a TOML file with a `[push]` table (and
//! `[push.apns]`, `[push.fcm]`, `[push.webpush]`), overridable by `PETREL_PUSH_*`
//! variables (`PETREL_PUSH_GRACE_MS`, `PETREL_PUSH_APNS_KEY_ID`, …). Unknown keys are
//! an error. `deploy/push.example.toml` documents each key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// `[push]`
    pub push: PushSection,
}

/// The sections `PETREL_*` variables may override.
const SECTIONS: &[&str] = &["push", "push.apns", "push.fcm", "push.webpush"];

/// `[push]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    /// The hub: `nats://[user:password@]host:port` (several, comma-separated).
    pub nats_url: String,
    /// CA certificate (PEM) the hub's TLS certificate is checked against.
    #[serde(default)]
    pub nats_ca_file: Option<PathBuf>,
    /// The hub's JetStream domain.
    #[serde(default = "default_domain")]
    pub nats_domain: String,
    /// The Redis the gateways use (presence, acked cursors) — the push service keeps
    /// its coalescing state there too.
    pub redis_url: String,
    /// The durable consumer's name on each stream, shared by every worker.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// How long JetStream waits for a worker's ack before giving its message to another
    /// worker (a worker still busy with it says so every third of it).
    #[serde(default = "default_ack_wait")]
    pub ack_wait_secs: u64,
    /// Stored messages one worker handles at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long after a message is stored a device that is offline (and has not acked
    /// it) is woken: time for an online device's ack to arrive.
    #[serde(default = "default_grace")]
    pub grace_ms: u64,
    /// Pushes to one device are at least this far apart; what arrives meanwhile is
    /// counted into the next one.
    #[serde(default = "default_coalesce")]
    pub coalesce_ms: u64,
    /// Whether text leaves the system for devices that left it to us: `show` or
    /// `hide`.
    #[serde(default = "default_preview")]
    pub preview: PreviewDefault,
    /// Attempts per push (the first included) before it is dead-lettered.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First retry delay (doubles per attempt) unless the provider says `Retry-After`.
    #[serde(default = "default_retry_first")]
    pub retry_first_ms: u64,
    /// Longest retry delay, `Retry-After` included.
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// How long a provider keeps an undelivered push (APNs expiration, FCM ttl, Web
    /// Push TTL).
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
    /// The gateways' `[redis] presence_heartbeat_secs`: a device is online while its
    /// presence entry is younger than three of them.
    #[serde(default = "default_heartbeat")]
    pub presence_heartbeat_secs: u64,
    /// `/metrics` and `/healthz`.
    #[serde(default = "default_metrics")]
    pub metrics_listen: SocketAddr,
    /// Extra CA certificates (PEM) for the providers' endpoints (staging, tests).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// APNs; unset: iOS targets are dead-lettered.
    #[serde(default)]
    pub apns: Option<ApnsSection>,
    /// FCM; unset: Android targets are dead-lettered.
    #[serde(default)]
    pub fcm: Option<FcmSection>,
    /// Web Push; unset: browser targets are dead-lettered.
    #[serde(default)]
    pub webpush: Option<WebPushSection>,
}

/// The preview default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreviewDefault {
    /// "alice: hi".
    Show,
    /// "New message".
    Hide,
}

/// `[push.apns]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsSection {
    /// Production endpoint.
    #[serde(default = "apns_production", with = "url_str")]
    pub endpoint: url::Url,
    /// Endpoint for sandbox (development) tokens.
    #[serde(default = "apns_sandbox", with = "url_str")]
    pub sandbox_endpoint: url::Url,
    /// The `.p8` signing key (PEM).
    pub key_file: PathBuf,
    /// Its key id (10 characters).
    pub key_id: String,
    /// The team id (10 characters).
    pub team_id: String,
}

/// `[push.fcm]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSection {
    /// The FCM API's base URL.
    #[serde(default = "fcm_endpoint", with = "url_str")]
    pub endpoint: url::Url,
    /// The service-account key file (JSON).
    pub credentials_file: PathBuf,
}

/// `[push.webpush]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushSection {
    /// The VAPID signing key: P-256, PKCS#8 PEM (`petrel push vapid-key` makes one).
    pub vapid_private_key_file: PathBuf,
    /// A contact for push services: `mailto:` or `https:`.
    pub subject: String,
}

mod url_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(u: &url::Url, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(u.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
        let s = String::deserialize(d)?;
        super::provider_url(&s).map_err(serde::de::Error::custom)
    }
}

/// A provider URL: `https://`, or `http://` on a loopback address only (tests).
pub fn provider_url(s: &str) -> anyhow::Result<url::Url> {
    let u = url::Url::parse(s).with_context(|| format!("{s:?} is not a URL"))?;
    match u.scheme() {
        "https" if u.host().is_some() => Ok(u),
        "http" if is_loopback(&u) => Ok(u),
        "http" => bail!("{s:?}: http:// is accepted for loopback addresses only; use https://"),
        _ => bail!("{s:?}: not an https:// URL"),
    }
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn default_domain() -> String {
    "hub".into()
}
fn default_consumer() -> String {
    "push".into()
}
fn default_ack_wait() -> u64 {
    30
}
fn default_concurrency() -> usize {
    256
}
fn default_grace() -> u64 {
    2000
}
fn default_coalesce() -> u64 {
    1000
}
fn default_preview() -> PreviewDefault {
    PreviewDefault::Show
}
fn default_attempts() -> u32 {
    5
}
fn default_retry_first() -> u64 {
    500
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_ttl() -> u64 {
    24 * 3600
}
fn default_heartbeat() -> u64 {
    20
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}
fn apns_production() -> url::Url {
    url::Url::parse("https://api.push.apple.com").unwrap_or_else(|_| unreachable!())
}
fn apns_sandbox() -> url::Url {
    url::Url::parse("https://api.sandbox.push.apple.com").unwrap_or_else(|_| unreachable!())
}
fn fcm_endpoint() -> url::Url {
    url::Url::parse("https://fcm.googleapis.com").unwrap_or_else(|_| unreachable!())
}

impl PushConfig {
    /// Reads `path`, applies `PETREL_PUSH_*` overrides from the environment, and
    /// resolves relative paths against the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut cfg = petrel_gateway::config::load_with_env(path, Self::parse)?;
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        Ok(cfg)
    }

    /// Parses TOML text with overrides from `env`.
    pub fn parse(text: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let cfg: Self = petrel_gateway::config::parse_with_env(text, env, SECTIONS)?;
        cfg.push.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        let p = &mut self.push;
        if let Some(f) = p.nats_ca_file.as_mut() {
            fix(f);
        }
        if let Some(f) = p.ca_file.as_mut() {
            fix(f);
        }
        if let Some(a) = p.apns.as_mut() {
            fix(&mut a.key_file);
        }
        if let Some(f) = p.fcm.as_mut() {
            fix(&mut f.credentials_file);
        }
        if let Some(w) = p.webpush.as_mut() {
            fix(&mut w.vapid_private_key_file);
        }
    }
}

impl PushSection {
    fn validate(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 || self.concurrency > 100_000 {
            bail!("push.concurrency must be between 1 and 100000");
        }
        if self.attempts == 0 || self.attempts > 50 {
            bail!("push.attempts must be between 1 and 50");
        }
        if self.retry_first_ms == 0 || self.retry_max_ms < self.retry_first_ms {
            bail!("push.retry_first_ms must be positive and at most push.retry_max_ms");
        }
        if self.ttl_secs == 0 || self.ttl_secs > 28 * 24 * 3600 {
            bail!("push.ttl_secs must be between 1 and 2419200 (28 days)");
        }
        if Duration::from_secs(self.ack_wait_secs) <= self.due_ttl() {
            bail!(
                "push.ack_wait_secs ({} s) must be longer than grace_ms + coalesce_ms + 2 s ({:?}): a dead worker's message must come back after its hold on the device expired",
                self.ack_wait_secs,
                self.due_ttl()
            );
        }
        if self.presence_heartbeat_secs == 0 {
            bail!("push.presence_heartbeat_secs must be positive");
        }
        if self.consumer.is_empty()
            || !self
                .consumer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("push.consumer must be a name of letters, digits, - and _");
        }
        if let Some(w) = &self.webpush
            && !(w.subject.starts_with("mailto:") || w.subject.starts_with("https://"))
        {
            bail!("push.webpush.subject must be a mailto: or https: contact");
        }
        Ok(())
    }

    /// How long a worker holds a device's next push before another may take over: its
    /// grace and window, and 2 s for Redis and the hub.
    pub fn due_ttl(&self) -> Duration {
        self.grace() + self.coalesce() + Duration::from_secs(2)
    }

    /// Grace before an offline device is woken.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// Least time between two pushes to one device.
    pub fn coalesce(&self) -> Duration {
        Duration::from_millis(self.coalesce_ms)
    }

    /// The provider retry policy.
    pub fn backoff(&self) -> petrel_core::push::Backoff {
        petrel_core::push::Backoff {
            first: Duration::from_millis(self.retry_first_ms),
            max: Duration::from_millis(self.retry_max_ms),
            attempts: self.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[push]
nats_url = "nats://127.0.0.1:4222"
redis_url = "redis://127.0.0.1:6379"
[push.apns]
key_file = "apns.p8"
key_id = "ABC123DEFG"
team_id = "TEAM123456"
"#;

    #[test]
    fn defaults_and_nested_overrides() {
        let env = vec![
            ("PETREL_PUSH_GRACE_MS".to_string(), "500".to_string()),
            (
                "PETREL_PUSH_APNS_KEY_ID".to_string(),
                "OTHER12345".to_string(),
            ),
            (
                "PETREL_NATS_URL".to_string(),
                "ignored: not a push key".to_string(),
            ),
        ];
        let c = PushConfig::parse(BASE, &env).unwrap();
        assert_eq!(c.push.grace_ms, 500);
        assert_eq!(c.push.coalesce_ms, 1000);
        let apns = c.push.apns.unwrap();
        assert_eq!(apns.key_id, "OTHER12345");
        assert_eq!(apns.endpoint.as_str(), "https://api.push.apple.com/");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = BASE.replace("key_id", "keyid");
        assert!(PushConfig::parse(&text, &[]).is_err());
        let env = vec![("PETREL_PUSH_GRACE".to_string(), "1".to_string())];
        let err = format!("{:#}", PushConfig::parse(BASE, &env).unwrap_err());
        assert!(err.contains("grace"), "{err}");
    }

    #[test]
    fn plain_http_endpoints_only_on_loopback() {
        let with =
            |e: &str| BASE.replace("[push.apns]", &format!("[push.apns]\nendpoint = \"{e}\""));
        assert!(PushConfig::parse(&with("http://127.0.0.1:9000"), &[]).is_ok());
        assert!(PushConfig::parse(&with("https://apns.staging.example"), &[]).is_ok());
        let err = format!(
            "{:#}",
            PushConfig::parse(&with("http://apns.example"), &[]).unwrap_err()
        );
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn the_annotated_example_parses() {
        let text = include_str!("../../deploy/push.example.toml");
        let c = PushConfig::parse(text, &[]).unwrap();
        assert!(c.push.apns.is_some() && c.push.fcm.is_some() && c.push.webpush.is_some());
    }
}
