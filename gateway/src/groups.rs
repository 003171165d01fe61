//! Group membership, as the application's group service keeps it in Redis.
//!
//! The contract (docs/groups.md): a set `group:{g}:members` of user ids and a set
//! `user:{u}:groups` of group ids, changed together, and a core NATS message on
//! `group.changed.{g}` after every change. The gateway only reads: a connection reads
//! its user's groups when it joins and again whenever a change of one of them (or of a
//! group the user was added to) is announced. `petrel admin group` writes the same
//! way the group service does, for operators and development.
//!
//! Without Redis (unset or unreachable) direct messages are unaffected; a user's
//! groups are then unknown: group sends are refused UNAVAILABLE, and connections try
//! again every few seconds.

use std::collections::HashSet;
use std::time::Duration;

use petrel_core::{GroupId, UserId, subject};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::warn;

/// Reads (and, for the admin CLI, writes) group membership in Redis.
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

fn members_key(g: &GroupId) -> String {
    format!("group:{g}:members")
}

fn groups_key(u: &UserId) -> String {
    format!("user:{u}:groups")
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

    fn conn(&self) -> Result<ConnectionManager, DirectoryError> {
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

    /// The groups `user` is a member of. Entries that are not valid ids are skipped
    /// (and logged): they could not name a subject.
    pub async fn user_groups(&self, user: &UserId) -> Result<HashSet<GroupId>, DirectoryError> {
        let raw: Vec<String> = self.conn()?.smembers(groups_key(user)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|g| match GroupId::parse(g.clone()) {
                Ok(g) => Some(g),
                Err(e) => {
                    warn!(%user, group = %g, error = %e, "skipping an invalid group id in Redis");
                    None
                }
            })
            .collect())
    }

    /// The members of `group` (invalid entries skipped).
    pub async fn members(&self, group: &GroupId) -> Result<HashSet<UserId>, DirectoryError> {
        let raw: Vec<String> = self.conn()?.smembers(members_key(group)).await?;
        Ok(raw
            .into_iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect())
    }

    /// Adds `user` to `group` (both sets in one transaction); true if it was not
    /// a member. Announce it with [`announce`].
    pub async fn add(&self, group: &GroupId, user: &UserId) -> Result<bool, DirectoryError> {
        let (added, _): (u32, u32) = redis::pipe()
            .atomic()
            .sadd(members_key(group), user.as_str())
            .sadd(groups_key(user), group.as_str())
            .query_async(&mut self.conn()?)
            .await?;
        Ok(added > 0)
    }

    /// Removes `user` from `group`; true if it was a member.
    pub async fn remove(&self, group: &GroupId, user: &UserId) -> Result<bool, DirectoryError> {
        let (removed, _): (u32, u32) = redis::pipe()
            .atomic()
            .srem(members_key(group), user.as_str())
            .srem(groups_key(user), group.as_str())
            .query_async(&mut self.conn()?)
            .await?;
        Ok(removed > 0)
    }
}

/// Announces a membership change of `group` on `group.changed.{group}` (what the group
/// service does after each change) and waits until the server has it.
pub async fn announce(nats: &async_nats::Client, group: &GroupId) -> anyhow::Result<()> {
    nats.publish(subject::group_changed(group), bytes::Bytes::new())
        .await?;
    nats.flush().await?;
    Ok(())
}
