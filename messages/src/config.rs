//! The message service's configuration: a TOML file with a `[messages]` table,
//! overridable by `PETREL_MESSAGES_*` variables (`PETREL_MESSAGES_POSTGRES_URL`, …).
//! Unknown keys are an error. `deploy/messages.example.toml` documents each key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesConfig {
    /// `[messages]`
    pub messages: MessagesSection,
}

const SECTIONS: &[&str] = &["messages"];

/// `[messages]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesSection {
    /// The hub: `nats://[user:password@]host:port` (several, comma-separated).
    pub nats_url: String,
    /// CA certificate (PEM) the hub's TLS certificate is checked against.
    #[serde(default)]
    pub nats_ca_file: Option<PathBuf>,
    /// PostgreSQL: `postgres://user[:password]@host:port/db` (or key=value form).
    pub postgres_url: String,
    /// The Redis of the group service (group members, for their live conversation
    /// updates); unset: group conversations get no live updates.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// The durable consumer's name, shared by every worker.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Stored messages archived in one transaction.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Seconds JetStream waits for a batch's acks before giving it to another worker.
    #[serde(default = "default_ack_wait")]
    pub ack_wait_secs: u64,
    /// Connections to PostgreSQL (the consumer's and the queries').
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// Unread counts stop counting here (shown as "999+").
    #[serde(default = "default_unread_cap")]
    pub unread_cap: u32,
    /// Groups up to this size get live conversation updates for every member; larger
    /// groups' members see their list change when they ask again.
    #[serde(default = "default_live_members")]
    pub live_update_max_members: usize,
    /// `/metrics` and `/healthz`.
    #[serde(default = "default_metrics")]
    pub metrics_listen: SocketAddr,
}

fn default_consumer() -> String {
    "messages".into()
}
fn default_batch() -> usize {
    256
}
fn default_ack_wait() -> u64 {
    30
}
fn default_pool() -> usize {
    8
}
fn default_unread_cap() -> u32 {
    999
}
fn default_live_members() -> usize {
    256
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9466))
}

impl MessagesConfig {
    /// Reads `path`, applies `PETREL_MESSAGES_*` overrides from the environment, and
    /// resolves relative paths against the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut cfg = petrel_gateway::config::load_with_env(path, Self::parse)?;
        if let (Some(dir), Some(f)) = (path.parent(), cfg.messages.nats_ca_file.as_mut())
            && f.is_relative()
        {
            *f = dir.join(&*f);
        }
        Ok(cfg)
    }

    /// Parses TOML text with overrides from `env`.
    pub fn parse(text: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let cfg: Self = petrel_gateway::config::parse_with_env(text, env, SECTIONS)?;
        cfg.messages.validate()?;
        Ok(cfg)
    }
}

impl MessagesSection {
    fn validate(&self) -> anyhow::Result<()> {
        if self.batch == 0 || self.batch > 1000 {
            bail!("messages.batch must be between 1 and 1000");
        }
        if self.pool_size < 2 || self.pool_size > 256 {
            bail!("messages.pool_size must be between 2 and 256");
        }
        if self.ack_wait_secs < 5 {
            bail!("messages.ack_wait_secs must be at least 5");
        }
        if self.unread_cap == 0 {
            bail!("messages.unread_cap must be positive");
        }
        if self.consumer.is_empty()
            || !self
                .consumer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!("messages.consumer must be a name of letters, digits, - and _");
        }
        if self.postgres_url.trim().is_empty() {
            bail!("messages.postgres_url is empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotated_example_parses_and_env_overrides() {
        let text = include_str!("../../deploy/messages.example.toml");
        let env = vec![("PETREL_MESSAGES_BATCH".to_string(), "8".to_string())];
        let c = MessagesConfig::parse(text, &env).unwrap();
        assert_eq!(c.messages.batch, 8);
        let bad = text.replace("batch", "batches");
        assert!(MessagesConfig::parse(&bad, &[]).is_err());
    }
}
