//! The directory: what the gateway reads from the application's Redis (and what it
//! writes there itself).
//!
//! - [`groups`] — group membership, as the application's group service keeps it;
//! - [`presence`] — which devices of a user are connected, on which gateway;
//! - [`acks`] — what each device acknowledged, for the push service;
//! - [`visibility`] — who may see whose presence and typing: contacts and co-members;
//! - [`keys`] — every Redis key name, and nothing else builds one.
//!
//! [`Directory`] is the Redis connection they share: lazy, reconnecting by itself, each
//! request bounded, so Redis may be down when the gateway starts or at any time after.

pub mod acks;
pub mod groups;
pub mod keys;
pub mod presence;
pub mod visibility;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use acks::Acks;
pub use groups::announce;
pub use presence::Presence;

/// The Redis connection of the directory (`None`: no Redis configured).
#[derive(Clone)]
pub struct Directory {
    conn: Option<ConnectionManager>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("configured", &self.conn.is_some())
            .finish()
    }
}

/// Why membership could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No `[redis] url` configured.
    #[error("no Redis configured ([redis] url)")]
    NotConfigured,
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl Directory {
    /// A directory on the Redis at `url` (`redis://host:port`, `redis+unix:///path`);
    /// `None`: no groups. Connects lazily and reconnects by itself, so Redis may be
    /// down when the gateway starts.
    pub fn new(url: Option<&str>) -> anyhow::Result<Self> {
        let Some(url) = url else {
            return Ok(Self { conn: None });
        };
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis url {url:?}: {e}"))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)
            .map_err(|e| anyhow::anyhow!("redis: {e}"))?;
        Ok(Self { conn: Some(conn) })
    }

    pub(crate) fn conn(&self) -> Result<ConnectionManager, DirectoryError> {
        self.conn.clone().ok_or(DirectoryError::NotConfigured)
    }

    /// A handle on the connection (cheap clone), if Redis is configured.
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.conn.clone()
    }

    /// Whether a Redis is configured at all.
    pub fn configured(&self) -> bool {
        self.conn.is_some()
    }
}
